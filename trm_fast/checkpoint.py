"""Checkpoints of the whole training state, written atomically and verified on load.

    <run>/checkpoints/step_00001000/
        model.safetensors   every model tensor: weights, the puzzle-embedding table, the initial y/z buffers
        ema.safetensors     the EMA shadow (when EMA is on)
        state.pt            optimiser states, the training carry of every slot, RNG states, sampler position,
                            config and dataset manifest; loadable with torch.load(weights_only=True)
        meta.json           step, config name, architecture fingerprint, size and sha256 of each file
    <run>/checkpoints/latest   name of the newest complete checkpoint (a convenience for people and scripts)

A checkpoint folder is written under a temporary name, fsynced and renamed when complete, so a crash never leaves a
half-written checkpoint under a real name; a corrupted or truncated file is refused with its name and what is wrong.

Below both training (which writes and resumes) and evaluation (which loads a trained model): it imports neither.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trm_fast.config import TRMConfig
from trm_fast.files import atomic_write_text, read_json

FORMAT = "trm_fast-checkpoint-1"
_PREFIX = "step_"
PUZZLE_TABLE = "puzzle_emb.weight"  # one row per puzzle identifier of the dataset trained on


def _warn(message: str) -> None:
    """One line on stderr (warnings.warn would add its source line to what the user reads)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def torch_load_reason(exc: BaseException, path: str | None = None) -> str:
    """Why torch.load failed on `path`, in one line: for a file that is neither a zip archive nor a pickle (what
    torch.save writes), what it starts with; else the weights-only unpickler's reason or the first sentence of the
    message (torch's texts run to several lines of advice)."""
    if path is not None:
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError:
            head = b""
        if head and not head.startswith((b"PK\x03\x04", b"\x80")):
            return f"not a file torch.save writes (a zip archive or a pickle): it starts with {head!r}"
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__)
    return line.split(". ")[0].rstrip(".")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def architecture_fingerprint(tensors: dict[str, torch.Tensor]) -> list:
    """Sorted [name, shape, dtype] of every tensor: two models load each other's weights iff these agree."""
    return sorted([name, list(t.shape), str(t.dtype).replace("torch.", "")] for name, t in tensors.items())


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous views: give every tensor its own compact copy
    out = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"checkpoint tensor {name!r} is a {type(t).__name__}, not a tensor")
        out[name] = t.detach().to("cpu", copy=True).contiguous()
    return out


def _fsync_path(path: str) -> None:
    """fsync a file or a folder (the folder entry makes renames durable); silently skipped where unsupported."""
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


# ---------------------------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict:
    """RNG states of torch (CPU, and the current CUDA device when CUDA is in use), numpy's global generator and
    python's random, as tensors, lists and scalars that torch.load(weights_only=True) reads back."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": [int(v) for v in py_internal], "gauss": py_gauss},
    }
    # only the device this process uses: asking for every device would create a context on each of them
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


# ---------------------------------------------------------------------------------------------- writing


def _step_of(name: str) -> int | None:
    if not name.startswith(_PREFIX):
        return None
    digits = name[len(_PREFIX):]
    return int(digits) if digits.isdigit() else None


def save_checkpoint(run_dir: str, step: int, *, model_state: dict, ema_state: dict | None, train_state: dict,
                    keep_last: int = 3) -> str:
    """Writes `<run_dir>/checkpoints/step_<step:08d>/` atomically, prunes to the newest `keep_last` complete
    checkpoints (never the one just written), updates `latest`. Returns the folder."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    name = f"{_PREFIX}{int(step):08d}"
    final = os.path.join(root, name)
    _remove_stale_temporaries(root)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root)
    try:
        model_cpu = _contiguous_cpu(model_state)
        files = ["model.safetensors", "state.pt"]
        save_file(model_cpu, os.path.join(tmp, "model.safetensors"))
        if ema_state is not None:
            save_file(_contiguous_cpu(ema_state), os.path.join(tmp, "ema.safetensors"))
            files.append("ema.safetensors")
        torch.save(train_state, os.path.join(tmp, "state.pt"))
        config = train_state.get("config") if isinstance(train_state, dict) else None
        meta = {
            "format": FORMAT,
            "step": int(step),
            "config_name": config.get("name") if isinstance(config, dict) else None,
            "torch_version": torch.__version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "architecture": architecture_fingerprint(model_cpu),
            "files": {f: {"bytes": os.path.getsize(os.path.join(tmp, f)), "sha256": _sha256(os.path.join(tmp, f))}
                      for f in files},
        }
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        for f in os.listdir(tmp):
            _fsync_path(os.path.join(tmp, f))
        _fsync_path(tmp)
        old = None
        if os.path.exists(final):  # the same step again (e.g. a resumed run): swap, then delete the old folder
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=root)
            os.replace(final, os.path.join(old, name))
        os.replace(tmp, final)
        _fsync_path(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _set_aside_later_checkpoints(root, int(step))
    atomic_write_text(os.path.join(root, "latest"), name + "\n", fsync=True)
    _prune(run_dir, final, keep_last)
    return final


def _prune(run_dir: str, final: str, keep_last: int) -> None:
    """Deletes all but the newest `keep_last` checkpoints. Only folders that look complete (meta.json readable,
    every file present with its recorded size: a cheap check, no hashing) count towards the kept ones, so a damaged
    newer checkpoint never costs the last usable older one."""
    kept = 0
    for path in reversed(list_checkpoints(run_dir)):
        if kept < keep_last and (path == final or _looks_complete(path)):
            kept += 1
        elif path != final:
            shutil.rmtree(path, ignore_errors=True)


def _looks_complete(path: str) -> bool:
    try:
        with open(os.path.join(path, "meta.json")) as f:
            files = json.load(f)["files"]
        return all(os.path.getsize(os.path.join(path, name)) == info["bytes"] for name, info in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remove_stale_temporaries(root: str) -> None:
    """Temporary folders of saves that died (one writer per run: rank 0), older than a minute."""
    for entry in os.listdir(root):
        if entry.startswith(f".{_PREFIX}") and (".tmp-" in entry or ".old-" in entry):
            path = os.path.join(root, entry)
            try:
                if time.time() - os.path.getmtime(path) > 60:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def _set_aside_later_checkpoints(root: str, step: int) -> None:
    """A run resumed from an older checkpoint makes the later ones a different history: rename them so that
    `--resume auto` never mixes the two (nothing is deleted)."""
    for entry in sorted(os.listdir(root)):
        later = _step_of(entry)
        if later is not None and later > step:
            target = os.path.join(root, f"abandoned-{entry}-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(os.path.join(root, entry), target)
            _warn(f"checkpoint {os.path.join(root, entry)} is later than the step just saved ({step}) and belongs to "
                  f"another history: moved to {target}")


# ---------------------------------------------------------------------------------------------- reading


def list_checkpoints(run_dir: str) -> list[str]:
    """Checkpoint folders under `<run_dir>/checkpoints` (not yet verified), oldest first."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    names = sorted((s, n) for n in os.listdir(root) if (s := _step_of(n)) is not None and os.path.isdir(os.path.join(root, n)))
    return [os.path.join(root, n) for _, n in names]


def verify_checkpoint(path: str) -> dict:
    """Reads meta.json and checks every file's size and sha256. Returns meta; raises ValueError naming the file
    and what is wrong."""
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such checkpoint folder")
    if not os.path.isfile(meta_path):
        raise ValueError(f"{meta_path}: missing, so {path} is not a complete trm_fast checkpoint")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path}: corrupted (not valid JSON: {exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or "architecture" not in meta:
        raise ValueError(f"{meta_path}: not a trm_fast checkpoint description (no 'files' / 'architecture')")
    if "model.safetensors" not in meta["files"]:
        raise ValueError(f"{meta_path}: lists no model.safetensors")
    for name, info in meta["files"].items():
        file_path = os.path.join(path, name)
        if not os.path.isfile(file_path):
            raise ValueError(f"{file_path}: missing from the checkpoint")
        size = os.path.getsize(file_path)
        if size != info["bytes"]:
            raise ValueError(f"{file_path}: truncated or altered ({size} bytes, meta.json records {info['bytes']})")
        if _sha256(file_path) != info["sha256"]:
            raise ValueError(f"{file_path}: corrupted (sha256 differs from the one meta.json records)")
    return meta


def scan_checkpoints(run_dir: str) -> tuple[str | None, list[str]]:
    """(the newest checkpoint whose files verify or None, why each newer one is unusable: one line per checkpoint,
    naming its file and what is wrong)."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
            return path, skipped
        except ValueError as exc:
            skipped.append(str(exc))
    return None, skipped


def find_latest_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint whose files verify. An unusable newer one is skipped with a warning naming it."""
    path, skipped = scan_checkpoints(run_dir)
    for reason in skipped:
        _warn(f"skipping unusable checkpoint: {reason}")
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """{"model", "ema" (None without EMA), "state", "meta"} of a checkpoint folder, verified first."""
    meta = verify_checkpoint(path)
    device = str(torch.device(map_location))

    def tensors(file_name: str):
        file_path = os.path.join(path, file_name)
        try:
            return load_file(file_path, device=device)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ValueError(f"{file_path}: unreadable safetensors file ({exc})") from None

    model = tensors("model.safetensors")
    ema = tensors("ema.safetensors") if "ema.safetensors" in meta["files"] else None
    state_path = os.path.join(path, "state.pt")
    try:
        state = torch.load(state_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        reason = torch_load_reason(exc, state_path)
        raise ValueError(f"{state_path}: unreadable with torch.load(weights_only=True) ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{state_path}: holds a {type(state).__name__}, not a trm_fast training state (a dict)")
    return {"model": model, "ema": ema, "state": state, "meta": meta}


def check_train_state(path: str, state: dict, needed: tuple[str, ...], purpose: str) -> None:
    """Raises ValueError naming `path`/state.pt and the entries `purpose` needs that it lacks (a file whose hashes
    match but whose content is not a trm_fast training state)."""
    missing = [key for key in needed if key not in state]
    if missing:
        raise ValueError(f"{os.path.join(path, 'state.pt')}: no {', '.join(repr(k) for k in missing)} "
                         f"entr{'ies' if len(missing) > 1 else 'y'}, which {purpose} needs")


def check_compatible(meta: dict, model: torch.nn.Module, rows_may_differ: tuple[str, ...] = ()) -> None:
    """Raises ValueError naming the first tensor whose name, shape or dtype differs between the checkpoint and the
    model (another architecture). Tensors in `rows_may_differ` may differ in their first dimension (the puzzle
    table of another dataset). A bf16 tensor saved for an fp32 one is compatible: load_state_dict widens it exactly
    (initial states of float32 runs saved before they were kept in fp32)."""
    model = getattr(model, "module", model)
    saved = {name: (list(shape), dtype) for name, shape, dtype in meta["architecture"]}
    current = {name: (list(t.shape), str(t.dtype).replace("torch.", "")) for name, t in model.state_dict().items()}
    for name in sorted(set(saved) | set(current)):
        if name not in current:
            raise ValueError(f"architecture mismatch: checkpoint tensor {name!r} does not exist in this model")
        if name not in saved:
            raise ValueError(f"architecture mismatch: model tensor {name!r} is missing from the checkpoint")
        (saved_shape, saved_dtype), (shape, dtype) = saved[name], current[name]
        if name in rows_may_differ and (saved_shape[1:], saved_dtype) == (shape[1:], dtype):
            continue
        widened = saved[name] == (current[name][0], "bfloat16") and current[name][1] == "float32"
        if saved[name] != current[name] and not widened:
            raise ValueError(f"architecture mismatch: tensor {name!r} has shape {saved[name][0]} {saved[name][1]} in "
                             f"the checkpoint, {current[name][0]} {current[name][1]} in this model")


# ---------------------------------------------------------------------------------------------- a trained model


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder, or a run folder (its latest usable checkpoint)."""
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    latest = find_latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"no usable checkpoint under {path!r} (expected a checkpoint folder or a run folder)")
    return latest


# What makes a checkpoint the model of the run it sits in: the config's name (the preset) and its model section,
# less the settings that only say how the same weights run or train (docs/checkpoints.md).
RUN_IDENTITY_EXEMPT = ("forward_dtype", "backend", "recompute", "halt_exploration_prob")


def _run_config_differences(run_config: dict, config: dict) -> list[str]:
    """The identity fields (name, model.*) in which a checkpoint's config differs from its run's config.json. A
    field only one of them has (written by another version of trm_fast) is not compared."""
    pairs = [("name", config.get("name"), run_config.get("name"))]
    run_model, model = run_config.get("model"), config.get("model")
    if isinstance(run_model, dict) and isinstance(model, dict):
        pairs += [(f"model.{field}", model.get(field), run_model.get(field))
                  for field in sorted(set(run_model) & set(model)) if field not in RUN_IDENTITY_EXEMPT]
    return [f"{key} is {ours!r} in the checkpoint, {theirs!r} in config.json" for key, ours, theirs in pairs
            if ours != theirs]


def check_run_config(path: str, config: dict) -> None:
    """A checkpoint under <run>/checkpoints/ must be that run's model: raises ValueError when its config differs
    from <run>/config.json in the identity fields (a checkpoint of another run placed in the folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    run_config_path = os.path.join(os.path.dirname(folder), "config.json")
    if os.path.basename(folder) != "checkpoints" or not os.path.isfile(run_config_path):
        return
    run_config = read_json(run_config_path)
    if not isinstance(run_config, dict):
        raise ValueError(f"{run_config_path}: not a trm_fast run configuration (a JSON object)")
    differences = _run_config_differences(run_config, config)
    if differences:
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise ValueError(f"checkpoint {path} is not the model of the run {run_config_path} describes: "
                         f"{'; '.join(differences[:3])}{more}; a checkpoint of another run placed there?")


def load_trained_model(path: str, device: torch.device | str = "cpu", use_ema: bool = True, log=None):
    """(model in eval mode with EMA weights where saved, its TRMConfig, the checkpoint's train state) of a
    checkpoint folder or a run folder. A checkpoint inside a run folder must match the run's config.json; `log`
    receives one line naming the checkpoint, its step and preset."""
    from trm_fast.model import build_model

    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    check_train_state(path, ckpt["state"], ("config",), "loading the model")
    if not isinstance(ckpt["state"]["config"], dict):
        raise ValueError(f"{os.path.join(path, 'state.pt')}: its 'config' entry is a "
                         f"{type(ckpt['state']['config']).__name__}, not a configuration (a dict)")
    check_run_config(path, ckpt["state"]["config"])
    config = TRMConfig.from_dict(ckpt["state"]["config"], source=f"{os.path.join(path, 'state.pt')} config")
    if log is not None:
        log(f"checkpoint {path} (step {ckpt['meta'].get('step')}, preset {config.name})")
    model = build_model(config.model)
    check_compatible(ckpt["meta"], model)
    model.load_state_dict(ckpt["model"])
    if use_ema and ckpt.get("ema"):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in ckpt["ema"].items():
                if name in params:
                    params[name].copy_(value)
    model.to(device).eval()
    return model, config, ckpt["state"]
