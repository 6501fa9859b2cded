"""Native Sudoku engine throughput: `python benchmarks/bench_sudoku.py [GENERATE_COUNT]`.
1. solve + uniqueness + rating of 17-clue puzzles (symmetry variants of a known 17-clue puzzle), one core;
2. generation of GENERATE_COUNT unique-solution 9x9 puzzles hill-climbed toward many guesses, every core.
Writes benchmarks/results/<device>-sudoku-engine.json."""
import json
import os
import sys
import time

import numpy as np

from trm_fast.bench.common import environment
from trm_fast.data.sudoku import augment, generate_hard_sudoku, parse_puzzle, solve, solve_and_rate

SEVENTEEN = "000000010400000000020000000000050407008000300001090000300400200050100000000806000"
count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
rng = np.random.default_rng(0)
base = parse_puzzle(SEVENTEEN)
solution = solve(base)
puzzles = np.stack([augment(base, solution, rng)[0] for _ in range(20000)])
start = time.perf_counter()
rated = solve_and_rate(puzzles, limit=2, threads=1)
solve_seconds = time.perf_counter() - start
assert (rated["counts"] == 1).all()
threads = os.cpu_count() or 1
start = time.perf_counter()
made = generate_hard_sudoku(count, seed=0, iterations=3000, threads=threads)
gen_seconds = time.perf_counter() - start
result = {"environment": environment(), "solve_rate_puzzles_per_s_one_core": len(puzzles) / solve_seconds,
          "generated": count, "threads": threads, "generate_seconds": round(gen_seconds, 1),
          "guesses_mean": float(made["guesses"].mean()), "guesses_median": float(np.median(made["guesses"])),
          "guesses_max": int(made["guesses"].max()),
          "targets": {"solve_rate": ">= 50,000 puzzles/s per core", "generate": "1000 puzzles, mean guesses >= 15, <= 10 min on 2 cores"}}
os.makedirs("benchmarks/results", exist_ok=True)
with open(f"benchmarks/results/{result['environment']['device']}-sudoku-engine.json", "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
