"""Maze-Hard: generated mazes have one start and one goal, walls in range, and a labelled path that is a shortest
path (independent BFS) longer than the hard threshold; generation is seeded and independent of threads and
chunking; dihedral augmentation keeps mazes valid; the CSV reader names or skips every bad-row class (labels that
do not mark one shortest path included) and takes spreadsheet CSVs; builds round-trip through the on-disk format,
count train/test overlap and replace only a dataset built earlier, with --overwrite."""
import collections
import json

import numpy as np
import pytest

from trm_fast.cli import main
from trm_fast.data import maze as M
from trm_fast.data.augment import augment_maze
from trm_fast.data.format import read_split

N = 30


def _bfs(inp, source):
    """Distances over non-wall cells, written independently of the module's BFS."""
    grid = inp.reshape(N, N)
    dist = np.full((N, N), -1)
    dist[divmod(source, N)] = 0
    queue = collections.deque([divmod(source, N)])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < N and 0 <= cc < N and grid[rr, cc] != M.WALL and dist[rr, cc] < 0:
                dist[rr, cc] = dist[r, c] + 1
                queue.append((rr, cc))
    return dist.ravel()


def _check(inp, lab, min_path):
    """Validity of one (input, label) pair; returns (walls, moves)."""
    assert (inp == M.START).sum() == 1 and (inp == M.GOAL).sum() == 1 and not (inp == M.PATH).any()
    start, goal = int(np.argmax(inp == M.START)), int(np.argmax(inp == M.GOAL))
    dist = _bfs(inp, goal)
    path = np.flatnonzero(lab == M.PATH)
    # the label is the input with path cells marked, 'S' and 'G' kept, only open cells on the path
    assert np.array_equal(lab[lab != M.PATH], inp[lab != M.PATH]) and (inp[path] == M.OPEN).all()
    assert len(path) + 1 == dist[start] > min_path  # a shortest path: moves = path cells + 1
    cells = [start] + sorted(path.tolist(), key=lambda c: -dist[c]) + [goal]
    for a, b in zip(cells, cells[1:]):  # consecutive cells are neighbours, one step closer each time
        assert abs(a // N - b // N) + abs(a % N - b % N) == 1 and dist[b] == dist[a] - 1
    return int((inp == M.WALL).sum()), int(dist[start])


@pytest.mark.parametrize("native", [True, False])
def test_generated_mazes_are_valid(native, monkeypatch):
    if not native:
        monkeypatch.setattr(M, "_native", lambda: None)
    elif M._native() is None:
        pytest.skip("native extension not built")
    min_path = 110 if native else 40  # the hard filter natively; a cheap one for the slow fallback
    count = 3 if native else 4
    if native:
        made = M.generate_mazes(count, seed=3, min_path=min_path)
    else:
        with pytest.warns(UserWarning, match="pure Python"):
            made = M.generate_mazes(count, seed=3, min_path=min_path)
    assert made["inputs"].shape == made["labels"].shape == (count, N * N) and made["attempts"] >= count
    for inp, lab, walls, moves in zip(made["inputs"], made["labels"], made["walls"], made["path_moves"]):
        assert _check(inp, lab, min_path) == (walls, moves) and 270 <= walls <= 450


def test_label_tie_break_is_the_documented_order():
    # an open 3x3 corner, S at (0,0), G at (2,2): preferring up, down, left, right gives down, down, right, right
    inp = np.full(N * N, M.WALL, dtype=np.uint8)
    for r in range(3):
        inp[r * N: r * N + 3] = M.OPEN
    inp[0], inp[2 * N + 2] = M.START, M.GOAL
    assert set(np.flatnonzero(M.label_path(inp) == M.PATH).tolist()) == {N, 2 * N, 2 * N + 1}
    inp[N + 1] = inp[N] = inp[1] = M.WALL  # the corner cut off
    with pytest.raises(ValueError, match="not reachable"):
        M.label_path(inp)
    # the native generator labels with the same rule
    made = M.generate_mazes(3, seed=5, min_path=30)
    for inp, lab in zip(made["inputs"], made["labels"]):
        assert np.array_equal(M.label_path(inp), lab)


def test_native_generation_is_seeded_and_independent_of_threads_and_chunks():
    if M._native() is None:
        pytest.skip("native extension not built")
    one = M.generate_mazes(4, seed=7, min_path=30, threads=1)
    two = M.generate_mazes(4, seed=7, min_path=30, threads=2, chunk=3)
    tail = M.generate_mazes(2, seed=7, min_path=30, first_index=2)
    assert np.array_equal(one["inputs"], two["inputs"]) and np.array_equal(one["labels"], two["labels"])
    assert np.array_equal(one["inputs"][2:], tail["inputs"])
    assert not np.array_equal(one["inputs"], M.generate_mazes(4, seed=8, min_path=30)["inputs"])
    with pytest.raises(ValueError, match="min_walls"):
        M.generate_mazes(1, min_walls=500, max_walls=400)


def test_native_rejection_search_matches_an_independent_bfs():
    native = M._native()
    if native is None:
        pytest.skip("native extension not built")
    rng = np.random.default_rng(0)
    grids = []
    for walls in rng.integers(0, 700, 300):  # sparse to dense: long paths, short ones and unreachable goals
        cells = rng.permutation(N * N)
        grid = np.full(N * N, M.OPEN, dtype=np.uint8)
        grid[cells[:walls]] = M.WALL
        grid[cells[walls]], grid[cells[walls + 1]] = M.START, M.GOAL
        grids.append(grid)
    grids = np.stack(grids)
    expected = [_bfs(g, int(np.argmax(g == M.GOAL)))[int(np.argmax(g == M.START))] for g in grids]
    got = native.shortest_moves(grids)
    assert np.array_equal(got, expected) and (got == -1).any() and (got > 40).any()


def test_dihedral_augmentation_keeps_mazes_valid():
    made = M.generate_mazes(2, seed=1, min_path=30)
    for inp, lab in zip(made["inputs"], made["labels"]):
        versions = {augment_maze(inp, k, 30).tobytes() for k in range(8)}
        assert len(versions) == 8
        for k in range(8):
            assert _check(augment_maze(inp, k, 30), augment_maze(lab, k, 30), 30)[0] == (inp == M.WALL).sum()


def _text(tokens):
    return "".join(M.CHARSET[int(v) - 1] for v in tokens)


def test_build_round_trip_and_every_bad_row(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["data", "build", "maze", "--count", "4", "--min-path", "30", "--aug", "7", "--out", str(out)]) == 0
    meta, train = read_split(str(out / "train"))
    _, test = read_split(str(out / "test"))
    train, test = train["all"], test["all"]
    assert (meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers) == (6, 900, 1)
    assert len(train.inputs) == 32 and train.num_groups == 4 and len(test.inputs) == 4 and test.num_groups == 4
    assert (out / "distributions.png").exists() and (out / "identifiers.json").exists()
    assert not set(map(bytes, train.inputs[::8])) & set(map(bytes, test.inputs))  # train and test streams differ
    # the same command again gives the same files
    assert main(["data", "build", "maze", "--count", "4", "--min-path", "30", "--aug", "7", "--out", str(tmp_path / "again")]) == 0
    _, again = read_split(str(tmp_path / "again" / "train"))
    assert np.array_equal(again["all"].inputs, train.inputs) and np.array_equal(again["all"].labels, train.labels)

    rows = [(_text(i), _text(lab)) for i, lab in zip(test.inputs, test.labels)]
    good = lambda k: f"src,{rows[k][0]},{rows[k][1]},0"
    (tmp_path / "test.csv").write_text("source,q,a,rating\n" + "\n".join(good(k) for k in range(4)) + "\n")
    csv = tmp_path / "train.csv"
    csv.write_text("source,q,a,rating\n" + "\n".join(good(k) for k in range(4)) + "\n")
    assert main(["data", "build", "maze", "--source", str(csv), "--out", str(tmp_path / "csv")]) == 0
    _, round_trip = read_split(str(tmp_path / "csv" / "test"))
    assert np.array_equal(round_trip["all"].inputs, test.inputs) and np.array_equal(round_trip["all"].labels, test.labels)

    q, a = rows[1]
    bad_rows = {
        "field q has 899 characters": f"s,{q[:899]},{a},0",
        "field a has a bad character 'x'": f"s,{q},{a[:899]}x,0",
        "field q must have exactly one 'S'": f"s,{q.replace('S', ' ')},{a},0",
        "field a must equal q except for cells marked 'o'": f"s,{q},{a.replace('#', ' ', 1)},0",
        "expected at least 3 fields": f"s,{q}",
    }
    for message, row in bad_rows.items():
        csv.write_text(f"source,q,a,rating\n{good(0)}\n{row}\n")
        assert main(["data", "build", "maze", "--source", str(csv), "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert f"train.csv:3: {message}" in err, err
        assert not (tmp_path / "bad").exists()
    csv.write_text("source,q,a,rating\n" + good(0) + "\n" + "\n".join(bad_rows.values()) + "\n")
    assert main(["data", "build", "maze", "--source", str(csv), "--out", str(tmp_path / "bad"), "--skip-bad"]) == 0
    assert '"skipped_bad_rows": 5' in capsys.readouterr().out
    csv.write_text(good(0) + "\n")
    assert main(["data", "build", "maze", "--source", str(csv), "--out", str(tmp_path / "headless")]) == 2
    assert "header line is missing" in capsys.readouterr().err


def test_maze_text_parsing_and_path_checking():
    made = M.generate_mazes(2, seed=5, min_path=40)
    maze, label = made["inputs"][0], made["labels"][0]
    text = M.format_maze(maze)
    assert np.array_equal(M.parse_maze(text), maze)
    assert np.array_equal(M.parse_maze(text.replace(" ", ".")), maze)  # '.' for open cells
    assert np.array_equal(M.parse_maze("\n" + "\n".join(l.rstrip() for l in text.split("\n")) + "\n\n"), maze)
    assert np.array_equal(M.parse_maze(text.replace("\n", "")), maze)  # one line of 900
    for bad, match in ((text.replace("#", "x", 1), "line 1, column .*'x'"), ("\n".join(text.split("\n")[:29]), "29 lines"),
                       (text.replace("G", " "), "exactly one goal"), (text.replace(" ", "S", 1), "exactly one start")):
        with pytest.raises(ValueError, match=match):
            M.parse_maze(bad)
    ok = M.check_path(maze, label)
    assert ok["valid"] and ok["moves"] == ok["shortest"] == made["path_moves"][0]
    assert not M.check_path(maze, maze)["valid"]  # nothing marked
    on_path = np.flatnonzero(label == M.PATH)
    broken = label.copy()
    broken[on_path[len(on_path) // 2]] = M.OPEN
    assert "one chain" in M.check_path(maze, broken)["reason"]
    stray = label.copy()
    stray[np.flatnonzero((label == M.OPEN))[0]] = M.PATH
    assert not M.check_path(maze, stray)["valid"]
    wall = label.copy()
    wall[np.flatnonzero(maze == M.WALL)[0]] = M.PATH
    assert "walls" in M.check_path(maze, wall)["reason"]


def test_solve_command_reads_a_maze_file(tmp_path, capsys):
    from trm_fast.config import TRMConfig
    from trm_fast.train.trainer import train

    data = tmp_path / "mazes"
    assert main(["data", "build", "maze", "--count", "4", "--min-path", "30", "--out", str(data)]) == 0
    config = TRMConfig.preset("sudoku4-tiny").override([f"data.path={data}", "data.recipe=", "data.global_batch_size=4",
                                                        f"train.out_dir={tmp_path / 'run'}", "train.max_steps=1",
                                                        "model.halt_max_steps=2"])
    train(config, progress=False, log=lambda *a: None)
    _, test = read_split(str(data / "test"))
    maze_file = tmp_path / "maze.txt"
    maze_file.write_text(M.format_maze(test["all"].inputs[0]) + "\n")
    capsys.readouterr()
    code = main(["solve", "--ckpt", str(tmp_path / "run"), "--puzzle-file", str(maze_file), "--max-steps", "2"])
    out = capsys.readouterr().out
    assert code in (0, 1) and "valid solution: " + ("yes" if code == 0 else "no") in out
    assert len(out.split("\n")[0]) == 30 and "supervision steps:" in out  # the predicted maze, then the verdict
    maze_file.write_text("#" * 30 + "\n")
    assert main(["solve", "--ckpt", str(tmp_path / "run"), "--puzzle-file", str(maze_file)]) == 2
    assert "bad maze" in capsys.readouterr().err
    assert main(["solve", "--ckpt", str(tmp_path / "run")]) == 2  # neither --puzzle nor --puzzle-file


def _csv(path, pairs, prefix="", suffix=""):
    path.write_text(prefix + "source,q,a,rating\n" + "".join(f"s,{_text(q)},{_text(a)},0\n" for q, a in pairs) + suffix)


def test_csv_labels_must_mark_one_shortest_path(tmp_path, capsys):
    made = M.generate_mazes(3, seed=2, min_path=30)
    pairs = list(zip(made["inputs"], made["labels"]))
    q, a = pairs[1]
    rng = np.random.default_rng(0)
    scattered = q.copy()
    scattered[rng.choice(np.flatnonzero(q == M.OPEN), 5, replace=False)] = M.PATH
    stray = a.copy()  # the shortest path plus one open cell away from it
    stray[next(c for c in np.flatnonzero(a == M.OPEN) if all(a[x] in (M.OPEN, M.WALL) for x in M._neighbours(c, N)))] = M.PATH
    walled = q.copy()
    goal = int(np.argmax(q == M.GOAL))
    for x in M._neighbours(goal, N):
        walled[x] = M.WALL
    bad = {"field a does not mark one shortest path from S to G: the marked cells do not form one chain": (q, q),
           "field a does not mark one shortest path from S to G": (q, scattered),
           "field a does not mark one shortest path from S to G: 1 marked cells are off the chain": (q, stray),
           "field q: the goal 'G' cannot be reached from the start 'S'": (walled, walled)}
    _csv(tmp_path / "test.csv", pairs[:1])
    for message, pair in bad.items():
        _csv(tmp_path / "train.csv", [pairs[0], pair, pairs[2]])
        assert main(["data", "build", "maze", "--source", str(tmp_path / "train.csv"), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert f"train.csv:3: {message}" in err, err
    q, a = pairs[2]
    overwritten = np.where((q == M.START) | (q == M.GOAL), M.PATH, a)  # S and G marked 'o': accepted
    _csv(tmp_path / "train.csv", [pairs[0], (q, overwritten)])
    assert main(["data", "build", "maze", "--source", str(tmp_path / "train.csv"), "--out", str(tmp_path / "o")]) == 0
    _csv(tmp_path / "train.csv", [pairs[0], *bad.values(), pairs[2]])
    assert main(["data", "build", "maze", "--source", str(tmp_path / "train.csv"), "--out", str(tmp_path / "o"),
                 "--skip-bad", "--overwrite"]) == 0
    assert '"skipped_bad_rows": 4' in capsys.readouterr().out


def test_overlap_spreadsheet_csv_and_output_folder(tmp_path, capsys):
    made = M.generate_mazes(5, seed=4, min_path=30)
    pairs = list(zip(made["inputs"], made["labels"]))
    turned = tuple(augment_maze(x, 1, N) for x in pairs[1])
    _csv(tmp_path / "train.csv", pairs[:4], prefix="\ufeff", suffix="\n\n")  # a byte-order mark, blank last lines
    _csv(tmp_path / "test.csv", [pairs[0], turned, pairs[4]])
    build = lambda out, *extra: main(["data", "build", "maze", "--source", str(tmp_path / "train.csv"), "--out",
                                      str(tmp_path / out), *extra])
    assert build("ds") == 0
    assert "test mazes also in training: 1 exactly, 2 up to dihedral transforms (of 3)" in capsys.readouterr().err
    summary = json.loads((tmp_path / "ds" / "build.json").read_text())
    assert summary["test_in_train"] == 1 and summary["test_in_train_up_to_dihedral_transforms"] == 2
    assert build("refused", "--no-overlap") == 2
    assert "--no-overlap refuses" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert build("ds") == 2 and "pass --overwrite" in capsys.readouterr().err
    assert build("ds", "--overwrite") == 0
    (tmp_path / "ds" / "mine.txt").write_text("x")
    assert build("ds", "--overwrite") == 2 and "it holds mine.txt" in capsys.readouterr().err
    assert build(".", "--overwrite") == 2 and "holds the input" in capsys.readouterr().err
