"""Non-causal flash attention with RoPE fused into the prologue, forward and backward (FlashAttention-2 scheme).

The kernels read q, k and v straight from the qkv projection output (B, L, 3*H*hd) — layout [q heads | k heads |
v heads], each head's hd contiguous — and write O as (B, L, H*hd) for the output projection: no transposes.
RoPE (rotate-half convention, fp32) is applied to the q and k tiles in registers after loading, so the rotated
q/k never exist in memory; the two halves of the head dim are loaded as separate (BLOCK, hd/2) tiles so the
rotation needs no gather:  (x1, x2) -> (x1*cos - x2*sin, x2*cos + x1*sin), rounded to the input dtype as the
reference does before attention. Backward applies the transposed rotation to dq and dk, so the gradient lands
on the un-rotated qkv.

Forward saves only O and the log-sum-exp (fp32). Backward: delta = rowsum(dO * O); one kernel per key block
for dK and dV, one per query block for dQ (no atomics: deterministic).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _load_rotated(base, rows, L, row_stride, cos_ptr, sin_ptr, HALF: tl.constexpr, ROPE: tl.constexpr):
    """Loads a (BLOCK, hd) tile as its two halves and applies RoPE in fp32, rounding back to the input dtype."""
    cols = tl.arange(0, HALF)
    mask = rows[:, None] < L
    offs = rows[:, None].to(tl.int64) * row_stride + cols[None, :]
    x1 = tl.load(base + offs, mask=mask, other=0.0)
    x2 = tl.load(base + offs + HALF, mask=mask, other=0.0)
    if ROPE:
        t_offs = rows[:, None] * (2 * HALF) + cols[None, :]
        c = tl.load(cos_ptr + t_offs, mask=mask, other=0.0)
        s = tl.load(sin_ptr + t_offs, mask=mask, other=0.0)
        x1f = x1.to(tl.float32)
        x2f = x2.to(tl.float32)
        r1 = (x1f * c - x2f * s).to(x1.dtype)
        r2 = (x2f * c + x1f * s).to(x1.dtype)
        return r1, r2
    return x1, x2


@triton.jit
def _unrotate_store(base, rows, L, row_stride, d1, d2, cos_ptr, sin_ptr, HALF: tl.constexpr, ROPE: tl.constexpr):
    """Stores the gradient w.r.t. the un-rotated tile: the transpose of the rotation applied to (d1, d2)."""
    cols = tl.arange(0, HALF)
    mask = rows[:, None] < L
    offs = rows[:, None].to(tl.int64) * row_stride + cols[None, :]
    if ROPE:
        t_offs = rows[:, None] * (2 * HALF) + cols[None, :]
        c = tl.load(cos_ptr + t_offs, mask=mask, other=0.0)
        s = tl.load(sin_ptr + t_offs, mask=mask, other=0.0)
        g1 = d1 * c + d2 * s
        g2 = d2 * c - d1 * s
    else:
        g1 = d1
        g2 = d2
    tl.store(base + offs, g1.to(base.dtype.element_ty), mask=mask)
    tl.store(base + offs + HALF, g2.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _attn_fwd(qkv_ptr, o_ptr, lse_ptr, cos_ptr, sin_ptr, L, H, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              ROPE: tl.constexpr, IEEE: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    row_stride = 3 * H * HEAD_DIM
    seq_base = qkv_ptr + b * L * row_stride
    q_base = seq_base + h * HEAD_DIM
    k_base = seq_base + (H + h) * HEAD_DIM
    v_base = seq_base + (2 * H + h) * HEAD_DIM
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q1, q2 = _load_rotated(q_base, rows, L, row_stride, cos_ptr, sin_ptr, HALF, ROPE)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dcols = tl.arange(0, HEAD_DIM)
    for n0 in range(0, L, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        k1, k2 = _load_rotated(k_base, keys, L, row_stride, cos_ptr, sin_ptr, HALF, ROPE)
        s = _dot(q1, tl.trans(k1), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
        s = _dot(q2, tl.trans(k2), s, IEEE) * qk_scale
        s = tl.where(keys[None, :] < L, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + keys[:, None].to(tl.int64) * row_stride + dcols[None, :], mask=keys[:, None] < L, other=0.0)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_row_stride = H * HEAD_DIM
    o_offs = b * L * o_row_stride + rows[:, None].to(tl.int64) * o_row_stride + h * HEAD_DIM + dcols[None, :]
    tl.store(o_ptr + o_offs, acc.to(o_ptr.dtype.element_ty), mask=rows[:, None] < L)
    # log-sum-exp in base 2 of the scaled scores (what backward recomputes p from)
    tl.store(lse_ptr + bh.to(tl.int64) * L + rows, m_i + tl.math.log2(l_i), mask=rows < L)


@triton.jit
def _attn_bwd_preprocess(o_ptr, do_ptr, delta_ptr, L, H, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dcols = tl.arange(0, HEAD_DIM)
    row_stride = H * HEAD_DIM
    offs = b * L * row_stride + rows[:, None].to(tl.int64) * row_stride + h * HEAD_DIM + dcols[None, :]
    mask = rows[:, None] < L
    o = tl.load(o_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(delta_ptr + bh.to(tl.int64) * L + rows, tl.sum(o * do, axis=1), mask=rows < L)


@triton.jit
def _attn_bwd_dkdv(qkv_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr, cos_ptr, sin_ptr, L, H, qk_scale, sm_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   ROPE: tl.constexpr, IEEE: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    row_stride = 3 * H * HEAD_DIM
    seq_base = qkv_ptr + b * L * row_stride
    q_base = seq_base + h * HEAD_DIM
    k_base = seq_base + (H + h) * HEAD_DIM
    v_base = seq_base + (2 * H + h) * HEAD_DIM
    do_row_stride = H * HEAD_DIM
    do_base = do_ptr + b * L * do_row_stride + h * HEAD_DIM
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dcols = tl.arange(0, HEAD_DIM)
    k1, k2 = _load_rotated(k_base, keys, L, row_stride, cos_ptr, sin_ptr, HALF, ROPE)
    v = tl.load(v_base + keys[:, None].to(tl.int64) * row_stride + dcols[None, :], mask=keys[:, None] < L, other=0.0)
    dk1 = tl.zeros([BLOCK_N, HALF], dtype=tl.float32)
    dk2 = tl.zeros([BLOCK_N, HALF], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for m0 in range(0, L, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        q1, q2 = _load_rotated(q_base, rows, L, row_stride, cos_ptr, sin_ptr, HALF, ROPE)
        do = tl.load(do_base + rows[:, None].to(tl.int64) * do_row_stride + dcols[None, :], mask=rows[:, None] < L, other=0.0)
        lse = tl.load(lse_ptr + bh.to(tl.int64) * L + rows, mask=rows < L, other=0.0)
        delta = tl.load(delta_ptr + bh.to(tl.int64) * L + rows, mask=rows < L, other=0.0)
        # scores transposed: (keys, queries)
        st = _dot(k1, tl.trans(q1), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), IEEE)
        st = _dot(k2, tl.trans(q2), st, IEEE) * qk_scale
        valid = (keys[:, None] < L) & (rows[None, :] < L)
        pt = tl.where(valid, tl.math.exp2(st - lse[None, :]), 0.0)
        dv = _dot(pt.to(do.dtype), do, dv, IEEE)
        dpt = _dot(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), IEEE)
        dst = (pt * (dpt - delta[None, :])).to(q1.dtype)
        dk1 = _dot(dst, q1, dk1, IEEE)
        dk2 = _dot(dst, q2, dk2, IEEE)
    dk1 = dk1 * sm_scale
    dk2 = dk2 * sm_scale
    dseq = dqkv_ptr + b * L * row_stride
    _unrotate_store(dseq + (H + h) * HEAD_DIM, keys, L, row_stride, dk1, dk2, cos_ptr, sin_ptr, HALF, ROPE)
    tl.store(dseq + (2 * H + h) * HEAD_DIM + keys[:, None].to(tl.int64) * row_stride + dcols[None, :],
             dv.to(dqkv_ptr.dtype.element_ty), mask=keys[:, None] < L)


@triton.jit
def _attn_bwd_dq(qkv_ptr, do_ptr, lse_ptr, delta_ptr, dqkv_ptr, cos_ptr, sin_ptr, L, H, qk_scale, sm_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 ROPE: tl.constexpr, IEEE: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    row_stride = 3 * H * HEAD_DIM
    seq_base = qkv_ptr + b * L * row_stride
    q_base = seq_base + h * HEAD_DIM
    k_base = seq_base + (H + h) * HEAD_DIM
    v_base = seq_base + (2 * H + h) * HEAD_DIM
    do_row_stride = H * HEAD_DIM
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dcols = tl.arange(0, HEAD_DIM)
    q1, q2 = _load_rotated(q_base, rows, L, row_stride, cos_ptr, sin_ptr, HALF, ROPE)
    do = tl.load(do_ptr + b * L * do_row_stride + h * HEAD_DIM + rows[:, None].to(tl.int64) * do_row_stride + dcols[None, :],
                 mask=rows[:, None] < L, other=0.0)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * L + rows, mask=rows < L, other=0.0)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * L + rows, mask=rows < L, other=0.0)
    dq1 = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
    dq2 = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
    for n0 in range(0, L, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        k1, k2 = _load_rotated(k_base, keys, L, row_stride, cos_ptr, sin_ptr, HALF, ROPE)
        v = tl.load(v_base + keys[:, None].to(tl.int64) * row_stride + dcols[None, :], mask=keys[:, None] < L, other=0.0)
        s = _dot(q1, tl.trans(k1), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
        s = _dot(q2, tl.trans(k2), s, IEEE) * qk_scale
        valid = (rows[:, None] < L) & (keys[None, :] < L)
        p = tl.where(valid, tl.math.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), IEEE)
        ds = (p * (dp - delta[:, None])).to(k1.dtype)
        dq1 = _dot(ds, k1, dq1, IEEE)
        dq2 = _dot(ds, k2, dq2, IEEE)
    _unrotate_store(dqkv_ptr + b * L * row_stride + h * HEAD_DIM, rows, L, row_stride, dq1 * sm_scale, dq2 * sm_scale,
                    cos_ptr, sin_ptr, HALF, ROPE)


# ---------------------------------------------------------------------------------------------- launch configs

# Tile sizes per phase, chosen with ptxas -v (kernels/aot.py) for zero register spills at head dim 64.
# The dK/dV kernel holds the most live tiles (rotated k halves, v, dk halves, dv); on sm_80 only small tiles fit.
_FWD = {97: (64, 64, 4, 2), 916: (128, 64, 8, 2)}  # L -> (BLOCK_M, BLOCK_N, num_warps, num_stages)
_BWD = {  # arch -> {"dkdv": ..., "dq": ...}
    90: {"dkdv": (64, 64, 8, 2), "dq": (64, 32, 8, 2)},
    80: {"dkdv": (16, 16, 4, 2), "dq": (64, 32, 8, 2)},
}


def device_arch(t: torch.Tensor) -> int:
    """90 on Hopper and newer, 80 on older GPUs; the interpreter (CPU) uses the Hopper table."""
    if t.is_cuda:
        return 90 if torch.cuda.get_device_capability(t.device)[0] >= 9 else 80
    return 90


def _clip(L: int, bm: int, bn: int) -> tuple[int, int]:
    return max(16, min(bm, triton.next_power_of_2(L))), max(16, min(bn, triton.next_power_of_2(L)))


def attention_config(L: int, arch: int = 90) -> dict:
    """{"fwd" | "dkdv" | "dq": {BLOCK_M, BLOCK_N, num_warps, num_stages}} for a sequence length and GPU arch."""
    fwd = _FWD.get(L, (128, 64, 8, 2) if L > 512 else (64, 64, 4, 2))
    cfg = {"fwd": fwd, **_BWD[90 if arch >= 90 else 80]}
    out = {}
    for phase, (bm, bn, warps, stages) in cfg.items():
        bm, bn = _clip(L, bm, bn)
        out[phase] = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}
    return out


# ---------------------------------------------------------------------------------------------- launchers


def _tables(cos, sin, qkv):
    if cos is None:
        return qkv, qkv, False  # dummies, never read
    return cos, sin, True


def attention_fwd(qkv: torch.Tensor, num_heads: int, cos, sin, o: torch.Tensor, lse: torch.Tensor) -> None:
    """qkv (B, L, 3*H*hd) contiguous -> o (B, L, H*hd), lse (B*H, L) fp32 (base-2 log-sum-exp of scaled scores)."""
    B, L, three_d = qkv.shape
    hd = three_d // (3 * num_heads)
    cfg = attention_config(L, device_arch(qkv))["fwd"]
    cos, sin, rope = _tables(cos, sin, qkv)
    grid = (triton.cdiv(L, cfg["BLOCK_M"]), B * num_heads)
    _attn_fwd[grid](qkv, o, lse, cos, sin, L, num_heads, float(hd ** -0.5 * LOG2E),
                    HEAD_DIM=hd, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], ROPE=rope,
                    IEEE=qkv.dtype == torch.float32, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def attention_bwd(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, num_heads: int, cos, sin,
                  dqkv: torch.Tensor) -> None:
    B, L, three_d = qkv.shape
    hd = three_d // (3 * num_heads)
    cfg = attention_config(L, device_arch(qkv))
    cos, sin, rope = _tables(cos, sin, qkv)
    delta = torch.empty_like(lse)
    pre = cfg["fwd"]["BLOCK_M"]
    _attn_bwd_preprocess[(triton.cdiv(L, pre), B * num_heads)](o, do, delta, L, num_heads, HEAD_DIM=hd, BLOCK_M=pre,
                                                                num_warps=4)
    scales = (float(hd ** -0.5 * LOG2E), float(hd ** -0.5))
    ieee = qkv.dtype == torch.float32
    c = cfg["dkdv"]
    _attn_bwd_dkdv[(triton.cdiv(L, c["BLOCK_N"]), B * num_heads)](
        qkv, do, lse, delta, dqkv, cos, sin, L, num_heads, *scales, HEAD_DIM=hd, BLOCK_M=c["BLOCK_M"],
        BLOCK_N=c["BLOCK_N"], ROPE=rope, IEEE=ieee, num_warps=c["num_warps"], num_stages=c["num_stages"])
    c = cfg["dq"]
    _attn_bwd_dq[(triton.cdiv(L, c["BLOCK_M"]), B * num_heads)](
        qkv, do, lse, delta, dqkv, cos, sin, L, num_heads, *scales, HEAD_DIM=hd, BLOCK_M=c["BLOCK_M"],
        BLOCK_N=c["BLOCK_N"], ROPE=rope, IEEE=ieee, num_warps=c["num_warps"], num_stages=c["num_stages"])


# ---------------------------------------------------------------------------------------------- references


def attention_backward_reference(q, k, v, o, do, lse_natural):
    """The hand-written flash backward on (B, L, H, hd) rotated q, k: delta = rowsum(dO*O), P = exp(S - lse),
    dV = P^T dO, dP = dO V^T, dS = P (dP - delta), dQ = dS K * scale, dK = dS^T Q * scale. Returns (dq, dk, dv)."""
    scale = q.shape[-1] ** -0.5
    s = torch.einsum("blhd,bmhd->bhlm", q, k) * scale
    p = torch.exp(s - lse_natural[..., None])
    delta = (do * o).sum(-1).transpose(1, 2)  # (B, H, L)
    dv = torch.einsum("bhlm,blhd->bmhd", p, do)
    dp = torch.einsum("blhd,bmhd->bhlm", do, v)
    ds = p * (dp - delta[..., None])
    dq = torch.einsum("bhlm,bmhd->blhd", ds, k) * scale
    dk = torch.einsum("bhlm,blhd->bmhd", ds, q) * scale
    return dq, dk, dv


def rope_backward_reference(d_rot: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the un-rotated tensor given the gradient w.r.t. the rotated one ((B, L, H, hd); (L, hd) tables)."""
    half = d_rot.shape[-1] // 2
    c, s = cos[:, None, :half], sin[:, None, :half]
    d1, d2 = d_rot[..., :half], d_rot[..., half:]
    return torch.cat((d1 * c + d2 * s, d2 * c - d1 * s), dim=-1)


# ---------------------------------------------------------------------------------------------- AOT specs


def aot_specs(arch: int = 90, dtype: str = "bf16") -> list[dict]:
    specs = []
    fwd_sig = {"qkv_ptr": f"*{dtype}", "o_ptr": f"*{dtype}", "lse_ptr": "*fp32", "cos_ptr": "*fp32", "sin_ptr": "*fp32",
               "L": "i32", "H": "i32", "qk_scale": "fp32"}
    bwd_sig = {"qkv_ptr": f"*{dtype}", "do_ptr": f"*{dtype}", "lse_ptr": "*fp32", "delta_ptr": "*fp32",
               "dqkv_ptr": f"*{dtype}", "cos_ptr": "*fp32", "sin_ptr": "*fp32", "L": "i32", "H": "i32",
               "qk_scale": "fp32", "sm_scale": "fp32"}
    for L in (97, 916):
        cfg = attention_config(L, arch)
        for label, fn, sig, phase in (("attn_fwd", _attn_fwd, fwd_sig, "fwd"), ("attn_bwd_dkdv", _attn_bwd_dkdv, bwd_sig, "dkdv"),
                                      ("attn_bwd_dq", _attn_bwd_dq, bwd_sig, "dq")):
            c = cfg[phase]
            specs.append({"label": f"{label}[L={L},hd=64]", "fn": fn, "signature": sig,
                          "constexprs": {"HEAD_DIM": 64, "BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"], "ROPE": True, "IEEE": False},
                          "num_warps": c["num_warps"], "num_stages": c["num_stages"], "is_matmul": True})
        specs.append({"label": f"attn_bwd_preprocess[L={L}]", "fn": _attn_bwd_preprocess,
                      "signature": {"o_ptr": f"*{dtype}", "do_ptr": f"*{dtype}", "delta_ptr": "*fp32", "L": "i32", "H": "i32"},
                      "constexprs": {"HEAD_DIM": 64, "BLOCK_M": cfg["fwd"]["BLOCK_M"]}, "num_warps": 4, "num_stages": 1,
                      "is_matmul": False})
    return specs
