"""Whole-step, evaluation and memory benchmarks per preset, every contender in the same run:
eager (the reference model run as the published code runs it: bf16 casts, SDPA attention), compiled (that model
under whole-model torch.compile, as the published code does), and trm_fast (Triton ops, recompute levels 0-2)."""
from __future__ import annotations

import copy

import torch

from trm_fast.bench.common import datasheet_peak_tflops, measure, peak_memory
from trm_fast.config import TRMConfig
from trm_fast.memory import saved_bytes_per_step
from trm_fast.model import build_model
from trm_fast.train.act import SupervisionState, supervision_step
from trm_fast.train.ema import EMA
from trm_fast.train.optim import SparseSignSGD, build_dense_optimizer

CPU_SHRINK = ["model.hidden_size=64", "model.num_heads=2", "model.puzzle_emb_dim=64", "model.n=2", "model.T=2"]


def bench_config(preset: str, cpu: bool) -> TRMConfig:
    config = TRMConfig.preset(preset)
    if cpu:  # the same structure at a width a CPU finishes in seconds
        config = config.override(CPU_SHRINK + (["model.seq_len=64"] if config.model.seq_len > 100 else []))
    return config


def contenders(config: TRMConfig, device: str, levels=(0, 1, 2)) -> dict:
    out = {"eager": config.override(["model.backend=torch"]), "compile": config.override(["model.backend=torch"])}
    if device == "cuda":
        for level in levels:
            out[f"trm_fast-L{level}"] = config.override(["model.backend=triton", f"model.recompute={level}"])
    return out


class StepRunner:
    """One optimizer step of the published scheme on fixed random data: forward of all T cycles, backward,
    AdamATan2, the sparse puzzle update and the EMA."""

    def __init__(self, config: TRMConfig, batch: int, device: str, compile_model: bool):
        torch.manual_seed(0)
        self.model = build_model(copy.deepcopy(config.model)).to(device)
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.opt = build_dense_optimizer(config.train, self.model.parameters())
        self.sparse = SparseSignSGD(self.model.puzzle_emb, 1e-4, 0.1) if self.model.puzzle_emb is not None else None
        self.ema = EMA(self.model, 0.999)
        m = config.model
        g = torch.Generator().manual_seed(1)
        self.batch = {"inputs": torch.randint(0, m.vocab_size, (batch, m.seq_len), generator=g).to(device),
                      "labels": torch.randint(1, m.vocab_size, (batch, m.seq_len), generator=g).to(device),
                      "puzzle_identifiers": torch.zeros(batch, dtype=torch.long, device=device)}
        self.state = SupervisionState.fresh(self.model, batch, m.seq_len, device)
        self.slots = torch.arange(batch, device=device)
        self.steps = 0

    def __call__(self):
        result = supervision_step(self.forward, self.state, self.batch, step=self.steps, seed=0, slot_index=self.slots,
                                  training=True)
        (result.loss.total / len(self.slots)).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.sparse:
            self.sparse.step()
        self.ema.update()
        self.state = result.state
        self.steps += 1


def model_flops(config: TRMConfig, batch: int, device: str) -> int:
    """FLOPs of one training step counted on the eager reference (FlopCounterMode cannot see custom ops)."""
    from torch.utils.flop_counter import FlopCounterMode

    runner = StepRunner(config.override(["model.backend=torch"]), batch, device, compile_model=False)
    with FlopCounterMode(display=False) as counter:
        runner()
    return int(counter.get_total_flops())


def run_step(presets: list[str], batches: dict[str, int], quick: bool, measured_tflops: float | None, log=print) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = datasheet_peak_tflops()
    rows = []
    for preset in presets:
        config = bench_config(preset, device == "cpu")
        batch = batches[preset]
        flops = model_flops(config, batch, device)
        tokens = batch * config.model.total_seq_len
        eager_ms = None
        for name, cfg in contenders(config, device).items():
            try:
                runner = StepRunner(cfg, batch, device, compile_model=(name == "compile"))
                ms = measure(runner, warmup=2 if quick else 5, reps=3 if quick else 10)
                mem = peak_memory(runner)
                # saved-tensor hooks make torch.compile fall back to eager, so the compiled model's saved bytes
                # cannot be counted this way; its peak GPU memory is the comparable figure
                saved = None if name == "compile" else saved_bytes_per_step(runner.model, batch, device)
            except Exception as exc:
                log(f"  {preset}: {name} skipped ({type(exc).__name__}: {str(exc)[:160]})")
                continue
            eager_ms = ms if name == "eager" else eager_ms
            tflops = flops / (ms * 1e-3) / 1e12
            row = {"preset": preset, "batch": batch, "contender": name, "ms_per_step": ms, "steps_per_s": 1e3 / ms,
                   "tokens_per_s": tokens / (ms * 1e-3), "model_tflops": tflops,
                   "mfu_datasheet": tflops / peak if peak else None,
                   "mfu_measured_matmul": tflops / measured_tflops if measured_tflops else None,
                   "peak_memory_bytes": mem, "saved_for_backward_bytes": saved,
                   "speedup_vs_eager": eager_ms / ms if eager_ms else None, "flops_per_step": flops}
            rows.append(row)
            log(f"  {preset} {name}: {ms:.2f} ms/step, {row['tokens_per_s']:.0f} tokens/s"
                + (f", saved {saved / 1e6:.1f} MB" if saved is not None else "")
                + (f", x{row['speedup_vs_eager']:.2f} vs eager" if row["speedup_vs_eager"] else ""))
    return rows


def run_eval(presets: list[str], batches: dict[str, int], quick: bool, log=print) -> list[dict]:
    """Puzzles per second with all halt_max_steps supervision steps."""
    from trm_fast.eval.evaluate import run_puzzles

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for preset in presets:
        config = bench_config(preset, device == "cpu")
        batch = batches[preset]
        steps = config.model.halt_max_steps if not (quick and device == "cpu") else 2
        for name, cfg in contenders(config, device, levels=(0,)).items():
            model = build_model(copy.deepcopy(cfg.model)).to(device).eval()
            fwd = torch.compile(model) if name == "compile" else model
            inputs = torch.randint(0, cfg.model.vocab_size, (batch, cfg.model.seq_len), device=device)
            ids = torch.zeros(batch, dtype=torch.long, device=device)
            try:
                ms = measure(lambda: run_puzzles(fwd, inputs, ids, steps), warmup=1, reps=3 if quick else 5)
            except Exception as exc:
                log(f"  {preset}: {name} skipped ({type(exc).__name__}: {str(exc)[:160]})")
                continue
            rows.append({"preset": preset, "contender": name, "batch": batch, "supervision_steps": steps,
                         "ms_per_batch": ms, "puzzles_per_s": batch / (ms * 1e-3)})
            log(f"  {preset} {name}: {batch / (ms * 1e-3):.1f} puzzles/s ({steps} steps)")
    return rows


def run_memory(presets: list[str], batches: dict[str, int], log=print) -> list[dict]:
    """Bytes saved for backward per supervision step (saved-tensor hooks; no GPU needed), per contender/level."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for preset in presets:
        config = bench_config(preset, device == "cpu")
        batch = batches[preset]
        variants = {"eager": config.override(["model.backend=torch"])}
        backend = "triton" if device == "cuda" else "torch"
        for level in (0, 1, 2):
            variants[f"trm_fast-L{level}" if backend == "triton" else f"reference-L{level}"] = config.override(
                [f"model.backend={backend}", f"model.recompute={level}"])
        eager_bytes = None
        for name, cfg in variants.items():
            model = build_model(copy.deepcopy(cfg.model)).to(device)
            saved = saved_bytes_per_step(model, batch, device)
            eager_bytes = saved if name == "eager" else eager_bytes
            rows.append({"preset": preset, "batch": batch, "contender": name, "saved_bytes": saved,
                         "fraction_of_eager": saved / eager_bytes if eager_bytes else None})
            log(f"  {preset} {name}: {saved / 1e6:.2f} MB saved for backward ({saved / eager_bytes:.3f} of eager)")
    log("  torch.compile: not counted here (saved-tensor hooks make it fall back to eager); "
        "`trm-fast bench step` on a GPU reports its peak memory")
    return rows
