"""Maze-Hard generator throughput: `python benchmarks/bench_maze.py [COUNT] [THREADS]` generates COUNT hard mazes
(shortest path > 110 moves, 270-450 walls) and reports the time, attempts per second, the fraction of random mazes
that are hard, and the wall-count and path-length distributions (JSON and PNG histograms in benchmarks/results/).
The load average at the start and end and the CPU time of the generator's threads are recorded: on a shared
machine the wall time grows with the load, while CPU seconds / threads is what idle cores would take."""
import json
import os
import sys
import time

import numpy as np

from trm_fast.bench.common import environment
from trm_fast.data.maze import _histograms, _native, generate_mazes


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else (os.cpu_count() or 1)
    if _native() is None:
        sys.exit("the native generator trm_fast._maze is not built: pip install -e . --no-build-isolation")
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    made = generate_mazes(count, seed=0, threads=threads, chunk=50, progress=True, desc="hard mazes")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    walls, moves = made["walls"], made["path_moves"]
    pct = lambda a: dict(zip(("p10", "p50", "p90", "p99"), np.percentile(a, [10, 50, 90, 99]).tolist()))
    result = {
        "environment": environment(), "count": count, "threads": threads, "seconds": round(seconds, 1),
        "mazes_per_minute": round(count / seconds * 60, 1), "attempts": made["attempts"],
        "attempts_per_s": round(made["attempts"] / seconds), "hard_fraction": count / made["attempts"],
        # CPU time of all threads: on a shared machine, cpu_seconds / threads is the wall time on idle cores
        "cpu_seconds": round(cpu_seconds, 1), "attempts_per_cpu_second": round(made["attempts"] / cpu_seconds),
        "seconds_on_idle_cores": round(cpu_seconds / threads, 1),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "walls": {"min": int(walls.min()), "mean": float(walls.mean()), "max": int(walls.max()), **pct(walls)},
        "path_moves": {"min": int(moves.min()), "mean": float(moves.mean()), "max": int(moves.max()), **pct(moves)},
    }
    os.makedirs("benchmarks/results", exist_ok=True)
    stem = f"benchmarks/results/{result['environment']['device']}-maze-generator"
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    _histograms(stem + ".png", walls, moves)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
