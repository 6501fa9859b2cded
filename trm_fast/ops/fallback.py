"""`model.backend=auto` that protects its user: the Triton ops a model would run on a CUDA device are first checked
against the reference (trm_fast.ops.self_check, once per device model and software versions, the verdict cached by
trm_fast.ops.verdict_cache); an op that fails runs the reference instead, through the resolver's per-op overrides
(trm_fast.ops.resolve), so the recompute levels (trm_fast.ops.levels) and the memory model see the mix. One warning
per op and process names the op, the error and `trm-fast doctor`.

An op the configuration asks for explicitly (`model.backend=triton`, or a per-op override) never falls back: its
failure is an error naming the op. `model.self_check=false` or TRM_FAST_SELF_CHECK=0 skips the check (the ops then
resolve as without it). Under torchrun rank 0 checks and broadcasts its verdict, so every rank runs the same ops.

`force=True` runs this logic on a device that is not CUDA (the tests, on a CPU under Triton's interpreter): `auto`
then starts from Triton for every op, as it does on a capable GPU.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping

import torch

from trm_fast.config import ModelConfig
from trm_fast.ops import OP_NAMES, resolve, self_check, verdict_cache

SWITCH = "TRM_FAST_SELF_CHECK"  # "0" (or false, off, no) turns the self-check off

_WARNED: set[tuple[str, str]] = set()  # (op, error) warned about in this process
# (device, shape and dtype key) -> op -> verdict, as agreed in this process. Every rank holds the same entries (each
# came from one broadcast), so a later resolve (another model, an EMA copy, an evaluation on some ranks only) needs
# no collective.
_AGREED: dict[tuple[str, str], dict[str, dict]] = {}


def self_check_enabled(config: ModelConfig) -> bool:
    return config.self_check and os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def _say(line: str) -> None:
    print(f"trm_fast self-check: {line}", file=sys.stderr, flush=True)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _agreed(compute: Callable[[], dict]) -> dict:
    """compute() on rank 0, its result on every rank (under torch.distributed; else compute() here)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return compute()
    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def op_verdicts(config: ModelConfig, device, ops: tuple[str, ...],
                progress: Callable[[str], None] | None = _say) -> dict[str, dict]:
    """op -> {"ok": bool, "error": str | None} for `ops` at the model's shapes and forward dtype on `device`: as agreed
    earlier in this process, else from the cache file, else checked now (and cached). Rank 0's answer on every
    rank."""
    device = torch.device(device)
    shape, dtype = self_check.CheckShape.of(config), resolve.forward_dtype(config, device)
    key = f"{shape.key()},{str(dtype).replace('torch.', '')}"

    def compute() -> dict:
        env = verdict_cache.environment(device)
        known = verdict_cache.load(env, key)
        missing = tuple(op for op in ops if op not in known)
        if missing:
            if progress is not None:
                progress(f"checking the Triton ops {', '.join(missing)} on {env['device']} against the reference "
                         f"(once for torch {env['torch']}, triton {env['triton']}; the verdict is kept in "
                         f"{verdict_cache.cache_path(env)}; {SWITCH}=0 skips this)")
            checked = self_check.check_ops(shape, device, dtype, missing, progress=progress)
            found = {op: verdict.to_json() for op, verdict in checked.items()}
            verdict_cache.store(env, key, found)
            known = {**known, **found}
        return {op: known[op] for op in ops}

    agreed = _AGREED.setdefault((str(device), key), {})
    if any(op not in agreed for op in ops):
        agreed.update(_agreed(compute))
    return {op: agreed[op] for op in ops}


def checked_op_implementations(config: ModelConfig, device, overrides: Mapping[str, str] | None = None,
                               ops: tuple[str, ...] = OP_NAMES, force: bool = False,
                               progress: Callable[[str], None] | None = _say) -> dict[str, str]:
    """op name -> "torch" or "triton" for every op, as resolve.op_implementations, with the ops of `ops` (those the
    model calls) that would run Triton checked first: under `auto` a failing op runs the reference (one warning),
    under an explicit choice of Triton its failure raises ValueError naming the op. Where nothing needs checking
    (not CUDA, switched off, no Triton op) this traces in a compiled forward without a graph break."""
    device = torch.device(device)
    asked = dict(overrides or {})  # ops the caller names explicitly
    overrides = {**dict.fromkeys(OP_NAMES, "triton"), **asked} if force and config.backend == "auto" else asked
    implementations = resolve.op_implementations(config, device, overrides=overrides)
    if (device.type != "cuda" and not force) or not self_check_enabled(config):
        return implementations
    to_check = tuple(op for op in ops if implementations[op] == "triton")
    if not to_check:
        return implementations
    return _with_fallback(config, device, implementations, to_check, asked, overrides, progress)


@torch.compiler.disable  # the check runs kernels and reads files: never inside a compiled graph
def _with_fallback(config: ModelConfig, device: torch.device, implementations: dict[str, str],
                   to_check: tuple[str, ...], asked: dict[str, str], overrides: dict[str, str],
                   progress: Callable[[str], None] | None) -> dict[str, str]:
    verdicts = op_verdicts(config, device, to_check, progress if _rank() == 0 else None)
    failed = {op: verdicts[op]["error"] or "failed" for op in to_check if not verdicts[op]["ok"]}
    if not failed:
        return implementations
    explicit = {op: error for op, error in failed.items() if config.backend == "triton" or op in asked}
    if explicit:
        choice = "model.backend=triton" if config.backend == "triton" else "a per-op override to triton"
        raise ValueError(f"{choice}: the Triton {', '.join(explicit)} failed the self-check on this device: "
                         f"{'; '.join(explicit.values())}. model.backend=auto runs the reference for such an op; "
                         f"`trm-fast doctor` reports every op")
    if _rank() == 0:
        for op, error in failed.items():
            if (op, error) not in _WARNED:
                _WARNED.add((op, error))
                warnings.warn(f"model.backend=auto: the Triton {op} failed its check on this device ({error}); "
                              f"{op} runs the PyTorch reference instead. `trm-fast doctor` reports every op",
                              RuntimeWarning, stacklevel=4)
    return resolve.op_implementations(config, device, overrides={**overrides, **dict.fromkeys(failed, "torch")})
