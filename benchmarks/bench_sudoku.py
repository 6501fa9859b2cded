"""Native Sudoku engine throughput: `python benchmarks/bench_sudoku.py [GENERATE_COUNT] [ITERATIONS]`.
1. solve + uniqueness (limit 2) + rating, one core: symmetry variants of two 17-clue puzzles, and random minimal
   puzzles (for a second, more varied, workload);
2. canonical forms of 9x9 solution grids, one core;
3. generation of GENERATE_COUNT unique-solution 9x9 puzzles searched toward many guesses, on every core.
Times are process CPU seconds (time.process_time, all threads) beside wall seconds: on a shared machine the
CPU time is the measure of the engine's cost; "2-core wall estimate" = CPU seconds / 2 for the generation.
Writes benchmarks/results/<device>-sudoku-engine.json."""
import json
import os
import sys
import time

import numpy as np

from trm_fast.bench.common import environment
from trm_fast.data.augment import augment_sudoku_pair
from trm_fast.data.sudoku import canonical_forms, generate_hard_sudoku, parse_puzzle, solve, solve_and_rate

SEVENTEEN = ["000000010400000000020000000000050407008000300001090000300400200050100000000806000",
             "..............3.85..1.2.......5.7.....4...1...9.......5......73..2.1........4...9"]
count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
threads = os.cpu_count() or 1
rng = np.random.default_rng(0)


def rate_per_second(puzzles):
    start = time.process_time()
    rated = solve_and_rate(puzzles, limit=2, threads=1)
    seconds = time.process_time() - start
    assert (rated["counts"] == 1).all()
    return len(puzzles) / seconds, float(rated["guesses"].mean())


variants = []
for text in SEVENTEEN:
    base = parse_puzzle(text)
    solution = solve(base)
    variants += [augment_sudoku_pair(base, solution, rng)[0] for _ in range(10000)]
seventeen_rate, seventeen_guesses = rate_per_second(np.stack(variants))
minimal = generate_hard_sudoku(2000, seed=1, iterations=0, threads=threads)
minimal_rate, minimal_guesses = rate_per_second(minimal["puzzles"])
start = time.process_time()
canonical_forms(minimal["solutions"][:500], threads=1)
canonical_per_s = 500 / (time.process_time() - start)

start, start_cpu = time.perf_counter(), time.process_time()
made = generate_hard_sudoku(count, seed=0, iterations=iterations, threads=threads)
gen_seconds, gen_cpu = time.perf_counter() - start, time.process_time() - start_cpu
result = {
    "environment": environment(),
    "solve_rate_puzzles_per_s_one_core": {"17_clue_variants": round(seventeen_rate), "random_minimal": round(minimal_rate)},
    "mean_guesses": {"17_clue_variants": seventeen_guesses, "random_minimal": minimal_guesses},
    "canonical_forms_per_s_one_core": round(canonical_per_s),
    "generated": count, "iterations": iterations, "threads": threads, "generate_wall_seconds": round(gen_seconds, 1),
    "generate_cpu_seconds": round(gen_cpu, 1), "generate_2core_wall_estimate_seconds": round(gen_cpu / 2, 1),
    "load_average_at_end": os.getloadavg()[0],
    "guesses_mean": float(made["guesses"].mean()), "guesses_median": float(np.median(made["guesses"])),
    "guesses_p90": float(np.percentile(made["guesses"], 90)), "guesses_max": int(made["guesses"].max()),
    "clues_mean": float((made["puzzles"] > 0).sum(axis=(1, 2)).mean()),
    "targets": {"solve_rate": ">= 50,000 puzzles/s per core (17-clue)",
                "generate": "1000 puzzles, mean guesses >= 15, <= 10 min on 2 cores"},
}
os.makedirs("benchmarks/results", exist_ok=True)
with open(f"benchmarks/results/{result['environment']['device']}-sudoku-engine.json", "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
