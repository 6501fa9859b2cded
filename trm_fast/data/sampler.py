"""The published training sampler and the evaluation iterator.

Training (as the reference loader does it): iteration k (1, 2, ...) draws its random numbers from
np.random.Generator(np.random.Philox(seed=seed + k)): first `epochs_per_iter` permutations of the groups,
concatenated; then, walking that order, one random augmentation (puzzle) per group (`rng.integers` over the group's
puzzles), whose examples are packed into the global batch (a puzzle with more examples than room left gives a random
subset). The last incomplete batch of an iteration is dropped. With epochs_per_iter > 1 batches pack across epoch
boundaries and only one partial batch per iteration is lost (the reference uses epochs_per_iter = eval_interval).
Rank r of W gets rows [r*B/W, (r+1)*B/W) of every global batch, so W processes see the same global batches as one.

Deviation: the reference draws the example subset (and order) within a puzzle from numpy's unseeded global RNG;
here it comes from a second seeded generator, np.random.default_rng([seed, k]), so runs are reproducible. Group
order and puzzle choice use the Philox stream exactly as the reference does (same seed, same choices).

The state (iteration, position in the group order, both generators' states) is plain ints and lists, so a restored
sampler continues with the identical batch sequence.
"""
from __future__ import annotations

import numpy as np

from trm_fast.data.format import PuzzleSet


def _plain(value):
    """numpy containers in a bit-generator state -> python ints/lists (torch.load(weights_only=True) safe)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [int(v) for v in value.tolist()]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _restore(template, value):
    """Inverse of _plain, shaped like the generator's own state (arrays where it holds arrays)."""
    if isinstance(template, dict):
        return {k: _restore(template[k], value[k]) for k in template}
    if isinstance(template, np.ndarray):
        return np.array(value, dtype=template.dtype)
    return value


class TrainSampler:
    def __init__(self, puzzle_set: PuzzleSet, global_batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 epochs_per_iter: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world size {world_size})")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(f"global batch {global_batch_size} is not a positive multiple of world size {world_size}")
        if epochs_per_iter < 1:
            raise ValueError(f"epochs_per_iter must be at least 1, got {epochs_per_iter}")
        if len(puzzle_set.inputs) < global_batch_size:
            raise ValueError(
                f"the training set has {len(puzzle_set.inputs)} examples, fewer than one global batch ({global_batch_size})"
            )
        self.data = puzzle_set
        self.global_batch_size = global_batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epochs_per_iter = epochs_per_iter
        self.batches_drawn = 0
        self._group_indices = np.asarray(puzzle_set.group_indices)
        self._puzzle_indices = np.asarray(puzzle_set.puzzle_indices)
        self._start_iteration(1)

    # -- progress -------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """1-based number of the epoch being drawn (an epoch = one pass over the group order)."""
        within = min(self._position // max(self.data.num_groups, 1), self.epochs_per_iter - 1)
        return (self.iteration - 1) * self.epochs_per_iter + within + 1

    @property
    def batches_per_epoch(self) -> float:
        """Global batches per epoch, about: one puzzle per group, its examples packed."""
        examples_per_puzzle = len(self.data.inputs) / max(len(self.data.puzzle_identifiers), 1)
        return self.data.num_groups * examples_per_puzzle / self.global_batch_size

    # -- drawing --------------------------------------------------------------------------------------
    def _start_iteration(self, iteration: int) -> None:
        self.iteration = iteration
        self._rng = np.random.Generator(np.random.Philox(seed=self.seed + iteration))
        self._order = np.concatenate([self._rng.permutation(self.data.num_groups) for _ in range(self.epochs_per_iter)])
        self._subset_rng = np.random.default_rng([self.seed, iteration])
        self._position = 0
        self._batches_in_iteration = 0

    def _draw_global(self):
        """The next global batch of this iteration as (example indices, puzzle indices), or None at its end."""
        g, p = self._group_indices, self._puzzle_indices
        examples, puzzles, size = [], [], 0
        while self._position < len(self._order) and size < self.global_batch_size:
            group = self._order[self._position]
            self._position += 1
            puzzle = self._rng.integers(g[group], g[group + 1])
            start = p[puzzle]
            count = int(p[puzzle + 1] - start)
            take = min(count, self.global_batch_size - size)
            examples.append(start + self._subset_rng.choice(count, take, replace=False))
            puzzles.append(np.full(take, puzzle, dtype=np.int64))
            size += take
        if size < self.global_batch_size:
            return None
        return np.concatenate(examples), np.concatenate(puzzles)

    def next_global_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(example indices, puzzle indices) of the next full global batch, all ranks' rows."""
        while True:
            drawn = self._draw_global()
            if drawn is not None:
                self._batches_in_iteration += 1
                self.batches_drawn += 1
                return drawn
            self._start_iteration(self.iteration + 1)

    def next_batch(self) -> dict:
        """This rank's rows of the next global batch: inputs and labels (int32, raw token ids: mapping
        ignore_label_id to -100 is the trainer's job) and puzzle_identifiers (int64)."""
        examples, puzzles = self.next_global_indices()
        local = self.global_batch_size // self.world_size
        rows = slice(self.rank * local, (self.rank + 1) * local)
        examples, puzzles = examples[rows], puzzles[rows]
        order = np.argsort(examples, kind="stable")  # sorted reads from a memory-mapped file, then back in order
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return {
            "inputs": np.asarray(self.data.inputs[examples[order]], dtype=np.int32)[inverse],
            "labels": np.asarray(self.data.labels[examples[order]], dtype=np.int32)[inverse],
            "puzzle_identifiers": np.asarray(self.data.puzzle_identifiers[puzzles], dtype=np.int64),
        }

    def __iter__(self):
        while True:
            yield self.next_batch()

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"seed": self.seed, "global_batch_size": self.global_batch_size, "epochs_per_iter": self.epochs_per_iter,
                "num_groups": self.data.num_groups, "iteration": self.iteration, "position": int(self._position),
                "batches_in_iteration": self._batches_in_iteration, "batches_drawn": self.batches_drawn,
                "rng": _plain(self._rng.bit_generator.state), "subset_rng": _plain(self._subset_rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "global_batch_size", "epochs_per_iter", "num_groups"):
            saved, ours = state.get(key), (self.data.num_groups if key == "num_groups" else getattr(self, key))
            if saved != ours:
                hint = f" (set data.epochs_per_iter={saved} to continue that run)" if key == "epochs_per_iter" else ""
                raise ValueError(f"sampler state was saved with {key} = {saved}, this run has {key} = {ours}: "
                                 f"the batch sequence cannot continue{hint}")
        self._start_iteration(int(state["iteration"]))
        self._rng.bit_generator.state = _restore(self._rng.bit_generator.state, state["rng"])
        self._subset_rng.bit_generator.state = _restore(self._subset_rng.bit_generator.state, state["subset_rng"])
        self._position = int(state["position"])
        self._batches_in_iteration = int(state["batches_in_iteration"])
        self.batches_drawn = int(state["batches_drawn"])


def iter_eval_batches(puzzle_set: PuzzleSet, global_batch_size: int, rank: int = 0, world_size: int = 1,
                      pad_id: int = 0, ignore_label_id: int = 0, blank_identifier_id: int = 0):
    """All examples in order, in global batches of `global_batch_size` rows; rank r gets rows
    [r*L, (r+1)*L) with L = ceil(global_batch_size / world_size). Rows past the end of the set (in the last batch)
    are padding: inputs pad_id, labels ignore_label_id (so they are never scored), puzzle id blank_identifier_id.
    Yields (this rank's batch dict: inputs/labels int32, puzzle_identifiers int64, each of L rows; the number of
    real rows at the top of this rank's slice). Every rank gets the same number of batches."""
    n = len(puzzle_set.inputs)
    puzzle_of_example = np.repeat(np.arange(len(puzzle_set.puzzle_identifiers)), np.diff(puzzle_set.puzzle_indices))
    local = -(-global_batch_size // world_size)
    seq_len = puzzle_set.inputs.shape[1]
    for start in range(0, n, global_batch_size):
        real = min(start + global_batch_size, n) - start
        lo = min(rank * local, real)
        hi = min((rank + 1) * local, real)
        inputs = np.full((local, seq_len), pad_id, dtype=np.int32)
        labels = np.full((local, seq_len), ignore_label_id, dtype=np.int32)
        ids = np.full(local, blank_identifier_id, dtype=np.int64)
        inputs[:hi - lo] = puzzle_set.inputs[start + lo:start + hi]
        labels[:hi - lo] = puzzle_set.labels[start + lo:start + hi]
        ids[:hi - lo] = puzzle_set.puzzle_identifiers[puzzle_of_example[start + lo:start + hi]]
        yield {"inputs": inputs, "labels": labels, "puzzle_identifiers": ids}, hi - lo
