"""Residual add + RMSNorm (over channels, or over the sequence axis) as torch custom ops with autograd.

Saved for backward: the OUTPUT y (activation dtype) and the per-row fp32 rstd; the input sum is never saved
(kernels/norm.py derives the backward from y). d x and d residual are the same tensor, as
d(residual + x)/dx = d(residual + x)/d residual = identity.

`add_rms_norm(x, residual, inject=t)` also returns `y + inject` from the same kernel (the recursion's next
network input z + (y + x)); its gradient is added to y's inside the backward kernel, and d inject = d(y + inject).

`norm_forward` / `norm_backward` are the two directions as plain functions, for the bodies of other custom ops, and
`post_norm_forward` / `post_norm_backward` their use there: a sub-layer op called with post_norm=True
(trm_fast/ops/{attention,swiglu}.py) runs its post-norm inside its own autograd node, so that its backward can add
the residual's gradient in its last matmul (see trm_fast/ops/swiglu.py).
"""
from __future__ import annotations

import torch

from trm_fast.kernels import norm as kernels
from trm_fast.ops.reference import RMS_EPS
from trm_fast.ops._custom_op import INT32_MAX, check_activation, check_like, contiguous, custom_op, outputs_without_grad


def norm_forward(x: torch.Tensor, residual: torch.Tensor, seq_axis: bool, inject: torch.Tensor | None = None,
                 eps: float = RMS_EPS):
    """(y, y + inject, rstd) with y = rms_norm(residual + x) over channels or, `seq_axis`, over dim 1 of (B, L, D);
    y + inject is an empty tensor without `inject` (channel form only). x and residual: one shape and dtype."""
    x, residual = contiguous(x), contiguous(residual)
    y = torch.empty_like(x)
    out_sum = torch.empty_like(x) if inject is not None else x.new_empty(0)
    if seq_axis:
        rstd = torch.empty(x.shape[0], x.shape[2], dtype=torch.float32, device=x.device)
        kernels.add_rms_norm_seq_fwd(x, residual, eps, y, rstd)
    else:
        rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
        kernels.add_rms_norm_fwd(x, residual, eps, y, rstd, None if inject is None else contiguous(inject),
                                 None if inject is None else out_sum)
    return y, out_sum, rstd


def norm_forward_fake(x: torch.Tensor, seq_axis: bool, inject: torch.Tensor | None = None):
    """norm_forward's outputs as empty tensors of their shapes (for register_fake)."""
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    rstd = x.new_empty((x.shape[0], x.shape[2]) if seq_axis else x.shape[:-1], dtype=torch.float32)
    return y, torch.empty_like(y) if inject is not None else x.new_empty(0), rstd


def norm_backward(dy: torch.Tensor | None, dsum: torch.Tensor | None, y: torch.Tensor, rstd: torch.Tensor,
                  seq_axis: bool) -> torch.Tensor:
    """d(residual + x) from the gradients of y and of y + inject (either may be None, not both), in a new tensor
    of y's dtype that the caller owns (a sub-layer's backward accumulates its input gradient into it)."""
    ds = torch.empty_like(y)
    if dy is None or dsum is None:
        grad = contiguous((dy if dy is not None else dsum).to(y.dtype))
        (kernels.rms_norm_seq_bwd if seq_axis else kernels.rms_norm_bwd)(grad, y, rstd, ds)
    else:  # only the channel form has the injection output
        kernels.rms_norm_bwd(contiguous(dy.to(y.dtype)), y, rstd, ds, contiguous(dsum.to(y.dtype)))
    return ds


def post_norm_forward(out: torch.Tensor, x: torch.Tensor, post_norm: bool, inject=None, seq_axis: bool = False):
    """The tail of a sub-layer's forward op, (result, rstd, result + inject): `out` itself (rstd and the sum
    empty), or with post_norm y = the norm of x + out (norm_forward; `out` is dropped by the caller)."""
    if not post_norm:
        return out, out.new_empty(0, dtype=torch.float32), out.new_empty(0)
    y, out_sum, rstd = norm_forward(out, x, seq_axis, inject)
    return y, rstd, out_sum


def post_norm_fake(out: torch.Tensor, post_norm: bool, inject=None, seq_axis: bool = False):
    """post_norm_forward's outputs as empty tensors of their shapes (for register_fake)."""
    if not post_norm:
        return out, out.new_empty(0, dtype=torch.float32), out.new_empty(0)
    y, out_sum, rstd = norm_forward_fake(out, seq_axis, inject)
    return y, rstd, out_sum


def post_norm_backward(dout, dsum, y, rstd, seq_axis: bool = False) -> torch.Tensor:
    """In a sub-layer's backward op: the gradient of its own output, d s = the post-norm's backward (norm_backward:
    a new tensor the op owns and accumulates d x into), or `dout` itself without a post-norm (y None)."""
    return dout if y is None else norm_backward(dout, dsum, y, rstd, seq_axis)


@custom_op("trm_fast::add_rms_norm_fwd")
def _add_rms_norm_fwd(x: torch.Tensor, residual: torch.Tensor, eps: float, seq_axis: bool,
                      inject: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return norm_forward(x, residual, seq_axis, inject, eps)


@_add_rms_norm_fwd.register_fake
def _(x, residual, eps, seq_axis, inject=None):
    return norm_forward_fake(x, seq_axis, inject)


@custom_op("trm_fast::rms_norm_bwd")
def _rms_norm_bwd(dy: torch.Tensor | None, dsum: torch.Tensor | None, y: torch.Tensor, rstd: torch.Tensor,
                  seq_axis: bool) -> torch.Tensor:
    return norm_backward(dy, dsum, y, rstd, seq_axis)


@_rms_norm_bwd.register_fake
def _(dy, dsum, y, rstd, seq_axis):
    return torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    ctx.seq_axis, ctx.has_inject = inputs[3], inputs[4] is not None
    y, out_sum, rstd = output
    outputs_without_grad(ctx, rstd, *(() if ctx.has_inject else (out_sum,)))
    ctx.save_for_backward(y, rstd)


def _backward(ctx, dy, dsum, _drstd):
    if dy is None and dsum is None:
        return None, None, None, None, None
    y, rstd = ctx.saved_tensors
    dx = _rms_norm_bwd(dy, dsum, y, rstd, ctx.seq_axis)
    return dx, dx, None, None, dsum


_add_rms_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


def _checked(op: str, x, residual, seq_axis: bool) -> None:
    check_activation(op, "x", x, ndim=3 if seq_axis else None)
    check_like(op, "x", x, "residual", residual)
    if seq_axis and x.shape[1] * x.shape[2] > INT32_MAX:
        raise ValueError(f"{op}: one batch element has {x.shape[1] * x.shape[2]} values; at most 2^31 - 1 supported")


def check_post_norm(op: str, x: torch.Tensor, post_norm: bool, inject, seq_axis: bool) -> None:
    """The post-norm arguments of a sub-layer op: `inject` only with post_norm=True and a channel norm, like x."""
    if inject is None:
        return
    if not post_norm:
        raise ValueError(f"{op}: inject is the post-norm's second output; pass post_norm=True with it")
    if seq_axis:
        raise ValueError(f"{op}: its post-norm is over the sequence axis, which has no inject output")
    check_like(op, "x", x, "inject", inject)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, inject: torch.Tensor | None = None):
    """rms_norm(residual + x) over the last axis (fp32 statistics, no gain, eps 1e-5), in x's dtype.
    With `inject` (x's shape and dtype): returns (y, y + inject), the sum written by the same kernel."""
    _checked("add_rms_norm", x, residual, False)
    if inject is None:
        return _add_rms_norm_fwd(x, residual, RMS_EPS, False)[0]
    check_like("add_rms_norm", "x", x, "inject", inject)
    y, out_sum, _ = _add_rms_norm_fwd(x, residual, RMS_EPS, False, inject)
    return y, out_sum


def add_rms_norm_seq(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """rms_norm(residual + x) over the sequence axis (dim 1) of (B, L, D), without a transpose."""
    _checked("add_rms_norm_seq", x, residual, True)
    return _add_rms_norm_fwd(x, residual, RMS_EPS, True)[0]
