"""CPU threading policies, measured: a tiny elementwise op and a few sudoku6-demo training steps in a fresh process
per policy (OpenMP reads its settings when torch is imported), on an idle machine and with busy processes beside it.

    python benchmarks/bench_cpu_threads.py                     # every policy, idle and one busy core
    python benchmarks/bench_cpu_threads.py --busy 0 1 --steps 20 --policies default passive chosen

A busy process is `python -c 'while True: pass'`, started before the measurement and ended after it. The JSON goes
to benchmarks/results/cpu-threads-<machine>.json (--out to change). Not part of CI: timings depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")

# name -> environment set before torch is imported ("chosen": what trm_fast.threads decides in that process)
POLICIES = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one-thread": {"OMP_NUM_THREADS": "1"},
    "spin-10000": {"GOMP_SPINCOUNT": "10000"},
    "spin-1000": {"GOMP_SPINCOUNT": "1000"},
    "chosen": None,
}


def worker(steps: int, warmup: int) -> dict:
    """Runs in the measured process: the environment is already set; returns timings in milliseconds."""
    import torch

    result = {"torch_threads": torch.get_num_threads(),
              "environment": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}}
    a, b = torch.randn(128, 40, 64), torch.randn(128, 40, 64)
    times = []
    for i in range(300):
        start = time.perf_counter()
        a * b
        if i >= 50:
            times.append((time.perf_counter() - start) * 1e3)
    result["multiply_128x40x64_ms"] = statistics.median(times)

    from trm_fast.config import TRMConfig
    from trm_fast.data.format import to_device_batch
    from trm_fast.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        config = TRMConfig.preset("sudoku6-demo").override([f"train.out_dir={out}"])
        trainer = Trainer(config, progress=False, log=lambda *a, **k: None)
        step_times = []
        for i in range(warmup + steps):
            batch = to_device_batch(trainer.sampler.next_batch(), trainer.data.train_meta.ignore_label_id, trainer.device)
            start = time.perf_counter()
            trainer._set_lr()
            trainer.carry_step(batch)
            trainer.step += 1
            if i >= warmup:
                step_times.append((time.perf_counter() - start) * 1e3)
    result["demo_step_ms"] = statistics.median(step_times)
    result["demo_step_ms_max"] = max(step_times)
    return result


def measure(policy: str, steps: int, warmup: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    prelude = ""
    if POLICIES[policy] is None:
        prelude = "from trm_fast.threads import apply_thread_settings; apply_thread_settings(); "
    else:
        env.update(POLICIES[policy])
    code = (f"{prelude}import json, sys; sys.path.insert(0, {os.path.join(REPO, 'benchmarks')!r}); "
            f"from bench_cpu_threads import worker; print(json.dumps(worker({steps}, {warmup})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--busy", nargs="+", type=int, default=[0, 1], help="busy processes beside the measurement")
    parser.add_argument("--steps", type=int, default=10, help="timed demo training steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", help="JSON file (default benchmarks/results/cpu-threads-<machine>.json)")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    rows = []
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            for policy in args.policies:
                with open("/proc/loadavg") as f:
                    loadavg = f.read().split()
                row = {"busy_processes": busy, "policy": policy, "loadavg_at_start": loadavg[:4],
                       **measure(policy, args.steps, args.warmup)}
                rows.append(row)
                print(f"busy {busy}  {policy:11s} threads {row['torch_threads']}  multiply "
                      f"{row['multiply_128x40x64_ms']:7.3f} ms  demo step {row['demo_step_ms']:8.1f} ms "
                      f"(max {row['demo_step_ms_max']:.0f})  load {' '.join(loadavg[:4])}", flush=True)
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"cpu-threads-{platform.machine()}-{cores}cores.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": f"{platform.machine()}, {cores} cores", "date": time.strftime("%Y-%m-%d"),
                   "steps": args.steps, "rows": rows}, f, indent=1)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
