"""Evaluation throughput: puzzles per second when every puzzle runs all halt_max_steps supervision steps (16 in the
published runs; evaluation never halts early), through trm_fast.eval.evaluate.run_puzzles, for the Sudoku and ARC
shapes. Contenders: eager (reference), compile (whole-model torch.compile) and trm_fast (backend triton, GPU)."""
from __future__ import annotations

import copy

import torch

from trm_fast.model import build_model
from trm_fast.tools.bench.contenders import Deadline, run_contenders, selected
from trm_fast.tools.bench.step import bench_config, random_batch
from trm_fast.tools.bench.timing import measure_calls, on_gpu

EVAL_PRESETS = ["sudoku-mlp", "sudoku-att", "arc1"]
EVAL_PRESETS_QUICK = ["sudoku-att", "arc1"]


def run_eval(presets: list[str], batches: dict[str, int], quick: bool, overrides: list[str], deadline: Deadline,
             notes: list[str], only: list[str] | None = None, log=print, emit=None) -> list[dict]:
    from trm_fast.eval.evaluate import run_puzzles

    device = torch.device("cuda" if on_gpu() else "cpu")
    steps = {}  # supervision steps per puzzle, per preset
    eager_ms: dict[str, float | None] = {}

    def contenders():
        for preset in presets:
            config = bench_config(preset, overrides)
            batch = batches[preset]
            steps[preset] = config.model.halt_max_steps
            if quick and not on_gpu():
                steps[preset] = 2
                notes.append("CPU --quick: 2 supervision steps per puzzle instead of halt_max_steps")
            variants = {"eager": (config.override(["model.backend=torch"]), False),
                        "compile": (config.override(["model.backend=torch"]), True)}
            if on_gpu():
                variants["trm_fast"] = (config.override(["model.backend=triton"]), False)
            eager_ms[preset] = None
            for name, (cfg, compiled) in variants.items():
                if name == "eager" or selected(name, only):
                    yield f"eval {preset}@{batch}: {name}", compiled, (preset, batch, name, cfg, compiled)

    def measure(job) -> float:
        preset, batch, _, cfg, compiled = job
        model = build_model(copy.deepcopy(cfg.model)).to(device).eval()
        fwd = torch.compile(model) if compiled else model
        b = random_batch(cfg.model, batch, device)
        return measure_calls(lambda: run_puzzles(fwd, b["inputs"], b["puzzle_identifiers"], steps[preset]),
                             warmup=1, reps=3 if quick else 5)

    rows = []
    for (preset, batch, name, _, _), ms in run_contenders(contenders(), measure, deadline, notes, log):
        if name == "eager":
            eager_ms[preset] = ms
        eager = eager_ms[preset]
        rows.append({"preset": preset, "batch": batch, "contender": name, "supervision_steps": steps[preset],
                     "ms_per_batch": ms, "puzzles_per_s": batch / (ms * 1e-3),
                     "speedup_vs_eager": eager / ms if eager else None})
        log(f"  eval {preset}@{batch} {name}: {batch / (ms * 1e-3):.1f} puzzles/s ({steps[preset]} steps)")
        if emit is not None:
            emit(rows)
    return rows
