"""CPU threads for the machine at hand, chosen before torch is imported (its OpenMP runtime reads them once, then).

torch's CPU kernels split each op over an OpenMP pool of one thread per core, and by default (GNU OpenMP) a thread
that finishes its share spins for a while before it sleeps. On a machine whose cores are busy with other processes
that collapses: the spinning threads and the busy processes take the cores the pool's other threads wait for, so
every op waits for the scheduler (measured on 2 cores beside one CPU-bound process: a 128x40x64 multiply 14 ms
instead of 0.3 ms, a sudoku6-demo step 9 s instead of 1 s; benchmarks/bench_cpu_threads.py). So:

- threads: the cores this process may use (affinity, cgroup quota) less those other processes keep busy now;
- waiting: sleep after a short spin (GOMP_SPINCOUNT) when there is more than one thread, so that load arriving later
  costs little, while back-to-back ops on an idle machine still find their threads awake.

A variable the user's environment already sets is never overridden. Standard library only: `trm-fast` applies this
first thing in cli.main, before anything imports torch.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Mapping

# Spin iterations before a waiting OpenMP thread sleeps (libgomp's default: 300000, several milliseconds).
SPIN_COUNT = 1000
VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def thread_settings(environ: Mapping[str, str], usable_cores: int, busy_elsewhere: int) -> dict[str, str]:
    """The environment variables to add: OMP_NUM_THREADS (usable cores less the ones busy elsewhere, at least 1)
    and, with more than one thread, GOMP_SPINCOUNT (a short spin, then sleep). Nothing the environment sets already,
    and no spin setting when the user chose a wait policy."""
    settings = {}
    threads = max(1, usable_cores - max(0, busy_elsewhere))
    if "OMP_NUM_THREADS" in environ:
        try:
            threads = int(environ["OMP_NUM_THREADS"].split(",")[0])
        except ValueError:
            pass  # the runtime decides what it makes of it
    else:
        settings["OMP_NUM_THREADS"] = str(threads)
    if threads > 1 and "GOMP_SPINCOUNT" not in environ and "OMP_WAIT_POLICY" not in environ:
        settings["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return settings


def usable_cores() -> int:
    """Cores this process may run on: its affinity, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def busy_elsewhere(samples: int = 3, interval_s: float = 0.01) -> int:
    """Runnable tasks other than this one (Linux /proc/loadavg), the least of a few samples so that a passing blip
    does not count; 0 where unknown."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(running - 1)  # this process is running while it reads
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0, min(counts))


def apply_thread_settings(environ=os.environ) -> dict[str, str]:
    """Adds thread_settings for this machine to the environment and returns them; nothing once torch is imported
    (its pool is set up by then: the variables would only reach child processes)."""
    if "torch" in sys.modules:
        return {}
    cores = usable_cores()
    # the machine's runnable tasks: those beyond the cores this process may not use are counted against ours
    busy = max(0, busy_elsewhere() - max(0, (os.cpu_count() or cores) - cores))
    settings = thread_settings(environ, cores, busy)
    environ.update(settings)
    return settings
