"""SwiGLU (channel) and the MLP-mixer's token-mixing SwiGLU as torch custom ops with autograd.

Forward: one Triton kernel runs the gate_up matmul and writes h = silu(gate) * up; the down projection is a plain
cuBLAS matmul (nothing to fuse into it). Without grad only h is written. With grad, `recompute=False` (recompute
level 0) also saves gate/up (2I wide) and the backward is elementwise; `recompute=True` (levels >= 1) saves
nothing 2I wide and the backward re-runs the gate_up matmul with the derivative in its epilogue. silu is never
saved. Weight gradients are computed with fp32 output, so the 2(n+1) tied uses of a weight in the recursion are
summed by autograd in fp32 without rounding each use's contribution to bf16.
"""
from __future__ import annotations

import torch

from trm_fast.kernels import swiglu as kernels
from trm_fast.ops._checks import FLOAT_DTYPES, contiguous


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 output (fp32 accumulation, no rounding to the input dtype)."""
    if a.is_cuda and a.dtype != torch.float32:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):
            pass
    return a.float() @ b.float()


def bmm_sum_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_b a[b] @ b[b] with fp32 output."""
    if a.is_cuda and a.dtype != torch.float32:
        try:
            return torch.bmm(a, b, out_dtype=torch.float32).sum(0)
        except (RuntimeError, TypeError):
            pass
    return torch.bmm(a.float(), b.float()).sum(0)


def _check(op: str, x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, width_axis: int) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: x has dtype {x.dtype}; supported: float32, float16, bfloat16")
    if w_gate_up.dim() != 2 or w_down.dim() != 2 or w_gate_up.shape[0] % 2:
        raise ValueError(f"{op}: w_gate_up must be (2I, width) and w_down (width, I); got {tuple(w_gate_up.shape)}, {tuple(w_down.shape)}")
    width = x.shape[width_axis]
    hidden = w_gate_up.shape[0] // 2
    if w_gate_up.shape[1] != width or tuple(w_down.shape) != (width, hidden):
        raise ValueError(f"{op}: x's mixed axis has {width} entries; w_gate_up {tuple(w_gate_up.shape)} and "
                         f"w_down {tuple(w_down.shape)} must be ({2 * hidden}, {width}) and ({width}, {hidden})")
    if w_gate_up.device != x.device or w_down.device != x.device:
        raise ValueError(f"{op}: weights on {w_gate_up.device}/{w_down.device}, x on {x.device}")


# ---------------------------------------------------------------------------------------------- channel


@torch.library.custom_op("trm_fast::swiglu_fwd", mutates_args=())
def _swiglu_fwd(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, save_gate_up: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x2d = contiguous(x.reshape(-1, x.shape[-1]))
    wgu = contiguous(w_gate_up.to(x.dtype))
    I = wgu.shape[0] // 2
    h = torch.empty(x2d.shape[0], I, dtype=x.dtype, device=x.device)
    gu = torch.empty(x2d.shape[0], 2 * I, dtype=x.dtype, device=x.device) if save_gate_up else h.new_empty(0)
    kernels.channel_gate_up(x2d, wgu, h, gu if save_gate_up else None)
    out = (h @ w_down.to(x.dtype).t()).view(x.shape[:-1] + (w_down.shape[0],))
    return out, h, gu


@_swiglu_fwd.register_fake
def _(x, w_gate_up, w_down, save_gate_up):
    M = x.numel() // x.shape[-1]
    I = w_gate_up.shape[0] // 2
    out = x.new_empty(x.shape[:-1] + (w_down.shape[0],))
    return out, x.new_empty(M, I), x.new_empty(M, 2 * I) if save_gate_up else x.new_empty(0)


@torch.library.custom_op("trm_fast::swiglu_bwd", mutates_args=())
def _swiglu_bwd(dout: torch.Tensor, x: torch.Tensor, h: torch.Tensor, gu: torch.Tensor, w_gate_up: torch.Tensor,
                w_down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x2d = contiguous(x.reshape(-1, x.shape[-1]))
    dout2d = contiguous(dout.reshape(-1, dout.shape[-1]))
    wgu = contiguous(w_gate_up.to(x.dtype))
    dh = dout2d @ w_down.to(x.dtype)
    d_w_down = mm_fp32(dout2d.t(), h)
    dgu = torch.empty(x2d.shape[0], wgu.shape[0], dtype=x.dtype, device=x.device)
    if gu.numel():
        kernels.swiglu_bwd_from_saved(gu, dh, dgu)
    else:
        kernels.channel_gate_up(x2d, wgu, h=None, dh=dh, dgu=dgu)
    dx = (dgu @ wgu).view(x.shape)
    d_w_gate_up = mm_fp32(dgu.t(), x2d)
    return dx, d_w_gate_up, d_w_down


@_swiglu_bwd.register_fake
def _(dout, x, h, gu, w_gate_up, w_down):
    return torch.empty_like(x), w_gate_up.new_empty(w_gate_up.shape, dtype=torch.float32), w_down.new_empty(w_down.shape, dtype=torch.float32)


def _swiglu_setup(ctx, inputs, output):
    x, w_gate_up, w_down, _ = inputs
    _, h, gu = output
    ctx.save_for_backward(x, h, gu, w_gate_up, w_down)


def _swiglu_backward(ctx, dout, dh_unused, dgu_unused):
    x, h, gu, w_gate_up, w_down = ctx.saved_tensors
    dx, dwgu, dwd = _swiglu_bwd(dout, x, h, gu, w_gate_up, w_down)
    return dx, dwgu.to(w_gate_up.dtype), dwd.to(w_down.dtype), None


_swiglu_fwd.register_autograd(_swiglu_backward, setup_context=_swiglu_setup)


def swiglu(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, recompute: bool = False) -> torch.Tensor:
    """down(silu(gate) * up), gate/up = chunk(x @ w_gate_up.T, 2), weights fp32 master copies cast to x's dtype."""
    _check("swiglu", x, w_gate_up, w_down, -1)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or w_gate_up.requires_grad or w_down.requires_grad)
    out, _, _ = _swiglu_fwd(x, w_gate_up, w_down, needs_grad and not recompute)
    return out


# ---------------------------------------------------------------------------------------------- token mixing


@torch.library.custom_op("trm_fast::swiglu_token_mix_fwd", mutates_args=())
def _token_fwd(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, save_gate_up: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = contiguous(x)
    B, L, D = x.shape
    wgu = contiguous(w_gate_up.to(x.dtype))
    I = wgu.shape[0] // 2
    h = torch.empty(B, I, D, dtype=x.dtype, device=x.device)
    gu = torch.empty(B, 2 * I, D, dtype=x.dtype, device=x.device) if save_gate_up else h.new_empty(0)
    kernels.token_gate_up(x, wgu, h, gu if save_gate_up else None)
    out = torch.matmul(w_down.to(x.dtype), h)  # (L, I) @ (B, I, D) -> (B, L, D): no transpose
    return out, h, gu


@_token_fwd.register_fake
def _(x, w_gate_up, w_down, save_gate_up):
    B, L, D = x.shape
    I = w_gate_up.shape[0] // 2
    return torch.empty_like(x), x.new_empty(B, I, D), x.new_empty(B, 2 * I, D) if save_gate_up else x.new_empty(0)


@torch.library.custom_op("trm_fast::swiglu_token_mix_bwd", mutates_args=())
def _token_bwd(dout: torch.Tensor, x: torch.Tensor, h: torch.Tensor, gu: torch.Tensor, w_gate_up: torch.Tensor,
               w_down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, dout = contiguous(x), contiguous(dout)
    B, L, D = x.shape
    wgu = contiguous(w_gate_up.to(x.dtype))
    I = wgu.shape[0] // 2
    dh = torch.matmul(w_down.to(x.dtype).t(), dout)  # (I, L) @ (B, L, D) -> (B, I, D)
    d_w_down = bmm_sum_fp32(dout, h.transpose(1, 2))  # sum_b (L, D) @ (D, I)
    dgu = torch.empty(B, 2 * I, D, dtype=x.dtype, device=x.device)
    if gu.numel():  # per batch element the gate block (I*D) precedes the up block: the same halves layout
        kernels.swiglu_bwd_from_saved(gu.view(B, 2 * I * D), contiguous(dh).view(B, I * D), dgu.view(B, 2 * I * D))
    else:
        kernels.token_gate_up(x, wgu, h=None, dh=contiguous(dh), dgu=dgu)
    dx = torch.matmul(wgu.t(), dgu)  # (L, 2I) @ (B, 2I, D) -> (B, L, D)
    d_w_gate_up = bmm_sum_fp32(dgu, x.transpose(1, 2))  # sum_b (2I, D) @ (D, L)
    return dx, d_w_gate_up, d_w_down


@_token_bwd.register_fake
def _(dout, x, h, gu, w_gate_up, w_down):
    return torch.empty_like(x), w_gate_up.new_empty(w_gate_up.shape, dtype=torch.float32), w_down.new_empty(w_down.shape, dtype=torch.float32)


def _token_setup(ctx, inputs, output):
    x, w_gate_up, w_down, _ = inputs
    _, h, gu = output
    ctx.save_for_backward(x, h, gu, w_gate_up, w_down)


def _token_backward(ctx, dout, dh_unused, dgu_unused):
    x, h, gu, w_gate_up, w_down = ctx.saved_tensors
    dx, dwgu, dwd = _token_bwd(dout, x, h, gu, w_gate_up, w_down)
    return dx, dwgu.to(w_gate_up.dtype), dwd.to(w_down.dtype), None


_token_fwd.register_autograd(_token_backward, setup_context=_token_setup)


def swiglu_token_mix(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, recompute: bool = False) -> torch.Tensor:
    """The SwiGLU along the sequence axis of (B, L, D): w_gate_up (2I, L), w_down (L, I)."""
    if x.dim() != 3:
        raise ValueError(f"swiglu_token_mix: x must be (batch, seq, channels), got shape {tuple(x.shape)}")
    _check("swiglu_token_mix", x, w_gate_up, w_down, 1)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or w_gate_up.requires_grad or w_down.requires_grad)
    out, _, _ = _token_fwd(x, w_gate_up, w_down, needs_grad and not recompute)
    return out
