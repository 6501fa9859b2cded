"""Sudoku of size 4x4 (2x2 boxes), 6x6 (boxes of 2 rows x 3 columns) and 9x9 (3x3): an exact solver that counts
solutions (uniqueness), generators of puzzles with unique solutions, canonical forms under the symmetry group (to
keep train and test grids inequivalent), parsing and printing. The augmentations are in trm_fast/data/augment.py.

Grids are (size, size) int arrays with 0 for a blank. Tokens (TRM_SPEC section 5): pad 0, blank 1, digit d -> d+1.
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np

BOX_SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # (rows, columns) of a box


def box_shape(size: int) -> tuple[int, int]:
    if size not in BOX_SHAPES:
        raise ValueError(f"unsupported Sudoku size {size}: supported sizes are {sorted(BOX_SHAPES)}")
    return BOX_SHAPES[size]


# ---------------------------------------------------------------------------------------------- solver


_UNIT_INDEX: dict = {}


def _unit_index(size: int) -> list:
    """(row, column, box) of every cell, row-major."""
    if size not in _UNIT_INDEX:
        br, bc = box_shape(size)
        _UNIT_INDEX[size] = [(r, c, (r // br) * (size // bc) + c // bc) for r in range(size) for c in range(size)]
    return _UNIT_INDEX[size]


class _Board:
    """Bitmask candidate tracking for a backtracking search with most-constrained-cell ordering."""

    def __init__(self, grid):
        grid = np.asarray(grid)
        self.size = size = grid.shape[0]
        self.index = _unit_index(size)
        self.full = (1 << size) - 1
        self.rows = [0] * size
        self.cols = [0] * size
        self.boxes = [0] * size
        self.cells = grid.ravel().tolist()
        self.ok = True
        for i, v in enumerate(self.cells):
            if v:
                r, c, b = self.index[i]
                bit = 1 << (v - 1)
                if self.rows[r] & bit or self.cols[c] & bit or self.boxes[b] & bit:
                    self.ok = False
                self.rows[r] |= bit
                self.cols[c] |= bit
                self.boxes[b] |= bit

    def count(self, limit: int, solution: list | None) -> int:
        best, best_mask, best_n = -1, 0, self.size + 1
        rows, cols, boxes, full = self.rows, self.cols, self.boxes, self.full
        for i, v in enumerate(self.cells):
            if v == 0:
                r, c, b = self.index[i]
                mask = full & ~(rows[r] | cols[c] | boxes[b])
                n = mask.bit_count()
                if n < best_n:
                    best, best_mask, best_n = i, mask, n
                    if n <= 1:
                        break
        if best < 0:
            if solution is not None and not solution:
                solution.extend(self.cells)
            return 1
        if best_n == 0:
            return 0
        r, c, b = self.index[best]
        total = 0
        mask = best_mask
        while mask:
            bit = mask & -mask
            mask ^= bit
            self.cells[best] = bit.bit_length()
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            total += self.count(limit - total, solution)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            self.cells[best] = 0
            if total >= limit:
                break
        return total


def count_solutions(grid: np.ndarray, limit: int = 2) -> int:
    """Number of solutions of `grid`, counted up to `limit` (2 answers the uniqueness question)."""
    board = _Board(np.asarray(grid))
    return board.count(limit, None) if board.ok else 0


def solve(grid: np.ndarray) -> np.ndarray | None:
    """One solution of `grid`, or None if it has none."""
    grid = np.asarray(grid)
    board = _Board(grid)
    found: list = []
    if not board.ok or board.count(1, found) == 0:
        return None
    return np.array(found, dtype=grid.dtype).reshape(grid.shape)


def random_solution(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random solved grid: depth-first filling in row-major order, each cell trying digits in its own random
    order (drawn once per grid)."""
    index = _unit_index(size)
    orders = (np.argsort(rng.random((size * size, size)), axis=1) + 1).tolist()
    rows, cols, boxes = [0] * size, [0] * size, [0] * size
    cells = [0] * (size * size)

    def fill(i: int) -> bool:
        if i == size * size:
            return True
        r, c, b = index[i]
        used = rows[r] | cols[c] | boxes[b]
        for d in orders[i]:
            bit = 1 << (d - 1)
            if not used & bit:
                cells[i] = d
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
                if fill(i + 1):
                    return True
                rows[r] ^= bit
                cols[c] ^= bit
                boxes[b] ^= bit
        cells[i] = 0
        return False

    fill(0)
    return np.array(cells, dtype=np.int64).reshape(size, size)


def make_puzzle(solution: np.ndarray, rng: np.random.Generator, min_blanks: int, max_blanks: int) -> np.ndarray | None:
    """Blanks cells of `solution` in random order while the solution stays unique, until a target count drawn
    uniformly from [min_blanks, max_blanks] is reached. None if uniqueness stops it short of min_blanks."""
    target = int(rng.integers(min_blanks, max_blanks + 1))
    puzzle = solution.copy()
    blanks = 0
    for i in rng.permutation(solution.size):
        r, c = divmod(int(i), solution.shape[0])
        keep = puzzle[r, c]
        puzzle[r, c] = 0
        if count_solutions(puzzle, 2) == 1:
            blanks += 1
            if blanks >= target:
                return puzzle
        else:
            puzzle[r, c] = keep
    return puzzle if blanks >= min_blanks else None


def is_valid_solution(puzzle: np.ndarray, solution: np.ndarray) -> bool:
    """Complete, every row/column/box a permutation, and the puzzle's givens kept."""
    puzzle, solution = np.asarray(puzzle), np.asarray(solution)
    size = puzzle.shape[0]
    if solution.shape != puzzle.shape:
        return False
    br, bc = box_shape(size)
    want = set(range(1, size + 1))
    units = [solution[r] for r in range(size)] + [solution[:, c] for c in range(size)]
    units += [solution[r:r + br, c:c + bc].ravel() for r in range(0, size, br) for c in range(0, size, bc)]
    return all(set(u.tolist()) == want for u in units) and bool(np.all((puzzle == 0) | (puzzle == solution)))


def valid_solution_rows(puzzles: np.ndarray, solutions: np.ndarray) -> np.ndarray:
    """is_valid_solution for a stack of grids (N, size, size) at once: (N,) bool. The check never sees a label,
    so a puzzle with two solutions accepts both."""
    puzzles, solutions = np.asarray(puzzles), np.asarray(solutions)
    n, size = solutions.shape[0], solutions.shape[1]
    br, bc = box_shape(size)
    in_range = ((solutions >= 1) & (solutions <= size)).all(axis=(1, 2))
    onehot = np.eye(size + 1, dtype=np.int16)[np.clip(solutions, 0, size)][..., 1:]  # (N, r, c, digit)
    boxes = onehot.reshape(n, size // br, br, size // bc, bc, size).sum(axis=(2, 4))
    units_ok = (onehot.sum(axis=1) == 1).all(axis=(1, 2)) & (onehot.sum(axis=2) == 1).all(axis=(1, 2)) \
        & (boxes == 1).all(axis=(1, 2, 3))
    givens_kept = ((puzzles == 0) | (puzzles == solutions)).all(axis=(1, 2))
    return in_range & units_ok & givens_kept


# ---------------------------------------------------------------------------------------------- rating (DPLL)
#
# The difficulty measure of the published Sudoku-Extreme `rating` is the number of guesses ("backtracks" in the
# dataset card) tdoku's DPLL solver makes. From tdoku's source (src/solver_dpll_triad_simd.cc): propagation is
# complete unit propagation over a clause encoding of cells, box minirows/minicolumns ("triads") and band
# configurations, which covers naked and hidden singles and locked candidates (pointing and claiming); a guess is
# one binary decision: assert the first remaining alternative of the branching variable (num_guesses += 1), and if
# the search goes on, negate it; the negated side is free unless more than one alternative remains, in which case
# the same variable is branched again (another guess). tdoku branches on band configurations of one digit.
#
# This engine counts guesses the same way (binary decisions, the last alternative free) with propagation by naked
# singles, hidden singles and locked candidates in both directions, but it branches on cells (fewest candidates,
# first in row-major order, digits ascending), so its counts are of the same kind as the published ratings, not
# equal to them. The reported count is the number of guesses made until the first solution is found (what a
# search with limit 1 makes). csrc/sudoku.cpp implements exactly this algorithm for 9x9; this transcription is its
# reference and the fallback when the extension is not built (same solutions, counts and guess counts).


class _Rater:
    """Tables for a size: units, peers, and the box/line intersections locked candidates use."""

    def __init__(self, size: int):
        br, bc = box_shape(size)
        self.size, self.all = size, (1 << size) - 1
        rows = [[r * size + c for c in range(size)] for r in range(size)]
        cols = [[r * size + c for r in range(size)] for c in range(size)]
        boxes = [[(r0 + i) * size + c0 + j for i in range(br) for j in range(bc)]
                 for r0 in range(0, size, br) for c0 in range(0, size, bc)]
        self.units = rows + cols + boxes
        self.peers = [sorted({o for u in self.units if c in u for o in u} - {c}) for c in range(size * size)]
        # (cells of the box on the line, the box's other cells, the line's other cells) for every box x line
        self.intersections = []
        for box in boxes:
            for line in rows + cols:
                common = [c for c in box if c in line]
                if len(common) > 1:
                    self.intersections.append((common, [c for c in box if c not in common],
                                               [c for c in line if c not in common]))

    def propagate(self, cand: list, spread: list) -> bool:
        """Eliminates until nothing changes; False on a contradiction."""
        full = self.all
        while True:
            changed = False
            for c, m in enumerate(cand):  # naked singles
                if not m:
                    return False
                if not spread[c] and m & (m - 1) == 0:
                    spread[c] = True
                    for p in self.peers[c]:
                        if cand[p] & m:
                            cand[p] &= ~m
                            if not cand[p]:
                                return False
                            changed = True
            for unit in self.units:  # hidden singles
                once = twice = 0
                for c in unit:
                    twice |= once & cand[c]
                    once |= cand[c]
                if once != full:
                    return False
                lone = once & ~twice
                while lone:
                    bit = lone & -lone
                    lone ^= bit
                    for c in unit:
                        if cand[c] & bit and cand[c] != bit:
                            cand[c] = bit
                            changed = True
            if changed:
                continue
            for common, box_rest, line_rest in self.intersections:  # locked candidates, both directions
                inside = 0
                for c in common:
                    inside |= cand[c]
                in_box = in_line = 0
                for c in box_rest:
                    in_box |= cand[c]
                for c in line_rest:
                    in_line |= cand[c]
                for rest, only in ((line_rest, inside & ~in_box), (box_rest, inside & ~in_line)):
                    if only:  # digits the box (line) can only place here: gone from the rest of the line (box)
                        for c in rest:
                            if cand[c] & only:
                                cand[c] &= ~only
                                if not cand[c]:
                                    return False
                                changed = True
            if not changed:
                return True

    def search(self, grid: np.ndarray, limit: int) -> tuple[int, int, list | None]:
        """(solutions counted up to limit, guesses until the first solution or -1, the first solution)."""
        size = self.size
        cand = [self.all if v == 0 else 1 << (int(v) - 1) for v in np.asarray(grid).ravel()]
        out = {"solutions": 0, "guesses": 0, "first_guesses": -1, "first": None}

        def run(cand, spread):
            if out["solutions"] >= limit or not self.propagate(cand, spread):
                return
            best, best_n = -1, size + 1
            for c, m in enumerate(cand):
                n = bin(m).count("1")
                if 1 < n < best_n:
                    best, best_n = c, n
                    if n == 2:
                        break
            if best < 0:
                if out["solutions"] == 0:
                    out["first"], out["first_guesses"] = list(cand), out["guesses"]
                out["solutions"] += 1
                return
            branch(cand, spread, best)

        def branch(cand, spread, cell):
            bit = cand[cell] & -cand[cell]
            out["guesses"] += 1  # assert the lowest digit
            child = list(cand)
            child[cell] = bit
            child_spread = list(spread)
            run(child, child_spread)
            if out["solutions"] >= limit:
                return
            cand[cell] &= ~bit  # its negation is free
            if not self.propagate(cand, spread):
                return
            if cand[cell] & (cand[cell] - 1):
                branch(cand, spread, cell)  # still a choice: branch on the same cell again
            else:
                run(cand, spread)

        run(cand, [False] * (size * size))
        first = None if out["first"] is None else [m.bit_length() for m in out["first"]]
        return out["solutions"], out["first_guesses"], first


_RATERS: dict = {}


def rate(grid: np.ndarray, limit: int = 2) -> tuple[int, int, np.ndarray | None]:
    """Pure-Python DPLL of any supported size: (solutions up to limit, guesses until the first solution (-1 if
    none), first solution or None). Same algorithm and counts as the native engine."""
    grid = np.asarray(grid)
    size = grid.shape[0]
    if size not in _RATERS:
        _RATERS[size] = _Rater(size)
    if not _Board(grid).ok:  # contradictory givens
        return 0, -1, None
    n, guesses, first = _RATERS[size].search(grid, limit)
    return n, guesses, None if first is None else np.array(first, dtype=np.int64).reshape(size, size)


# ---------------------------------------------------------------------------------------------- symmetries


def _group_line_orders(n_groups: int, group: int) -> np.ndarray:
    """Every line order allowed by the boxes: permutations of the groups and of the lines within each group."""
    orders = []
    for outer in itertools.permutations(range(n_groups)):
        for inner in itertools.product(*[list(itertools.permutations(range(group)))] * n_groups):
            orders.append([g * group + i for g, perm in zip(outer, inner) for i in perm])
    return np.array(orders)


_COLUMN_ORDERS: dict = {}


def canonical_form(solution: np.ndarray) -> bytes:
    """The canonical key of a solved grid under the Sudoku symmetry group: the lexicographically smallest grid
    (row-major) over all relabellings, band/row/stack/column permutations and, for square boxes only, transposition.
    Exact, computed without enumerating the group:
    - any arrangement can be relabelled so that its first row reads 1..size, the smallest row there is, so the
      minimum starts with 1..size and its relabelling is fixed by the arrangement's first row;
    - enumerate the first row's source (transpose x row) and the column order (stack and column permutations):
      2 x 9 x 1296 = 23,328 candidates for 9x9, 6 x 72 = 432 for 6x6, 2 x 4 x 8 = 64 for 4x4;
    - for each, the rest of the row order is forced by sorting (rows of a solved grid are distinct): the first
      band's other rows in increasing order, then the other bands ordered by their smallest row, rows sorted within.
    Returns the canonical grid's digits as bytes (size*size of them)."""
    solution = np.asarray(solution)
    size = solution.shape[0]
    br, bc = box_shape(size)
    if solution.shape != (size, size) or sorted(np.unique(solution).tolist()) != list(range(1, size + 1)):
        raise ValueError(f"canonical_form takes a solved {size}x{size} grid (digits 1..{size}), got shape {solution.shape}")
    native = _native() if size == 9 else None
    if native is not None:
        return bytes(native.canonical_batch(solution.reshape(1, 81).astype(np.uint8), 1)[0])
    if (br, bc) not in _COLUMN_ORDERS:
        _COLUMN_ORDERS[(br, bc)] = _group_line_orders(size // bc, bc)
    col_orders = _COLUMN_ORDERS[(br, bc)]  # (C, size)
    base = np.int64(size + 1) ** np.arange(size - 1, -1, -1, dtype=np.int64)  # a row as one base-(size+1) number
    best = None
    for grid in ([solution, solution.T] if br == bc else [solution]):
        permuted = grid[:, col_orders].transpose(1, 0, 2)  # (C, size rows, size cols)
        for first in range(size):
            inverse = np.zeros((len(col_orders), size + 1), dtype=np.int64)
            np.put_along_axis(inverse, permuted[:, first, :], np.arange(1, size + 1)[None].repeat(len(col_orders), 0), axis=1)
            relabelled = np.take_along_axis(inverse[:, None, :], permuted, axis=2)  # first row now 1..size
            keys = relabelled @ base  # (C, size) one number per source row
            band = first // br
            rest = np.sort(np.delete(keys[:, band * br:(band + 1) * br], first % br, axis=1), axis=1)
            others = [np.sort(keys[:, b * br:(b + 1) * br], axis=1) for b in range(size // br) if b != band]
            if others:
                stacked = np.stack(others, axis=1)  # (C, bands-1, br)
                stacked = np.take_along_axis(stacked, np.argsort(stacked[:, :, 0], axis=1)[:, :, None], axis=1)
                rest = np.concatenate([rest, stacked.reshape(len(keys), -1)], axis=1)
            candidate = rest[np.lexsort(rest.T[::-1])[0]]
            if best is None or tuple(candidate) < tuple(best):
                best = candidate
    rows = [int(k) for k in [int(np.arange(1, size + 1) @ base)] + list(best)]
    digits = [(k // int(b)) % (size + 1) for k in rows for b in base]
    return bytes(digits)


# Train/test overlap up to symmetry. Canonical forms cost milliseconds per grid; instead every (puzzle, solution)
# gets a fingerprint that the symmetry group cannot change (a hash of cell colours refined, as in Weisfeiler-Lehman,
# over rows, columns, boxes and digits), and only test puzzles whose fingerprint a training puzzle shares are checked
# exactly (`equivalent_puzzles`).

_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
_ROLES = tuple(np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _MIX[0]
    x = (x ^ (x >> np.uint64(27))) * _MIX[1]
    return x ^ (x >> np.uint64(31))


def _cell_colours(puzzles: np.ndarray, solutions: np.ndarray, rounds: int = 2) -> np.ndarray:
    """(N, n, n) uint64 colours of the cells of (N, n, n) puzzles (0 = blank) and their solutions, equivariant under
    relabelling and band/row/stack/column permutations (not transposition): a cell starts from (given?, givens of
    its digit, givens in its row, column, box) and then mixes in the multisets (wrapping sums of mixed colours) of
    its row, column, box and digit."""
    N, n, _ = puzzles.shape
    br, bc = box_shape(n)
    given = puzzles > 0
    grid_base = np.arange(N, dtype=np.intp)[:, None] * n
    digit_slot = (grid_base + np.clip(solutions.reshape(N, n * n).astype(np.intp) - 1, 0, n - 1)).ravel()

    def per_digit(values):  # (N, cells) -> (N, n): wrapping sums over the cells of each solution digit
        out = np.zeros(N * n, dtype=np.uint64)
        np.add.at(out, digit_slot, values.ravel())
        return out.reshape(N, n)

    def per_cell(rows, cols, boxes, digits):  # (N, n) each -> (N, n, n) summands of every cell
        boxes = np.repeat(np.repeat(boxes.reshape(N, n // br, n // bc), br, 1), bc, 2)
        return (rows[:, :, None] * _ROLES[0] + cols[:, None, :] * _ROLES[1] + boxes * _ROLES[2]
                + digits.reshape(-1)[digit_slot].reshape(N, n, n) * _ROLES[3])

    count = lambda m: m.astype(np.uint64)
    box_sum = lambda m: m.reshape(N, n // br, br, n // bc, bc).sum((2, 4)).reshape(N, n)
    givens_of_digit = np.bincount((grid_base * (n + 1) // n + puzzles.reshape(N, n * n)).ravel(),
                                  minlength=N * (n + 1)).reshape(N, n + 1)[:, 1:]
    colour = _mix(count(given) + per_cell(count(given.sum(2)), count(given.sum(1)), count(box_sum(given)),
                                          count(givens_of_digit)))
    for _ in range(rounds):
        m = _mix(colour ^ _ROLES[0])
        colour = _mix(colour + per_cell(m.sum(2), m.sum(1), box_sum(m), per_digit(m)))
    return colour


def symmetry_fingerprints(puzzles: np.ndarray, solutions: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(N,) uint64: equal for two (puzzle, solution) pairs that one symmetry of `random_sudoku_symmetry` maps onto
    each other (relabelling, band/row/stack/column permutations, transposition for square boxes); rarely equal
    otherwise. Inputs (N, n, n), 0 = blank."""
    puzzles, solutions = np.asarray(puzzles), np.asarray(solutions)
    n = puzzles.shape[1]
    br, bc = box_shape(n)
    out = np.empty(len(puzzles), dtype=np.uint64)
    for start in range(0, len(puzzles), chunk):
        p, q = puzzles[start:start + chunk], solutions[start:start + chunk]
        keys = _mix(_cell_colours(p, q).sum((1, 2)))
        if br == bc:  # transposition: the smaller of the two orientations' keys
            keys = np.minimum(keys, _mix(_cell_colours(p.transpose(0, 2, 1), q.transpose(0, 2, 1)).sum((1, 2))))
        out[start:start + chunk] = keys
    return out


_LINE_ORDERS: dict = {}


def _line_orders(n_groups: int, group: int) -> np.ndarray:
    if (n_groups, group) not in _LINE_ORDERS:
        _LINE_ORDERS[(n_groups, group)] = _group_line_orders(n_groups, group)
    return _LINE_ORDERS[(n_groups, group)]


def equivalent_puzzles(puzzle_a, solution_a, puzzle_b, solution_b) -> bool:
    """Whether a symmetry maps (puzzle_a, solution_a) onto (puzzle_b, solution_b), exactly: over the row orders the
    boxes allow whose row colours (`_cell_colours`) match, each choice of the column that column 0 goes to fixes the
    relabelling (column 0 of a solved grid holds every digit) and then the column order; the solutions must be
    solved grids."""
    pa, sa = np.asarray(puzzle_a), np.asarray(solution_a)
    n = pa.shape[0]
    br, bc = box_shape(n)
    rows_a = _cell_colours(pa[None], sa[None])[0].sum(1)
    if len(np.unique(sa[:, 0])) != n:
        raise ValueError("equivalent_puzzles needs solved grids (column 0 holds every digit)")
    row_orders, stacks = _line_orders(n // br, br), np.arange(n) // bc
    pb, sb = np.asarray(puzzle_b), np.asarray(solution_b)
    for p, s in ([(pb, sb), (pb.T, sb.T)] if br == bc else [(pb, sb)]):
        rows_b = _cell_colours(p[None], s[None])[0].sum(1)
        for order in row_orders[np.all(rows_b[row_orders] == rows_a, axis=1)]:  # row r of a -> row order[r] of b
            s_rows, p_rows = s[order], p[order]
            for first in range(n):
                relabel = np.zeros(n + 1, dtype=np.int64)
                relabel[sa[:, 0]] = s_rows[:, first]
                same = np.all(relabel[sa][:, :, None] == s_rows[:, None, :], axis=0)  # column c of a ~ column c' of b
                if not (same.sum(1) == 1).all():
                    continue
                cols = same.argmax(1)
                bijective = len(set(relabel[1:].tolist())) == n and len(set(cols.tolist())) == n
                keeps_stacks = all(len(set(stacks[cols[k:k + bc]].tolist())) == 1 for k in range(0, n, bc))
                if bijective and keeps_stacks and np.array_equal(relabel[pa], p_rows[:, cols]):
                    return True
    return False


def count_test_in_train(train_puzzles, train_solutions, test_puzzles, test_solutions, symmetric: bool = True,
                        progress: bool = True) -> dict:
    """Test puzzles that also occur in training: exactly (`test_in_train`) and, with `symmetric`, up to the
    symmetries training augments with (`test_in_train_up_to_symmetry`, the exact ones included; the solutions must
    be solved grids). Arrays (N, n, n), 0 = blank."""
    from tqdm.auto import tqdm

    from trm_fast.data.format import rows_in

    train_puzzles, test_puzzles = np.asarray(train_puzzles), np.asarray(test_puzzles)
    exact = rows_in(test_puzzles.reshape(len(test_puzzles), -1), train_puzzles.reshape(len(train_puzzles), -1))
    counts = {"test_in_train": int(exact.sum())}
    if not symmetric:
        return counts
    train_keys = symmetry_fingerprints(train_puzzles, train_solutions)
    test_keys = symmetry_fingerprints(test_puzzles, test_solutions)
    candidates = np.flatnonzero(~exact & np.isin(test_keys, train_keys))
    by_key: dict = {}
    for i in np.flatnonzero(np.isin(train_keys, test_keys[candidates])):
        by_key.setdefault(int(train_keys[i]), []).append(i)
    found = 0
    for i in tqdm(candidates, desc="test puzzles equivalent to training", leave=False, disable=not progress):
        found += any(equivalent_puzzles(train_puzzles[j], train_solutions[j], test_puzzles[i], test_solutions[i])
                     for j in by_key[int(test_keys[i])])
    counts["test_in_train_up_to_symmetry"] = counts["test_in_train"] + found
    return counts


# ---------------------------------------------------------------------------------------------- text


def _tokens(digits: np.ndarray) -> np.ndarray:
    """Digits (0 = blank) to uint8 token ids, as the published builder stores them: blank 1, d -> d + 1."""
    digits = np.asarray(digits)
    return np.where(digits == 0, 1, digits + 1).astype(np.uint8)


def grid_to_tokens(grid: np.ndarray) -> np.ndarray:
    """Blank -> 1, digit d -> d + 1, flattened."""
    grid = np.asarray(grid).ravel()
    return np.where(grid == 0, 1, grid + 1).astype(np.int64)


def tokens_to_grid(tokens: np.ndarray, size: int) -> np.ndarray:
    """Token ids back to digits (pad/blank -> 0)."""
    tokens = np.asarray(tokens).reshape(size, size)
    return np.where(tokens >= 2, tokens - 1, 0)


def parse_puzzle(text: str, size: int | None = None) -> np.ndarray:
    """A puzzle from text: cells row by row, '.' or '0' for blanks; spaces, newlines and '|', '-', '+' are
    ignored. The size is inferred from the cell count (16, 36 or 81) unless given."""
    cells = []
    for pos, ch in enumerate(text):
        if ch in " \t\r\n|-+_,":
            continue
        if ch == ".":
            cells.append(0)
        elif ch.isdigit():
            cells.append(int(ch))
        else:
            raise ValueError(f"bad character {ch!r} at position {pos}: use digits, '.' or '0' for blanks")
    sizes = [size] if size else sorted(BOX_SHAPES)
    n = len(cells)
    match = [s for s in sizes if s * s == n]
    if not match:
        expected = " or ".join(str(s * s) for s in sizes)
        raise ValueError(f"found {n} cells, expected {expected}")
    size = match[0]
    grid = np.array(cells, dtype=np.int64).reshape(size, size)
    if grid.max() > size:
        r, c = np.argwhere(grid > size)[0]
        raise ValueError(f"digit {grid[r, c]} at row {r + 1}, column {c + 1} is larger than {size}")
    br, bc = box_shape(size)
    for kind, units in (("row", [grid[r] for r in range(size)]), ("column", [grid[:, c] for c in range(size)]),
                        ("box", [grid[r:r + br, c:c + bc].ravel() for r in range(0, size, br) for c in range(0, size, bc)])):
        for index, unit in enumerate(units):
            digits = unit[unit > 0]
            if len(set(digits.tolist())) != len(digits):
                repeated = [d for d in set(digits.tolist()) if (digits == d).sum() > 1][0]
                raise ValueError(f"digit {repeated} is repeated in {kind} {index + 1}")
    return grid


def format_grid(grid: np.ndarray) -> str:
    """A grid with box separators, '.' for blanks."""
    grid = np.asarray(grid)
    size = grid.shape[0]
    br, bc = box_shape(size)
    width = len(str(size))
    lines = []
    for r in range(size):
        if r and r % br == 0:
            lines.append("+".join(["-" * ((width + 1) * bc + 1)] * (size // bc))[:-1])
        cells = [str(v).rjust(width) if v else ".".rjust(width) for v in grid[r]]
        lines.append((" " + " | ".join(" ".join(cells[c:c + bc]) for c in range(0, size, bc))).rstrip())
    return "\n".join(lines)


def grid_to_text(grid: np.ndarray) -> str:
    """One-line form, '.' for blanks."""
    return "".join(str(v) if v else "." for v in np.asarray(grid).ravel())


# ---------------------------------------------------------------------------------------------- datasets


def generate_sudoku_dataset(out_dir: str, size: int, num_train: int, num_test: int, min_blanks: int,
                            max_blanks: int | None = None, aug_per_puzzle: int = 0, test_class_fraction: float = 0.2,
                            seed: int = 0, progress: bool = True, hard_iterations: int = 0, threads: int = 1,
                            overwrite: bool = False) -> dict:
    """Builds train/test splits of generated puzzles with unique solutions in the on-disk format.

    4x4 and 6x6: solution grids are sorted into equivalence classes under the symmetry group (`canonical_form`;
    there are 2 and 49 classes); a seeded fraction of the classes is held out for the test split, so no test
    solution grid is equivalent to any training grid. 9x9 (5.5e9 classes): minimal unique puzzles from the native
    generator (`hard_iterations` > 0 searches toward many guesses; pure-Python generation where the engine is not
    built), and any test grid equivalent to a training grid is replaced. Each training puzzle forms a group with its
    `aug_per_puzzle` augmentations (which stay in its class). `overwrite`: see `check_output_dir`. Returns a
    summary dict (also written as build.json)."""
    from tqdm.auto import tqdm

    from trm_fast.data.format import check_output_dir

    check_output_dir(out_dir, overwrite)  # before the generation, which can take minutes
    box_shape(size)
    max_blanks = max_blanks if max_blanks is not None else min_blanks
    if not 0 <= min_blanks <= max_blanks < size * size:
        raise ValueError(f"blanks range [{min_blanks}, {max_blanks}] is invalid for {size}x{size} grids")
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need at least one training puzzle and a non-negative test count, got {num_train}, {num_test}")
    rng = np.random.default_rng(seed)
    if size == 9:
        return _generate_9x9(out_dir, num_train, num_test, min_blanks, max_blanks, aug_per_puzzle, rng, seed, progress,
                             hard_iterations, threads, overwrite)
    # Which classes go to test: discover classes from a pool of random grids, hold out a seeded fraction.
    pool = {}
    for _ in range(400):
        grid = random_solution(size, rng)
        pool.setdefault(canonical_form(grid), grid)
    classes = sorted(pool)
    held_out = set(rng.choice(len(classes), max(1, round(test_class_fraction * len(classes))), replace=False).tolist())
    test_classes = {classes[i] for i in held_out}

    train, test = [], []
    bar = tqdm(total=num_train + num_test, desc=f"generate {size}x{size} sudoku", disable=not progress, leave=False)
    attempts, failures = 0, 0
    while len(train) < num_train or len(test) < num_test:
        attempts += 1
        if attempts > 50 * (num_train + num_test) + 1000 and failures > attempts // 2:
            raise ValueError(f"could not make {size}x{size} puzzles with at least {min_blanks} blanks and a unique "
                             f"solution ({failures} of {attempts} tries failed): lower --min-blanks")
        solution = random_solution(size, rng)
        is_test = canonical_form(solution) in test_classes
        target = test if is_test else train
        if len(target) >= (num_test if is_test else num_train):
            continue
        puzzle = make_puzzle(solution, rng, min_blanks, max_blanks)
        if puzzle is None:
            failures += 1
            continue
        target.append((puzzle, solution))
        bar.update(1)
    bar.close()

    summary = _blank_summary({"size": size, "classes_seen": len(classes), "test_classes": len(test_classes)},
                             train + test)
    return write_sudoku_dataset(out_dir, train, test, aug_per_puzzle, rng, progress=False, summary=summary,
                                overwrite=overwrite)


def _blank_summary(summary: dict, pairs: list) -> dict:
    blanks = [int((p == 0).sum()) for p, _ in pairs]
    summary["mean_blanks"] = float(np.mean(blanks))
    summary["min_blanks"] = int(min(blanks))
    return summary


def _generate_9x9(out_dir, num_train, num_test, min_blanks, max_blanks, aug, rng, seed, progress, hard_iterations,
                  threads, overwrite) -> dict:
    from tqdm.auto import tqdm

    native = _native()
    if native is None:
        _fallback_warning("generating 9x9 puzzles")

    def make(count: int, stream: int) -> list:
        pairs = []
        bar = tqdm(total=count, desc="generate 9x9 sudoku", disable=not progress, leave=False)
        while len(pairs) < count:
            want = count - len(pairs)
            if native is not None:
                made = generate_hard_sudoku(want, seed=seed * 1000003 + stream, iterations=hard_iterations,
                                            threads=threads)
                stream += 1
                batch = list(zip(made["puzzles"], made["solutions"]))
            else:
                solution = random_solution(9, rng)
                puzzle = make_puzzle(solution, rng, min_blanks, max_blanks if max_blanks > min_blanks else 64)
                batch = [] if puzzle is None else [(puzzle, solution)]
            kept = [(p, s) for p, s in batch if (p == 0).sum() >= min_blanks]
            pairs += kept
            bar.update(len(kept))
            if native is not None and not kept:
                raise ValueError(f"generated 9x9 puzzles have fewer than {min_blanks} blanks: lower --min-blanks "
                                 "(minimal puzzles have about 56-60)")
        bar.close()
        return pairs[:count]

    train = make(num_train, 0)
    train_keys = set(canonical_forms(np.stack([s for _, s in train]), threads))
    test, replaced = [], 0
    while len(test) < num_test:
        batch = make(num_test - len(test), 10_000 + replaced + len(test))
        keys = canonical_forms(np.stack([s for _, s in batch]), threads)
        fresh = [pair for pair, key in zip(batch, keys) if key not in train_keys]
        replaced += len(batch) - len(fresh)
        test += fresh
    summary = {"size": 9, "test_grids_replaced_as_equivalent_to_training": replaced}
    if native is not None and train:
        summary["train_guesses_mean"] = float(solve_and_rate(np.stack([p for p, _ in train]), threads=threads)["guesses"].mean())
    return write_sudoku_dataset(out_dir, train, test, aug, rng, progress=False,
                                summary=_blank_summary(summary, train + test), overwrite=overwrite)


def write_sudoku_dataset(out_dir: str, train: list, test: list, aug: int, rng: np.random.Generator,
                         progress: bool = True, summary: dict | None = None, overwrite: bool = False,
                         inputs=()) -> dict:
    """Writes (puzzle, solution) pairs in the on-disk format: each training puzzle forms a group with its `aug`
    augmentations; test puzzles are kept as they are. Atomic: nothing is left behind on failure; what `out_dir` may
    already hold: `check_output_dir` (`overwrite`, `inputs`). Returns `summary` with the example counts, also
    written as build.json."""
    from tqdm.auto import tqdm

    from trm_fast.data.augment import augment_sudoku_pair
    from trm_fast.data.format import DatasetMetadata, PuzzleSet, atomic_output_dir, write_split

    summary = dict(summary or {})
    with atomic_output_dir(out_dir, overwrite, inputs) as tmp:
        for split, pairs, augs in (("train", train, aug), ("test", test, 0)):
            if not len(pairs):
                raise ValueError(f"no {split} puzzles to write")
            if augs == 0:  # vectorised: millions of rows
                puzzles = np.stack([p for p, _ in pairs]) if not hasattr(pairs, "puzzles") else pairs.puzzles
                solutions = np.stack([s for _, s in pairs]) if not hasattr(pairs, "solutions") else pairs.solutions
                inputs = _tokens(puzzles.reshape(len(puzzles), -1))
                labels = _tokens(solutions.reshape(len(solutions), -1))
                groups = np.arange(len(inputs) + 1)
            else:
                inputs, labels, groups = [], [], [0]
                for puzzle, solution in tqdm(pairs, desc=f"{split} (aug {augs})", leave=False, disable=not progress):
                    variants = [(puzzle, solution)] + [augment_sudoku_pair(puzzle, solution, rng) for _ in range(augs)]
                    for p, s in variants:
                        inputs.append(_tokens(p.ravel()))
                        labels.append(_tokens(s.ravel()))
                    groups.append(groups[-1] + len(variants))
                inputs, labels = np.stack(inputs), np.stack(labels)
            n = len(inputs)
            size = int(round(len(inputs[0]) ** 0.5))
            puzzle_set = PuzzleSet(inputs, labels,
                                   np.zeros(n, dtype=np.int32), np.arange(n + 1, dtype=np.int32),
                                   np.array(groups, dtype=np.int32))
            meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=size + 2,
                                   seq_len=size * size, num_puzzle_identifiers=1, total_groups=len(groups) - 1,
                                   mean_puzzle_examples=1.0, total_puzzles=n, sets=["all"])
            write_split(os.path.join(tmp, split), meta, {"all": puzzle_set})
            summary[f"{split}_examples"] = n
        for name, data in (("identifiers.json", ["<blank>"]), ("build.json", summary)):  # ids: as published, 0 only
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(data, f, indent=2 if name == "build.json" else None)
    return summary


# ---------------------------------------------------------------------------------------------- native engine


def _native():
    try:
        from trm_fast import _sudoku

        return _sudoku
    except ImportError:
        return None


_WARNED = False


def _fallback_warning(what: str) -> None:
    global _WARNED
    if not _WARNED:
        import warnings

        warnings.warn(f"trm_fast._sudoku (the native engine) is not built: {what} with the pure-Python transcription "
                      "(same results, about 100x slower). Install a C++ compiler and reinstall trm_fast to build it.")
        _WARNED = True


def solve_and_rate(puzzles: np.ndarray, limit: int = 2, threads: int = 1) -> dict:
    """For 9x9 puzzles (N, 81) or (N, 9, 9) with 0 for blanks: the first solution (zeros if none), the number of
    solutions counted up to `limit` (2 answers uniqueness), and the rating: guesses made until the first solution
    (tdoku-style binary decisions, see _Rater; -1 when unsolvable). Native engine with threads; otherwise the
    pure-Python transcription (one warning)."""
    puzzles = np.asarray(puzzles)
    if puzzles.size % 81 or not np.issubdtype(puzzles.dtype, np.integer):
        raise ValueError(f"puzzles must be integer 9x9 grids, (N, 81) or (N, 9, 9); got shape {puzzles.shape} "
                         f"dtype {puzzles.dtype}")
    puzzles = puzzles.reshape(-1, 81)
    if puzzles.size and (puzzles.min() < 0 or puzzles.max() > 9):
        raise ValueError("puzzles must hold digits 0-9 (0 = blank)")
    native = _native()
    if native is not None:
        solutions, counts, guesses = native.solve_batch(puzzles.astype(np.uint8), limit, threads)
        return {"solutions": solutions.astype(np.int64), "counts": counts, "guesses": guesses}
    _fallback_warning("solving and rating")
    solutions = np.zeros(puzzles.shape, dtype=np.int64)
    counts = np.zeros(len(puzzles), dtype=np.int32)
    guesses = np.full(len(puzzles), -1, dtype=np.int64)
    for i, p in enumerate(puzzles):
        counts[i], guesses[i], first = rate(p.reshape(9, 9), limit)
        if first is not None:
            solutions[i] = first.ravel()
    return {"solutions": solutions, "counts": counts, "guesses": guesses}


def canonical_forms(solutions: np.ndarray, threads: int = 1) -> list[bytes]:
    """canonical_form of many solved grids (N, size, size); natively for 9x9 where the engine is built."""
    solutions = np.asarray(solutions)
    if solutions.ndim != 3 or solutions.shape[1] != solutions.shape[2]:
        raise ValueError(f"canonical_forms takes solved grids of shape (N, size, size), got {solutions.shape}")
    native = _native()
    if solutions.shape[1] == 9 and native is not None and len(solutions):
        return [bytes(row) for row in native.canonical_batch(solutions.reshape(-1, 81).astype(np.uint8), threads)]
    return [canonical_form(g) for g in solutions]


def generate_hard_sudoku(count: int, seed: int = 0, iterations: int = 3000, threads: int = 1,
                         target_guesses=None, temperature: float = 0.0) -> dict:
    """9x9 puzzles with unique solutions searched toward many guesses (csrc/sudoku.cpp make_hard): a random solved
    grid and a minimal unique puzzle, then `iterations` moves (one clue to another cell of the solution, half the
    time one clue fewer), kept when the puzzle stays unique and its guess count does not drop (or, with
    temperature T > 0, drops by k with probability exp(-k/T)); the hardest puzzle seen is returned, minimised.
    `target_guesses` (an int, or one per puzzle, e.g. drawn from a wanted distribution) stops a puzzle's search
    once it is reached. Native engine required."""
    native = _native()
    if native is None:
        raise ValueError("generating hard 9x9 puzzles needs the native engine (trm_fast._sudoku): install a C++ "
                         "compiler and reinstall trm_fast")
    if target_guesses is None:
        targets = np.zeros(0, dtype=np.int64)
    else:
        targets = np.broadcast_to(np.asarray(target_guesses, dtype=np.int64), (count,)).copy()
    puzzles, solutions, guesses = native.generate_hard(count, seed, iterations, threads, targets, temperature)
    return {"puzzles": puzzles.reshape(-1, 9, 9).astype(np.int64), "solutions": solutions.reshape(-1, 9, 9).astype(np.int64),
            "guesses": guesses}
