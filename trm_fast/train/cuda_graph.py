"""The whole fixed-shape training step as one CUDA graph (`train.cuda_graphs=True`).

One optimizer step of the carry scheme (every micro-batch's supervision step, its backward, the dense optimiser,
the sparse puzzle-embedding update and the EMA) has fixed shapes, so it can be captured once and replayed: one
launch instead of thousands. What a replay must not contain, and how this module avoids it:
- host reads (.item(), data-dependent shapes): the model skips its input-range checks while the stream captures,
  the sparse update groups equal ids by sort + segment sum into a batch-sized buffer
  (trm_fast.train.optim.sign_sgd_rows_, what SparseSignSGD.step runs, with the rate as a device tensor);
- Python numbers that change from step to step: the step index (halting exploration draws), the learning rates
  and the optimiser's bias corrections live in device tensors written before each replay (`fill_`, no sync);
- fresh inputs: the batch and the training carry live in static buffers; the graph reads them and writes the
  next carry back into them.
The first `warmup_steps` optimizer steps run the same tensor-parameterised step eagerly on a side stream (they
compile Triton kernels and create the optimiser states); capture follows. Where capture is impossible (not CUDA,
several processes, the per-batch scheme, the puzzle table on the host) or fails, one line says so and the
trainer's eager step runs instead.

The step sees only what it needs of the trainer: a CarryStepParts (fixed for the run, built by
Trainer.carry_step_parts) and, with every call, the batch, the training carry, the step index and the sparse rate.
The trainer's hook (trm_fast/train/trainer.py):
    self.graphed_step = make_graphed_step(self.carry_step_parts())                  # in __init__, with cuda_graphs
    if self.graphed_step is not None and self.graphed_step.active:                  # first lines of carry_step
        graphed = self.graphed_step(batch, self.state, self.step, self.sparse_lr)   # None: capture failed
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from trm_fast.config import TrainConfig
from trm_fast.train.act import SupervisionState, supervision_step
from trm_fast.train.optim import mark_parameters_written

_MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------- dense update


def _optimizer_kind(opt) -> str | None:
    from trm_fast.train.optim import AdamATan2

    if isinstance(opt, AdamATan2):
        return "adam_atan2"
    if type(opt) is torch.optim.AdamW:
        g = opt.param_groups[0]
        if g.get("amsgrad") or g.get("maximize"):
            return None
        return "adamw"
    return None


def _ensure_state(opt, kind: str, p: torch.Tensor) -> dict:
    """The optimiser's own state of p, created as its eager step would (moments beside p, step count on the host)."""
    if kind == "adam_atan2":
        return opt._state_for(p)
    state = opt.state[p]
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


@torch.no_grad()
def tensor_dense_step_(opt, kind: str, lr: torch.Tensor, step: torch.Tensor) -> None:
    """One step of AdamATan2 or AdamW with the learning rate and the (already incremented) step count as 0-d fp64
    device tensors, on the optimiser's own state tensors. Host-side step counters are the caller's business."""
    for group in opt.param_groups:
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        bias1 = 1.0 - torch.pow(beta1, step)
        bias2_sqrt = torch.sqrt(1.0 - torch.pow(beta2, step))
        step_size = lr / bias1
        for p in group["params"]:
            if p.grad is None:
                continue
            state = _ensure_state(opt, kind, p)
            m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad.to(state["exp_avg"].dtype)
            if kind == "adam_atan2":
                m.lerp_(g, 1.0 - beta1)
                v.lerp_(g * g, 1.0 - beta2)
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                p.sub_(torch.atan2(m, v.sqrt() / bias2_sqrt) * step_size)
            else:  # torch.optim.AdamW's rule
                p.mul_(1.0 - lr * wd)
                m.lerp_(g, 1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                p.sub_(m / (v.sqrt() / bias2_sqrt + group["eps"]) * step_size)


# ---------------------------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class CarryStepParts:
    """What the carry scheme's optimizer step works with, fixed for the whole run. The dense learning rate is read
    from the optimiser's first param group, where the trainer's schedule writes it before every step."""

    train: TrainConfig  # seed, loss, supervision scheme, where the puzzle table lives
    device: torch.device
    distributed: bool
    model: torch.nn.Module  # the bare model, for its puzzle_emb
    forward_model: torch.nn.Module  # what runs the step: the model, or the model under torch.compile
    dense_opt: torch.optim.Optimizer
    sparse_opt: object | None  # trm_fast.train.optim.SparseSignSGD
    ema: object | None  # trm_fast.train.ema.EMA
    local_batch: int  # this rank's slots
    micro_batch: int
    loss_scale: float  # multiplies the summed loss: world_size / global batch
    slot_index: torch.Tensor  # (local_batch,) global slot index of every slot (keys the halting draws)
    log: Callable[[str], None]


def capture_blocker(parts: CarryStepParts) -> str | None:
    """Why the step cannot be captured, or None."""
    t = parts.train
    if parts.device.type != "cuda":
        return f"the device is {parts.device.type}, CUDA graphs need CUDA"
    if t.supervision != "carry":
        return "train.supervision=per_batch stops early on data-dependent halting"
    if parts.distributed:
        return "the collectives of a multi-process run are not captured"
    if t.puzzle_emb_device == "cpu":
        return "the puzzle table on the host is read and written by the CPU every step"
    if _optimizer_kind(parts.dense_opt) is None:
        return f"no graph-safe form of the optimiser {type(parts.dense_opt).__name__}"
    return None


def make_graphed_step(parts: CarryStepParts, warmup_steps: int = 2):
    """A GraphedCarryStep, or None (after one line saying why) where capture is impossible."""
    reason = capture_blocker(parts)
    if reason is not None:
        parts.log(f"cuda_graphs: {reason}; running the step eagerly")
        return None
    return GraphedCarryStep(parts, warmup_steps)


class GraphedCarryStep:
    """The trainer's carry_step as a replayable CUDA graph. `capture=False` runs the same tensor-parameterised step
    eagerly every time (what tests check on a CPU against the trainer's eager step)."""

    def __init__(self, parts: CarryStepParts, warmup_steps: int = 2, capture: bool = True):
        self.parts = parts
        self.kind = _optimizer_kind(parts.dense_opt)
        if self.kind is None:
            raise ValueError(f"GraphedCarryStep: no graph-safe form of the optimiser {type(parts.dense_opt).__name__}")
        self.warmup_steps = warmup_steps
        self.capture = capture
        self.active = True
        self.graph = None
        device = parts.device
        self.step_index = torch.zeros((), dtype=torch.int64, device=device)  # halting-exploration draws
        self.seed = torch.tensor(parts.train.seed & _MASK32, dtype=torch.int64, device=device)
        self.lr = torch.zeros((), dtype=torch.float64, device=device)
        self.sparse_lr = torch.zeros((), dtype=torch.float64, device=device)
        self.opt_step = torch.zeros((), dtype=torch.float64, device=device)
        self.batch: dict[str, torch.Tensor] | None = None
        self.state: SupervisionState | None = None
        self.metrics: dict | None = None
        self.calls = 0

    # -- static buffers ------------------------------------------------------------------------------
    def _load(self, batch: dict, state: SupervisionState, step: int, sparse_lr: float) -> None:
        parts = self.parts
        if self.batch is None:
            self.batch = {k: v.clone() for k, v in batch.items()}
        else:
            if batch.keys() != self.batch.keys():
                raise ValueError(f"cuda_graphs: the batch keys changed from {sorted(self.batch)} to {sorted(batch)}")
            for k, v in batch.items():
                if v.shape != self.batch[k].shape or v.dtype != self.batch[k].dtype:
                    raise ValueError(f"cuda_graphs: batch[{k!r}] is {tuple(v.shape)} {v.dtype}, the captured step "
                                     f"expects {tuple(self.batch[k].shape)} {self.batch[k].dtype}")
                self.batch[k].copy_(v, non_blocking=True)
        if self.state is None:
            self.state = SupervisionState.from_state_dict(
                {k: ([t.clone() for t in v] if k == "carry" else v.clone()) for k, v in state.state_dict().items()},
                parts.device)
        elif state is not self.state:  # replaced from outside (a resume): copy it into the static buffers
            _copy_state_(self.state, state, 0, parts.local_batch)
        opt_steps = {float(s["step"]) for s in parts.dense_opt.state.values() if "step" in s}
        if len(opt_steps) > 1:
            raise ValueError(f"cuda_graphs: the dense optimiser's parameters are at different steps {sorted(opt_steps)}")
        self.step_index.fill_(step)
        self.lr.fill_(parts.dense_opt.param_groups[0]["lr"])
        self.sparse_lr.fill_(sparse_lr)
        self.opt_step.fill_((opt_steps.pop() if opt_steps else 0.0) + 1.0)

    def _advance_host_counters(self) -> None:
        """The optimiser's host step counters follow the device ones, so checkpoints and an eager fallback agree."""
        opt = self.parts.dense_opt
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None or p in opt.state:
                    _ensure_state(opt, self.kind, p)["step"] += 1

    # -- the step body (eager or captured) -------------------------------------------------------------
    def _body(self) -> dict:
        parts = self.parts
        metrics: dict = {}
        for start in range(0, parts.local_batch, parts.micro_batch):
            stop = start + parts.micro_batch
            micro = {k: v[start:stop] for k, v in self.batch.items()}
            result = supervision_step(
                parts.forward_model, self.state.slice(start, stop), micro, step=self.step_index, seed=self.seed,
                slot_index=parts.slot_index[start:stop], training=True, loss_kind=parts.train.loss,
            )
            (result.loss.total * parts.loss_scale).backward()
            _copy_state_(self.state, result.state, start, stop)
            for key, value in {**result.metrics, "lm_loss": result.loss.lm, "halt_loss": result.loss.halt}.items():
                value = value.detach().double()
                metrics[key] = metrics[key] + value if key in metrics else value
        tensor_dense_step_(parts.dense_opt, self.kind, self.lr, self.opt_step)
        if parts.sparse_opt is not None:  # its update has fixed shapes and reads nothing back (sign_sgd_rows_)
            parts.sparse_opt.step(self.sparse_lr)
        if parts.ema is not None:
            parts.ema.update()
        return metrics

    def _zero_grads(self) -> None:
        for group in self.parts.dense_opt.param_groups:
            for p in group["params"]:
                p.grad = None

    def _eager(self) -> dict:
        self._zero_grads()
        if self.parts.device.type == "cuda":  # warm-up on a side stream, as capture wants
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                metrics = self._body()
            torch.cuda.current_stream().wait_stream(side)
        else:
            metrics = self._body()
        self._zero_grads()
        return metrics

    def __call__(self, batch: dict, state: SupervisionState, step: int,
                 sparse_lr: float) -> tuple[dict, SupervisionState] | None:
        """One optimizer step from the training carry `state` at optimizer step `step` (the halting draws' key):
        (metrics, the next carry: the static buffers), or None when capture failed (self.active is now False:
        the caller runs its eager step)."""
        self._load(batch, state, step, sparse_lr)
        self.calls += 1
        if not self.capture or self.calls <= self.warmup_steps:
            metrics = self._eager()
            self._advance_host_counters()
        else:
            if self.graph is None and not self._capture():
                return None
            self.graph.replay()
            mark_parameters_written(self.parts.dense_opt)  # the replay wrote them without Python seeing it
            self._advance_host_counters()
            metrics = {k: v.clone() for k, v in self.metrics.items()}
        metrics["loss_rows"] = float(self.parts.local_batch)
        return metrics, self.state

    def _capture(self) -> bool:
        emb = getattr(self.parts.model, "puzzle_emb", None)
        self._zero_grads()  # gradients are then allocated inside the graph's pool, at fixed addresses
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                self.metrics = self._body()
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
            self.active = False
            self._zero_grads()
            if emb is not None:
                emb.pending.clear()
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.parts.log(f"cuda_graphs: capture failed ({type(exc).__name__}: {first_line[:200]}); running the step eagerly")
            return False
        self.graph = graph
        return True


def _copy_state_(into: SupervisionState, source: SupervisionState, start: int, stop: int) -> None:
    """Writes `source` (the slots start:stop, or all of them) into the static state buffers."""
    for dst, src in zip(into.carry, source.carry):
        dst[start:stop].copy_(src)
    for name in ("steps", "halted", "inputs", "labels", "puzzle_ids"):
        getattr(into, name)[start:stop].copy_(getattr(source, name))
