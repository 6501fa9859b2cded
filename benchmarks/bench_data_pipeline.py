"""pytest-benchmark: the CPU data pipeline that feeds a training step: the published sampler drawing global batches
from a built dataset, evaluation batching, and Sudoku / maze augmentation.
`pytest benchmarks/bench_data_pipeline.py --benchmark-only` (builds the small embedded sudoku6-demo set on first use)."""
import numpy as np
import pytest

format_ = pytest.importorskip("trm_fast.data.format")
sampler = pytest.importorskip("trm_fast.data.sampler")
recipes = pytest.importorskip("trm_fast.data.recipes")


@pytest.fixture(scope="module")
def train_set():
    root = recipes.ensure_recipe("sudoku6-demo", log=lambda *a: None)
    _, sets = format_.read_split(f"{root}/train")
    return sets["all"]


@pytest.mark.parametrize("batch", [128, 768])
def test_sampler_next_batch(benchmark, train_set, batch):
    s = sampler.TrainSampler(train_set, batch, seed=0)
    out = benchmark(s.next_batch)
    assert np.asarray(out["inputs"]).shape[0] == batch


def test_eval_batches_one_pass(benchmark, train_set):
    count = benchmark(lambda: sum(1 for _ in sampler.iter_eval_batches(train_set, 768)))
    assert count == -(-len(train_set.inputs) // 768)


def test_sudoku_augment(benchmark):
    sudoku = pytest.importorskip("trm_fast.data.sudoku")
    augment = pytest.importorskip("trm_fast.data.augment")
    puzzle = sudoku.parse_puzzle("000000010400000000020000000000050407008000300001090000300400200050100000000806000")
    solution = sudoku.solve(puzzle)
    rng = np.random.default_rng(0)
    p, s = benchmark(augment.augment_sudoku_pair, puzzle, solution, rng)
    assert (p > 0).sum() == (puzzle > 0).sum() and sudoku.is_valid_solution(p, s)


def test_maze_dihedral(benchmark):
    augment = pytest.importorskip("trm_fast.data.augment")
    tokens = np.random.default_rng(0).integers(1, 6, 900)
    out = benchmark(augment.augment_maze, tokens, 5, 30)
    assert out.shape == tokens.shape and sorted(out) == sorted(tokens)
