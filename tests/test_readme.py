"""README.md's Python API example runs as written (its training call is bound, not run: the demo trains)."""
import inspect
import os
import re

import torch

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _python_example() -> str:
    with open(README, encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) == 1, "README.md should hold one Python example"
    return blocks[0]


def test_readme_python_example_runs():
    lines = _python_example().splitlines()
    train_line = [i for i, line in enumerate(lines) if line.startswith("summary = train(")]
    assert len(train_line) == 1
    scope = {}
    exec("\n".join(lines[:train_line[0]]), scope)
    out = scope["out"]
    assert out.logits.shape == (2, 81, 11) and out.q_halt.shape == (2,) and len(out.carry) == 2
    assert not any(t.requires_grad for t in out.carry)
    assert torch.isfinite(out.logits).all()
    # the training call: the names exist and the arguments bind to train's signature
    call = lines[train_line[0]].split("#")[0].strip()
    arguments = re.fullmatch(r"summary = train\((.*)\)", call).group(1)
    config = eval(arguments, scope)
    inspect.signature(scope["train"]).bind(config)
