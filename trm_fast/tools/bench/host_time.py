"""Host time of one supervision step: the Python and dispatch cost the CPU pays to issue a step's kernels, with the
kernels themselves taken away. The Triton-path model of a preset, its structure kept (sequence, blocks, cycles,
mixer) and its width cut to HOST_WIDTH so that the CPU's aten kernels cost next to nothing, runs in bf16 on CPU
tensors at batch 2, and every Triton launch is dropped before the JIT sees it: what is left is what the model, the
custom ops (argument checks, allocation, grids) and autograd cost on the host. (Meta tensors would not do: their
shape functions are Python, slower than the dispatch being measured.) A GPU adds its launch stubs (a few
microseconds per launch) on top; CUDA graphs remove all of it.

    step_host_time(config, level=0, repeats=5)   # {"median_ms", "min_ms", ...}

`python benchmarks/bench_host_time.py` prints it for every preset; docs/kernels.md keeps the figures (before and
after the work of issue 14). The numbers depend on the machine and its load (reported beside them)."""
from __future__ import annotations

import os
import statistics
import time

import torch

from trm_fast.config import TRMConfig
from trm_fast.tools.bench.launches import intercept_triton, meta_step

HOST_WIDTH = {"model.hidden_size": 64, "model.num_heads": 2, "model.puzzle_emb_dim": 64}
HOST_BATCH = 2


def step_host_time(config: TRMConfig, level: int = 0, repeats: int = 5, arch: int = 90) -> dict:
    """Host milliseconds of one supervision step (forward, loss, backward; see launches.meta_step) of the Triton path
    at recomputation `level`, launches dropped: median and minimum over `repeats` steps after one warm-up step."""
    from trm_fast.kernels.aot import capture

    narrow = config.override([f"{key}={value}" for key, value in HOST_WIDTH.items()])
    _, run = meta_step(narrow, HOST_BATCH, level, device="cpu")
    times = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as the figures
    try:
        with capture(arch), intercept_triton(None):
            run()  # warm-up: op set resolution, launch-table lookups, first-call caches
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {"level": level, "repeats": repeats, "median_ms": round(statistics.median(times), 2),
            "min_ms": round(min(times), 2), "load_average_1min": round(os.getloadavg()[0], 2)}
