"""Residual add + RMSNorm without gain (eps 1e-5, fp32 statistics), over channels or over the sequence axis,
with a backward that reads only the saved OUTPUT y and the fp32 rstd (the input sum is never saved).

    forward:   s = round_to_dtype(residual + x)      (the reference adds in the activation dtype)
               rstd = 1 / sqrt(mean(s^2) + eps),  y = round_to_dtype(s * rstd)
    backward:  ds = rstd * (dy - y * mean(dy * y)),  d residual = d x = ds        (all in fp32)

Derivation: y = s * r with r = (mean(s^2) + eps)^-1/2, so dr/ds_j = -r^3 s_j / N and
ds_j = r dy_j - r^3 s_j mean(dy s) = r (dy_j - y_j mean(dy y)), using s = y / r. With eps the identity
s = y / r is still exact (eps enters only r), so the formula needs no eps correction.
When y is stored in bf16, y_b = y (1 + delta), |delta| <= 2^-8: the backward then uses y_b in both places, an
error of the order of delta relative to |dy| per element, the same order as rounding ds itself to bf16.
Recomputing s would need the input, which is what this op avoids saving.

Plain-PyTorch forms of both directions: `add_rms_norm_reference`, `rms_norm_backward_reference`.
Importing this module needs Triton but no GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels import launch_configs

# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _add_rms_norm_fwd(x_ptr, r_ptr, y_ptr, rstd_ptr, inject_ptr, sum_ptr, n_rows, n_cols, eps,
                      BLOCK: tl.constexpr, ROWS: tl.constexpr, HAS_INJECT: tl.constexpr):
    """Channel form, one pass: each program normalises ROWS rows of n_cols (<= BLOCK) contiguous values.
    HAS_INJECT: also writes sum = y + inject (rounded y plus inject, in the activation dtype), the recursion's
    next network input z + (y + x), from the epilogue."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0)
    s = (r + x).to(y_ptr.dtype.element_ty).to(tl.float32)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(s * s, axis=1) / n_cols + eps)
    y = (s * rstd[:, None]).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs, y, mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)
    if HAS_INJECT:
        inject = tl.load(inject_ptr + offs, mask=mask, other=0.0)
        tl.store(sum_ptr + offs, (y + inject).to(sum_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd(dy_ptr, dsum_ptr, y_ptr, rstd_ptr, dx_ptr, n_rows, n_cols,
                  BLOCK: tl.constexpr, ROWS: tl.constexpr, HAS_DSUM: tl.constexpr):
    """HAS_DSUM: the gradient reaching y is dy + d sum (the fused injection output), added in fp32."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None] * n_cols + cols[None, :]
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DSUM:
        dy += tl.load(dsum_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=rows < n_rows, other=0.0)
    mean_dot = tl.sum(dy * y, axis=1) / n_cols
    dx = rstd[:, None] * (dy - y * mean_dot[:, None])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rms_norm_seq_fwd(x_ptr, r_ptr, y_ptr, rstd_ptr, L, D, eps,
                          BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_PASS: tl.constexpr):
    """Sequence form on (B, L, D), no transpose: program (b, d-tile) normalises BLOCK_D columns over L, reading
    (BLOCK_L, BLOCK_D) tiles in place. SINGLE_PASS (BLOCK_L >= L): the column stays in registers, inputs are
    read once; otherwise two loops over L (statistics, then output)."""
    n_d_tiles = tl.cdiv(D, BLOCK_D)  # one flat grid: neighbouring programs take neighbouring channel tiles
    d = (tl.program_id(0) % n_d_tiles) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = (tl.program_id(0) // n_d_tiles).to(tl.int64)
    base = b * L * D  # 64-bit base per batch element; offsets inside one (L * D < 2^31) stay 32-bit
    if SINGLE_PASS:
        l = tl.arange(0, BLOCK_L)
        mask = (l[:, None] < L) & (d[None, :] < D)
        offs = l[:, None] * D + d[None, :]
        s = tl.load(r_ptr + base + offs, mask=mask, other=0.0) + tl.load(x_ptr + base + offs, mask=mask, other=0.0)
        s = s.to(y_ptr.dtype.element_ty).to(tl.float32)
        rstd = 1.0 / tl.sqrt_rn(tl.sum(s * s, axis=0) / L + eps)
        tl.store(y_ptr + base + offs, (s * rstd[None, :]).to(y_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for l0 in range(0, L, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            mask = (l[:, None] < L) & (d[None, :] < D)
            offs = l[:, None] * D + d[None, :]
            s = tl.load(r_ptr + base + offs, mask=mask, other=0.0) + tl.load(x_ptr + base + offs, mask=mask, other=0.0)
            s = s.to(y_ptr.dtype.element_ty).to(tl.float32)
            acc += tl.sum(s * s, axis=0)
        rstd = 1.0 / tl.sqrt_rn(acc / L + eps)
        for l0 in range(0, L, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            mask = (l[:, None] < L) & (d[None, :] < D)
            offs = l[:, None] * D + d[None, :]
            s = tl.load(r_ptr + base + offs, mask=mask, other=0.0) + tl.load(x_ptr + base + offs, mask=mask, other=0.0)
            s = s.to(y_ptr.dtype.element_ty).to(tl.float32)
            tl.store(y_ptr + base + offs, (s * rstd[None, :]).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + b * D + d, rstd, mask=d < D)


@triton.jit
def _rms_norm_seq_bwd(dy_ptr, y_ptr, rstd_ptr, dx_ptr, L, D,
                      BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_PASS: tl.constexpr):
    n_d_tiles = tl.cdiv(D, BLOCK_D)  # one flat grid: neighbouring programs take neighbouring channel tiles
    d = (tl.program_id(0) % n_d_tiles) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = (tl.program_id(0) // n_d_tiles).to(tl.int64)
    base = b * L * D  # 64-bit base per batch element; offsets inside one (L * D < 2^31) stay 32-bit
    rstd = tl.load(rstd_ptr + b * D + d, mask=d < D, other=0.0)
    if SINGLE_PASS:
        l = tl.arange(0, BLOCK_L)
        mask = (l[:, None] < L) & (d[None, :] < D)
        offs = l[:, None] * D + d[None, :]
        dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        mean_dot = tl.sum(dy * y, axis=0) / L
        dx = rstd[None, :] * (dy - y * mean_dot[None, :])
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for l0 in range(0, L, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            mask = (l[:, None] < L) & (d[None, :] < D)
            offs = l[:, None] * D + d[None, :]
            dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            acc += tl.sum(dy * y, axis=0)
        mean_dot = acc / L
        for l0 in range(0, L, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            mask = (l[:, None] < L) & (d[None, :] < D)
            offs = l[:, None] * D + d[None, :]
            dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            dx = rstd[None, :] * (dy - y * mean_dot[None, :])
            tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------- launchers
# All tensors contiguous, x/residual/y/dy/dx of one dtype, rstd fp32 (the ops in trm_fast/ops/norm.py check).


def add_rms_norm_fwd(x: torch.Tensor, residual: torch.Tensor, eps: float, y: torch.Tensor, rstd: torch.Tensor,
                     inject: torch.Tensor | None = None, out_sum: torch.Tensor | None = None) -> None:
    """y <- rms_norm(residual + x) over the last axis; rstd <- per-row 1/rms, shape x.shape[:-1], fp32.
    With inject (x's shape and dtype): out_sum <- y + inject as well."""
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols
    cfg = launch_configs.norm_config(n_cols)
    grid = (launch_configs.cdiv(n_rows, cfg["ROWS"]),)
    has_inject = inject is not None
    _add_rms_norm_fwd[grid](x, residual, y, rstd, inject if has_inject else y, out_sum if has_inject else y,
                            n_rows, n_cols, float(eps), BLOCK=cfg["BLOCK"], ROWS=cfg["ROWS"], HAS_INJECT=has_inject,
                            num_warps=cfg["num_warps"])


def rms_norm_bwd(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, dx: torch.Tensor,
                 dsum: torch.Tensor | None = None) -> None:
    """dx <- rstd * (g - y * mean(g * y)) over the last axis, g = dy (+ dsum when given)."""
    n_cols = y.shape[-1]
    n_rows = y.numel() // n_cols
    cfg = launch_configs.norm_config(n_cols)
    grid = (launch_configs.cdiv(n_rows, cfg["ROWS"]),)
    _rms_norm_bwd[grid](dy, dsum if dsum is not None else dy, y, rstd, dx, n_rows, n_cols,
                        BLOCK=cfg["BLOCK"], ROWS=cfg["ROWS"], HAS_DSUM=dsum is not None, num_warps=cfg["num_warps"])


def _seq_launch(L: int, D: int, B: int):
    cfg = launch_configs.norm_seq_config(L, D)
    grid = (launch_configs.cdiv(D, cfg["BLOCK_D"]) * B,)
    meta = {"BLOCK_L": cfg["BLOCK_L"], "BLOCK_D": cfg["BLOCK_D"], "SINGLE_PASS": cfg["BLOCK_L"] >= L,
            "num_warps": cfg["num_warps"]}
    return grid, meta


def add_rms_norm_seq_fwd(x: torch.Tensor, residual: torch.Tensor, eps: float, y: torch.Tensor, rstd: torch.Tensor) -> None:
    """(B, L, D): y <- rms_norm(residual + x) over L; rstd (B, D) fp32."""
    B, L, D = x.shape
    grid, meta = _seq_launch(L, D, B)
    _add_rms_norm_seq_fwd[grid](x, residual, y, rstd, L, D, float(eps), **meta)


def rms_norm_seq_bwd(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, dx: torch.Tensor) -> None:
    B, L, D = y.shape
    grid, meta = _seq_launch(L, D, B)
    _rms_norm_seq_bwd[grid](dy, y, rstd, dx, L, D, **meta)


# ---------------------------------------------------------------------------------------------- references


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, eps: float, dim: int = -1):
    """(y, rstd) in plain PyTorch, the kernels' oracle (rstd has the reduced axis squeezed). The fused
    injection output is y + inject in the activation dtype. `eps` is the caller's (the model's is
    trm_fast.ops.reference.RMS_EPS): the kernels take it as an argument and define none of their own."""
    s = (residual + x).float()
    rstd = torch.rsqrt(s.square().mean(dim, keepdim=True) + eps)
    return (s * rstd).to(x.dtype), rstd.squeeze(dim)


def rms_norm_backward_reference(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The hand-written backward from the output: ds = rstd * (dy - y * mean(dy * y)) along `dim`, computed in
    at least fp32 (float64 stays float64, for gradcheck), returned in dy's dtype."""
    wide = torch.promote_types(dy.dtype, torch.float32)
    dy_w, y_w = dy.to(wide), y.to(wide)
    r = rstd.to(wide).unsqueeze(dim)
    return (r * (dy_w - y_w * (dy_w * y_w).mean(dim, keepdim=True))).to(dy.dtype)
