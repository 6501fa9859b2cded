"""Peak training memory per sample at the published widths, measured on a CPU, against the memory model.

    TRITON_INTERPRET=1 python benchmarks/bench_peak_memory_cpu.py [--preset sudoku-mlp,sudoku-att,maze]
        [--backend triton,torch] [--batches 24,32] [--out benchmarks/results/cpu-peak-memory.json]

One optimizer step (forward of all cycles, loss, backward, optimiser, EMA) under trm_fast.memory.allocation_only
(Triton kernels and fp32-output matmuls skipped, every tensor still allocated) and peak_bytes (the CPU allocator's
events), in fp32, where a CPU allocates what a GPU does. The per-sample figure is the slope between two batch sizes
(above the batch at which the token mix's weight-gradient kernel stops splitting the batch further, so the slope
is pure activation memory). Prints measured and predicted (trm_fast.memory.estimate) per level.
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel import: allocation_only skips its launches

import torch  # noqa: E402

from trm_fast.bench.memory import cpu_step_peak  # noqa: E402
from trm_fast.config import TRMConfig  # noqa: E402
from trm_fast.files import atomic_write_json  # noqa: E402
from trm_fast.memory import estimate  # noqa: E402


def predicted_activation_bytes(config: TRMConfig, batch: int, backend: str, level: int) -> int:
    est = estimate(config, batch, "cpu", backend)
    return est["levels"][level]["saved_for_backward"] + est["levels"][level]["transient"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="sudoku-mlp,sudoku-att")
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--batches", default="24,32", help="two batch sizes; the per-sample figure is the slope")
    ap.add_argument("--levels", default="0,1,2")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    b1, b2 = (int(b) for b in args.batches.split(","))
    rows = []
    for preset in args.preset.split(","):
        for backend in args.backend.split(","):
            for level in (int(lv) for lv in args.levels.split(",")):
                config = TRMConfig.preset(preset).override([f"model.backend={backend}", f"model.recompute={level}",
                                                            "model.forward_dtype=float32"])
                start = time.time()
                measured = (cpu_step_peak(config, b2) - cpu_step_peak(config, b1)) / (b2 - b1)
                predicted = (predicted_activation_bytes(config, b2, backend, level)
                             - predicted_activation_bytes(config, b1, backend, level)) / (b2 - b1)
                rows.append({"preset": preset, "backend": backend, "level": level, "dtype": "float32",
                             "measured_bytes_per_sample": measured, "predicted_bytes_per_sample": predicted})
                print(f"{preset:11s} {backend:6s} level {level}: {measured / 1e6:8.2f} MB per sample measured, "
                      f"{predicted / 1e6:8.2f} MB predicted ({predicted / measured:.2f}x)  [{time.time() - start:.0f} s]",
                      flush=True)
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        atomic_write_json(args.out, {"date": datetime.date.today().isoformat(), "commit": commit,
                                     "torch": torch.__version__, "batches": [b1, b2], "rows": rows})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
