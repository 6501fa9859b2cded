"""Sudoku of size 4x4 (2x2 boxes), 6x6 (boxes of 2 rows x 3 columns) and 9x9 (3x3): an exact solver that counts
solutions (uniqueness), generators of puzzles with unique solutions, the TRM_SPEC augmentations, canonical forms
under the symmetry group (to keep train and test grids inequivalent), parsing and printing.

Grids are (size, size) int arrays with 0 for a blank. Tokens (TRM_SPEC section 5): pad 0, blank 1, digit d -> d+1.
"""
from __future__ import annotations

import itertools
import math
import os

import numpy as np

BOX_SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # (rows, columns) of a box


def box_shape(size: int) -> tuple[int, int]:
    if size not in BOX_SHAPES:
        raise ValueError(f"unsupported Sudoku size {size}: supported sizes are {sorted(BOX_SHAPES)}")
    return BOX_SHAPES[size]


# ---------------------------------------------------------------------------------------------- solver


class _Board:
    """Bitmask candidate tracking for a backtracking search with most-constrained-cell ordering."""

    def __init__(self, grid: np.ndarray):
        self.size = grid.shape[0]
        self.br, self.bc = box_shape(self.size)
        self.full = (1 << self.size) - 1
        self.rows = [0] * self.size
        self.cols = [0] * self.size
        self.boxes = [0] * self.size
        self.cells = [int(v) for v in grid.ravel()]
        self.ok = True
        for i, v in enumerate(self.cells):
            if v:
                r, c = divmod(i, self.size)
                bit = 1 << (v - 1)
                b = self.box(r, c)
                if self.rows[r] & bit or self.cols[c] & bit or self.boxes[b] & bit:
                    self.ok = False
                self.rows[r] |= bit
                self.cols[c] |= bit
                self.boxes[b] |= bit

    def box(self, r: int, c: int) -> int:
        return (r // self.br) * (self.size // self.bc) + c // self.bc

    def count(self, limit: int, solution: list | None) -> int:
        best, best_mask, best_n = -1, 0, self.size + 1
        for i, v in enumerate(self.cells):
            if v == 0:
                r, c = divmod(i, self.size)
                mask = self.full & ~(self.rows[r] | self.cols[c] | self.boxes[self.box(r, c)])
                n = bin(mask).count("1")
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
        r, c = divmod(best, self.size)
        b = self.box(r, c)
        total = 0
        mask = best_mask
        while mask:
            bit = mask & -mask
            mask ^= bit
            self.cells[best] = bit.bit_length()
            self.rows[r] |= bit
            self.cols[c] |= bit
            self.boxes[b] |= bit
            total += self.count(limit - total, solution)
            self.rows[r] ^= bit
            self.cols[c] ^= bit
            self.boxes[b] ^= bit
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
    """A uniformly seeded random solved grid (random digit order at every branch)."""
    br, bc = box_shape(size)
    grid = np.zeros((size, size), dtype=np.int64)

    def fill(i: int) -> bool:
        if i == size * size:
            return True
        r, c = divmod(i, size)
        b0r, b0c = r // br * br, c // bc * bc
        used = set(grid[r]) | set(grid[:, c]) | set(grid[b0r:b0r + br, b0c:b0c + bc].ravel())
        for d in rng.permutation(size) + 1:
            if d not in used:
                grid[r, c] = d
                if fill(i + 1):
                    return True
        grid[r, c] = 0
        return False

    fill(0)
    return grid


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


# ---------------------------------------------------------------------------------------------- symmetries


def _line_permutations(n_groups: int, group: int, rng: np.random.Generator) -> np.ndarray:
    """Permute groups (bands or stacks) and lines within each group."""
    order = rng.permutation(n_groups)
    return np.concatenate([g * group + rng.permutation(group) for g in order])


def augment(puzzle: np.ndarray, solution: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random symmetry applied to puzzle and solution alike: transpose (p 0.5, square boxes only), permutations
    of bands, rows within bands, stacks, columns within stacks, and a relabelling of the digits."""
    size = puzzle.shape[0]
    br, bc = box_shape(size)
    if br == bc and rng.random() < 0.5:
        puzzle, solution = puzzle.T, solution.T
    rows = _line_permutations(size // br, br, rng)
    cols = _line_permutations(size // bc, bc, rng)
    relabel = np.concatenate([[0], rng.permutation(size) + 1])
    return relabel[puzzle[rows][:, cols]], relabel[solution[rows][:, cols]]


def _group_line_orders(n_groups: int, group: int) -> np.ndarray:
    orders = []
    for outer in itertools.permutations(range(n_groups)):
        for inner in itertools.product(*[list(itertools.permutations(range(group)))] * n_groups):
            orders.append([g * group + i for g, perm in zip(outer, inner) for i in perm])
    return np.array(orders)


def canonical_form(solution: np.ndarray) -> bytes:
    """A canonical key of a solved grid under the Sudoku symmetry group: the lexicographically smallest grid over
    all band/row/stack/column permutations (and transposition for square boxes), each relabelled so that its first
    row reads 1..size. Exhaustive: 4x4 (128 arrangements) and 6x6 (3456); 9x9 needs the native engine."""
    solution = np.asarray(solution)
    size = solution.shape[0]
    br, bc = box_shape(size)
    if size == 9:
        raise ValueError("exhaustive canonical forms are for 4x4 and 6x6 grids; 9x9 uses trm_fast.data.sudoku's native engine")
    row_orders = _group_line_orders(size // br, br)
    col_orders = _group_line_orders(size // bc, bc)
    grids = [solution, solution.T] if br == bc else [solution]
    best = None
    for grid in grids:
        permuted = grid[row_orders][:, :, None, :]  # (R, size, 1, size)
        permuted = np.take_along_axis(
            np.broadcast_to(permuted, (len(row_orders), size, len(col_orders), size)),
            np.broadcast_to(col_orders[None, None], (len(row_orders), size, len(col_orders), size)), axis=3,
        ).transpose(0, 2, 1, 3).reshape(-1, size, size)
        # relabel so the first row is 1..size
        inverse = np.zeros((len(permuted), size + 1), dtype=np.int64)
        np.put_along_axis(inverse, permuted[:, 0, :], np.arange(1, size + 1)[None].repeat(len(permuted), 0), axis=1)
        relabelled = np.take_along_axis(inverse, permuted.reshape(len(permuted), -1), axis=1)
        candidate = relabelled[np.lexsort(relabelled.T[::-1])[0]]
        if best is None or tuple(candidate) < tuple(best):
            best = candidate
    return bytes(best.astype(np.uint8))


# ---------------------------------------------------------------------------------------------- text


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
                            seed: int = 0, progress: bool = True) -> dict:
    """Builds train/test splits of generated puzzles with unique solutions in the on-disk format.

    Solution grids are sorted into equivalence classes under the symmetry group (`canonical_form`); a seeded
    fraction of the classes is held out for the test split, so no test solution grid is equivalent to any training
    grid. Each training puzzle forms a group with its `aug_per_puzzle` augmentations (which stay in its class).
    Returns a summary dict."""
    from tqdm.auto import tqdm

    if size not in (4, 6):
        raise ValueError(f"generated datasets with held-out symmetry classes are built here for 4x4 and 6x6, not {size}x{size}")
    max_blanks = max_blanks if max_blanks is not None else min_blanks
    if not 0 <= min_blanks <= max_blanks < size * size:
        raise ValueError(f"blanks range [{min_blanks}, {max_blanks}] is invalid for {size}x{size} grids")
    rng = np.random.default_rng(seed)
    # Which classes go to test: discover classes from a pool of random grids, hold out a seeded fraction.
    pool = {}
    for _ in range(400 if size <= 6 else 0):
        grid = random_solution(size, rng)
        pool.setdefault(canonical_form(grid), grid)
    classes = sorted(pool)
    held_out = set(rng.choice(len(classes), max(1, round(test_class_fraction * len(classes))), replace=False).tolist())
    test_classes = {classes[i] for i in held_out}

    train, test = [], []
    bar = tqdm(total=num_train + num_test, desc=f"generate {size}x{size} sudoku", disable=not progress, leave=False)
    while len(train) < num_train or len(test) < num_test:
        solution = random_solution(size, rng)
        is_test = canonical_form(solution) in test_classes
        target = test if is_test else train
        if len(target) >= (num_test if is_test else num_train):
            continue
        puzzle = make_puzzle(solution, rng, min_blanks, max_blanks)
        if puzzle is None:
            continue
        target.append((puzzle, solution))
        bar.update(1)
    bar.close()

    summary = {"size": size, "classes_seen": len(classes), "test_classes": len(test_classes)}
    summary.update(write_sudoku_dataset(out_dir, train, test, aug_per_puzzle, rng, progress=False))
    blanks = [int((p == 0).sum()) for p, _ in train + test]
    summary["mean_blanks"] = float(np.mean(blanks))
    summary["min_blanks"] = int(min(blanks))
    return summary


def write_sudoku_dataset(out_dir: str, train: list, test: list, aug: int, rng: np.random.Generator,
                         progress: bool = True) -> dict:
    """Writes (puzzle, solution) pairs in the on-disk format: each training puzzle forms a group with its `aug`
    augmentations; test puzzles are kept as they are. Atomic: nothing is left behind on failure."""
    from tqdm.auto import tqdm

    from trm_fast.data.format import DatasetMetadata, PuzzleSet, atomic_output_dir, write_split

    summary = {}
    with atomic_output_dir(out_dir) as tmp:
        for split, pairs, augs in (("train", train, aug), ("test", test, 0)):
            inputs, labels, groups = [], [], [0]
            for puzzle, solution in tqdm(pairs, desc=f"{split} (aug {augs})", leave=False, disable=not progress):
                variants = [(puzzle, solution)] + [augment(puzzle, solution, rng) for _ in range(augs)]
                for p, s in variants:
                    inputs.append(grid_to_tokens(p))
                    labels.append(grid_to_tokens(s))
                groups.append(groups[-1] + len(variants))
            n = len(inputs)
            size = pairs[0][0].shape[0] if pairs else 9
            puzzle_set = PuzzleSet(np.stack(inputs).astype(np.int32), np.stack(labels).astype(np.int32),
                                   np.zeros(n, dtype=np.int32), np.arange(n + 1, dtype=np.int32),
                                   np.array(groups, dtype=np.int32))
            meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=size + 2,
                                   seq_len=size * size, num_puzzle_identifiers=1, total_groups=len(groups) - 1,
                                   mean_puzzle_examples=1.0, total_puzzles=n, sets=["all"])
            write_split(os.path.join(tmp, split), meta, {"all": puzzle_set})
            summary[f"{split}_examples"] = n
    return summary


# ---------------------------------------------------------------------------------------------- native engine


def _native():
    try:
        from trm_fast import _sudoku

        return _sudoku
    except ImportError:
        return None


def solve_and_rate(puzzles: np.ndarray, limit: int = 2, threads: int = 1) -> dict:
    """For 9x9 puzzles (N, 81) or (N, 9, 9) with 0 for blanks: the first solution, the number of solutions (up to
    `limit`) and the guess count to the first solution (branch decisions of a DPLL solver with naked/hidden singles
    and box-line triads; -1 when unsolvable). Native; the pure-Python fallback (with a warning) gives no guess
    counts (-1)."""
    puzzles = np.asarray(puzzles).reshape(-1, 81)
    if puzzles.size and (puzzles.min() < 0 or puzzles.max() > 9):
        raise ValueError("puzzles must hold digits 0-9 (0 = blank)")
    native = _native()
    if native is not None:
        solutions, counts, guesses = native.solve_batch(puzzles.astype(np.uint8), limit, threads)
        return {"solutions": solutions, "counts": counts, "guesses": guesses}
    import warnings

    warnings.warn("trm_fast._sudoku (the native engine) is not built: using the pure-Python solver, "
                  "which is slow and gives no guess counts")
    solutions = np.zeros_like(puzzles)
    counts = np.zeros(len(puzzles), dtype=np.int32)
    for i, p in enumerate(puzzles):
        grid = p.reshape(9, 9)
        counts[i] = count_solutions(grid, limit)
        s = solve(grid) if counts[i] else None
        if s is not None:
            solutions[i] = s.ravel()
    return {"solutions": solutions, "counts": counts, "guesses": np.full(len(puzzles), -1, dtype=np.int64)}


def generate_hard_sudoku(count: int, seed: int = 0, iterations: int = 3000, threads: int = 1) -> dict:
    """9x9 puzzles with unique solutions, hill-climbed toward high guess counts: from a random solved grid and a
    minimal puzzle, repeatedly move one clue to another cell, keep the move when the puzzle stays unique and its
    guess count does not drop, and drop the clues uniqueness no longer needs. Native engine required."""
    native = _native()
    if native is None:
        raise ValueError("generating hard 9x9 puzzles needs the native engine (trm_fast._sudoku): install a C++ "
                         "compiler and reinstall trm_fast")
    puzzles, solutions, guesses = native.generate_hard(count, seed, iterations, threads)
    return {"puzzles": puzzles.reshape(-1, 9, 9), "solutions": solutions.reshape(-1, 9, 9), "guesses": guesses}
