"""Throughput of the native data engines (csrc/): the Sudoku solver, canonicaliser and generator, and the Maze-Hard
generator, run by `python benchmarks/bench_sudoku.py` and `python benchmarks/bench_maze.py`. CPU seconds
(time.process_time, all threads) are recorded beside wall seconds: on a shared machine the wall time grows with the
load, while CPU seconds / threads is what idle cores would take."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from trm_fast.tools.bench.report import environment

RESULTS_DIR = os.path.join("benchmarks", "results")
SEVENTEEN_CLUE = ["000000010400000000020000000000050407008000300001090000300400200050100000000806000",
                  "..............3.85..1.2.......5.7.....4...1...9.......5......73..2.1........4...9"]


def _percentiles(a: np.ndarray) -> dict:
    return dict(zip(("p10", "p50", "p90", "p99"), np.percentile(a, [10, 50, 90, 99]).tolist()))


def maze_generator(count: int, threads: int) -> tuple[dict, dict]:
    """Generates `count` hard mazes (shortest path > 110 moves, 270-450 walls) on `threads` threads: (the result
    record, the generator's output with its wall counts and path lengths). Needs the native engine trm_fast._maze."""
    from trm_fast.data.maze import _native, generate_mazes

    if _native() is None:
        raise RuntimeError("the native generator trm_fast._maze is not built: pip install -e . --no-build-isolation")
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    made = generate_mazes(count, seed=0, threads=threads, chunk=50, progress=True, desc="hard mazes")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    walls, moves = made["walls"], made["path_moves"]
    result = {
        "environment": environment(), "count": count, "threads": threads, "seconds": round(seconds, 1),
        "mazes_per_minute": round(count / seconds * 60, 1), "attempts": made["attempts"],
        "attempts_per_s": round(made["attempts"] / seconds), "hard_fraction": count / made["attempts"],
        # CPU time of all threads: on a shared machine, cpu_seconds / threads is the wall time on idle cores
        "cpu_seconds": round(cpu_seconds, 1), "attempts_per_cpu_second": round(made["attempts"] / cpu_seconds),
        "seconds_on_idle_cores": round(cpu_seconds / threads, 1),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "walls": {"min": int(walls.min()), "mean": float(walls.mean()), "max": int(walls.max()), **_percentiles(walls)},
        "path_moves": {"min": int(moves.min()), "mean": float(moves.mean()), "max": int(moves.max()),
                       **_percentiles(moves)},
    }
    return result, made


def write_maze_generator(result: dict, made: dict, out_dir: str = RESULTS_DIR) -> str:
    """<out_dir>/<device>-maze-generator.json and .png (the wall-count and path-length histograms); returns the
    path without suffix."""
    from trm_fast.data.maze import _histograms

    stem = _write_json(result, out_dir, "maze-generator")
    _histograms(stem + ".png", made["walls"], made["path_moves"])
    return stem


def _rate_per_second(puzzles: np.ndarray) -> tuple[float, float]:
    """(puzzles solved, checked unique and rated per CPU second on one core, mean guesses)."""
    from trm_fast.data.sudoku import solve_and_rate

    start = time.process_time()
    rated = solve_and_rate(puzzles, limit=2, threads=1)
    seconds = time.process_time() - start
    assert (rated["counts"] == 1).all()
    return len(puzzles) / seconds, float(rated["guesses"].mean())


def sudoku_engine(count: int, iterations: int, threads: int) -> dict:
    """1. solve + uniqueness (limit 2) + rating on one core: symmetry variants of two 17-clue puzzles, and random
    minimal puzzles (a second, more varied, workload); 2. canonical forms of 9x9 solution grids on one core;
    3. generation of `count` unique-solution 9x9 puzzles searched toward many guesses (`iterations` moves each) on
    `threads` threads. Returns the result record."""
    from trm_fast.data.augment import augment_sudoku_pair
    from trm_fast.data.sudoku import canonical_forms, generate_hard_sudoku, parse_puzzle, solve

    rng = np.random.default_rng(0)
    variants = []
    for text in SEVENTEEN_CLUE:
        base = parse_puzzle(text)
        solution = solve(base)
        variants += [augment_sudoku_pair(base, solution, rng)[0] for _ in range(10000)]
    seventeen_rate, seventeen_guesses = _rate_per_second(np.stack(variants))
    minimal = generate_hard_sudoku(2000, seed=1, iterations=0, threads=threads)
    minimal_rate, minimal_guesses = _rate_per_second(minimal["puzzles"])
    start = time.process_time()
    canonical_forms(minimal["solutions"][:500], threads=1)
    canonical_per_s = 500 / (time.process_time() - start)

    start, start_cpu = time.perf_counter(), time.process_time()
    made = generate_hard_sudoku(count, seed=0, iterations=iterations, threads=threads)
    gen_seconds, gen_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "environment": environment(),
        "solve_rate_puzzles_per_s_one_core": {"17_clue_variants": round(seventeen_rate),
                                              "random_minimal": round(minimal_rate)},
        "mean_guesses": {"17_clue_variants": seventeen_guesses, "random_minimal": minimal_guesses},
        "canonical_forms_per_s_one_core": round(canonical_per_s),
        "generated": count, "iterations": iterations, "threads": threads,
        "generate_wall_seconds": round(gen_seconds, 1), "generate_cpu_seconds": round(gen_cpu, 1),
        "generate_2core_wall_estimate_seconds": round(gen_cpu / 2, 1),
        "load_average_at_end": os.getloadavg()[0],
        "guesses_mean": float(made["guesses"].mean()), "guesses_median": float(np.median(made["guesses"])),
        "guesses_p90": float(np.percentile(made["guesses"], 90)), "guesses_max": int(made["guesses"].max()),
        "clues_mean": float((made["puzzles"] > 0).sum(axis=(1, 2)).mean()),
        "targets": {"solve_rate": ">= 50,000 puzzles/s per core (17-clue)",
                    "generate": "1000 puzzles, mean guesses >= 15, <= 10 min on 2 cores"},
    }


def write_sudoku_engine(result: dict, out_dir: str = RESULTS_DIR) -> str:
    """<out_dir>/<device>-sudoku-engine.json; returns the path without suffix."""
    return _write_json(result, out_dir, "sudoku-engine")


def _write_json(result: dict, out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{result['environment']['device']}-{name}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    return stem


OVERLAP_VARIANTS_PER_PUZZLE = 20


def _overlap_variants(made: dict, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """count rows of the stand-in: generated puzzles plus 0-3 clues of their solution, under a random symmetry."""
    from trm_fast.data.augment import augment_sudoku_pair

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


def _write_sudoku_csv(path: str, puzzles: np.ndarray, solutions: np.ndarray) -> None:
    from trm_fast.data.sudoku import grid_to_text

    with open(path, "w") as f:
        f.write("source,q,a,rating\n")
        for p, s in zip(puzzles, solutions):
            f.write(f"stand-in,{grid_to_text(p)},{grid_to_text(s)},0\n")


def data_overlap(train_rows: int = 100_000, test_rows: int = 10_000) -> dict:
    """Train/test overlap counting on a stand-in for the published Sudoku-Extreme CSVs (see
    benchmarks/bench_data_overlap.py for the recipe): the count alone and a whole `data build sudoku`, wall seconds."""
    import tempfile

    from trm_fast.data import sudoku as S
    from trm_fast.data.augment import augment_sudoku_pair
    from trm_fast.data.build import build_sudoku

    threads = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    started = time.time()
    per = OVERLAP_VARIANTS_PER_PUZZLE
    train = _overlap_variants(S.generate_hard_sudoku(train_rows // per, seed=1, iterations=0, threads=threads),
                              train_rows, rng)
    fresh = _overlap_variants(S.generate_hard_sudoku(max(1, test_rows // per), seed=2, iterations=0, threads=threads),
                              test_rows - 200, rng)
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
        _write_sudoku_csv(paths[0], *train)
        _write_sudoku_csv(paths[1], *test)
        started = time.time()
        summary = build_sudoku(out=os.path.join(folder, "ds"), source=paths[0], test_source=paths[1], threads=threads)
        build_s = time.time() - started
    return {
        "train_rows": train_rows, "test_rows": len(test[0]), "threads": threads, "load_average": os.getloadavg(),
        "counts": counts, "test_puzzles_sharing_a_fingerprint": candidates, "stand_in_seconds": round(stand_in_s, 1),
        "fingerprints_seconds": round(fingerprints_s, 2), "overlap_count_seconds": round(overlap_s, 2),
        "overlap_count_seconds_per_100k_rows": round(overlap_s * 1e5 / (train_rows + len(test[0])), 2),
        "build_seconds": round(build_s, 1), "build_summary": summary}
