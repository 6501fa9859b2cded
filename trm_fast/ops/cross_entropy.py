"""The token loss of deep supervision as a torch custom op with autograd: per sample, the mean cross-entropy over
the supervised tokens (stablemax in float64 or softmax in fp32) and the counts of supervised and of correctly
predicted tokens, from one Triton kernel (kernels/cross_entropy.py); its backward is one more.

`token_cross_entropy(logits, labels, kind, ignore_label)` has the semantics and output dtypes of the published code
(trm_fast/token_loss.py, the "torch" implementation): logits (B, L, V) of any float dtype with a contiguous last
axis (the model's are a slice past the puzzle tokens: read in place), labels (B, L) int32 or int64, `ignore_label`
marking the tokens without supervision. It returns (loss (B,), valid (B,) int64, correct (B,) int64); only the loss
has a gradient. Ties in argmax count the first index, as torch.argmax. Labels outside [0, V) other than
`ignore_label` are the caller's business (checking them would cost a device sync): the kernel reads nothing out of
bounds and gives such a token a NaN loss, where the reference's gather fails.

Saved for backward: the logits (the op's input, no copy), the labels and the count per sample; the backward kernel
recomputes each token's normaliser from the logits.
"""
from __future__ import annotations

import torch

from trm_fast.kernels import cross_entropy as kernels
from trm_fast.ops._custom_op import INT32_MAX, check_activation, custom_op, outputs_without_grad
from trm_fast.token_loss import LOSS_KINDS

LABEL_DTYPES = (torch.int32, torch.int64)


@custom_op("trm_fast::token_cross_entropy_fwd")
def _token_cross_entropy_fwd(logits: torch.Tensor, labels: torch.Tensor, stablemax: bool,
                             ignore_label: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B = logits.shape[0]
    loss = torch.empty(B, dtype=torch.float64 if stablemax else torch.float32, device=logits.device)
    valid = torch.empty(B, dtype=torch.int64, device=logits.device)
    correct = torch.empty(B, dtype=torch.int64, device=logits.device)
    kernels.token_cross_entropy_fwd(logits, labels, ignore_label, stablemax, loss, valid, correct)
    return loss, valid, correct


@_token_cross_entropy_fwd.register_fake
def _(logits, labels, stablemax, ignore_label):
    B = logits.shape[0]
    return (logits.new_empty(B, dtype=torch.float64 if stablemax else torch.float32),
            logits.new_empty(B, dtype=torch.int64), logits.new_empty(B, dtype=torch.int64))


@custom_op("trm_fast::token_cross_entropy_bwd")
def _token_cross_entropy_bwd(d_loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                             stablemax: bool, ignore_label: int) -> torch.Tensor:
    dx = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    kernels.token_cross_entropy_bwd(d_loss, logits, labels, valid, ignore_label, stablemax, dx)
    return dx


@_token_cross_entropy_bwd.register_fake
def _(d_loss, logits, labels, valid, stablemax, ignore_label):
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    logits, labels, ctx.stablemax, ctx.ignore_label = inputs
    _, valid, correct = output
    outputs_without_grad(ctx, valid, correct)
    ctx.save_for_backward(logits, labels, valid)


def _backward(ctx, d_loss, _dvalid, _dcorrect):
    if d_loss is None:
        return None, None, None, None
    logits, labels, valid = ctx.saved_tensors
    return _token_cross_entropy_bwd(d_loss, logits, labels, valid, ctx.stablemax, ctx.ignore_label), None, None, None


_token_cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


def _checked(logits, labels, kind, ignore_label) -> None:
    op = "token_cross_entropy"
    check_activation(op, "logits", logits)
    if logits.dim() != 3:
        raise ValueError(f"{op}: logits must have 3 dimensions (batch, seq, vocab), got shape {tuple(logits.shape)}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{op}: labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in LABEL_DTYPES:
        raise ValueError(f"{op}: labels have dtype {labels.dtype}; supported: int32, int64")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"{op}: labels have shape {tuple(labels.shape)}, logits {tuple(logits.shape)}: expected "
                         f"{tuple(logits.shape[:-1])}")
    if labels.device != logits.device:
        raise ValueError(f"{op}: labels are on {labels.device}, logits on {logits.device}")
    if kind not in LOSS_KINDS:
        raise ValueError(f"{op}: kind must be 'stablemax' or 'softmax', got {kind!r}")
    if isinstance(ignore_label, bool) or not isinstance(ignore_label, int):
        raise TypeError(f"{op}: ignore_label must be an int, got {type(ignore_label).__name__}")
    L, V = logits.shape[1:]
    if L * max(V, logits.stride(1)) > INT32_MAX:
        raise ValueError(f"{op}: one sample's logits span {L * max(V, logits.stride(1))} values; at most 2^31 - 1 "
                         "supported")


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, kind: str, ignore_label: int):
    """(loss, valid, correct) per sample: the mean stablemax (float64) or softmax (fp32) cross-entropy over the
    tokens whose label is not `ignore_label`, their count and how many of them argmax(logits) predicts (int64)."""
    _checked(logits, labels, kind, ignore_label)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    return _token_cross_entropy_fwd(logits, labels, kind == "stablemax", ignore_label)
