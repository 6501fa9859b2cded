"""The MLP-mixer's whole token-mixing sub-layer and its post-norm in one kernel, for calls without a backward.

    y[b, :, d] = rms_norm over L of (x[b, :, d] + W_down @ (silu(W_gate @ x[b, :, d]) * (W_up @ x[b, :, d])))

One program takes one batch element and a tile of BLOCK_D channels: it loads that (L, BLOCK_D) slice of x once,
then walks the hidden size I in tiles of BLOCK_I: gate and up (BLOCK_I, BLOCK_D) from two matmuls over L, h =
silu(gate) * up rounded to the activation dtype, and acc (L, BLOCK_D) += W_down[:, tile] @ h. The epilogue adds the
residual and normalises each channel over L, so the whole sequence must fit one tile (L <= MAX_L). The unfused op
writes h, I wide (5x the activation at the sudoku preset: I = 512, L = 97), reads it back for the down projection,
and writes the sub-layer's output for the norm kernel to read. Here, without grad (two thirds of the recursion's
calls: the first T - 1 cycles), h never reaches memory; with grad (SAVE_H) it is written once for the backward,
with the norm's rstd, and with SAVE_GU gate/up too (recomputation level 0), and never read back.

Roundings follow the unfused op: h and the matmul's output are rounded to the activation dtype, s = out + x is
rounded again (the reference adds in the activation dtype), statistics in fp32 (trm_fast/kernels/norm.py). Only the
order of the down projection's fp32 sums differs.

Weights in the activation dtype: W_gate_up (2I, L) stored transposed (element (i, l) at l * stride_wgu_l + i, as the
ops cast it: trm_fast.ops.swiglu._token_weight), W_down (L, I) with row stride stride_wd_l. The plain-PyTorch form:
`token_mixer_reference`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels import launch_configs

MAX_L = launch_configs.TOKEN_MIXER_MAX_L


@triton.jit
def _token_mixer_fused(x_ptr, wgu_ptr, wd_ptr, y_ptr, rstd_ptr, h_ptr, gu_ptr, L, D, I, eps, stride_wgu_l,
                       stride_wd_l, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr,
                       IEEE: tl.constexpr, SAVE_H: tl.constexpr, SAVE_GU: tl.constexpr):
    n_d_tiles = tl.cdiv(D, BLOCK_D)  # one flat grid: neighbouring programs take neighbouring channel tiles
    d = (tl.program_id(0) % n_d_tiles) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = (tl.program_id(0) // n_d_tiles).to(tl.int64)
    base = b * L * D  # 64-bit base per batch element; offsets inside one (L * D < 2^31) stay 32-bit
    l = tl.arange(0, BLOCK_L)
    l_ok = l < L
    xy_offs = l[:, None] * D + d[None, :]
    xy_mask = l_ok[:, None] & (d[None, :] < D)
    x = tl.load(x_ptr + base + xy_offs, mask=xy_mask, other=0.0)  # (BLOCK_L, BLOCK_D), zero past L: a K pad
    acc = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for i0 in range(0, I, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        i_ok = i < I
        w_offs = l[None, :] * stride_wgu_l + i[:, None]  # gate rows i, up rows I + i: (BLOCK_I, BLOCK_L)
        w_mask = i_ok[:, None] & l_ok[None, :]
        w_gate = tl.load(wgu_ptr + w_offs, mask=w_mask, other=0.0)
        w_up = tl.load(wgu_ptr + I + w_offs, mask=w_mask, other=0.0)
        w_down = tl.load(wd_ptr + l[:, None] * stride_wd_l + i[None, :], mask=l_ok[:, None] & i_ok[None, :],
                         other=0.0)  # (BLOCK_L, BLOCK_I)
        if IEEE:
            gate = tl.dot(w_gate, x, input_precision="ieee")
            up = tl.dot(w_up, x, input_precision="ieee")
        else:
            gate = tl.dot(w_gate, x)
            up = tl.dot(w_up, x)
        h = (gate / (1.0 + tl.exp(-gate)) * up).to(x.dtype)  # rows past I are silu(0) * 0 = 0
        if SAVE_H:  # for a backward: h (B, I, D) and rstd, and with SAVE_GU gate/up (B, 2I, D), gate block first
            hd_offs = i[:, None] * D + d[None, :]
            hd_mask = i_ok[:, None] & (d[None, :] < D)
            tl.store(h_ptr + b * I * D + hd_offs, h, mask=hd_mask)
            if SAVE_GU:
                tl.store(gu_ptr + b * 2 * I * D + hd_offs, gate.to(x.dtype), mask=hd_mask)
                tl.store(gu_ptr + b * 2 * I * D + I * D + hd_offs, up.to(x.dtype), mask=hd_mask)
        if IEEE:
            acc = tl.dot(w_down, h, acc, input_precision="ieee")
        else:
            acc = tl.dot(w_down, h, acc)
    out = acc.to(y_ptr.dtype.element_ty)  # the sub-layer's output, rounded as the unfused op stores it
    s = (out + x).to(y_ptr.dtype.element_ty).to(tl.float32)  # zero past L (x and the W_down rows are)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(s * s, axis=0) / L + eps)
    tl.store(y_ptr + base + xy_offs, (s * rstd[None, :]).to(y_ptr.dtype.element_ty), mask=xy_mask)
    if SAVE_H:
        tl.store(rstd_ptr + b * D + d, rstd, mask=d < D)


def fits(L: int) -> bool:
    """Whether the fused kernel takes a sequence of L tokens (the whole sequence is one tile)."""
    return L <= MAX_L


def token_mixer_fused(x: torch.Tensor, w_gate_up_t: torch.Tensor, w_down: torch.Tensor, eps: float, y: torch.Tensor,
                      rstd: torch.Tensor | None = None, h: torch.Tensor | None = None,
                      gu: torch.Tensor | None = None) -> None:
    """y <- rms_norm over L of x + token-mixing SwiGLU(x), all (B, L, D) contiguous in one dtype. w_gate_up_t:
    W_gate_up (2I, L) as its transpose's view (stride 1 along 2I), w_down (L, I) with stride 1 along I, both in x's
    dtype. L <= MAX_L. For a backward: h (B, I, D) and rstd (B, D) fp32 as well (both or neither), and gu (B, 2I, D)
    (gate/up, the gate block first) with them."""
    B, L, D = x.shape
    I = w_down.shape[1]
    if not fits(L) or w_gate_up_t.stride(0) != 1 or w_down.stride(1) != 1:
        raise ValueError(f"token_mixer_fused: L = {L} (at most {MAX_L}) and unit strides along I are required, got "
                         f"w_gate_up strides {w_gate_up_t.stride()}, w_down strides {w_down.stride()}")
    if (h is None) != (rstd is None) or (gu is not None and h is None):
        raise ValueError("token_mixer_fused: h and rstd come together, and gate/up only with them")
    cfg = launch_configs.token_mixer_config(L, D, I, x.element_size(), launch_configs.device_arch(x))
    grid = (launch_configs.cdiv(D, cfg["BLOCK_D"]) * B,)
    _token_mixer_fused[grid](x, w_gate_up_t, w_down, y, y if rstd is None else rstd, y if h is None else h,
                             y if gu is None else gu, L, D, I, float(eps), w_gate_up_t.stride(1), w_down.stride(0),
                             BLOCK_L=cfg["BLOCK_L"], BLOCK_D=cfg["BLOCK_D"], BLOCK_I=cfg["BLOCK_I"],
                             IEEE=x.dtype == torch.float32, SAVE_H=h is not None, SAVE_GU=gu is not None,
                             num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def token_mixer_reference(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, eps: float):
    """The plain-PyTorch form, with the unfused op's roundings: w_gate_up (2I, L), w_down (L, I) in x's dtype.
    Returns (y, rstd (B, D) fp32, h (B, I, D), gate/up (B, 2I, D))."""
    gate_up = torch.einsum("il,bld->bid", w_gate_up.float(), x.float())
    gate, up = gate_up.chunk(2, dim=1)
    h = (torch.nn.functional.silu(gate) * up).to(x.dtype)
    out = torch.einsum("li,bid->bld", w_down.float(), h.float()).to(x.dtype)
    s = (out + x).float()
    rstd = torch.rsqrt(s.square().mean(1, keepdim=True) + eps)
    return (s * rstd).to(x.dtype), rstd.squeeze(1), h, gate_up.to(x.dtype)
