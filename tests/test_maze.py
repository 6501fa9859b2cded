"""Maze-Hard: generated mazes are valid and labelled with a shortest path, augmentation keeps them valid, the
native and Python generators agree on the rules, the CSV reader refuses bad rows, and the build round-trips."""
import numpy as np
import pytest

from trm_fast.cli import main
from trm_fast.data import maze as M
from trm_fast.data.format import read_split


def _check(inp, lab, min_path, n=30):
    assert (inp == M.START).sum() == 1 and (inp == M.GOAL).sum() == 1
    start, goal = int(np.argmax(inp == M.START)), int(np.argmax(inp == M.GOAL))
    walls = int((inp == M.WALL).sum())
    dist = M._bfs_moves(inp, start, goal, n)
    path = np.flatnonzero(lab == M.PATH)
    assert np.array_equal(lab[lab != M.PATH], inp[lab != M.PATH]) and (inp[path] == M.OPEN).all()
    assert len(path) + 1 == dist[start] > min_path  # a shortest path: moves = path cells + 1
    cells = [start] + sorted(path.tolist(), key=lambda c: -dist[c]) + [goal]
    for a, b in zip(cells, cells[1:]):  # consecutive cells are neighbours, one step closer each time
        assert abs(a // n - b // n) + abs(a % n - b % n) == 1 and dist[b] == dist[a] - 1
    return walls


@pytest.mark.parametrize("native", [True, False])
def test_generated_mazes_are_valid(native, monkeypatch):
    if not native:
        monkeypatch.setattr(M, "_native", lambda: None)
    elif M._native() is None:
        pytest.skip("native extension not built")
    with pytest.warns(UserWarning) if not native else _nothing():
        made = M.generate_mazes(6, seed=3, min_path=40)
    for inp, lab, walls, moves in zip(made["inputs"], made["labels"], made["walls"], made["path_moves"]):
        assert _check(inp, lab, 40) == walls and 270 <= walls <= 450 and moves > 40
    assert made["attempts"] >= 6


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_native_generation_is_seeded():
    if M._native() is None:
        pytest.skip("native extension not built")
    a, b = M.generate_mazes(3, seed=7, min_path=30, threads=1), M.generate_mazes(3, seed=7, min_path=30, threads=2)
    assert np.array_equal(a["inputs"], b["inputs"])  # independent of the number of threads


def test_dihedral_augmentation_keeps_mazes_valid():
    made = M.generate_mazes(2, seed=1, min_path=30)
    for inp, lab in zip(made["inputs"], made["labels"]):
        for k in range(8):
            _check(M.dihedral_tokens(inp, k), M.dihedral_tokens(lab, k), 30)


def test_build_and_csv_errors(tmp_path, capsys):
    assert main(["data", "build", "maze", "--count", "4", "--min-path", "30", "--aug", "2", "--out", str(tmp_path / "gen")]) == 0
    meta, train = read_split(str(tmp_path / "gen" / "train"))
    assert meta.vocab_size == 6 and meta.seq_len == 900 and len(train["all"].inputs) == 12
    assert (tmp_path / "gen" / "distributions.png").exists()
    chars = {v: c for c, v in zip(M.CHARSET, range(1, 6))}
    text = lambda t: "".join(chars[int(v)] for v in t)
    rows = [(text(i), text(l)) for i, l in zip(train["all"].inputs[:3], train["all"].labels[:3])]
    csv = tmp_path / "train.csv"
    csv.write_text("source,q,a,rating\n" + "\n".join(f"s,{q},{a},0" for q, a in rows) + "\n")
    (tmp_path / "test.csv").write_text(csv.read_text())
    assert main(["data", "build", "maze", "--source", str(csv), "--out", str(tmp_path / "csv")]) == 0
    _, round_trip = read_split(str(tmp_path / "csv" / "train"))
    assert np.array_equal(round_trip["all"].inputs, train["all"].inputs[:3])
    bad_rows = [rows[0], (rows[1][0].replace("S", " "), rows[1][1]), (rows[2][0][:899] + "x", rows[2][1])]
    csv.write_text("source,q,a,rating\n" + "\n".join(f"s,{q},{a},0" for q, a in bad_rows) + "\n")
    assert main(["data", "build", "maze", "--source", str(csv), "--test-source", str(tmp_path / "test.csv"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "train.csv:3: field q must have exactly one 'S'" in capsys.readouterr().err
    assert main(["data", "build", "maze", "--source", str(csv), "--test-source", str(tmp_path / "test.csv"),
                 "--out", str(tmp_path / "bad"), "--skip-bad"]) == 0
    assert '"skipped_bad_rows": 2' in capsys.readouterr().out
