"""The published training sampler: the reference's Philox draws, determinism, exact resume through a
weights-only checkpoint, rank slicing, packing; and the evaluation iterator's padding."""
import io

import numpy as np
import pytest
import torch

from trm_fast.data.format import PuzzleSet
from trm_fast.data.sampler import TrainSampler, iter_eval_batches


def _set(examples_per_puzzle, puzzles_per_group, seq_len=3):
    """Example i holds the value i in every position, so batches can be read back as example indices."""
    puzzle_sizes = np.asarray(examples_per_puzzle)
    n = int(puzzle_sizes.sum())
    values = np.repeat(np.arange(n), seq_len).reshape(n, seq_len).astype(np.int32)
    return PuzzleSet(values, values + 1, np.arange(len(puzzle_sizes), dtype=np.int32) + 100,
                     np.concatenate([[0], np.cumsum(puzzle_sizes)]).astype(np.int32),
                     np.concatenate([[0], np.cumsum(puzzles_per_group)]).astype(np.int32))


def _sudoku_like(groups=50, augs=4):
    return _set([1] * (groups * augs), [augs] * groups)


def _reference_puzzle_sequence(puzzle_set, batch, seed, iterations, epochs_per_iter=1):
    """Transcription of the reference loop for one-example puzzles: the puzzles of each full batch."""
    g = puzzle_set.group_indices
    out = []
    for it in range(1, iterations + 1):
        rng = np.random.Generator(np.random.Philox(seed=seed + it))
        order = np.concatenate([rng.permutation(len(g) - 1) for _ in range(epochs_per_iter)])
        picks = [int(rng.integers(g[grp], g[grp + 1])) for grp in order]
        out += [picks[i:i + batch] for i in range(0, len(picks) - batch + 1, batch)]
    return out


@pytest.mark.parametrize("epochs_per_iter", [1, 3])
def test_draws_match_the_reference(epochs_per_iter):
    data = _sudoku_like()
    sampler = TrainSampler(data, 16, seed=7, epochs_per_iter=epochs_per_iter)
    expected = _reference_puzzle_sequence(data, 16, 7, iterations=3, epochs_per_iter=epochs_per_iter)
    got = [sorted(sampler.next_global_indices()[1].tolist()) for _ in expected]
    assert got == [sorted(b) for b in expected]
    assert sampler.iteration == 3


def test_one_puzzle_per_group_per_epoch_and_drop_last():
    data = _sudoku_like(groups=50, augs=4)
    sampler = TrainSampler(data, 16, seed=0)
    batches = [sampler.next_batch() for _ in range(3)]  # 50 groups -> 3 full batches of 16, 2 dropped
    rows = np.concatenate([b["inputs"][:, 0] for b in batches])
    groups = rows // 4
    assert len(set(groups.tolist())) == 48 and sampler.epoch == 1
    sampler.next_batch()
    assert sampler.epoch == 2 and sampler.batches_drawn == 4
    assert batches[0]["inputs"].dtype == np.int32 and np.array_equal(batches[0]["labels"], batches[0]["inputs"] + 1)
    assert np.array_equal(batches[0]["puzzle_identifiers"], rows[:16] + 100)  # puzzle i <-> example i here


def test_large_puzzles_give_random_subsets():
    data = _set([30, 5, 12, 40], [1, 1, 2])
    sampler = TrainSampler(data, 8, seed=3)
    for _ in range(20):
        batch = sampler.next_batch()
        examples = batch["inputs"][:, 0]
        assert len(examples) == 8 and len(set(examples.tolist())) == 8
        owner = np.searchsorted(data.puzzle_indices, examples, side="right") - 1
        assert np.array_equal(batch["puzzle_identifiers"], owner + 100)


def test_determinism():
    data = _sudoku_like()
    a, b, c = (TrainSampler(data, 16, seed=s) for s in (1, 1, 2))
    seq = lambda s: np.concatenate([s.next_batch()["inputs"][:, 0] for _ in range(10)])
    first, second, other = seq(a), seq(b), seq(c)
    assert np.array_equal(first, second) and not np.array_equal(first, other)


@pytest.mark.parametrize("epochs_per_iter", [1, 2])
def test_resume_mid_epoch_continues_identically(epochs_per_iter):
    data = _set(np.random.default_rng(0).integers(1, 6, 120), [3] * 40)
    sampler = TrainSampler(data, 16, seed=5, epochs_per_iter=epochs_per_iter)
    for _ in range(7):
        sampler.next_batch()
    buffer = io.BytesIO()
    torch.save({"sampler": sampler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["sampler"]
    expected = [sampler.next_batch() for _ in range(40)]  # crosses several iteration boundaries
    resumed = TrainSampler(data, 16, seed=5, epochs_per_iter=epochs_per_iter)
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 7
    for want in expected:
        got = resumed.next_batch()
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert (resumed.epoch, resumed.iteration) == (sampler.epoch, sampler.iteration)


def test_resume_refuses_a_different_run():
    data = _sudoku_like()
    state = TrainSampler(data, 16, seed=5).state_dict()
    with pytest.raises(ValueError, match="seed = 5, this run has seed = 6"):
        TrainSampler(data, 16, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="num_groups = 50, this run has num_groups = 40"):
        TrainSampler(_sudoku_like(groups=40), 16, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match=r"epochs_per_iter = 1, this run has epochs_per_iter = 3.*"
                                         r"set data.epochs_per_iter=1"):
        TrainSampler(data, 16, seed=5, epochs_per_iter=3).load_state_dict(state)


def test_rank_slices_equal_the_global_batch():
    data = _set(np.random.default_rng(1).integers(1, 4, 90), [2] * 45)
    single = TrainSampler(data, 12, seed=9)
    ranks = [TrainSampler(data, 12, seed=9, rank=r, world_size=3) for r in range(3)]
    for _ in range(15):
        whole = single.next_batch()
        parts = [s.next_batch() for s in ranks]
        for k in whole:
            assert np.array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_bad_arguments():
    data = _sudoku_like(groups=3, augs=1)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainSampler(data, 16, seed=0)
    with pytest.raises(ValueError, match="multiple of world size 4"):
        TrainSampler(_sudoku_like(), 18, seed=0, world_size=4)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_batches_cover_every_example_once_with_padding(world_size):
    data = _set([2, 3, 1, 4, 1], [2, 3])  # 11 examples
    seen, batches = [], 0
    for rank in range(world_size):
        for batch, valid in iter_eval_batches(data, 4, rank=rank, world_size=world_size, pad_id=0,
                                              ignore_label_id=0, blank_identifier_id=0):
            rows = len(batch["inputs"])
            assert rows == -(-4 // world_size) and 0 <= valid <= rows
            seen += batch["inputs"][:valid, 0].tolist()
            owner = np.searchsorted(data.puzzle_indices, batch["inputs"][:valid, 0], side="right") - 1
            assert np.array_equal(batch["puzzle_identifiers"][:valid], owner + 100)
            assert (batch["inputs"][valid:] == 0).all() and (batch["labels"][valid:] == 0).all()
            assert (batch["puzzle_identifiers"][valid:] == 0).all()
            batches += 1
    assert sorted(seen) == list(range(11)) and batches == 3 * world_size
