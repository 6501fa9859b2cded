"""Maze-Hard: the published CSV (`source,q,a,rating`, 900 characters of "# SGo" per grid) or an offline generator
after Lehnert et al. 2024 (csrc/maze.cpp): 30x30 grids with 270-450 uniformly placed walls, start and goal on
distinct open cells, kept when the 4-neighbour shortest path has more than 110 moves (rejection sampling).
Labels mark one shortest path with 'o'; ties go to the first neighbour closer to the goal in the order up, down,
left, right. Tokens: '#'=1, ' '=2, 'S'=3, 'G'=4, 'o'=5 (pad 0), vocab 6. Augmentation: the 8 dihedral transforms.

    trm-fast data build maze --source train.csv --out data/maze-30x30-hard-1k --aug 7
    trm-fast data build maze --count 1000 --out data/maze-generated --aug 7
"""
from __future__ import annotations

import collections
import csv
import json
import os
import warnings

import numpy as np
from tqdm.auto import tqdm

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
SIZE = 30


def _native():
    try:
        from trm_fast import _maze

        return _maze
    except ImportError:
        return None


def _bfs_moves(grid: np.ndarray, start: int, goal: int, n: int) -> np.ndarray:
    """Distances (moves) from goal over non-wall cells; -1 where unreachable."""
    dist = np.full(n * n, -1, dtype=np.int64)
    dist[goal] = 0
    queue = collections.deque([goal])
    while queue:
        cell = queue.popleft()
        r, c = divmod(cell, n)
        for nxt in (cell - n if r > 0 else -1, cell + n if r < n - 1 else -1, cell - 1 if c > 0 else -1, cell + 1 if c < n - 1 else -1):
            if nxt >= 0 and grid[nxt] != WALL and dist[nxt] < 0:
                dist[nxt] = dist[cell] + 1
                queue.append(nxt)
    return dist


def _python_generate(count, seed, n, min_walls, max_walls, min_path):
    rng = np.random.default_rng(seed)
    inputs, labels, walls_out, moves_out, attempts = [], [], [], [], 0
    while len(inputs) < count:
        attempts += 1
        walls = int(rng.integers(min_walls, max_walls + 1))
        cells = rng.permutation(n * n)[: walls + 2]
        grid = np.full(n * n, OPEN, dtype=np.uint8)
        grid[cells[:walls]] = WALL
        start, goal = int(cells[walls]), int(cells[walls + 1])
        dist = _bfs_moves(grid, start, goal, n)
        if dist[start] <= min_path:
            continue
        grid[start], grid[goal] = START, GOAL
        label = grid.copy()
        cell = start
        while cell != goal:
            r, c = divmod(cell, n)
            for nxt in (cell - n if r > 0 else -1, cell + n if r < n - 1 else -1, cell - 1 if c > 0 else -1, cell + 1 if c < n - 1 else -1):
                if nxt >= 0 and dist[nxt] == dist[cell] - 1:
                    cell = nxt
                    break
            if cell != goal:
                label[cell] = PATH
        inputs.append(grid)
        labels.append(label)
        walls_out.append(walls)
        moves_out.append(int(dist[start]))
    return np.stack(inputs), np.stack(labels), np.array(walls_out), np.array(moves_out), attempts


def generate_mazes(count: int, seed: int = 0, n: int = SIZE, min_walls: int = 270, max_walls: int = 450,
                   min_path: int = 110, threads: int | None = None) -> dict:
    """{"inputs", "labels" (count, n*n) uint8 tokens, "walls", "path_moves", "attempts"}; native when built."""
    native = _native()
    if native is not None:
        threads = threads or max(1, os.cpu_count() or 1)
        inputs, labels, walls, moves, attempts = native.generate(count, seed, n, min_walls, max_walls, min_path, threads)
    else:
        warnings.warn("trm_fast._maze (the native generator) is not built: falling back to pure Python, which is "
                      "far too slow for hard mazes (min_path 110); install a C++ compiler and reinstall trm_fast")
        inputs, labels, walls, moves, attempts = _python_generate(count, seed, n, min_walls, max_walls, min_path)
    return {"inputs": np.asarray(inputs), "labels": np.asarray(labels), "walls": np.asarray(walls),
            "path_moves": np.asarray(moves), "attempts": int(attempts)}


def dihedral_tokens(tokens: np.ndarray, k: int, n: int = SIZE) -> np.ndarray:
    grid = np.rot90(np.asarray(tokens).reshape(n, n), k % 4)
    return np.ascontiguousarray(grid.T if k >= 4 else grid).ravel()


def read_maze_csv(path: str, skip_bad: bool = False) -> tuple[list, int]:
    """(list of (input tokens, label tokens), skipped rows) from a published-format CSV."""
    rows, skipped = [], 0
    lookup = {ch: i + 1 for i, ch in enumerate(CHARSET)}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["source", "q", "a"]:
            raise ValueError(f"{path}:1: expected the header 'source,q,a,rating', got {header!r}")
        for line_no, row in enumerate(reader, start=2):
            try:
                if len(row) < 3:
                    raise ValueError(f"expected at least 3 fields, got {len(row)}")
                pair = []
                for name, text in (("q", row[1]), ("a", row[2])):
                    if len(text) != SIZE * SIZE:
                        raise ValueError(f"field {name} has {len(text)} characters, expected {SIZE * SIZE}")
                    bad = [c for c in text if c not in lookup]
                    if bad:
                        raise ValueError(f"field {name} has a bad character {bad[0]!r} (allowed: {CHARSET!r})")
                    pair.append(np.array([lookup[c] for c in text], dtype=np.uint8))
                if (pair[0] == START).sum() != 1 or (pair[0] == GOAL).sum() != 1:
                    raise ValueError("field q must have exactly one 'S' and one 'G'")
            except ValueError as exc:
                if not skip_bad:
                    raise ValueError(f"{path}:{line_no}: {exc}") from None
                skipped += 1
                continue
            rows.append(tuple(pair))
    return rows, skipped


def _histograms(path: str, walls: np.ndarray, moves: np.ndarray) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].hist(walls, bins=30)
    axes[0].set_title("walls per maze")
    axes[1].hist(moves, bins=30)
    axes[1].set_title("shortest path (moves)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def build_maze(args) -> dict:
    from trm_fast.data.format import DatasetMetadata, PuzzleSet, atomic_output_dir, write_split

    if not 0 <= args.aug <= 7:
        raise ValueError(f"--aug {args.aug}: mazes have 7 non-identity dihedral transforms (0-7)")
    summary, stats = {}, {}
    if args.source:
        test_path = args.test_source or os.path.join(os.path.dirname(args.source), "test.csv")
        splits, skipped = {}, 0
        for split, path in (("train", args.source), ("test", test_path)):
            if not os.path.isfile(path):
                raise ValueError(f"{path}: no such file")
            splits[split], bad = read_maze_csv(path, args.skip_bad)
            skipped += bad
        if args.subsample:
            rng = np.random.default_rng(args.seed)
            keep = sorted(rng.choice(len(splits["train"]), min(args.subsample, len(splits["train"])), replace=False))
            splits["train"] = [splits["train"][i] for i in keep]
        summary["skipped_bad_rows"] = skipped
    else:
        splits = {}
        for offset, split in enumerate(("train", "test")):
            made = generate_mazes(args.count, seed=args.seed * 2 + offset, min_path=getattr(args, "min_path", 110))
            splits[split] = list(zip(made["inputs"], made["labels"]))
            stats[split] = made
            summary[f"{split}_attempts"] = made["attempts"]
    rng = np.random.default_rng(args.seed)
    with atomic_output_dir(args.out) as tmp:
        for split, pairs in splits.items():
            augs = args.aug if split == "train" else 0
            inputs, labels, groups = [], [], [0]
            for inp, lab in tqdm(pairs, desc=f"maze {split}", leave=False):
                ks = [0] + (sorted(rng.choice(np.arange(1, 8), augs, replace=False).tolist()) if augs else [])
                for k in ks:
                    inputs.append(dihedral_tokens(inp, k))
                    labels.append(dihedral_tokens(lab, k))
                groups.append(groups[-1] + len(ks))
            n = len(inputs)
            puzzle_set = PuzzleSet(np.stack(inputs), np.stack(labels), np.zeros(n, dtype=np.int32),
                                   np.arange(n + 1, dtype=np.int32), np.array(groups, dtype=np.int32))
            meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6, seq_len=SIZE * SIZE,
                                   num_puzzle_identifiers=1, total_groups=len(groups) - 1, mean_puzzle_examples=1.0,
                                   total_puzzles=n, sets=["all"])
            write_split(os.path.join(tmp, split), meta, {"all": puzzle_set})
            summary[f"{split}_examples"] = n
        if stats:
            walls = np.concatenate([s["walls"] for s in stats.values()])
            moves = np.concatenate([s["path_moves"] for s in stats.values()])
            summary["walls"] = {"min": int(walls.min()), "mean": float(walls.mean()), "max": int(walls.max())}
            summary["path_moves"] = {"min": int(moves.min()), "mean": float(moves.mean()), "max": int(moves.max())}
            _histograms(os.path.join(tmp, "distributions.png"), walls, moves)
        with open(os.path.join(tmp, "build.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary
