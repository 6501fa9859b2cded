"""Writing files so that nothing half-written is ever left under the final name: write a temporary file beside it,
then os.replace (atomic on POSIX). Used by every module that writes results, logs and figures. And reading JSON
with errors that name the file, and PyYAML's errors in one line."""
from __future__ import annotations

import json
import os


def atomic_write_text(path: str, text: str, fsync: bool = False) -> None:
    """`fsync` also forces the bytes to disk before the rename (checkpoints: a crash leaves the old or the new)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str, data, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent, default=str))


def read_json(path: str, missing_hint: str = ""):
    """A JSON file's content; a missing file or invalid JSON is a ValueError naming the path (and the line)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file" + (f" ({missing_hint})" if missing_hint else ""))
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None


def yaml_error_text(exc: Exception) -> str:
    """A PyYAML error in one line: where (line, column) and what is wrong, without the source excerpts and caret
    lines PyYAML prints."""
    problem = getattr(exc, "problem", None)
    if not problem:
        return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    mark, context, context_mark = (getattr(exc, name, None) for name in ("problem_mark", "context", "context_mark"))
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
    if context:
        text += f" ({context}" + (f" at line {context_mark.line + 1}, column {context_mark.column + 1}"
                                  if context_mark is not None else "") + ")"
    return text


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Saves a matplotlib figure atomically, closes it and returns `path`."""
    import matplotlib.pyplot as plt

    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path
