"""Maze-Hard generator throughput: `python benchmarks/bench_maze.py [COUNT] [THREADS]` generates COUNT hard mazes
(shortest path > 110 moves, 270-450 walls) and reports the time, attempts per second, the fraction of random mazes
that are hard, and the wall-count and path-length distributions (JSON and PNG histograms in benchmarks/results/).
The load average at the start and end and the CPU time of the generator's threads are recorded: on a shared
machine the wall time grows with the load, while CPU seconds / threads is what idle cores would take.
The measurement is trm_fast.tools.bench.engines.maze_generator."""
import json
import os
import sys

from trm_fast.tools.bench.engines import maze_generator, write_maze_generator


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else (os.cpu_count() or 1)
    try:
        result, made = maze_generator(count, threads)
    except RuntimeError as exc:
        sys.exit(str(exc))
    write_maze_generator(result, made)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
