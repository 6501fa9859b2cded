"""The ARC voting evaluator: inverse transforms, ground truth scores 100%, wrong answers 0%, voting and its
tie-break, the submission format, the ARC-1/ARC-2 overlap refusal, and votes gathered across ranks."""
import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trm_fast.eval.arc import (ArcVoter, aug_name, augment_grid, check_eval_allowed, crop_canvas, gather_voter,
                               grid_to_canvas, restore_grid)

rng = np.random.default_rng(0)


def random_perm():
    return np.concatenate([[0], rng.permutation(9) + 1])


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (30, 30), (29, 2)])
def test_inverse_transforms_restore_every_augmentation(shape):
    grid = rng.integers(0, 10, shape)
    for k in range(8):
        perm = random_perm()
        aug = augment_grid(grid, k, perm)
        assert np.array_equal(restore_grid(aug, k, perm), grid)
        assert np.array_equal(crop_canvas(grid_to_canvas(aug)), aug)


def test_crop_refuses_non_grids():
    canvas = grid_to_canvas(np.ones((3, 3), dtype=np.int64))
    broken = canvas.copy().reshape(30, 30)
    broken[1, 1] = 0  # a pad inside the grid
    assert crop_canvas(broken.ravel()) is None
    assert crop_canvas(np.zeros(900, dtype=np.int64)) is None


def _tasks():
    return {"taskA": [rng.integers(0, 10, (3, 4)), rng.integers(0, 10, (2, 2))], "taskB": [rng.integers(0, 10, (5, 1))]}


def _predict(truths, answer_fn, augs_per_task=4):
    identifiers, pids, idxs, preds = ["<blank>"], [], [], []
    for task, outputs in truths.items():
        for _ in range(augs_per_task):
            k, perm = int(rng.integers(0, 8)), random_perm()
            identifiers.append(aug_name(task, k, perm))
            for i, truth in enumerate(outputs):
                pids.append(len(identifiers) - 1)
                idxs.append(i)
                preds.append(grid_to_canvas(augment_grid(answer_fn(truth), k, perm)))
    return identifiers, np.array(pids), np.array(idxs), np.stack(preds)


def test_ground_truth_scores_100_and_wrong_answers_0(tmp_path):
    truths = _tasks()
    for answer_fn, expected in ((lambda t: t, 1.0), (lambda t: (t + 1) % 10, 0.0)):
        identifiers, pids, idxs, preds = _predict(truths, answer_fn)
        voter = ArcVoter(identifiers, truths)
        voter.add(pids, idxs, preds, np.zeros(len(pids)))
        scores = voter.scores((1, 2))
        assert scores["pass@1"] == expected and scores["pass@2"] == expected and scores["tasks"] == 2
    path = voter.write_submission(str(tmp_path / "submission.json"))
    submission = json.load(open(path))
    assert set(submission) == {"taskA", "taskB"} and len(submission["taskA"]) == 2
    assert set(submission["taskA"][0]) == {"attempt_1", "attempt_2"}


def test_voting_and_tie_break_by_halting_confidence():
    truth = np.array([[1, 2], [3, 4]])
    wrong = np.array([[4, 3], [2, 1]])
    truths = {"t": [truth]}
    identifiers = ["<blank>", aug_name("t", 0, np.arange(10)), aug_name("t", 5, random_perm())]
    def canvas(grid, pid):
        _, k, perm = identifiers[pid].split("|")[0], int(identifiers[pid].split("|")[1]), np.array([int(c) for c in identifiers[pid].split("|")[2]])
        return grid_to_canvas(augment_grid(grid, k, perm))
    # one vote each: the more confident answer wins pass@1
    voter = ArcVoter(identifiers, truths)
    voter.add(np.array([1, 2]), np.array([0, 0]), np.stack([canvas(wrong, 1), canvas(truth, 2)]), np.array([-3.0, 3.0]))
    assert voter.scores((1,))["pass@1"] == 1.0
    # two votes for the wrong answer beat one confident vote for the truth; pass@2 still finds it
    voter.add(np.array([1]), np.array([0]), np.stack([canvas(wrong, 1)]), np.array([-3.0]))
    scores = voter.scores((1, 2))
    assert scores["pass@1"] == 0.0 and scores["pass@2"] == 1.0


def test_arc1_eval_refused_after_arc2_training():
    with pytest.raises(ValueError, match="376"):
        check_eval_allowed(["arc2-training", "concept"], "arc1-evaluation")
    check_eval_allowed(["arc1-training", "concept"], "arc1-evaluation")
    check_eval_allowed(["arc2-training"], "arc2-evaluation")


def _rank_main(rank, world, init_file, payload, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    identifiers, truths, pids, idxs, preds = payload
    voter = ArcVoter(identifiers, truths)
    rows = slice(rank, None, world)  # each rank votes on a different share of the predictions
    voter.add(pids[rows], idxs[rows], preds[rows], np.zeros(len(pids[rows])))
    merged = gather_voter(voter)
    if rank == 0:
        votes = sum(len(c) for answers in merged.votes.values() for c in answers.values())
        with open(out_file, "w") as f:
            json.dump({"scores": merged.scores((1, 2)), "votes": votes, "local_votes": len(pids[rows])}, f)
    dist.destroy_process_group()


def test_votes_are_gathered_across_ranks(tmp_path):
    truths = _tasks()
    identifiers, pids, idxs, preds = _predict(truths, lambda t: t, augs_per_task=3)
    out = tmp_path / "scores.json"
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), (identifiers, truths, pids, idxs, preds), str(out)), nprocs=2)
    single = ArcVoter(identifiers, truths)
    single.add(pids, idxs, preds, np.zeros(len(pids)))
    result = json.load(open(out))
    assert result["votes"] == len(pids) > result["local_votes"]  # rank 0 holds every rank's votes
    assert result["scores"] == single.scores((1, 2))
