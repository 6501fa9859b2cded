"""Memory per preset, every contender on the same config:

    saved_bytes               bytes saved for backward by one supervision step, counted with saved-tensor hooks
                              (trm_fast.tools.memory.saved_bytes_per_step; needs no GPU). Not countable for torch.compile:
                              saved-tensor hooks make it fall back to eager.
    held_after_forward_bytes  GPU: what the forward leaves allocated for the backward (memory_allocated after the
                              forward minus before it): the figure that also covers the compiled model.
    peak_memory_bytes         GPU: torch.cuda.max_memory_allocated over one whole optimizer step (after a first step
                              has created the optimiser state), puzzle table and optimiser states included.
    predicted_peak_bytes      trm_fast.tools.memory.estimate at the contender's level and backend.

Contenders: eager (reference, level 0), reference-L1/L2 (reference path with recomputation), compile (GPU), and
trm_fast-L0/L1/L2 (backend triton, GPU).
"""
from __future__ import annotations

import torch

from trm_fast.tools.bench.contenders import Deadline, run_contenders, selected
from trm_fast.tools.bench.step import StepRunner, bench_config
from trm_fast.tools.bench.timing import on_gpu, peak_memory


def _variants(config, levels) -> dict:
    """name -> (config, backend, level, compiled); the compiled model last (its compile is the slow part)."""
    out = {"eager": (config.override(["model.backend=torch", "model.recompute=0"]), "torch", 0, False)}
    for lv in levels:
        if lv:
            out[f"reference-L{lv}"] = (config.override(["model.backend=torch", f"model.recompute={lv}"]), "torch", lv, False)
    if on_gpu():
        for lv in levels:
            out[f"trm_fast-L{lv}"] = (config.override(["model.backend=triton", f"model.recompute={lv}"]), "triton", lv, False)
        out["compile"] = (out["eager"][0], "torch", 0, True)
    return out


def cpu_step_peak(config, batch: int) -> int:
    """Peak bytes above the start of one whole optimizer step on a CPU, after a first step has created the optimiser
    state, under trm_fast.tools.memory.allocation_only (the Triton path allocates what it allocates on a GPU, computes
    nothing; TRITON_INTERPRET=1 must be set before the kernels are imported)."""
    from trm_fast.tools.memory import allocation_only, peak_bytes

    with allocation_only():
        runner = StepRunner(config, batch, torch.device("cpu"), False)
        runner()
        return peak_bytes(runner, "cpu")


def cpu_peak_per_sample(presets: list[str], backends: list[str], levels: list[int], batches: tuple[int, int],
                        log=print) -> list[dict]:
    """Peak training memory per sample at the published widths in fp32, measured on a CPU (cpu_step_peak) against
    the memory model, for every preset x backend x level: the slope between the two batch sizes (above the batch at
    which the token mix's weight-gradient kernel stops splitting the batch further, so the slope is pure activation
    memory). TRITON_INTERPRET=1 must be set before the kernels are imported (benchmarks/bench_peak_memory_cpu.py)."""
    import time

    from trm_fast.config import TRMConfig

    b1, b2 = batches
    rows = []
    for preset in presets:
        for backend in backends:
            for level in levels:
                config = TRMConfig.preset(preset).override([f"model.backend={backend}", f"model.recompute={level}",
                                                            "model.forward_dtype=float32"])
                start = time.time()
                measured = (cpu_step_peak(config, b2) - cpu_step_peak(config, b1)) / (b2 - b1)
                predicted = (_predicted_activation_bytes(config, b2, backend, level)
                             - _predicted_activation_bytes(config, b1, backend, level)) / (b2 - b1)
                rows.append({"preset": preset, "backend": backend, "level": level, "dtype": "float32",
                             "measured_bytes_per_sample": measured, "predicted_bytes_per_sample": predicted})
                log(f"{preset:11s} {backend:6s} level {level}: {measured / 1e6:8.2f} MB per sample measured, "
                    f"{predicted / 1e6:8.2f} MB predicted ({predicted / measured:.2f}x)  [{time.time() - start:.0f} s]")
    return rows


def _predicted_activation_bytes(config, batch: int, backend: str, level: int) -> int:
    from trm_fast.tools.memory import estimate

    est = estimate(config, batch, "cpu", backend)
    return est["levels"][level]["saved_for_backward"] + est["levels"][level]["transient"]


def held_after_forward(runner: StepRunner) -> int:
    """GPU bytes the training forward (with its loss) leaves allocated for the backward, measured on the runner's
    model (compiled or not) and carry; the backward then runs and the gradients are dropped."""
    from trm_fast.train.losses import model_token_loss, supervision_loss

    b, model = runner.batch, runner.model
    carry = model.initial_carry(b["inputs"].shape[0], b["inputs"].device)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = runner.forward(carry, b["inputs"], b["puzzle_identifiers"])
    loss = supervision_loss(out.logits, b["labels"], out.q_halt, out.q_continue,
                            token_cross_entropy=model_token_loss(model, b["inputs"].device)).total
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before
    loss.backward()
    model.zero_grad(set_to_none=True)
    if getattr(model, "puzzle_emb", None) is not None:
        model.puzzle_emb.pending.clear()
    return int(held)


def run_memory(presets: list[str], batches: dict[str, int], levels, overrides: list[str], deadline: Deadline,
               notes: list[str], only: list[str] | None = None, log=print, emit=None) -> list[dict]:
    from trm_fast.tools.memory import estimate, saved_bytes_per_step

    device = torch.device("cuda" if on_gpu() else "cpu")
    if not on_gpu():
        notes.append("CPU: bytes saved for backward only (saved-tensor hooks); peak and held-after-forward bytes and "
                     "the compiled model are measured on GPUs")
    notes.append("torch.compile: saved bytes not countable with saved-tensor hooks (they make it fall back to eager); "
                 "compare its held_after_forward_bytes and peak_memory_bytes")
    eager_bytes: dict[str, int | None] = {}

    def contenders():
        for preset in presets:
            config = bench_config(preset, overrides)
            batch = batches[preset]
            eager_bytes[preset] = None
            for name, (cfg, backend, level, compiled) in _variants(config, levels).items():
                if name == "eager" or selected(name, only):
                    yield f"{preset}@{batch}: {name}", compiled, (preset, batch, name, cfg, backend, level, compiled)

    def measure(job) -> tuple:
        preset, batch, name, cfg, backend, level, compiled = job
        runner = StepRunner(cfg, batch, device, compiled)
        saved = None if compiled else saved_bytes_per_step(runner.model, batch, device)
        held = peak = None
        if on_gpu():
            runner()  # compiles where it must and creates the optimiser state
            held = held_after_forward(runner)
            peak = peak_memory(runner)
        predicted = None if compiled else estimate(cfg, batch, device.type, backend)["levels"][level]["peak"]
        return saved, held, peak, predicted

    rows = []
    for (preset, batch, name, *_), (saved, held, peak, predicted) in run_contenders(contenders(), measure, deadline,
                                                                                     notes, log):
        if name == "eager":
            eager_bytes[preset] = saved
        eager = eager_bytes[preset]
        rows.append({"preset": preset, "batch": batch, "contender": name, "saved_bytes": saved,
                     "fraction_of_eager": saved / eager if saved is not None and eager else None,
                     "held_after_forward_bytes": held, "peak_memory_bytes": peak, "predicted_peak_bytes": predicted})
        log(f"  {preset}@{batch} {name}: " + ", ".join(
            f"{k} {v / 2**20:.1f} MiB" for k, v in (("saved", saved), ("held", held), ("peak", peak)) if v is not None))
        if emit is not None:
            emit(rows)
    return rows
