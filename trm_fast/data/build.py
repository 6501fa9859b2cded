"""`trm-fast data build {sudoku,maze,arc1,arc2} ...`: datasets in the published on-disk format.

    trm-fast data build sudoku --source train.csv --test-source test.csv --out data/sudoku-extreme-1k-aug-1000 \
        --subsample 1000 --aug 1000
    trm-fast data build sudoku --out data/sudoku-extreme-full          # downloads the CSVs (huggingface_hub)
    trm-fast data build sudoku --generate 3000 --size 6 --out data/sudoku6 --aug 7

The published CSV has the header `source,q,a,rating` with '.' for blanks (81 characters per grid). Training
puzzles get up to --aug augmentations each (a group per puzzle); test puzzles are kept as they are. A malformed
row stops the build with the file and line named, or with --skip-bad is skipped and counted in the summary.
The dataset is written to a temporary folder and renamed when complete.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
from tqdm.auto import tqdm

HUB_REPO = "sapientinc/sudoku-extreme"


def _download(filename: str) -> str:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ValueError("no --source given and huggingface_hub is not installed: pip install huggingface_hub, "
                         "or pass --source path/to/train.csv") from None
    try:
        return hf_hub_download(HUB_REPO, filename, repo_type="dataset")
    except Exception as exc:  # offline, or the hub refused
        raise ValueError(f"could not download {filename} from the {HUB_REPO} dataset ({type(exc).__name__}); "
                         "offline? pass --source path/to/the.csv") from None


def read_sudoku_csv(path: str, skip_bad: bool = False, check_solution: bool = True) -> tuple[list, dict]:
    """(list of (puzzle, solution) 9x9 int grids, counts) from a published-format CSV."""
    from trm_fast.data.sudoku import count_solutions, is_valid_solution

    rows, counts = [], {"read": 0, "skipped": 0}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["source", "q", "a"]:
            raise ValueError(f"{path}:1: expected the header 'source,q,a,rating', got {header!r}")
        for line_no, row in enumerate(tqdm(reader, desc=os.path.basename(path), leave=False), start=2):
            try:
                if len(row) < 3:
                    raise ValueError(f"expected at least 3 fields, got {len(row)}")
                grids = []
                for name, text in (("q", row[1]), ("a", row[2])):
                    if len(text) != 81:
                        raise ValueError(f"field {name} has {len(text)} characters, expected 81")
                    bad = [c for c in text if c not in ".0123456789"]
                    if bad:
                        raise ValueError(f"field {name} has a bad character {bad[0]!r}")
                    grids.append(np.array([0 if c in ".0" else int(c) for c in text], dtype=np.int64).reshape(9, 9))
                puzzle, solution = grids
                if check_solution and not is_valid_solution(puzzle, solution):
                    raise ValueError("field a is not a valid solution of field q")
                if check_solution and count_solutions(puzzle, 2) != 1:
                    raise ValueError("the puzzle has no unique solution")
            except ValueError as exc:
                if not skip_bad:
                    raise ValueError(f"{path}:{line_no}: {exc}") from None
                counts["skipped"] += 1
                continue
            rows.append((puzzle, solution))
            counts["read"] += 1
    return rows, counts


def build_sudoku(args) -> dict:
    from trm_fast.data.sudoku import generate_sudoku_dataset, write_sudoku_dataset

    if args.generate:
        return generate_sudoku_dataset(args.out, size=args.size, num_train=args.generate, num_test=args.num_test,
                                       min_blanks=args.min_blanks, max_blanks=args.max_blanks or None,
                                       aug_per_puzzle=args.aug, seed=args.seed)
    if args.size != 9:
        raise ValueError("--size applies to --generate; the published CSVs are 9x9")
    if not 0 <= args.aug <= 1000:
        raise ValueError(f"--aug {args.aug}: between 0 and 1000 augmentations per puzzle")
    train_path = args.source or _download("train.csv")
    test_path = args.test_source or (os.path.join(os.path.dirname(train_path), "test.csv") if args.source else _download("test.csv"))
    if not os.path.isfile(train_path):
        raise ValueError(f"--source {train_path!r}: no such file")
    if not os.path.isfile(test_path):
        raise ValueError(f"test CSV {test_path!r}: no such file (give --test-source)")
    train, train_counts = read_sudoku_csv(train_path, args.skip_bad, check_solution=not args.no_check)
    test, test_counts = read_sudoku_csv(test_path, args.skip_bad, check_solution=not args.no_check)
    if args.subsample:
        rng = np.random.default_rng(args.seed)
        if args.subsample > len(train):
            raise ValueError(f"--subsample {args.subsample} exceeds the {len(train)} training puzzles")
        train = [train[i] for i in sorted(rng.choice(len(train), args.subsample, replace=False))]
    summary = write_sudoku_dataset(args.out, train, test, args.aug, np.random.default_rng(args.seed))
    summary.update(skipped_bad_rows=train_counts["skipped"] + test_counts["skipped"])
    return summary


def add_data_subparser(sub) -> None:
    p = sub.add_parser("data", help="build datasets in the published on-disk format")
    kinds = p.add_subparsers(dest="data_command", required=True)
    b = kinds.add_parser("build", help="build a dataset")
    b.add_argument("dataset", choices=["sudoku", "maze", "arc1", "arc2"])
    b.add_argument("--source", help="input file (CSV for sudoku/maze) or folder (ARC JSON)")
    b.add_argument("--test-source", help="sudoku: the test CSV (default: test.csv beside --source)")
    b.add_argument("--concept", help="arc: folder with ConceptARC's arc-agi_concept_{challenges,solutions}.json")
    b.add_argument("--count", type=int, default=1000, help="maze: mazes to generate per split (no --source)")
    b.add_argument("--min-path", type=int, default=110, help="maze: keep mazes whose shortest path has more moves")
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--subsample", type=int, default=0, help="keep N training puzzles")
    b.add_argument("--aug", type=int, default=0, help="augmentations per training puzzle (up to 1000)")
    b.add_argument("--skip-bad", action="store_true", help="skip malformed rows (counted) instead of stopping")
    b.add_argument("--no-check", action="store_true", help="sudoku: skip the solution/uniqueness check of CSV rows")
    b.add_argument("--generate", type=int, default=0, help="sudoku: generate N training puzzles offline instead")
    b.add_argument("--size", type=int, default=9, choices=[4, 6, 9])
    b.add_argument("--num-test", type=int, default=300)
    b.add_argument("--min-blanks", type=int, default=16)
    b.add_argument("--max-blanks", type=int, default=0)
    p.set_defaults(func=run_data_command)


def run_data_command(args) -> int:
    if args.dataset == "sudoku":
        summary = build_sudoku(args)
    elif args.dataset == "maze":
        from trm_fast.data.maze import build_maze

        summary = build_maze(args)
    else:
        from trm_fast.data.arc import build_arc

        summary = build_arc(args, args.dataset)
    print(f"built {args.out}: {json.dumps(summary)}")
    return 0
