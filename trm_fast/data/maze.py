"""Maze-Hard: the published CSV (a header, then `source,q,a,rating` rows with 900 characters of "# SGo" per grid)
or an offline generator after Lehnert et al. 2024 (csrc/maze.cpp): 30x30 grids with a uniform number of walls in
270..450 at uniformly random cells, start and goal on distinct open cells, kept when the 4-neighbour shortest path
has more than 110 moves (plain rejection sampling, so the kept mazes follow exactly the conditional distribution).

Labels: the input grid with the cells of one shortest path marked 'o'; 'S' and 'G' stay. The path is fixed by a
BFS from the goal and a walk from the start that always steps to the first neighbour one move closer to the goal in
the order up, down, left, right. Tokens: '#'=1, ' '=2, 'S'=3, 'G'=4, 'o'=5 (pad 0), vocab 6, length 900.
Augmentation: the 8 dihedral transforms, applied to input and label alike (trm_fast/data/augment.py).

    trm-fast data build maze --source train.csv --out data/maze-30x30-hard-1k --aug 7   # test.csv beside it
    trm-fast data build maze --source hub --out data/maze-30x30-hard-1k --aug 7         # needs huggingface_hub
    trm-fast data build maze --count 1000 --out data/maze-generated --aug 7             # offline generator
"""
from __future__ import annotations

import collections
import json
import os
import warnings

import numpy as np
from tqdm.auto import tqdm

from trm_fast.data.augment import augment_maze

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
SIZE = 30
HUB_REPO = "sapientinc/maze-30x30-hard-1k"
TEST_STREAM_OFFSET = 1 << 40  # generated test mazes come from indices far past any training count


def _native():
    try:
        from trm_fast import _maze

        return _maze
    except ImportError:
        return None


def _neighbours(cell: int, n: int) -> list[int]:
    """The 4-neighbours of a cell of an n x n grid, in the labels' tie-break order: up, down, left, right."""
    r, c = divmod(cell, n)
    return [x for x in (cell - n if r > 0 else -1, cell + n if r < n - 1 else -1, cell - 1 if c > 0 else -1,
                        cell + 1 if c < n - 1 else -1) if x >= 0]


def _bfs_moves(grid: np.ndarray, start: int, goal: int, n: int) -> np.ndarray:
    """Distances (moves) from goal over non-wall cells; -1 where unreachable."""
    dist = np.full(n * n, -1, dtype=np.int64)
    dist[goal] = 0
    queue = collections.deque([goal])
    while queue:
        cell = queue.popleft()
        for nxt in _neighbours(cell, n):
            if grid[nxt] != WALL and dist[nxt] < 0:
                dist[nxt] = dist[cell] + 1
                queue.append(nxt)
    return dist


def _walk(grid: np.ndarray, dist: np.ndarray, start: int, goal: int, n: int) -> np.ndarray:
    """The label: from the start, step to the first neighbour (up, down, left, right) one move closer to the goal."""
    label = grid.copy()
    cell = start
    while cell != goal:
        for nxt in _neighbours(cell, n):
            if dist[nxt] == dist[cell] - 1:
                cell = nxt
                break
        if cell != goal:
            label[cell] = PATH
    return label


def label_path(tokens: np.ndarray, n: int = SIZE) -> np.ndarray:
    """The label of a maze (n*n tokens with one 'S' and one 'G'): one shortest path marked 'o', with the generator's
    tie-breaking. Raises ValueError when the goal cannot be reached."""
    grid = np.asarray(tokens, dtype=np.uint8).reshape(-1)
    if grid.size != n * n or (grid == START).sum() != 1 or (grid == GOAL).sum() != 1:
        raise ValueError(f"label_path: expected {n * n} tokens with exactly one start and one goal")
    start, goal = int(np.argmax(grid == START)), int(np.argmax(grid == GOAL))
    dist = _bfs_moves(grid, start, goal, n)
    if dist[start] < 0:
        raise ValueError("label_path: the goal is not reachable from the start")
    return _walk(grid, dist, start, goal, n)


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
        label = _walk(grid, dist, start, goal, n)
        inputs.append(grid)
        labels.append(label)
        walls_out.append(walls)
        moves_out.append(int(dist[start]))
    empty = np.zeros((0, n * n), dtype=np.uint8)
    return (np.stack(inputs) if inputs else empty, np.stack(labels) if labels else empty,
            np.array(walls_out, dtype=np.int32), np.array(moves_out, dtype=np.int32), attempts)


def generate_mazes(count: int, seed: int = 0, n: int = SIZE, min_walls: int = 270, max_walls: int = 450,
                   min_path: int = 110, threads: int | None = None, first_index: int = 0, chunk: int = 0,
                   progress: bool = False, desc: str = "mazes") -> dict:
    """Mazes number first_index .. first_index+count-1 of the stream `seed`: {"inputs", "labels" (count, n*n) uint8
    tokens, "walls", "path_moves", "attempts"}. Native when built (maze i depends only on (seed, i), so chunking and
    threads do not change the result); otherwise pure Python with a warning (its own stream, slow)."""
    if count < 0 or not 0 <= min_walls <= max_walls <= n * n - 2:
        raise ValueError(f"need count >= 0 and 0 <= min_walls <= max_walls <= {n * n - 2}, got count {count}, "
                         f"walls {min_walls}..{max_walls}")
    native = _native()
    if native is None:
        warnings.warn("trm_fast._maze (the native generator) is not built: falling back to pure Python, which is "
                      "far too slow for hard mazes (min_path 110); install a C++ compiler and reinstall trm_fast")
        inputs, labels, walls, moves, attempts = _python_generate(count, seed + first_index, n, min_walls, max_walls, min_path)
        return {"inputs": inputs.reshape(count, n * n), "labels": labels.reshape(count, n * n), "walls": walls,
                "path_moves": moves, "attempts": int(attempts)}
    threads = threads or max(1, os.cpu_count() or 1)
    chunk = chunk or max(count, 1)
    parts, attempts = [], 0
    with tqdm(total=count, desc=desc, disable=not progress, leave=False) as bar:
        for start in range(0, count, chunk):
            size = min(chunk, count - start)
            part = native.generate(size, seed, n, min_walls, max_walls, min_path, threads, first_index + start)
            parts.append(part)
            attempts += int(part[4])
            bar.update(size)
            bar.set_postfix(attempts=attempts)
    cat = lambda i, shape: np.concatenate([p[i] for p in parts]) if parts else np.zeros(shape, dtype=np.uint8)
    return {"inputs": cat(0, (0, n * n)), "labels": cat(1, (0, n * n)), "walls": cat(2, (0,)).astype(np.int32),
            "path_moves": cat(3, (0,)).astype(np.int32), "attempts": attempts}


def parse_maze(text: str, n: int = SIZE) -> np.ndarray:
    """A maze written as n lines of n characters ('#' wall, ' ' or '.' open, 'S' start, 'G' goal), or as one line
    of n*n characters, -> n*n tokens. Lines shorter than n are padded with open cells (editors strip trailing
    spaces); empty lines around the maze are ignored. Errors name the line, column and character."""
    lines = text.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    if len(lines) == 1 and len(lines[0]) == n * n:
        lines = [lines[0][i:i + n] for i in range(0, n * n, n)]
    if len(lines) != n:
        raise ValueError(f"a maze has {n} lines of {n} cells (or one line of {n * n}); got {len(lines)} lines")
    codes = {"#": WALL, " ": OPEN, ".": OPEN, "S": START, "G": GOAL}
    tokens = np.empty(n * n, dtype=np.int64)
    for r, line in enumerate(lines):
        if len(line) > n:
            raise ValueError(f"line {r + 1} has {len(line)} cells, more than {n}")
        for c, ch in enumerate(line.ljust(n)):
            if ch not in codes:
                raise ValueError(f"line {r + 1}, column {c + 1}: bad character {ch!r} (use '#', ' ' or '.', 'S', 'G')")
            tokens[r * n + c] = codes[ch]
    for token, name in ((START, "start 'S'"), (GOAL, "goal 'G'")):
        if (tokens == token).sum() != 1:
            raise ValueError(f"a maze needs exactly one {name}; got {(tokens == token).sum()}")
    return tokens


def format_maze(tokens, n: int = SIZE) -> str:
    """n lines of "# SGo" characters (anything else, e.g. padding, as '?')."""
    chars = np.array(list("?" + CHARSET))
    grid = np.asarray(tokens).reshape(n, n)
    return "\n".join("".join(chars[np.clip(row, 0, len(CHARSET))]) for row in grid)


def check_path(maze, predicted, n: int = SIZE) -> dict:
    """Whether `predicted` (tokens) marks a shortest start-to-goal path in `maze`: every non-path cell as in the
    maze, path cells only on open cells, and the marked cells forming one 4-connected chain from S to G with as
    many moves as the shortest path. Returns {"valid", "moves", "shortest", "reason"}."""
    maze, predicted = np.asarray(maze).reshape(-1), np.asarray(predicted).reshape(-1)
    start, goal = int(np.argmax(maze == START)), int(np.argmax(maze == GOAL))
    shortest = int(_bfs_moves(maze, start, goal, n)[start])
    result = {"valid": False, "moves": None, "shortest": shortest if shortest >= 0 else None, "reason": ""}
    marked = predicted == PATH
    if not np.array_equal(np.where(marked, maze, predicted), maze):
        result["reason"] = "the prediction changes cells other than marking the path"
        return result
    if (maze[marked] != OPEN).any():
        result["reason"] = "path marks on walls, start or goal"
        return result

    on_path = set(np.flatnonzero(marked).tolist())
    cell, previous, moves = start, -1, 0
    while cell != goal:  # walk the chain; a branch or a dead end makes it invalid
        nxt = [x for x in _neighbours(cell, n) if x != previous and (x in on_path or x == goal)]
        if goal in nxt:
            nxt = [goal]
        if len(nxt) != 1:
            result["reason"] = f"the marked cells do not form one chain from S to G (at row {cell // n + 1}, column {cell % n + 1})"
            return result
        previous, cell, moves = cell, nxt[0], moves + 1
        on_path.discard(previous)
    result["moves"] = moves
    if on_path:
        result["reason"] = f"{len(on_path)} marked cells are off the chain from S to G"
    elif moves != shortest:
        result["reason"] = f"the path has {moves} moves, the shortest {shortest}"
    else:
        result["valid"] = True
    return result


def read_maze_csv(path: str, skip_bad: bool = False) -> tuple[list, int]:
    """(list of (input tokens, label tokens), skipped rows) from a published-format CSV: a header line, then rows
    `source,q,a,rating` with q and a 900 characters of "# SGo" (a byte-order mark and blank last lines are fine).
    Rows are checked: one 'S' and one 'G' in q, and a equal to q except open cells marked 'o' that form one
    shortest path from S to G (`check_path`; an 'o' on S or G is accepted). Labels are taken as written, so a tie
    between shortest paths may be broken otherwise than `label_path` does."""
    from trm_fast.data.build import EMPTY_LINE, csv_rows

    rows, skipped = [], 0
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[np.frombuffer(CHARSET.encode(), dtype=np.uint8)] = np.arange(1, len(CHARSET) + 1)
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = csv_rows(f)
        line_no, header = next(lines, (1, None))
        if header is None or line_no != 1:
            raise ValueError(f"{path}:1: empty file (expected a header 'source,q,a,rating' and rows)")
        if len(header) >= 2 and len(header[1]) == SIZE * SIZE:
            raise ValueError(f"{path}:1: the header line is missing (the first line is a maze row)")
        for line_no, row in tqdm(lines, desc=os.path.basename(path), leave=False):
            try:
                if not row:
                    raise ValueError(EMPTY_LINE)
                if len(row) < 3:
                    raise ValueError(f"expected at least 3 fields (source,q,a[,rating]), got {len(row)}")
                pair = []
                for name, text in (("q", row[1]), ("a", row[2])):
                    if len(text) != SIZE * SIZE:
                        raise ValueError(f"field {name} has {len(text)} characters, expected {SIZE * SIZE}")
                    try:
                        raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
                    except UnicodeEncodeError:
                        raw = np.zeros(1, dtype=np.uint8)
                    tokens = lookup[raw]
                    if len(tokens) != SIZE * SIZE or (tokens == 0).any():
                        bad = next(c for c in text if c not in CHARSET)
                        raise ValueError(f"field {name} has a bad character {bad!r} (allowed: {CHARSET!r})")
                    pair.append(tokens)
                q, a = pair
                if (q == START).sum() != 1 or (q == GOAL).sum() != 1 or (q == PATH).any():
                    raise ValueError("field q must have exactly one 'S', one 'G' and no 'o'")
                if not np.array_equal(a == WALL, q == WALL) or not ((a == q) | ((a == PATH) & (q != WALL))).all():
                    raise ValueError("field a must equal q except for cells marked 'o'")
                # an 'o' on S or G is read as S or G: whether the published labels overwrite them is not known
                verdict = check_path(q, np.where((q == START) | (q == GOAL), q, a))
                if verdict["shortest"] is None:
                    raise ValueError("field q: the goal 'G' cannot be reached from the start 'S'")
                if not verdict["valid"]:
                    raise ValueError(f"field a does not mark one shortest path from S to G: {verdict['reason']}")
            except ValueError as exc:
                if not skip_bad:
                    raise ValueError(f"{path}:{line_no}: {exc}") from None
                skipped += 1
                continue
            rows.append((q, a))
    return rows, skipped


def _histograms(path: str, walls: np.ndarray, moves: np.ndarray) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, values, title, xlabel in ((axes[0], walls, "walls per maze", "walls (270-450 drawn uniformly)"),
                                      (axes[1], moves, "shortest path", "moves from S to G")):
        ax.hist(values, bins=range(int(values.min()), int(values.max()) + 2, max(1, (int(np.ptp(values)) + 1) // 40)))
        ax.set_title(f"{title}: {len(values)} mazes, mean {values.mean():.1f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mazes")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def count_test_in_train(train: list, test: list) -> dict:
    """Test mazes (lists of (input, label) token pairs) whose input occurs among the training inputs, exactly and up
    to the dihedral transforms training augments with (the exact ones included)."""
    from trm_fast.data.format import rows_in

    pool = np.stack([inp for inp, _ in train])
    tests = np.stack([inp for inp, _ in test])
    exact = rows_in(tests, pool)
    turned = np.zeros(len(test), dtype=bool)
    for k in range(8):
        turned |= rows_in(np.stack([augment_maze(inp, k, SIZE) for inp in tests]), pool)
    return {"test_in_train": int(exact.sum()), "test_in_train_up_to_dihedral_transforms": int(turned.sum())}


def build_maze(*, out: str, source: str | None = None, test_source: str | None = None, count: int = 1000,
               min_path: int = 110, aug: int = 0, seed: int = 0, subsample: int = 0, skip_bad: bool = False,
               overwrite: bool = False, no_overlap: bool = False) -> dict:
    """`trm-fast data build maze`: from the published CSVs (`source` train.csv, test.csv beside it or
    `test_source`; `source` "hub" downloads them) or generated offline (no `source`: `count` mazes per split,
    `min_path`). Training mazes get `aug` dihedral versions (0-7; all 7 as published), each its own puzzle in the
    maze's group; the test split is not augmented. Written atomically, with build.json (the summary) and, for
    generated sets, distributions.png (walls and path lengths). Test mazes found among the training mazes
    (`count_test_in_train`) are counted; `no_overlap` refuses them. `overwrite`: see `check_output_dir`."""
    from trm_fast.data.build import download_from_hub, report_overlap
    from trm_fast.data.format import DatasetMetadata, PuzzleSet, atomic_output_dir, check_output_dir, write_split

    if not 0 <= aug <= 7:
        raise ValueError(f"--aug {aug}: mazes have 7 non-identity dihedral transforms (0-7)")
    read_from = [] if source in (None, "hub") else [source, test_source]
    check_output_dir(out, overwrite, read_from)
    summary, stats = {}, {}
    if source:
        if source == "hub":
            train_path, test_path = download_from_hub(HUB_REPO, "train.csv"), download_from_hub(HUB_REPO, "test.csv")
        else:
            train_path = source
            test_path = test_source or os.path.join(os.path.dirname(source), "test.csv")
        read_from = [train_path, test_path]
        splits, skipped = {}, 0
        for split, path in (("train", train_path), ("test", test_path)):
            if not os.path.isfile(path):
                raise ValueError(f"{path}: no such file" + (" (give --test-source)" if split == "test" else ""))
            splits[split], bad = read_maze_csv(path, skip_bad)
            skipped += bad
            if not splits[split]:
                raise ValueError(f"{path}: no usable rows")
        if subsample:
            if subsample > len(splits["train"]):
                raise ValueError(f"--subsample {subsample} exceeds the {len(splits['train'])} training mazes")
            keep = sorted(np.random.default_rng(seed).choice(len(splits["train"]), subsample, replace=False))
            splits["train"] = [splits["train"][i] for i in keep]
        summary.update(source=os.path.abspath(train_path), skipped_bad_rows=skipped)
    else:
        if count < 1:
            raise ValueError(f"--count {count}: at least one maze per split")
        splits = {}
        for split, first_index in (("train", 0), ("test", TEST_STREAM_OFFSET)):
            made = generate_mazes(count, seed=seed, min_path=min_path, first_index=first_index,
                                  chunk=max(1, min(64, count)), progress=True, desc=f"maze {split}")
            splits[split] = list(zip(made["inputs"], made["labels"]))
            stats[split] = made
            summary[f"{split}_attempts"] = made["attempts"]
        summary.update(source="generated", seed=seed, min_path=min_path)
    overlap = count_test_in_train(splits["train"], splits["test"])
    report_overlap(overlap, len(splits["test"]), "mazes", no_overlap)
    summary.update(overlap)
    rng = np.random.default_rng(seed)
    with atomic_output_dir(out, overwrite, read_from) as tmp:
        for split, pairs in splits.items():
            augs = aug if split == "train" else 0
            inputs, labels, groups = [], [], [0]
            for inp, lab in tqdm(pairs, desc=f"maze {split}", leave=False):
                ks = [0] + (sorted(rng.choice(np.arange(1, 8), augs, replace=False).tolist()) if augs else [])
                for k in ks:
                    inputs.append(augment_maze(inp, k, SIZE))
                    labels.append(augment_maze(lab, k, SIZE))
                groups.append(groups[-1] + len(ks))
            n = len(inputs)
            # as published: every example its own puzzle (identifier 0), a maze and its transforms one group
            puzzle_set = PuzzleSet(np.stack(inputs), np.stack(labels), np.zeros(n, dtype=np.int32),
                                   np.arange(n + 1, dtype=np.int32), np.array(groups, dtype=np.int32))
            meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=len(CHARSET) + 1,
                                   seq_len=SIZE * SIZE, num_puzzle_identifiers=1, total_groups=len(groups) - 1,
                                   mean_puzzle_examples=1.0, total_puzzles=n, sets=["all"])
            write_split(os.path.join(tmp, split), meta, {"all": puzzle_set})
            summary[f"{split}_mazes"] = len(pairs)
            summary[f"{split}_examples"] = n
        if stats:
            walls = np.concatenate([s["walls"] for s in stats.values()])
            moves = np.concatenate([s["path_moves"] for s in stats.values()])
            summary["walls"] = {"min": int(walls.min()), "mean": float(walls.mean()), "max": int(walls.max())}
            summary["path_moves"] = {"min": int(moves.min()), "mean": float(moves.mean()), "max": int(moves.max())}
            _histograms(os.path.join(tmp, "distributions.png"), walls, moves)
        for name, data in (("identifiers.json", ["<blank>"]), ("build.json", summary)):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(data, f, indent=2)
    return summary
