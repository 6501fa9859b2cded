"""The package's layering, checked on its source: every import of trm_fast/ and kernels/ (= trm_fast.kernels), at
module level or inside a function, plain or by string (importlib.import_module, __import__), must point down the
layers below. A new arrow back (data -> eval, eval -> train, model -> kernels, kernels -> autograd, ...) fails here
with the file, the line and the rule it breaks.

    cli -> tools -> train -> eval -> checkpoint -> data
    train, eval, checkpoint -> model -> ops -> kernels
    config, files, device, threads, token_loss (leaves): importable from everywhere, import nothing of the package
"""
from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# layer -> the layers it may import (itself and the leaves always allowed)
ALLOWED = {
    "cli": {"tools", "train", "eval", "checkpoint", "data", "model", "ops", "kernels"},
    "tools": {"train", "eval", "checkpoint", "data", "model", "ops", "kernels"},
    "train": {"eval", "checkpoint", "data", "model"},
    "eval": {"checkpoint", "data", "model"},
    "checkpoint": {"data", "model"},
    "data": set(),
    "model": {"ops"},
    "ops": {"kernels"},
    "kernels": set(),
    "leaf": set(),
}
# trm_fast.token_loss: the published token loss, the trainer's and the op set's reference (torch only)
LEAVES = ("trm_fast.config", "trm_fast.files", "trm_fast.device", "trm_fast.threads", "trm_fast.token_loss",
          "trm_fast._sudoku", "trm_fast._maze")

# third-party modules a layer must not import (kernels know nothing of autograd; the references run without Triton)
FORBIDDEN_EXTERNAL = {
    "kernels": ("torch.autograd", "torch.library"),
    "data": ("triton",),
    "leaf": ("triton",),
}

# Imports that must stay inside functions, and why.
MUST_BE_LAZY = {
    # cli sets thread counts and environment variables (TRITON_INTERPRET, OMP_*) before torch starts (that nothing
    # cli imports at its top imports torch, transitively, is checked by running it: tests/test_cli.py)
    "trm_fast.cli": ("torch", "triton"),
    # TRITON_INTERPRET must be set before the first kernel module is imported
    "trm_fast.ops": ("triton", "trm_fast.kernels", "trm_fast.ops.attention", "trm_fast.ops.cross_entropy",
                     "trm_fast.ops.norm", "trm_fast.ops.swiglu"),
}


def layer_of(module: str) -> str | None:
    if not (module == "trm_fast" or module.startswith("trm_fast.")):
        return None
    if module == "trm_fast" or module.startswith(LEAVES):
        return "leaf"
    part = module.split(".")[1]
    if part in ("cli", "__main__"):
        return "cli"
    if part in ALLOWED:
        return part
    raise AssertionError(f"module {module} belongs to no layer: add it to tests/test_import_graph.py")


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)
    parts = rel[:-3].split(os.sep)
    if parts[0] == "kernels":
        parts = ["trm_fast"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _string_import(node: ast.Call) -> str | None:
    """The module named by importlib.import_module("...") / __import__("...") (an f-string's constant prefix)."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return arg.values[0].value.rstrip(".")
    return None


def imports_of(source: str, module: str) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module level) for every import in the source."""
    tree = ast.parse(source)
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
    found = []

    def visit(node, top_level):
        for child in ast.iter_child_nodes(node):
            nested = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, top_level) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((child.lineno, base, top_level))
                found.extend((child.lineno, f"{base}.{a.name}", top_level) for a in child.names
                             if base.startswith("trm_fast"))
            elif isinstance(child, ast.Call) and (name := _string_import(child)):
                found.append((child.lineno, name, top_level))
            visit(child, nested)

    visit(tree, True)
    return found


def violations(source: str, module: str, path: str = "<source>") -> list[str]:
    layer = layer_of(module)
    faults = []
    for line, target, top_level in imports_of(source, module):
        where = f"{path}:{line}: {module} imports {target}"
        target_layer = layer_of(target) if target.startswith("trm_fast") else None
        if target.startswith("trm_fast") and target_layer is None:
            continue
        if target_layer is not None and target_layer not in ("leaf", layer) and target_layer not in ALLOWED[layer]:
            faults.append(f"{where}: layer {layer} may not import layer {target_layer}")
        if target_layer == "cli" and layer != "cli":
            faults.append(f"{where}: nothing imports the CLI back")
        if layer == "leaf" and target_layer not in (None, "leaf"):
            faults.append(f"{where}: config/files are leaves and import nothing of the package")
        for banned in FORBIDDEN_EXTERNAL.get(layer, ()):
            if target == banned or target.startswith(banned + "."):
                faults.append(f"{where}: layer {layer} may not import {banned}")
        lazy = MUST_BE_LAZY.get(module, ())
        if top_level and any(target == m or target.startswith(m + ".") for m in lazy):
            faults.append(f"{where}: must be imported inside a function (see MUST_BE_LAZY)")
    return faults


def package_files():
    for top in ("trm_fast", "kernels"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            if os.path.islink(folder):  # a development checkout may link trm_fast/kernels -> kernels
                continue
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def test_the_package_imports_point_one_way():
    faults = []
    for path in package_files():
        with open(path, encoding="utf-8") as f:
            faults += violations(f.read(), module_name(path), os.path.relpath(path, ROOT))
    assert not faults, "forbidden imports:\n" + "\n".join(faults)


@pytest.mark.parametrize("module, source, rule", [
    ("trm_fast.data.arc", "from trm_fast.eval.arc import CANVAS", "layer data may not import layer eval"),
    ("trm_fast.eval.evaluate", "def f():\n    from trm_fast.train.losses import IGNORE_LABEL", "layer eval may not import layer train"),
    ("trm_fast.model.trm", "from trm_fast.kernels import attention", "layer model may not import layer kernels"),
    ("trm_fast.train.trainer", "import trm_fast.kernels.norm", "layer train may not import layer kernels"),
    ("trm_fast.kernels.norm", "import torch.autograd", "layer kernels may not import torch.autograd"),
    ("trm_fast.kernels.norm", "from torch.autograd import Function", "layer kernels may not import torch.autograd"),
    ("trm_fast.data.build", "import importlib\nimportlib.import_module('trm_fast.eval.arc')", "layer data may not import layer eval"),
    ("trm_fast.data.build", "import importlib\nm = 'x'\nimportlib.import_module(f'trm_fast.train.{m}')", "layer data may not import layer train"),
    ("trm_fast.ops.norm", "from trm_fast.model import TRM", "layer ops may not import layer model"),
    ("trm_fast.tools.compare", "from trm_fast.cli import build_config", "nothing imports the CLI back"),
    ("trm_fast.config", "from trm_fast.model import TRM", "leaves and import nothing"),
    ("trm_fast.cli", "import torch", "must be imported inside a function"),
    ("trm_fast.ops", "from trm_fast.ops import attention", "must be imported inside a function"),
    ("trm_fast.eval.inference", "from ..train import trainer", "layer eval may not import layer train"),
])
def test_a_forbidden_arrow_is_caught(module, source, rule):
    faults = violations(source, module)
    assert any(rule in fault for fault in faults), faults


def test_allowed_arrows_pass():
    assert violations("from trm_fast.data.format import IGNORE_LABEL", "trm_fast.eval.evaluate") == []
    assert violations("from trm_fast.ops import get_ops", "trm_fast.model.trm") == []
    assert violations("def f():\n    import torch", "trm_fast.cli") == []
    assert violations("from trm_fast.config import PRESETS", "trm_fast.cli") == []
    assert violations("from trm_fast.tools.bench.cli import add_bench_subparser", "trm_fast.cli") == []
