"""Token cross-entropy of deep supervision, per sample: the loss, its token metrics and the logits' gradient in one
kernel launch each way (the published loss: trm_fast/token_loss.py).

One program per sample reads its (L, V) logits in (BLOCK_L, BLOCK_V) tiles (V split into chunks only when it is
wider than a tile) and writes, for the tokens whose label is not `ignore_label`,

    loss[b]    = sum over those tokens of ce(token) / max(count, 1)
    valid[b]   = count,   correct[b] = how many of them have argmax(logits) == label (first index on ties)

    stablemax (float64, as the published code): s(x) = 1 / (1 - x + 1e-30) for x < 0, else x + 1;
               ce = -log(s_y / S), S = sum_j s_j
    softmax (fp32): ce = m + log(sum_j exp(x_j - m)) - x_y, m = max_j x_j (online over chunks of V)

Backward, from the per-sample upstream gradient g (the same program layout, the tile statistics recomputed from the
logits, nothing else saved), for every valid token and column j, with c = g[b] / max(count, 1):

    stablemax: d x_j = c (s'_j / S - [j = y] s'_y / s_y),  s' = s^2 for x < 0, else 1     (float64)
    softmax:   d x_j = c (exp(x_j - m) / sum - [j = y])                                   (fp32)

and 0 elsewhere, rounded to the logits' dtype (through fp32, as torch rounds float64 to bf16). Derivation
(stablemax): -log(s_y / S) has d/ds_j = 1/S - [j = y]/s_y, and ds/dx = 1/(1 - x + eps)^2 = s^2 below 0, 1 above
(both branches meet at s(0) = 1 with slope 1).

Logits are read with their strides (the model's are a slice of the head's output, past the puzzle tokens; the last
axis contiguous); arithmetic is fp32 from the load on (fp64 for stablemax), so fp16/bf16 logits need no bf16
arithmetic. A label outside [0, V) other than `ignore_label` reads no memory out of bounds: that token's loss is
NaN (the reference's gather would fail; checking would cost a device sync). The plain-PyTorch transcriptions:
`token_cross_entropy_reference`, `token_cross_entropy_backward_reference`. Importing this module needs Triton but
no GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from trm_fast.kernels import launch_configs

STABLEMAX_EPS = 1e-30  # the published s(x) = 1 / (1 - x + eps); no effect on a float64 1 - x >= 1

# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _logits_tile(x_base, rows, in_seq, v, V, stride_xl):
    """A (BLOCK_L, BLOCK_V) tile in fp32: 0 on rows past L (finite statistics, never used), -inf on columns past V
    (no weight in any sum, never the argmax)."""
    x = tl.load(x_base + rows[:, None] * stride_xl + v[None, :], mask=in_seq[:, None] & (v[None, :] < V), other=0.0)
    return tl.where(v[None, :] < V, x.to(tl.float32), float("-inf"))


@triton.jit
def _stablemax_s(x):
    return tl.where(x < 0, 1.0 / (1.0 - x + 1e-30), x + 1.0)


# The ignore label is not specialised: any value launches the same build.
@triton.jit(do_not_specialize=["ignore_label"])
def _token_cross_entropy_fwd(x_ptr, y_ptr, loss_ptr, valid_ptr, correct_ptr, L, V,
                             stride_xb, stride_xl, stride_yb, stride_yl, ignore_label,
                             BLOCK_L: tl.constexpr, BLOCK_V: tl.constexpr, STABLEMAX: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    x_base = x_ptr + b * stride_xb
    y_base = y_ptr + b * stride_yb
    if STABLEMAX:
        loss_acc = tl.zeros([BLOCK_L], dtype=tl.float64)
    else:
        loss_acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    n_valid = tl.zeros([BLOCK_L], dtype=tl.int32)
    n_correct = tl.zeros([BLOCK_L], dtype=tl.int32)
    cols = tl.arange(0, BLOCK_V)
    for l0 in range(0, L, BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)
        in_seq = rows < L
        label = tl.load(y_base + rows * stride_yl, mask=in_seq, other=ignore_label)
        valid = in_seq & (label != ignore_label)
        best = tl.full([BLOCK_L], float("-inf"), tl.float32)
        best_col = tl.zeros([BLOCK_L], dtype=tl.int32)
        hit = tl.zeros([BLOCK_L], dtype=tl.int32)
        if STABLEMAX:
            total = tl.zeros([BLOCK_L], dtype=tl.float64)
            picked = tl.zeros([BLOCK_L], dtype=tl.float64)
        else:
            run_max = tl.full([BLOCK_L], float("-inf"), tl.float32)
            total = tl.zeros([BLOCK_L], dtype=tl.float32)
            picked = tl.zeros([BLOCK_L], dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            v = v0 + cols
            x = _logits_tile(x_base, rows, in_seq, v, V, stride_xl)
            chunk_best = tl.max(x, axis=1)
            chunk_col = tl.min(tl.where(x == chunk_best[:, None], v[None, :], V), axis=1)  # first index of the max
            best_col = tl.where(chunk_best > best, chunk_col, best_col)  # strictly greater: earlier chunks win ties
            best = tl.maximum(best, chunk_best)
            is_label = (v[None, :] == label[:, None]) & (v[None, :] < V)
            hit += tl.sum(is_label.to(tl.int32), axis=1)
            if STABLEMAX:
                s = _stablemax_s(x.to(tl.float64))  # 0 on the -inf columns
                total += tl.sum(s, axis=1)
                picked += tl.sum(tl.where(is_label, s, 0.0), axis=1)
            else:
                new_max = tl.maximum(run_max, chunk_best)
                total = total * tl.exp(run_max - new_max) + tl.sum(tl.exp(x - new_max[:, None]), axis=1)
                run_max = new_max
                picked += tl.sum(tl.where(is_label, x, 0.0), axis=1)
        if STABLEMAX:
            token = -tl.log(tl.where(hit > 0, picked, 1.0) / total)
        else:
            token = tl.log(total) + run_max - picked
        token = tl.where(hit > 0, token, float("nan"))  # a label outside [0, V)
        loss_acc += tl.where(valid, token, 0.0)
        n_valid += valid.to(tl.int32)
        n_correct += (valid & (best_col == label)).to(tl.int32)
    count = tl.sum(n_valid, axis=0)
    tl.store(loss_ptr + b, tl.sum(loss_acc, axis=0) / tl.maximum(count, 1).to(loss_acc.dtype))
    tl.store(valid_ptr + b, count.to(tl.int64))
    tl.store(correct_ptr + b, tl.sum(n_correct, axis=0).to(tl.int64))


# The upstream gradient's stride is 0 when it comes from a sum's backward (an expanded scalar), 1 when a sample
# weight multiplied it: not specialised, so both launch one build.
@triton.jit(do_not_specialize=["stride_g", "ignore_label"])
def _token_cross_entropy_bwd(g_ptr, x_ptr, y_ptr, valid_ptr, dx_ptr, L, V, stride_g,
                             stride_xb, stride_xl, stride_yb, stride_yl, ignore_label,
                             BLOCK_L: tl.constexpr, BLOCK_V: tl.constexpr, STABLEMAX: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    x_base = x_ptr + b * stride_xb
    y_base = y_ptr + b * stride_yb
    dx_base = dx_ptr + b * L * V  # d logits is contiguous (B, L, V)
    count = tl.maximum(tl.load(valid_ptr + b), 1)
    if STABLEMAX:
        scale = tl.load(g_ptr + b * stride_g).to(tl.float64) / count.to(tl.float64)
    else:
        scale = tl.load(g_ptr + b * stride_g).to(tl.float32) / count.to(tl.float32)
    cols = tl.arange(0, BLOCK_V)
    for l0 in range(0, L, BLOCK_L):
        rows = l0 + tl.arange(0, BLOCK_L)
        in_seq = rows < L
        label = tl.load(y_base + rows * stride_yl, mask=in_seq, other=ignore_label)
        valid = in_seq & (label != ignore_label)
        # the forward's row statistics again: S and s_y (stablemax), or the max and sum of exponentials (softmax)
        if STABLEMAX:
            total = tl.zeros([BLOCK_L], dtype=tl.float64)
            picked = tl.zeros([BLOCK_L], dtype=tl.float64)
        else:
            run_max = tl.full([BLOCK_L], float("-inf"), tl.float32)
            total = tl.zeros([BLOCK_L], dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            v = v0 + cols
            x = _logits_tile(x_base, rows, in_seq, v, V, stride_xl)
            if STABLEMAX:
                s = _stablemax_s(x.to(tl.float64))
                total += tl.sum(s, axis=1)
                picked += tl.sum(tl.where(v[None, :] == label[:, None], s, 0.0), axis=1)
            else:
                new_max = tl.maximum(run_max, tl.max(x, axis=1))
                total = total * tl.exp(run_max - new_max) + tl.sum(tl.exp(x - new_max[:, None]), axis=1)
                run_max = new_max
        for v0 in range(0, V, BLOCK_V):
            v = v0 + cols
            x = _logits_tile(x_base, rows, in_seq, v, V, stride_xl)
            is_label = v[None, :] == label[:, None]
            if STABLEMAX:
                xd = x.to(tl.float64)
                s = _stablemax_s(xd)
                ds = tl.where(xd < 0, s * s, 1.0)
                d = ds / total[:, None] - tl.where(is_label, ds / tl.where(picked > 0, picked, 1.0)[:, None], 0.0)
            else:
                d = tl.exp(x - run_max[:, None]) / total[:, None] - is_label.to(tl.float32)
            d = tl.where(valid[:, None], d * scale, 0.0)
            tl.store(dx_base + rows[:, None] * V + v[None, :], d.to(tl.float32).to(dx_ptr.dtype.element_ty),
                     mask=in_seq[:, None] & (v[None, :] < V))


# ---------------------------------------------------------------------------------------------- launchers
# logits (B, L, V) with a contiguous last axis, labels (B, L) integer; the op (trm_fast/ops/cross_entropy.py) checks.


def _launch(logits: torch.Tensor, labels: torch.Tensor):
    B, L, V = logits.shape
    cfg = launch_configs.cross_entropy_config(L, V)
    args = (L, V)
    strides = (logits.stride(0), logits.stride(1), labels.stride(0), labels.stride(1))
    meta = {"BLOCK_L": cfg["BLOCK_L"], "BLOCK_V": cfg["BLOCK_V"], "num_warps": cfg["num_warps"]}
    return (B,), args, strides, meta


def token_cross_entropy_fwd(logits: torch.Tensor, labels: torch.Tensor, ignore_label: int, stablemax: bool,
                            loss: torch.Tensor, valid: torch.Tensor, correct: torch.Tensor) -> None:
    """loss (B,) <- per-sample mean cross-entropy over the tokens not labelled `ignore_label` (float64 for
    stablemax, fp32 for softmax); valid, correct (B,) int64 <- their count and how many argmax hits."""
    grid, args, strides, meta = _launch(logits, labels)
    _token_cross_entropy_fwd[grid](logits, labels, loss, valid, correct, *args, *strides, int(ignore_label),
                                   STABLEMAX=bool(stablemax), **meta)


def token_cross_entropy_bwd(d_loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                            ignore_label: int, stablemax: bool, dx: torch.Tensor) -> None:
    """dx (B, L, V) contiguous, the logits' dtype <- d loss / d logits for the upstream gradient d_loss (B,) (any
    stride) of the forward's loss; `valid` is the forward's count."""
    grid, args, strides, meta = _launch(logits, labels)
    _token_cross_entropy_bwd[grid](d_loss, logits, labels, valid, dx, *args, d_loss.stride(0), *strides,
                                   int(ignore_label), STABLEMAX=bool(stablemax), **meta)


# ---------------------------------------------------------------------------------------------- references


def token_cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_label: int, stablemax: bool):
    """(loss, valid, correct) as the forward kernel computes them, in plain PyTorch: the kernels' oracle (softmax in
    fp32, or float64 for float64 logits: gradcheck)."""
    valid = labels != ignore_label
    safe = torch.where(valid, labels, 0).long().unsqueeze(-1)
    if stablemax:
        x = logits.double()
        s = torch.where(x < 0, 1.0 / (1.0 - x + STABLEMAX_EPS), x + 1.0)
        token = -torch.log(s.gather(-1, safe).squeeze(-1) / s.sum(-1))
    else:
        x = logits if logits.dtype == torch.float64 else logits.float()
        m = x.amax(-1)
        token = m + torch.log(torch.exp(x - m.unsqueeze(-1)).sum(-1)) - x.gather(-1, safe).squeeze(-1)
    count = valid.sum(-1)
    loss = torch.where(valid, token, 0.0).sum(-1) / count.clamp_min(1)
    correct = (valid & (logits.argmax(-1) == labels)).sum(-1)
    return loss, count, correct


def token_cross_entropy_backward_reference(d_loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                                           ignore_label: int, stablemax: bool) -> torch.Tensor:
    """d logits by the backward kernel's formula (module docstring), in plain PyTorch, in float64 for stablemax and
    fp32 for softmax (float64 throughout for float64 logits: gradcheck), in the logits' dtype."""
    valid = labels != ignore_label
    onehot = torch.nn.functional.one_hot(torch.where(valid, labels, 0).long(), logits.shape[-1]).bool()
    scale = d_loss / valid.sum(-1).clamp_min(1)
    if stablemax:
        x = logits.double()
        s = torch.where(x < 0, 1.0 / (1.0 - x + STABLEMAX_EPS), x + 1.0)
        ds = torch.where(x < 0, s * s, 1.0)
        s_y = (s * onehot).sum(-1, keepdim=True)
        d = ds / s.sum(-1, keepdim=True) - torch.where(onehot, ds / s_y, 0.0)
    else:
        x = logits if logits.dtype == torch.float64 else logits.float()
        d = torch.softmax(x, -1) - onehot.to(x.dtype)
    d = torch.where(valid.unsqueeze(-1), d * scale.to(d.dtype).view(-1, 1, 1), 0.0)
    return d.to(torch.float32).to(logits.dtype) if logits.dtype != torch.float64 else d
