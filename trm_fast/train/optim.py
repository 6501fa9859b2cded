"""Optimisers: AdamATan2 (the published optimiser), AdamW, the warm-up/cosine schedule and sparse sign-SGD for the
puzzle-embedding table.

AdamATan2 replaces Adam's m / (sqrt(v) + eps) by atan2(m, sqrt(v)), which is bounded and needs no epsilon:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p = p (1 - lr wd)                                   (decoupled weight decay, every parameter)
    p = p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))
"""
from __future__ import annotations

import math

import torch


class AdamATan2(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamATan2: invalid lr={lr}, betas={betas} or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            params, grads, exp_avgs, exp_avg_sqs = [], [], [], []
            step = None
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"].item()) if step is None else step
                params.append(p)
                grads.append(p.grad.to(p.dtype))
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            if not params:
                continue
            bias1 = 1 - beta1 ** step
            bias2_sqrt = math.sqrt(1 - beta2 ** step)
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, bias2_sqrt)
            for p, m, d in zip(params, exp_avgs, denom):
                p.add_(torch.atan2(m, d), alpha=-lr / bias1)
        return loss


def build_dense_optimizer(train_cfg, params) -> torch.optim.Optimizer:
    """AdamATan2 (published) or AdamW (the paper's text), with the config's betas and weight decay."""
    params = list(params)
    betas = (train_cfg.beta1, train_cfg.beta2)
    if train_cfg.optimizer == "adam_atan2":
        return AdamATan2(params, lr=train_cfg.lr, betas=betas, weight_decay=train_cfg.weight_decay)
    return torch.optim.AdamW(params, lr=train_cfg.lr, betas=betas, weight_decay=train_cfg.weight_decay)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 1.0) -> float:
    """Linear warm-up from 0 over `warmup_steps`, then cosine from base_lr to base_lr * min_ratio at total_steps
    (min_ratio 1.0, the published setting, keeps it constant)."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


class SparseSignSGD:
    """Sign-SGD on the rows of the puzzle-embedding table present in the batch.

    Gradients of the same puzzle id are summed over the batch (over gradient-accumulation micro-batches and, when
    torch.distributed is initialised, over ranks), then w[id] = w[id] * (1 - lr * wd) - lr * sign(sum). Rows not in
    the batch are not touched, their decay included."""

    def __init__(self, embedding, lr: float, weight_decay: float):
        self.embedding = embedding
        self.lr = lr
        self.weight_decay = weight_decay

    def _collect(self) -> tuple[torch.Tensor, torch.Tensor]:
        ids, grads = [], []
        for batch_ids, rows in self.embedding.pending:
            if rows.grad is None:
                continue
            ids.append(batch_ids.reshape(-1).to(torch.int64))
            grads.append(rows.grad.reshape(len(batch_ids), -1).float())
        weight = self.embedding.weight
        if not ids:
            return torch.empty(0, dtype=torch.int64, device=weight.device), torch.empty(0, weight.shape[1], device=weight.device)
        ids, grads = torch.cat(ids), torch.cat(grads)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            all_ids = [torch.empty_like(ids) for _ in range(world)]
            all_grads = [torch.empty_like(grads) for _ in range(world)]
            torch.distributed.all_gather(all_ids, ids)
            torch.distributed.all_gather(all_grads, grads)
            ids, grads = torch.cat(all_ids), torch.cat(all_grads)
        return ids.to(weight.device), grads.to(weight.device)

    @torch.no_grad()
    def step(self, lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        ids, grads = self._collect()
        self.embedding.pending.clear()
        if ids.numel() == 0:
            return
        weight = self.embedding.weight
        unique, inverse = torch.unique(ids, return_inverse=True)
        summed = torch.zeros(len(unique), weight.shape[1], dtype=torch.float32, device=weight.device)
        summed.index_add_(0, inverse, grads)
        rows = weight.index_select(0, unique).float()
        rows.mul_(1.0 - lr * self.weight_decay).add_(torch.sign(summed), alpha=-lr)
        weight.index_copy_(0, unique, rows.to(weight.dtype))

    def zero_grad(self) -> None:
        self.embedding.pending.clear()

    def state_dict(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def load_state_dict(self, state: dict) -> None:
        self.lr = state.get("lr", self.lr)
        self.weight_decay = state.get("weight_decay", self.weight_decay)
