"""Building blocks of the TRM network: initialisers, the post-norm block and the recursive network `net`.

The blocks hold fp32 master weights and call the op set they are given (trm_fast.ops.get_ops), so the
same module runs on the plain-PyTorch reference or on the Triton kernels, or a mix, with the same state_dict.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from trm_fast.config import ModelConfig
from trm_fast.model.recompute import run_block
from trm_fast.ops import OpSet
from trm_fast.ops.levels import op_recompute

# The ops one block applies, in order: mixer, norm, channel SwiGLU, norm (read by the recomputation levels and the
# memory model).
BLOCK_OPS = {
    "attention": ("attention", "add_rms_norm", "swiglu", "add_rms_norm"),
    "mlp": ("swiglu_token_mix", "add_rms_norm_seq", "swiglu", "add_rms_norm"),
}


def trunc_normal_(tensor: torch.Tensor, std: float, bound: float = 2.0) -> torch.Tensor:
    """Normal init truncated at +-bound standard deviations, rescaled so that the TRUNCATED distribution has
    standard deviation `std` (the convention of the published code, not torch's trunc_normal_)."""
    if std == 0:
        return tensor.zero_()
    mass = math.erf(bound / math.sqrt(2.0))  # P(|N(0,1)| < bound)
    pdf = math.exp(-0.5 * bound * bound) / math.sqrt(2.0 * math.pi)
    truncated_var = 1.0 - 2.0 * bound * pdf / mass
    raw_std = std / math.sqrt(truncated_var)
    with torch.no_grad():
        return nn.init.trunc_normal_(tensor, mean=0.0, std=raw_std, a=-bound * raw_std, b=bound * raw_std)


def lecun_weight(out_features: int, in_features: int) -> nn.Parameter:
    """A (out, in) fp32 weight with truncated LeCun-normal init (std 1/sqrt(fan_in))."""
    return nn.Parameter(trunc_normal_(torch.empty(out_features, in_features), std=1.0 / math.sqrt(in_features)))


class SwiGLUWeights(nn.Module):
    """The two weights of a SwiGLU: gate_up (2*hidden, width) with gate rows first, and down (width, hidden)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w_gate_up = lecun_weight(2 * hidden, width)
        self.w_down = lecun_weight(width, hidden)

    def weights(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(w_gate_up, w_down), read from the parameter dict: the block's hot path, where each nn.Module attribute
        lookup is a Python call (42 blocks a step, 8 lookups each)."""
        return self._parameters["w_gate_up"], self._parameters["w_down"]


class AttentionWeights(nn.Module):
    """Fused qkv projection (3D, D) in the layout [q heads | k heads | v heads] and the output projection."""

    def __init__(self, hidden: int):
        super().__init__()
        self.w_qkv = lecun_weight(3 * hidden, hidden)
        self.w_o = lecun_weight(hidden, hidden)

    def weights(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(w_qkv, w_o), as SwiGLUWeights.weights."""
        return self._parameters["w_qkv"], self._parameters["w_o"]


class Block(nn.Module):
    """Post-norm block: h = rms_norm(h + mixer(h)); h = rms_norm(h + swiglu(h)). No norm gains, no biases.

    The MLP-mixer variant mixes along the sequence with a SwiGLU of hidden size swiglu_hidden(L) and normalises
    that sub-layer over the sequence axis (per channel)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.mixer_kind = config.mixer
        self.op_names = BLOCK_OPS[config.mixer]
        self.num_heads = config.num_heads
        if config.mixer == "attention":
            self.mixer = AttentionWeights(config.hidden_size)
        else:
            self.mixer = SwiGLUWeights(config.total_seq_len, config.token_mix_hidden)
        self.mlp = SwiGLUWeights(config.hidden_size, config.mlp_hidden)

    def forward(self, h: torch.Tensor, ops: OpSet, rope: tuple | None, level: int = 0, then_add: torch.Tensor | None = None):
        """`level`: the recomputation level the ops run at (trm_fast.ops.levels: a Triton SwiGLU at level 1 re-runs
        its gate_up matmul in backward rather than save gate/up); run_block picks it. With `then_add`: returns
        out + then_add instead of out, the sum written by the last norm's kernel. Each sub-layer and its norm go
        through ops.post_norm: one autograd node on Triton, whose backward adds the residual's gradient in the
        sub-layer's last matmul."""
        if self.mixer_kind == "attention":
            cos, sin = rope if rope is not None else (None, None)
            h = ops.post_norm("attention", h, *self.mixer.weights(), cos, sin, self.num_heads)
        else:
            recompute = op_recompute(ops.implementations["swiglu_token_mix"], level)
            h = ops.post_norm("swiglu_token_mix", h, *self.mixer.weights(), recompute=recompute)
        recompute = op_recompute(ops.implementations["swiglu"], level)
        if then_add is None:
            return ops.post_norm("swiglu", h, *self.mlp.weights(), recompute=recompute)
        return ops.post_norm("swiglu", h, *self.mlp.weights(), recompute=recompute, inject=then_add)[1]


class ReasoningNet(nn.Module):
    """The one network `net` of TRM: net(state, injection) = blocks(state + injection).

    The recursion feeds each z update's output plus the same injection into the next: `net(h, None, ...,
    then_add=t)` applies the blocks to a sum already made (no injection) and returns out + t, written by the last
    block's norm kernel (one add launch fewer per call; the same values as adding afterwards). Every call goes
    through nn.Module.__call__, so forward hooks see each network application."""

    def __init__(self, config: ModelConfig, num_blocks: int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(Block(config) for _ in range(num_blocks or config.num_blocks))
        self.recompute = config.recompute

    def forward(self, state: torch.Tensor, injection: torch.Tensor | None, ops: OpSet, rope,
                then_add: torch.Tensor | None = None) -> torch.Tensor:
        h = state if injection is None else state + injection
        *first, last = self.blocks
        for block in first:
            h = run_block(block, h, ops, rope, self.recompute)
        return run_block(last, h, ops, rope, self.recompute, then_add)
