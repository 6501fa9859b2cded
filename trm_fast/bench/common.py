"""Shared benchmark machinery: timing (CUDA events via triton's do_bench on GPU, wall-clock medians on CPU),
environment facts, and result files (JSON, markdown, PNG)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import torch

# Datasheet dense bf16 peaks (TFLOP/s, no sparsity), by a substring of the device name.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def datasheet_peak_tflops() -> float | None:
    name = device_name()
    for key, value in DATASHEET_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def environment() -> dict:
    env = {"device": device_name(), "torch": torch.__version__, "python": platform.python_version(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=os.path.dirname(__file__), timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def measure(fn, warmup: int = 3, reps: int = 10) -> float:
    """Median milliseconds of fn(): CUDA events through triton.testing.do_bench on GPU, perf_counter on CPU."""
    if torch.cuda.is_available():
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=max(warmup, 5), rep=max(reps * 5, 50), return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_memory(fn) -> int | None:
    """Peak allocated bytes of one fn() call on CUDA (None on CPU)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def matmul_tflops(n: int = 8192) -> float | None:
    """Measured bf16 matmul throughput on this device (the practical MFU reference)."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = measure(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_bandwidth_gbs(numel: int = 1 << 28) -> float | None:
    """Measured device-to-device copy bandwidth (read + write), the roofline of memory-bound kernels."""
    if not torch.cuda.is_available():
        return None
    src = torch.empty(numel, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = measure(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def write_results(kind: str, payload: dict, out_dir: str) -> dict:
    """Writes <out>/<device>-<date>-<kind>.json and .md atomically; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    env = payload.setdefault("environment", environment())
    stem = f"{env['device'].replace(' ', '_').replace('/', '_')}-{env['date'][:10]}-{kind}"
    paths = {"json": os.path.join(out_dir, stem + ".json"), "md": os.path.join(out_dir, stem + ".md")}
    for key, text in (("json", json.dumps(payload, indent=2, default=str)), ("md", payload.get("markdown", ""))):
        with open(paths[key] + ".tmp", "w") as f:
            f.write(text)
        os.replace(paths[key] + ".tmp", paths[key])
    return paths


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cells.append(f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(path: str, labels: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(labels) * max(1, len(series)) / 2), 4))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=90)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path
