"""The augmentations of every puzzle kind (trm_fast/data/augment.py): the dihedral transforms are numpy's rotations
(then a transpose for k >= 4), every inverse restores its augmentation (Sudoku symmetries, maze and ARC dihedral
transforms with colour permutations), a Sudoku pair shares one symmetry, and bad ARC puzzle names are refused.
(ARC's canvas round trip is in test_arc.py, the validity of augmented Sudoku and mazes in test_sudoku*.py and
test_maze.py.)"""
import numpy as np
import pytest

from trm_fast.data.augment import (arc_aug_name, augment_arc, augment_maze, augment_sudoku, augment_sudoku_pair,
                                   dihedral, inverse_dihedral, parse_arc_aug_name, random_sudoku_symmetry, restore_arc,
                                   restore_maze, restore_sudoku)
from trm_fast.data.sudoku import is_valid_solution, random_solution


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 5)])
def test_dihedral_is_rotation_then_transpose_and_inverts(shape):
    grid = np.arange(np.prod(shape)).reshape(shape)
    outputs = set()
    for k in range(8):
        rotated = np.rot90(grid, k % 4)
        want = rotated.T if k >= 4 else rotated
        out = dihedral(grid, k)
        assert np.array_equal(out, want) and out.flags.c_contiguous
        assert np.array_equal(inverse_dihedral(out, k), grid)
        outputs.add(out.tobytes() + bytes(out.shape))
    assert len(outputs) == (1 if shape == (1, 1) else 8)


def test_maze_augmentation_is_the_dihedral_transform_of_the_flat_grid_and_restores():
    n = 6
    tokens = np.random.default_rng(0).integers(1, 6, n * n).astype(np.uint8)
    for k in range(8):
        out = augment_maze(tokens, k, n)
        assert out.shape == (n * n,) and out.dtype == tokens.dtype
        assert np.array_equal(out, dihedral(tokens.reshape(n, n), k).ravel())
        assert np.array_equal(restore_maze(out, k, n), tokens)


@pytest.mark.parametrize("size", [4, 6, 9])
def test_sudoku_symmetry_restores_and_a_pair_shares_one(size):
    rng = np.random.default_rng(size)
    solution = random_solution(size, rng)
    puzzle = solution.copy()
    puzzle[rng.random(puzzle.shape) < 0.5] = 0
    transposed = set()
    for _ in range(20):
        symmetry = random_sudoku_symmetry(size, rng)
        transposed.add(symmetry.transpose)
        p, s = augment_sudoku(puzzle, symmetry), augment_sudoku(solution, symmetry)
        assert is_valid_solution(p, s)
        assert np.array_equal(restore_sudoku(p, symmetry), puzzle) and np.array_equal(restore_sudoku(s, symmetry), solution)
    # transposition only where boxes are square (a transposed 6x6 grid would have 3x2 boxes)
    assert transposed == ({False} if size == 6 else {False, True})
    draw = np.random.default_rng(7)
    p, s = augment_sudoku_pair(puzzle, solution, draw)
    symmetry = random_sudoku_symmetry(size, np.random.default_rng(7))
    assert np.array_equal(p, augment_sudoku(puzzle, symmetry)) and np.array_equal(s, augment_sudoku(solution, symmetry))


def test_arc_augmentation_restores_and_its_name_round_trips():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 10, (4, 6))
    for k in range(8):
        perm = np.concatenate([[0], rng.permutation(9) + 1])
        aug = augment_arc(grid, k, perm)
        assert np.array_equal(aug == 0, dihedral(grid, k) == 0)  # colour 0 stays 0
        assert np.array_equal(restore_arc(aug, k, perm), grid)
        task, k_back, perm_back = parse_arc_aug_name(arc_aug_name("007bbfb7", k, perm))
        assert task == "007bbfb7" and k_back == k and np.array_equal(perm_back, perm)


@pytest.mark.parametrize("name", ["t|8|0123456789", "t|0|1023456789", "t|0|012345678", "t|x|0123456789", "t0123456789"])
def test_bad_arc_puzzle_names_are_refused(name):
    with pytest.raises(ValueError, match="bad augmented puzzle name"):
        parse_arc_aug_name(name)
