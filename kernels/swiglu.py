"""SwiGLU's gate_up matmul with the silu(gate) * up epilogue, and its backward elementwise step.

One kernel computes, for a tile of output columns n < I, both gate = A @ B[:, n] and up = A @ B[:, I + n] with two
fp32 accumulators, and writes only h = silu(gate) * up (I wide). With SAVE it also writes gate and up (2I wide)
for a backward that does not re-run the matmul; with RECOMPUTE it instead reads dh and writes
d(gate_up) = [dh * up * silu'(gate), dh * silu(gate)] directly (the backward that re-runs the matmul).

Everything is strided, with a batch index, so the same kernel serves
- the channel SwiGLU: A = x (M = tokens, K = D), B = W_gate_up^T, output (tokens, I);
- the token-mixing SwiGLU of the MLP-mixer on (B, L, D) without a transpose copy: per batch element,
  A = x[b]^T (M = D, K = L, read with strides (1, D)), B = W_gate_up^T (L, 2I), output h[b] stored as (I, D).

silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g))). The plain-PyTorch forms: `swiglu_gate_up_reference`,
`swiglu_backward_reference`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels import launch_configs


@triton.jit
def _swiglu_gate_up(
    a_ptr, b_ptr, h_ptr, gu_ptr, dh_ptr,
    M, N_HALF, K,
    stride_a_batch, stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_h_batch, stride_hm, stride_hn,
    stride_gu_batch, stride_gum, stride_gun,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SAVE: tl.constexpr, RECOMPUTE: tl.constexpr, IEEE: tl.constexpr,
):
    # grouped tile order: programs walk GROUP_M row blocks across every column block before the next GROUP_M,
    # so the A rows of a group are read from HBM once and reused from L2 by all column blocks
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP_M * tl.cdiv(N_HALF, BLOCK_N)
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows_in_group
    pid_n = (pid % per_group) // rows_in_group
    batch = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_base = a_ptr + batch * stride_a_batch
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    up_shift = N_HALF * stride_bn
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        a = tl.load(a_base + offs_m[:, None].to(tl.int64) * stride_am + k[None, :] * stride_ak,
                    mask=(offs_m[:, None] < M) & (k[None, :] < K), other=0.0)
        b_offs = k[:, None] * stride_bk + offs_n[None, :] * stride_bn
        b_mask = (k[:, None] < K) & (offs_n[None, :] < N_HALF)
        bg = tl.load(b_ptr + b_offs, mask=b_mask, other=0.0).to(a.dtype)
        bu = tl.load(b_ptr + up_shift + b_offs, mask=b_mask, other=0.0).to(a.dtype)
        if IEEE:
            acc_g = tl.dot(a, bg, acc_g, input_precision="ieee")
            acc_u = tl.dot(a, bu, acc_u, input_precision="ieee")
        else:
            acc_g = tl.dot(a, bg, acc_g)
            acc_u = tl.dot(a, bu, acc_u)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N_HALF)
    sig = 1.0 / (1.0 + tl.exp(-acc_g))
    silu = acc_g * sig
    if RECOMPUTE:
        h_offs = batch * stride_h_batch + offs_m[:, None].to(tl.int64) * stride_hm + offs_n[None, :] * stride_hn
        dh = tl.load(dh_ptr + h_offs, mask=mask, other=0.0).to(tl.float32)
        d_gate = dh * acc_u * sig * (1.0 + acc_g * (1.0 - sig))
        d_up = dh * silu
        gu_offs = batch * stride_gu_batch + offs_m[:, None].to(tl.int64) * stride_gum + offs_n[None, :] * stride_gun
        tl.store(gu_ptr + gu_offs, d_gate.to(gu_ptr.dtype.element_ty), mask=mask)
        tl.store(gu_ptr + gu_offs + N_HALF * stride_gun, d_up.to(gu_ptr.dtype.element_ty), mask=mask)
    else:
        h_offs = batch * stride_h_batch + offs_m[:, None].to(tl.int64) * stride_hm + offs_n[None, :] * stride_hn
        tl.store(h_ptr + h_offs, (silu * acc_u).to(h_ptr.dtype.element_ty), mask=mask)
        if SAVE:
            gu_offs = batch * stride_gu_batch + offs_m[:, None].to(tl.int64) * stride_gum + offs_n[None, :] * stride_gun
            tl.store(gu_ptr + gu_offs, acc_g.to(gu_ptr.dtype.element_ty), mask=mask)
            tl.store(gu_ptr + gu_offs + N_HALF * stride_gun, acc_u.to(gu_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_elementwise(gu_ptr, dh_ptr, dgu_ptr, n_rows, N_HALF, BLOCK: tl.constexpr):
    """From saved gate/up rows (n_rows, 2*N_HALF) and dh (n_rows, N_HALF): d(gate_up) (n_rows, 2*N_HALF)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N_HALF
    g = tl.load(gu_ptr + row * 2 * N_HALF + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * 2 * N_HALF + N_HALF + cols, mask=mask, other=0.0).to(tl.float32)
    dh = tl.load(dh_ptr + row * N_HALF + cols, mask=mask, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-g))
    tl.store(dgu_ptr + row * 2 * N_HALF + cols, (dh * u * sig * (1.0 + g * (1.0 - sig))).to(dgu_ptr.dtype.element_ty), mask=mask)
    tl.store(dgu_ptr + row * 2 * N_HALF + N_HALF + cols, (dh * g * sig).to(dgu_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_fwd_elementwise(gu_ptr, h_ptr, n_rows, N_HALF, BLOCK: tl.constexpr):
    """h = silu(gate) * up from gate/up rows (n_rows, 2*N_HALF) written by a matmul (the cuBLAS contender of the
    fused gate_up kernel), in fp32, rounded once to h's dtype."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N_HALF
    g = tl.load(gu_ptr + row * 2 * N_HALF + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * 2 * N_HALF + N_HALF + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(h_ptr + row * N_HALF + cols, (g / (1.0 + tl.exp(-g)) * u).to(h_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------- launchers


def _launch(kind, a, a_strides, M, K, batch, w_gate_up, h, h_strides, gu, gu_strides, dh, save, recompute):
    N_HALF = w_gate_up.shape[0] // 2
    cfg = launch_configs.gate_up_config(kind, M, N_HALF, K, a.element_size(), launch_configs.device_arch(a))
    grid = (launch_configs.cdiv(M, cfg["BLOCK_M"]) * launch_configs.cdiv(N_HALF, cfg["BLOCK_N"]), 1, batch)
    dummy = h if h is not None else gu
    _swiglu_gate_up[grid](
        a, w_gate_up, dummy if h is None else h, dummy if gu is None else gu, dummy if dh is None else dh,
        M, N_HALF, K,
        a_strides[0], a_strides[1], a_strides[2],
        w_gate_up.stride(1), w_gate_up.stride(0),  # B = W^T: B[k, n] = W[n, k]
        h_strides[0], h_strides[1], h_strides[2],
        gu_strides[0], gu_strides[1], gu_strides[2],
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
        SAVE=save, RECOMPUTE=recompute, IEEE=a.dtype == torch.float32,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def channel_gate_up(x2d: torch.Tensor, w_gate_up: torch.Tensor, h: torch.Tensor, gu: torch.Tensor | None = None,
                    dh: torch.Tensor | None = None, dgu: torch.Tensor | None = None) -> None:
    """x2d (M, D), w_gate_up (2I, D) in x's dtype. Forward: h (M, I) [+ gu (M, 2I) saved]. With dh given:
    recompute mode, writes dgu (M, 2I) instead of h."""
    M, K = x2d.shape
    I = w_gate_up.shape[0] // 2
    recompute = dh is not None
    out_gu = dgu if recompute else gu
    _launch("channel", x2d, (0, x2d.stride(0), x2d.stride(1)), M, K, 1, w_gate_up,
            h if not recompute else dh, (0, I, 1), out_gu, (0, 2 * I, 1), dh, gu is not None, recompute)


def token_gate_up(x: torch.Tensor, w_gate_up: torch.Tensor, h: torch.Tensor, gu: torch.Tensor | None = None,
                  dh: torch.Tensor | None = None, dgu: torch.Tensor | None = None) -> None:
    """x (B, L, D), w_gate_up (2I, L). Forward: h (B, I, D) [+ gu (B, 2I, D)]. Recompute mode with dh (B, I, D):
    writes dgu (B, 2I, D). The matmul runs on x[b]^T read in place (M = D, K = L)."""
    B, L, D = x.shape
    I = w_gate_up.shape[0] // 2
    recompute = dh is not None
    out_gu = dgu if recompute else gu
    _launch("token", x, (x.stride(0), x.stride(2), x.stride(1)), D, L, B, w_gate_up,
            h if not recompute else dh, (I * D, 1, D), out_gu, (2 * I * D, 1, D), dh, gu is not None, recompute)


def swiglu_bwd_from_saved(gu: torch.Tensor, dh: torch.Tensor, dgu: torch.Tensor) -> None:
    """Elementwise backward from saved gate/up: rows of (2I) in gu/dgu, rows of I in dh (any leading shape,
    contiguous, the last axis being the I / 2I axis)."""
    N_HALF = dh.shape[-1]
    n_rows = dh.numel() // N_HALF
    block = launch_configs.elementwise_block(N_HALF)
    _swiglu_bwd_elementwise[(n_rows, launch_configs.cdiv(N_HALF, block))](gu, dh, dgu, n_rows, N_HALF, BLOCK=block, num_warps=4)


def swiglu_fwd_from_gate_up(gu: torch.Tensor, h: torch.Tensor) -> None:
    """Elementwise forward from gate/up: rows of (2I) in gu, rows of I written to h (contiguous, any leading shape)."""
    N_HALF = h.shape[-1]
    n_rows = h.numel() // N_HALF
    block = launch_configs.elementwise_block(N_HALF)
    _swiglu_fwd_elementwise[(n_rows, launch_configs.cdiv(N_HALF, block))](gu, h, n_rows, N_HALF, BLOCK=block, num_warps=4)


# ---------------------------------------------------------------------------------------------- references


def swiglu_gate_up_reference(x2d: torch.Tensor, w_gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, gate_up) of the channel form in plain PyTorch."""
    gu = x2d @ w_gate_up.to(x2d.dtype).t()
    gate, up = gu.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up, gu


def swiglu_backward_reference(gate: torch.Tensor, up: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hand-written backward of h = silu(gate) * up: (d gate, d up)."""
    sig = torch.sigmoid(gate)
    return dh * up * sig * (1 + gate * (1 - sig)), dh * gate * sig
