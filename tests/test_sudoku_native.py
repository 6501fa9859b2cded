"""The native 9x9 engine: solves famous puzzles, confirms uniqueness, rates by guesses, generates hard unique
puzzles; the pure-Python fallback agrees on solutions and counts."""
import numpy as np
import pytest

from trm_fast.data import sudoku as S

HARD = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
SEVENTEEN = "000000010400000000020000000000050407008000300001090000300400200050100000000806000"

native = pytest.mark.skipif(S._native() is None, reason="native engine not built")


@native
def test_solves_rates_and_checks_uniqueness():
    hard, easy = S.parse_puzzle(HARD), S.parse_puzzle(SEVENTEEN)
    two = hard.copy()
    two[0, 0] = 0  # removing a clue of a minimal puzzle: several solutions
    bad = easy.copy()
    bad[0, 0], bad[0, 1] = 5, 5  # contradictory givens
    out = S.solve_and_rate(np.stack([hard, easy, two, bad]))
    assert out["counts"].tolist() == [1, 1, 2, 0]
    assert S.is_valid_solution(hard, out["solutions"][0].reshape(9, 9))
    assert S.is_valid_solution(easy, out["solutions"][1].reshape(9, 9))
    assert out["guesses"][0] > 10 and out["guesses"][1] == 0 and out["guesses"][3] == -1


@native
def test_python_fallback_agrees(monkeypatch):
    puzzles = np.stack([S.parse_puzzle(HARD), S.parse_puzzle(SEVENTEEN)])
    fast = S.solve_and_rate(puzzles)
    monkeypatch.setattr(S, "_native", lambda: None)
    with pytest.warns(UserWarning, match="native engine"):
        slow = S.solve_and_rate(puzzles)
    assert np.array_equal(fast["solutions"], slow["solutions"]) and np.array_equal(fast["counts"], slow["counts"])


@native
def test_generated_puzzles_are_unique_and_harder_with_more_search():
    easy = S.generate_hard_sudoku(6, seed=1, iterations=0)
    hard = S.generate_hard_sudoku(6, seed=1, iterations=1500)
    for p, s in zip(hard["puzzles"], hard["solutions"]):
        assert S.is_valid_solution(p, s) and S.count_solutions(p, 2) == 1
    rated = S.solve_and_rate(hard["puzzles"])
    assert np.array_equal(rated["guesses"], hard["guesses"])
    assert hard["guesses"].mean() > easy["guesses"].mean()
