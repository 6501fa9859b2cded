"""Experiment tracking: TensorBoard and W&B get metrics.jsonl's records at the same steps plus each evaluation's
per-supervision-step curve; a resumed run continues the same TensorBoard folder and W&B run; only rank 0 logs."""
import json
import os
import sys
import types

import pytest

from trm_fast.cli import make_parser
from trm_fast.config import TRMConfig
from trm_fast.train.tracking import open_trackers, scalars
from trm_fast.train.trainer import train

QUIET = dict(progress=False, log=lambda *a: None)


def tiny(run_dir, *extra):
    return TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={run_dir}", "train.max_steps=4",
                                                      "train.log_interval=2", "train.eval_interval=2",
                                                      "train.checkpoint_interval=2", *extra])


def records(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def expected_scalars(run_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every number metrics.jsonl holds."""
    out: dict[str, dict[int, float]] = {}
    for record in records(run_dir):
        for tag, value in scalars(record).items():
            out.setdefault(tag, {})[record["step"]] = value
    return out


def run_id(run_dir) -> str:
    with open(os.path.join(run_dir, "tracking.json")) as f:
        return json.load(f)["run_id"]


def read_tensorboard(log_dir, steps_only=False) -> dict:
    """tag -> {step: value} of the scalars in a TensorBoard folder, read with TensorBoard's own reader (or tag ->
    the list of steps of its events, repeats included)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    if steps_only:
        return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_log_is_repeatable_on_the_command_line():
    args = make_parser().parse_args(["train", "--preset", "sudoku4-tiny", "--log", "tensorboard", "--log", "wandb"])
    assert args.log == ["tensorboard", "wandb"]
    with pytest.raises(SystemExit):
        make_parser().parse_args(["train", "--log", "mlflow"])


def test_tensorboard_gets_the_jsonl_metrics_and_a_resume_continues_its_folder(tmp_path):
    run = tmp_path / "run"
    train(tiny(run), trackers=["tensorboard"], **QUIET)
    log_dir = run / "tensorboard" / run_id(run)
    logged = read_tensorboard(log_dir)
    expected = expected_scalars(run)
    for tag in ("train/lm_loss", "train/halt_loss", "train/train_exact_accuracy", "train/train_mean_steps", "train/lr",
                "train/samples_per_s", "train/peak_memory_mb", "eval/exact_accuracy", "eval/mean_halt_step"):
        assert tag in expected, tag  # what the issue asks to track is in the JSONL log
    assert {t: s for t, s in logged.items() if not t.startswith("eval_by_step/")}.keys() == expected.keys()
    for tag, by_step in expected.items():
        assert logged[tag] == pytest.approx(by_step, rel=1e-6), tag  # TensorBoard stores float32
    evals = [r for r in records(run) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        curve = logged[f"eval_by_step/exact_accuracy/train_step_{r['step']}"]
        assert curve == pytest.approx(dict(enumerate(r["exact_accuracy_by_step"], 1)), rel=1e-6)
        assert sorted(curve) == list(range(1, 5))  # x: supervision steps 1..halt_max_steps

    # resumed from step 2: the same folder, and what the first run logged after step 2 is purged, not doubled
    first_id = run_id(run)
    train(tiny(run, "train.max_steps=6"), resume=str(run / "checkpoints" / "step_00000002"), trackers=["tensorboard"],
          **QUIET)
    assert run_id(run) == first_id and os.listdir(run / "tensorboard") == [first_id]
    assert read_tensorboard(log_dir, steps_only=True)["train/lm_loss"] == [2, 4, 6]
    # a fresh run in the folder is another tracking run
    train(tiny(run, "train.lr=0.002"), overwrite=True, trackers=["tensorboard"], **QUIET)
    assert run_id(run) != first_id and os.listdir(run / "tensorboard") == [run_id(run)]


class StandInWandb(types.ModuleType):
    """What the trainer uses of wandb: init -> run with log(data, step) and finish(); Table."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        module = self

        class Run:
            def log(self, data, step):
                module.logged.append((step, data))

            def finish(self):
                module.finished += 1

        return Run()

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data


def test_wandb_gets_the_jsonl_metrics_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    wandb = StandInWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    run = tmp_path / "run"
    train(tiny(run), trackers=["wandb", "tensorboard", "wandb"], **QUIET)  # each tracker once
    assert len(wandb.inits) == 1 and wandb.finished == 1
    init = wandb.inits[0]
    assert init["id"] == run_id(run) and init["resume"] == "allow" and init["dir"] == str(run)
    assert init["config"]["train"]["out_dir"] == str(run)
    logged: dict[str, dict[int, float]] = {}
    tables = {}
    for step, data in wandb.logged:
        for key, value in data.items():
            if key == "eval_by_step":
                tables[step] = value
            else:
                logged.setdefault(key, {})[step] = value
    assert logged == expected_scalars(run)  # the same numbers at the same steps, exactly
    for r in records(run):
        if r["kind"] == "eval":
            table = tables[r["step"]]
            assert table.columns == ["supervision_step", "exact_accuracy", "token_accuracy"]
            assert table.data == [[k, e, t] for k, (e, t) in
                                  enumerate(zip(r["exact_accuracy_by_step"], r["token_accuracy_by_step"]), 1)]
    train(tiny(run, "train.max_steps=6"), resume="auto", trackers=["wandb"], **QUIET)
    assert wandb.inits[1]["id"] == init["id"] and wandb.logged[-1][0] == 6


def test_wandb_offline_needs_no_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(tiny(run, "train.max_steps=2"), trackers=["wandb"], **QUIET)
    offline = [d for d in os.listdir(run / "wandb") if d.startswith("offline-run-")]
    assert len(offline) == 1 and offline[0].endswith(run_id(run))


def test_only_rank_zero_tracks(tmp_path):
    trackers = open_trackers(["tensorboard", "wandb"], str(tmp_path), {}, resume_step=0, rank=1)
    assert trackers.trackers == [] and os.listdir(tmp_path) == []
    assert trackers.requested  # every rank computes the evaluation's per-step curve: its sums are all-reduced
    with pytest.raises(ValueError, match="--log mlflow: unknown tracker"):
        open_trackers(["mlflow"], str(tmp_path), {}, resume_step=0)
