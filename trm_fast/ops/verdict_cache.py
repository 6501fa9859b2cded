"""The self-check's verdicts, kept between runs in the user cache folder ($XDG_CACHE_HOME/trm_fast, else
~/.cache/trm_fast): one JSON file per GPU model and compute capability, holding the software versions it was made
with (torch, triton, trm_fast) and, per checked shape (self_check.CheckShape.key), op -> {"ok", "error"}.

A file that cannot be read, is not of this FORMAT, or was made with other versions is ignored: the ops are checked
again and the file rewritten (atomically, trm_fast.files). A cache folder that cannot be written costs only the
check's time on the next run.
"""
from __future__ import annotations

import json
import os
import re

import torch

from trm_fast.files import atomic_write_json

FORMAT = 1


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "trm_fast")


def environment(device: torch.device) -> dict:
    """What a verdict depends on: the device model (its name and compute capability; "cpu" for Triton's
    interpreter) and the versions of torch, triton and trm_fast."""
    import trm_fast

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    device = torch.device(device)
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        name, capability = properties.name, f"{properties.major}.{properties.minor}"
    else:
        name, capability = f"{device.type} (Triton interpreter)", None
    return {"device": name, "capability": capability, "torch": torch.__version__, "triton": triton_version,
            "trm_fast": trm_fast.__version__}


def cache_path(env: dict) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    suffix = f"-sm{env['capability'].replace('.', '')}" if env["capability"] else ""
    return os.path.join(cache_dir(), f"self_check-{slug}{suffix}.json")


def _read(env: dict) -> dict:
    """The file's verdicts by shape key when it is readable and made in `env`, else {}."""
    try:
        with open(cache_path(env)) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("format") != FORMAT or content.get("environment") != env:
        return {}
    verdicts = content.get("verdicts")
    return verdicts if isinstance(verdicts, dict) else {}


def load(env: dict, shape_key: str) -> dict[str, dict]:
    """op -> {"ok": bool, "error": str | None} of the ops checked at this shape in this environment (valid entries
    only; an op missing here has to be checked)."""
    found = _read(env).get(shape_key)
    if not isinstance(found, dict):
        return {}
    return {op: entry for op, entry in found.items()
            if isinstance(entry, dict) and isinstance(entry.get("ok"), bool)
            and (entry.get("error") is None or isinstance(entry.get("error"), str))}


def store(env: dict, shape_key: str, verdicts: dict[str, dict]) -> None:
    """Adds these ops' verdicts at this shape to the environment's file (a stale or broken file is replaced)."""
    content = _read(env)
    content[shape_key] = {**load(env, shape_key), **verdicts}
    path = cache_path(env)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json(path, {"format": FORMAT, "environment": env, "verdicts": content})
    except OSError:
        pass  # a read-only home: the verdict still holds for this process
