"""Peak training memory per sample at the published widths, measured on a CPU, against the memory model.

    TRITON_INTERPRET=1 python benchmarks/bench_peak_memory_cpu.py [--preset sudoku-mlp,sudoku-att,maze]
        [--backend triton,torch] [--batches 24,32] [--out benchmarks/results/cpu-peak-memory.json]

One optimizer step (forward of all cycles, loss, backward, optimiser, EMA) under trm_fast.tools.memory.allocation_only
(Triton kernels and fp32-output matmuls skipped, every tensor still allocated) and peak_bytes (the CPU allocator's
events), in fp32, where a CPU allocates what a GPU does. The per-sample figure is the slope between two batch sizes
(above the batch at which the token mix's weight-gradient kernel stops splitting the batch further, so the slope
is pure activation memory). Prints measured and predicted (trm_fast.tools.memory.estimate) per level. The measurement is
trm_fast.tools.bench.memory.cpu_peak_per_sample.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel import: allocation_only skips its launches

import torch  # noqa: E402

from trm_fast.files import atomic_write_json  # noqa: E402
from trm_fast.tools.bench.memory import cpu_peak_per_sample  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="sudoku-mlp,sudoku-att")
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--batches", default="24,32", help="two batch sizes; the per-sample figure is the slope")
    ap.add_argument("--levels", default="0,1,2")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    b1, b2 = (int(b) for b in args.batches.split(","))
    rows = cpu_peak_per_sample(args.preset.split(","), args.backend.split(","),
                               [int(lv) for lv in args.levels.split(",")], (b1, b2),
                               log=functools.partial(print, flush=True))
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        atomic_write_json(args.out, {"date": datetime.date.today().isoformat(), "commit": commit,
                                     "torch": torch.__version__, "batches": [b1, b2], "rows": rows})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
