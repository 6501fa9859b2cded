"""What each recomputation level (`model.recompute`) keeps for backward and what its backward replays, per op and
implementation: the one definition read by the model (trm_fast.model.recompute runs a block by LEVEL_PLANS), the ops
(the Triton SwiGLU saves gate/up only where its entry lists it) and the memory model (trm_fast.tools.memory sums the
entries).

How an implementation realises a level in a block (LEVEL_PLANS):
  "ops"        every op saves what its OP_SAVES entry lists and nothing is replayed: level 0 on both, and level 1
               on Triton, whose ops are then called with recompute=True: they keep their outputs and matmul results
               and recompute the elementwise rest inside their backward kernels (SwiGLU re-runs its gate_up matmul
               with the derivative in the epilogue), materialising nothing.
  "selective"  the block runs under torch's selective activation checkpointing (level 1 of the reference): it keeps
               its input and, per op, the "selective" entry (matmul and attention outputs; a Triton op's outputs,
               which that op's backward reads); its backward re-runs the rest of the block, one block at a time.
  "block"      the block keeps its input only; its backward re-runs the whole block with recording at level 0
               (level 2 on both).
A block whose ops mix implementations runs the plan that recomputes most among its ops' ("block" > "selective" >
"ops"), its ops each called with their own implementation's `recompute`.

An OP_SAVES entry: whether the op keeps its activation input (the storage its producer wrote) and its output, and the
other tensors it keeps, in elements per sample of the model's shape (Shape). A Triton sub-layer run with its post-norm
in one node (trm_fast.ops.OpSet.post_norm) keeps what the two entries list; its own output then never leaves that
node, so a selective region does not keep it either (trm_fast.tools.memory counts it so).

The entries cover the blocks' ops (trm_fast.model.layers.BLOCK_OPS). The token loss `token_cross_entropy` runs once
per step on the logits, outside the blocks and the levels: the Triton op keeps its input logits, the labels and a
count per sample (trm_fast/ops/cross_entropy.py); the memory model counts neither implementation's loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

from trm_fast.config import ModelConfig

BLOCK_PLANS = ("ops", "selective", "block")  # from least to most recomputation


@dataclass(frozen=True)
class LevelPlan:
    block: str  # one of BLOCK_PLANS
    recompute: bool  # the ops are called with recompute=True


LEVEL_PLANS = {
    "torch": {0: LevelPlan("ops", False), 1: LevelPlan("selective", False), 2: LevelPlan("block", False)},
    "triton": {0: LevelPlan("ops", False), 1: LevelPlan("ops", True), 2: LevelPlan("block", False)},
}
LEVEL_PLANS["triton_cublas"] = LEVEL_PLANS["triton"]  # swiglu's cuBLAS contender: recompute=True re-runs its matmul


class Shape(NamedTuple):
    L: int  # sequence length with the puzzle tokens
    D: int  # hidden size
    H: int  # attention heads
    I: int  # channel SwiGLU hidden size
    Im: int  # token-mixing SwiGLU hidden size

    @classmethod
    def of(cls, config: ModelConfig) -> "Shape":
        return cls(config.total_seq_len, config.hidden_size, config.num_heads, config.mlp_hidden,
                   config.token_mix_hidden)


@dataclass(frozen=True)
class Kept:
    name: str
    elements: Callable[[Shape], int]  # per sample
    fp32: bool = False  # else the forward dtype


@dataclass(frozen=True)
class OpSaves:
    input: bool = False
    output: bool = False
    tensors: tuple[Kept, ...] = ()

    def keeps(self, name: str) -> bool:
        return any(t.name == name for t in self.tensors)


_LD = lambda s: s.L * s.D
_QKV = Kept("qkv", lambda s: 3 * s.L * s.D)
_ATTENTION_OUT = Kept("attention_out", _LD)
_LSE = Kept("log_sum_exp", lambda s: s.H * s.L, fp32=True)
_GATE_UP, _H = Kept("gate_up", lambda s: 2 * s.L * s.I), Kept("h", lambda s: s.L * s.I)
_TOKEN_GATE_UP, _TOKEN_H = Kept("gate_up", lambda s: 2 * s.D * s.Im), Kept("h", lambda s: s.D * s.Im)
_ROW_RSTD, _COLUMN_RSTD = Kept("rstd", lambda s: s.L, fp32=True), Kept("rstd", lambda s: s.D, fp32=True)
_SUM_FP32 = Kept("sum_fp32", _LD, fp32=True)  # the reference norm's fp32 copy of residual + x

# (op, implementation) -> {"plain": called with recompute=False, "recompute": with recompute=True,
#                          "selective": what a selective-checkpoint region keeps of it}
OP_SAVES = {
    ("attention", "torch"): {
        # SDPA's inputs: q and k after RoPE (v is a view of qkv); its output and log-sum-exp
        "plain": OpSaves(input=True, tensors=(_QKV, Kept("q_rope", _LD), Kept("k_rope", _LD), _ATTENTION_OUT, _LSE)),
        "selective": OpSaves(output=True, tensors=(_QKV, _ATTENTION_OUT, _LSE)),
    },
    ("attention", "triton"): {
        "plain": OpSaves(input=True, tensors=(_QKV, _ATTENTION_OUT, _LSE)),
        "recompute": OpSaves(input=True, tensors=(_QKV, _ATTENTION_OUT, _LSE)),
        "selective": OpSaves(output=True, tensors=(_QKV, _ATTENTION_OUT, _LSE)),
    },
    ("swiglu", "torch"): {
        "plain": OpSaves(input=True, tensors=(_GATE_UP, Kept("silu", lambda s: s.L * s.I), _H)),
        "selective": OpSaves(output=True, tensors=(_GATE_UP,)),
    },
    ("swiglu", "triton"): {
        "plain": OpSaves(input=True, tensors=(_H, _GATE_UP)),
        "recompute": OpSaves(input=True, tensors=(_H,)),
        "selective": OpSaves(output=True, tensors=(_H,)),
    },
    ("swiglu_token_mix", "torch"): {
        # the matmul copies its transposed input before it saves it
        "plain": OpSaves(tensors=(Kept("input_copy", _LD), _TOKEN_GATE_UP, Kept("silu", lambda s: s.D * s.Im),
                                  _TOKEN_H)),
        "selective": OpSaves(output=True, tensors=(_TOKEN_GATE_UP,)),
    },
    ("swiglu_token_mix", "triton"): {
        "plain": OpSaves(input=True, tensors=(_TOKEN_H, _TOKEN_GATE_UP)),
        "recompute": OpSaves(input=True, tensors=(_TOKEN_H,)),
        "selective": OpSaves(output=True, tensors=(_TOKEN_H,)),
    },
    ("add_rms_norm", "torch"): {
        "plain": OpSaves(tensors=(_SUM_FP32, _ROW_RSTD)),
        "selective": OpSaves(),
    },
    ("add_rms_norm", "triton"): {
        "plain": OpSaves(output=True, tensors=(_ROW_RSTD,)),
        "recompute": OpSaves(output=True, tensors=(_ROW_RSTD,)),
        "selective": OpSaves(output=True, tensors=(_ROW_RSTD,)),
    },
    ("add_rms_norm_seq", "torch"): {
        "plain": OpSaves(tensors=(_SUM_FP32, _COLUMN_RSTD)),
        "selective": OpSaves(),
    },
    ("add_rms_norm_seq", "triton"): {
        "plain": OpSaves(output=True, tensors=(_COLUMN_RSTD,)),
        "recompute": OpSaves(output=True, tensors=(_COLUMN_RSTD,)),
        "selective": OpSaves(output=True, tensors=(_COLUMN_RSTD,)),
    },
}
# the cuBLAS contender keeps what the fused kernel keeps: gate/up is the matmul's output
OP_SAVES[("swiglu", "triton_cublas")] = OP_SAVES[("swiglu", "triton")]


def op_recompute(implementation: str, level: int) -> bool:
    """Whether an op of this implementation is called with recompute=True at `level`."""
    return LEVEL_PLANS[implementation][level].recompute


def block_plan(level: int, implementations: tuple[str, ...]) -> str:
    """The plan of a block whose ops run `implementations` (see the module docstring)."""
    plan = "ops"
    for implementation in implementations:
        candidate = LEVEL_PLANS[implementation][level].block
        if BLOCK_PLANS.index(candidate) > BLOCK_PLANS.index(plan):
            plan = candidate
    return plan


def op_saves(op: str, implementation: str, level: int, plan: str) -> OpSaves:
    """What one application of `op` keeps at `level` inside a block running `plan` ("ops" or "selective")."""
    if plan == "selective":
        return OP_SAVES[(op, implementation)]["selective"]
    return OP_SAVES[(op, implementation)]["recompute" if op_recompute(implementation, level) else "plain"]
