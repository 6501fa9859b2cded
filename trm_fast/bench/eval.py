"""Evaluation throughput: puzzles per second when every puzzle runs all halt_max_steps supervision steps (16 in the
published runs; evaluation never halts early), through trm_fast.eval.evaluate.run_puzzles, for the Sudoku and ARC
shapes. Contenders: eager (reference), compile (whole-model torch.compile) and trm_fast (backend triton, GPU)."""
from __future__ import annotations

import copy

import torch

from trm_fast.bench.step import bench_config, random_batch
from trm_fast.bench.timing import Deadline, measure_calls, note_skipped, on_gpu, selected
from trm_fast.model import build_model

EVAL_PRESETS = ["sudoku-mlp", "sudoku-att", "arc1"]
EVAL_PRESETS_QUICK = ["sudoku-att", "arc1"]


def run_eval(presets: list[str], batches: dict[str, int], quick: bool, overrides: list[str], deadline: Deadline,
             notes: list[str], only: list[str] | None = None, log=print, emit=None) -> list[dict]:
    from trm_fast.eval.evaluate import run_puzzles

    device = torch.device("cuda" if on_gpu() else "cpu")
    rows = []
    for preset in presets:
        config = bench_config(preset, overrides)
        batch = batches[preset]
        steps = config.model.halt_max_steps
        if quick and not on_gpu():
            steps = 2
            notes.append("CPU --quick: 2 supervision steps per puzzle instead of halt_max_steps")
        variants = {"eager": (config.override(["model.backend=torch"]), False),
                    "compile": (config.override(["model.backend=torch"]), True)}
        if on_gpu():
            variants["trm_fast"] = (config.override(["model.backend=triton"]), False)
        eager_ms = None
        for name, (cfg, compiled) in variants.items():
            if name != "eager" and not selected(name, only):
                continue
            if deadline.expired():
                notes.append(f"eval {preset}@{batch}: {name} not run (the --budget-s time was used up)")
                continue
            try:
                model = build_model(copy.deepcopy(cfg.model)).to(device).eval()
                fwd = torch.compile(model) if compiled else model
                b = random_batch(cfg.model, batch, device)
                ms = measure_calls(lambda: run_puzzles(fwd, b["inputs"], b["puzzle_identifiers"], steps),
                                   warmup=1, reps=3 if quick else 5)
            except Exception as exc:
                note_skipped(notes, log, f"eval {preset}@{batch}: {name}", exc)
                continue
            finally:
                if compiled:
                    torch._dynamo.reset()
            eager_ms = ms if name == "eager" else eager_ms
            rows.append({"preset": preset, "batch": batch, "contender": name, "supervision_steps": steps,
                         "ms_per_batch": ms, "puzzles_per_s": batch / (ms * 1e-3),
                         "speedup_vs_eager": eager_ms / ms if eager_ms else None})
            log(f"  eval {preset}@{batch} {name}: {batch / (ms * 1e-3):.1f} puzzles/s ({steps} steps)")
            if emit is not None:
                emit(rows)
    return rows
