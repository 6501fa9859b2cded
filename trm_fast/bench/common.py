"""Kept for the data benchmarks (benchmarks/bench_sudoku.py, bench_maze.py): the environment record now lives in
trm_fast.bench.report, timing in trm_fast.bench.timing."""
from trm_fast.bench.report import environment  # noqa: F401
