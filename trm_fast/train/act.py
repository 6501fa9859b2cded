"""Deep supervision with adaptive halting (ACT) on a persistent per-sample carry (TRM_SPEC section 3).

Each call of `supervision_step` is one supervision step of every slot of the batch:
- a slot that halted last step restarts from the initial y/z and takes its row of the fresh batch; the rows at
  slots still running are dropped;
- after the step: steps += 1; halted = steps >= halt_max_steps; in training also halted |= q_halt > 0 (or
  q_halt > q_continue with the continue loss); with probability p a slot draws a minimum number of steps,
  uniform in 2..halt_max_steps, before it may halt (drawn anew every step, as the published code does).

Random draws are keyed by (seed, step, global slot index) with a counter-based hash, so they neither depend on
how the batch is split across micro-batches or ranks nor consume any global RNG stream.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from trm_fast.data.format import IGNORE_LABEL
from trm_fast.train.losses import LossOutput, model_token_loss, q_continue_target, supervision_loss

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors holding values < 2^32.
    Multipliers stay below 2^31 so products never leave int64's range."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def keyed_uniform(seed, step, index: torch.Tensor, stream):
    """Uniform [0, 1) float32 per element of `index` (int64 global slot indices), a pure function of
    (seed, step, index, stream). `stream` an int: shape of index; a tuple of ints: one row per stream, (S, *index.shape),
    each row equal to the single-stream draw, made by one pass of the hash (half the launches of two calls).
    seed and step: Python ints, or 0-d int64 device tensors (the CUDA-graph step)."""
    streams = (stream,) if isinstance(stream, int) else tuple(stream)
    base = seed * 0x9E3779B1 + step * 0x85EBCA77
    if len(streams) == 1:
        key = (base + streams[0] * 0xC2B2AE3D) & _MASK32
    elif isinstance(base, torch.Tensor):
        # on the device, no host copy: the CUDA-graph step captures this
        key = torch.stack([(base + s * 0xC2B2AE3D) & _MASK32 for s in streams]).view((-1,) + (1,) * index.dim())
    else:
        key = torch.tensor([(base + s * 0xC2B2AE3D) & _MASK32 for s in streams], dtype=torch.int64,
                           device=index.device).view((-1,) + (1,) * index.dim())
    h = _mix32((index.to(torch.int64) * 0x27D4EB2F + key) & _MASK32)
    h = _mix32((h + key) & _MASK32)
    u = (h >> 8).to(torch.float32) * (1.0 / (1 << 24))
    return u


@dataclass
class SupervisionState:
    """The training carry of every slot: latent state, step count, halted flag and the current example."""

    carry: tuple[torch.Tensor, ...]
    steps: torch.Tensor  # (B,) int32
    halted: torch.Tensor  # (B,) bool
    inputs: torch.Tensor  # (B, seq_len)
    labels: torch.Tensor  # (B, seq_len), IGNORE_LABEL where unsupervised
    puzzle_ids: torch.Tensor  # (B,)

    @classmethod
    def fresh(cls, model, batch_size: int, seq_len: int, device) -> "SupervisionState":
        """Every slot halted, so the first step loads the whole batch."""
        return cls(
            carry=model.initial_carry(batch_size, device),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            inputs=torch.zeros(batch_size, seq_len, dtype=torch.int32, device=device),
            labels=torch.full((batch_size, seq_len), IGNORE_LABEL, dtype=torch.int64, device=device),
            puzzle_ids=torch.zeros(batch_size, dtype=torch.int64, device=device),
        )

    def slice(self, start: int, stop: int) -> "SupervisionState":
        return SupervisionState(tuple(t[start:stop] for t in self.carry), self.steps[start:stop], self.halted[start:stop],
                                self.inputs[start:stop], self.labels[start:stop], self.puzzle_ids[start:stop])

    @classmethod
    def concat(cls, parts: list["SupervisionState"]) -> "SupervisionState":
        if len(parts) == 1:
            return parts[0]
        carry = tuple(torch.cat([p.carry[i] for p in parts]) for i in range(len(parts[0].carry)))
        return cls(carry, *(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)[1:]))

    def state_dict(self) -> dict:
        return {"carry": list(self.carry), **{f.name: getattr(self, f.name) for f in fields(self)[1:]}}

    @classmethod
    def from_state_dict(cls, d: dict, device) -> "SupervisionState":
        return cls(tuple(t.to(device) for t in d["carry"]), *(d[f.name].to(device) for f in fields(cls)[1:]))


@dataclass
class StepResult:
    state: SupervisionState
    loss: LossOutput
    q_halt: torch.Tensor
    metrics: dict  # sums over slots that halted this step (tensors, no host sync)
    continue_target: torch.Tensor | None = None  # the Q-continue target when the continue loss is on


def supervision_step(
    model,
    state: SupervisionState,
    batch: dict,
    *,
    step: int,
    seed: int,
    slot_index: torch.Tensor,
    training: bool,
    loss_kind: str = "stablemax",
) -> StepResult:
    """One supervision step; `batch` holds fresh rows (inputs, labels, puzzle_identifiers) for every slot."""
    core = getattr(model, "module", model)  # the model itself under DistributedDataParallel
    cfg = core.config
    halted = state.halted
    carry = core.reset_carry(halted, state.carry)
    steps = torch.where(halted, torch.zeros_like(state.steps), state.steps)
    rows = halted.view(-1, 1)
    inputs = torch.where(rows, batch["inputs"].to(state.inputs.dtype), state.inputs)
    labels = torch.where(rows, batch["labels"].to(state.labels.dtype), state.labels)
    puzzle_ids = torch.where(halted, batch["puzzle_identifiers"].to(state.puzzle_ids.dtype), state.puzzle_ids)

    out = model(carry, inputs, puzzle_ids)

    with torch.no_grad():
        steps = steps + 1
        is_last = steps >= cfg.halt_max_steps
        new_halted = is_last
        target = None
        if training and cfg.halt_max_steps > 1:
            wants_halt = (out.q_halt > out.q_continue) if cfg.act_continue else (out.q_halt > 0)
            explore_draw, draw = keyed_uniform(seed, step, slot_index, (0, 1))
            explore = explore_draw < cfg.halt_exploration_prob
            min_steps = 2 + (draw * (cfg.halt_max_steps - 1)).to(torch.int32)
            new_halted = is_last | (wants_halt & (steps >= torch.where(explore, min_steps, torch.zeros_like(min_steps))))
            if cfg.act_continue:
                nxt = model(out.carry, inputs, puzzle_ids)
                target = q_continue_target(nxt.q_halt, nxt.q_continue, is_last)

    loss = supervision_loss(out.logits, labels, out.q_halt, out.q_continue, loss_kind, target,
                            token_cross_entropy=model_token_loss(core, labels.device))
    with torch.no_grad():
        counted = new_halted & loss.supervised
        metrics = {
            "count": counted.sum(),
            "exact_accuracy": (counted & loss.seq_correct).sum(),
            "token_accuracy": torch.where(counted, loss.token_correct, 0.0).sum(),
            "halt_accuracy": (counted & ((out.q_halt >= 0) == loss.seq_correct)).sum(),
            "steps": torch.where(counted, steps, 0).sum(),
        }
    new_state = SupervisionState(out.carry, steps.to(torch.int32), new_halted, inputs, labels, puzzle_ids)
    return StepResult(new_state, loss, out.q_halt.detach(), metrics, target)
