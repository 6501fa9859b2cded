"""Training-equivalence checks: the same run (same seed, data and batches) under several settings, loss curves and
final accuracy compared against the first setting. This is how the Triton backend and the recomputation levels are
shown to train like the reference (issues: "sudoku-mlp for 1500 steps, backend torch against triton / level 0
against level 2, loss curves within 2% after warm-up, exact accuracy within 2 points").

    trm-fast compare --preset sudoku-mlp --set data.recipe=sudoku9-small --set data.path= \\
        --set train.lr_warmup_steps=150 --steps 1500 --out runs/compare \\
        --arm torch:model.backend=torch --arm triton:model.backend=triton \\
        --arm triton-level2:model.backend=triton,model.recompute=2

Each arm trains into <out>/<arm> (`--reuse` reads arms finished there by an earlier call with the same
configuration, so arms can be spread over several calls); <out>/compare.json (device, versions, commit, every curve and verdict),
<out>/compare.md and <out>/compare.png are written at the end (atomically). Exit status 0 when every arm is within
the tolerances of the first, 1 otherwise.

The measure: for each logged window after `--after` steps (default: the config's warm-up when it ends before half
of the run, else a fifth of the run) the relative difference |loss_arm - loss_base| / loss_base of the token loss;
an arm passes when the mean over windows is at most `--loss-tolerance` (0.02) and its final held-out exact
accuracy is within `--accuracy-points` (2) points of the base's. The max over windows is reported beside the mean:
single windows of a short run are noisy, which is why the verdict uses the mean.
"""
from __future__ import annotations

import json
import os
import shutil
import time

from trm_fast.config import TRMConfig
from trm_fast.files import atomic_write_json, atomic_write_text, save_figure
from trm_fast.tools.run_config import config_from_flags


def parse_arm(text: str) -> tuple[str, list[str]]:
    """'name:section.field=value,section.field=value' -> (name, overrides). A bare name has no overrides."""
    name, _, spec = text.partition(":")
    name = name.strip()
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"--arm {text!r}: the name before ':' must be letters, digits, '-', '_' or '.'")
    overrides = [o.strip() for o in spec.split(",") if o.strip()]
    for o in overrides:
        if "=" not in o or "." not in o.split("=", 1)[0]:
            raise ValueError(f"--arm {text!r}: {o!r} is not SECTION.FIELD=VALUE")
    return name, overrides


def read_curves(metrics_path: str) -> tuple[list[dict], list[dict]]:
    """(train records, eval records) of a run's metrics.jsonl."""
    train, evals = [], []
    with open(metrics_path) as f:
        for line_no, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{metrics_path}:{line_no}: not a JSON line ({exc})") from None
            (train if record.get("kind") == "train" else evals).append(record)
    return train, evals


def default_after(config: TRMConfig, steps: int) -> int:
    warmup = config.train.lr_warmup_steps
    return warmup if warmup < steps // 2 else steps // 5


def compare_curves(base: list[dict], other: list[dict], after: int, key: str = "lm_loss") -> dict:
    """Relative differences of `key` at the steps both runs logged, past `after`."""
    theirs = {r["step"]: r[key] for r in other}
    rel = [abs(theirs[r["step"]] - r[key]) / max(abs(r[key]), 1e-12)
           for r in base if r["step"] > after and r["step"] in theirs]
    if not rel:
        return {"windows": 0, "mean_rel_diff": None, "max_rel_diff": None}
    return {"windows": len(rel), "mean_rel_diff": sum(rel) / len(rel), "max_rel_diff": max(rel)}


def verdict(curves: dict, base_exact: float, exact: float, loss_tolerance: float, accuracy_points: float) -> dict:
    accuracy_gap = 100.0 * abs(exact - base_exact)
    loss_ok = curves["mean_rel_diff"] is not None and curves["mean_rel_diff"] <= loss_tolerance
    return {**curves, "exact_accuracy_gap_points": accuracy_gap, "loss_ok": loss_ok,
            "accuracy_ok": accuracy_gap <= accuracy_points, "pass": loss_ok and accuracy_gap <= accuracy_points}


def _without_out_dir(config: dict | None) -> dict | None:
    """A config dict minus train.out_dir: a run copied to another folder or machine is the same run."""
    if not isinstance(config, dict):
        return None
    return {**config, "train": {k: v for k, v in config.get("train", {}).items() if k != "out_dir"}}


def _train_arm(name: str, overrides: list[str], config: TRMConfig, run_dir: str, progress: bool, log) -> dict:
    import torch

    from trm_fast.train.trainer import train

    metrics = os.path.join(run_dir, "metrics.jsonl")
    log(f"compare: arm {name} ({', '.join(overrides) or 'base settings'}), {config.train.max_steps} steps -> {run_dir}")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    summary = train(config, progress=progress, log=log, overwrite=True)  # a fresh curve, whatever ran there before
    train_curve, eval_curve = read_curves(metrics)
    return {
        "arm": name, "overrides": overrides, "seconds": round(time.time() - start, 1),
        "train_seconds": summary["train_seconds"],
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "eval": {k: v for k, v in summary["eval"].items() if isinstance(v, (int, float))},
        "train_curve": [{k: r[k] for k in ("step", "lm_loss", "halt_loss", "train_exact_accuracy", "samples_per_s")
                         if k in r} for r in train_curve],
        "eval_curve": [{k: r[k] for k in ("step", "exact_accuracy", "token_accuracy") if k in r} for r in eval_curve],
    }


def run_compare(base: TRMConfig, arms: list[tuple[str, list[str]]], steps: int, out_dir: str,
                loss_tolerance: float = 0.02, accuracy_points: float = 2.0, after: int | None = None,
                progress: bool = True, log=print, reuse: bool = False, drop_checkpoints: bool = False) -> dict:
    """Trains every arm (base config + its overrides, `steps` optimizer steps, fresh run folder) and compares each
    with the first. With `reuse`, an arm whose folder holds a finished run of the same configuration
    (compare_arm.json) is read instead of trained, so a long comparison can be spread over several calls.
    Returns the payload written to <out_dir>/compare.json."""
    from trm_fast.tools.bench.report import environment

    if len(arms) < 2:
        raise ValueError("compare needs at least two --arm settings (the first is the base)")
    names = [name for name, _ in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"--arm names must differ, got {names}")
    after = default_after(base, steps) if after is None else after
    if not 0 <= after < steps:
        raise ValueError(f"--after {after}: must be in [0, steps = {steps})")
    os.makedirs(out_dir, exist_ok=True)
    results = []
    for name, overrides in arms:
        run_dir = os.path.join(out_dir, name)
        config = base.override([*overrides, f"train.max_steps={steps}", "train.max_minutes=0",
                                f"train.out_dir={run_dir}"])
        record_path = os.path.join(run_dir, "compare_arm.json")
        if reuse and os.path.isfile(record_path):
            with open(record_path) as f:
                record = json.load(f)
            if _without_out_dir(record.get("config")) == _without_out_dir(config.to_dict()):
                log(f"compare: arm {name}: reusing the finished run in {run_dir}")
                results.append(record["result"])
                continue
            log(f"compare: arm {name}: the run in {run_dir} has another configuration; training it again")
        results.append(_train_arm(name, overrides, config, run_dir, progress, log))
        atomic_write_json(record_path, {"config": config.to_dict(), "result": results[-1]}, indent=None)
        if drop_checkpoints:  # the record is all a later --reuse needs; small enough to carry between machines
            shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    base_result = results[0]
    for r in results[1:]:
        r["verdict"] = verdict(compare_curves(base_result["train_curve"], r["train_curve"], after),
                               base_result["eval"]["exact_accuracy"], r["eval"]["exact_accuracy"],
                               loss_tolerance, accuracy_points)
    payload = {"environment": environment(), "base_config": base.to_dict(), "steps": steps, "after": after,
               "loss_tolerance": loss_tolerance, "accuracy_points": accuracy_points, "arms": results,
               "pass": all(r["verdict"]["pass"] for r in results[1:])}
    write_outputs(payload, out_dir)
    return payload


def render_markdown(payload: dict) -> str:
    env = payload["environment"]
    lines = [f"# Training comparison: {payload['steps']} steps, curves compared after step {payload['after']}", "",
             f"{env['device']}, torch {env['torch']}, triton {env['triton']}, commit {env['commit']}, {env['date']}", "",
             "| arm | overrides | final exact | final token | mean rel. loss diff | max rel. loss diff | exact gap (pts) "
             "| train s | peak GPU MB | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x, spec: "-" if x is None else format(x, spec)
    for r in payload["arms"]:
        v = r.get("verdict")
        peak = None if r["peak_gpu_bytes"] is None else r["peak_gpu_bytes"] / 2**20
        lines.append(
            f"| {r['arm']} | {', '.join(r['overrides']) or '-'} | {r['eval']['exact_accuracy']:.4f} | "
            f"{r['eval']['token_accuracy']:.4f} | {fmt(v and v['mean_rel_diff'], '.4f')} | "
            f"{fmt(v and v['max_rel_diff'], '.4f')} | {fmt(v and v['exact_accuracy_gap_points'], '.2f')} | "
            f"{r['train_seconds']} | {fmt(peak, '.0f')} | {'base' if v is None else ('pass' if v['pass'] else 'FAIL')} |")
    lines += ["", f"Tolerances: mean relative token-loss difference <= {payload['loss_tolerance']:.0%}, final exact "
                  f"accuracy within {payload['accuracy_points']:g} points. Overall: "
                  f"{'pass' if payload['pass'] else 'FAIL'}.", ""]
    return "\n".join(lines)


def render_png(payload: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    base = {r["step"]: r["lm_loss"] for r in payload["arms"][0]["train_curve"]}
    for i, r in enumerate(payload["arms"]):
        color = f"C{i}"  # one colour per arm in every panel
        steps = [p["step"] for p in r["train_curve"]]
        axes[0].plot(steps, [p["lm_loss"] for p in r["train_curve"]], color=color, label=r["arm"])
        if i:
            both = [p for p in r["train_curve"] if p["step"] in base]
            axes[1].plot([p["step"] for p in both], [p["lm_loss"] / base[p["step"]] - 1 for p in both], color=color,
                         label=r["arm"])
        for j, key in enumerate(("exact_accuracy", "token_accuracy")):
            axes[2].bar(j + (i - (len(payload["arms"]) - 1) / 2) * 0.8 / len(payload["arms"]), r["eval"][key],
                        width=0.8 / len(payload["arms"]), color=color, label=r["arm"] if j == 0 else None)
    axes[0].set_yscale("log")
    axes[0].set_title("token loss (train windows)")
    tol = payload["loss_tolerance"]
    axes[1].axhspan(-tol, tol, color="0.9", label=f"±{tol:.0%}")
    axes[1].axvline(payload["after"], color="0.5", linestyle=":", label="compared from here")
    axes[1].set_title(f"relative difference to {payload['arms'][0]['arm']}")
    axes[2].set_ylim(0, 1.02)
    axes[2].set_xticks([0, 1], ["exact", "token"])
    axes[2].set_title(f"held-out accuracy after {payload['steps']} steps")
    for ax in axes[:2]:
        ax.set_xlabel("optimizer step")
    for ax in axes:
        ax.legend(fontsize=8)
    env = payload["environment"]
    fig.suptitle(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | {env['commit']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_outputs(payload: dict, out_dir: str) -> None:
    atomic_write_json(os.path.join(out_dir, "compare.json"), payload, indent=1)
    atomic_write_text(os.path.join(out_dir, "compare.md"), render_markdown(payload))
    render_png(payload, os.path.join(out_dir, "compare.png"))


def add_compare_subparser(sub) -> None:
    p = sub.add_parser("compare", help="train the same run under several settings and compare the curves")
    p.add_argument("--preset", help="the base configuration (see `trm-fast presets`)")
    p.add_argument("--config", help="a YAML or JSON file of overrides of the base")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override the base (repeatable)")
    p.add_argument("--arm", action="append", required=True, metavar="NAME:SECTION.FIELD=VALUE,...",
                   help="one setting to train (repeat; the first is the base the others are compared with)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps per arm")
    p.add_argument("--after", type=int, help="compare curves past this step (default: the warm-up, see module doc)")
    p.add_argument("--loss-tolerance", type=float, default=0.02)
    p.add_argument("--accuracy-points", type=float, default=2.0)
    p.add_argument("--out", required=True, help="folder for the arms' runs and compare.{json,md,png}")
    p.add_argument("--reuse", action="store_true",
                   help="read arms already finished in OUT with the same configuration instead of training them again")
    p.add_argument("--drop-checkpoints", action="store_true",
                   help="delete each arm's checkpoints once its record (compare_arm.json) is written")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_compare_command)


def run_compare_command(args) -> int:
    if args.steps < 1:
        raise ValueError(f"--steps {args.steps}: at least one optimizer step per arm")
    # train.out_dir names the comparison's folder in base_config; every arm trains into its own sub-folder
    base = config_from_flags(args.preset, args.config, [*(args.set or []), f"train.out_dir={args.out}"])
    payload = run_compare(base, [parse_arm(a) for a in args.arm], args.steps, args.out, args.loss_tolerance,
                          args.accuracy_points, args.after, progress=not args.no_progress, reuse=args.reuse,
                          drop_checkpoints=args.drop_checkpoints)
    print(render_markdown(payload))
    print(f"written: {os.path.join(args.out, 'compare.json')}, compare.md, compare.png")
    return 0 if payload["pass"] else 1
