"""`trm-fast data build sudoku` from published-format CSVs: the on-disk result, augmentation validity,
subsampling, every bad-row class refused with file and line (or skipped and counted), spreadsheet CSVs; the
output folder (never one this tool did not write, a rebuild only with --overwrite, recipes rebuilt over their own);
train/test overlap counted, exactly and up to symmetry, and refused with --no-overlap."""
import json
import os

import numpy as np
import pytest

from trm_fast.cli import main
from trm_fast.data import sudoku as S
from trm_fast.data.augment import augment_sudoku_pair
from trm_fast.data.format import read_split
from trm_fast.data.sudoku import is_valid_solution, solve, tokens_to_grid

HARD = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
SEVENTEEN_CLUES = "000000010400000000020000000000050407008000300001090000300400200050100000000806000"


def _rows():
    out = []
    for text in (HARD, SEVENTEEN_CLUES):
        grid = np.array([0 if c in ".0" else int(c) for c in text]).reshape(9, 9)
        solution = solve(grid)
        out.append((text.replace("0", "."), "".join(map(str, solution.ravel()))))
    return out


def _write(path, rows, header="source,q,a,rating"):
    path.write_text(header + "\n" + "\n".join(f"src,{q},{a},5" for q, a in rows) + "\n")


def test_build_from_csv(tmp_path, capsys):
    rows = _rows()
    _write(tmp_path / "train.csv", rows)
    _write(tmp_path / "test.csv", rows[:1])
    assert main(["data", "build", "sudoku", "--source", str(tmp_path / "train.csv"), "--out", str(tmp_path / "ds"),
                 "--aug", "3", "--subsample", "2"]) == 0
    meta, sets = read_split(str(tmp_path / "ds" / "train"))
    assert meta.vocab_size == 11 and meta.seq_len == 81 and len(sets["all"].inputs) == 2 * 4
    assert list(sets["all"].group_indices) == [0, 4, 8]
    for x, y in zip(sets["all"].inputs, sets["all"].labels):
        assert is_valid_solution(tokens_to_grid(x, 9), tokens_to_grid(y, 9))
    _, test = read_split(str(tmp_path / "ds" / "test"))
    assert len(test["all"].inputs) == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda q, a: (q[:80], a), "field q has 80 characters"),
    (lambda q, a: ("x" + q[1:], a), "bad character 'x'"),
    (lambda q, a: (q, a[:-1] + ("1" if a[-1] != "1" else "2")), "not a valid solution"),
])
def test_bad_rows_are_named_or_skipped(tmp_path, capsys, mutate, message):
    rows = _rows()
    q, a = mutate(*rows[1])
    _write(tmp_path / "train.csv", [rows[0], (q, a)])
    _write(tmp_path / "test.csv", rows[:1])
    args = ["data", "build", "sudoku", "--source", str(tmp_path / "train.csv"), "--out", str(tmp_path / "ds")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "train.csv:3" in err and message in err
    assert not (tmp_path / "ds").exists()  # nothing half-written
    assert main(args + ["--skip-bad"]) == 0
    assert '"skipped_bad_rows": 1' in capsys.readouterr().out


def test_non_unique_puzzle_and_bad_header(tmp_path, capsys):
    rows = _rows()
    q, a = rows[0]
    empty_q = "." * 81
    _write(tmp_path / "train.csv", [(empty_q, a)])
    _write(tmp_path / "test.csv", rows[:1])
    assert main(["data", "build", "sudoku", "--source", str(tmp_path / "train.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "no unique solution" in capsys.readouterr().err
    _write(tmp_path / "train.csv", rows, header="q,a")
    assert main(["data", "build", "sudoku", "--source", str(tmp_path / "train.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "train.csv:1: expected the header" in capsys.readouterr().err


def _build(tmp_path, train, test, out, *extra):
    return main(["data", "build", "sudoku", "--source", str(train), "--test-source", str(test), "--out", str(out),
                 *extra])


def test_out_never_replaces_what_this_tool_did_not_write(tmp_path, capsys, monkeypatch):
    rows = _rows()
    csv = tmp_path / "h.csv"
    _write(csv, rows)
    mine = tmp_path / "d"
    mine.mkdir()
    (mine / "keep").write_text("x")
    for extra in ([], ["--overwrite"]):
        assert _build(tmp_path, csv, csv, mine, *extra) == 2
        assert "not a dataset this tool wrote (it holds keep)" in capsys.readouterr().err
    assert (mine / "keep").read_text() == "x"
    monkeypatch.chdir(tmp_path)
    assert _build(tmp_path, "h.csv", "h.csv", ".", "--overwrite") == 2
    assert "the current folder" in capsys.readouterr().err and csv.exists() and (mine / "keep").exists()
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "train.csv", rows)
    _write(data / "test.csv", rows[:1])
    assert main(["data", "build", "sudoku", "--source", "data/train.csv", "--out", "data", "--overwrite"]) == 2
    assert "holds the input data/train.csv" in capsys.readouterr().err
    assert sorted(os.listdir(data)) == ["test.csv", "train.csv"]
    # a dataset this tool built: replaced only with --overwrite
    assert _build(tmp_path, csv, csv, tmp_path / "ds") == 0
    assert json.loads((tmp_path / "ds" / "build.json").read_text())["train_examples"] == 2
    capsys.readouterr()
    assert _build(tmp_path, csv, data / "test.csv", tmp_path / "ds") == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert _build(tmp_path, csv, data / "test.csv", tmp_path / "ds", "--overwrite") == 0
    assert json.loads((tmp_path / "ds" / "build.json").read_text())["test_examples"] == 1


def test_generated_and_recipe_datasets_follow_the_same_rule(tmp_path, capsys):
    from trm_fast.data import recipes

    generate = ["data", "build", "sudoku", "--generate", "8", "--size", "4", "--num-test", "2", "--min-blanks", "4",
                "--max-blanks", "6", "--out", str(tmp_path / "g")]
    assert main(generate) == 0
    assert main(generate) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(generate + ["--overwrite"]) == 0
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a dataset this tool wrote"):
        recipes.ensure_recipe("sudoku4-tiny", str(user), log=lambda *a: None)
    assert (user / "notes.txt").exists()


def test_recipe_is_rebuilt_over_its_older_self(tmp_path, monkeypatch):
    from trm_fast.data import recipes

    out = str(tmp_path / "r")
    recipes.ensure_recipe("sudoku4-tiny", out, log=lambda *a: None)
    first = np.load(os.path.join(out, "train", "all__inputs.npy"))
    monkeypatch.setitem(recipes.RECIPES, "sudoku4-tiny", dict(recipes.RECIPES["sudoku4-tiny"], seed=1))
    built = []
    recipes.ensure_recipe("sudoku4-tiny", out, log=built.append)
    assert built and json.loads(open(os.path.join(out, "recipe.json")).read())["spec"]["seed"] == 1
    assert not np.array_equal(np.load(os.path.join(out, "train", "all__inputs.npy")), first)
    built.clear()
    recipes.ensure_recipe("sudoku4-tiny", out, log=built.append)  # reused as it is
    assert not built


def test_overlap_between_splits_is_counted_and_refused_on_request(tmp_path, capsys):
    rows = _rows()
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    _write(train, rows)
    _write(test, rows)  # the same file
    assert _build(tmp_path, train, test, tmp_path / "same") == 0
    captured = capsys.readouterr()
    assert "test puzzles also in training: 2 exactly, 2 up to symmetry (of 2)" in captured.err
    recorded = json.loads((tmp_path / "same" / "build.json").read_text())
    assert recorded["test_in_train"] == 2 and recorded["test_in_train_up_to_symmetry"] == 2
    assert _build(tmp_path, train, test, tmp_path / "refused", "--no-overlap") == 2
    assert "--no-overlap refuses" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    # a test puzzle that is a training puzzle under a symmetry the training set is augmented with
    rng = np.random.default_rng(3)
    grid = lambda text: np.array([0 if c == "." else int(c) for c in text]).reshape(9, 9)
    q, a = (S.grid_to_text(g) for g in augment_sudoku_pair(grid(rows[0][0]), grid(rows[0][1]), rng))
    _write(test, [(q, a)])
    assert _build(tmp_path, train, test, tmp_path / "turned") == 0
    assert "test puzzles also in training: 0 exactly, 1 up to symmetry (of 1)" in capsys.readouterr().err
    assert _build(tmp_path, train, test, tmp_path / "refused", "--no-overlap") == 2
    _write(test, rows[1:])  # with --subsample the check is against the training puzzles kept
    assert _build(tmp_path, train, test, tmp_path / "sub", "--subsample", "1", "--seed", "0") == 0
    kept = json.loads((tmp_path / "sub" / "build.json").read_text())["test_in_train"]
    _, train_set = read_split(str(tmp_path / "sub" / "train"))
    _, test_set = read_split(str(tmp_path / "sub" / "test"))
    assert kept == int(np.array_equal(train_set["all"].inputs[0], test_set["all"].inputs[0]))


def test_spreadsheet_csv_byte_order_mark_and_blank_last_lines(tmp_path, capsys):
    rows = _rows()
    text = "source,q,a,rating\r\n" + "".join(f"src,{q},{a},5\r\n" for q, a in rows)
    (tmp_path / "train.csv").write_bytes(("\ufeff" + text + "\r\n\r\n").encode("utf-8"))
    (tmp_path / "test.csv").write_bytes(("\ufeff" + text + ",,,\n").encode("utf-8"))
    assert _build(tmp_path, tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "ds") == 0
    meta, sets = read_split(str(tmp_path / "ds" / "train"))
    assert len(sets["all"].inputs) == 2
    (tmp_path / "train.csv").write_text(text.replace("\r\nsrc", "\r\n\r\nsrc", 2))  # a blank line between rows
    assert _build(tmp_path, tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "bad") == 2
    assert "train.csv:2: an empty line" in capsys.readouterr().err


def test_uniqueness_check_shows_progress(tmp_path, capsys):
    rows = _rows()
    _write(tmp_path / "train.csv", rows)
    _write(tmp_path / "test.csv", rows[:1])
    assert _build(tmp_path, tmp_path / "train.csv", tmp_path / "test.csv", tmp_path / "ds") == 0
    assert "train.csv: unique solutions" in capsys.readouterr().err
