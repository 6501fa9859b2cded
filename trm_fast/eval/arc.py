"""ARC evaluation with voting over augmentations (TRM_SPEC section 6). Model-free: it takes numpy arrays.

Every test input of a task is predicted once per augmented version of the task (a dihedral transform and a
permutation of colours 1-9). Each prediction is cropped at its EOS border, mapped back (inverse colour map, then
inverse transform), and the answers vote: the most frequent answers first, ties broken by the mean sigmoid(q_halt)
of their voters. pass@k scores a test input as solved when the truth is among the first k answers; a task scores
the fraction of its test inputs solved; the report averages over tasks.

    scores = evaluate_arc("data/arc1concept-aug-1000", predictions, q_halt, puzzle_ids, inputs=inputs,
                          ks=(1, 2, 10), submission_path="run/submission.json")

The canvas codec is trm_fast/data/arc.py's, the augmentations and their inverses trm_fast/data/augment.py's.
Augmented puzzle names (identifiers.json) read `<task_id>|<dihedral 0-7>|<colour permutation as 10 digits>`, e.g.
`007bbfb7|3|0213456789`; id 0 is "<blank>" (padding rows, never scored).

test_puzzles.json holds, per evaluation task, its original test pairs: {task: [{"input": grid, "output": grid}, ...]}
(the reference's layout, {task: {"train": [...], "test": [...]}}, and bare output lists are read too). A prediction finds its test input either by its index within its puzzle
(`test_index`) or, as the reference evaluator does, by its input canvas mapped back to the original grid (`inputs`).
"""
from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from trm_fast.data.arc import BLANK, CANVAS, crop_canvas, grid_key
from trm_fast.data.augment import parse_arc_aug_name, restore_arc
from trm_fast.files import atomic_write_json, read_json

# ARC-AGI-2 training holds 376 of the 400 ARC-AGI-1 evaluation tasks (same ids, same test pairs).
ARC2_TRAIN_HOLDS_ARC1_EVAL = 376


# ---------------------------------------------------------------------------------------------- voting


def _normalise_truths(test_puzzles: dict) -> tuple[dict, dict]:
    """(task -> true outputs, task -> test inputs or None) from test_puzzles.json in the reference layout
    {task: {"test": [{"input", "output"}]}}, or {task: [output grid | {"input", "output"}, ...]}."""
    outputs, inputs = {}, {}
    for task, value in test_puzzles.items():
        if isinstance(value, np.ndarray) and value.dtype == object and value.ndim == 0:
            value = value.item()
        if isinstance(value, dict):
            if "test" not in value:
                raise ValueError(f"test_puzzles.json task {task}: expected a 'test' list")
            value = value["test"]
        outs, ins = [], []
        for i, entry in enumerate(value):
            if isinstance(entry, np.ndarray) and entry.dtype == object and entry.ndim == 0:
                entry = entry.item()
            if isinstance(entry, dict):
                if "output" not in entry:
                    raise ValueError(f"test_puzzles.json task {task} test {i}: no 'output'")
                outs.append(np.asarray(entry["output"], dtype=np.int64))
                ins.append(np.asarray(entry["input"], dtype=np.int64) if "input" in entry else None)
            else:
                outs.append(np.asarray(entry, dtype=np.int64))
                ins.append(None)
        outputs[task] = outs
        inputs[task] = ins if all(x is not None for x in ins) else None
    return outputs, inputs


def load_arc_files(dataset_root: str) -> tuple[list[str], dict]:
    """(identifiers, test_puzzles) of a built ARC dataset; errors name the missing or broken file."""
    identifiers, test_puzzles = (
        read_json(os.path.join(dataset_root, name), f"is {dataset_root!r} an ARC dataset built by trm-fast data build?")
        for name in ("identifiers.json", "test_puzzles.json"))
    if not isinstance(identifiers, list) or not identifiers or identifiers[0] != BLANK:
        raise ValueError(f"{os.path.join(dataset_root, 'identifiers.json')}: expected a list starting with {BLANK!r}")
    return identifiers, test_puzzles


class ArcVoter:
    """Accumulates predictions (possibly over several batches and ranks) and scores them by voting."""

    def __init__(self, identifiers: list[str], truths: dict, blank_id: int = 0):
        self.identifiers = identifiers
        self.blank_id = blank_id
        self.truths, self.test_inputs = _normalise_truths(truths)
        self._input_index = {task: {grid_key(g): i for i, g in enumerate(ins)}
                             for task, ins in self.test_inputs.items() if ins is not None}
        self.votes: dict = defaultdict(lambda: defaultdict(list))  # (task, test index) -> answer key -> [sigmoid q]
        self.unmatched = 0  # predictions whose input matched no test input of their task

    @classmethod
    def from_dataset(cls, dataset_root: str) -> "ArcVoter":
        return cls(*load_arc_files(dataset_root))

    def add(self, puzzle_ids: np.ndarray, test_index: np.ndarray | None, predictions: np.ndarray, q_halt: np.ndarray,
            inputs: np.ndarray | None = None) -> None:
        """Votes of a batch: puzzle_ids (B,), test_index (B,) the example's index within its puzzle (or None with
        `inputs` (B, 900), matched to the test inputs by content), predictions (B, 900) tokens, q_halt (B,) logits.
        Rows of the blank puzzle id (batch padding) are ignored."""
        puzzle_ids = np.asarray(puzzle_ids).reshape(-1)
        predictions = np.asarray(predictions)
        q_halt = np.asarray(q_halt, dtype=np.float64).reshape(-1)
        B = len(puzzle_ids)
        if predictions.shape != (B, CANVAS * CANVAS) or q_halt.shape != (B,):
            raise ValueError(f"ArcVoter.add: expected predictions ({B}, {CANVAS * CANVAS}) and q_halt ({B},) for {B} "
                             f"puzzle ids, got {predictions.shape} and {q_halt.shape}")
        if test_index is None and inputs is None:
            raise ValueError("ArcVoter.add: give test_index or inputs")
        if inputs is not None and np.asarray(inputs).shape != (B, CANVAS * CANVAS):
            raise ValueError(f"ArcVoter.add: inputs of shape {np.asarray(inputs).shape}, expected ({B}, {CANVAS * CANVAS})")
        if len(puzzle_ids) and (puzzle_ids.min() < 0 or puzzle_ids.max() >= len(self.identifiers)):
            raise ValueError(f"ArcVoter.add: puzzle ids outside [0, {len(self.identifiers)}) (identifiers.json of "
                             "another dataset?)")
        confidence = 1.0 / (1.0 + np.exp(-q_halt))
        for row in range(B):
            pid = int(puzzle_ids[row])
            if pid == self.blank_id:
                continue
            task, k, perm = parse_arc_aug_name(self.identifiers[pid])
            if task not in self.truths:
                raise ValueError(f"ArcVoter.add: puzzle {self.identifiers[pid]!r} belongs to no task of test_puzzles.json")
            if test_index is not None:
                idx = int(test_index[row])
                if not 0 <= idx < len(self.truths[task]):
                    raise ValueError(f"ArcVoter.add: test index {idx} out of range for task {task} "
                                     f"({len(self.truths[task])} test inputs)")
            else:
                grid = crop_canvas(inputs[row])
                lookup = self._input_index.get(task)
                if lookup is None:
                    raise ValueError(f"ArcVoter.add: test_puzzles.json has no test inputs for task {task}; give test_index")
                idx = lookup.get(grid_key(restore_arc(grid, k, perm))) if grid is not None else None
                if idx is None:
                    self.unmatched += 1
                    continue
            grid = crop_canvas(predictions[row])
            if grid is None:
                continue  # no colour at the top-left: no answer to vote for
            self.votes[(task, idx)][grid_key(restore_arc(grid, k, perm))].append(float(confidence[row]))

    def merge(self, other_votes: dict) -> None:
        for slot, answers in other_votes.items():
            for key, confs in answers.items():
                self.votes[slot][key].extend(confs)

    def ranked(self, task: str, idx: int) -> list[np.ndarray]:
        """Answers for one test input, best first: most votes, then highest mean sigmoid(q_halt)."""
        answers = self.votes.get((task, idx), {})
        order = sorted(answers.items(), key=lambda kv: (len(kv[1]), float(np.mean(kv[1]))), reverse=True)
        return [np.frombuffer(key[2:], dtype=np.uint8).reshape(key[0], key[1]).astype(np.int64) for key, _ in order]

    def scores(self, ks=(1, 2)) -> dict:
        """pass@k for each k: the mean over tasks of the fraction of a task's test inputs whose truth is among the
        first k ranked answers."""
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1:
            raise ValueError(f"pass@k needs k >= 1, got {ks}")
        per_task = {k: [] for k in ks}
        for task, outputs in self.truths.items():
            solved = dict.fromkeys(ks, 0.0)
            for idx, truth in enumerate(outputs):
                ranked = self.ranked(task, idx)
                hit = next((r for r, a in enumerate(ranked) if a.shape == truth.shape and np.array_equal(a, truth)), None)
                for k in ks:
                    solved[k] += hit is not None and hit < k
            for k in ks:
                per_task[k].append(solved[k] / max(len(outputs), 1))
        result = {f"pass@{k}": float(np.mean(v)) if v else 0.0 for k, v in per_task.items()}
        result["tasks"] = len(self.truths)
        result["test_inputs"] = sum(len(o) for o in self.truths.values())
        return result

    def submission(self, attempts: int = 2) -> dict:
        """{task_id: [{"attempt_1": grid, "attempt_2": grid}, ... one per test input]} (ARC Prize format). With
        fewer answers than attempts the best answer is repeated; with none, [[0]] stands in."""
        submission = {}
        for task, outputs in self.truths.items():
            entries = []
            for idx in range(len(outputs)):
                ranked = self.ranked(task, idx) or [np.zeros((1, 1), dtype=np.int64)]
                entries.append({f"attempt_{a + 1}": ranked[a if a < len(ranked) else 0].tolist() for a in range(attempts)})
            submission[task] = entries
        return submission

    def write_submission(self, path: str, attempts: int = 2) -> str:
        """Writes submission.json atomically (temporary file, then rename)."""
        atomic_write_json(path, self.submission(attempts), indent=None)
        return path


def gather_voter(voter: ArcVoter) -> ArcVoter:
    """Merges every rank's votes into rank 0's voter (a no-op without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return voter
    plain = {slot: dict(answers) for slot, answers in voter.votes.items()}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, plain)
    merged = ArcVoter(voter.identifiers, {})
    merged.blank_id, merged.truths, merged.test_inputs = voter.blank_id, voter.truths, voter.test_inputs
    merged._input_index = voter._input_index
    for votes in gathered:
        merged.merge(votes)
    return merged


def evaluate_arc(dataset_root: str, predictions: np.ndarray, q_halt: np.ndarray, puzzle_ids: np.ndarray | None = None,
                 test_index: np.ndarray | None = None, inputs: np.ndarray | None = None, ks=(1, 2),
                 submission_path: str | None = None, attempts: int = 2) -> dict:
    """Scores predictions of a built ARC dataset's test split. Without puzzle_ids, the rows are taken to be that
    split's examples in order (puzzle ids and test indices read from <root>/test). Returns pass@k for every k in
    `ks`; with submission_path, writes submission.json there."""
    voter = ArcVoter.from_dataset(dataset_root)
    if puzzle_ids is None:
        from trm_fast.data.format import read_split

        _, sets = read_split(os.path.join(dataset_root, "test"))
        test = next(iter(sets.values()))
        counts = np.diff(np.asarray(test.puzzle_indices))
        puzzle_of_example = np.repeat(np.arange(len(counts)), counts)
        if len(predictions) != len(puzzle_of_example):
            raise ValueError(f"{len(predictions)} predictions for the {len(puzzle_of_example)} test examples of "
                             f"{dataset_root}; give puzzle_ids and test_index for a subset")
        puzzle_ids = np.asarray(test.puzzle_identifiers)[puzzle_of_example]
        test_index = np.arange(len(puzzle_of_example)) - np.asarray(test.puzzle_indices)[puzzle_of_example]
    voter.add(puzzle_ids, test_index, predictions, q_halt, inputs=inputs)
    result = voter.scores(ks)
    if voter.unmatched:
        result["unmatched_predictions"] = voter.unmatched
    if submission_path:
        result["submission"] = voter.write_submission(submission_path, attempts)
    return result


# ---------------------------------------------------------------------------------------------- provenance


def check_eval_allowed(train_sources: list[str], eval_set: str) -> None:
    """Refuses to evaluate on ARC-AGI-1's evaluation tasks a model trained on ARC-AGI-2 training data, which
    contains 376 of those 400 tasks."""
    if eval_set.startswith("arc1") and any(s.startswith("arc2-training") for s in train_sources):
        raise ValueError(
            f"refusing to evaluate on {eval_set!r}: the model was trained on {', '.join(train_sources)}, and "
            f"ARC-AGI-2 training contains {ARC2_TRAIN_HOLDS_ARC1_EVAL} of the 400 ARC-AGI-1 evaluation tasks"
        )


def _provenance(value, what: str) -> dict:
    if isinstance(value, dict):
        return value
    path = os.path.join(value, "provenance.json") if os.path.isdir(value) else value
    try:
        data = read_json(path, "datasets built by `trm-fast data build arc1|arc2` have one")
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if not isinstance(data, dict) or "train_sources" not in data or "eval_set" not in data:
        raise ValueError(f"{what}: {path}: expected an object with train_sources and eval_set")
    return data


def check_no_overlap(train_provenance, eval_dataset) -> None:
    """Raises ValueError when a model trained on the dataset described by `train_provenance` (its folder,
    provenance.json path or the dict) would be scored on test pairs it trained on: by the ARC-1/ARC-2 rule, and by
    the content hashes of every trained pair against the evaluation set's test pairs. Pairs that the evaluation
    dataset's own training split already holds (the benchmark's own duplicates, e.g. one ARC-1 evaluation test pair
    that also occurs in training data) are not counted. `eval_dataset`: folder, provenance.json path or dict."""
    train = _provenance(train_provenance, "training data provenance")
    evaluation = _provenance(eval_dataset, "evaluation data provenance")
    check_eval_allowed(train["train_sources"], evaluation["eval_set"])
    trained = set(train.get("trained_pair_hashes", ())) - set(evaluation.get("trained_pair_hashes", ()))
    tested = evaluation.get("test_pair_hashes", {})
    leaked = sorted(task for task, hashes in tested.items() if trained.intersection(hashes))
    if leaked:
        raise ValueError(
            f"refusing to evaluate on {evaluation['eval_set']!r}: {len(leaked)} of its {len(tested)} tasks have test "
            f"pairs that were in the training data ({', '.join(train['train_sources'])}), e.g. {', '.join(leaked[:5])}")
