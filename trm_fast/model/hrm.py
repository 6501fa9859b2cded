"""HRM (Wang et al. 2025, "Hierarchical Reasoning Model") on the same engine, as its authors define it:

- two networks of the same post-norm blocks: a fast low level (z_L, `hrm_low_blocks` blocks) and a slow high
  level (z_H, `hrm_high_blocks` blocks), 4 each in the published runs, attention with RoPE;
- per supervision step, T high-level cycles of n low-level steps with input injection:
      z_L = L_net(z_L, z_H + x)   (n times per cycle),   z_H = H_net(z_H, z_L)   (once per cycle)
- the 1-step gradient approximation: everything runs without gradient except the last low-level step and the
  last high-level step;
- one puzzle token; heads on z_H; Q-learning halting with the continue loss (the engine computes the target
  from an extra no-grad forward when `act_continue` is on).
With D = 512, 8 heads, expansion 4 and 4 + 4 blocks this has 27,275,266 trainable parameters at vocabulary 11.
Carry order is (z_H, z_L), like TRM's (y, z).
"""
from __future__ import annotations

import torch

from trm_fast.model.layers import ReasoningNet
from trm_fast.model.trm import TRM, StepOutput


class HRM(TRM):
    def __init__(self, config):
        super().__init__(config)
        self.net = ReasoningNet(config, config.hrm_low_blocks)  # L level
        self.net_high = ReasoningNet(config, config.hrm_high_blocks)  # H level

    def forward(self, carry, inputs, puzzle_ids=None) -> StepOutput:
        x, (z_h, z_l), ops, rope = self.prepare(carry, inputs, puzzle_ids)
        total = self.config.T * self.config.n
        with torch.no_grad():
            for i in range(total - 1):
                z_l = self.net(z_l, z_h + x, ops, rope)
                if (i + 1) % self.config.n == 0:
                    z_h = self.net_high(z_h, z_l, ops, rope)
        z_l = self.net(z_l, z_h + x, ops, rope)
        z_h = self.net_high(z_h, z_l, ops, rope)
        logits, q_halt, q_continue = self.heads(z_h)
        return StepOutput((z_h.detach(), z_l.detach()), logits, q_halt, q_continue)
