"""Residual add + RMSNorm (over channels, or over the sequence axis) as torch custom ops with autograd.

Saved for backward: the OUTPUT y (activation dtype) and the per-row fp32 rstd; the input sum is never saved
(kernels/norm.py derives the backward from y). d x and d residual are the same tensor, as
d(residual + x)/dx = d(residual + x)/d residual = identity.

`add_rms_norm(x, residual, inject=t)` also returns `y + inject` from the same kernel (the recursion's next
network input z + (y + x)); its gradient is added to y's inside the backward kernel, and d inject = d(y + inject).
"""
from __future__ import annotations

import torch

from trm_fast.kernels import norm as kernels
from trm_fast.ops.reference import RMS_EPS
from trm_fast.ops._custom_op import INT32_MAX, check_activation, check_like, contiguous, custom_op, outputs_without_grad


@custom_op("trm_fast::add_rms_norm_fwd")
def _add_rms_norm_fwd(x: torch.Tensor, residual: torch.Tensor, eps: float, seq_axis: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, residual = contiguous(x), contiguous(residual)
    y = torch.empty_like(x)
    if seq_axis:
        rstd = torch.empty(x.shape[0], x.shape[2], dtype=torch.float32, device=x.device)
        kernels.add_rms_norm_seq_fwd(x, residual, eps, y, rstd)
    else:
        rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
        kernels.add_rms_norm_fwd(x, residual, eps, y, rstd)
    return y, rstd


@_add_rms_norm_fwd.register_fake
def _(x, residual, eps, seq_axis):
    shape = (x.shape[0], x.shape[2]) if seq_axis else x.shape[:-1]
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(shape, dtype=torch.float32)


@custom_op("trm_fast::rms_norm_bwd")
def _rms_norm_bwd(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, seq_axis: bool) -> torch.Tensor:
    dx = torch.empty_like(y)
    (kernels.rms_norm_seq_bwd if seq_axis else kernels.rms_norm_bwd)(contiguous(dy.to(y.dtype)), y, rstd, dx)
    return dx


@_rms_norm_bwd.register_fake
def _(dy, y, rstd, seq_axis):
    return torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    ctx.seq_axis = inputs[3]
    y, rstd = output
    outputs_without_grad(ctx, rstd)
    ctx.save_for_backward(y, rstd)


def _backward(ctx, dy, _drstd):
    if dy is None:
        return None, None, None, None
    y, rstd = ctx.saved_tensors
    dx = _rms_norm_bwd(dy, y, rstd, ctx.seq_axis)
    return dx, dx, None, None


_add_rms_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


@custom_op("trm_fast::add_rms_norm_inject_fwd")
def _add_rms_norm_inject_fwd(x: torch.Tensor, residual: torch.Tensor, inject: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, residual, inject = contiguous(x), contiguous(residual), contiguous(inject)
    y, out_sum = torch.empty_like(x), torch.empty_like(x)
    rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    kernels.add_rms_norm_fwd(x, residual, eps, y, rstd, inject, out_sum)
    return y, out_sum, rstd


@_add_rms_norm_inject_fwd.register_fake
def _(x, residual, inject, eps):
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    return y, torch.empty_like(y), x.new_empty(x.shape[:-1], dtype=torch.float32)


@custom_op("trm_fast::rms_norm_bwd_two_grads")
def _rms_norm_bwd_two(dy: torch.Tensor, dsum: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    dx = torch.empty_like(y)
    kernels.rms_norm_bwd(contiguous(dy.to(y.dtype)), y, rstd, dx, contiguous(dsum.to(y.dtype)))
    return dx


@_rms_norm_bwd_two.register_fake
def _(dy, dsum, y, rstd):
    return torch.empty_like(y)


def _setup_inject(ctx, inputs, output):
    y, _, rstd = output
    outputs_without_grad(ctx, rstd)
    ctx.save_for_backward(y, rstd)


def _backward_inject(ctx, dy, dsum, _drstd):
    y, rstd = ctx.saved_tensors
    if dy is None and dsum is None:
        return None, None, None, None
    if dy is None or dsum is None:
        dx = _rms_norm_bwd(dy if dy is not None else dsum, y, rstd, False)
    else:
        dx = _rms_norm_bwd_two(dy, dsum, y, rstd)
    return dx, dx, dsum, None


_add_rms_norm_inject_fwd.register_autograd(_backward_inject, setup_context=_setup_inject)


def _checked(op: str, x, residual, seq_axis: bool) -> None:
    check_activation(op, "x", x, ndim=3 if seq_axis else None)
    check_like(op, "x", x, "residual", residual)
    if seq_axis and x.shape[1] * x.shape[2] > INT32_MAX:
        raise ValueError(f"{op}: one batch element has {x.shape[1] * x.shape[2]} values; at most 2^31 - 1 supported")


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, inject: torch.Tensor | None = None):
    """rms_norm(residual + x) over the last axis (fp32 statistics, no gain, eps 1e-5), in x's dtype.
    With `inject` (x's shape and dtype): returns (y, y + inject), the sum written by the same kernel."""
    _checked("add_rms_norm", x, residual, False)
    if inject is None:
        return _add_rms_norm_fwd(x, residual, RMS_EPS, False)[0]
    check_like("add_rms_norm", "x", x, "inject", inject)
    y, out_sum, _ = _add_rms_norm_inject_fwd(x, residual, inject, RMS_EPS)
    return y, out_sum


def add_rms_norm_seq(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """rms_norm(residual + x) over the sequence axis (dim 1) of (B, L, D), without a transpose."""
    _checked("add_rms_norm_seq", x, residual, True)
    return _add_rms_norm_fwd(x, residual, RMS_EPS, True)[0]
