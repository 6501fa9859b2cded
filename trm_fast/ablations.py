"""The paper's comparison rows (TRM_SPEC section 7: Tables 1 and 2 on Sudoku-Extreme, TRM-MLP T=3 n=6 = 87.4%),
each as overrides of a base preset, and a runner for short, equal-compute trainings of any row.

    trm-fast ablations --list
    trm-fast ablations --run 1-step-grad --budget-steps 500 --base sudoku6-demo
"""
from __future__ import annotations

import json
import os

# row -> (published Sudoku-Extreme exact accuracy, overrides on top of the base preset)
ROWS: dict[str, tuple[float, list[str]]] = {
    "trm-mlp": (87.4, []),
    "act-continue": (86.1, ["model.act_continue=true"]),
    "separate-nets": (82.4, ["model.separate_nets=true"]),
    "no-ema": (79.9, ["train.ema=false"]),
    "4-blocks-n3": (79.5, ["model.num_blocks=4", "model.n=3"]),
    "self-attention": (74.7, ["model.mixer=attention", "model.pos_encoding=rope"]),
    "T2-n2": (73.7, ["model.T=2", "model.n=2"]),
    "1-step-grad": (56.5, ["model.grad_mode=one_step"]),
    "single-latent": (71.9, ["model.latent=single"]),
    "multiscale-latent": (77.6, ["model.latent=multiscale"]),
    "hrm": (55.0, ["model.arch=hrm", "model.T=2", "model.n=2", "model.mixer=attention", "model.pos_encoding=rope",
                   "model.puzzle_emb_len=1", "model.act_continue=true"]),
}


def row_config(row: str, base: str = "sudoku-mlp", extra: list[str] | None = None):
    """The base preset switched to TRM-MLP (MLP mixer, no positional encoding), then the row's overrides."""
    from trm_fast.config import TRMConfig

    if row not in ROWS:
        raise ValueError(f"unknown ablation row {row!r}; rows: {', '.join(ROWS)}")
    config = TRMConfig.preset(base).override(["model.mixer=mlp", "model.pos_encoding=none"])
    config = config.override(ROWS[row][1] + list(extra or []))
    config.name = f"{base}:{row}"
    return config


def list_rows() -> str:
    lines = [f"{'row':20s} {'published':>9s}  overrides (on the base preset, TRM-MLP)"]
    for row, (acc, overrides) in ROWS.items():
        lines.append(f"{row:20s} {acc:8.1f}%  {' '.join(overrides) or '(the base)'}")
    return "\n".join(lines)


def run_row(row: str, budget_steps: int, base: str, out_root: str, extra: list[str] | None = None,
            progress: bool = True) -> dict:
    """Trains a row for `budget_steps` optimizer steps and appends its result to out_root/results.jsonl, then
    re-renders the markdown table and PNG chart of every row run so far."""
    from trm_fast.train.trainer import train

    config = row_config(row, base, [f"train.max_steps={budget_steps}", f"train.out_dir={os.path.join(out_root, row)}",
                                    "train.max_minutes=0"] + list(extra or []))
    summary = train(config, progress=progress)
    result = {"row": row, "base": base, "budget_steps": budget_steps, "published": ROWS[row][0],
              "exact_accuracy": summary["eval"]["exact_accuracy"], "token_accuracy": summary["eval"]["token_accuracy"],
              "train_seconds": summary["train_seconds"], "parameters": summary["parameters"]}
    os.makedirs(out_root, exist_ok=True)
    with open(os.path.join(out_root, "results.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")
    render_table(out_root)
    return result


def render_table(out_root: str) -> tuple[str, str]:
    """results.jsonl -> results.md (latest run per row and budget) and results.png (bar chart)."""
    with open(os.path.join(out_root, "results.jsonl")) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    latest = {}
    for r in runs:
        latest[(r["row"], r["base"], r["budget_steps"])] = r
    rows = sorted(latest.values(), key=lambda r: (r["base"], r["budget_steps"], -r["exact_accuracy"]))
    md = ["| row | base | steps | exact | token | published | params | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['row']} | {r['base']} | {r['budget_steps']} | {100 * r['exact_accuracy']:.1f}% | "
                  f"{100 * r['token_accuracy']:.1f}% | {r['published']:.1f}% | {r['parameters']:,} | {r['train_seconds']:.0f} |")
    md_path = os.path.join(out_root, "results.md")
    with open(md_path + ".tmp", "w") as f:
        f.write("\n".join(md) + "\n")
    os.replace(md_path + ".tmp", md_path)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    labels = [f"{r['row']}\n{r['budget_steps']} steps" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [100 * r["exact_accuracy"] for r in rows], 0.4, label="this run (equal budget)")
    ax.bar([x + 0.2 for x in xs], [r["published"] for r in rows], 0.4, label="published (full training)")
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("exact accuracy (%)")
    ax.legend()
    fig.tight_layout()
    png_path = os.path.join(out_root, "results.png")
    fig.savefig(png_path + ".tmp.png", dpi=90)
    plt.close(fig)
    os.replace(png_path + ".tmp.png", png_path)
    return md_path, png_path


def add_ablations_subparser(sub) -> None:
    p = sub.add_parser("ablations", help="the paper's ablation rows: list them or run one at a fixed budget")
    p.add_argument("--list", action="store_true", help="show every row with its published accuracy")
    p.add_argument("--run", metavar="ROW", help="train this row")
    p.add_argument("--budget-steps", type=int, default=1000, help="optimizer steps per run (equal compute)")
    p.add_argument("--base", default="sudoku-mlp", help="base preset (e.g. sudoku6-demo for a CPU-sized run)")
    p.add_argument("--out", default="runs/ablations", help="folder of the results table")
    p.add_argument("--set", action="append", default=[], help="extra overrides")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_ablations_command)


def run_ablations_command(args) -> int:
    if args.list or not args.run:
        print(list_rows())
        return 0
    result = run_row(args.run, args.budget_steps, args.base, args.out, args.set, progress=not args.no_progress)
    print(json.dumps(result, indent=2))
    print(f"table: {os.path.join(args.out, 'results.md')}, chart: {os.path.join(args.out, 'results.png')}")
    return 0
