"""Checkpoints of the whole training state, written atomically.

    <run>/checkpoints/step_00001000/
        model.safetensors   every model tensor: weights, the puzzle-embedding table, the initial y/z buffers
        ema.safetensors     the EMA shadow (when EMA is on)
        state.pt            optimiser states, the training carry of every slot, RNG states, sampler position,
                            config and dataset manifest; loadable with torch.load(weights_only=True)
        meta.json           step, architecture fingerprint, sha256 of each file
    <run>/checkpoints/latest   name of the newest complete checkpoint

A checkpoint folder is first written under a temporary name and renamed when complete, so a crash never
leaves a half-written checkpoint under a real name; a corrupted or truncated file is refused with its name.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_FILES = ("model.safetensors", "state.pt")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def architecture_fingerprint(tensors: dict[str, torch.Tensor]) -> list:
    return sorted([name, list(t.shape), str(t.dtype).replace("torch.", "")] for name, t in tensors.items())


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous views: give every tensor its own copy
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def capture_rng_state() -> dict:
    """RNG states of torch (CPU and CUDA), numpy's global generator and python's random, in a form that
    torch.load(weights_only=True) reads back."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str, step: int, *, model_state: dict, ema_state: dict | None, train_state: dict,
                    keep_last: int = 3) -> str:
    """Writes a checkpoint atomically, prunes to the newest `keep_last`, updates `latest`. Returns its folder."""
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    name = f"step_{step:08d}"
    final = os.path.join(root, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root)
    try:
        model_cpu = _contiguous_cpu(model_state)
        save_file(model_cpu, os.path.join(tmp, "model.safetensors"))
        files = ["model.safetensors", "state.pt"]
        if ema_state is not None:
            save_file(_contiguous_cpu(ema_state), os.path.join(tmp, "ema.safetensors"))
            files.append("ema.safetensors")
        torch.save(train_state, os.path.join(tmp, "state.pt"))
        meta = {
            "step": step,
            "format": "trm_fast-checkpoint-1",
            "architecture": architecture_fingerprint(model_cpu),
            "files": {f: {"sha256": _sha256(os.path.join(tmp, f)), "bytes": os.path.getsize(os.path.join(tmp, f))} for f in files},
        }
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        for f in os.listdir(tmp):
            with open(os.path.join(tmp, f), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if os.path.exists(final):  # re-saving the same step: move the old one aside first
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest_tmp = os.path.join(root, ".latest.tmp")
    with open(latest_tmp, "w") as f:
        f.write(name + "\n")
    os.replace(latest_tmp, os.path.join(root, "latest"))
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoint folders, oldest first."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step_") and os.path.isfile(os.path.join(root, n, "meta.json")))
    return [os.path.join(root, n) for n in names]


def verify_checkpoint(path: str) -> dict:
    """Reads meta.json and checks every file's size and sha256; raises ValueError naming what is wrong."""
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise ValueError(f"{meta_path}: missing; {path!r} is not a complete trm_fast checkpoint")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}: corrupted ({exc})") from None
    for name, info in meta.get("files", {}).items():
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            raise ValueError(f"{file_path}: missing from checkpoint")
        size = os.path.getsize(file_path)
        if size != info["bytes"]:
            raise ValueError(f"{file_path}: truncated or altered ({size} bytes, expected {info['bytes']})")
        if _sha256(file_path) != info["sha256"]:
            raise ValueError(f"{file_path}: corrupted (sha256 mismatch)")
    return meta


def find_latest_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint that verifies; corrupted ones are skipped with a warning naming them."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
            return path
        except ValueError as exc:
            warnings.warn(f"skipping unusable checkpoint: {exc}")
    return None


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """{"model", "ema" (or None), "state", "meta"} of a verified checkpoint."""
    meta = verify_checkpoint(path)
    model = load_file(os.path.join(path, "model.safetensors"), device=str(map_location))
    ema_path = os.path.join(path, "ema.safetensors")
    ema = load_file(ema_path, device=str(map_location)) if os.path.isfile(ema_path) else None
    try:
        state = torch.load(os.path.join(path, "state.pt"), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"{os.path.join(path, 'state.pt')}: unreadable ({exc})") from None
    return {"model": model, "ema": ema, "state": state, "meta": meta}


def check_compatible(meta: dict, model: torch.nn.Module) -> None:
    """Raises ValueError naming the first tensor whose name, shape or dtype differs from the model's."""
    saved = {name: (shape, dtype) for name, shape, dtype in meta["architecture"]}
    current = {name: (list(t.shape), str(t.dtype).replace("torch.", "")) for name, t in model.state_dict().items()}
    for name in sorted(set(saved) | set(current)):
        if name not in current:
            raise ValueError(f"checkpoint tensor {name!r} does not exist in this model (another architecture?)")
        if name not in saved:
            raise ValueError(f"model tensor {name!r} is missing from the checkpoint (another architecture?)")
        if saved[name] != current[name]:
            raise ValueError(f"tensor {name!r}: checkpoint has shape/dtype {saved[name]}, this model {current[name]}")
