"""The published token loss of deep supervision (TRM_SPEC sections 3-4), in plain PyTorch: cross-entropy per token,
stablemax in float64 or softmax in fp32, summed over each sample's supervised tokens and divided by their count,
with the token metrics.

It is the one definition of two callers that may not import each other: the trainer (trm_fast.train.losses, whose
default it is) and the op set, where it is the "torch" implementation of the fused op `token_cross_entropy`
(trm_fast.ops.reference; the Triton one is trm_fast/ops/cross_entropy.py). Hence a leaf: torch only, nothing of
the package.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_KINDS = ("stablemax", "softmax")


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


def token_losses(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token cross-entropy (0 where not `valid`): stablemax in float64 or softmax in fp32."""
    if kind == "stablemax":
        return stablemax_cross_entropy(logits, labels, valid)
    if kind == "softmax":
        return softmax_cross_entropy(logits, labels, valid)
    raise ValueError(f"loss must be 'stablemax' or 'softmax', got {kind!r}")


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, kind: str, ignore_label: int):
    """(loss, valid, correct) per sample of logits (B, L, V) and labels (B, L): the mean token loss over the tokens
    not labelled `ignore_label` (float64 for stablemax, fp32 for softmax; 0 for a sample without any), their count
    and how many of them argmax(logits) gets right (int64). Only the loss carries a gradient."""
    valid = labels != ignore_label
    counts = valid.sum(-1)
    with torch.no_grad():
        correct = (valid & (logits.argmax(-1) == labels)).sum(-1)
    loss = token_losses(logits, labels, valid, kind).sum(-1) / counts.clamp_min(1)
    return loss, counts, correct
