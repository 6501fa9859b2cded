"""Timing and device ceilings for the benchmark suite.

GPU: CUDA events. Single ops go through triton.testing.do_bench (median; it flushes L2 between repeats) and, where
launch gaps matter, do_bench_cudagraph; whole steps are timed call by call with events after a warm-up of a fixed
count, because one step can outlast do_bench's time-based repeat budget. CPU: wall-clock medians (perf_counter).
The two ceilings every roofline figure uses are measured here in the same run: a large bf16 matmul and a large
device-to-device copy.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time

import torch

@dataclasses.dataclass(frozen=True)
class Hardware:
    """What the roofline model needs of a GPU: dense bf16 matmul rate, HBM bandwidth, L2 size, and which launch
    tables its kernels use (90: Hopper, 80: older)."""
    name: str
    bf16_tflops: float
    hbm_tbs: float | None
    l2_bytes: int | None
    arch: int = 90


# Datasheets: dense bf16 (no sparsity), HBM bandwidth, L2; matched by a substring of the device name (first match
# wins, so the more specific names come first: "GH200" contains "H200").
DATASHEET = {
    "H100 PCIe": Hardware("H100 PCIe", 756.0, 2.0, 50 * 2**20),
    "H100": Hardware("H100 SXM", 989.0, 3.35, 50 * 2**20),
    "GH200": Hardware("GH200", 989.0, 4.0, 50 * 2**20),
    "H200": Hardware("H200", 989.0, 4.8, 50 * 2**20),
    "A100": Hardware("A100 SXM", 312.0, 2.0, 40 * 2**20, arch=80),
    "L40S": Hardware("L40S", 362.0, 0.864, 96 * 2**20, arch=80),
    "A10G": Hardware("A10G", 70.0, 0.6, 6 * 2**20, arch=80),
    "RTX 4090": Hardware("RTX 4090", 165.0, 1.008, 72 * 2**20, arch=80),
}
# `trm-fast bench roofline --gpu NAME`
ROOFLINE_GPUS = {"h100": DATASHEET["H100"], "h200": DATASHEET["H200"], "a100": DATASHEET["A100"]}


def on_gpu() -> bool:
    return torch.cuda.is_available()


def device_name() -> str:
    return torch.cuda.get_device_name() if on_gpu() else f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def datasheet(name: str | None = None) -> Hardware | None:
    name = name or device_name()
    return next((value for key, value in DATASHEET.items() if key in name), None)


def datasheet_peak_tflops(name: str | None = None) -> float | None:
    sheet = datasheet(name)
    return sheet.bf16_tflops if sheet else None


def measured_hardware() -> Hardware | None:
    """This GPU as the roofline sees it: the bf16 matmul rate and copy bandwidth measured now, the L2 size from the
    device properties; None on a CPU."""
    if not on_gpu():
        return None
    l2 = getattr(torch.cuda.get_device_properties(), "L2_cache_size", None)
    arch = 90 if torch.cuda.get_device_capability()[0] >= 9 else 80
    return Hardware(device_name(), matmul_tflops(), copy_bandwidth_gbs() / 1e3, l2, arch)


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
