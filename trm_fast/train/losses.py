"""Losses and metrics of deep supervision (TRM_SPEC sections 3-4).

Token loss per sequence = sum over supervised tokens / number of supervised tokens, summed over the batch
(the caller divides by the global batch); stablemax cross-entropy computes in float64, softmax in fp32, as the
published code does. Halt loss = BCE-with-logits(q_halt, sequence exactly correct), summed.
Total = lm + 0.5 * (halt + continue).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trm_fast.data.format import IGNORE_LABEL


def stablemax_s(x: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """s(x) = 1/(1-x) for x < 0, else x + 1."""
    return torch.where(x < 0, 1.0 / (1.0 - x + eps), x + 1.0)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-token stablemax cross-entropy in float64; 0 where not valid. Returns float64 of labels' shape."""
    logp = log_stablemax(logits.double(), dim=-1)
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    picked = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, torch.zeros_like(picked))


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-token softmax cross-entropy in fp32; 0 where not valid."""
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    ce = F.cross_entropy(logits.float().flatten(0, -2), safe.flatten(), reduction="none").view(labels.shape)
    return torch.where(valid, ce, torch.zeros_like(ce))


def token_losses(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token cross-entropy (0 at ignored labels): stablemax in float64 or softmax in fp32."""
    valid = labels != IGNORE_LABEL
    if kind == "stablemax":
        return stablemax_cross_entropy(logits, labels, valid)
    if kind == "softmax":
        return softmax_cross_entropy(logits, labels, valid)
    raise ValueError(f"loss must be 'stablemax' or 'softmax', got {kind!r}")


def q_continue_target(next_q_halt: torch.Tensor, next_q_continue: torch.Tensor, is_last_step: torch.Tensor) -> torch.Tensor:
    """HRM's Q-learning target for q_continue: sigmoid(next q_halt) on the last step, else
    sigmoid(max(next q_halt, next q_continue)), from an extra no-grad forward on the new carry."""
    return torch.sigmoid(torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue)))


@dataclass
class LossOutput:
    total: torch.Tensor  # summed over the batch: divide by the global batch before backward
    lm: torch.Tensor
    halt: torch.Tensor
    cont: torch.Tensor
    seq_correct: torch.Tensor  # (B,) bool: every supervised token right
    token_correct: torch.Tensor  # (B,) fraction of supervised tokens right
    supervised: torch.Tensor  # (B,) bool: the sample has at least one supervised token


def supervision_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    q_halt: torch.Tensor,
    q_continue: torch.Tensor,
    kind: str = "stablemax",
    continue_target: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
) -> LossOutput:
    """Losses summed over the batch; `sample_weight` (B,) scales each sample's terms (0 drops a sample)."""
    mask = labels != IGNORE_LABEL
    counts = mask.sum(-1)
    divisor = counts.clamp_min(1)
    with torch.no_grad():
        correct = mask & (logits.argmax(-1) == labels)
        seq_correct = correct.sum(-1) == counts
        token_correct = correct.sum(-1).float() / divisor
    per_sample_lm = token_losses(logits, labels, kind).sum(-1) / divisor
    per_sample_halt = F.binary_cross_entropy_with_logits(q_halt, seq_correct.to(q_halt.dtype), reduction="none")
    per_sample_cont = (F.binary_cross_entropy_with_logits(q_continue, continue_target, reduction="none")
                       if continue_target is not None else None)
    if sample_weight is not None:
        per_sample_lm = per_sample_lm * sample_weight
        per_sample_halt = per_sample_halt * sample_weight
        per_sample_cont = per_sample_cont * sample_weight if per_sample_cont is not None else None
    lm = per_sample_lm.sum()
    halt = per_sample_halt.sum()
    cont = per_sample_cont.sum() if per_sample_cont is not None else torch.zeros((), device=q_halt.device)
    total = lm + 0.5 * (halt + cont)
    return LossOutput(total, lm.detach(), halt.detach(), cont.detach(), seq_correct, token_correct, counts > 0)
