"""Sudoku engine: exact solver and uniqueness on famous puzzles, the DPLL rater (Python transcription == native,
tdoku-style guess counting), canonical forms (exact, invariant, separating; 2 and 49 classes), generated
datasets with inequivalent train/test grids, hard-puzzle generation toward targets, CSV rows, parsing."""
import re

import numpy as np
import pytest

from trm_fast.data import sudoku as S
from trm_fast.data.augment import augment_sudoku_pair
from trm_fast.data.format import read_split

PLATINUM_BLONDE = ".......12........3..23..4....18....5.6..7.8.......9.....85.....9...4.5..47...6..."
ARTO_INKALA = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
SEVENTEEN_CLUES = "..............3.85..1.2.......5.7.....4...1...9.......5......73..2.1........4...9"
FAMOUS = [PLATINUM_BLONDE, ARTO_INKALA, SEVENTEEN_CLUES]

native = pytest.mark.skipif(S._native() is None, reason="native engine not built")


@pytest.fixture
def python_only(monkeypatch):
    monkeypatch.setattr(S, "_native", lambda: None)
    monkeypatch.setattr(S, "_WARNED", True)


@pytest.mark.parametrize("text", FAMOUS)
def test_famous_puzzles_solve_uniquely(text):
    grid = S.parse_puzzle(text)
    assert (grid > 0).sum() == {PLATINUM_BLONDE: 21, ARTO_INKALA: 21, SEVENTEEN_CLUES: 17}[text]
    solution = S.solve(grid)
    assert S.is_valid_solution(grid, solution) and S.count_solutions(grid) == 1
    count, guesses, first = S.rate(grid)
    assert count == 1 and guesses >= 0 and np.array_equal(first, solution)


def test_non_unique_and_unsolvable_are_detected():
    grid = S.parse_puzzle(PLATINUM_BLONDE)
    grid[0, 7] = 0  # a clue of a minimal puzzle: now several solutions
    assert S.count_solutions(grid) == 2 and S.rate(grid)[0] == 2
    grid = S.parse_puzzle(ARTO_INKALA)
    solution = S.solve(grid)
    peers = set(grid[0]) | set(grid[:, 1]) | set(grid[:3, :3].ravel())
    grid[0, 1] = min(set(range(1, 10)) - peers - {solution[0, 1]})  # consistent givens, wrong digit
    assert S.count_solutions(grid) == 0 and S.solve(grid) is None and S.rate(grid)[:2] == (0, -1)
    assert S.count_solutions(np.zeros((6, 6), dtype=int), limit=5) == 5


def test_guess_counting_is_binary_decisions():
    # propagation alone solves it: no guess
    assert S.rate(S.parse_puzzle("1.34" "34.2" "2.43" "43.1"))[1] == 0
    # an empty 4x4: the first cell has 4 candidates; asserting 1 leads straight to a solution after further
    # binary decisions, each counted once
    count, guesses, first = S.rate(np.zeros((4, 4), dtype=int), limit=1)
    assert count == 1 and guesses >= 1 and first[0, 0] == 1


@native
def test_python_rater_equals_native():
    rng = np.random.default_rng(0)
    puzzles = [S.parse_puzzle(t) for t in FAMOUS]
    for _ in range(25):
        solution = S.random_solution(9, rng)
        puzzle = solution.copy()
        puzzle[rng.random((9, 9)) < rng.uniform(0.55, 0.8)] = 0
        puzzles.append(puzzle)
    puzzles = np.stack(puzzles)
    fast = S.solve_and_rate(puzzles, threads=2)
    for i, puzzle in enumerate(puzzles):
        count, guesses, first = S.rate(puzzle)
        assert (count, guesses) == (fast["counts"][i], fast["guesses"][i])
        if count:
            assert np.array_equal(first.ravel(), fast["solutions"][i])
    assert fast["guesses"][1] > fast["guesses"][2]  # Inkala's puzzle needs more guesses than the 17-clue one


def test_solve_and_rate_fallback_and_input_errors(python_only):
    out = S.solve_and_rate(np.stack([S.parse_puzzle(t) for t in FAMOUS[1:]]))
    assert out["counts"].tolist() == [1, 1] and (out["guesses"] >= 0).all()
    with pytest.raises(ValueError, match="digits 0-9"):
        S.solve_and_rate(np.full((1, 81), 10))
    with pytest.raises(ValueError, match="got shape \\(80,\\)"):
        S.solve_and_rate(np.zeros(80, dtype=int))


# ---------------------------------------------------------------------------------------------- canonical forms


def _brute_force_canonical(solution):
    size = solution.shape[0]
    br, bc = S.box_shape(size)
    best = None
    for grid in ([solution, solution.T] if br == bc else [solution]):
        for rows in S._group_line_orders(size // br, br):
            for cols in S._group_line_orders(size // bc, bc):
                arranged = grid[rows][:, cols]
                relabel = np.zeros(size + 1, dtype=int)
                relabel[arranged[0]] = np.arange(1, size + 1)
                key = tuple(relabel[arranged].ravel())
                best = key if best is None or key < best else best
    return bytes(best)


@pytest.mark.parametrize("size", [4, 6])
def test_canonical_form_equals_brute_force(size):
    rng = np.random.default_rng(size)
    for _ in range(4):
        grid = S.random_solution(size, rng)
        assert S.canonical_form(grid) == _brute_force_canonical(grid)


@pytest.mark.parametrize("size", [4, 6, 9])
def test_canonical_form_is_invariant(size, python_only):
    rng = np.random.default_rng(size)
    grid = S.random_solution(size, rng)
    key = S.canonical_form(grid)
    for _ in range(4 if size == 9 else 10):
        assert S.canonical_form(augment_sudoku_pair(grid, grid, rng)[1]) == key
    other = S.random_solution(size, rng)
    assert len(key) == size * size and key[:size] == bytes(range(1, size + 1))
    if size == 9:
        assert S.canonical_form(other) != key  # two random 9x9 grids are (almost surely) inequivalent


def _brute_force_equivalent(pa, sa, pb, sb):
    """Whether some element of the whole group maps (pa, sa) onto (pb, sb): every transposition and row and column
    order, the relabelling read off the first row."""
    size = sa.shape[0]
    br, bc = S.box_shape(size)
    for t in ([False, True] if br == bc else [False]):
        p, s = (pa.T, sa.T) if t else (pa, sa)
        for rows in S._group_line_orders(size // br, br):
            for cols in S._group_line_orders(size // bc, bc):
                relabel = np.zeros(size + 1, dtype=int)
                relabel[s[rows][:, cols][0]] = sb[0]
                if np.array_equal(relabel[s[rows][:, cols]], sb) and np.array_equal(relabel[p[rows][:, cols]], pb):
                    return True
    return False


@pytest.mark.parametrize("size, givens, count", [(4, 5, 12), (6, 14, 4)])
def test_equivalent_puzzles_equals_brute_force(size, givens, count):
    rng = np.random.default_rng(size)
    pairs = []
    for _ in range(count):
        solution = S.random_solution(size, rng)
        puzzle = solution * (rng.permutation(size * size) < givens).reshape(size, size)
        pairs.append((puzzle, solution))
        pairs.append(augment_sudoku_pair(puzzle, solution, rng))  # an equivalent one
    keys = S.symmetry_fingerprints(np.stack([p for p, _ in pairs]), np.stack([s for _, s in pairs]))
    verdicts = []
    for i in range(len(pairs)):
        for j in range(i + 1, min(len(pairs), i + 5)):
            same = _brute_force_equivalent(*pairs[i], *pairs[j])
            assert S.equivalent_puzzles(*pairs[i], *pairs[j]) == same, (i, j)
            assert not same or keys[i] == keys[j]  # the fingerprint is an invariant
            verdicts.append(same)
    assert any(verdicts) and not all(verdicts)


@native
def test_overlap_up_to_symmetry_9x9():
    rng = np.random.default_rng(7)
    made = S.generate_hard_sudoku(12, seed=11, iterations=0, threads=2)
    puzzles, solutions = made["puzzles"], made["solutions"]
    turned = [augment_sudoku_pair(p, s, rng) for p, s in zip(puzzles[:3], solutions[:3])]
    fewer = puzzles[3].copy()
    fewer[tuple(np.argwhere(fewer > 0)[0])] = 0  # the same solution, one clue fewer: not the same puzzle
    test_p = np.stack([t[0] for t in turned] + [puzzles[4], fewer, puzzles[10]])
    test_s = np.stack([t[1] for t in turned] + [solutions[4], solutions[3], solutions[10]])
    counts = S.count_test_in_train(puzzles[:10], solutions[:10], test_p, test_s, progress=False)
    assert counts == {"test_in_train": 1, "test_in_train_up_to_symmetry": 4}
    assert S.count_test_in_train(puzzles[:10], solutions[:10], test_p, test_s, symmetric=False) == {"test_in_train": 1}


@native
def test_native_canonical_forms_equal_python(monkeypatch):
    rng = np.random.default_rng(5)
    grids = np.stack([S.random_solution(9, rng) for _ in range(3)] + [augment_sudoku_pair(g, g, rng)[1] for g in
                                                                         [S.random_solution(9, rng)] * 2])
    fast = S.canonical_forms(grids, threads=2)
    monkeypatch.setattr(S, "_native", lambda: None)
    assert fast == [S.canonical_form(g) for g in grids] and fast[3] == fast[4]
    with pytest.raises(ValueError, match="solved 9x9 grid"):
        S.canonical_form(np.zeros((9, 9), dtype=int))


def _all_grids_in_row_normal_form(size):
    """Every grid whose first row is 1..size and whose remaining rows are sorted as canonical_form sorts them:
    each class has at least one, so their canonical forms enumerate the classes."""
    br, bc = S.box_shape(size)
    index = S._unit_index(size)
    cells = list(range(1, size + 1)) + [0] * (size * size - size)
    rows, cols, boxes = [0] * size, [0] * size, [0] * size
    for i in range(size):
        r, c, b = index[i]
        rows[r] |= 1 << i
        cols[c] |= 1 << i
        boxes[b] |= 1 << i
    found = []

    def ordered(grid):
        keys = [tuple(row) for row in grid]
        bands = [keys[b * br:(b + 1) * br] for b in range(size // br)]
        return (all(band == sorted(band) for band in bands[1:]) and bands[0][1:] == sorted(bands[0][1:])
                and [band[0] for band in bands[1:]] == sorted(band[0] for band in bands[1:]))

    def fill(i):
        if i == size * size:
            grid = np.array(cells).reshape(size, size)
            if ordered(grid):
                found.append(grid)
            return
        r, c, b = index[i]
        used = rows[r] | cols[c] | boxes[b]
        for d in range(size):
            bit = 1 << d
            if not used & bit:
                cells[i] = d + 1
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
                fill(i + 1)
                rows[r] ^= bit
                cols[c] ^= bit
                boxes[b] ^= bit
        cells[i] = 0

    fill(size)
    return found


@pytest.mark.parametrize("size, classes", [(4, 2), (6, 49)])
def test_number_of_essentially_different_grids(size, classes):
    # 6x6 (2x3 boxes, no transposition): 49 classes, the known count of essentially different 6x6 Sudokus
    keys = {S.canonical_form(g) for g in _all_grids_in_row_normal_form(size)}
    assert len(keys) == classes


# ---------------------------------------------------------------------------------------------- datasets


def test_generated_6x6_split_holds_out_classes(tmp_path):
    summary = S.generate_sudoku_dataset(str(tmp_path / "d"), size=6, num_train=60, num_test=15, min_blanks=17,
                                        max_blanks=20, aug_per_puzzle=3, seed=4, progress=False)
    _, train = read_split(str(tmp_path / "d" / "train"))
    meta, test = read_split(str(tmp_path / "d" / "test"))
    assert (meta.vocab_size, meta.seq_len) == (8, 36) and summary["min_blanks"] >= 17
    train_keys = {S.canonical_form(S.tokens_to_grid(y, 6)) for y in train["all"].labels}
    assert len(train["all"].inputs) == 60 * 4 and list(train["all"].group_indices[:3]) == [0, 4, 8]
    for x, y in zip(test["all"].inputs, test["all"].labels):
        puzzle, solution = S.tokens_to_grid(x, 6), S.tokens_to_grid(y, 6)
        assert S.canonical_form(solution) not in train_keys
        assert S.count_solutions(puzzle) == 1 and S.is_valid_solution(puzzle, solution) and (puzzle == 0).sum() >= 17
    assert (tmp_path / "d" / "identifiers.json").read_text() == '["<blank>"]'


def test_generated_9x9_split(tmp_path):
    summary = S.generate_sudoku_dataset(str(tmp_path / "d"), size=9, num_train=12, num_test=4, min_blanks=50,
                                        aug_per_puzzle=1, seed=1, progress=False, hard_iterations=20, threads=2)
    _, train = read_split(str(tmp_path / "d" / "train"))
    meta, test = read_split(str(tmp_path / "d" / "test"))
    assert (meta.vocab_size, meta.seq_len) == (11, 81) and summary["min_blanks"] >= 50
    train_keys = set(S.canonical_forms(np.stack([S.tokens_to_grid(y, 9) for y in train["all"].labels])))
    for x, y in zip(test["all"].inputs, test["all"].labels):
        puzzle, solution = S.tokens_to_grid(x, 9), S.tokens_to_grid(y, 9)
        assert S.canonical_form(solution) not in train_keys
        assert S.count_solutions(puzzle) == 1 and S.is_valid_solution(puzzle, solution)


@native
def test_hard_generation_reaches_targets():
    made = S.generate_hard_sudoku(6, seed=3, iterations=1500, threads=2, target_guesses=3)
    rated = S.solve_and_rate(made["puzzles"])
    assert (rated["counts"] == 1).all() and np.array_equal(rated["guesses"], made["guesses"])
    for p, s in zip(made["puzzles"], made["solutions"]):
        assert S.is_valid_solution(p, s)
    assert (made["guesses"] >= 3).sum() >= 5  # targets reached within the budget (a search can stall)
    unbounded = S.generate_hard_sudoku(6, seed=3, iterations=1500, threads=2)
    assert unbounded["guesses"].mean() > made["guesses"].mean()  # the target stopped the search early
    free = S.generate_hard_sudoku(6, seed=3, iterations=0)  # no search: random minimal puzzles
    assert free["guesses"].mean() < unbounded["guesses"].mean()
    for p in free["puzzles"]:
        for cell in np.argwhere(p > 0)[:4]:  # every clue is needed
            q = p.copy()
            q[tuple(cell)] = 0
            assert S.count_solutions(q) == 2


@pytest.mark.parametrize("size", [4, 6, 9])
def test_augmentations_keep_puzzle_and_solution_consistent(size):
    # is_valid_solution checks the boxes of the size: a transposed 6x6 grid (3x2 boxes) would fail it
    rng = np.random.default_rng(size)
    solution = S.random_solution(size, rng)
    puzzle = solution.copy()
    puzzle[rng.random(puzzle.shape) < 0.5] = 0
    seen = set()
    for _ in range(20):
        p, s = augment_sudoku_pair(puzzle, solution, rng)
        assert S.is_valid_solution(p, s) and (p == 0).sum() == (puzzle == 0).sum()
        seen.add(s.tobytes())
    assert len(seen) > 15  # the augmentations differ


@pytest.mark.parametrize("text, message", [
    ("1" * 80, "found 80 cells, expected 16 or 36 or 81"),
    ("12a4" + "." * 12, "bad character 'a' at position 2"),
    ("12.." "3..." "...." "...1", None),
    ("1..." ".1.." + "." * 8, "digit 1 is repeated in box 1"),
    ("." * 36, None),
])
def test_parse_puzzle(text, message):
    if message is None:
        assert S.parse_puzzle(text).shape[0] in (4, 6)
    else:
        with pytest.raises(ValueError, match=message):
            S.parse_puzzle(text)
    with pytest.raises(ValueError, match="found 16 cells, expected 81"):
        S.parse_puzzle("." * 16, size=9)


def test_parse_and_format_round_trip():
    grid = S.parse_puzzle(ARTO_INKALA)
    text = S.format_grid(grid)
    assert "+" in text and "|" in text
    assert np.array_equal(S.parse_puzzle(text), grid)
    assert S.grid_to_text(grid) == ARTO_INKALA


# ---------------------------------------------------------------------------------------------- CSV rows and CLI


def _csv_rows():
    rows = []
    for text in (ARTO_INKALA, PLATINUM_BLONDE):
        solution = S.solve(S.parse_puzzle(text))
        rows.append(f"src,{text},{S.grid_to_text(solution)},7")
    return rows


@pytest.mark.parametrize("bad_row, message", [
    ("src,{q},{a}", "expected 4 fields (source,q,a,rating), got 3"),
    ("src,{q},{a_bad},7", "field a has a bad character '.' at position 1"),
    ("src,{q},{a},hard", "field rating 'hard' is not an integer"),
    ("src,{q_unsolvable},{a},7", "the puzzle has no solution"),
])
def test_csv_bad_rows(tmp_path, bad_row, message):
    from trm_fast.data.build import read_sudoku_csv

    good = _csv_rows()
    _, q, a, _ = good[0].split(",")
    peers_free = next(d for d in "123456789" if d not in q[:9] and d != a[1])  # consistent, but wrong
    row = bad_row.format(q=q, a=a, a_bad="." + a[1:], q_unsolvable=q[0] + peers_free + q[2:])
    path = tmp_path / "train.csv"
    path.write_text("\n".join(["source,q,a,rating", good[1], row, good[1]]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"train.csv:3: {message}")):
        read_sudoku_csv(str(path))
    rows, counts = read_sudoku_csv(str(path), skip_bad=True)
    assert len(rows) == 2 and counts["skipped"] == 1


def test_csv_min_difficulty(tmp_path):
    from trm_fast.data.build import read_sudoku_csv

    rows = _csv_rows()
    path = tmp_path / "t.csv"
    path.write_text("source,q,a,rating\n" + rows[0] + "\n" + rows[1].replace(",7", ",30") + "\n")
    kept, counts = read_sudoku_csv(str(path), min_difficulty=10)
    assert len(kept) == 1 and counts["below_min_difficulty"] == 1


def test_cli_offline_download_and_generate_9x9(tmp_path, capsys, monkeypatch):
    import builtins

    from trm_fast.cli import main

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name == "huggingface_hub":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    assert main(["data", "build", "sudoku", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "huggingface_hub is not installed" in err and "Traceback" not in err
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert main(["data", "build", "sudoku", "--generate", "6", "--num-test", "2", "--size", "9", "--min-blanks", "45",
                 "--aug", "1", "--out", str(tmp_path / "g9"), "--threads", "2"]) == 0
    meta, sets = read_split(str(tmp_path / "g9" / "train"))
    assert meta.seq_len == 81 and len(sets["all"].inputs) == 12
