"""Train/test overlap on a stand-in for the published Sudoku-Extreme CSVs (the real ones are not available offline):
`python benchmarks/bench_data_overlap.py [TRAIN_ROWS] [TEST_ROWS]` (default 100000 and 10000).

The stand-in, in the published format (`source,q,a,rating`, '.' for blanks): minimal unique 9x9 puzzles from the
native generator, each giving 20 rows as itself plus 0-3 clues of its solution (still unique) under a random
symmetry; the test rows come from other generated puzzles, plus 100 copies of training rows and 100 training rows
under a random symmetry (so the counts must read 100 exactly and 200 up to symmetry). Measured: the overlap count
alone (fingerprints of both splits, then the exact check of the test puzzles whose fingerprint a training puzzle
shares) and the whole `trm-fast data build sudoku` from the CSVs (read, uniqueness check, overlap, write), wall
seconds. Prints JSON.
The measurement is trm_fast.tools.bench.engines.data_overlap."""
import json
import sys

from trm_fast.tools.bench.engines import data_overlap


def main():
    train_rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    test_rows = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    print(json.dumps(data_overlap(train_rows, test_rows), indent=2))


if __name__ == "__main__":
    main()
