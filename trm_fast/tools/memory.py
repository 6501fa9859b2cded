"""Memory of a training step: measured (bytes saved for backward, counted with saved-tensor hooks; the peak of
allocated bytes, from the CUDA allocator or, on a CPU, from the allocator events the profiler records) and
modelled (`estimate`), and a planner that picks the recomputation level and micro-batch that fit a budget.

    trm_fast.tools.memory.saved_bytes_per_step(model, batch_size)       # measured, needs no GPU
    trm_fast.tools.memory.peak_bytes(fn, device)                        # measured peak above the start, CPU or CUDA
    with trm_fast.tools.memory.allocation_only(): ...                   # CPU: the Triton path allocates, computes nothing
    trm_fast.tools.memory.estimate(config, batch_size)                  # predicted, per level
    trm-fast train --preset sudoku-mlp --memory-budget 4GB        # plan_for_budget
"""
from __future__ import annotations

import contextlib
import copy
import os
import re

import torch

from trm_fast.config import ModelConfig, TRMConfig
from trm_fast.model.layers import BLOCK_OPS
from trm_fast.model.recompute import observe_regions
from trm_fast.ops import POST_NORMS, fuses_post_norm, levels, resolve


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

    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, config.vocab_size, (batch_size, config.seq_len), generator=g).to(device)
    ids = torch.zeros(batch_size, dtype=torch.long, device=device)
    carry = model.initial_carry(batch_size, device)
    was_training = model.training
    model.train()
    # what selective-checkpoint regions keep is out of the saved-tensor hooks' sight: they report it
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), observe_regions(pack):
        out = (step_fn or (lambda m, c, i, p: m(c, i, p)))(model, carry, inputs, ids)
    if getattr(model, "puzzle_emb", None) is not None:
        model.puzzle_emb.pending.clear()
    model.train(was_training)
    del out
    return sum(seen.values())


def peak_bytes(fn, device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated on `device` during fn(), above what was allocated when it started. CUDA: the caching
    allocator's statistics (torch.cuda.max_memory_allocated). CPU: the allocator's events recorded by
    torch.profiler (profile_memory=True), summed in time order; a free of a block allocated before fn() started
    is not reported, so the CPU figure can only err high, never low."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    if device.type != "cpu":
        raise ValueError(f"peak_bytes: device {device} is neither cpu nor cuda")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    cpu = torch.autograd.DeviceType.CPU
    for event in sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns()):
        if event.name() == "[memory]" and event.device_type() == cpu:
            current += event.nbytes()
            peak = max(peak, current)
    return int(peak)


@contextlib.contextmanager
def allocation_only():
    """Within this context, on a CPU with TRITON_INTERPRET=1, the Triton kernels are not run and fp32-output matmuls
    (weight gradients) are not computed: every op still allocates exactly the tensors it allocates on a GPU, so
    peak_bytes measures the Triton path's GPU memory at full width in seconds. The values computed are garbage:
    for memory measurement only."""
    from trm_fast.ops import reference

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError as exc:  # pragma: no cover - depends on the installed Triton
        raise RuntimeError(f"allocation_only needs Triton's interpreter ({exc})") from None
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("allocation_only needs TRITON_INTERPRET=1, set before any Triton kernel is imported: "
                           "it skips the interpreter's kernel launches")
    run = InterpretedFunction.run
    InterpretedFunction.run = lambda self, *args, **kwargs: None
    try:
        with reference.mm_fp32_allocation_only():
            yield
    finally:
        InterpretedFunction.run = run


# ---------------------------------------------------------------------------------------------- the model


def _block_saved_elements(config: ModelConfig, level: int, implementations: dict[str, str],
                          plan: str | None = None) -> dict:
    """Elements per sample that one block application of the gradient cycle keeps for backward, summed from the
    levels table (trm_fast.ops.levels.OP_SAVES) for the block's ops (trm_fast.model.layers.BLOCK_OPS) on their
    implementations: `act` in the forward dtype, `fp32` in fp32. Every activation between two ops is (L, D) and
    counted once when its producer keeps its output or its consumer its input, except a sub-layer's output that
    stays inside its node (a Triton sub-layer with its post-norm, trm_fast.ops.fuses_post_norm). The block input is kept by the
    first op or the selective region; when the last op keeps its output (`keeps_output`) a block's input is the
    previous block's kept output, so only a network call's first block adds it (`call_input`). `plan` replaces
    the level's block plan (trm_fast.ops.levels.block_plan)."""
    shape = levels.Shape.of(config)
    LD = shape.L * shape.D
    ops = BLOCK_OPS[config.mixer]
    on = [implementations[op] for op in ops]
    plan = plan or levels.block_plan(level, tuple(on))
    if plan == "block":
        return {"act": LD, "fp32": 0, "call_input": 0, "keeps_output": False}
    saves = [levels.op_saves(op, implementation, level, plan) for op, implementation in zip(ops, on)]
    act = sum(t.elements(shape) for s in saves for t in s.tensors if not t.fp32)
    fp32 = sum(t.elements(shape) for s in saves for t in s.tensors if t.fp32)
    inside = [ops[i + 1] == POST_NORMS.get(ops[i]) and fuses_post_norm(on[i], on[i + 1]) for i in range(len(ops) - 1)]
    act += LD * sum(1 for producer, consumer, fused in zip(saves, saves[1:], inside)
                    if (producer.output and not fused) or consumer.input)
    keeps_input, keeps_output = saves[0].input or plan == "selective", saves[-1].output
    act += LD * keeps_output + LD * (keeps_input and not keeps_output)
    return {"act": act, "fp32": fp32, "call_input": LD * (keeps_input and keeps_output), "keeps_output": keeps_output}


def carry_tensors(config: ModelConfig) -> int:
    """(B, L, D) tensors in the carry between supervision steps: y and z; z only for the single-latent ablation;
    y and one z per update for the multi-scale one."""
    return {"single": 1, "multiscale": config.n + 1}.get(config.latent, 2)


def gradient_calls(config: ModelConfig) -> tuple[int, int]:
    """(network calls, block applications) that carry gradient in one supervision step: the last cycle's n + 1
    calls of num_blocks blocks; 2 calls with the 1-step gradient; HRM: one call of each of its two networks."""
    if config.arch == "hrm":
        return 2, config.hrm_low_blocks + config.hrm_high_blocks
    calls = 2 if config.grad_mode == "one_step" else config.n + 1
    return calls, calls * config.num_blocks


def estimate_saved_bytes(config: ModelConfig, batch_size: int, level: int, backend: str | dict | None = None,
                         device: str = "cpu", capability: tuple[int, int] | None = None) -> int:
    """Predicted bytes saved for backward by one supervision step's forward: the network calls that carry gradient
    (gradient_calls; see _block_saved_elements), the final y the heads keep (unless the last op keeps it already)
    and the embedding's int64 token indices. `backend`: None for the resolver's choice on `device` (of
    `capability`, trm_fast.ops.resolve), else one implementation for every op or a mapping op -> implementation."""
    implementations = resolve.op_implementations(config, device, capability, backend)
    a = resolve.forward_dtype(config, device, capability).itemsize
    per = _block_saved_elements(config, level, implementations)
    L, D = config.total_seq_len, config.hidden_size
    calls, blocks = gradient_calls(config)
    final_y = 0 if per["keeps_output"] else L * D
    per_sample = blocks * (per["act"] * a + per["fp32"] * 4) + calls * per["call_input"] * a + final_y * a
    return int(batch_size * (per_sample + config.seq_len * 8))


def estimate(config: TRMConfig | ModelConfig, batch_size: int, device: str = "cuda", backend: str | dict | None = None,
             capability: tuple[int, int] | None = None) -> dict:
    """Predicted peak training memory (bytes) of one process at each recomputation level, for `batch_size`
    samples per micro-batch:
      fixed: fp32 weights, gradients, the two optimiser moments, the EMA shadow, the puzzle table (0 when
        train.puzzle_emb_device=cpu), the training carry (y and z in the forward dtype; carry_tensors), and the
        Triton ops' cached low-precision weight casts (trm_fast.ops._custom_op.cast_weight; counted for every
        parameter, an upper bound: the embedding and heads are cast per use);
      saved_for_backward: what the gradient cycle's n + 1 network calls keep (estimate_saved_bytes);
      transient: the working set on top of that during backward: activation gradients and the widest op's
        temporaries, plus what the level's backward re-creates (trm_fast.ops.levels): at level 1 a selective region
        recomputes one block's elementwise outputs (Triton ops recompute inside their kernels and materialise
        nothing), at level 2 one block's internals (it is re-run with recording).
    The T-1 cycles without gradient hold only one op's working set, below the backward peak.
    `backend` and `capability` as for estimate_saved_bytes; the result names the op implementations it assumed."""
    model_cfg = config.model if isinstance(config, TRMConfig) else config
    train_cfg = config.train if isinstance(config, TRMConfig) else None
    implementations = resolve.op_implementations(model_cfg, device, capability, backend)
    from trm_fast.model import build_model

    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(copy.deepcopy(model_cfg)).parameters() if p.requires_grad)
    a = resolve.forward_dtype(model_cfg, device, capability).itemsize
    L, D = model_cfg.total_seq_len, model_cfg.hidden_size
    table_on_host = train_cfg is not None and train_cfg.puzzle_emb_device == "cpu"
    fixed = {
        "weights": 4 * params,
        "gradients": 4 * params,
        "optimizer": 8 * params,
        "ema": 4 * params if (train_cfg is None or train_cfg.ema) else 0,
        "puzzle_table": 0 if table_on_host else 4 * model_cfg.num_puzzle_identifiers * model_cfg.puzzle_emb_dim,
        "carry": batch_size * carry_tensors(model_cfg) * L * D * a,
        "weight_casts": a * params if a < 4 and any(i != "torch" for i in implementations.values()) else 0,
    }
    widest = max(model_cfg.mlp_hidden * L, model_cfg.token_mix_hidden * D if model_cfg.mixer == "mlp" else 0, 3 * L * D)
    working = batch_size * (3 * widest + 2 * L * D) * a  # the widest op's gradients in flight, the block's in/out gradients
    per_level = {}
    for level in (0, 1, 2):
        saved = estimate_saved_bytes(model_cfg, batch_size, level, implementations, device, capability)
        replay = _replayed_bytes(model_cfg, level, implementations, a) * batch_size
        per_level[level] = {"saved_for_backward": saved, "transient": working + replay,
                            "peak": sum(fixed.values()) + saved + working + replay}
    return {"fixed": fixed, "levels": per_level, "implementations": implementations, "device": device,
            "batch_size": batch_size}


def _block_bytes(config: ModelConfig, level: int, implementations: dict[str, str], act_bytes: int,
                 plan: str | None = None) -> int:
    """What one block keeps, its input and output included."""
    per = _block_saved_elements(config, level, implementations, plan)
    return int((per["act"] + per["call_input"]) * act_bytes + per["fp32"] * 4)


def _replayed_bytes(config: ModelConfig, level: int, implementations: dict[str, str], act_bytes: int) -> int:
    """Per sample, what a block's backward re-creates beyond what it kept: a selective region (level 1) the saves of
    its ops outside a region less what the region kept; a re-run block (level 2) everything its level-0 run saves."""
    plan = levels.block_plan(level, tuple(implementations[op] for op in BLOCK_OPS[config.mixer]))
    if plan == "block":
        return _block_bytes(config, 0, implementations, act_bytes)
    if plan == "selective":
        outside = _block_bytes(config, level, implementations, act_bytes, plan="ops")
        return max(0, outside - _block_bytes(config, level, implementations, act_bytes))
    return 0


_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"--memory-budget {text!r}: expected a size like 8GB, 512MiB or 4e9")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _implementations_training_runs(model_config: ModelConfig, device: str) -> dict[str, str] | None:
    """The op implementations training on `device` will run: on a GPU the model's own resolution, the self-check's
    fallbacks included (an op that fails it runs the reference, which keeps more for backward; trm_fast.ops.fallback,
    its verdict cached); None (the resolver's choice) off the GPU or where none is present to check on."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    from trm_fast.model import build_model

    with torch.device("meta"):
        model = build_model(copy.deepcopy(model_config))
    return model.op_implementations(torch.device(device))


def plan_for_budget(config: TRMConfig, budget: str, log=print, device: str | None = None) -> TRMConfig:
    """The plan whose predicted peak fits the budget: the fewest micro-batches per optimizer step (gradient
    accumulation at the same global batch; fewer, larger micro-batches keep the GPU busy); at that count the puzzle
    table stays where the config puts it if possible, else moves to pinned host memory (train.puzzle_emb_device=cpu,
    cheaper than more micro-batches: only the batch's rows travel); then the lightest recomputation level.
    Estimated with the ops training will run (on a GPU, after the self-check's fallbacks). Prints the plan; raises
    ValueError if nothing fits."""
    limit = parse_bytes(budget)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    implementations = _implementations_training_runs(config.model, device)
    global_batch = config.data.global_batch_size
    world = 1
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    local = global_batch // world
    accum_options = [a for a in range(1, local + 1) if local % a == 0]
    placements = [config.train.puzzle_emb_device] + (["cpu"] if config.train.puzzle_emb_device != "cpu" else [])
    candidates = {placement: config.override([f"train.puzzle_emb_device={placement}"]) for placement in placements}
    for accum in accum_options:
        micro = local // accum
        for placement, candidate in candidates.items():
            est = estimate(candidate, micro, device, backend=implementations)
            for level in (0, 1, 2):
                peak = est["levels"][level]["peak"]
                if peak <= limit:
                    table_bytes = 4 * config.model.num_puzzle_identifiers * config.model.puzzle_emb_dim
                    where = "" if placement == config.train.puzzle_emb_device else \
                        f"; puzzle table ({table_bytes / 1e9:.2f} GB) moved to pinned host memory"
                    log(f"memory plan: recompute level {level}, {accum} micro-batch(es) of {micro} per process "
                        f"(global batch {global_batch}); predicted peak {peak / 1e9:.2f} GB within "
                        f"{limit / 1e9:.2f} GB{where}")
                    return candidate.override([f"model.recompute={level}", f"train.grad_accum={accum}"])
    raise ValueError(f"--memory-budget {budget}: even level 2 with micro-batches of 1 and the puzzle table on the host "
                     f"is predicted to exceed it")
