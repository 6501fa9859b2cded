"""Helpers shared by the Triton-backed custom ops: input validation with clear errors, weight casts (cached: one cast
per weight per optimiser step), matmuls with fp32 output for weight gradients, and the "does this call need a
backward" test.

Every op is registered with torch.library.custom_op under the "trm_fast::" namespace, with register_fake (shapes
for torch.compile's tracing) and register_autograd, so torch.compile(fullgraph=True) traces through it.
"""
from __future__ import annotations

import os

import torch
from torch.utils.weak import WeakIdKeyDictionary

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT32_MAX = 2**31 - 1


def check_activation(op: str, name: str, t, ndim: int | None = None, min_ndim: int = 1) -> None:
    """A floating tensor of a supported dtype and of the expected rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} has dtype {t.dtype}; supported: float32, float16, bfloat16")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions (batch, seq, channels), got shape {tuple(t.shape)}")
    if t.dim() < min_ndim:
        raise ValueError(f"{op}: {name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(t.shape)})")
    if not t.is_cuda and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise ValueError(f"{op}: {name} is on {t.device}; the Triton kernels need CUDA tensors "
                         "(or TRITON_INTERPRET=1 to run them on the CPU)")


def check_like(op: str, ref_name: str, ref: torch.Tensor, name: str, t) -> None:
    """`t` has the shape, dtype and device of `ref`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != ref.shape:
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, {ref_name} has {tuple(ref.shape)}")
    if t.dtype != ref.dtype:
        raise ValueError(f"{op}: {name} has dtype {t.dtype}, {ref_name} has {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device}, {ref_name} on {ref.device}")


def check_weight(op: str, name: str, w, shape: tuple[int, int], device: torch.device) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} has dtype {w.dtype}; supported: float32, float16, bfloat16")
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(w.shape)}, expected {tuple(shape)}")
    if w.device != device:
        raise ValueError(f"{op}: {name} is on {w.device}, x on {device}")


def contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record this call (grad mode on and some input requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _cast_copy(w: torch.Tensor, dtype: torch.dtype, row_align: int) -> torch.Tensor:
    rows, cols = w.shape
    stride = -(-cols // row_align) * row_align
    buf = torch.empty(rows, stride, dtype=dtype, device=w.device)
    out = buf[:, :cols]
    out.copy_(w)
    return out


# The casts made so far: master weight -> {(dtype, row_align, transposed): (stamp, cast)}.
# A weight is used 2(n+1)T times per step in the forward and again in the backward; its value only changes when the
# optimiser (or an EMA swap, a checkpoint load) writes it in place, which bumps its version counter. An entry holds
# while the master's (version, data_ptr) stamp is unchanged; the weak key drops it with the master.
_CASTS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def cast_weight(w: torch.Tensor, dtype: torch.dtype, row_align: int = 8, transposed: bool = False) -> torch.Tensor:
    """The fp32 master weight (or, `transposed`, its transpose) in the activation dtype, as reference.linear casts it
    (the same values: a cast is deterministic), made once and reused until the master changes. When a copy is made,
    its rows start on 16-byte boundaries (row stride rounded up to `row_align` elements): the token-mixing weights
    have rows of L = 97 or 916 values, which would otherwise force narrow, unaligned loads. Pass the master itself:
    the cache is keyed on it (a view made inside a custom op does not know its base).

    Not cached while a CUDA graph captures: a replay changes the masters without Python seeing it, so the graph casts
    at every use (trm_fast.train.cuda_graph bumps the masters' versions after each replay, so that no eager entry
    outlives one either). Inference tensors have no version counter: cast every time."""
    source = w.t() if transposed else w
    if source.dtype == dtype and source.is_contiguous():
        return source
    if w.is_inference() or (w.is_cuda and torch.cuda.is_current_stream_capturing()):
        return _cast_copy(source, dtype, row_align)
    entries = _CASTS.get(w)
    if entries is None:
        entries = _CASTS[w] = {}
    key = (dtype, row_align, transposed)
    stamp = (w._version, w.data_ptr(), tuple(w.shape), w.stride())
    found = entries.get(key)
    if found is not None and found[0] == stamp:
        return found[1]
    out = _cast_copy(source, dtype, row_align)
    entries[key] = (stamp, out)
    return out


def outputs_without_grad(ctx, *aux: torch.Tensor) -> None:
    """For setup_context: an op's auxiliary outputs (what backward reads, never used by callers) carry no gradient.
    Otherwise autograd hands backward a materialised zero tensor for each one, a full-size allocation and memset per
    call (for SwiGLU's gate/up, 2I wide, more than the op's real gradients). Backward then gets None for them."""
    ctx.mark_non_differentiable(*aux)
    ctx.set_materialize_grads(False)
