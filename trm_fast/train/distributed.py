"""Data-parallel training on torch.distributed: `torchrun --nproc-per-node N -m trm_fast train ...` (docs/distributed.md).

- NCCL when the run's device is CUDA, gloo on CPU; the usual torchrun rendezvous (multi-node too).
- Dense weights in DistributedDataParallel. Each rank scales its summed loss by world_size / global_batch, so DDP's
  mean over ranks is exactly the single-process gradient of the global batch.
- Rank r owns slots [r*B/W, (r+1)*B/W) of the global batch: the sampler hands it those rows, and halting and
  exploration draws are keyed by the global slot index, so W processes follow the one-process run.
- The sparse puzzle-embedding update all-gathers ids and gradients (trm_fast.train.optim.SparseSignSGD), so every
  rank applies the same update to its copy of the table.
- Checkpoints hold the carry of the whole global batch (gathered on rank 0, written by rank 0); a resume hands every
  rank its slice, so the world size may change between runs (same global batch).
"""
from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from trm_fast.train.act import SupervisionState


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> bool:
    """Initialises the process group when launched by torchrun (WORLD_SIZE > 1); returns whether it is active.
    `device` is the config's train.device: NCCL (one GPU per local rank) when it resolves to CUDA, gloo otherwise."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"config field train.device = {device!r}, but no CUDA device is available")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible: "
                               "use --nproc-per-node <= the number of GPUs")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (e.g. building an embedded dataset into a shared cache), the others after it:
    no two processes write the same files."""
    if not is_distributed():
        yield
        return
    if dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if dist.get_rank() == 0:
            dist.barrier()


def broadcast_object(obj):
    """Rank 0's value of `obj` on every rank (e.g. which checkpoint `--resume auto` picked)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP over the dense weights. Buffers are not broadcast: the puzzle table is updated identically on every
    rank by the all-gathered sparse step, and the initial states never change."""
    from torch.nn.parallel import DistributedDataParallel

    if getattr(model, "puzzle_emb", None) is not None:
        # kept out of DDP's start-up broadcast: identical zeros on every rank, and with train.puzzle_emb_device=cpu a
        # host tensor that an NCCL broadcast cannot take (a 2 GB copy for ARC-1 otherwise)
        names = [f"puzzle_emb.{name}" for name, _ in model.puzzle_emb.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def sync_gradients(model: torch.nn.Module, now: bool):
    """Context for one micro-batch's forward and backward under gradient accumulation: DDP all-reduces the
    gradients only with the last micro-batch (`now`); a plain module needs nothing."""
    if now or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def all_reduce_sums(values: dict, device) -> dict:
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def _gather_to_rank0(t: torch.Tensor) -> torch.Tensor | None:
    """Concatenation over ranks on rank 0 (None elsewhere); only rank 0 holds the whole global batch."""
    t = t.contiguous()
    if dist.get_rank() == 0:
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.gather(t, parts, dst=0)
        return torch.cat(parts)
    dist.gather(t, None, dst=0)
    return None


def gather_train_state(state: SupervisionState, train_state: Callable[[SupervisionState], dict]) -> dict | None:
    """The full training state, `train_state(carry of every rank's slots)`, with every rank's RNG state added (on
    rank 0; None elsewhere). A collective: every rank calls it."""
    from trm_fast.checkpoint import capture_rng_state

    gathered = [_gather_to_rank0(t) for t in (*state.carry, state.steps, state.halted, state.inputs, state.labels,
                                              state.puzzle_ids)]
    rng_states = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(capture_rng_state(), rng_states, dst=0)
    if dist.get_rank() != 0:
        return None
    n_carry = len(state.carry)
    result = train_state(SupervisionState(tuple(gathered[:n_carry]), *gathered[n_carry:]))
    result["rng_per_rank"] = rng_states
    result["world_size"] = dist.get_world_size()
    return result


def scatter_supervision_state(full: dict, rank: int, world_size: int, local_batch: int, device) -> SupervisionState:
    """This rank's slice of a checkpoint's global carry."""
    rows = full["steps"].shape[0]
    if rows != local_batch * world_size:
        raise ValueError(f"the checkpoint's training carry has {rows} slots, this run's global batch is "
                         f"{local_batch * world_size}: resume with the same data.global_batch_size")
    return SupervisionState.from_state_dict(full, device).slice(rank * local_batch, (rank + 1) * local_batch)


def rng_state_for_rank(state: dict, rank_: int, world_size: int) -> dict:
    """The RNG state this rank restores: its own when the world size is unchanged, else rank 0's."""
    per_rank = state.get("rng_per_rank")
    if per_rank and state.get("world_size") == world_size and rank_ < len(per_rank):
        return per_rank[rank_]
    return state["rng"]
