"""pytest-benchmark: the Sudoku solver (DPLL with singles and box-line triads), native engine where built, and the
pure-Python fallback. `pytest benchmarks/bench_solver.py --benchmark-only`; benchmarks/bench_sudoku.py measures
bulk throughput and generation."""
import numpy as np
import pytest

sudoku = pytest.importorskip("trm_fast.data.sudoku")
augment = pytest.importorskip("trm_fast.data.augment")

SEVENTEEN = "000000010400000000020000000000050407008000300001090000300400200050100000000806000"


@pytest.fixture(scope="module")
def puzzles():
    base = sudoku.parse_puzzle(SEVENTEEN)
    solution = sudoku.solve(base)
    rng = np.random.default_rng(0)
    return np.stack([augment.augment_sudoku_pair(base, solution, rng)[0] for _ in range(256)])


def test_solve_and_rate_batch(benchmark, puzzles):
    rated = benchmark(sudoku.solve_and_rate, puzzles, 2, 1)
    assert (np.asarray(rated["counts"]) == 1).all()


def test_python_rate_one(benchmark, puzzles):
    n, guesses, first = benchmark(sudoku.rate, puzzles[0], 2)
    assert n == 1 and first is not None and guesses >= 0
