"""Whose run folder is it: a training run refuses a train.out_dir that holds a run of another configuration unless it
is told what to do, `--resume` (continue that run) or `--overwrite` (replace it).

Runs are told apart by a hash of their configuration (`config_hash`: every field but train.out_dir, so a run folder
copied elsewhere is the same run), read from the config.json every run writes into its folder. The same configuration
again (re-running the demo) starts afresh there as before."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

from trm_fast.checkpoint import list_checkpoints
from trm_fast.config import TRMConfig

# What `trm-fast train` writes into a run folder; --overwrite removes these and nothing else.
RUN_ARTEFACTS = ("config.json", "metrics.jsonl", "summary.json", "curves.png", "checkpoints", "tracking.json",
                 "tensorboard", "wandb", "submission.json")


def _without_out_dir(config: dict) -> dict:
    return {**config, "train": {k: v for k, v in config.get("train", {}).items() if k != "out_dir"}}


def config_hash(config: dict) -> str:
    """12 hex digits of the sha256 of the configuration (TRMConfig.to_dict()) without train.out_dir."""
    text = json.dumps(_without_out_dir(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _differences(recorded: dict, config: dict, limit: int = 4) -> str:
    """`section.field: old -> new` for the first `limit` fields that differ."""
    found = []
    recorded, config = _without_out_dir(recorded), _without_out_dir(config)
    for section in sorted(set(recorded) | set(config)):
        old, new = recorded.get(section), config.get(section)
        if not isinstance(old, dict) or not isinstance(new, dict):
            if old != new:
                found.append(f"{section}: {old!r} -> {new!r}")
            continue
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                found.append(f"{section}.{name}: {old.get(name)!r} -> {new.get(name)!r}")
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return ", ".join(found[:limit]) + more


def recorded_config(run_dir: str) -> dict | None:
    """The configuration a run folder records (its config.json), None where it has none; ValueError when unreadable.
    Fields added to TRMConfig since the run was written take their defaults, as they would when it is resumed."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}), so the run in {run_dir} cannot be compared with this one: "
                         "--overwrite replaces it, or choose another --out") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a configuration; --overwrite replaces the run in {run_dir}, or choose another --out")
    try:
        return TRMConfig.from_dict(config, source=path).to_dict()
    except ValueError:
        return config  # fields this version does not know: another configuration, its differences named as they are


def remove_run(run_dir: str) -> list[str]:
    """Deletes the artefacts of the run in `run_dir` (RUN_ARTEFACTS; nothing else there). Returns what it removed."""
    removed = []
    for name in RUN_ARTEFACTS:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def claim_run_folder(run_dir: str, config: dict, resume: str | None, overwrite: bool, log=print) -> None:
    """Checks that a training run may use `run_dir` (raises ValueError saying what to do when it may not), and with
    `overwrite` clears the run that is there. `config` is the run's TRMConfig.to_dict() as config.json records it."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    if overwrite:
        removed = remove_run(run_dir)
        if removed:
            log(f"--overwrite: removed {', '.join(removed)} from {run_dir}")
        return
    if resume:
        return
    what_to_do = "--resume auto continues it, --overwrite replaces it, or choose another --out (train.out_dir)"
    recorded = recorded_config(run_dir)
    if recorded is None:
        if list_checkpoints(run_dir):
            raise ValueError(f"{run_dir} holds checkpoints but no config.json (an imported checkpoint?): {what_to_do}")
        return
    old, new = config_hash(recorded), config_hash(config)
    if old != new:
        raise ValueError(f"{run_dir} holds a run of another configuration (config {old} there, {new} here; "
                         f"{_differences(recorded, config)}): {what_to_do}")
    if list_checkpoints(run_dir):
        log(f"{run_dir} holds checkpoints of this configuration; training starts afresh (--resume auto continues them)")
