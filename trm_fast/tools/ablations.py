"""The paper's comparison rows (TRM_SPEC section 7: Tables 1 and 2 on Sudoku-Extreme, TRM-MLP T=3 n=6 = 87.4%, and
HRM), each as overrides of a base preset, and a runner for short trainings of any row at an equal budget.

    trm-fast ablations --list [--preset sudoku-mlp]
    trm-fast ablations --run 1-step-grad --budget-steps 500 --preset sudoku6-demo
    trm-fast ablations --run all --budget-minutes 5 --preset sudoku6-demo

A row's config is the base preset switched to the paper's ablation baseline (TRM-MLP: MLP mixer, no positional
encoding, T = 3, n = 6, 2 blocks; the base keeps its width, data and training settings), then the row's overrides,
then any --set overrides. Every run appends one line to <out>/results.jsonl and re-renders
<out>/results.md and <out>/results.png from all lines, so rows run at the same budget compare side by side.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from trm_fast.files import atomic_write_text, save_figure

# The ablations' baseline, TRM-MLP with T = 3, n = 6 and 2 blocks, at the base preset's width, data and training
BASE_SWITCH = ("model.mixer=mlp", "model.pos_encoding=none", "model.T=3", "model.n=6", "model.num_blocks=2")


@dataclass(frozen=True)
class Row:
    name: str
    table: str  # where the paper reports it
    published: float  # Sudoku-Extreme exact accuracy (%), TRM_SPEC section 7
    overrides: tuple[str, ...]  # on top of the base preset switched to the ablation baseline
    about: str
    full_preset: str = ""  # a preset running the row with its authors' own full recipe, where one exists


_HRM = ("model.arch=hrm", "model.T=2", "model.n=2", "model.hrm_high_blocks=4", "model.hrm_low_blocks=4",
        "model.mixer=attention", "model.pos_encoding=rope", "model.puzzle_emb_len=1", "model.act_continue=true")

ROWS: dict[str, Row] = {r.name: r for r in (
    Row("trm-mlp", "Table 1", 87.4, (), "TRM-MLP, T=3, n=6 (the baseline of every ablation)", "sudoku-mlp"),
    Row("act-continue", "Table 1", 86.1, ("model.act_continue=true",),
        "halt when q_halt > q_continue; Q-continue BCE against the next step's Q-values"),
    Row("separate-nets", "Table 1", 82.4, ("model.separate_nets=true",), "one network for z, another for y"),
    Row("no-ema", "Table 1", 79.9, ("train.ema=false",), "evaluate the live weights"),
    Row("4-blocks-n3", "Table 1", 79.5, ("model.num_blocks=4", "model.n=3"), "4 blocks per network, n = 3"),
    Row("self-attention", "Table 1", 74.7, ("model.mixer=attention", "model.pos_encoding=rope"),
        "self-attention with RoPE instead of the MLP-mixer (TRM-Att)", "sudoku-att"),
    Row("T2-n2", "Table 1", 73.7, ("model.T=2", "model.n=2"), "T = 2 cycles of n = 2 z updates"),
    Row("1-step-grad", "Table 1", 56.5, ("model.grad_mode=one_step",),
        "gradient through the last z update and the y update only (2 network calls)"),
    Row("single-latent", "Table 2", 71.9, ("model.latent=single",), "z only: z = net(z + x) n times, z = net(z)"),
    Row("multiscale-latent", "Table 2", 77.6, ("model.latent=multiscale",),
        "n + 1 latent features: y and one z_i per z update"),
    Row("hrm", "Table 1", 55.0, _HRM,
        "HRM: two 4-block attention networks, T=2, n=2, 1-step gradient, Q-continue halting", "hrm-sudoku"),
)}


# ---------------------------------------------------------------------------------------------- configs


def row_config(row: str, base: str = "sudoku-mlp", extra: list[str] | tuple[str, ...] = ()):
    """The base preset switched to the ablation baseline (BASE_SWITCH), then the row's overrides, then `extra`."""
    from trm_fast.config import TRMConfig

    if row not in ROWS:
        raise ValueError(f"unknown ablation row {row!r}; rows: {', '.join(ROWS)}")
    config = TRMConfig.preset(base).override(list(BASE_SWITCH) + list(ROWS[row].overrides) + list(extra))
    config.name = f"{base}:{row}"
    return config


def block_applications(model) -> tuple[int, int]:
    """(block applications per supervision step, how many of them carry gradient) for a ModelConfig. Training with
    the continue loss runs one more no-grad forward per step, not counted here."""
    from trm_fast.tools.memory import gradient_calls

    T, n = model.T, model.n
    if model.arch == "hrm":
        total = T * (n * model.hrm_low_blocks + model.hrm_high_blocks)
    else:  # per cycle: n z updates (for the single latent: n updates with x) and one y (or final z) update
        total = T * (n + 1) * model.num_blocks
    return total, gradient_calls(model)[1]


def parameter_count(model_config) -> int:
    """Trainable parameters of the model a ModelConfig builds (on the meta device: nothing is allocated)."""
    import torch

    from trm_fast.model import build_model, count_parameters

    with torch.device("meta"):
        return count_parameters(build_model(model_config))


def list_rows(base: str = "sudoku-mlp") -> str:
    header = (f"{'row':18s} {'table':7s} {'published':>9s} {'params':>11s} {'blocks/step':>11s}  "
              f"overrides on the base preset {base!r} switched to {' '.join(BASE_SWITCH)}")
    lines = [header]
    for row in ROWS.values():
        config = row_config(row.name, base)
        forward, with_grad = block_applications(config.model)
        overrides = " ".join(row.overrides) or "(the base)"
        full = f"   [alone at full size: preset {row.full_preset}]" if row.full_preset else ""
        lines.append(f"{row.name:18s} {row.table:7s} {row.published:8.1f}% {parameter_count(config.model):11,d} "
                     f"{forward:5d} ({with_grad:2d})  {overrides}{full}")
    lines.append("published: Sudoku-Extreme exact accuracy after full training (paper); blocks/step: block "
                 "applications per supervision step (with gradient in brackets)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- runs


def _budget_overrides(budget_steps: int | None, budget_minutes: float | None) -> tuple[list[str], str]:
    if (budget_steps is None) == (budget_minutes is None):
        raise ValueError("give exactly one budget: --budget-steps K or --budget-minutes M")
    if budget_steps is not None:
        if budget_steps < 1:
            raise ValueError(f"--budget-steps must be >= 1, got {budget_steps}")
        return [f"train.max_steps={budget_steps}", "train.max_minutes=0"], f"{budget_steps} steps"
    if not budget_minutes > 0:
        raise ValueError(f"--budget-minutes must be > 0, got {budget_minutes}")
    # the wall clock stops the run (the trainer evaluates and saves there), or the preset's own schedule if sooner
    return [f"train.max_minutes={budget_minutes}"], f"{budget_minutes:g} min"


def run_row(row: str, base: str, out_root: str, budget_steps: int | None = None, budget_minutes: float | None = None,
            extra: list[str] | tuple[str, ...] = (), progress: bool = True, render: bool = True) -> dict:
    """Trains a row within the budget, appends its result to out_root/results.jsonl and (with `render`)
    re-renders the table and chart of every run so far. Each run writes its own folder under out_root/runs/."""
    from trm_fast.train.trainer import train

    budget, budget_label = _budget_overrides(budget_steps, budget_minutes)
    run_dir = os.path.join(out_root, "runs", f"{row}-{budget_label.replace(' ', '')}-{time.strftime('%Y%m%d-%H%M%S')}")
    config = row_config(row, base, budget + [f"train.out_dir={run_dir}"] + list(extra))
    summary = train(config, progress=progress)
    if summary.get("interrupted"):
        raise RuntimeError(f"the run of row {row!r} was interrupted at step {summary['step']} (checkpoint "
                           f"{summary['checkpoint']}); nothing was added to the table")
    forward, with_grad = block_applications(config.model)
    ev = summary["eval"]
    result = {
        "row": row, "table": ROWS[row].table, "base": base, "budget": budget_label, "extra": list(extra),
        "steps": summary["steps"], "published": ROWS[row].published,
        "exact_accuracy": ev["exact_accuracy"], "token_accuracy": ev["token_accuracy"],
        "halt_accuracy": ev.get("halt_accuracy"), "parameters": summary["parameters"],
        "blocks_per_step": forward, "blocks_with_grad": with_grad, "train_seconds": summary["train_seconds"],
        "device": summary["device"], "run_dir": summary["run_dir"], "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.makedirs(out_root, exist_ok=True)
    with open(os.path.join(out_root, "results.jsonl"), "a") as f:  # append-only: earlier results stay intact
        f.write(json.dumps(result) + "\n")
    if render:
        render_table(out_root)
    return result


def _read_results(out_root: str) -> list[dict]:
    path = os.path.join(out_root, "results.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: run a row first (trm-fast ablations --run ROW ...)")
    runs = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not valid JSON ({exc})") from None
    return runs


def render_table(out_root: str) -> tuple[str, str]:
    """results.jsonl -> results.md and results.png: the latest run per (row, base, budget, extra overrides),
    grouped by base preset and budget, rows in the paper's order."""
    latest: dict[tuple, dict] = {}
    for r in _read_results(out_root):
        latest[(r["row"], r["base"], r["budget"], tuple(r.get("extra", ())))] = r
    order = {name: i for i, name in enumerate(ROWS)}
    rows = sorted(latest.values(), key=lambda r: (r["base"], r["budget"], " ".join(r.get("extra", ())),
                                                  order.get(r["row"], len(order))))
    md = ["| row | table | base | budget | steps | exact | token | published | params | blocks/step (grad) | seconds | device |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        extra = f" ({' '.join(r['extra'])})" if r.get("extra") else ""
        md.append(f"| {r['row']} | {r['table']} | {r['base']}{extra} | {r['budget']} | {r['steps']} | "
                  f"{100 * r['exact_accuracy']:.1f}% | {100 * r['token_accuracy']:.1f}% | {r['published']:.1f}% | "
                  f"{r['parameters']:,} | {r['blocks_per_step']} ({r['blocks_with_grad']}) | {r['train_seconds']:.0f} | "
                  f"{r['device']} |")
    md.append("")
    md.append("exact/token: held-out accuracy after the budget; published: the paper's Sudoku-Extreme exact accuracy "
              "after full training.")
    md_path = os.path.join(out_root, "results.md")
    atomic_write_text(md_path, "\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(rows) + 2), 4.5))
    xs = list(range(len(rows)))
    ax.bar([x - 0.2 for x in xs], [100 * r["exact_accuracy"] for r in rows], 0.4, label="this run (budget below)")
    ax.bar([x + 0.2 for x in xs], [r["published"] for r in rows], 0.4, label="published (full training)", alpha=0.6)
    ax.set_xticks(xs, [f"{r['row']}\n{r['base']}, {r['budget']}" for r in rows], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("exact accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Sudoku ablations at equal budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = save_figure(fig, os.path.join(out_root, "results.png"), dpi=100)
    return md_path, png_path


# ---------------------------------------------------------------------------------------------- command line


def add_ablations_subparser(subparsers) -> None:
    p = subparsers.add_parser("ablations", help="the paper's ablation rows and HRM: list them or train them at an equal budget")
    p.add_argument("--list", action="store_true", help="show every row, its published accuracy and its overrides")
    p.add_argument("--run", metavar="ROW", help="train this row (several: comma-separated; every row: all)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-steps", type=int, metavar="K", help="optimizer steps per run")
    budget.add_argument("--budget-minutes", type=float, metavar="M", help="wall-clock minutes of training per run")
    p.add_argument("--preset", "--base", dest="preset", default="sudoku-mlp",
                   help="base preset for width, data and training (switched to TRM-MLP T=3 n=6, then the row's "
                        "overrides); e.g. sudoku6-demo on a CPU")
    p.add_argument("--out", default="runs/ablations", help="folder of results.jsonl, results.md, results.png")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="extra overrides on every row (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_ablations_command)


def _selected_rows(spec: str) -> list[str]:
    names = list(ROWS) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        raise ValueError(f"unknown ablation row(s) {', '.join(unknown) or repr(spec)}; rows: {', '.join(ROWS)}, or all")
    return names


def run_ablations_command(args) -> int:
    if args.list or not args.run:
        print(list_rows(args.preset))
        return 0
    rows = _selected_rows(args.run)
    if args.budget_steps is None and args.budget_minutes is None:
        raise ValueError("--run needs a budget: --budget-steps K or --budget-minutes M")
    for row in rows:  # every config is checked before any training starts
        row_config(row, args.preset, args.set)
    for row in rows:
        result = run_row(row, args.preset, args.out, args.budget_steps, args.budget_minutes, args.set,
                         progress=not args.no_progress)
        print(f"{row}: exact {100 * result['exact_accuracy']:.1f}% (token {100 * result['token_accuracy']:.1f}%) after "
              f"{result['steps']} steps in {result['train_seconds']:.0f} s; published {result['published']:.1f}%")
    print(f"table: {os.path.join(args.out, 'results.md')}, chart: {os.path.join(args.out, 'results.png')}")
    return 0
