"""Native Sudoku engine throughput: `python benchmarks/bench_sudoku.py [GENERATE_COUNT] [ITERATIONS]`.
1. solve + uniqueness (limit 2) + rating, one core: symmetry variants of two 17-clue puzzles, and random minimal
   puzzles (for a second, more varied, workload);
2. canonical forms of 9x9 solution grids, one core;
3. generation of GENERATE_COUNT unique-solution 9x9 puzzles searched toward many guesses, on every core.
Times are process CPU seconds (time.process_time, all threads) beside wall seconds: on a shared machine the
CPU time is the measure of the engine's cost; "2-core wall estimate" = CPU seconds / 2 for the generation.
Writes benchmarks/results/<device>-sudoku-engine.json. The measurement is trm_fast.tools.bench.engines.sudoku_engine."""
import json
import os
import sys

from trm_fast.tools.bench.engines import sudoku_engine, write_sudoku_engine


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    result = sudoku_engine(count, iterations, threads=os.cpu_count() or 1)
    write_sudoku_engine(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
