"""Launch configurations of the norm and SwiGLU kernels: a small table for the presets' shapes, a rule for
every other shape. No run-time autotuning (it fails in the interpreter and makes runs irreproducible).

The table entries were checked on the builds Triton's JIT makes for the presets' launches (kernels/aot.py,
tests/test_aot_compile.py): zero register spills and shared memory within the limit on sm_90 and sm_80 under
Triton 3.6 and 3.9, wgmma on sm_90. They were not timed on a GPU; docs/kernels.md lists them with their resources.

Preset shapes: hidden D = 512, channel SwiGLU I = 1536; sequence L = 97 (Sudoku, 16 puzzle tokens + 81) or
916 (Maze/ARC, 16 + 900); token-mixing SwiGLU hidden I = token_mix_hidden(L) = 512 (L = 97) or 2560 (L = 916).
Nothing here imports Triton or torch at import time (device_arch does when called), so the tables can be read
anywhere.

The config functions are cached per argument tuple (each launch asks again; the answer never changes): the dicts
they return are shared, read them, never modify them.
"""
from __future__ import annotations

import functools

from trm_fast.config import swiglu_hidden  # the model's rule; config is a leaf every layer may import

PRESET_HIDDEN = 512
PRESET_SEQ_LENS = (97, 916)  # Sudoku (16 puzzle tokens + 81), Maze/ARC (16 + 900)


PRESET_MLP_HIDDEN = swiglu_hidden(PRESET_HIDDEN)  # 1536
PRESET_TOKEN_MIX = tuple((L, swiglu_hidden(L)) for L in PRESET_SEQ_LENS)  # ((97, 512), (916, 2560))


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1); plain Python for the launchers, where triton.next_power_of_2,
    a constexpr function, costs microseconds a call."""
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the launchers' grids, in plain Python (triton.cdiv is a constexpr function: microseconds)."""
    return -(-a // b)


# ---------------------------------------------------------------------------------------------- norms

# Channel form, keyed by D: ROWS rows of BLOCK channels per program.
NORM_TABLE = {
    512: {"BLOCK": 512, "ROWS": 4, "num_warps": 4},
}

# Sequence form, keyed by (L, D): a (BLOCK_L, BLOCK_D) tile per program; BLOCK_L >= L means the whole column
# lives in registers and the kernel reads its inputs once (one pass). 16 bf16 channels = one 32-byte sector.
# About 32 tile elements per thread: more makes the backward (dy and y live in fp32) spill.
NORM_SEQ_TABLE = {
    (97, 512): {"BLOCK_L": 128, "BLOCK_D": 32, "num_warps": 8},  # ptxas: 80 registers (fwd and bwd)
    (916, 512): {"BLOCK_L": 1024, "BLOCK_D": 16, "num_warps": 16},  # 128 registers; 8 warps would need ~250
}

NORM_SEQ_MAX_SINGLE_PASS_L = 1024  # longer columns loop twice over L (statistics, then output)


@functools.cache
def norm_config(D: int) -> dict:
    """Channel-form config for rows of D values."""
    if D in NORM_TABLE:
        return dict(NORM_TABLE[D], table=True)
    block = next_pow2(D)
    rows = max(1, min(16, 2048 // block))
    return {"BLOCK": block, "ROWS": rows, "num_warps": 4 if block * rows >= 2048 else 2, "table": False}


@functools.cache
def norm_seq_config(L: int, D: int) -> dict:
    """Sequence-form config for (B, L, D) normalised over L."""
    if (L, D) in NORM_SEQ_TABLE:
        return dict(NORM_SEQ_TABLE[(L, D)], table=True)
    block_l = next_pow2(L) if L <= NORM_SEQ_MAX_SINGLE_PASS_L else 256
    block_d = max(1, min(32, next_pow2(D), 16384 // block_l))
    return {"BLOCK_L": block_l, "BLOCK_D": block_d, "num_warps": max(1, min(16, block_l * block_d // 512)), "table": False}


# ---------------------------------------------------------------------------------------------- SwiGLU

# gate_up matmul with the silu * up epilogue: two fp32 accumulators (gate, up) of BLOCK_M x BLOCK_N each.
# Channel: M = tokens, N = I, K = D, keyed by (arch, "channel", I, D). Token mixing: M = D, N = I, K = L (the weight
# stored transposed, so its tiles are rows along I), keyed by (arch, "token", I, L). Programs run in groups of
# GROUP_M row blocks across all column blocks (kernels/swiglu.py), so A is read from HBM about once.
# ptxas on the JIT's own builds (kernels/aot.py, docs/kernels.md): the channel tile with BLOCK_K = 64 is clean on
# sm_90 (128 registers, 96 KB shared) but spills 4 B on sm_80 in the save mode under Triton 3.9, so sm_80 keeps
# BLOCK_K = 32 there (146 registers, 32 KB); 128 x 128 tiles spill in the recompute mode on both.
_GATE_UP_128x64x64 = {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3, "GROUP_M": 8}
GATE_UP_TABLE = {
    (90, "channel", PRESET_MLP_HIDDEN, PRESET_HIDDEN): _GATE_UP_128x64x64,
    (80, "channel", PRESET_MLP_HIDDEN, PRESET_HIDDEN): dict(_GATE_UP_128x64x64, BLOCK_K=32),
    (90, "token", 512, 97): _GATE_UP_128x64x64,
    (80, "token", 512, 97): _GATE_UP_128x64x64,
    (90, "token", 2560, 916): _GATE_UP_128x64x64,
    (80, "token", 2560, 916): _GATE_UP_128x64x64,
}

_GATE_UP_FALLBACK = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3, "GROUP_M": 8}


def device_arch(t) -> int:
    """The launch tables a launch on tensor `t` uses: 90 on Hopper and newer, 80 on older GPUs. Off the GPU it is
    the target of Triton's active driver when there is one (kernels/aot.py sets a stand-in for each GPU it builds
    for), else the Hopper tables (the interpreter). Asked at every launch: answered from a cache (per CUDA device;
    per driver object off the GPU)."""
    if t.is_cuda:
        return _cuda_arch(t.device.index)
    from triton.runtime.driver import driver

    try:
        active = driver.active
    except RuntimeError:  # no GPU driver: the interpreter
        return 90
    if _DRIVER_ARCH[0] is not active:
        _DRIVER_ARCH[:] = [active, 90 if active.get_current_target().arch >= 90 else 80]
    return _DRIVER_ARCH[1]


_DRIVER_ARCH: list = [None, 90]  # (driver, its tables' arch) of the last lookup off the GPU


@functools.cache
def _cuda_arch(index: int | None) -> int:
    import torch

    return 90 if torch.cuda.get_device_capability(index)[0] >= 9 else 80


@functools.cache
def gate_up_config(kind: str, M: int, N_HALF: int, K: int, elem_bytes: int = 2, arch: int = 90) -> dict:
    """Tiles for the gate_up kernel; `kind` is "channel" or "token". Tiles never exceed the problem by more
    than one power of two (tl.dot needs at least 16), which keeps small test problems to a few programs.
    4-byte inputs (fp32, exact "ieee" dots: tests, fp32 runs) halve BLOCK_K to keep the staged tiles' shared
    memory within sm_80's limit."""
    if kind not in ("channel", "token"):
        raise ValueError(f"gate_up_config: kind must be 'channel' or 'token', got {kind!r}")
    entry = GATE_UP_TABLE.get((90 if arch >= 90 else 80, kind, N_HALF, K))
    cfg = dict(entry if entry is not None else _GATE_UP_FALLBACK, table=entry is not None)
    cfg["BLOCK_M"] = max(16, min(cfg["BLOCK_M"], next_pow2(M)))
    cfg["BLOCK_N"] = max(16, min(cfg["BLOCK_N"], next_pow2(N_HALF)))
    cfg["BLOCK_K"] = max(16, min(cfg["BLOCK_K"] // (2 if elem_bytes >= 4 else 1), next_pow2(K)))
    return cfg


# sum_b P[b] @ Q[b]^T (kernels/matmul.py), the token-mixing weight gradients; keyed by (M, N, K):
# d w_down is (L, I), d w_gate_up (2I, L), K = D. SPLIT (batch ranges per output tile) is set at launch.
# ptxas on the JIT's builds: 64 x 64 with BLOCK_K = 64 and 8 warps needs at most 64 registers (sm_80 and sm_90,
# Triton 3.6 and 3.9); with 4 warps it spills 24 B on sm_80 under 3.6.
_BATCH_REDUCE_64x64x64 = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}
BATCH_REDUCE_TABLE = {
    (97, 512, 512): _BATCH_REDUCE_64x64x64,
    (1024, 97, 512): _BATCH_REDUCE_64x64x64,
    (916, 2560, 512): {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3},
    (5120, 916, 512): {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3},
}
TARGET_PROGRAMS = 2 * 132  # about two waves on an H100's 132 SMs


@functools.cache
def batch_reduce_config(M: int, N: int, K: int, B: int, elem_bytes: int = 2) -> dict:
    """Tiles and batch split for sum_b P[b] @ Q[b]^T with P (B, M, K), Q (B, N, K)."""
    entry = BATCH_REDUCE_TABLE.get((M, N, K))
    if entry is None:
        big = M * N >= TARGET_PROGRAMS * 128 * 128
        entry = ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3} if big else
                 {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3})
    cfg = dict(entry, table=(M, N, K) in BATCH_REDUCE_TABLE)
    cfg["BLOCK_M"] = max(16, min(cfg["BLOCK_M"], next_pow2(M)))
    cfg["BLOCK_N"] = max(16, min(cfg["BLOCK_N"], next_pow2(N)))
    cfg["BLOCK_K"] = max(16, min(cfg["BLOCK_K"] // (2 if elem_bytes >= 4 else 1), next_pow2(K)))
    tiles = -(-M // cfg["BLOCK_M"]) * -(-N // cfg["BLOCK_N"])
    cfg["SPLIT"] = max(1, min(B, -(-TARGET_PROGRAMS // tiles)))
    return cfg


@functools.cache
def elementwise_block(n: int) -> int:
    """Block for the SwiGLU backward's elementwise step on rows of n: the largest power of two <= 1024 that
    divides n when that is at least 128 (no masked tail), else the next power of two up to 1024."""
    exact = min(1024, n & -n)
    return exact if exact >= 128 else min(1024, next_pow2(n))


# ---------------------------------------------------------------------------------------------- fused token mixer

# The token-mixing sub-layer with its post-norm in one kernel (kernels/token_mixer.py), for calls without grad: a
# program holds a (BLOCK_L, BLOCK_D) fp32 accumulator for the whole sequence, so L is at most TOKEN_MIXER_MAX_L
# (Sudoku's 97 fits; Maze/ARC's 916 keeps the unfused op). Per hidden tile two (BLOCK_I, BLOCK_L) @ (BLOCK_L,
# BLOCK_D) matmuls (gate, up) and one (BLOCK_L, BLOCK_I) @ (BLOCK_I, BLOCK_D) (down). ptxas on the Sudoku preset's
# builds, the three modes (no grad, saving h, saving h and gate/up; kernels/aot.py, docs/kernels.md), 8 warps: sm_90
# 64 x 32 (BLOCK_D x BLOCK_I) at most 132 registers, 56 KB shared; sm_80 32 x 32 at most 164 registers, 34 KB. On
# sm_80, 64 x 64 and 64 x 32 spill or reach 255 registers, 32 x 64 spills saving h; 128 x 32 builds clean on sm_90
# (172 registers, one CTA per SM): a GPU run decides between it and 64 x 32 (the weights, re-read from L2 by every
# program, give BLOCK_D FLOP per byte).
TOKEN_MIXER_MAX_L = 128


@functools.cache
def token_mixer_config(L: int, D: int, I: int, elem_bytes: int = 2, arch: int = 90) -> dict:
    """Tiles for the fused token mixer on (B, L, D) with hidden size I (L <= TOKEN_MIXER_MAX_L). The weights are
    re-read from L2 by every program, BLOCK_D FLOP per byte: the widest channel tile that builds without spills."""
    block_l = max(16, next_pow2(L))
    block_d, block_i = (64, 32) if arch >= 90 else (32, 32)
    return {"BLOCK_L": block_l, "BLOCK_D": max(16, min(block_d, next_pow2(D))),
            "BLOCK_I": max(16, min(block_i, next_pow2(I))), "num_warps": 8, "num_stages": 2}


# ---------------------------------------------------------------------------------------------- token cross-entropy

# One program per sample over its (L, V) logits in (BLOCK_L, BLOCK_V) tiles of at most CROSS_ENTROPY_TILE elements:
# 4 per thread at 4 warps. ptxas on the presets' builds (kernels/aot.py): at most 119 registers (the stablemax
# forward, float64), no spills on sm_90 and sm_80; 2048-element tiles hit 255 registers and spill 550 B there.
# The presets' vocabularies fit one chunk of V: Sudoku (L = 81, V = 11) three 32 x 16 tiles per sample, Maze
# (900, 6) fifteen 64 x 8, ARC (900, 12) twenty-nine 32 x 16; wider vocabularies loop over chunks of V. One rule,
# no table.
CROSS_ENTROPY_TILE = 512
CROSS_ENTROPY_MAX_BLOCK_V = CROSS_ENTROPY_TILE


def cross_entropy_config(L: int, V: int) -> dict:
    """Tiles for the token cross-entropy kernels on (B, L, V) logits."""
    block_v = min(next_pow2(V), CROSS_ENTROPY_MAX_BLOCK_V)
    block_l = max(1, min(next_pow2(L), CROSS_ENTROPY_TILE // block_v))
    return {"BLOCK_L": block_l, "BLOCK_V": block_v, "num_warps": 4}
