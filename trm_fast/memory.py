"""Memory of a training step: measured (bytes saved for backward, counted with saved-tensor hooks) and modelled
(`estimate`), and a planner that picks the recomputation level and micro-batch that fit a budget.

    trm_fast.memory.saved_bytes_per_step(model, batch_size)       # measured, needs no GPU
    trm_fast.memory.estimate(config, batch_size)                  # predicted, per level
    trm-fast train --preset sudoku-mlp --memory-budget 4GB        # plan_for_budget
"""
from __future__ import annotations

import copy
import re

import torch

from trm_fast.config import ModelConfig, TRMConfig


def _dtype_bytes(config: ModelConfig, device: str) -> int:
    name = config.forward_dtype
    if name == "auto":
        return 2 if device.startswith("cuda") else 4
    return {"bfloat16": 2, "float16": 2, "float32": 4}[name]


def saved_bytes_per_step(model, batch_size: int, device: str | torch.device = "cpu", step_fn=None) -> int:
    """Bytes saved for backward by one supervision step's forward (each storage counted once; parameters and
    buffers excluded). `step_fn(model, carry, inputs, ids)` may replace the plain call (e.g. a compiled model)."""
    device = torch.device(device)
    config = model.config
    excluded = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in excluded and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    from torch.utils._python_dispatch import TorchDispatchMode

    from trm_fast.model import recompute

    class KeptBySelectiveCheckpoint(TorchDispatchMode):
        """Torch's selective checkpointing keeps its outputs in its own cache, out of the hooks' sight."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if recompute.selective_region[0] and torch.is_grad_enabled() and func in recompute.KEPT_OPS:
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor):
                        pack(t)
            return out

    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, config.vocab_size, (batch_size, config.seq_len), generator=g).to(device)
    ids = torch.zeros(batch_size, dtype=torch.long, device=device)
    carry = model.initial_carry(batch_size, device)
    was_training = model.training
    model.train()
    recompute.region_input_observers.append(pack)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), KeptBySelectiveCheckpoint():
            out = (step_fn or (lambda m, c, i, p: m(c, i, p)))(model, carry, inputs, ids)
    finally:
        recompute.region_input_observers.remove(pack)
    if getattr(model, "puzzle_emb", None) is not None:
        model.puzzle_emb.pending.clear()
    model.train(was_training)
    del out
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------- the model


def _block_saved_elements(config: ModelConfig, level: int, backend: str) -> dict[str, float]:
    """Elements (per sample) saved by one block application in the gradient cycle, split by what holds them.
    Derived from what each op's backward needs:
      - add+norm: its output (L*D; the next op's input, so shared) and an fp32 rstd per row;
      - channel SwiGLU: input (shared), h (L*I), and at level 0 gate/up (2*L*I) [reference path: gate, up and
        silu(gate) are separate tensors, 3*L*I, plus the product, L*I];
      - attention: input (shared), qkv (3*L*D), output (L*D), lse (fp32, H*L) [reference: q, k after RoPE, ...];
      - token mix: as channel SwiGLU with the roles of L and D swapped (hidden Im per channel).
    Level 2 keeps only the block input; level 1 keeps the matmul outputs."""
    L, D = config.total_seq_len, config.hidden_size
    I, H = config.mlp_hidden, config.num_heads
    Im = config.token_mix_hidden
    if level == 2:  # the block input only; the first block's is the call input, counted by the caller
        return {"act": 0.0, "fp32": 0.0, "input": L * D}
    if level == 1 and backend == "torch":  # selective checkpointing: the block input and every matmul output
        act, fp32 = 2 * L * I + L * D, 0.0  # gate_up and down outputs of the channel SwiGLU
        if config.mixer == "attention":
            act += 3 * L * D + 2 * L * D  # qkv, attention output, o-projection output
            fp32 += H * L  # attention's log-sum-exp
        else:
            act += 2 * D * Im + D * L  # the token-mixing matmul outputs
        return {"act": act, "fp32": fp32, "input": L * D}
    act, fp32 = 0.0, 0.0
    # two add+norm outputs (one is the block output = next block's input) and their rstd
    act += 2 * L * D
    fp32 += L + (D if config.mixer == "mlp" else L)
    if config.mixer == "attention":
        act += 3 * L * D + L * D  # qkv, attention output
        fp32 += H * L  # log-sum-exp
        if backend == "torch" and level == 0:
            act += 2 * L * D  # q and k after RoPE
    swiglus = [(L, I)] + ([(D, Im)] if config.mixer == "mlp" else [])
    for rows, hidden in swiglus:
        act += rows * hidden  # h, the down projection's input
        if level == 0:
            act += 2 * rows * hidden if backend == "triton" else 3 * rows * hidden  # gate/up (+ silu on the reference)
        elif backend == "torch":
            act += 2 * rows * hidden  # gate_up matmul output kept by the selective policy
    if config.mixer == "mlp" and backend == "torch" and level == 0:
        act += L * D  # the transposed copy the reference makes before the token-mixing matmul
    return {"act": act, "fp32": fp32, "input": 0.0}


def estimate_saved_bytes(config: ModelConfig, batch_size: int, level: int, backend: str = "torch",
                         device: str = "cpu") -> int:
    """Predicted bytes saved for backward by one supervision step (the gradient cycle's n + 1 network calls)."""
    a = _dtype_bytes(config, device)
    blocks = (config.n + 1) * config.num_blocks
    per = _block_saved_elements(config, level, backend)
    L, D = config.total_seq_len, config.hidden_size
    # per network call: its input (state + injection); at level 2 every block's input; heads: y and the logits
    calls = config.n + 1
    inputs = blocks * per["input"] if per["input"] else calls * L * D
    heads = L * D + config.seq_len * config.vocab_size
    elements_act = blocks * per["act"] + inputs + heads
    return int(batch_size * (elements_act * a + blocks * per["fp32"] * 4))


def estimate(config: TRMConfig | ModelConfig, batch_size: int, device: str = "cuda", backend: str | None = None) -> dict:
    """Predicted peak training memory (bytes) at each recomputation level: weights, gradients, optimiser and EMA
    states, the puzzle table (unless on the CPU), the carry, the bytes saved for backward, and the transient
    working set of the largest block op."""
    model_cfg = config.model if isinstance(config, TRMConfig) else config
    train_cfg = config.train if isinstance(config, TRMConfig) else None
    backend = backend or ("triton" if device.startswith("cuda") else "torch")
    from trm_fast.model import build_model

    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(copy.deepcopy(model_cfg)).parameters())
    a = _dtype_bytes(model_cfg, device)
    L, D = model_cfg.total_seq_len, model_cfg.hidden_size
    fixed = {
        "weights": 4 * params,
        "gradients": 4 * params,
        "optimizer": 8 * params,
        "ema": 4 * params if (train_cfg is None or train_cfg.ema) else 0,
        "puzzle_table": 0 if (train_cfg and train_cfg.puzzle_emb_device == "cpu") else 4 * model_cfg.num_puzzle_identifiers * model_cfg.puzzle_emb_dim,
        "carry": batch_size * 2 * L * D * a,
    }
    widest = max(model_cfg.mlp_hidden * L, model_cfg.token_mix_hidden * D if model_cfg.mixer == "mlp" else 0, 3 * L * D)
    transient = batch_size * (3 * widest + 4 * L * D) * a  # a block's working set (gate/up, grads) at its peak
    levels = {}
    for level in (0, 1, 2):
        saved = estimate_saved_bytes(model_cfg, batch_size, level, backend, device)
        levels[level] = {"saved_for_backward": saved, "peak": sum(fixed.values()) + saved + transient}
    return {"fixed": fixed, "transient": transient, "levels": levels, "backend": backend, "device": device}


_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"--memory-budget {text!r}: expected a size like 8GB, 512MiB or 4e9")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def plan_for_budget(config: TRMConfig, budget: str, log=print, device: str | None = None) -> TRMConfig:
    """The lightest recomputation level, then the fewest micro-batches (gradient accumulation at the same global
    batch), whose predicted peak fits the budget. Prints the plan; raises ValueError if nothing fits."""
    limit = parse_bytes(budget)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    global_batch = config.data.global_batch_size
    world = 1
    try:
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    except Exception:
        pass
    local = global_batch // world
    accum_options = [a for a in range(1, local + 1) if local % a == 0]
    for accum in accum_options:
        for level in (0, 1, 2):
            micro = local // accum
            peak = estimate(config, micro, device)["levels"][level]["peak"]
            if peak <= limit:
                log(f"memory plan: recompute level {level}, {accum} micro-batch(es) of {micro} per rank "
                    f"(global batch {global_batch}); predicted peak {peak / 1e9:.2f} GB within {limit / 1e9:.2f} GB")
                return config.override([f"model.recompute={level}", f"train.grad_accum={accum}"])
    raise ValueError(f"--memory-budget {budget}: even level 2 with micro-batches of 1 is predicted to exceed it")
