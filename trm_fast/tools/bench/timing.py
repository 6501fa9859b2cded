"""Timing and device ceilings for the benchmark suite.

GPU: CUDA events. Single ops go through triton.testing.do_bench (median; it flushes L2 between repeats) and, where
launch gaps matter, do_bench_cudagraph; whole steps are timed call by call with events after a warm-up of a fixed
count, because one step can outlast do_bench's time-based repeat budget. CPU: wall-clock medians (perf_counter).
The two ceilings every roofline figure uses are measured here in the same run: a large bf16 matmul and a large
device-to-device copy.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

# Datasheet dense bf16 peaks (TFLOP/s, no sparsity), matched by a substring of the device name (first match wins,
# so the more specific names come first).
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0,
                         "L40S": 362.0, "A10G": 70.0, "RTX 4090": 165.0}


def on_gpu() -> bool:
    return torch.cuda.is_available()


def device_name() -> str:
    return torch.cuda.get_device_name() if on_gpu() else f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def datasheet_peak_tflops(name: str | None = None) -> float | None:
    name = name or device_name()
    for key, value in DATASHEET_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def synchronize() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def measure_calls(fn, warmup: int, reps: int) -> float:
    """Median milliseconds of one fn() call after `warmup` calls: per-call CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    if on_gpu():
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure_op(fn, quick: bool) -> float:
    """Median milliseconds of a short op: do_bench on GPU (warm-up and repeat given in milliseconds), else
    wall-clock over a fixed number of calls."""
    if on_gpu():
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100, return_mode="median"))
    return measure_calls(fn, warmup=1 if quick else 3, reps=3 if quick else 10)


def measure_op_cudagraph(fn, quick: bool) -> float | None:
    """Median milliseconds of fn replayed from a CUDA graph (launch gaps removed); None on CPU."""
    if not on_gpu():
        return None
    from triton.testing import do_bench_cudagraph

    return float(do_bench_cudagraph(fn, rep=20 if quick else 50, return_mode="median"))


def peak_memory(fn) -> int | None:
    """Peak bytes allocated during one fn() call on CUDA, counted from what was allocated before it (None on CPU)."""
    if not on_gpu():
        return None
    from trm_fast.tools.memory import peak_bytes

    torch.cuda.synchronize()
    return int(torch.cuda.memory_allocated()) + peak_bytes(fn, "cuda")


def matmul_tflops(n: int = 8192) -> float | None:
    """bf16 n x n x n matmul throughput on this device, on random data (the practical MFU ceiling)."""
    if not on_gpu():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = measure_calls(lambda: a @ b, warmup=5, reps=20)
    del a, b
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_bandwidth_gbs(nbytes: int = 1 << 31) -> float | None:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written (the roofline of
    memory-bound kernels); None on CPU."""
    if not on_gpu():
        return None
    src = torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = measure_calls(lambda: dst.copy_(src), warmup=3, reps=20)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9
