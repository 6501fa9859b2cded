"""The attention mixer as torch custom ops with autograd: qkv projection (cuBLAS), flash attention with RoPE fused
into its prologue (Triton, kernels/attention.py), output projection (cuBLAS).

`attention(x, w_qkv, w_o, cos, sin, num_heads)` has the semantics and output dtype of
`trm_fast.ops.reference.attention`: weights are fp32 master copies cast to x's dtype for the matmuls, RoPE
(rotate-half, fp32, result rounded to x's dtype) on q and k unless cos is None, non-causal softmax attention with
scale 1/sqrt(hd), output projection.

Saved for backward: x, the UN-rotated qkv projection output (B, L, 3D), the attention output O (B, L, D) and the
fp32 log-sum-exp (B*H, L); the attention probabilities are never stored. Weight gradients are computed with fp32
output (fp32 accumulation, never rounded to bf16), so autograd sums the recursion's tied uses in fp32.

`attention(..., post_norm=True)` returns rms_norm(x + attention(x)) over channels from the same autograd node, its
backward adding the residual's gradient in the d x matmul's epilogue over the norm's d s (as trm_fast/ops/swiglu.py
describes for the SwiGLU); it also saves the norm's output and rstd.

`flash_attention(qkv, num_heads, cos, sin)` exposes the attention core alone (packed qkv in, (B, L, H*hd) out).
"""
from __future__ import annotations

import torch

from trm_fast.kernels import attention as kernels
from trm_fast.ops.norm import post_norm_backward, post_norm_fake, post_norm_forward
from trm_fast.ops.reference import mm_fp32
from trm_fast.ops._custom_op import (CheckedSignatures, cast_weight, check_activation, contiguous, custom_op,
                                     outputs_without_grad, tensor_key)

SUPPORTED_HEAD_DIMS = kernels.SUPPORTED_HEAD_DIMS


def _flash_forward(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, rope: bool):
    B, L, three_d = qkv.shape
    o = torch.empty(B, L, three_d // 3, dtype=qkv.dtype, device=qkv.device)
    lse = torch.empty(B * num_heads, L, dtype=torch.float32, device=qkv.device)
    kernels.attention_fwd(qkv, num_heads, cos if rope else None, sin if rope else None, o, lse)
    return o, lse


def _flash_backward(do, qkv, o, lse, cos, sin, num_heads: int, rope: bool) -> torch.Tensor:
    dqkv = torch.empty_like(qkv)
    kernels.attention_bwd(contiguous(do.to(qkv.dtype)), qkv, o, lse, num_heads, cos if rope else None,
                          sin if rope else None, dqkv)
    return dqkv


# ---------------------------------------------------------------------------------------------- the mixer


@custom_op("trm_fast::attention_fwd")
def _attention_fwd(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   num_heads: int, rope: bool, post_norm: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    B, L, D = x.shape
    x2d = contiguous(x.reshape(B * L, D))
    qkv = (x2d @ cast_weight(w_qkv, x.dtype).t()).view(B, L, -1)
    o, lse = _flash_forward(qkv, cos, sin, num_heads, rope)
    y = (o.view(B * L, -1) @ cast_weight(w_o, x.dtype).t()).view(B, L, -1)
    y, rstd, _ = post_norm_forward(y, x2d.view(B, L, D), post_norm)
    return y, qkv, o, lse, rstd


@_attention_fwd.register_fake
def _(x, w_qkv, w_o, cos, sin, num_heads, rope, post_norm=False):
    B, L, _ = x.shape
    y, rstd, _ = post_norm_fake(x.new_empty(B, L, w_o.shape[0]), post_norm)
    return (y, x.new_empty(B, L, w_qkv.shape[0]), x.new_empty(B, L, w_o.shape[1]),
            x.new_empty(B * num_heads, L, dtype=torch.float32), rstd)


@custom_op("trm_fast::attention_bwd")
def _attention_bwd(dy: torch.Tensor, x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, qkv: torch.Tensor,
                   o: torch.Tensor, lse: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, rope: bool,
                   need_dx: bool, need_dw: bool, norm_y: torch.Tensor | None, rstd: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, L, D = x.shape
    dy = post_norm_backward(dy, None, norm_y, rstd)  # with the post-norm a new tensor: d x is accumulated into it
    dy2d = contiguous(dy.reshape(B * L, -1).to(x.dtype))
    o2d = o.view(B * L, -1)
    d_w_o = mm_fp32(dy2d.t(), o2d).to(w_o.dtype) if need_dw else w_o.new_empty(0)
    do = (dy2d @ cast_weight(w_o, x.dtype)).view(o.shape)
    dqkv = _flash_backward(do, qkv, o, lse, cos, sin, num_heads, rope).view(B * L, -1)
    d_w_qkv = mm_fp32(dqkv.t(), contiguous(x.reshape(B * L, D))).to(w_qkv.dtype) if need_dw else w_qkv.new_empty(0)
    if not need_dx:
        dx = x.new_empty(0)
    elif norm_y is None:
        dx = (dqkv @ cast_weight(w_qkv, x.dtype)).view(x.shape)
    else:  # d s + dqkv @ w_qkv, written over d s by the matmul's epilogue (beta = 1, in place: no copy, no add)
        dx = dy2d.addmm_(dqkv, cast_weight(w_qkv, x.dtype)).view(x.shape)
    return dx, d_w_qkv, d_w_o


@_attention_bwd.register_fake
def _(dy, x, w_qkv, w_o, qkv, o, lse, cos, sin, num_heads, rope, need_dx, need_dw, norm_y, rstd):
    return (torch.empty_like(x) if need_dx else x.new_empty(0), torch.empty_like(w_qkv) if need_dw else w_qkv.new_empty(0),
            torch.empty_like(w_o) if need_dw else w_o.new_empty(0))


def _setup_attention(ctx, inputs, output):
    x, w_qkv, w_o, cos, sin, num_heads, rope, post_norm = inputs
    y, qkv, o, lse, rstd = output
    outputs_without_grad(ctx, qkv, o, lse, rstd)
    ctx.num_heads, ctx.rope = num_heads, rope
    ctx.save_for_backward(x, w_qkv, w_o, qkv, o, lse, cos, sin, y if post_norm else None, rstd if post_norm else None)


def _attention_backward(ctx, dy, _dqkv, _do, _dlse, _drstd):
    x, w_qkv, w_o, qkv, o, lse, cos, sin, norm_y, rstd = ctx.saved_tensors
    need_dx = ctx.needs_input_grad[0]
    need_dw = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
    if dy is None or not (need_dx or need_dw):
        return None, None, None, None, None, None, None, None
    dx, d_w_qkv, d_w_o = _attention_bwd(dy, x, w_qkv, w_o, qkv, o, lse, cos, sin, ctx.num_heads, ctx.rope, need_dx,
                                        need_dw, norm_y, rstd)
    return (dx if need_dx else None, d_w_qkv if ctx.needs_input_grad[1] else None,
            d_w_o if ctx.needs_input_grad[2] else None, None, None, None, None, None)


_attention_fwd.register_autograd(_attention_backward, setup_context=_setup_attention)


# ---------------------------------------------------------------------------------------------- the core alone


@custom_op("trm_fast::flash_attention_fwd")
def _flash_fwd(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, rope: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _flash_forward(contiguous(qkv), cos, sin, num_heads, rope)


@_flash_fwd.register_fake
def _(qkv, cos, sin, num_heads, rope):
    B, L, three_d = qkv.shape
    return qkv.new_empty(B, L, three_d // 3), qkv.new_empty(B * num_heads, L, dtype=torch.float32)


@custom_op("trm_fast::flash_attention_bwd")
def _flash_bwd(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, num_heads: int, rope: bool) -> torch.Tensor:
    return _flash_backward(do, contiguous(qkv), o, lse, cos, sin, num_heads, rope)


@_flash_bwd.register_fake
def _(do, qkv, o, lse, cos, sin, num_heads, rope):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_flash(ctx, inputs, output):
    qkv, cos, sin, num_heads, rope = inputs
    o, lse = output
    outputs_without_grad(ctx, lse)
    ctx.num_heads, ctx.rope = num_heads, rope
    ctx.save_for_backward(qkv, o, lse, cos, sin)


def _flash_backward_autograd(ctx, do, _dlse):
    if do is None:
        return None, None, None, None, None
    qkv, o, lse, cos, sin = ctx.saved_tensors
    return _flash_bwd(do, qkv, o, lse, cos, sin, ctx.num_heads, ctx.rope), None, None, None, None


_flash_fwd.register_autograd(_flash_backward_autograd, setup_context=_setup_flash)


# ---------------------------------------------------------------------------------------------- checks and entry points


def _check_rope_tables(op: str, cos, sin, L: int, head_dim: int, like: torch.Tensor) -> None:
    """cos and sin both None (no RoPE), or both fp32-castable (L, hd) tables on x's device."""
    if cos is None:
        if sin is not None:
            raise ValueError(f"{op}: cos is None (no RoPE) but sin is given; pass both or neither")
        return
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor (fp32 ({L}, {head_dim}) RoPE table), got {type(t).__name__}")
        if tuple(t.shape) != (L, head_dim):
            raise ValueError(f"{op}: RoPE table {name} must be ({L}, {head_dim}) (seq, head_dim), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{op}: RoPE table {name} has dtype {t.dtype}; expected float32")
        if t.device != like.device:
            raise ValueError(f"{op}: RoPE table {name} is on {t.device}, x on {like.device}")


def _rope_tables(cos, sin, like: torch.Tensor):
    """(cos, sin, rope) as the kernels take them (the tables already checked by _check_rope_tables): fp32
    contiguous (L, hd) tables, or empty placeholders when cos is None (no RoPE)."""
    if cos is None:
        empty = like.new_empty(0, dtype=torch.float32)
        return empty, empty, False
    if cos.dtype is not torch.float32 or sin.dtype is not torch.float32:
        cos, sin = cos.float(), sin.float()
    return contiguous(cos), contiguous(sin), True


def _check_heads(op: str, num_heads, width: int) -> int:
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads <= 0:
        raise ValueError(f"{op}: num_heads must be a positive int, got {num_heads!r}")
    if width % num_heads:
        raise ValueError(f"{op}: {width} attention channels do not split into {num_heads} heads")
    head_dim = width // num_heads
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{op}: head dim {head_dim} ({width} channels / {num_heads} heads) is not supported by the "
                         f"Triton kernel; supported: {SUPPORTED_HEAD_DIMS}")
    return head_dim


def _check_attention(x, w_qkv, w_o, cos, sin, num_heads) -> None:
    op = "attention"
    check_activation(op, "x", x, ndim=3)
    B, L, D = x.shape
    for name, w in (("w_qkv", w_qkv), ("w_o", w_o)):
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{op}: {name} must be a 2-D weight, got {got}")
        if not w.is_floating_point():
            raise ValueError(f"{op}: {name} has dtype {w.dtype}; expected a floating dtype")
        if w.device != x.device:
            raise ValueError(f"{op}: {name} is on {w.device}, x on {x.device}")
    if w_qkv.shape[1] != D or w_qkv.shape[0] % 3:
        raise ValueError(f"{op}: w_qkv must be (3*H*hd, {D}) for x with {D} channels, got {tuple(w_qkv.shape)}")
    width = w_qkv.shape[0] // 3
    if tuple(w_o.shape) != (D, width):
        raise ValueError(f"{op}: w_o must be ({D}, {width}) (channels, H*hd), got {tuple(w_o.shape)}")
    head_dim = _check_heads(op, num_heads, width)
    _check_rope_tables(op, cos, sin, L, head_dim, x)


_ATTENTION_CHECKED = CheckedSignatures()


def attention(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
              num_heads: int, *, post_norm: bool = False) -> torch.Tensor:
    """Self-attention mixer, same semantics and output dtype as trm_fast.ops.reference.attention:
    qkv = x @ w_qkv^T (layout [q heads | k heads | v heads]), RoPE on q and k (skipped when cos is None),
    non-causal attention, @ w_o^T. x (B, L, D); w_qkv (3*H*hd, D); w_o (D, H*hd); cos/sin fp32 (L, hd).
    `post_norm`: rms_norm(x + attention(x)) over channels instead."""
    try:
        key = (tensor_key(x), tensor_key(w_qkv), tensor_key(w_o), tensor_key(cos), tensor_key(sin), type(num_heads),
               num_heads)
    except AttributeError:
        key = None
    _ATTENTION_CHECKED.check(key, _check_attention, x, w_qkv, w_o, cos, sin, num_heads)
    cos, sin, rope = _rope_tables(cos, sin, x)
    return _attention_fwd(x, w_qkv, w_o, cos, sin, num_heads, rope, post_norm)[0]


def flash_attention(qkv: torch.Tensor, num_heads: int, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    """Attention over the packed qkv projection (B, L, 3*H*hd) with RoPE on q and k; returns (B, L, H*hd)."""
    op = "flash_attention"
    check_activation(op, "qkv", qkv, ndim=3)
    B, L, three_w = qkv.shape
    if three_w % 3:
        raise ValueError(f"{op}: qkv's last dim {three_w} is not 3 * H * hd")
    head_dim = _check_heads(op, num_heads, three_w // 3)
    _check_rope_tables(op, cos, sin, L, head_dim, qkv)
    cos, sin, rope = _rope_tables(cos, sin, qkv)
    return _flash_fwd(qkv, cos, sin, num_heads, rope)[0]
