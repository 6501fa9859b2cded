"""Activation recomputation for the cycle that carries gradient (`model.recompute`), on either backend.

- level 0: every op saves what its backward needs.
- level 1: elementwise work is recomputed, matmul outputs are kept. On the Triton path the ops do it themselves
  (norms save only their output and rstd, RoPE and silu are recomputed inside the kernels, and SwiGLU re-runs its
  gate_up matmul instead of saving the 2I-wide gate/up); on the reference path, torch's selective activation
  checkpointing keeps matmul and attention outputs and recomputes the rest.
- level 2: each block saves only its input (BlockRecompute) and is re-run during backward, so the peak holds one
  block's internals, never a whole network call's.
Recomputation is deterministic, so gradients equal plain backprop at every level.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

_aten = torch.ops.aten
_KEEP = {
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention.default, _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}
for _name in ("_scaled_dot_product_flash_attention_for_cpu",):
    if hasattr(_aten, _name):
        _KEEP.add(getattr(_aten, _name).default)


KEPT_OPS = frozenset(_KEEP)  # what the reference path's level 1 keeps (read by trm_fast.memory's measurement)
selective_region = [False]  # true while a level-1 region runs, so a measurement can count what it keeps
region_input_observers: list = []  # measurement callbacks: the inputs a level-1 region holds for its replay


def _keep_matmuls(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _KEEP else CheckpointPolicy.PREFER_RECOMPUTE


class BlockRecompute(torch.autograd.Function):
    """Runs a block without recording and saves only its input (through ctx.save_for_backward, so saved-tensor
    hooks see it); backward re-runs the block with grad and backpropagates through that one block."""

    @staticmethod
    def forward(ctx, h, block, ops, rope, *params):
        ctx.block, ctx.ops, ctx.rope = block, ops, rope
        ctx.save_for_backward(h)
        with torch.no_grad():
            return block(h, ops, rope, recompute=False)

    @staticmethod
    def backward(ctx, grad_out):
        (h,) = ctx.saved_tensors
        params = [p for p in ctx.block.parameters()]
        with torch.enable_grad():
            h_again = h.detach().requires_grad_(h.requires_grad)
            out = ctx.block(h_again, ctx.ops, ctx.rope, recompute=False)
        inputs = ([h_again] if h.requires_grad else []) + [p for p in params if p.requires_grad]
        grads = iter(torch.autograd.grad(out, inputs, grad_out, allow_unused=True))
        grad_h = next(grads) if h.requires_grad else None
        grad_params = [next(grads) if p.requires_grad else None for p in params]
        return (grad_h, None, None, None, *grad_params)


def run_block(block, h: torch.Tensor, ops, rope, level: int) -> torch.Tensor:
    """One block application at a recomputation level (only matters where autograd records)."""
    if level == 0 or not torch.is_grad_enabled():
        return block(h, ops, rope, recompute=False)
    if level == 2:
        return BlockRecompute.apply(h, block, ops, rope, *block.parameters())
    if ops.name == "triton":  # the ops implement level 1 themselves
        return block(h, ops, rope, recompute=True)
    context = functools.partial(create_selective_checkpoint_contexts, _keep_matmuls)
    for observe in region_input_observers:
        observe(h)
    selective_region[0] = True
    try:
        return checkpoint(block, h, ops, rope, False, use_reentrant=False, context_fn=context)
    finally:
        selective_region[0] = False
