"""HRM (Wang et al. 2025, "Hierarchical Reasoning Model") on the same engine, as its authors' code defines it
(sapientinc/HRM, models/hrm/hrm_act_v1.py and config/arch/hrm_v1.yaml):

- two networks of TRM's post-norm attention blocks (RoPE, no norm gains, no biases): a fast low level `net`
  (z_L, `hrm_low_blocks` = 4 blocks) and a slow high level `net_high` (z_H, `hrm_high_blocks` = 4 blocks);
- per supervision step, T = 2 high-level cycles ("H_cycles") of n = 2 low-level steps ("L_cycles"), with input
  injection as a plain sum before the blocks:
      z_L = L_net(z_L + (z_H + x))    n times per cycle,      z_H = H_net(z_H + z_L)    once per cycle
- the 1-step gradient approximation: everything runs without gradient except the last low-level step and the
  last high-level step (so 2 network calls, 8 block applications, carry gradient);
- one puzzle token (puzzle_emb_len 1 = ceil(puzzle_emb_ndim / hidden)); heads on z_H (lm_head on every token
  but the puzzle token, q_head on position 0);
- fixed initial states H_init / L_init (truncated normal, std 1, bf16), the same buffers as TRM's y_init /
  z_init (the published TRM code calls them H_init / L_init too, so checkpoints map one to one);
- Q-learning halting with the continue loss (`act_continue` on): the training engine halts when
  q_halt > q_continue and takes the Q-continue target from an extra no-grad forward on the new carry.

With D = 512, 8 heads, expansion 4 and 4 + 4 blocks it has 27,275,266 trainable parameters at vocabulary 11
(27,276,290 at 12), the count of the published model. The carry is (z_H, z_L), in the order of TRM's (y, z).
"""
from __future__ import annotations

import torch

from trm_fast.model.layers import ReasoningNet
from trm_fast.model.trm import TRM, StepOutput


class HRM(TRM):
    def __init__(self, config):
        super().__init__(config)
        self.net = ReasoningNet(config, config.hrm_low_blocks)  # L level (replaces TRM's one network)
        self.net_high = ReasoningNet(config, config.hrm_high_blocks)  # H level

    @property
    def H_init(self) -> torch.Tensor:
        return self.y_init

    @property
    def L_init(self) -> torch.Tensor:
        return self.z_init

    def forward(self, carry, inputs, puzzle_ids=None) -> StepOutput:
        x, (z_h, z_l), ops, rope = self.prepare(carry, inputs, puzzle_ids)
        T, n = self.config.T, self.config.n
        with torch.no_grad():
            for cycle in range(T):
                last_cycle = cycle == T - 1
                for _ in range(n - 1 if last_cycle else n):
                    z_l = self.net(z_l, z_h + x, ops, rope)
                if not last_cycle:
                    z_h = self.net_high(z_h, z_l, ops, rope)
        # 1-step gradient: the last low-level step and the last high-level step
        z_l = self.net(z_l, z_h + x, ops, rope)
        z_h = self.net_high(z_h, z_l, ops, rope)
        logits, q_halt, q_continue = self.heads(z_h)
        return StepOutput((z_h.detach(), z_l.detach()), logits, q_halt, q_continue)
