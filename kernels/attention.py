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

Launch configs come from ATTENTION_TABLE (per arch, L, head dim; no autotuning). docs/attention.md has the design
notes; kernels/aot.py builds every preset launch ahead of time (docs/kernels.md has the resource table).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from trm_fast.kernels import launch_configs

LOG2E = 1.4426950408889634


@triton.jit
def _block_and_head(L, BLOCK: tl.constexpr):
    """(sequence block, batch*head) of this program. The grid is flat (no 65535 limit on B*H) with the blocks of one
    head adjacent, so they share that head's K/V (or Q/dO) in L2."""
    num_blocks = tl.cdiv(L, BLOCK)
    pid = tl.program_id(0)
    return pid % num_blocks, pid // num_blocks


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
    pid_m, bh = _block_and_head(L, BLOCK_M)
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
    pid_m, bh = _block_and_head(L, BLOCK_M)
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
    pid_n, bh = _block_and_head(L, BLOCK_N)
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
    pid_m, bh = _block_and_head(L, BLOCK_M)
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

PRESET_HEAD_DIM = 64
SUPPORTED_HEAD_DIMS = (32, 64, 128)  # the RoPE halves feed tl.dot, whose K must be >= 16; powers of two for arange
PREPROCESS_BLOCK_M = 32  # delta = rowsum(dO * O): 2 x (32, hd) fp32 tiles per program
PHASES = ("fwd", "dkdv", "dq")
CLIPPED_TILE_PER_WARP = 256  # tile elements per warp when a short sequence clips the table's tiles

# (arch, L, head_dim) -> phase -> (BLOCK_M, BLOCK_N, num_warps, num_stages). BLOCK_M tiles queries, BLOCK_N keys;
# "fwd" and "dq" own a query block and loop over keys, "dkdv" owns a key block and loops over queries.
# Chosen on the JIT's own builds of the presets' launches (kernels/aot.py; docs/kernels.md has the resources): zero
# spills on sm_90 and sm_80 under Triton 3.9 and 3.6 (the GPU image's version), wgmma on sm_90; not timed. On
# sm_80, dK/dV at 32x32 spills 4 B under 3.9 and 32x64 spills under both; 16x64 is clean (222-240 registers).
ATTENTION_TABLE = {
    (90, 97, 64): {"fwd": (64, 64, 4, 2), "dkdv": (64, 64, 8, 2), "dq": (64, 64, 8, 2)},
    (90, 916, 64): {"fwd": (128, 64, 8, 2), "dkdv": (64, 64, 8, 2), "dq": (64, 64, 8, 2)},
    (80, 97, 64): {"fwd": (64, 64, 4, 2), "dkdv": (16, 64, 8, 2), "dq": (64, 32, 8, 2)},
    (80, 916, 64): {"fwd": (128, 64, 8, 2), "dkdv": (16, 64, 8, 2), "dq": (64, 32, 8, 2)},
}


def _fallback(arch: int, L: int, head_dim: int) -> dict:
    """Any shape outside the table: the nearest preset's tiles, halved for head dim 128 (twice the live registers)."""
    cfg = dict(ATTENTION_TABLE[(arch, 916 if L > 512 else 97, PRESET_HEAD_DIM)])
    if head_dim > PRESET_HEAD_DIM:
        cfg = {phase: (max(16, bm // 2), max(16, bn // 2), w, st) for phase, (bm, bn, w, st) in cfg.items()}
    return cfg


@functools.cache
def attention_config(L: int, arch: int = 90, head_dim: int = PRESET_HEAD_DIM, elem_bytes: int = 2) -> dict:
    """{"fwd" | "dkdv" | "dq": {BLOCK_M, BLOCK_N, num_warps, num_stages}, "table": bool} for a sequence length,
    GPU arch (90 or 80), head dim and input element size. 4-byte inputs (fp32, exact "ieee" dots without tensor
    cores: tests and fp32 runs) halve both tiles, which otherwise spill heavily. Tiles are clipped to the next power
    of two of L (at least 16, tl.dot's minimum), so short sequences launch few, small programs; a clipped tile
    keeps at most one warp per CLIPPED_TILE_PER_WARP elements (at least 4 warps): 8 warps on a 32x32 dQ tile spill.
    Cached (asked at every launch): the dict is shared, never modify it."""
    arch = 90 if arch >= 90 else 80
    key = (arch, L, head_dim)
    cfg = ATTENTION_TABLE.get(key) or _fallback(arch, L, head_dim)
    cap = max(16, launch_configs.next_pow2(L))
    shrink = 2 if elem_bytes >= 4 else 1
    out = {"table": key in ATTENTION_TABLE}
    for phase in PHASES:
        bm, bn, warps, stages = cfg[phase]
        bm, bn = max(16, bm // shrink), max(16, bn // shrink)
        if max(bm, bn) > cap:
            bm, bn = min(bm, cap), min(bn, cap)
            warps = min(warps, max(4, bm * bn // CLIPPED_TILE_PER_WARP))
        out[phase] = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}
    return out


# ---------------------------------------------------------------------------------------------- launchers


def _check_buffers(qkv: torch.Tensor, num_heads: int, cos, sin, o=None, lse=None, do=None, dqkv=None
                   ) -> tuple[int, int, int]:
    """Shapes/dtypes/devices/contiguity of the launchers' arguments (the op validates user input earlier; this
    guards direct kernel calls, where a wrong buffer would be silent memory corruption). Run at every launch, so
    kept lean: nothing is built unless a check fails."""
    shape = qkv.shape
    if len(shape) != 3 or shape[2] % (3 * num_heads) or not qkv.is_contiguous():
        raise ValueError(f"attention kernels: qkv must be a contiguous (B, L, 3*{num_heads}*hd) tensor, "
                         f"got {tuple(shape)} (contiguous={qkv.is_contiguous()})")
    B, L, three_d = shape
    hd = three_d // (3 * num_heads)
    if hd not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"attention kernels: head dim {hd} not supported ({SUPPORTED_HEAD_DIMS})")
    dtype, device = qkv.dtype, qkv.device
    for name, t in (("o", o), ("do", do), ("dqkv", dqkv), ("lse", lse)):
        if t is None:
            continue
        want, want_dtype = ((B * num_heads, L), torch.float32) if name == "lse" else \
            ((B, L, three_d if name == "dqkv" else three_d // 3), dtype)
        if t.shape != want or t.dtype != want_dtype or t.device != device or not t.is_contiguous():
            raise ValueError(f"attention kernels: {name} must be a contiguous {want} {want_dtype} tensor on {device}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device} (contiguous={t.is_contiguous()})")
    if cos is not None:
        for name, t in (("cos", cos), ("sin", sin)):
            if t is None or t.dim() != 2 or t.shape[0] != L or t.shape[1] != hd or t.dtype != torch.float32 \
                    or t.device != device or not t.is_contiguous():
                got = None if t is None else (tuple(t.shape), t.dtype, str(t.device))
                raise ValueError(f"attention kernels: {name} must be a contiguous fp32 ({L}, {hd}) table on "
                                 f"{device}, got {got}")
    return B, L, hd


def _tables(cos, sin, qkv):
    if cos is None:
        return qkv, qkv, False  # dummies, never read (ROPE=False)
    return cos, sin, True


def attention_fwd(qkv: torch.Tensor, num_heads: int, cos, sin, o: torch.Tensor, lse: torch.Tensor) -> None:
    """qkv (B, L, 3*H*hd) contiguous -> o (B, L, H*hd) and lse (B*H, L) fp32: the base-2 log-sum-exp of the
    scores scaled by log2(e)/sqrt(hd), what the backward recomputes P from. cos/sin: fp32 (L, hd), or None."""
    B, L, hd = _check_buffers(qkv, num_heads, cos, sin, o=o, lse=lse)
    cfg = attention_config(L, launch_configs.device_arch(qkv), hd, qkv.element_size())["fwd"]
    cos, sin, rope = _tables(cos, sin, qkv)
    grid = (launch_configs.cdiv(L, cfg["BLOCK_M"]) * B * num_heads,)
    _attn_fwd[grid](qkv, o, lse, cos, sin, L, num_heads, float(hd ** -0.5 * LOG2E),
                    HEAD_DIM=hd, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], ROPE=rope,
                    IEEE=qkv.dtype == torch.float32, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def attention_bwd(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, num_heads: int, cos, sin,
                  dqkv: torch.Tensor) -> None:
    """Writes d qkv (B, L, 3*H*hd), the gradient w.r.t. the UN-rotated projection output, given dO (B, L, H*hd),
    the forward's o and lse. delta = rowsum(dO * O) first (fp32), then one program per key block for dK and dV
    and one per query block for dQ: every output element is written by exactly one program (deterministic)."""
    B, L, hd = _check_buffers(qkv, num_heads, cos, sin, do=do, o=o, lse=lse, dqkv=dqkv)
    cfg = attention_config(L, launch_configs.device_arch(qkv), hd, qkv.element_size())
    cos, sin, rope = _tables(cos, sin, qkv)
    BH = B * num_heads
    delta = torch.empty_like(lse)
    pre = min(PREPROCESS_BLOCK_M, max(16, launch_configs.next_pow2(L)))
    _attn_bwd_preprocess[(launch_configs.cdiv(L, pre) * BH,)](o, do, delta, L, num_heads, HEAD_DIM=hd, BLOCK_M=pre, num_warps=4)
    scales = (float(hd ** -0.5 * LOG2E), float(hd ** -0.5))
    ieee = qkv.dtype == torch.float32
    c = cfg["dkdv"]
    _attn_bwd_dkdv[(launch_configs.cdiv(L, c["BLOCK_N"]) * BH,)](
        qkv, do, lse, delta, dqkv, cos, sin, L, num_heads, *scales, HEAD_DIM=hd, BLOCK_M=c["BLOCK_M"],
        BLOCK_N=c["BLOCK_N"], ROPE=rope, IEEE=ieee, num_warps=c["num_warps"], num_stages=c["num_stages"])
    c = cfg["dq"]
    _attn_bwd_dq[(launch_configs.cdiv(L, c["BLOCK_M"]) * BH,)](
        qkv, do, lse, delta, dqkv, cos, sin, L, num_heads, *scales, HEAD_DIM=hd, BLOCK_M=c["BLOCK_M"],
        BLOCK_N=c["BLOCK_N"], ROPE=rope, IEEE=ieee, num_warps=c["num_warps"], num_stages=c["num_stages"])


# ---------------------------------------------------------------------------------------------- references
# Plain-PyTorch transcriptions of what the kernels compute, in the kernels' packed layouts, in any float dtype
# (float64 for gradcheck). reference.attention is the semantic oracle; these mirror the kernels' algorithm.


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on (B, L, H, hd) in fp32 (or x's dtype if wider), rounded back to x's dtype, as the
    kernels' prologue does; (L, hd) tables."""
    wide = x.float() if x.dtype != torch.float64 else x
    half = x.shape[-1] // 2
    c, s = cos[:, None, :half].to(wide.dtype), sin[:, None, :half].to(wide.dtype)
    x1, x2 = wide[..., :half], wide[..., half:]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def attention_forward_reference(qkv: torch.Tensor, num_heads: int, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """What _attn_fwd writes: o (B, L, H*hd) and the base-2 log-sum-exp (B*H, L) of the scaled scores."""
    B, L, three_d = qkv.shape
    hd = three_d // (3 * num_heads)
    q, k, v = qkv.view(B, L, 3 * num_heads, hd).split(num_heads, dim=2)
    if cos is not None:
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    wide = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    s = torch.einsum("blhd,bmhd->bhlm", q.to(wide), k.to(wide)) * hd ** -0.5
    lse = torch.logsumexp(s, -1)
    o = torch.einsum("bhlm,bmhd->blhd", torch.exp(s - lse[..., None]), v.to(wide))
    return o.reshape(B, L, num_heads * hd).to(qkv.dtype), (lse / math.log(2.0)).reshape(B * num_heads, L)


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
    """Gradient w.r.t. the un-rotated tensor given the gradient w.r.t. the rotated one ((B, L, H, hd); (L, hd)
    tables): the transposed rotation, (d1, d2) -> (d1 cos + d2 sin, d2 cos - d1 sin)."""
    half = d_rot.shape[-1] // 2
    c, s = cos[:, None, :half].to(d_rot.dtype), sin[:, None, :half].to(d_rot.dtype)
    d1, d2 = d_rot[..., :half], d_rot[..., half:]
    return torch.cat((d1 * c + d2 * s, d2 * c - d1 * s), dim=-1)


def attention_backward_transcription(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse2: torch.Tensor,
                                     num_heads: int, cos, sin) -> torch.Tensor:
    """What attention_bwd writes, in the packed layouts: d qkv (B, L, 3*H*hd) w.r.t. the UN-rotated projection,
    from dO (B, L, H*hd), o and the base-2 lse (B*H, L), computed in float64 when given float64, else fp32."""
    B, L, three_d = qkv.shape
    hd = three_d // (3 * num_heads)
    wide = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    q, k, v = qkv.view(B, L, 3 * num_heads, hd).split(num_heads, dim=2)
    if cos is not None:
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    shape = (B, L, num_heads, hd)
    lse = (lse2.to(wide) * math.log(2.0)).view(B, num_heads, L)
    dq, dk, dv = attention_backward_reference(q.to(wide), k.to(wide), v.to(wide), o.view(shape).to(wide),
                                              do.view(shape).to(wide), lse)
    if cos is not None:
        dq, dk = rope_backward_reference(dq, cos, sin), rope_backward_reference(dk, cos, sin)
    return torch.cat((dq, dk, dv), dim=2).reshape(B, L, three_d).to(qkv.dtype)
