"""Data-parallel training on torch.distributed: `torchrun --nproc-per-node N -m trm_fast train ...`.

- NCCL on GPU, gloo on CPU; the usual torchrun rendezvous (also multi-node).
- Dense weights in DistributedDataParallel. Each rank scales its loss by world_size / global_batch, so DDP's
  averaging yields exactly the single-process gradient of the global batch.
- Rank r owns slots [r*B/W, (r+1)*B/W) of the global batch: the sampler hands it those rows, and halting and
  exploration draws are keyed by the global slot index, so a run on W processes follows the one-process run.
- The sparse puzzle-embedding update all-gathers ids and gradients (trm_fast.train.optim.SparseSignSGD).
- Checkpoints hold the carry of the whole global batch (gathered on rank 0, written by rank 0); a resume hands
  every rank its slice, so the world size may even change between runs.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from trm_fast.train.act import SupervisionState


def init_distributed() -> bool:
    """Initialises the process group when launched by torchrun (WORLD_SIZE > 1). Returns whether it is active."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP over the dense weights. Buffers are not broadcast: the puzzle table is updated identically on every
    rank by the all-gathered sparse step, and the initial states never change."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def all_reduce_sums(values: dict, device) -> dict:
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def _gather_rows(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def gather_train_state(trainer) -> dict | None:
    """The full training state with the carry of every rank's slots (on rank 0; None elsewhere)."""
    state = trainer.state
    full = SupervisionState(tuple(_gather_rows(t) for t in state.carry), _gather_rows(state.steps),
                            _gather_rows(state.halted), _gather_rows(state.inputs), _gather_rows(state.labels),
                            _gather_rows(state.puzzle_ids))
    if trainer.rank != 0:
        return None
    saved, trainer.state = trainer.state, full
    try:
        return trainer.train_state()
    finally:
        trainer.state = saved


def scatter_supervision_state(trainer, full: dict) -> SupervisionState:
    """This rank's slice of a checkpoint's global carry."""
    start, stop = trainer.rank * trainer.local_batch, (trainer.rank + 1) * trainer.local_batch
    return SupervisionState.from_state_dict(full, trainer.device).slice(start, stop)
