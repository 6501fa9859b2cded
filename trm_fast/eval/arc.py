"""ARC evaluation with voting over augmentations (TRM_SPEC section 6).

Every test input of a task is predicted once per augmented version of the task (a dihedral transform and a
permutation of colours 1-9). Each prediction is cropped at its EOS border, mapped back (inverse colour map, then
inverse transform), and the answers vote: the most frequent answers first, ties broken by the mean sigmoid(q_halt)
of their voters. pass@k scores a test input as solved when the truth is among the first k answers; a task scores
the fraction of its test inputs solved; the report averages over tasks.

Grids on the canvas: pad 0, EOS 1, colour c -> token c + 2, a 30x30 canvas with the grid at the top-left, an EOS
row below it and an EOS column right of it. Augmented puzzle names (identifiers.json) read
`<task_id>|<dihedral 0-7>|<colour permutation as 10 digits>`, e.g. `007bbfb7|3|0213456789`.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

CANVAS = 30
PAD, EOS, COLOUR0 = 0, 1, 2


# ---------------------------------------------------------------------------------------------- transforms


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 dihedral transforms: rotations by k*90 degrees, then a transpose for k >= 4."""
    out = np.rot90(grid, k % 4)
    return np.ascontiguousarray(out.T if k >= 4 else out)


def inverse_dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    if k >= 4:
        grid = grid.T
    return np.ascontiguousarray(np.rot90(grid, -(k % 4)))


def aug_name(task_id: str, k: int, perm: np.ndarray) -> str:
    return f"{task_id}|{k}|{''.join(str(int(c)) for c in perm)}"


def parse_aug_name(name: str) -> tuple[str, int, np.ndarray]:
    try:
        task, k, perm = name.rsplit("|", 2)
        perm_arr = np.array([int(c) for c in perm])
        if sorted(perm_arr.tolist()) != list(range(10)) or perm_arr[0] != 0 or not 0 <= int(k) < 8:
            raise ValueError
        return task, int(k), perm_arr
    except ValueError:
        raise ValueError(f"bad augmented puzzle name {name!r}: expected '<task>|<0-7>|<permutation of 0-9 fixing 0>'") from None


def augment_grid(grid: np.ndarray, k: int, perm: np.ndarray) -> np.ndarray:
    """Colour permutation (perm[c] is the new colour of c) after the dihedral transform."""
    return perm[dihedral(np.asarray(grid), k)]


def restore_grid(grid: np.ndarray, k: int, perm: np.ndarray) -> np.ndarray:
    inverse = np.argsort(perm)
    return inverse_dihedral(inverse[np.asarray(grid)], k)


def grid_to_canvas(grid: np.ndarray) -> np.ndarray:
    """A grid on the 30x30 token canvas with its EOS border (row below, column right)."""
    grid = np.asarray(grid)
    h, w = grid.shape
    if h > CANVAS or w > CANVAS or h < 1 or w < 1:
        raise ValueError(f"grid of shape {grid.shape} does not fit the {CANVAS}x{CANVAS} canvas")
    canvas = np.full((CANVAS, CANVAS), PAD, dtype=np.int64)
    canvas[:h, :w] = grid + COLOUR0
    if h < CANVAS:
        canvas[h, : min(w + 1, CANVAS)] = EOS
    if w < CANVAS:
        canvas[: min(h + 1, CANVAS), w] = EOS
    return canvas.ravel()


def crop_canvas(tokens: np.ndarray) -> np.ndarray | None:
    """The grid at the top-left of a predicted canvas, up to the EOS border; None when it is not a grid."""
    canvas = np.asarray(tokens).reshape(CANVAS, CANVAS)
    is_colour = canvas >= COLOUR0
    h = int(np.argmin(is_colour[:, 0])) if not is_colour[:, 0].all() else CANVAS
    w = int(np.argmin(is_colour[0, :])) if not is_colour[0, :].all() else CANVAS
    if h == 0 or w == 0 or not is_colour[:h, :w].all():
        return None
    return canvas[:h, :w] - COLOUR0


# ---------------------------------------------------------------------------------------------- voting


class ArcVoter:
    """Accumulates predictions (possibly over several batches and ranks) and scores them by voting."""

    def __init__(self, identifiers: list[str], truths: dict[str, list[np.ndarray]]):
        self.identifiers = identifiers
        self.truths = truths  # task id -> the true output grid of each test input
        self.votes: dict = defaultdict(lambda: defaultdict(list))  # (task, test index) -> answer -> [sigmoid q]

    def add(self, puzzle_ids: np.ndarray, test_index: np.ndarray, predictions: np.ndarray, q_halt: np.ndarray) -> None:
        confidence = 1.0 / (1.0 + np.exp(-np.asarray(q_halt, dtype=np.float64)))
        for pid, idx, tokens, conf in zip(puzzle_ids, test_index, predictions, confidence):
            task, k, perm = parse_aug_name(self.identifiers[int(pid)])
            grid = crop_canvas(tokens)
            if grid is None:
                continue
            answer = restore_grid(grid, k, perm)
            key = (answer.shape, answer.tobytes())
            self.votes[(task, int(idx))][key].append(float(conf))

    def merge(self, other_votes: dict) -> None:
        for slot, answers in other_votes.items():
            for key, confs in answers.items():
                self.votes[slot][key].extend(confs)

    def ranked(self, task: str, idx: int) -> list[np.ndarray]:
        answers = self.votes.get((task, idx), {})
        order = sorted(answers.items(), key=lambda kv: (-len(kv[1]), -float(np.mean(kv[1]))))
        return [np.frombuffer(key[1], dtype=np.int64).reshape(key[0]) for key, _ in order]

    def scores(self, ks=(1, 2)) -> dict:
        per_task = {k: [] for k in ks}
        for task, outputs in self.truths.items():
            solved = {k: 0.0 for k in ks}
            for idx, truth in enumerate(outputs):
                ranked = self.ranked(task, idx)
                for k in ks:
                    if any(a.shape == np.shape(truth) and np.array_equal(a, truth) for a in ranked[:k]):
                        solved[k] += 1
            for k in ks:
                per_task[k].append(solved[k] / max(len(outputs), 1))
        return {f"pass@{k}": float(np.mean(v)) if v else 0.0 for k, v in per_task.items()} | {"tasks": len(self.truths)}

    def write_submission(self, path: str, attempts: int = 2) -> str:
        """{task_id: [{"attempt_1": grid, "attempt_2": grid}, ... one per test input]} (ARC Prize format)."""
        submission = {}
        for task, outputs in self.truths.items():
            entries = []
            for idx in range(len(outputs)):
                ranked = self.ranked(task, idx) or [np.zeros((1, 1), dtype=np.int64)]
                entries.append({f"attempt_{a + 1}": ranked[min(a, len(ranked) - 1)].tolist() for a in range(attempts)})
            submission[task] = entries
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(submission, f)
        os.replace(tmp, path)
        return path


def gather_voter(voter: ArcVoter) -> ArcVoter:
    """Merges every rank's votes into rank 0's voter (a no-op without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return voter
    plain = {slot: dict(answers) for slot, answers in voter.votes.items()}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, plain)
    merged = ArcVoter(voter.identifiers, voter.truths)
    for votes in gathered:
        merged.merge(votes)
    return merged


# ---------------------------------------------------------------------------------------------- provenance


def check_eval_allowed(train_sources: list[str], eval_set: str) -> None:
    """Refuses to evaluate on ARC-AGI-1's evaluation tasks a model trained on ARC-AGI-2 training data, which
    contains 376 of those 400 tasks."""
    if eval_set.startswith("arc1") and any(s.startswith("arc2-training") for s in train_sources):
        raise ValueError(
            f"refusing to evaluate on {eval_set!r}: the model was trained on {', '.join(train_sources)}, and "
            "ARC-AGI-2 training contains 376 of the 400 ARC-AGI-1 evaluation tasks"
        )
