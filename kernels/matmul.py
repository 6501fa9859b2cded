"""out = sum_b P[b] @ Q[b]^T with fp32 output, reading (B, M, K) and (B, N, K) in place.

The token-mixing SwiGLU's weight gradients have this form: d w_down (L, I) = sum_b d out[b] (L, D) @ h[b]^T and
d w_gate_up (2I, L) = sum_b d gate_up[b] (2I, D) @ x[b]^T, a reduction over (batch, channel). As one cuBLAS
matmul they need permuted copies of both operands ((W, B*D) matrices); as a batched matmul, B fp32 partial
products of (M, N). This kernel reduces over b and K inside each program (one flat loop over (batch, K block)
pairs), with the batch split into SPLIT ranges (grid axis 2) when the (M, N) output has too few tiles to fill the
GPU; the SPLIT fp32 partials are then summed by the launcher. Accumulation and output are fp32 (weight gradients are never rounded to bf16).

Reference: `sum_over_batch_abt_reference`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels import launch_configs


# The batch count and range are not specialised (divisible by 16, equal to 1): they only bound the loop, and
# specialising them would give each class of batch size its own compile.
@triton.jit(do_not_specialize=["n_batch", "batches_per_split"])
def _sum_over_batch_abt(p_ptr, q_ptr, out_ptr, M, N, K, n_batch, batches_per_split,
                        stride_pb, stride_pm, stride_qb, stride_qn, stride_os,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    """out[split, m, n] = sum over b in the split's range, k < K of P[b, m, k] * Q[b, n, k]; K is contiguous."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    b_start = split * batches_per_split
    n_k = tl.cdiv(K, BLOCK_K)
    n_iter = (tl.minimum(b_start + batches_per_split, n_batch) - b_start) * n_k
    p_rows = offs_m[:, None] * stride_pm
    q_rows = offs_n[:, None] * stride_qn
    m_ok = offs_m[:, None] < M
    n_ok = offs_n[:, None] < N
    # one flat loop over (batch, K block) pairs: the software pipeliner handles a single loop
    for t in range(0, n_iter):
        b = (b_start + t // n_k).to(tl.int64)  # 64-bit: B * M * K passes 2^31 at the Maze shapes
        k = (t % n_k) * BLOCK_K + offs_k
        k_ok = k[None, :] < K
        a = tl.load(p_ptr + b * stride_pb + (p_rows + k[None, :]), mask=m_ok & k_ok, other=0.0)
        q = tl.load(q_ptr + b * stride_qb + (q_rows + k[None, :]), mask=n_ok & k_ok, other=0.0)
        if IEEE:
            acc = tl.dot(a, tl.trans(q), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(q), acc)
    out_offs = split.to(tl.int64) * stride_os + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out_ptr + out_offs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def sum_over_batch_abt(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_b p[b] @ q[b]^T as fp32 (M, N); p (B, M, K) and q (B, N, K) of one dtype, last axis contiguous."""
    B, M, K = p.shape
    N = q.shape[1]
    cfg = launch_configs.batch_reduce_config(M, N, K, B, p.element_size())
    split = cfg["SPLIT"]
    per_split = launch_configs.cdiv(B, split)
    split = launch_configs.cdiv(B, per_split)  # no empty ranges
    out = torch.empty(split, M, N, dtype=torch.float32, device=p.device)
    grid = (launch_configs.cdiv(M, cfg["BLOCK_M"]), launch_configs.cdiv(N, cfg["BLOCK_N"]), split)
    _sum_over_batch_abt[grid](p, q, out, M, N, K, B, per_split, p.stride(0), p.stride(1), q.stride(0), q.stride(1), M * N,
                              BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
                              IEEE=p.dtype == torch.float32, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out[0] if split == 1 else out.sum(0)


def sum_over_batch_abt_reference(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bmk,bnk->mn", p.float(), q.float())
