"""The published training sampler and the evaluation iterator.

Training: every epoch shuffles the groups with np.random.Philox(seed + epoch), takes one random augmentation
(puzzle) per group and packs its examples into the global batch (a puzzle with more examples than room left gives
a random subset); the last incomplete batch of an epoch is dropped. Rank r of W gets rows [r*B/W, (r+1)*B/W) of
every global batch, so a run on W processes sees the same global batches as a run on one.

The sampler's state is (epoch, batches drawn in the epoch): restoring it regenerates the epoch's permutation and
replays the draws, so the batch sequence continues exactly.
"""
from __future__ import annotations

import numpy as np

from trm_fast.data.format import PuzzleSet


class TrainSampler:
    def __init__(self, puzzle_set: PuzzleSet, global_batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if global_batch_size % world_size:
            raise ValueError(f"global batch {global_batch_size} is not divisible by world size {world_size}")
        if len(puzzle_set.inputs) < global_batch_size:
            raise ValueError(
                f"the training set has {len(puzzle_set.inputs)} examples, fewer than one global batch ({global_batch_size})"
            )
        self.data = puzzle_set
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.batches_drawn = 0
        self._start_epoch(1)

    @property
    def batches_per_epoch(self) -> float:
        """Full batches per epoch, about: one puzzle per group, its examples packed."""
        examples_per_puzzle = len(self.data.inputs) / max(len(self.data.puzzle_identifiers), 1)
        return self.data.num_groups * examples_per_puzzle / self.global_batch_size

    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._rng = np.random.Generator(np.random.Philox(seed=self.seed + epoch))
        self._order = self._rng.permutation(self.data.num_groups)
        self._position = 0
        self._batches_in_epoch = 0

    def _draw_global(self):
        """The next global batch of this epoch as (example indices, puzzle indices), or None at its end."""
        d = self.data
        examples, puzzles, size = [], [], 0
        while self._position < len(self._order) and size < self.global_batch_size:
            group = self._order[self._position]
            self._position += 1
            puzzle = self._rng.integers(d.group_indices[group], d.group_indices[group + 1])
            start = d.puzzle_indices[puzzle]
            count = int(d.puzzle_indices[puzzle + 1] - start)
            take = min(count, self.global_batch_size - size)
            examples.append(start + self._rng.choice(count, take, replace=False))
            puzzles.append(np.full(take, puzzle, dtype=np.int64))
            size += take
        if size < self.global_batch_size:
            return None
        return np.concatenate(examples), np.concatenate(puzzles)

    def next_global_indices(self):
        while True:
            drawn = self._draw_global()
            if drawn is not None:
                self._batches_in_epoch += 1
                self.batches_drawn += 1
                return drawn
            self._start_epoch(self.epoch + 1)

    def next_batch(self) -> dict:
        """This rank's slice of the next global batch: inputs, labels (int32) and puzzle_identifiers."""
        examples, puzzles = self.next_global_indices()
        local = self.global_batch_size // self.world_size
        rows = slice(self.rank * local, (self.rank + 1) * local)
        examples, puzzles = examples[rows], puzzles[rows]
        return {
            "inputs": np.asarray(self.data.inputs[examples], dtype=np.int32),
            "labels": np.asarray(self.data.labels[examples], dtype=np.int32),
            "puzzle_identifiers": np.asarray(self.data.puzzle_identifiers[puzzles], dtype=np.int64),
        }

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_in_epoch": self._batches_in_epoch, "batches_drawn": self.batches_drawn,
                "seed": self.seed, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["global_batch_size"] != self.global_batch_size:
            raise ValueError(
                f"sampler state was saved with seed {state['seed']} and global batch {state['global_batch_size']}, "
                f"this run uses seed {self.seed} and global batch {self.global_batch_size}"
            )
        self._start_epoch(int(state["epoch"]))
        for _ in range(int(state["batches_in_epoch"])):
            if self._draw_global() is None:
                raise ValueError("sampler state does not match this dataset (the epoch ends earlier than recorded)")
            self._batches_in_epoch += 1
        self.batches_drawn = int(state["batches_drawn"])


def iter_eval_batches(puzzle_set: PuzzleSet, global_batch_size: int, rank: int = 0, world_size: int = 1,
                      pad_id: int = 0, ignore_label_id: int = 0, blank_identifier_id: int = 0):
    """All examples in order, in global batches; the last batch is padded to full size with pad inputs, ignored
    labels and the blank puzzle id. Yields (this rank's slice, number of real rows in that slice)."""
    n = len(puzzle_set.inputs)
    puzzle_of_example = np.repeat(np.arange(len(puzzle_set.puzzle_identifiers)), np.diff(puzzle_set.puzzle_indices))
    local = -(-global_batch_size // world_size)
    for start in range(0, n, global_batch_size):
        stop = min(start + global_batch_size, n)
        real = stop - start
        inputs = np.full((local * world_size, puzzle_set.inputs.shape[1]), pad_id, dtype=np.int32)
        labels = np.full_like(inputs, ignore_label_id)
        ids = np.full(local * world_size, blank_identifier_id, dtype=np.int64)
        inputs[:real] = puzzle_set.inputs[start:stop]
        labels[:real] = puzzle_set.labels[start:stop]
        ids[:real] = puzzle_set.puzzle_identifiers[puzzle_of_example[start:stop]]
        rows = slice(rank * local, (rank + 1) * local)
        num_valid = int(np.clip(real - rank * local, 0, local))
        yield {"inputs": inputs[rows], "labels": labels[rows], "puzzle_identifiers": ids[rows]}, num_valid
