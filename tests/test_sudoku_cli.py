"""Sudoku tooling of the foundation: solver, generator, augmentation, canonical forms, the demo dataset, and the
solve command's input errors."""
import numpy as np
import pytest

from trm_fast.data.augment import augment_sudoku_pair
from trm_fast.data.format import read_split
from trm_fast.data.sudoku import (canonical_form, count_solutions, format_grid, generate_sudoku_dataset,
                                  is_valid_solution, make_puzzle, parse_puzzle, random_solution, solve, tokens_to_grid)

ARTO_INKALA = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
SEVENTEEN_CLUES = "000000010400000000020000000000050407008000300001090000300400200050100000000806000"


@pytest.mark.parametrize("text", [ARTO_INKALA, SEVENTEEN_CLUES])
def test_solver_solves_famous_hard_puzzles_uniquely(text):
    grid = parse_puzzle(text)
    solution = solve(grid)
    assert solution is not None and is_valid_solution(grid, solution)
    assert count_solutions(grid) == 1


def test_solver_detects_non_unique_and_unsolvable():
    grid = parse_puzzle(ARTO_INKALA)
    grid[0, 0] = 0
    assert count_solutions(grid) == 2
    bad = np.zeros((4, 4), dtype=int)
    bad[0, :3] = [1, 2, 3]
    bad[1, 3] = 4  # cell (0, 3) can hold nothing
    assert count_solutions(bad) == 0 and solve(bad) is None


@pytest.mark.parametrize("size", [4, 6, 9])
def test_augmentations_stay_valid(size):
    rng = np.random.default_rng(size)
    solution = random_solution(size, rng)
    puzzle = solution.copy()
    puzzle[rng.random(puzzle.shape) < 0.4] = 0
    for _ in range(10):
        p, s = augment_sudoku_pair(puzzle, solution, rng)
        assert is_valid_solution(p, s)
        assert (p == 0).sum() == (puzzle == 0).sum()


def test_canonical_form_invariant_and_separating():
    rng = np.random.default_rng(1)
    keys = set()
    for _ in range(40):
        solution = random_solution(6, rng)
        key = canonical_form(solution)
        keys.add(key)
        for _ in range(3):
            assert canonical_form(augment_sudoku_pair(solution, solution, rng)[1]) == key
    assert len(keys) > 10  # 49 classes exist; 40 random grids hit many


def test_generated_dataset_holds_out_symmetry_classes(tmp_path):
    summary = generate_sudoku_dataset(str(tmp_path / "d"), size=6, num_train=40, num_test=10, min_blanks=16,
                                      max_blanks=20, aug_per_puzzle=2, seed=3, progress=False)
    _, train = read_split(str(tmp_path / "d" / "train"))
    meta, test = read_split(str(tmp_path / "d" / "test"))
    assert meta.vocab_size == 8 and meta.seq_len == 36
    grids = lambda s, t: [tokens_to_grid(x, 6) for x in s["all"].__dict__[t]]
    train_keys = {canonical_form(g) for g in grids(train, "labels")}
    for puzzle, solution in zip(grids(test, "inputs"), grids(test, "labels")):
        assert canonical_form(solution) not in train_keys
        assert (puzzle == 0).sum() >= 16 and count_solutions(puzzle) == 1 and is_valid_solution(puzzle, solution)
    assert len(train["all"].inputs) == 40 * 3 and summary["min_blanks"] >= 16


@pytest.mark.parametrize("text, message", [
    ("1234", "found 4 cells"),
    ("12x4" + "." * 12, "bad character 'x' at position 2"),
    ("11.." + "." * 12, "digit 1 is repeated in row 1"),
    ("5..." + "." * 12, "larger than 4"),
    ("1..." + "1..." + "." * 8, "repeated in column 1"),
])
def test_bad_puzzles_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_puzzle(text)


def test_solve_command(tmp_path, capsys):
    from trm_fast.cli import main
    from trm_fast.config import TRMConfig
    from trm_fast.train.trainer import train

    config = TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path}", "train.max_steps=3"])
    train(config, progress=False, log=lambda *a: None)
    assert main(["solve", "--ckpt", str(tmp_path), "--puzzle", "12x4" + "." * 12]) == 2
    assert "bad character" in capsys.readouterr().err
    assert main(["solve", "--ckpt", str(tmp_path), "--puzzle", "." * 36]) == 2
    assert "36 cells" in capsys.readouterr().err
    code = main(["solve", "--ckpt", str(tmp_path), "--puzzle", "1.3..4.2.......1", "--max-steps", "2"])
    out = capsys.readouterr().out
    assert code in (0, 1) and "supervision steps:" in out and "halting confidence" in out
    assert format_grid(parse_puzzle("1.3..4.2.......1")).count("|") == 4


def test_eval_per_step_curve_matches_evaluations_stopped_early(tmp_path, capsys):
    import json

    from trm_fast.cli import main
    from trm_fast.config import TRMConfig
    from trm_fast.eval.evaluate import evaluate
    from trm_fast.checkpoint import load_trained_model
    from trm_fast.data.format import load_data
    from trm_fast.train.trainer import train

    config = TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path / 'run'}", "train.max_steps=30",
                                                        "train.lr_warmup_steps=5", "train.lr=3e-3"])
    train(config, progress=False, log=lambda *a: None)
    assert main(["eval", "--ckpt", str(tmp_path / "run"), "--per-step", "--out", str(tmp_path / "ev"), "--device",
                 "cpu"]) == 0
    assert "after  1 supervision steps" in capsys.readouterr().out
    result = json.loads((tmp_path / "ev" / "eval_by_step.json").read_text())
    assert (tmp_path / "ev" / "eval_by_step.png").stat().st_size > 0
    curve = result["token_accuracy_by_step"]
    assert len(curve) == result["steps"] and curve[-1] == pytest.approx(result["token_accuracy"])
    model, cfg, _ = load_trained_model(str(tmp_path / "run"))
    data = load_data(cfg, log=lambda *a: None)
    for k in (1, 2):  # the curve's k-th point is an evaluation stopped after k steps
        early = evaluate(model, data.test_set, data.test_meta, 32, "cpu", max_steps=k, progress=False)
        assert result["exact_accuracy_by_step"][k - 1] == pytest.approx(early["exact_accuracy"])
        assert curve[k - 1] == pytest.approx(early["token_accuracy"])
