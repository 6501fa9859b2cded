"""Input checks shared by the ops: clear errors before any kernel launch."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_same(op: str, **tensors: torch.Tensor) -> None:
    """Same shape, a supported float dtype, and one device for every named tensor."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}; supported: float32, float16, bfloat16")
        if t.shape != first.shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, {first_name} has {tuple(first.shape)}")
        if t.dtype != first.dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}, {first_name} has {first.dtype}")
        if t.device != first.device:
            raise ValueError(f"{op}: {name} is on {t.device}, {first_name} on {first.device}")


def contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()
