"""The fused ops of the TRM block behind one interface, per backend.

`get_ops("torch")` returns the plain-PyTorch references (trm_fast.kernels.reference); `get_ops("triton")`
returns the Triton-backed autograd Functions registered as torch custom ops. Both namespaces expose the
same functions with the same signatures, so the model switches backend without changing its weights:

    add_rms_norm(x, residual)                 rms_norm(residual + x) over channels
    add_rms_norm_seq(x, residual)             the same over the sequence axis of (B, L, D)
    swiglu(x, w_gate_up, w_down)              channel SwiGLU MLP
    swiglu_token_mix(x, w_gate_up, w_down)    token-mixing SwiGLU of (B, L, D) along L
    attention(x, w_qkv, w_o, cos, sin, num_heads)   qkv projection, RoPE, attention, output projection
"""
from __future__ import annotations

import functools
import types

from trm_fast.kernels import reference

OP_NAMES = ("add_rms_norm", "add_rms_norm_seq", "swiglu", "swiglu_token_mix", "attention")
BACKENDS = ("torch", "triton")


def _torch_ops() -> types.SimpleNamespace:
    return types.SimpleNamespace(name="torch", **{name: getattr(reference, name) for name in OP_NAMES})


def _triton_ops() -> types.SimpleNamespace:
    from trm_fast.ops import attention, norm, swiglu  # imported lazily: they import Triton

    return types.SimpleNamespace(
        name="triton",
        add_rms_norm=norm.add_rms_norm,
        add_rms_norm_seq=norm.add_rms_norm_seq,
        swiglu=swiglu.swiglu,
        swiglu_token_mix=swiglu.swiglu_token_mix,
        attention=attention.attention,
    )


@functools.lru_cache(maxsize=None)
def get_ops(backend: str) -> types.SimpleNamespace:
    """The op namespace of a resolved backend ("torch" or "triton")."""
    if backend == "torch":
        return _torch_ops()
    if backend == "triton":
        return _triton_ops()
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
