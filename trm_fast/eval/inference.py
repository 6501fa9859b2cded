"""Loading a trained model from a checkpoint, and solving single puzzles with test-time halting."""
from __future__ import annotations

import os

import torch

from trm_fast.config import TRMConfig
from trm_fast.model import build_model


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder, or a run folder (its latest usable checkpoint)."""
    from trm_fast.train.checkpoint import find_latest_checkpoint

    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    latest = find_latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"no usable checkpoint under {path!r} (expected a checkpoint folder or a run folder)")
    return latest


def load_trained_model(path: str, device: torch.device | str = "cpu", use_ema: bool = True):
    """(model in eval mode with EMA weights where saved, its TRMConfig, the checkpoint's train state)."""
    from trm_fast.train.checkpoint import check_compatible, load_checkpoint

    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    config = TRMConfig.from_dict(ckpt["state"]["config"])
    model = build_model(config.model)
    check_compatible(ckpt["meta"], model)
    model.load_state_dict(ckpt["model"])
    if use_ema and ckpt.get("ema"):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in ckpt["ema"].items():
                if name in params:
                    params[name].copy_(value)
    model.to(device).eval()
    return model, config, ckpt["state"]


@torch.no_grad()
def solve_tokens(model, tokens: torch.Tensor, puzzle_id: int = 0, max_steps: int = 16, halt: bool = True) -> dict:
    """Runs supervision steps on one puzzle (tokens (seq_len,)) until q_halt > 0 (if `halt`) or max_steps.
    Returns the predicted tokens, the steps used and the halting confidence sigmoid(q_halt) of the last step."""
    device = next(model.parameters()).device
    inputs = tokens.view(1, -1).to(device)
    ids = torch.tensor([puzzle_id], device=device)
    carry = model.initial_carry(1, device)
    for step in range(1, max_steps + 1):
        out = model(carry, inputs, ids)
        carry = out.carry
        if halt and float(out.q_halt[0]) > 0:
            break
    return {
        "prediction": out.logits[0].argmax(-1).cpu(),
        "steps": step,
        "halt_confidence": float(torch.sigmoid(out.q_halt[0])),
    }
