"""Which implementation each fused op runs, and the forward dtype, for a model config on a device: the one rule the
model (resolved once per device), the memory model and the planner follow.

- Triton needs a CUDA GPU of compute capability 8.0 or newer (the launch tables are for sm_80 and sm_90), or
  Triton's interpreter on a CPU (TRITON_INTERPRET=1, the tests). `model.backend=auto` picks it from 8.0 on CUDA and
  the reference elsewhere; an explicit `triton` on an older GPU is refused by name.
- `model.forward_dtype=auto`: bf16 from compute capability 8.0 on CUDA, as the published runs; fp32 on older GPUs
  (bf16 is emulated there and fp16 would need loss scaling) and on CPUs.
- The answer is a mapping op name -> implementation, the config's choice for every op unless `overrides` names
  another for some ops (one implementation name overrides every op).
- Where an op has a contender (trm_fast.ops.OP_CONTENDERS: swiglu's "triton_cublas") measured faster than its Triton
  kernel on a GPU of some compute capability at the model's shape, PREFERRED_CONTENDERS names it and it replaces
  "triton" there; empty until a GPU run of `trm-fast bench ops` times both, so today's kernels stay the default.
- A CUDA device that is not present (planning for "cuda" on a machine without a GPU) is taken to be of
  ASSUMED_CAPABILITY unless the caller names a capability.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from trm_fast.config import ModelConfig
from trm_fast.ops import OP_NAMES, TRITON_IMPLEMENTATIONS, check_implementations

MIN_CAPABILITY = (8, 0)  # Triton ops and bf16 by default from here on
ASSUMED_CAPABILITY = MIN_CAPABILITY  # a CUDA device named for planning on a machine without one


Capability = tuple[int, int]

# (op, compute capability, op_shape(op, config)) -> the contender that replaces "triton" there (filled from GPU runs)
PREFERRED_CONTENDERS: dict[tuple[str, Capability, tuple[int, ...]], str] = {}


def op_shape(op: str, config: ModelConfig) -> tuple[int, ...]:
    """The sizes that decide between an op's implementations: swiglu's (width, hidden)."""
    if op == "swiglu":
        return config.hidden_size, config.mlp_hidden
    return ()


def device_capability(device: torch.device | str, capability: Capability | None = None) -> Capability | None:
    """(major, minor) compute capability of a CUDA device (`capability` when given; ASSUMED_CAPABILITY when no GPU is
    present), None for any other device. get_device_properties, not get_device_capability: torch.compile folds it
    into a constant, so a model resolving inside a compiled forward traces without a graph break."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    if capability is not None:
        return tuple(capability)
    if not torch.cuda.is_available():
        return ASSUMED_CAPABILITY
    properties = torch.cuda.get_device_properties(device)
    return properties.major, properties.minor


def forward_dtype(config: ModelConfig, device: torch.device | str, capability: Capability | None = None) -> torch.dtype:
    if config.forward_dtype != "auto":
        return getattr(torch, config.forward_dtype)
    found = device_capability(device, capability)
    return torch.bfloat16 if found is not None and found >= MIN_CAPABILITY else torch.float32


def op_implementations(config: ModelConfig, device: torch.device | str, capability: Capability | None = None,
                       overrides: str | Mapping[str, str] | None = None) -> dict[str, str]:
    """op name -> implementation ("torch", "triton", or a contender), for every op of OP_NAMES."""
    device = torch.device(device)
    found = device_capability(device, capability)
    if config.backend == "auto":
        default = "triton" if found is not None and found >= MIN_CAPABILITY else "torch"
    else:
        default = config.backend
    chosen = dict.fromkeys(OP_NAMES, default)
    if default == "triton" and found is not None:
        for op in OP_NAMES:
            chosen[op] = PREFERRED_CONTENDERS.get((op, tuple(found), op_shape(op, config)), default)
    overrides = dict.fromkeys(OP_NAMES, overrides) if isinstance(overrides, str) else dict(overrides or {})
    check_implementations(overrides, "op overrides")
    chosen.update(overrides)
    on_triton = [op for op, implementation in chosen.items() if implementation in TRITON_IMPLEMENTATIONS]
    if on_triton and found is not None and found < MIN_CAPABILITY:
        asked = f"triton for {', '.join(on_triton)}" if overrides else f"model.backend={config.backend}"
        raise ValueError(f"{asked} needs a GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer; "
                         f"{device} has {found[0]}.{found[1]}: use model.backend=torch (or auto)")
    return chosen


def describe(implementations: Mapping[str, str]) -> str:
    """One word when every op runs the same implementation, else each op's (for logs)."""
    distinct = sorted(set(implementations.values()))
    if len(distinct) == 1:
        return distinct[0]
    return "mixed: " + ", ".join(f"{op}={implementation}" for op, implementation in implementations.items())
