"""The paper's TRM ablations (Tables 1 and 2) as subclasses of TRM that change only the recursion; they reuse its
blocks, so the Triton ops apply to them unchanged. One switch at a time (build_model refuses combinations).

- SeparateNetsTRM (separate_nets): one network for the z updates, another (`net_y`) for the y update.
- OneStepGradTRM (grad_mode="one_step"): everything without gradient but the last z update and the y update
  (2 network calls with gradient instead of n + 1). Forward values are TRM's.
- SingleLatentTRM (latent="single"): no y. Per cycle z = net(z + x) n times, then z = net(z); heads on z; the
  carry is (z,), started from z_init. As the authors' trm_singlez.py does.
- MultiScaleTRM (latent="multiscale"): n + 1 features, y and z_1..z_n, one per z update, each started from its
  own fixed random vector. As the authors' trm_hier6.py does (written there for n = 6): the i-th z update reads
  the SUM of all z features and overwrites z_i, and y reads that sum:
      for i in 1..n:  z_i = net(z_1 + ... + z_n + (y + x))
      y = net(y + (z_1 + ... + z_n))
  With n = 1 it is TRM.
"""
from __future__ import annotations

import torch

from trm_fast.model.layers import ReasoningNet, trunc_normal_
from trm_fast.model.trm import TRM, StepOutput, initial_state_dtype


class SeparateNetsTRM(TRM):
    def __init__(self, config):
        super().__init__(config)
        self.net_y = ReasoningNet(config)

    def latent_cycle(self, y, z, x, ops, rope, noise=None):
        for _ in range(self.config.n):
            z = self.net(z, y + x, ops, rope)
            if noise is not None:
                z = noise(z)
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
        return self.net(z, torch.zeros_like(z), ops, rope)  # the last update sees no input

    def forward(self, carry, inputs, puzzle_ids=None) -> StepOutput:
        x, (z,), ops, rope = self.prepare(carry, inputs, puzzle_ids)
        with torch.no_grad():
            for _ in range(self.config.T - 1):
                z = self._cycle(z, x, ops, rope)
        z = self._cycle(z, x, ops, rope)
        logits, q_halt, q_continue = self.heads(z)
        return StepOutput((z.detach(),), logits, q_halt, q_continue)


def _feature_sum(zs: list[torch.Tensor]) -> torch.Tensor:
    total = zs[0]
    for z in zs[1:]:  # left to right, as the reference sums them
        total = total + z
    return total


class MultiScaleTRM(TRM):
    def __init__(self, config):
        super().__init__(config)
        # one fixed, untrained start vector per z feature (y keeps y_init), in the dtype of the other initial states
        self.register_buffer("z_inits", trunc_normal_(torch.empty(config.n, config.hidden_size), std=1.0)
                             .to(initial_state_dtype(config)))

    def initial_carry(self, batch_size, device):
        y, z = super().initial_carry(batch_size, device)
        return (y,) + tuple(self.z_inits[i].to(device=z.device, dtype=z.dtype).expand_as(z).clone()
                            for i in range(self.config.n))

    def reset_carry(self, reset, carry):
        mask = reset.view(-1, 1, 1)
        y = torch.where(mask, self.y_init.to(carry[0].dtype), carry[0])
        return (y,) + tuple(torch.where(mask, self.z_inits[i].to(z.dtype), z) for i, z in enumerate(carry[1:]))

    def _cycle(self, y, zs, x, ops, rope):
        zs = list(zs)
        for i in range(self.config.n):
            zs[i] = self.net(_feature_sum(zs), y + x, ops, rope)
        return self.net(y, _feature_sum(zs), ops, rope), zs

    def forward(self, carry, inputs, puzzle_ids=None) -> StepOutput:
        x, (y, *zs), ops, rope = self.prepare(carry, inputs, puzzle_ids)
        if len(zs) != self.config.n:
            raise ValueError(f"multi-scale carry must hold y and n = {self.config.n} z features, got {len(zs)}")
        with torch.no_grad():
            for _ in range(self.config.T - 1):
                y, zs = self._cycle(y, zs, x, ops, rope)
        y, zs = self._cycle(y, zs, x, ops, rope)
        logits, q_halt, q_continue = self.heads(y)
        return StepOutput((y.detach(),) + tuple(z.detach() for z in zs), logits, q_halt, q_continue)
