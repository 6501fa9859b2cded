"""Exponential moving average of the trainable weights (rate 0.999 in the published runs).

The shadow holds fp32 copies of every parameter that requires grad; buffers (the puzzle table, initial states)
are not averaged. Evaluation and checkpoints use the shadow through `apply_to`."""
from __future__ import annotations

import contextlib

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, rate: float):
        self.rate = rate
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow = rate * shadow + (1 - rate) * param."""
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.rate)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module | None = None) -> None:
        params = self.params if model is None else [dict(model.named_parameters())[n] for n in self.names]
        for p, s in zip(params, self.shadow):
            p.copy_(s.to(p.dtype))

    @contextlib.contextmanager
    def apply_to(self, model: torch.nn.Module):
        """Swaps the averaged weights in for the duration of the block, then restores the live ones."""
        params = [dict(model.named_parameters())[n] for n in self.names]
        live = [p.detach().clone() for p in params]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, saved in zip(params, live):
                    p.copy_(saved)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: s for name, s in zip(self.names, self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise ValueError(f"EMA state lacks parameter(s) {', '.join(missing[:5])}")
        with torch.no_grad():
            for name, s in zip(self.names, self.shadow):
                s.copy_(state[name])
