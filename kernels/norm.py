"""Residual add + RMSNorm without gain (eps 1e-5, fp32 statistics) in one pass, over channels or over the
sequence axis, with backward from the saved OUTPUT and per-row rstd (the input is never saved).

    forward:  s = round_to_dtype(residual + x);  y = s * rstd,  rstd = 1 / sqrt(mean(s^2) + eps)
    backward: with y_hat = y (the normalised value), ds = rstd * (dy - y_hat * mean(dy * y_hat)),
              and d residual = d x = ds.

The sum is rounded to the activation dtype before the statistics, as the reference (and the published code)
adds in that dtype. Plain-PyTorch forms of both directions: `add_rms_norm_reference`, `rms_norm_backward_reference`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels import reference

# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _add_rms_norm_fwd(x_ptr, r_ptr, y_ptr, rstd_ptr, n_rows, n_cols, eps,
                      BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """Channel form: each program normalises ROWS rows of n_cols (<= BLOCK) contiguous values."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    mask = (rows < n_rows) & (cols < n_cols)
    offs = rows * n_cols + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0)
    s = (r + x).to(y_ptr.dtype.element_ty).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / n_cols + eps)
    tl.store(y_ptr + offs, (s * rstd[:, None]).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows.reshape([ROWS]), rstd, mask=rows.reshape([ROWS]) < n_rows)


@triton.jit
def _rms_norm_bwd(dy_ptr, y_ptr, rstd_ptr, dx_ptr, n_rows, n_cols,
                  BLOCK: tl.constexpr, ROWS: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    mask = (rows < n_rows) & (cols < n_cols)
    offs = rows * n_cols + cols
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows.reshape([ROWS]), mask=rows.reshape([ROWS]) < n_rows, other=0.0)
    mean_dot = tl.sum(dy * y, axis=1) / n_cols
    dx = rstd[:, None] * (dy - y * mean_dot[:, None])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rms_norm_seq_fwd(x_ptr, r_ptr, y_ptr, rstd_ptr, L, D, eps,
                          BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sequence form on (B, L, D): program (b, d-tile) normalises every column d over the L axis, reading
    (BLOCK_L, BLOCK_D) tiles in place (no transpose). Two passes over L: statistics, then output."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    base = b * L * D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)[:, None]
        mask = (l < L) & (d < D)
        offs = base + l.to(tl.int64) * D + d
        s = (tl.load(r_ptr + offs, mask=mask, other=0.0) + tl.load(x_ptr + offs, mask=mask, other=0.0))
        s = s.to(y_ptr.dtype.element_ty).to(tl.float32)
        acc += tl.sum(s * s, axis=0)
    rstd = 1.0 / tl.sqrt(acc / L + eps)
    for l0 in range(0, L, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)[:, None]
        mask = (l < L) & (d < D)
        offs = base + l.to(tl.int64) * D + d
        s = (tl.load(r_ptr + offs, mask=mask, other=0.0) + tl.load(x_ptr + offs, mask=mask, other=0.0))
        s = s.to(y_ptr.dtype.element_ty).to(tl.float32)
        tl.store(y_ptr + offs, (s * rstd[None, :]).to(y_ptr.dtype.element_ty), mask=mask)
    dd = d.reshape([BLOCK_D])
    tl.store(rstd_ptr + b * D + dd, rstd, mask=dd < D)


@triton.jit
def _rms_norm_seq_bwd(dy_ptr, y_ptr, rstd_ptr, dx_ptr, L, D,
                      BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    dd = d.reshape([BLOCK_D])
    base = b * L * D
    rstd = tl.load(rstd_ptr + b * D + dd, mask=dd < D, other=0.0)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)[:, None]
        mask = (l < L) & (d < D)
        offs = base + l.to(tl.int64) * D + d
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(dy * y, axis=0)
    mean_dot = acc / L
    for l0 in range(0, L, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)[:, None]
        mask = (l < L) & (d < D)
        offs = base + l.to(tl.int64) * D + d
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dx = rstd[None, :] * (dy - y * mean_dot[None, :])
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------- launch configs


def channel_config(n_cols: int) -> dict:
    """One row per program for wide rows; several small rows per program otherwise (fewer, fuller programs)."""
    block = triton.next_power_of_2(n_cols)
    rows = max(1, min(16, 2048 // block))
    return {"BLOCK": block, "ROWS": rows, "num_warps": 4 if block * rows >= 2048 else 2}


def seq_config(L: int, D: int) -> dict:
    """(BLOCK_L, BLOCK_D) tiles: 32 channels wide keeps every column's reads coalesced and programs numerous."""
    block_d = min(32, triton.next_power_of_2(D))
    block_l = min(64, triton.next_power_of_2(L))
    return {"BLOCK_L": block_l, "BLOCK_D": block_d, "num_warps": 4}


# ---------------------------------------------------------------------------------------------- launchers


def add_rms_norm_fwd(x: torch.Tensor, residual: torch.Tensor, eps: float, y: torch.Tensor, rstd: torch.Tensor) -> None:
    """y <- rms_norm(residual + x) over the last axis; rstd <- per-row 1/rms (fp32). All contiguous."""
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols
    cfg = channel_config(n_cols)
    grid = (triton.cdiv(n_rows, cfg["ROWS"]),)
    _add_rms_norm_fwd[grid](x, residual, y, rstd, n_rows, n_cols, float(eps),
                            BLOCK=cfg["BLOCK"], ROWS=cfg["ROWS"], num_warps=cfg["num_warps"])


def rms_norm_bwd(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, dx: torch.Tensor) -> None:
    n_cols = y.shape[-1]
    n_rows = y.numel() // n_cols
    cfg = channel_config(n_cols)
    grid = (triton.cdiv(n_rows, cfg["ROWS"]),)
    _rms_norm_bwd[grid](dy, y, rstd, dx, n_rows, n_cols, BLOCK=cfg["BLOCK"], ROWS=cfg["ROWS"], num_warps=cfg["num_warps"])


def add_rms_norm_seq_fwd(x: torch.Tensor, residual: torch.Tensor, eps: float, y: torch.Tensor, rstd: torch.Tensor) -> None:
    """(B, L, D): y <- rms_norm(residual + x) over L; rstd (B, D) fp32."""
    B, L, D = x.shape
    cfg = seq_config(L, D)
    grid = (B, triton.cdiv(D, cfg["BLOCK_D"]))
    _add_rms_norm_seq_fwd[grid](x, residual, y, rstd, L, D, float(eps),
                                BLOCK_L=cfg["BLOCK_L"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"])


def rms_norm_seq_bwd(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, dx: torch.Tensor) -> None:
    B, L, D = y.shape
    cfg = seq_config(L, D)
    grid = (B, triton.cdiv(D, cfg["BLOCK_D"]))
    _rms_norm_seq_bwd[grid](dy, y, rstd, dx, L, D, BLOCK_L=cfg["BLOCK_L"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"])


# ---------------------------------------------------------------------------------------------- references


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, eps: float = reference.RMS_EPS, dim: int = -1):
    """(y, rstd) in plain PyTorch, the kernels' oracle (rstd keeps the reduced axis squeezed)."""
    s = (residual + x).float()
    rstd = torch.rsqrt(s.square().mean(dim, keepdim=True) + eps)
    return (s * rstd).to(x.dtype), rstd.squeeze(dim)


def rms_norm_backward_reference(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The hand-written backward from the output: ds = rstd * (dy - y * mean(dy * y)) along `dim`."""
    dy32, y32 = dy.to(torch.promote_types(dy.dtype, torch.float32)), y.to(torch.promote_types(y.dtype, torch.float32))
    r = rstd.unsqueeze(dim)
    return (r * (dy32 - y32 * (dy32 * y32).mean(dim, keepdim=True))).to(dy.dtype)


# ---------------------------------------------------------------------------------------------- AOT specs


def aot_specs(arch: int = 90, dtype: str = "bf16") -> list[dict]:
    """Every kernel at every launch config the presets use (D = 512; L = 97 and 916 for the sequence form)."""
    specs = []
    cc = channel_config(512)
    for label, fn, sig in (
        ("add_rms_norm_fwd", _add_rms_norm_fwd,
         {"x_ptr": f"*{dtype}", "r_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "rstd_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "eps": "fp32"}),
        ("rms_norm_bwd", _rms_norm_bwd,
         {"dy_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "rstd_ptr": "*fp32", "dx_ptr": f"*{dtype}", "n_rows": "i32", "n_cols": "i32"}),
    ):
        specs.append({"label": f"{label}[D=512]", "fn": fn, "signature": sig,
                      "constexprs": {"BLOCK": cc["BLOCK"], "ROWS": cc["ROWS"]}, "num_warps": cc["num_warps"],
                      "num_stages": 1, "is_matmul": False})
    for L in (97, 916):
        sc = seq_config(L, 512)
        for label, fn, sig in (
            ("add_rms_norm_seq_fwd", _add_rms_norm_seq_fwd,
             {"x_ptr": f"*{dtype}", "r_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "rstd_ptr": "*fp32", "L": "i32", "D": "i32", "eps": "fp32"}),
            ("rms_norm_seq_bwd", _rms_norm_seq_bwd,
             {"dy_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "rstd_ptr": "*fp32", "dx_ptr": f"*{dtype}", "L": "i32", "D": "i32"}),
        ):
            specs.append({"label": f"{label}[L={L},D=512]", "fn": fn, "signature": sig,
                          "constexprs": {"BLOCK_L": sc["BLOCK_L"], "BLOCK_D": sc["BLOCK_D"]}, "num_warps": sc["num_warps"],
                          "num_stages": 1, "is_matmul": False})
    return specs
