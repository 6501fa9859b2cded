"""Host time of one supervision step: the Python and dispatch cost the CPU pays to issue a step's kernels, with the
kernels themselves taken away. The Triton-path model of a preset, its structure kept (sequence, blocks, cycles,
mixer) and its width cut to HOST_WIDTH, runs in bf16 on CPU tensors at batch 2, and every kernel a GPU runs
asynchronously is taken away: each Triton launch is dropped before the JIT sees it, and the matmuls (mm, addmm,
bmm, baddbmm: cuBLAS on a GPU) only allocate their result, as does mm_fp32 (one mm(out_dtype=) on a GPU, an fp32
upcast of both operands on the CPU). What is left is what the model, the custom ops (argument checks, allocation,
grids), autograd and the dispatch of every aten op cost on the host, plus the CPU's small elementwise kernels.
(Meta tensors would not do: their shape functions are Python, slower than the dispatch being measured.) A GPU adds
its launch stubs (a few microseconds per launch) on top; CUDA graphs remove all of it.

The CPU's matmuls are not cheap even at width 64: in bf16 they cost 15 to 50 us each (about half of a step's time
computed), where a GPU's host pays a launch. `compute_matmuls=True` keeps them (the measurement as it was before
issue 14 item 5, for comparison with older figures).

    step_host_time(config, level=0, repeats=5)   # {"median_ms", "min_ms", ...}

`python benchmarks/bench_host_time.py` prints it for every preset; docs/kernels.md keeps the figures (before and
after the work of issue 14). The numbers depend on the machine and its load (reported beside them); values computed
inside are garbage (nothing reads them)."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings

import torch

from trm_fast.config import TRMConfig
from trm_fast.tools.bench.launches import intercept_triton, meta_step

HOST_WIDTH = {"model.hidden_size": 64, "model.num_heads": 2, "model.puzzle_emb_dim": 64}
HOST_BATCH = 2


@contextlib.contextmanager
def matmuls_allocate_only():
    """Within: the CPU's mm, addmm, bmm, baddbmm and sums over dims allocate their (uninitialised) result, addmm_,
    baddbmm_ and add_ return their input, and none computes anything (a Python kernel in place of aten's CPU kernel, which comes back
    on exit); mm_fp32 allocates its fp32 result."""
    from trm_fast.ops.reference import mm_fp32_allocation_only

    def mm(a, b):
        return a.new_empty(a.shape[0], b.shape[1])

    def bmm(a, b):
        return a.new_empty(a.shape[0], a.shape[1], b.shape[2])

    def reduced(t, dim, keepdim=False, *, dtype=None):  # sum over dims: the result's shape and dtype, uncomputed
        dims = {d % t.dim() for d in dim} if dim else set(range(t.dim()))
        shape = [1 if i in dims else n for i, n in enumerate(t.shape)] if keepdim else \
            [n for i, n in enumerate(t.shape) if i not in dims]
        return t.new_empty(shape, dtype=dtype or (t.dtype if t.is_floating_point() else torch.int64))

    library = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": the point of it
            library.impl("mm", mm, "CPU")
            library.impl("addmm", lambda bias, a, b, **scalars: mm(a, b), "CPU")
            library.impl("bmm", bmm, "CPU")
            library.impl("baddbmm", lambda bias, a, b, **scalars: bmm(a, b), "CPU")
            # the in-place forms (the sub-layers' backward accumulates d x into the norm's d s): nothing to allocate
            library.impl("addmm_", lambda acc, a, b, **scalars: acc, "CPU")
            library.impl("baddbmm_", lambda acc, a, b, **scalars: acc, "CPU")
            # sums over dims too: the token-mixing weight gradients' batch partials are reduced by one (B*2I*L
            # values at sudoku-mlp): CPU arithmetic a GPU's host only launches
            library.impl("sum.dim_IntList", reduced, "CPU")
            # and autograd's in-place sums of a weight's gradients over its tied uses (the token-mixing weights keep
            # their (2I, L) size at any width: about 120 us of CPU arithmetic an add at sudoku-mlp)
            library.impl("add_.Tensor", lambda acc, other, **scalars: acc, "CPU")
        with mm_fp32_allocation_only():
            yield
    finally:
        library._destroy()


def step_host_time(config: TRMConfig, level: int = 0, repeats: int = 5, arch: int = 90,
                   compute_matmuls: bool = False) -> dict:
    """Host milliseconds of one supervision step (forward, loss, backward; see launches.meta_step) of the Triton path
    at recomputation `level`, launches dropped (and matmuls too unless `compute_matmuls`): median and minimum over
    `repeats` steps after one warm-up step."""
    from trm_fast.kernels.aot import capture

    narrow = config.override([f"{key}={value}" for key, value in HOST_WIDTH.items()])
    _, run = meta_step(narrow, HOST_BATCH, level, device="cpu")
    times = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as the figures
    try:
        with capture(arch), intercept_triton(None), \
                contextlib.nullcontext() if compute_matmuls else matmuls_allocate_only():
            run()  # warm-up: op set resolution, launch-table lookups, first-call caches
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {"level": level, "repeats": repeats, "matmuls": "computed" if compute_matmuls else "allocated",
            "median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2),
            "load_average_1min": round(os.getloadavg()[0], 2)}
