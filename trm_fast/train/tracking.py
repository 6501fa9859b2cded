"""Experiment tracking beside metrics.jsonl: `trm-fast train --log tensorboard --log wandb`.

Every tracker gets the records metrics.jsonl gets, at the same optimizer steps: a train record's losses, accuracies,
supervision steps at halt, learning rate, throughput and peak memory as `train/<name>`, an evaluation's as
`eval/<name>`, and an evaluation's accuracy after each supervision step (test-time compute) as a curve over those
steps: TensorBoard tags `eval_by_step/<name>/train_step_<step>` with the supervision step as x, a W&B table
`eval_by_step`. Only rank 0 logs.

One run id per run, kept in <run>/tracking.json: a resumed run continues the same TensorBoard folder
(<run>/tensorboard/<id>, where events past the checkpoint's step are purged) and the same W&B run (id <id>,
resume="allow"); a fresh start gets a new id. W&B follows its own environment: WANDB_MODE=offline needs no network
(`wandb sync <run>/wandb/offline-run-*` uploads later), WANDB_PROJECT names the project (default "trm_fast").

Nothing here imports torch at import time (the CLI lists TRACKERS).
"""
from __future__ import annotations

import json
import math
import os
import uuid

TRACKERS = ("tensorboard", "wandb")
_CURVE_SUFFIX = "_by_step"


def scalars(record: dict) -> dict[str, float]:
    """`<kind>/<name>` -> value for every finite number in a metrics.jsonl record (not its step and kind)."""
    kind = record.get("kind", "train")
    out = {}
    for name, value in record.items():
        if name in ("step", "kind") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{kind}/{name}"] = float(value)
    return out


def step_curves(record: dict) -> dict[str, list[float]]:
    """An evaluation's per-supervision-step accuracies (`exact_accuracy_by_step`, ...): name -> values of steps 1..K."""
    return {name[:-len(_CURVE_SUFFIX)]: [float(v) for v in value] for name, value in record.items()
            if name.endswith(_CURVE_SUFFIX) and isinstance(value, list) and value}


class TensorBoardTracker:
    def __init__(self, run_dir: str, run_id: str, resume_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--log tensorboard needs the tensorboard package (pip install tensorboard)") from None
        self.log_dir = os.path.join(run_dir, "tensorboard", run_id)
        # a resumed run logs the steps after its checkpoint again: hide what the interrupted run logged there
        self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=resume_step + 1 if resume_step else None)

    def log(self, record: dict) -> None:
        step = int(record["step"])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        for name, values in step_curves(record).items():
            for supervision_step, value in enumerate(values, 1):
                self.writer.add_scalar(f"eval_by_step/{name}/train_step_{step}", value, supervision_step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: str, run_id: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise ValueError("--log wandb needs the wandb package (pip install wandb; WANDB_MODE=offline works "
                             "without network)") from None
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "trm_fast"), name=config.get("name"), id=run_id,
                              resume="allow", dir=run_dir, config=config)

    def log(self, record: dict) -> None:
        data = scalars(record)
        curves = step_curves(record)
        if curves:
            names = sorted(curves)
            steps = max(len(curves[n]) for n in names)
            rows = [[k + 1, *(curves[n][k] if k < len(curves[n]) else None for n in names)] for k in range(steps)]
            data["eval_by_step"] = self.wandb.Table(columns=["supervision_step", *names], data=rows)
        self.run.log(data, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers of one run, fed the same records (none on ranks other than 0, or without --log). `requested`
    is the same on every rank: whether the run tracks at all (evaluations then compute the per-step curve, whose
    sums every rank all-reduces)."""

    def __init__(self, trackers: list, requested: bool = False):
        self.trackers = trackers
        self.requested = requested or bool(trackers)

    def log(self, record: dict) -> None:
        for tracker in self.trackers:
            tracker.log(record)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def tracking_run_id(run_dir: str, resumed: bool) -> str:
    """The run's id: the one recorded in <run>/tracking.json when the run is resumed, else a new one (recorded)."""
    path = os.path.join(run_dir, "tracking.json")
    if resumed and os.path.isfile(path):
        with open(path) as f:
            run_id = json.load(f).get("run_id")
        if isinstance(run_id, str) and run_id:
            return run_id
    from trm_fast.files import atomic_write_json

    run_id = uuid.uuid4().hex[:12]
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_json(path, {"run_id": run_id})
    return run_id


def open_trackers(names, run_dir: str, config: dict, resume_step: int, rank: int = 0) -> Trackers:
    """Trackers named by `names` (TRACKERS, repeats ignored) for the run in `run_dir`; `resume_step` > 0 continues the
    recorded tracking run from that step."""
    unknown = sorted(set(names) - set(TRACKERS))
    if unknown:
        raise ValueError(f"--log {unknown[0]}: unknown tracker; choose from {', '.join(TRACKERS)}")
    if rank != 0 or not names:
        return Trackers([], requested=bool(names))
    run_id = tracking_run_id(run_dir, resumed=resume_step > 0)
    trackers = Trackers([], requested=True)
    try:
        for name in dict.fromkeys(names):
            trackers.trackers.append(TensorBoardTracker(run_dir, run_id, resume_step) if name == "tensorboard"
                                     else WandbTracker(run_dir, run_id, config))
    except BaseException:
        trackers.close()
        raise
    return trackers
