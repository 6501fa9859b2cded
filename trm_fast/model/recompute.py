"""Activation recomputation for the cycle that carries gradient (`model.recompute`), by the plans of
trm_fast.ops.levels (what each level keeps and replays, per op and implementation):

- level 0: every op saves what its backward needs.
- level 1: elementwise work is recomputed, matmul outputs are kept. Triton ops do it themselves (called with
  recompute=True); a block with a reference op runs under torch's selective activation checkpointing, which keeps
  the block input, matmul and attention outputs and the Triton ops' outputs, and recomputes the rest.
- level 2: each block saves only its input (BlockRecompute) and is re-run during backward, so the peak holds one
  block's internals, never a whole network call's.
Recomputation is deterministic, so gradients equal plain backprop at every level.

Saved-tensor hooks do not see what a selective-checkpoint region keeps (torch keeps it in its own cache):
`observe_regions(callback)` reports those tensors, for trm_fast.tools.memory's measurement.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from trm_fast.ops import levels

_aten = torch.ops.aten
_KEPT_ATEN = {
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention.default, _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}
for _name in ("_scaled_dot_product_flash_attention_for_cpu",):
    if hasattr(_aten, _name):
        _KEPT_ATEN.add(getattr(_aten, _name).default)


def _kept_by_region(op) -> bool:
    """Matmul and attention outputs, and every output of the Triton custom ops (trm_fast::): those ops recompute
    their elementwise work inside their own backward already (levels: "selective")."""
    return op in _KEPT_ATEN or getattr(op, "namespace", None) == "trm_fast"


def _policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if _kept_by_region(op) else CheckpointPolicy.PREFER_RECOMPUTE


_selective_contexts = functools.partial(create_selective_checkpoint_contexts, _policy)
_observers: list = []


@contextlib.contextmanager
def observe_regions(callback):
    """Within: callback(t) for every tensor a selective-checkpoint region keeps for its backward (its input and the
    outputs it caches). Eager runs only: torch.compile traces the regions without the observer."""
    _observers.append(callback)
    try:
        yield
    finally:
        _observers.remove(callback)


class _ReportKept(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _kept_by_region(func):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    for observe in _observers:
                        observe(t)
        return out


@contextlib.contextmanager
def _both(outer, inner):
    with outer, inner:
        yield


def _observed_selective_contexts():
    forward, recompute = _selective_contexts()
    return _both(forward, _ReportKept()), recompute  # inside the caching mode: sees what it caches


class BlockRecompute(torch.autograd.Function):
    """Runs a block without recording and saves only its input (through ctx.save_for_backward, so saved-tensor
    hooks see it); backward re-runs the block with grad at level 0 and backpropagates through that one block.
    With `then_add` the forward returns out + then_add from the block's last norm kernel (no add launch), whose
    gradient is the output's."""

    @staticmethod
    def forward(ctx, h, then_add, block, ops, rope, *params):
        ctx.block, ctx.ops, ctx.rope = block, ops, rope
        ctx.save_for_backward(h)
        with torch.no_grad():
            return block(h, ops, rope, 0, then_add)

    @staticmethod
    def backward(ctx, grad_out):
        (h,) = ctx.saved_tensors
        params = [p for p in ctx.block.parameters()]
        with torch.enable_grad():
            h_again = h.detach().requires_grad_(h.requires_grad)
            out = ctx.block(h_again, ctx.ops, ctx.rope, 0)
        inputs = ([h_again] if h.requires_grad else []) + [p for p in params if p.requires_grad]
        grads = iter(torch.autograd.grad(out, inputs, grad_out, allow_unused=True))
        grad_h = next(grads) if h.requires_grad else None
        grad_params = [next(grads) if p.requires_grad else None for p in params]
        grad_then_add = grad_out if ctx.needs_input_grad[1] else None
        return (grad_h, grad_then_add, None, None, None, *grad_params)


def run_block(block, h: torch.Tensor, ops, rope, level: int, then_add: torch.Tensor | None = None):
    """One block application at a recomputation level (only matters where autograd records). With `then_add`:
    out + then_add, from the block's last norm where the block runs as it is or is re-run whole, added after a
    selective region."""
    if level == 0 or not torch.is_grad_enabled():
        return block(h, ops, rope, 0, then_add)
    plan = levels.block_plan(level, tuple(ops.implementations[op] for op in block.op_names))
    if plan == "ops":
        return block(h, ops, rope, level, then_add)
    if plan == "block":
        return BlockRecompute.apply(h, then_add, block, ops, rope, *block.parameters())
    for observe in _observers:
        observe(h)
    context = _observed_selective_contexts if _observers else _selective_contexts
    out = checkpoint(block, h, ops, rope, level, use_reentrant=False, context_fn=context)
    return out if then_add is None else out + then_add
