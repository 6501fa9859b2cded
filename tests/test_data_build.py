"""`trm-fast data build sudoku` from published-format CSVs: the on-disk result, augmentation validity,
subsampling, and every bad-row class refused with file and line (or skipped and counted)."""
import numpy as np
import pytest

from trm_fast.cli import main
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
