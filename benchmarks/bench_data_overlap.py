"""Train/test overlap on a stand-in for the published Sudoku-Extreme CSVs (the real ones are not available offline):
`python benchmarks/bench_data_overlap.py [TRAIN_ROWS] [TEST_ROWS]` (default 100000 and 10000).

The stand-in, in the published format (`source,q,a,rating`, '.' for blanks): minimal unique 9x9 puzzles from the
native generator, each giving 20 rows as itself plus 0-3 clues of its solution (still unique) under a random
symmetry; the test rows come from other generated puzzles, plus 100 copies of training rows and 100 training rows
under a random symmetry (so the counts must read 100 exactly and 200 up to symmetry). Measured: the overlap count
alone (fingerprints of both splits, then the exact check of the test puzzles whose fingerprint a training puzzle
shares) and the whole `trm-fast data build sudoku` from the CSVs (read, uniqueness check, overlap, write), wall
seconds. Prints JSON."""
import json
import os
import sys
import tempfile
import time

import numpy as np

from trm_fast.data import sudoku as S
from trm_fast.data.augment import augment_sudoku_pair
from trm_fast.data.build import build_sudoku

VARIANTS_PER_PUZZLE = 20


def variants(made: dict, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    puzzles, solutions = [], []
    for i in rng.integers(0, len(made["puzzles"]), count):
        p, s = made["puzzles"][i].copy(), made["solutions"][i]
        blanks = np.argwhere(p == 0)
        for r, c in blanks[rng.choice(len(blanks), int(rng.integers(0, 4)), replace=False)]:
            p[r, c] = s[r, c]
        p, s = augment_sudoku_pair(p, s, rng)
        puzzles.append(p)
        solutions.append(s)
    return np.stack(puzzles).astype(np.uint8), np.stack(solutions).astype(np.uint8)


def write_csv(path: str, puzzles: np.ndarray, solutions: np.ndarray) -> None:
    with open(path, "w") as f:
        f.write("source,q,a,rating\n")
        for p, s in zip(puzzles, solutions):
            f.write(f"stand-in,{S.grid_to_text(p)},{S.grid_to_text(s)},0\n")


def main():
    train_rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    test_rows = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    threads = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    started = time.time()
    train = variants(S.generate_hard_sudoku(train_rows // VARIANTS_PER_PUZZLE, seed=1, iterations=0, threads=threads),
                     train_rows, rng)
    fresh = variants(S.generate_hard_sudoku(max(1, test_rows // VARIANTS_PER_PUZZLE), seed=2, iterations=0,
                                            threads=threads), test_rows - 200, rng)
    picked = rng.choice(train_rows, 200, replace=False)
    turned = [augment_sudoku_pair(train[0][i], train[1][i], rng) for i in picked[100:]]
    test = (np.concatenate([fresh[0], train[0][picked[:100]], np.stack([p for p, _ in turned]).astype(np.uint8)]),
            np.concatenate([fresh[1], train[1][picked[:100]], np.stack([s for _, s in turned]).astype(np.uint8)]))
    stand_in_s = time.time() - started

    started = time.time()
    S.symmetry_fingerprints(*train)
    S.symmetry_fingerprints(*test)
    fingerprints_s = time.time() - started
    started = time.time()
    counts = S.count_test_in_train(*train, *test, progress=False)
    overlap_s = time.time() - started
    candidates = int((np.isin(S.symmetry_fingerprints(*test), S.symmetry_fingerprints(*train))).sum())
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, name) for name in ("train.csv", "test.csv")]
        write_csv(paths[0], *train)
        write_csv(paths[1], *test)
        started = time.time()
        summary = build_sudoku(out=os.path.join(folder, "ds"), source=paths[0], test_source=paths[1], threads=threads)
        build_s = time.time() - started
    print(json.dumps({
        "train_rows": train_rows, "test_rows": len(test[0]), "threads": threads, "load_average": os.getloadavg(),
        "counts": counts, "test_puzzles_sharing_a_fingerprint": candidates, "stand_in_seconds": round(stand_in_s, 1),
        "fingerprints_seconds": round(fingerprints_s, 2), "overlap_count_seconds": round(overlap_s, 2),
        "overlap_count_seconds_per_100k_rows": round(overlap_s * 1e5 / (train_rows + len(test[0])), 2),
        "build_seconds": round(build_s, 1), "build_summary": summary}, indent=2))


if __name__ == "__main__":
    main()
