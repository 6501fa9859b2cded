"""The paper's TRM ablations (Tables 1 and 2) as subclasses of TRM that change only the recursion.

- SeparateNetsTRM (separate_nets): one network for the z updates, another for the y update.
- OneStepGradTRM (grad_mode="one_step"): everything without gradient but the last z update and the y update
  (2 network calls with gradient instead of n + 1).
- SingleLatentTRM (latent="single"): no y. Per cycle z = net(z, x) n times, then z = net(z, 0); heads on z.
- MultiScaleTRM (latent="multiscale"): n + 1 carried features, y and one z_i per z update. Our reading of the
  paper's "multi-scale" row: the i-th update writes its own feature from the one before it,
  z_i = net(z_i, z_{i-1} + y + x) with z_0 = 0, then y = net(y, z_n). With n = 1 it is TRM.
The variants reuse the blocks, so the Triton ops apply to them unchanged.
"""
from __future__ import annotations

import torch

from trm_fast.model.layers import ReasoningNet
from trm_fast.model.trm import TRM, StepOutput


class SeparateNetsTRM(TRM):
    def __init__(self, config):
        super().__init__(config)
        self.net_y = ReasoningNet(config)

    def latent_cycle(self, y, z, x, ops, rope):
        for _ in range(self.config.n):
            z = self.net(z, y + x, ops, rope)
        return self.net_y(y, z, ops, rope), z


class OneStepGradTRM(TRM):
    def forward(self, carry, inputs, puzzle_ids=None) -> StepOutput:
        x, (y, z), ops, rope = self.prepare(carry, inputs, puzzle_ids)
        with torch.no_grad():
            for _ in range(self.config.T - 1):
                y, z = self.latent_cycle(y, z, x, ops, rope)
            for _ in range(self.config.n - 1):
                z = self.net(z, y + x, ops, rope)
        z = self.net(z, y + x, ops, rope)
        y = self.net(y, z, ops, rope)
        logits, q_halt, q_continue = self.heads(y)
        return StepOutput((y.detach(), z.detach()), logits, q_halt, q_continue)


class SingleLatentTRM(TRM):
    def initial_carry(self, batch_size, device):
        return (super().initial_carry(batch_size, device)[1],)

    def reset_carry(self, reset, carry):
        (z,) = carry
        return (torch.where(reset.view(-1, 1, 1), self.z_init.to(z.dtype), z),)

    def _cycle(self, z, x, ops, rope):
        for _ in range(self.config.n):
            z = self.net(z, x, ops, rope)
        return self.net(z, torch.zeros_like(z), ops, rope)

    def forward(self, carry, inputs, puzzle_ids=None) -> StepOutput:
        x, (z,), ops, rope = self.prepare(carry, inputs, puzzle_ids)
        with torch.no_grad():
            for _ in range(self.config.T - 1):
                z = self._cycle(z, x, ops, rope)
        z = self._cycle(z, x, ops, rope)
        logits, q_halt, q_continue = self.heads(z)
        return StepOutput((z.detach(),), logits, q_halt, q_continue)


class MultiScaleTRM(TRM):
    def initial_carry(self, batch_size, device):
        y, z = super().initial_carry(batch_size, device)
        return (y,) + tuple(z.clone() for _ in range(self.config.n))

    def reset_carry(self, reset, carry):
        mask = reset.view(-1, 1, 1)
        y = torch.where(mask, self.y_init.to(carry[0].dtype), carry[0])
        return (y,) + tuple(torch.where(mask, self.z_init.to(z.dtype), z) for z in carry[1:])

    def _cycle(self, y, zs, x, ops, rope):
        zs = list(zs)
        previous = torch.zeros_like(y)
        for i in range(self.config.n):
            zs[i] = self.net(zs[i], previous + y + x, ops, rope)
            previous = zs[i]
        return self.net(y, previous, ops, rope), zs

    def forward(self, carry, inputs, puzzle_ids=None) -> StepOutput:
        x, (y, *zs), ops, rope = self.prepare(carry, inputs, puzzle_ids)
        with torch.no_grad():
            for _ in range(self.config.T - 1):
                y, zs = self._cycle(y, zs, x, ops, rope)
        y, zs = self._cycle(y, zs, x, ops, rope)
        logits, q_halt, q_continue = self.heads(y)
        return StepOutput((y.detach(),) + tuple(z.detach() for z in zs), logits, q_halt, q_continue)
