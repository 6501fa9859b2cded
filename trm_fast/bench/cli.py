"""`trm-fast bench {ops,step,memory,eval} [--preset P] [--quick] [--out DIR]`: results as JSON + markdown under
benchmarks/results/ (named <device>-<date>-<kind>), with PNG charts, device and versions, and the issue's
targets printed next to what was measured."""
from __future__ import annotations

import os

import torch

from trm_fast.bench.common import (bar_chart, copy_bandwidth_gbs, environment, markdown_table, matmul_tflops,
                                   write_results)

DEFAULT_PRESETS = ["sudoku-att", "sudoku-mlp", "maze", "arc1"]
TARGETS = [
    "whole step (sudoku-mlp, sudoku-att at 768): >= 2x eager and >= 1.3x torch.compile",
    "sudoku-att >= 40% MFU; sudoku-mlp against a per-matmul roofline (token mixing is memory-bound)",
    "every fused op >= torch.compile and Liger at D = 512",
    "memory-bound kernels >= 80% of the measured device-to-device copy bandwidth",
    "level 2 saves <= 1/16 of eager's bytes (sudoku presets, batch 768)",
]


def _batches(presets, quick, cpu):
    if cpu:
        return {p: 4 for p in presets}
    return {p: (192 if quick or p in ("maze", "arc1", "arc2") else 768) for p in presets}


def run_bench(args) -> int:
    cpu = not torch.cuda.is_available()
    presets = [args.preset] if args.preset else (DEFAULT_PRESETS[:3] if args.quick else DEFAULT_PRESETS)
    batches = _batches(presets, args.quick, cpu)
    out = args.out
    env = environment()
    print(f"trm-fast bench {args.kind} on {env['device']} (torch {env['torch']}, triton {env['triton']}, commit {env['commit']})")
    if cpu:
        print("no CUDA device: eager and torch.compile on the CPU at reduced width (wall-clock medians); "
              "trm_fast's Triton kernels are timed on GPUs only")
    payload = {"environment": env, "kind": args.kind, "quick": args.quick, "targets": TARGETS}
    if args.kind == "ops":
        from trm_fast.bench.ops import run_ops

        seq = args.seq or 97
        rows = run_ops(batches[presets[0]] if cpu else (192 if args.quick else 768), seq, args.quick, not args.no_autotune)
        payload.update(rows=rows, copy_bandwidth_gbs=copy_bandwidth_gbs())
        cols = ["op", "shape", "mode", "contender", "ms", "speedup_vs_eager"]
        both = [r for r in rows if r["mode"] == "fwd+bwd" and r["contender"] != "eager"]
        chart_labels = sorted({r["op"] for r in both})
        series = {c: [next((r["speedup_vs_eager"] for r in both if r["op"] == op and r["contender"] == c), None)
                      for op in chart_labels] for c in sorted({r["contender"] for r in both})}
    elif args.kind == "step":
        from trm_fast.bench.step import run_step

        rows = run_step(presets, batches, args.quick, matmul_tflops())
        payload.update(rows=rows)
        cols = ["preset", "batch", "contender", "ms_per_step", "tokens_per_s", "mfu_datasheet", "mfu_measured_matmul",
                "peak_memory_bytes", "saved_for_backward_bytes", "speedup_vs_eager"]
        chart_labels = presets
        names = sorted({r["contender"] for r in rows if r["contender"] != "eager"})
        series = {c: [next((r["speedup_vs_eager"] for r in rows if r["preset"] == p and r["contender"] == c), None)
                      for p in presets] for c in names}
    elif args.kind == "eval":
        from trm_fast.bench.step import run_eval

        rows = run_eval(presets, batches, args.quick)
        payload.update(rows=rows)
        cols = ["preset", "contender", "batch", "supervision_steps", "ms_per_batch", "puzzles_per_s"]
        chart_labels = presets
        series = {c: [next((r["puzzles_per_s"] for r in rows if r["preset"] == p and r["contender"] == c), None)
                      for p in presets] for c in sorted({r["contender"] for r in rows})}
    else:
        from trm_fast.bench.step import run_memory

        rows = run_memory(presets, batches)
        payload.update(rows=rows)
        cols = ["preset", "batch", "contender", "saved_bytes", "fraction_of_eager"]
        chart_labels = presets
        series = {c: [next((r["fraction_of_eager"] for r in rows if r["preset"] == p and r["contender"] == c), None)
                      for p in presets] for c in sorted({r["contender"] for r in rows})}
    payload["markdown"] = (f"# trm-fast bench {args.kind}\n\n{env}\n\n" + markdown_table(rows, cols)
                           + "\n\nTargets (reported, not asserted):\n" + "\n".join(f"- {t}" for t in TARGETS) + "\n")
    paths = write_results(args.kind, payload, out)
    ylabel = {"ops": "speed-up vs eager", "step": "speed-up vs eager", "eval": "puzzles / s",
              "memory": "saved bytes / eager"}[args.kind]
    png = bar_chart(paths["json"][:-5] + ".png", chart_labels, series, ylabel, f"trm-fast bench {args.kind} ({env['device']})")
    print(markdown_table(rows, cols))
    print("targets (reported, not asserted):\n" + "\n".join(f"  - {t}" for t in TARGETS))
    print(f"results: {paths['json']}, {paths['md']}, chart {png}")
    return 0


def add_bench_subparser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against eager PyTorch, torch.compile and Liger-Kernel")
    p.add_argument("kind", choices=["ops", "step", "memory", "eval"])
    p.add_argument("--preset", help="one preset (default: sudoku-att, sudoku-mlp, maze[, arc1])")
    p.add_argument("--quick", action="store_true", help="fewer repeats, batch 192, no max-autotune")
    p.add_argument("--seq", type=int, help="sequence length for `ops` (default 97)")
    p.add_argument("--no-autotune", action="store_true", help="skip torch.compile max-autotune")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    p.set_defaults(func=run_bench)
