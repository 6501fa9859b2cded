"""Embedded datasets: generated on first use into data_cache/<name> (or a given folder) and reused after.

    python -m trm_fast.data.recipes held-out-puzzle sudoku6-demo    # prints a test puzzle of the recipe
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from trm_fast.files import atomic_write_json

# name -> arguments of trm_fast.data.sudoku.generate_sudoku_dataset
RECIPES = {
    "sudoku4-tiny": dict(size=4, num_train=96, num_test=32, min_blanks=6, max_blanks=8, aug_per_puzzle=3, seed=0),
    "sudoku6-demo": dict(size=6, num_train=3000, num_test=300, min_blanks=16, max_blanks=22, aug_per_puzzle=7, seed=0),
    # 9x9 puzzles with unique solutions from the native engine, searched toward more guesses (200 moves each), and
    # test grids inequivalent to every training grid: the offline stand-in for Sudoku-Extreme in GPU checks
    "sudoku9-small": dict(size=9, num_train=1000, num_test=1000, min_blanks=45, max_blanks=64, aug_per_puzzle=100,
                          seed=0, hard_iterations=200),
}

CACHE_ROOT = os.environ.get("TRM_FAST_DATA_CACHE", "data_cache")


def recipe_dir(name: str, out_dir: str | None = None) -> str:
    return out_dir or os.path.join(CACHE_ROOT, name)


def ensure_recipe(name: str, out_dir: str | None = None, log=print) -> str:
    """The folder of the recipe's dataset, generating it if it is not there yet."""
    if name not in RECIPES:
        raise ValueError(f"config field data.recipe = {name!r} is not an embedded dataset; known: {', '.join(sorted(RECIPES))}")
    path = recipe_dir(name, out_dir)
    stamp = os.path.join(path, "recipe.json")
    spec = RECIPES[name]
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f).get("spec") == spec:
                return path
    from trm_fast.data.format import check_output_dir
    from trm_fast.data.sudoku import generate_sudoku_dataset

    # a dataset this tool wrote there (an older recipe, or a build cut short before its stamp) is replaced; any
    # other non-empty folder is refused, before the generation
    check_output_dir(path, overwrite=True, flag=f"embedded dataset {name!r} at")
    log(f"building embedded dataset {name!r} into {path} ...")
    # every core: the generators draw from one random stream per puzzle, so the dataset is the same for any count
    summary = generate_sudoku_dataset(path, **spec, threads=os.cpu_count() or 1, overwrite=True)
    atomic_write_json(stamp, {"name": name, "spec": spec, "summary": summary})
    log(f"built {name!r}: {summary}")
    return path


def held_out_puzzle(name: str, index: int = 0) -> str:
    """The index-th test puzzle of a recipe, as one line ('.' for blanks)."""
    from trm_fast.data.format import read_split
    from trm_fast.data.sudoku import grid_to_text, tokens_to_grid

    _, sets = read_split(os.path.join(ensure_recipe(name, log=lambda *a: None), "test"))
    tokens = np.asarray(sets["all"].inputs[index])
    size = int(round(len(tokens) ** 0.5))
    return grid_to_text(tokens_to_grid(tokens, size))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "held-out-puzzle":
        print(held_out_puzzle(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
    elif len(sys.argv) >= 3 and sys.argv[1] == "build":
        print(ensure_recipe(sys.argv[2]))
    else:
        print("usage: python -m trm_fast.data.recipes {held-out-puzzle NAME [INDEX] | build NAME}", file=sys.stderr)
        sys.exit(2)
