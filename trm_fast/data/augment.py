"""The augmentations of every puzzle kind and their inverses: the builders apply them, evaluation (voting over
augmented versions) maps predictions back with the inverses.

- Sudoku: a symmetry of the grid (transpose for square boxes, band/row/stack/column permutations, a relabelling
  of the digits), drawn by `random_sudoku_symmetry`; `augment_sudoku` / `restore_sudoku`.
- Maze: one of the 8 dihedral transforms of the n x n token grid; `augment_maze` / `restore_maze`.
- ARC: a dihedral transform, then a permutation of colours 1-9 (0 fixed); `augment_arc` / `restore_arc`, and the
  puzzle name that records them, `<task_id>|<dihedral 0-7>|<colour permutation as 10 digits>` (`arc_aug_name`).
- Sudoku and maze symmetries on flattened token rows (`TokenSymmetry`): test-time voting over symmetric versions
  (trm_fast/eval/test_time.py) maps the rows it feeds the model and the answers it gets back.

The dihedral transform k is a rotation by k*90 degrees, followed by a transpose for k >= 4.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trm_fast.data.sudoku import box_shape

# ---------------------------------------------------------------------------------------------- dihedral


def _rot90(grid: np.ndarray, k: int) -> np.ndarray:
    """np.rot90(grid, k) for 2-D grids as plain slicing views (np.rot90's generic path dominates a 1000x build)."""
    k %= 4
    if k == 1:
        return grid[:, ::-1].T
    if k == 2:
        return grid[::-1, ::-1]
    if k == 3:
        return grid.T[:, ::-1]
    return grid


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 dihedral transforms of a 2-D grid."""
    out = _rot90(np.asarray(grid), k)
    return np.ascontiguousarray(out.T if k >= 4 else out)


def inverse_dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    grid = np.asarray(grid)
    if k >= 4:
        grid = grid.T
    return np.ascontiguousarray(_rot90(grid, -k))


# ---------------------------------------------------------------------------------------------- Sudoku


@dataclass(frozen=True)
class SudokuSymmetry:
    """grid -> relabel[(grid.T if transpose else grid)[rows][:, cols]]; relabel[0] = 0 keeps blanks blank."""
    transpose: bool
    rows: np.ndarray
    cols: np.ndarray
    relabel: np.ndarray


def _line_permutations(n_groups: int, group: int, rng: np.random.Generator) -> np.ndarray:
    """Permute groups (bands or stacks) and lines within each group."""
    order = rng.permutation(n_groups)
    return np.concatenate([g * group + rng.permutation(group) for g in order])


def random_sudoku_symmetry(size: int, rng: np.random.Generator) -> SudokuSymmetry:
    """Transpose with probability 0.5 (square boxes only), permutations of bands, rows within bands, stacks,
    columns within stacks, and a relabelling of the digits 1..size."""
    br, bc = box_shape(size)
    transpose = bool(br == bc and rng.random() < 0.5)
    rows = _line_permutations(size // br, br, rng)
    cols = _line_permutations(size // bc, bc, rng)
    relabel = np.concatenate([[0], rng.permutation(size) + 1])
    return SudokuSymmetry(transpose, rows, cols, relabel)


def augment_sudoku(grid: np.ndarray, symmetry: SudokuSymmetry) -> np.ndarray:
    grid = grid.T if symmetry.transpose else grid
    return symmetry.relabel[grid[symmetry.rows][:, symmetry.cols]]


def restore_sudoku(grid: np.ndarray, symmetry: SudokuSymmetry) -> np.ndarray:
    """The inverse of augment_sudoku: inverse relabelling, then the inverse line permutations and transpose."""
    grid = np.argsort(symmetry.relabel)[grid][np.argsort(symmetry.rows)][:, np.argsort(symmetry.cols)]
    return grid.T if symmetry.transpose else grid


def augment_sudoku_pair(puzzle: np.ndarray, solution: np.ndarray,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random symmetry applied to puzzle and solution alike."""
    symmetry = random_sudoku_symmetry(puzzle.shape[0], rng)
    return augment_sudoku(puzzle, symmetry), augment_sudoku(solution, symmetry)


# ---------------------------------------------------------------------------------------------- Maze


def augment_maze(tokens: np.ndarray, k: int, n: int) -> np.ndarray:
    """The dihedral transform k of a maze's n*n tokens (flattened row-major, in and out)."""
    return dihedral(np.asarray(tokens).reshape(n, n), k).ravel()


def restore_maze(tokens: np.ndarray, k: int, n: int) -> np.ndarray:
    return inverse_dihedral(np.asarray(tokens).reshape(n, n), k).ravel()


# ---------------------------------------------------------------------------------------------- token level


@dataclass(frozen=True)
class TokenSymmetry:
    """A symmetry of a puzzle kind on flattened token rows, for voting at test time: `apply` moves cell
    positions[i] to cell i and maps every token through `tokens`; `restore` undoes it. Works on any leading shape."""
    positions: np.ndarray  # (L,) source cell of each output cell
    tokens: np.ndarray  # (vocab,) token map, a permutation

    def apply(self, rows: np.ndarray) -> np.ndarray:
        return self.tokens[np.asarray(rows)[..., self.positions]]

    def restore(self, rows: np.ndarray) -> np.ndarray:
        return np.argsort(self.tokens)[np.asarray(rows)][..., np.argsort(self.positions)]


def sudoku_token_symmetry(symmetry: SudokuSymmetry, vocab_size: int) -> TokenSymmetry:
    """A SudokuSymmetry on token rows (pad 0 and blank 1 fixed, digit d is token d + 1): the same map as
    augment_sudoku on the digit grid."""
    size = len(symmetry.rows)
    positions = augment_sudoku(np.arange(size * size).reshape(size, size), SudokuSymmetry(
        symmetry.transpose, symmetry.rows, symmetry.cols, np.arange(size * size))).ravel()
    tokens = np.arange(vocab_size)
    tokens[2:size + 2] = symmetry.relabel[1:] + 1
    return TokenSymmetry(positions, tokens)


def maze_token_symmetry(k: int, n: int, vocab_size: int) -> TokenSymmetry:
    """The dihedral transform k of an n x n maze on token rows (augment_maze / restore_maze)."""
    return TokenSymmetry(augment_maze(np.arange(n * n), k, n), np.arange(vocab_size))


# ---------------------------------------------------------------------------------------------- ARC


def augment_arc(grid: np.ndarray, k: int, perm: np.ndarray) -> np.ndarray:
    """Colour permutation (perm[c] is the new colour of c) after the dihedral transform."""
    return perm[dihedral(np.asarray(grid), k)]


def restore_arc(grid: np.ndarray, k: int, perm: np.ndarray) -> np.ndarray:
    """The inverse of augment_arc: inverse colour map, then the inverse transform."""
    inverse = np.argsort(perm)
    return inverse_dihedral(inverse[np.asarray(grid)], k)


def arc_aug_name(task_id: str, k: int, perm: np.ndarray) -> str:
    return f"{task_id}|{k}|{''.join(str(int(c)) for c in perm)}"


def parse_arc_aug_name(name: str) -> tuple[str, int, np.ndarray]:
    """(task id, dihedral k, colour permutation) of an augmented ARC puzzle name."""
    try:
        task, k, perm = name.rsplit("|", 2)
        perm_arr = np.array([int(c) for c in perm])
        if sorted(perm_arr.tolist()) != list(range(10)) or perm_arr[0] != 0 or not 0 <= int(k) < 8:
            raise ValueError
        return task, int(k), perm_arr
    except ValueError:
        raise ValueError(f"bad augmented puzzle name {name!r}: expected '<task>|<0-7>|<permutation of 0-9 fixing 0>'") from None
