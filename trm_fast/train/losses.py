"""Losses and metrics of deep supervision (TRM_SPEC sections 3-4).

Token loss per sequence = sum over supervised tokens / number of supervised tokens, summed over the batch
(the caller divides by the global batch); stablemax cross-entropy computes in float64, softmax in fp32, as the
published code does (trm_fast/token_loss.py; the model's op set runs it as the op `token_cross_entropy`, fused
into one Triton kernel each way on the Triton path). Halt loss = BCE-with-logits(q_halt, sequence exactly
correct), summed. Total = lm + 0.5 * (halt + continue).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trm_fast import token_loss
from trm_fast.data.format import IGNORE_LABEL


def token_losses(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token cross-entropy of a batch's labels (0 at IGNORE_LABEL): stablemax in float64 or softmax in fp32."""
    return token_loss.token_losses(logits, labels, labels != IGNORE_LABEL, kind)


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
    token_cross_entropy: Callable | None = None,
) -> LossOutput:
    """Losses summed over the batch; `sample_weight` (B,) scales each sample's terms (0 drops a sample).
    `token_cross_entropy` computes the per-sample token loss and counts: the model's op set's (model_token_loss),
    the published plain-PyTorch code (trm_fast.token_loss) when None."""
    per_sample = token_cross_entropy or token_loss.token_cross_entropy
    per_sample_lm, counts, correct = per_sample(logits, labels, kind, IGNORE_LABEL)
    with torch.no_grad():
        seq_correct = correct == counts
        token_correct = correct.float() / counts.clamp_min(1)
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


def model_token_loss(model, device: torch.device) -> Callable:
    """The `token_cross_entropy` of the op set `model` (or the model inside DDP or torch.compile) resolves on
    `device`: the Triton kernel where its ops run on Triton, the published PyTorch code elsewhere."""
    return getattr(model, "module", model).resolved(device)[1].token_cross_entropy
