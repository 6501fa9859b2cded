"""Maze-Hard generator throughput: `python benchmarks/bench_maze.py [COUNT]` generates COUNT hard mazes
(shortest path > 110 moves) with every core and reports time, attempts per second and the wall-count and
path-length distributions (PNG beside the JSON in benchmarks/results/)."""
import json
import os
import sys
import time

import numpy as np

from trm_fast.bench.common import environment
from trm_fast.data.maze import _histograms, generate_mazes

count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
start = time.perf_counter()
made = generate_mazes(count, seed=0)
seconds = time.perf_counter() - start
walls, moves = made["walls"], made["path_moves"]
result = {"environment": environment(), "count": count, "cores": os.cpu_count(), "seconds": round(seconds, 1),
          "attempts": made["attempts"], "attempts_per_s": made["attempts"] / seconds,
          "hard_fraction": count / made["attempts"],
          "walls": {"min": int(walls.min()), "mean": float(walls.mean()), "max": int(walls.max())},
          "path_moves": {"min": int(moves.min()), "mean": float(moves.mean()), "max": int(moves.max()),
                         "percentiles_50_90_99": np.percentile(moves, [50, 90, 99]).tolist()}}
os.makedirs("benchmarks/results", exist_ok=True)
stem = f"benchmarks/results/{result['environment']['device']}-maze-generator"
with open(stem + ".json", "w") as f:
    json.dump(result, f, indent=2)
_histograms(stem + ".png", walls, moves)
print(json.dumps(result, indent=2))
