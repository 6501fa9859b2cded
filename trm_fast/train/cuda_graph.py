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

The trainer's hook (trm_fast/train/trainer.py):
    self.graphed_step = make_graphed_step(self) if cfg_t.cuda_graphs else None      # in __init__
    if self.graphed_step is not None and self.graphed_step.active:                  # first lines of carry_step
        return self.graphed_step(batch)
"""
from __future__ import annotations

import torch

from trm_fast.train.act import SupervisionState, supervision_step

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


def capture_blocker(trainer) -> str | None:
    """Why the trainer's step cannot be captured, or None."""
    t = trainer.config.train
    if trainer.device.type != "cuda":
        return f"the device is {trainer.device.type}, CUDA graphs need CUDA"
    if t.supervision != "carry":
        return "train.supervision=per_batch stops early on data-dependent halting"
    if trainer.distributed:
        return "the collectives of a multi-process run are not captured"
    if t.puzzle_emb_device == "cpu":
        return "the puzzle table on the host is read and written by the CPU every step"
    if _optimizer_kind(trainer.dense_opt) is None:
        return f"no graph-safe form of the optimiser {type(trainer.dense_opt).__name__}"
    return None


def make_graphed_step(trainer, warmup_steps: int = 2):
    """A GraphedCarryStep for the trainer, or None (after one line saying why) where capture is impossible."""
    reason = capture_blocker(trainer)
    if reason is not None:
        trainer.log(f"cuda_graphs: {reason}; running the step eagerly")
        return None
    return GraphedCarryStep(trainer, warmup_steps)


class GraphedCarryStep:
    """trainer.carry_step as a replayable CUDA graph. `capture=False` runs the same tensor-parameterised step
    eagerly every time (what tests check on a CPU against the trainer's eager step)."""

    def __init__(self, trainer, warmup_steps: int = 2, capture: bool = True):
        self.trainer = trainer
        self.kind = _optimizer_kind(trainer.dense_opt)
        if self.kind is None:
            raise ValueError(f"GraphedCarryStep: no graph-safe form of the optimiser {type(trainer.dense_opt).__name__}")
        self.warmup_steps = warmup_steps
        self.capture = capture
        self.active = True
        self.graph = None
        device = trainer.device
        self.step_index = torch.zeros((), dtype=torch.int64, device=device)  # halting-exploration draws
        self.seed = torch.tensor(trainer.config.train.seed & _MASK32, dtype=torch.int64, device=device)
        self.lr = torch.zeros((), dtype=torch.float64, device=device)
        self.sparse_lr = torch.zeros((), dtype=torch.float64, device=device)
        self.opt_step = torch.zeros((), dtype=torch.float64, device=device)
        self.batch: dict[str, torch.Tensor] | None = None
        self.state: SupervisionState | None = None
        self.metrics: dict | None = None
        self.calls = 0

    # -- static buffers ------------------------------------------------------------------------------
    def _load(self, batch: dict) -> None:
        tr = self.trainer
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
                {k: ([t.clone() for t in v] if k == "carry" else v.clone()) for k, v in tr.state.state_dict().items()},
                tr.device)
        elif tr.state is not self.state:  # replaced from outside (a resume): copy it into the static buffers
            _copy_state_(self.state, tr.state, 0, tr.local_batch)
        tr.state = self.state
        opt_steps = {float(s["step"]) for s in tr.dense_opt.state.values() if "step" in s}
        if len(opt_steps) > 1:
            raise ValueError(f"cuda_graphs: the dense optimiser's parameters are at different steps {sorted(opt_steps)}")
        self.step_index.fill_(tr.step)
        self.lr.fill_(tr.dense_opt.param_groups[0]["lr"])
        self.sparse_lr.fill_(getattr(tr, "sparse_lr", 0.0))
        self.opt_step.fill_((opt_steps.pop() if opt_steps else 0.0) + 1.0)

    def _advance_host_counters(self) -> None:
        """The optimiser's host step counters follow the device ones, so checkpoints and an eager fallback agree."""
        opt = self.trainer.dense_opt
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None or p in opt.state:
                    _ensure_state(opt, self.kind, p)["step"] += 1

    # -- the step body (eager or captured) -------------------------------------------------------------
    def _body(self) -> dict:
        tr = self.trainer
        t = tr.config.train
        metrics: dict = {}
        for start in range(0, tr.local_batch, tr.micro_batch):
            stop = start + tr.micro_batch
            micro = {k: v[start:stop] for k, v in self.batch.items()}
            result = supervision_step(
                tr.forward_model, self.state.slice(start, stop), micro, step=self.step_index, seed=self.seed,
                slot_index=tr.slot_index[start:stop], training=True, loss_kind=t.loss,
            )
            (result.loss.total * tr.loss_scale).backward()
            _copy_state_(self.state, result.state, start, stop)
            for key, value in {**result.metrics, "lm_loss": result.loss.lm, "halt_loss": result.loss.halt}.items():
                value = value.detach().double()
                metrics[key] = metrics[key] + value if key in metrics else value
        tensor_dense_step_(tr.dense_opt, self.kind, self.lr, self.opt_step)
        if tr.sparse_opt is not None:  # its update has fixed shapes and reads nothing back (sign_sgd_rows_)
            tr.sparse_opt.step(self.sparse_lr)
        if tr.ema is not None:
            tr.ema.update()
        return metrics

    def _zero_grads(self) -> None:
        for group in self.trainer.dense_opt.param_groups:
            for p in group["params"]:
                p.grad = None

    def _eager(self) -> dict:
        self._zero_grads()
        if self.trainer.device.type == "cuda":  # warm-up on a side stream, as capture wants
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                metrics = self._body()
            torch.cuda.current_stream().wait_stream(side)
        else:
            metrics = self._body()
        self._zero_grads()
        return metrics

    def __call__(self, batch: dict) -> dict:
        self._load(batch)
        self.calls += 1
        if not self.capture or self.calls <= self.warmup_steps:
            metrics = self._eager()
            self._advance_host_counters()
        else:
            if self.graph is None and not self._capture():
                return self.trainer.carry_step(batch)  # self.active is now False: the trainer's eager step
            self.graph.replay()
            self._advance_host_counters()
            metrics = {k: v.clone() for k, v in self.metrics.items()}
        metrics["loss_rows"] = float(self.trainer.local_batch)
        return metrics

    def _capture(self) -> bool:
        tr = self.trainer
        emb = getattr(tr.model, "puzzle_emb", None)
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
            tr.log(f"cuda_graphs: capture failed ({type(exc).__name__}: {first_line[:200]}); running the step eagerly")
            return False
        self.graph = graph
        return True


def _copy_state_(into: SupervisionState, source: SupervisionState, start: int, stop: int) -> None:
    """Writes `source` (the slots start:stop, or all of them) into the static state buffers."""
    for dst, src in zip(into.carry, source.carry):
        dst[start:stop].copy_(src)
    for name in ("steps", "halted", "inputs", "labels", "puzzle_ids"):
        getattr(into, name)[start:stop].copy_(getattr(source, name))
