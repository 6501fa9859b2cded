"""Optimisers: AdamATan2 (the published optimiser), AdamW, the warm-up/cosine schedule and sparse sign-SGD for the
puzzle-embedding table.

AdamATan2 replaces Adam's m / (sqrt(v) + eps) by atan2(m, sqrt(v)), which is bounded and needs no epsilon. The rule
of the `adam-atan2` package the published code imports (0.0.3, a fused CUDA kernel):
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2          (both as lerps, fp32)
    p = p (1 - lr wd)                                        (decoupled weight decay, every parameter)
    p = p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))
Other implementations differ (see docs/checkpoints.md#optimiser): lucidrains' adam-atan2-pytorch computes
a * atan2(m / bc1, b * sqrt(v / bc2)) with a = 1.27, b = 1 and scales the decay by lr / initial lr.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """Moments and update math in fp32 (fp64 for fp64 parameters, as the closed-form tests use)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class AdamATan2(torch.optim.Optimizer):
    """The published AdamATan2 update, with moments in fp32 (at least) whatever the parameter dtype."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.0):
        if not (lr >= 0.0 and math.isfinite(lr)):
            raise ValueError(f"AdamATan2: lr must be a finite number >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamATan2: betas must lie in [0, 1), got {betas}")
        if not (weight_decay >= 0.0 and math.isfinite(weight_decay)):
            raise ValueError(f"AdamATan2: weight_decay must be a finite number >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    def _state_for(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            # the step count lives on the CPU (as in torch.optim.Adam without `capturable`): reading it costs no sync
            state["step"] = torch.zeros((), dtype=torch.float32)
            dtype = _math_dtype(p.dtype)
            state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # torch casts loaded state to each parameter's dtype; the moments stay at least fp32 here
        for p, state in self.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state and state[key].dtype != _math_dtype(p.dtype):
                    state[key] = state[key].to(_math_dtype(p.dtype))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            # parameters that have taken the same number of steps share their bias corrections: one foreach batch each
            by_step: dict[int, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self._state_for(p)
                state["step"] += 1
                by_step.setdefault(int(state["step"]), []).append((p, state))
            for t, items in by_step.items():
                self._update(items, lr, wd, beta1, beta2, t)
        return loss

    @staticmethod
    def _update(items, lr: float, wd: float, beta1: float, beta2: float, t: int) -> None:
        params = [p for p, _ in items]
        # fp32 working copies of bf16/fp16 parameters (master weights are fp32 in trm_fast: no copy there)
        work = [p if p.dtype == _math_dtype(p.dtype) else p.to(_math_dtype(p.dtype)) for p in params]
        grads = [p.grad.to(w.dtype) for p, w in zip(params, work)]
        exp_avgs = [s["exp_avg"] for _, s in items]
        exp_avg_sqs = [s["exp_avg_sq"] for _, s in items]
        bias1 = 1.0 - beta1 ** t
        bias2_sqrt = math.sqrt(1.0 - beta2 ** t)

        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads, grads), 1.0 - beta2)
        if wd != 0.0:
            torch._foreach_mul_(work, 1.0 - lr * wd)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias2_sqrt)
        # torch has no foreach atan2: one kernel per tensor, written into denom's storage
        for m, d in zip(exp_avgs, denom):
            torch.atan2(m, d, out=d)
        torch._foreach_add_(work, denom, alpha=-lr / bias1)
        for p, w in zip(params, work):
            if w is not p:
                p.copy_(w)


def mark_parameters_written(opt: torch.optim.Optimizer, *_) -> None:
    """Bumps the version counter of every parameter `opt` updates, as an in-place write does. A step post-hook of the
    dense optimiser: a fused optimiser kernel (AdamW(fused=True)) writes the parameters without moving their counters,
    and what is keyed on them (the Triton ops' cached weight casts) must see every step."""
    for group in opt.param_groups:
        for p in group["params"]:
            torch.autograd.graph.increment_version(p)


def build_dense_optimizer(train_cfg, params) -> torch.optim.Optimizer:
    """AdamATan2 (published) or AdamW (the paper's text), with the config's lr, betas and weight decay; every step
    marks the parameters written (mark_parameters_written)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("build_dense_optimizer: no trainable parameters")
    betas = (train_cfg.beta1, train_cfg.beta2)
    if train_cfg.optimizer == "adam_atan2":
        opt = AdamATan2(params, lr=train_cfg.lr, betas=betas, weight_decay=train_cfg.weight_decay)
    elif train_cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=train_cfg.lr, betas=betas, weight_decay=train_cfg.weight_decay)
    else:
        raise ValueError(f"config field train.optimizer = {train_cfg.optimizer!r} is invalid: must be 'adam_atan2' or 'adamw'")
    opt.register_step_post_hook(mark_parameters_written)
    return opt


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 1.0) -> float:
    """Learning rate at optimizer step `step`, the published cosine_schedule_with_warmup_lr_lambda (half a cosine):
    base_lr * step / warmup_steps during warm-up, then cosine from base_lr down to base_lr * min_ratio at
    total_steps (past total_steps the cosine rises again, as the published formula does). min_ratio 1.0 (the published runs) keeps it constant after warm-up. The
    published loop increments its step counter before asking, so its first update uses step 1."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + max(0.0, (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


class SparseSignSGD:
    """Sign-SGD on the rows of the puzzle-embedding table present in the batch (the published
    CastedSparseEmbeddingSignSGD_Distributed rule).

    Every (ids, rows) pair the embedding recorded since the last step (one per forward: micro-batches of gradient
    accumulation each add one) is collected; the gradients of the same id are summed over all of them and, when
    torch.distributed is initialised, over every rank (all-gather of ids and gradients). Then, for each distinct id,
        w[id] = w[id] * (1 - lr * wd) - lr * sign(sum of its gradients)
    and no other row is touched (no decay either). Shapes are fixed by the batch and nothing is read back to the
    host (no unique(), no .item()): the step can be captured in a CUDA graph. Sums are taken in fp64, so another
    summation order (another rank count or micro-batch split) moves a sum by far less than fp32 rounding.
    """

    def __init__(self, embedding, lr: float, weight_decay: float):
        if embedding is None or not hasattr(embedding, "pending") or not hasattr(embedding, "weight"):
            raise ValueError("SparseSignSGD needs a puzzle-embedding module with a `weight` table and a `pending` list")
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"SparseSignSGD: lr and weight_decay must be >= 0, got lr={lr}, weight_decay={weight_decay}")
        self.embedding = embedding
        self.lr = lr
        self.weight_decay = weight_decay

    def _collect(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """All (ids, gradients) since the last step, of every rank, on the table's device."""
        ids, grads = [], []
        for batch_ids, rows in self.embedding.pending:
            n = batch_ids.numel()
            # a forward without backward still names its rows: zero gradient (the row decays, as in the published
            # code) and, more importantly, every rank contributes tensors of the same shape to the collectives
            grad = rows.grad if rows.grad is not None else torch.zeros_like(rows)
            ids.append(batch_ids.reshape(n).to(device=rows.device, dtype=torch.int64))
            grads.append(grad.reshape(n, -1).to(torch.float32))
        if not ids:
            return None
        ids, grads = torch.cat(ids), torch.cat(grads)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # on the compute device (NCCL needs CUDA tensors), even when the table lives in host memory
            ids, grads = _all_gather_rows(ids), _all_gather_rows(grads)
        device = self.embedding.weight.device
        return ids.to(device), grads.to(device)

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        collected = self._collect()
        self.embedding.pending.clear()
        if collected is None:
            return
        ids, grads = collected
        sign_sgd_rows_(self.embedding.weight, ids, grads, lr, self.weight_decay)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.embedding.pending.clear()

    def state_dict(self) -> dict:
        # the table itself is a model buffer (saved with the model); sign-SGD keeps no moments
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def load_state_dict(self, state: dict) -> None:
        self.lr = float(state.get("lr", self.lr))
        self.weight_decay = float(state.get("weight_decay", self.weight_decay))


@torch.no_grad()
def sign_sgd_rows_(weight: torch.Tensor, ids: torch.Tensor, grads: torch.Tensor, lr: float | torch.Tensor,
                   weight_decay: float) -> None:
    """In place on `weight`: for each distinct id of `ids` (N,), w[id] = w[id] * (1 - lr * wd) - lr * sign(sum of the
    rows of `grads` (N, D) with that id); other rows untouched. Equal ids are grouped without a data-dependent shape
    (sort, mark the first of each run, number the runs by a cumulative sum, fp64 segment sums into an N-row buffer),
    so nothing is read back to the host and the update can be captured in a CUDA graph; `lr` may be a 0-d tensor."""
    ids = ids.reshape(-1).to(device=weight.device, dtype=torch.int64)
    grads = grads.reshape(ids.numel(), -1).to(weight.device)
    sorted_ids, order = torch.sort(ids, stable=True)
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    group = torch.cumsum(first, 0) - 1
    sums = torch.zeros(ids.numel(), grads.shape[1], dtype=torch.float64, device=weight.device)
    sums.index_add_(0, group, grads.index_select(0, order).double())
    direction = torch.sign(sums).index_select(0, group).float()  # each position: the sign of its id's total
    rows = weight.index_select(0, sorted_ids).float()
    rows.mul_(1.0 - lr * weight_decay).sub_(direction * lr)
    # positions of the same id carry identical rows, so the duplicate writes agree
    weight.index_copy_(0, sorted_ids, rows.to(weight.dtype))


def _all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenation over ranks (rank order) of a tensor of the same shape on every rank."""
    world = dist.get_world_size()
    t = t.contiguous()
    if dist.get_backend() == "nccl":
        out = torch.empty((world * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        dist.all_gather_into_tensor(out, t)
        return out
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t)
    return torch.cat(parts)
