"""The attention mixer as a torch custom op with autograd: qkv projection (cuBLAS), flash attention with RoPE
fused into its prologue (Triton), output projection (cuBLAS). Saved for backward: x, the qkv projection output
(un-rotated), O and the log-sum-exp. Weight gradients are returned in fp32 (see ops/swiglu.py)."""
from __future__ import annotations

import torch

from trm_fast.kernels import attention as kernels
from trm_fast.ops._checks import FLOAT_DTYPES, contiguous
from trm_fast.ops.swiglu import mm_fp32

SUPPORTED_HEAD_DIMS = (32, 64, 128)


@torch.library.custom_op("trm_fast::flash_attention_fwd", mutates_args=())
def _flash_fwd(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, rope: bool) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, three_d = qkv.shape
    o = torch.empty(B, L, three_d // 3, dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty(B * num_heads, L, dtype=torch.float32, device=qkv.device)
    kernels.attention_fwd(qkv, num_heads, cos if rope else None, sin if rope else None, o, lse)
    return o, lse


@_flash_fwd.register_fake
def _(qkv, cos, sin, num_heads, rope):
    B, L, three_d = qkv.shape
    return qkv.new_empty(B, L, three_d // 3), qkv.new_empty(B * num_heads, L, dtype=torch.float32)


@torch.library.custom_op("trm_fast::flash_attention_bwd", mutates_args=())
def _flash_bwd(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, num_heads: int, rope: bool) -> torch.Tensor:
    dqkv = torch.empty_like(qkv)
    kernels.attention_bwd(contiguous(do), qkv, o, lse, num_heads, cos if rope else None, sin if rope else None, dqkv)
    return dqkv


@_flash_bwd.register_fake
def _(do, qkv, o, lse, cos, sin, num_heads, rope):
    return torch.empty_like(qkv)


def _setup(ctx, inputs, output):
    qkv, cos, sin, num_heads, rope = inputs
    o, lse = output
    ctx.num_heads, ctx.rope = num_heads, rope
    ctx.save_for_backward(qkv, o, lse, cos, sin)


def _backward(ctx, do, dlse):
    qkv, o, lse, cos, sin = ctx.saved_tensors
    return _flash_bwd(do, qkv, o, lse, cos, sin, ctx.num_heads, ctx.rope), None, None, None, None


_flash_fwd.register_autograd(_backward, setup_context=_setup)


def flash_attention(qkv: torch.Tensor, num_heads: int, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    """Attention over the packed qkv projection (B, L, 3*H*hd) with RoPE on q and k; returns (B, L, H*hd)."""
    qkv = contiguous(qkv)
    rope = cos is not None
    if not rope:
        cos = sin = qkv.new_empty(0, dtype=torch.float32)
    o, _ = _flash_fwd(qkv, contiguous(cos.float()), contiguous(sin.float()), num_heads, rope)
    return o


def attention(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
              num_heads: int) -> torch.Tensor:
    """Same semantics as trm_fast.kernels.reference.attention: qkv projection, RoPE, non-causal attention, o-proj."""
    if x.dim() != 3 or x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"attention: x must be a float (batch, seq, channels) tensor, got {tuple(x.shape)} {x.dtype}")
    B, L, D = x.shape
    if w_qkv.shape[1] != D or w_qkv.shape[0] % (3 * num_heads) or tuple(w_o.shape) != (D, w_qkv.shape[0] // 3):
        raise ValueError(f"attention: w_qkv {tuple(w_qkv.shape)} / w_o {tuple(w_o.shape)} do not fit x with {D} channels "
                         f"and {num_heads} heads")
    head_dim = w_qkv.shape[0] // (3 * num_heads)
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"attention: head dim {head_dim} is not supported by the Triton kernel ({SUPPORTED_HEAD_DIMS})")
    if cos is not None and tuple(cos.shape) != (L, head_dim):
        raise ValueError(f"attention: RoPE tables must be ({L}, {head_dim}), got {tuple(cos.shape)}")
    qkv = torch.nn.functional.linear(x, w_qkv.to(x.dtype))
    o = flash_attention(qkv, num_heads, cos, sin)
    return torch.nn.functional.linear(o, w_o.to(x.dtype))
