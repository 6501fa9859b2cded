"""`trm-fast bench {ops,step,memory,eval} [--preset P[,P...]] [--quick] [--out DIR]`
`trm-fast bench roofline [--preset P[,P...]] [--batch B] [--levels L,..] [--gpu h100|h200|a100]`

Every contender runs in the same process; each command merges its rows into `<out>/<device>-<date>.json` (device,
driver, torch/triton versions, commit, ceilings, every figure), re-renders `<device>-<date>.md` and the PNG charts
from the whole file, and prints its table with the issues' targets next to what was measured."""
from __future__ import annotations

import os
import time

from trm_fast.config import PRESETS

DEFAULT_OUT = os.path.join("benchmarks", "results")


def _presets(args, default: list[str]) -> list[str]:
    names = [p.strip() for p in args.preset.split(",") if p.strip()] if args.preset else default
    unknown = [p for p in names if p not in PRESETS]
    if unknown:
        raise ValueError(f"--preset: unknown preset(s) {', '.join(unknown)}; available: {', '.join(sorted(PRESETS))}")
    return names


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--levels {text!r}: expected a comma-separated list of 0, 1, 2") from None
    if not levels or any(lv not in (0, 1, 2) for lv in levels):
        raise ValueError(f"--levels {text!r}: recomputation levels are 0, 1 and 2")
    return levels


def _ceilings(kind: str) -> dict:
    """The device's measured ceilings (GPU only), taken in this same run."""
    import torch

    from trm_fast.tools.bench.timing import copy_bandwidth_gbs, datasheet_peak_tflops, matmul_tflops, on_gpu

    if not on_gpu():
        return {}
    out = {"datasheet_bf16_tflops": datasheet_peak_tflops()}
    if kind in ("ops", "step"):
        out["copy_bandwidth_gbs"] = copy_bandwidth_gbs()
        out["matmul_tflops"] = matmul_tflops()
        out["l2_bytes"] = getattr(torch.cuda.get_device_properties(), "L2_cache_size", None)
        print(f"ceilings: bf16 matmul {out['matmul_tflops']:.0f} TFLOP/s (datasheet {out['datasheet_bf16_tflops']}), "
              f"device copy {out['copy_bandwidth_gbs']:.0f} GB/s")
    return out


def run_bench(args) -> int:
    import torch

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run_bench(args)
    finally:
        torch.set_num_threads(threads)


def _run_bench(args) -> int:
    from trm_fast.tools.bench import report
    from trm_fast.tools.bench.contenders import Deadline
    from trm_fast.tools.bench.step import STEP_PRESETS_GPU, STEP_PRESETS_QUICK, default_batch
    from trm_fast.tools.bench.timing import on_gpu

    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.kind == "report":
        written = report.render_folder(args.out)
        print("\n".join(written) if written else f"no results JSON with figures under {args.out}")
        return 0
    if args.kind == "roofline":
        return _run_roofline(args)
    started = time.time()
    deadline = Deadline(args.budget_s)
    env = report.environment()
    print(f"trm-fast bench {args.kind} on {env['device']} (torch {env['torch']}, triton {env['triton']}, "
          f"commit {env['commit']}){' --quick' if args.quick else ''}")
    if not on_gpu():
        print("no CUDA device: eager and torch.compile run on the CPU at reduced sizes with wall-clock medians; "
              "trm_fast's Triton kernels and Liger-Kernel are timed on GPUs only")
    levels = _levels(args.levels)
    overrides = list(args.set or [])
    only = [c.strip() for c in args.contenders.split(",") if c.strip()] if args.contenders else None
    if args.plan:
        return _print_plan(args, levels, overrides, only)
    ceilings = _ceilings(args.kind)
    notes: list[str] = []
    # rows are merged into the results file after every contender, so a run stopped by a hard limit keeps its figures
    emit = lambda partial: report.merge_results(args.out, args.kind, partial, ceilings, notes, None)

    if args.kind == "ops":
        from trm_fast.tools.bench.ops import op_shapes, run_ops

        shapes = op_shapes(args.quick, _presets(args, []) if args.preset else None, args.batch)
        op_names = [o.strip() for o in args.ops.split(",")] if args.ops else None
        if op_names:
            from trm_fast.tools.bench.ops import OP_NAMES

            bad = [o for o in op_names if o not in OP_NAMES]
            if bad:
                raise ValueError(f"--ops: unknown op(s) {', '.join(bad)}; ops are {', '.join(OP_NAMES)}")
        rows = run_ops(shapes, args.quick, not args.no_autotune, ceilings, deadline, notes, only, op_names, emit=emit)
    else:
        if args.kind == "eval":
            from trm_fast.tools.bench.eval import EVAL_PRESETS, EVAL_PRESETS_QUICK

            presets = _presets(args, EVAL_PRESETS_QUICK if args.quick else EVAL_PRESETS)
        else:
            presets = _presets(args, STEP_PRESETS_QUICK if args.quick or not on_gpu() else STEP_PRESETS_GPU)
        batches = {p: args.batch or default_batch(p, args.quick) for p in presets}
        if args.kind == "step":
            from trm_fast.tools.bench.step import run_step

            rows = run_step(presets, batches, args.quick, levels, overrides, ceilings, deadline, notes, only, emit=emit)
        elif args.kind == "memory":
            from trm_fast.tools.bench.memory import run_memory

            rows = run_memory(presets, batches, levels, overrides, deadline, notes, only, emit=emit)
        else:
            from trm_fast.tools.bench.eval import run_eval

            rows = run_eval(presets, batches, args.quick, overrides, deadline, notes, only, emit=emit)

    run = {"kind": args.kind, "args": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
           "seconds": round(time.time() - started, 1), "date": env["date"]}
    payload = report.merge_results(args.out, args.kind, rows, ceilings, notes, run)
    stem = payload["_path"][:-len(".json")]
    md_path = stem + ".md"
    report.atomic_write_text(md_path, report.render_markdown(payload))
    charts = report.render_charts(payload, stem)
    print()
    print(report.markdown_table(rows, report.COLUMNS[args.kind]))
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    print("\ntargets (reported, never asserted):")
    print(report.targets_text(payload["targets"]))
    print(f"\nresults: {payload['_path']}\nreport: {md_path}\ncharts: {', '.join(charts) or 'none'}")
    print(f"done in {time.time() - started:.0f} s")
    return 0


def _print_plan(args, levels, overrides, only) -> int:
    """--plan: the step contenders in the order a GPU run starts them, one `plan PRESET@BATCH CONTENDER` line each."""
    from trm_fast.tools.bench.step import STEP_PRESETS_GPU, STEP_PRESETS_QUICK, default_batch, step_jobs

    if args.kind != "step":
        raise ValueError(f"--plan lists the contenders of `bench step`, not of `bench {args.kind}`")
    presets = _presets(args, STEP_PRESETS_QUICK if args.quick else STEP_PRESETS_GPU)
    for preset, name, _, _ in step_jobs(presets, overrides, levels, only, gpu=True):
        print(f"plan {preset}@{args.batch or default_batch(preset, args.quick, gpu=True)} {name}")
    return 0


def _run_roofline(args) -> int:
    import json

    from trm_fast.tools.bench.report import atomic_write_text
    from trm_fast.tools.bench.step import ROWS_FASTEST, STEP_PRESETS_QUICK, run_roofline

    presets = _presets(args, STEP_PRESETS_QUICK)
    group_m = ROWS_FASTEST if args.tile_order == "rows-fastest" else None
    payload = run_roofline(presets, args.batch, _levels(args.levels), args.gpu, list(args.set or []), group_m)
    os.makedirs(args.out, exist_ok=True)
    stem = f"roofline-{args.gpu or 'measured'}" + ("-rows-fastest" if group_m else "")
    path = os.path.join(args.out, stem + ".json")
    atomic_write_text(path, json.dumps(payload, indent=1))
    print(f"\nJSON: {path}")
    return 0


def add_bench_subparser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against eager PyTorch, torch.compile and Liger-Kernel")
    p.add_argument("kind", choices=["ops", "step", "memory", "eval", "report", "roofline"],
                   help="what to measure; `report` re-renders the markdown and charts of the results in --out; "
                   "`roofline` prints the roofline model of one training step per kernel (no GPU needed)")
    p.add_argument("--preset", help="preset(s), comma-separated (default: sudoku-att, sudoku-mlp, maze, arc1, arc2 "
                   "for step/memory; sudoku-mlp, sudoku-att, arc1 for eval; for ops: the Sudoku and Maze/ARC shapes)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats, Sudoku shapes only for ops; tiny shapes on CPU")
    p.add_argument("--batch", type=int, help="batch size for every preset (default: 768 Sudoku, 192 Maze/ARC)")
    p.add_argument("--levels", default="0,1,2", help="recomputation levels to run for trm_fast (default 0,1,2)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="config override applied to every preset (repeatable), e.g. model.num_puzzle_identifiers=1000")
    p.add_argument("--no-autotune", action="store_true", help="ops: skip torch.compile max-autotune")
    p.add_argument("--contenders", help="comma-separated subset besides eager (always run: the ratios' baseline), "
                   "e.g. compile,trm_fast (trm_fast selects every level)")
    p.add_argument("--ops", help="ops: comma-separated subset of add_rms_norm, swiglu, add_rms_norm_seq, "
                   "swiglu_token_mix, attention_rope, loss_head")
    p.add_argument("--budget-s", type=float, help="skip contenders that would start after this many seconds")
    p.add_argument("--threads", type=int, help="CPU threads for torch (on a shared CPU, 1 avoids the stalls of "
                   "oversubscribed OpenMP threads)")
    p.add_argument("--plan", action="store_true",
                   help="step: print the contenders in the order a GPU run starts them (with its batches) and exit")
    p.add_argument("--gpu", choices=["h100", "h200", "a100"],
                   help="roofline: that GPU's datasheet (default: this GPU's measured rates and L2, else h100)")
    p.add_argument("--tile-order", choices=["launched", "rows-fastest"], default="launched",
                   help="roofline: the gate_up kernels' tile order as launched (grouped) or row blocks fastest "
                   "(the order before issue 14)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    p.set_defaults(func=run_bench)
