"""Exponential moving average of the trainable weights (rate 0.999 in the published runs).

The shadow holds fp32 copies of every parameter that requires grad; buffers (the puzzle table, the initial states)
are not averaged. Evaluation and checkpoints use the shadow through `apply_to`."""
from __future__ import annotations

import contextlib

import torch


def _core(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # the model itself under DistributedDataParallel


class EMA:
    def __init__(self, model: torch.nn.Module, rate: float):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"EMA rate must lie in [0, 1], got {rate}")
        self.rate = rate
        named = [(name, p) for name, p in _core(model).named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow = rate * shadow + (1 - rate) * param, one foreach kernel for all tensors."""
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - self.rate)

    def _params_of(self, model: torch.nn.Module | None) -> list[torch.Tensor]:
        if model is None:
            return self.params
        params = dict(_core(model).named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"EMA: the model has no parameter(s) {', '.join(missing[:5])}")
        return [params[n] for n in self.names]

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module | None = None) -> None:
        """Overwrites the model's trainable weights with the averages (the tracked model when None)."""
        for p, s in zip(self._params_of(model), self.shadow):
            p.copy_(s)

    @contextlib.contextmanager
    def apply_to(self, model: torch.nn.Module | None = None):
        """Swaps the averaged weights in for the duration of the block, then restores the live ones bit for bit."""
        params = self._params_of(model)
        with torch.no_grad():
            live = [p.detach().clone() for p in params]
            for p, s in zip(params, self.shadow):
                p.copy_(s)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, saved in zip(params, live):
                    p.copy_(saved)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.names if n not in state]
        unexpected = [n for n in state if n not in set(self.names)]
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, s in zip(self.names, self.shadow):
            if tuple(state[name].shape) != tuple(s.shape):
                raise ValueError(f"EMA state tensor {name!r} has shape {tuple(state[name].shape)}, the model {tuple(s.shape)}")
            s.copy_(state[name])
