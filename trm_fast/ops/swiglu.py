"""SwiGLU (channel) and the MLP-mixer's token-mixing SwiGLU as torch custom ops with autograd.

Forward: one Triton kernel runs the gate_up matmul and writes h = silu(gate) * up (I wide); the down projection is
a plain cuBLAS matmul (nothing to fuse into it). Weights are fp32 master copies cast to the activation dtype, as
reference.linear does.

Saved for backward (the "swiglu"/"swiglu_token_mix" Triton entries of trm_fast.ops.levels.OP_SAVES, which decide
it): x, h, and, with `recompute=False` (the default, recompute level 0), gate/up (2I wide) so the backward's SwiGLU
step is elementwise. With `recompute=True` nothing 2I wide is saved: the backward re-runs the gate_up matmul with the
derivative in its epilogue. silu is never saved. Without grad (grad mode off or no input requiring grad) only h is
written.

`post_norm=True` returns the block's post-norm of the residual sum instead, rms_norm(x + swiglu(x)) (over channels;
over the sequence axis for the token form; with `inject`, also y + inject), from the same autograd node: the norm
kernel reads the op's output and x in the forward, as a separate norm op would; in the backward the norm's gradient
lands in a buffer this node owns and the last matmul adds into it, d x = d s + dgu @ W (cuBLAS with beta = 1, in
place), so no separate add of the residual's gradient runs. (An out-of-place torch.addmm(d s, dgu, W) would not do:
on CUDA it copies d s into its output first, a copy as costly as the add.) Saved: what the op and the norm each save.

Backward matmuls (d h, d x, weight gradients) are cuBLAS. Weight gradients come out in fp32 (fp32 accumulation,
never rounded to bf16), so autograd sums the 2(n+1) tied uses of a weight in the recursion in fp32.
The token form's weight gradients sum over (batch, channel) in one Triton kernel (kernels/matmul.py) that reads
(B, W, D) operands in place: no permuted copies and no B per-sample fp32 products.
"""
from __future__ import annotations

import torch

from trm_fast.kernels import matmul as matmul_kernels
from trm_fast.kernels import swiglu as kernels
from trm_fast.kernels import token_mixer as token_mixer_kernels
from trm_fast.ops.norm import check_post_norm, post_norm_backward, post_norm_fake, post_norm_forward
from trm_fast.ops.reference import RMS_EPS, mm_fp32
from trm_fast.ops._custom_op import (INT32_MAX, CheckedSignatures, cast_weight, check_activation, check_weight,
                                     contiguous, custom_op, outputs_without_grad, tensor_key)
from trm_fast.ops.levels import OP_SAVES

__all__ = ["swiglu", "swiglu_cublas", "swiglu_token_mix"]


# (op, implementation, recompute) -> whether the forward saves gate/up for its backward (when autograd records it); a
# plain dict, not functools.cache: torch.compile traces through it
_KEEPS_GATE_UP = {(op, implementation, recompute): saves[mode].keeps("gate_up")
                  for (op, implementation), saves in OP_SAVES.items()
                  for recompute, mode in ((False, "plain"), (True, "recompute")) if mode in saves}


def _check(op: str, x, w_gate_up, w_down, width_axis: int) -> None:
    check_activation(op, "x", x, ndim=3 if width_axis == 1 else None)
    if not isinstance(w_gate_up, torch.Tensor) or w_gate_up.dim() != 2 or w_gate_up.shape[0] % 2:
        shape = tuple(w_gate_up.shape) if isinstance(w_gate_up, torch.Tensor) else type(w_gate_up).__name__
        raise ValueError(f"{op}: w_gate_up must be (2I, width) with gate rows [0, I) and up rows [I, 2I), got {shape}")
    width = x.shape[width_axis]
    hidden = w_gate_up.shape[0] // 2
    check_weight(op, "w_gate_up", w_gate_up, (2 * hidden, width), x.device)
    check_weight(op, "w_down", w_down, (width, hidden), x.device)
    if width_axis == 1 and max(2 * hidden, x.shape[1]) * x.shape[2] > INT32_MAX:
        raise ValueError(f"{op}: one batch element's gate_up has {2 * hidden * x.shape[2]} values; at most 2^31 - 1 supported")


# ---------------------------------------------------------------------------------------------- channel


@custom_op("trm_fast::swiglu_fwd")
def _swiglu_fwd(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, save_gate_up: bool,
                post_norm: bool = False, inject: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x2d = contiguous(x.reshape(-1, x.shape[-1]))
    wgu = cast_weight(w_gate_up, x.dtype)
    I = wgu.shape[0] // 2
    h = torch.empty(x2d.shape[0], I, dtype=x.dtype, device=x.device)
    gu = torch.empty(x2d.shape[0], 2 * I, dtype=x.dtype, device=x.device) if save_gate_up else h.new_empty(0)
    kernels.channel_gate_up(x2d, wgu, h, gu if save_gate_up else None)
    out = (h @ cast_weight(w_down, x.dtype).t()).view(x.shape[:-1] + (w_down.shape[0],))
    out, rstd, out_sum = post_norm_forward(out, x2d.view(x.shape), post_norm, inject, False)
    return out, h, gu, rstd, out_sum


@_swiglu_fwd.register_fake
def _fake_channel(x, w_gate_up, w_down, save_gate_up, post_norm=False, inject=None):
    M = x.numel() // x.shape[-1]
    I = w_gate_up.shape[0] // 2
    out = x.new_empty(x.shape[:-1] + (w_down.shape[0],))
    y, rstd, out_sum = post_norm_fake(out, post_norm, inject, False)
    return y, x.new_empty(M, I), x.new_empty(M, 2 * I) if save_gate_up else x.new_empty(0), rstd, out_sum


def _channel_backward(dout, dsum, x, h, w_gate_up, w_down, y, rstd, gate_up_grad):
    """The channel SwiGLU forms' shared backward: the post-norm's d s (when y is given), the down projection's
    gradients, gate_up_grad(x2d, dh) -> d gate/up (the form's own SwiGLU step), then d x (the residual's gradient
    added by the matmul over d s) and the gate_up weight gradient."""
    x2d = contiguous(x.reshape(-1, x.shape[-1]))
    ds = post_norm_backward(dout, dsum, y, rstd, False)
    dout2d = contiguous(ds.reshape(-1, ds.shape[-1]).to(x.dtype))
    dh = dout2d @ cast_weight(w_down, x.dtype)
    d_w_down = mm_fp32(dout2d.t(), h)
    dgu = gate_up_grad(x2d, dh)
    del dh  # not needed past this point: freed before d x is allocated
    dx = _input_grad(dout2d if y is not None else None, dgu, cast_weight(w_gate_up, x.dtype)).view(x.shape)
    d_w_gate_up = mm_fp32(dgu.t(), x2d)
    return dx, d_w_gate_up, d_w_down


@custom_op("trm_fast::swiglu_bwd")
def _swiglu_bwd(dout: torch.Tensor | None, dsum: torch.Tensor | None, x: torch.Tensor, h: torch.Tensor,
                gu: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, y: torch.Tensor | None,
                rstd: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def gate_up_grad(x2d, dh):  # from gate/up saved, or the gate_up matmul re-run with the derivative in its epilogue
        wgu = cast_weight(w_gate_up, x.dtype)
        dgu = torch.empty(x2d.shape[0], wgu.shape[0], dtype=x.dtype, device=x.device)
        if gu.numel():
            kernels.swiglu_bwd_from_saved(gu, dh, dgu)
        else:
            kernels.channel_gate_up(x2d, wgu, h=None, dh=dh, dgu=dgu)
        return dgu

    return _channel_backward(dout, dsum, x, h, w_gate_up, w_down, y, rstd, gate_up_grad)


def _input_grad(ds2d: torch.Tensor | None, dgu: torch.Tensor, wgu: torch.Tensor) -> torch.Tensor:
    """dgu @ wgu, or with the post-norm's d s (owned by the backward op, contiguous), d s + dgu @ wgu written over
    d s by the matmul's epilogue."""
    return dgu @ wgu if ds2d is None else ds2d.addmm_(dgu, wgu)


def _setup(ctx, inputs, output):
    x, w_gate_up, w_down, _, post_norm, inject = inputs
    out, h, gu, rstd, out_sum = output
    ctx.has_inject = inject is not None
    outputs_without_grad(ctx, h, gu, rstd, *(() if ctx.has_inject else (out_sum,)))
    ctx.save_for_backward(x, h, gu, w_gate_up, w_down, out if post_norm else None, rstd if post_norm else None)


def _weight_grads_fake(dout, dsum, x, h, gu, w_gate_up, w_down, y, rstd):
    f32 = torch.float32
    return torch.empty_like(x), w_gate_up.new_empty(w_gate_up.shape, dtype=f32), w_down.new_empty(w_down.shape, dtype=f32)


def _register_autograd(forward_op, backward_op) -> None:
    """The autograd rule every SwiGLU form shares: forward_op(x, w_gate_up, w_down, save_gate_up, post_norm,
    inject) returns (out, h, gate/up, rstd, out + inject) and saves x, h, gate/up, the weights and, with the
    post-norm, its output and rstd; backward_op(d out, d sum, *saved) returns d x and the weight gradients in fp32,
    cast here to the masters' dtype. d inject is d sum."""
    backward_op.register_fake(_weight_grads_fake)

    def backward(ctx, dout, _dh, _dgu, _drstd, dsum):
        if dout is None and dsum is None:
            return None, None, None, None, None, None
        x, h, gu, w_gate_up, w_down, y, rstd = ctx.saved_tensors
        dx, dwgu, dwd = backward_op(dout, dsum, x, h, gu, w_gate_up, w_down, y, rstd)
        return dx, dwgu.to(w_gate_up.dtype), dwd.to(w_down.dtype), None, None, dsum

    forward_op.register_autograd(backward, setup_context=_setup)


_register_autograd(_swiglu_fwd, _swiglu_bwd)


def _checks(op: str, x, w_gate_up, w_down, post_norm: bool, inject, width_axis: int) -> None:
    _check(op, x, w_gate_up, w_down, width_axis)
    check_post_norm(op, x, post_norm, inject, seq_axis=width_axis == 1)


_CHECKED = CheckedSignatures()


def _call(forward_op, op: str, x, w_gate_up, w_down, recompute: bool, post_norm: bool, inject, implementation: str,
          width_axis: int):
    try:
        key = (op, tensor_key(x), tensor_key(w_gate_up), tensor_key(w_down), tensor_key(inject), bool(post_norm))
    except AttributeError:
        key = None
    _CHECKED.check(key, _checks, op, x, w_gate_up, w_down, post_norm, inject, width_axis)
    records = torch.is_grad_enabled() and (x.requires_grad or w_gate_up.requires_grad or w_down.requires_grad)
    if not records and post_norm and forward_op is _token_fwd and token_mixer_kernels.fits(x.shape[1]):
        return _token_mixer_fwd(x, w_gate_up, w_down)  # no backward: h need not exist (kernels/token_mixer.py)
    saves = records and _KEEPS_GATE_UP[(op, implementation, bool(recompute))]
    out, _, _, _, out_sum = forward_op(x, w_gate_up, w_down, saves, post_norm, inject)
    return out if inject is None else (out, out_sum)


def swiglu(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, recompute: bool = False, *,
           post_norm: bool = False, inject: torch.Tensor | None = None):
    """down(silu(gate) * up) with gate, up = chunk(x @ w_gate_up.T, 2) (gate first); w_gate_up (2I, D),
    w_down (D, I). `recompute`: re-run the gate_up matmul in backward instead of saving gate/up. `post_norm`:
    rms_norm(x + swiglu(x)) over channels instead, and with `inject` (x's shape and dtype) (that, that + inject)."""
    return _call(_swiglu_fwd, "swiglu", x, w_gate_up, w_down, recompute, post_norm, inject, "triton", -1)


# ------------------------------------------------------------------------- channel, cuBLAS contender ("triton_cublas")
# The gate_up matmul on cuBLAS (TMA-fed, persistent, warp-specialised on Hopper, where the fused kernel's mainloop is
# cp.async-fed and non-persistent) and silu(gate) * up in one elementwise kernel: gate/up (2I wide) is written and read
# back once more than by the fused kernel. Backward: the elementwise SwiGLU step from gate/up, saved (recompute=False)
# or re-made by the same matmul (recompute=True); the other matmuls as the fused op's.


def _gate_up_matmul(x2d: torch.Tensor, w_gate_up: torch.Tensor) -> torch.Tensor:
    return x2d @ cast_weight(w_gate_up, x2d.dtype).t()


@custom_op("trm_fast::swiglu_cublas_fwd")
def _cublas_fwd(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, save_gate_up: bool,
                post_norm: bool = False, inject: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x2d = contiguous(x.reshape(-1, x.shape[-1]))
    gu = _gate_up_matmul(x2d, w_gate_up)
    h = torch.empty(x2d.shape[0], gu.shape[1] // 2, dtype=x.dtype, device=x.device)
    kernels.swiglu_fwd_from_gate_up(gu, h)
    out = (h @ cast_weight(w_down, x.dtype).t()).view(x.shape[:-1] + (w_down.shape[0],))
    out, rstd, out_sum = post_norm_forward(out, x2d.view(x.shape), post_norm, inject, False)
    return out, h, gu if save_gate_up else h.new_empty(0), rstd, out_sum


@_cublas_fwd.register_fake
def _(x, w_gate_up, w_down, save_gate_up, post_norm=False, inject=None):
    return _fake_channel(x, w_gate_up, w_down, save_gate_up, post_norm, inject)


@custom_op("trm_fast::swiglu_cublas_bwd")
def _cublas_bwd(dout: torch.Tensor | None, dsum: torch.Tensor | None, x: torch.Tensor, h: torch.Tensor,
                gu: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, y: torch.Tensor | None,
                rstd: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def gate_up_grad(x2d, dh):  # the elementwise step from gate/up, saved or re-made by the cuBLAS matmul
        saved = gu if gu.numel() else _gate_up_matmul(x2d, w_gate_up)
        dgu = torch.empty_like(saved)
        kernels.swiglu_bwd_from_saved(saved, dh, dgu)
        return dgu

    return _channel_backward(dout, dsum, x, h, w_gate_up, w_down, y, rstd, gate_up_grad)


_register_autograd(_cublas_fwd, _cublas_bwd)


def swiglu_cublas(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, recompute: bool = False, *,
                  post_norm: bool = False, inject: torch.Tensor | None = None):
    """swiglu's contract (same arguments, same math) with the gate_up matmul on cuBLAS and silu(gate) * up in an
    elementwise kernel: the "triton_cublas" implementation of the op "swiglu"."""
    return _call(_cublas_fwd, "swiglu", x, w_gate_up, w_down, recompute, post_norm, inject, "triton_cublas", -1)


# ---------------------------------------------------------------------------------------------- token mixing


def _token_weight(w_gate_up: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """w_gate_up (2I, L) in `dtype`, stored transposed as (L, 2I) rows: the gate_up kernel then loads its weight
    tiles along 2I (a multiple of 16) with cp.async, where rows of L = 97 or 916 values would be masked scalar loads."""
    return cast_weight(w_gate_up, dtype, transposed=True).t()


def _weight_times(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """w (M, K) @ t[b] (K, N) for every b of t (B, K, N), as (B, M, N): one batched matmul over a stride-0 view of w,
    which copies nothing. torch.matmul's broadcasting instead folds the batch into the matrix and, when w requires
    grad (a parameter, even inside the op), copies t's transpose first: a (B, 2I, D) copy for d x."""
    return torch.bmm(w.expand(t.shape[0], -1, -1), t)


@custom_op("trm_fast::swiglu_token_mix_fwd")
def _token_fwd(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, save_gate_up: bool,
               post_norm: bool = False, inject: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = contiguous(x)
    B, L, D = x.shape
    wgu = _token_weight(w_gate_up, x.dtype)
    I = wgu.shape[0] // 2
    h = torch.empty(B, I, D, dtype=x.dtype, device=x.device)
    gu = torch.empty(B, 2 * I, D, dtype=x.dtype, device=x.device) if save_gate_up else h.new_empty(0)
    if post_norm and inject is None and token_mixer_kernels.fits(L):  # one kernel, h written once, never read back
        y, rstd = torch.empty_like(x), torch.empty(B, D, dtype=torch.float32, device=x.device)
        token_mixer_kernels.token_mixer_fused(x, wgu, cast_weight(w_down, x.dtype), RMS_EPS, y, rstd, h,
                                              gu if save_gate_up else None)
        return y, h, gu, rstd, x.new_empty(0)
    kernels.token_gate_up(x, wgu, h, gu if save_gate_up else None)
    out = _weight_times(cast_weight(w_down, x.dtype), h)  # (L, I) @ (B, I, D) -> (B, L, D): no transpose
    out, rstd, out_sum = post_norm_forward(out, x, post_norm, inject, True)
    return out, h, gu, rstd, out_sum


@_token_fwd.register_fake
def _(x, w_gate_up, w_down, save_gate_up, post_norm=False, inject=None):
    B, L, D = x.shape
    I = w_gate_up.shape[0] // 2
    y, rstd, out_sum = post_norm_fake(x.new_empty(B, L, D), post_norm, inject, True)
    return y, x.new_empty(B, I, D), x.new_empty(B, 2 * I, D) if save_gate_up else x.new_empty(0), rstd, out_sum


@custom_op("trm_fast::swiglu_token_mix_bwd")
def _token_bwd(dout: torch.Tensor | None, dsum: torch.Tensor | None, x: torch.Tensor, h: torch.Tensor,
               gu: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, y: torch.Tensor | None,
               rstd: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = contiguous(x)
    dout = contiguous(post_norm_backward(dout, dsum, y, rstd, True).to(x.dtype))
    B, L, D = x.shape
    wgu = _token_weight(w_gate_up, x.dtype)
    I = wgu.shape[0] // 2
    dh = _weight_times(cast_weight(w_down, x.dtype).t(), dout)  # (I, L) @ (B, L, D) -> (B, I, D)
    d_w_down = matmul_kernels.sum_over_batch_abt(dout, h)  # sum_b (L, D) @ (D, I), fp32
    dgu = torch.empty(B, 2 * I, D, dtype=x.dtype, device=x.device)
    if gu.numel():  # per batch element the gate block (I*D) precedes the up block: rows of 2 * I * D
        kernels.swiglu_bwd_from_saved(gu.view(B, 2 * I * D), contiguous(dh).view(B, I * D), dgu.view(B, 2 * I * D))
    else:
        kernels.token_gate_up(x, wgu, h=None, dh=contiguous(dh), dgu=dgu)
    del dh  # not needed past this point: freed before d x is allocated
    # (L, 2I) @ (B, 2I, D) -> (B, L, D); with the post-norm added over its d s (owned here) by the epilogue
    dx = _weight_times(wgu.t(), dgu) if y is None else dout.baddbmm_(wgu.t().expand(B, -1, -1), dgu)
    d_w_gate_up = matmul_kernels.sum_over_batch_abt(dgu, x)  # sum_b (2I, D) @ (D, L), fp32
    return dx, d_w_gate_up, d_w_down


_register_autograd(_token_fwd, _token_bwd)


@custom_op("trm_fast::swiglu_token_mix_post_norm_nograd")
def _token_mixer_fwd(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """rms_norm over L of x + swiglu_token_mix(x), for calls autograd does not record (no autograd rule: _call
    routes only those here): one kernel, h never written (kernels/token_mixer.py)."""
    x = contiguous(x)
    y = torch.empty_like(x)
    token_mixer_kernels.token_mixer_fused(x, _token_weight(w_gate_up, x.dtype), cast_weight(w_down, x.dtype),
                                          RMS_EPS, y)
    return y


@_token_mixer_fwd.register_fake
def _(x, w_gate_up, w_down):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def swiglu_token_mix(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, recompute: bool = False, *,
                     post_norm: bool = False) -> torch.Tensor:
    """The SwiGLU along the sequence axis of x (B, L, D): w_gate_up (2I, L), w_down (L, I), no transpose copies.
    out[b, :, d] = w_down @ (silu(g) * u), [g; u] = w_gate_up @ x[b, :, d]. `post_norm`: rms_norm(x + that) over
    the sequence axis instead."""
    return _call(_token_fwd, "swiglu_token_mix", x, w_gate_up, w_down, recompute, post_norm, None, "triton", 1)
