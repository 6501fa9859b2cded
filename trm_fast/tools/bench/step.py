"""Whole training step per preset: one optimizer step of the published scheme (a supervision step of every slot:
forward of all T cycles, the loss, backward through the last cycle, AdamATan2, the sparse puzzle-embedding update
and the EMA), every contender in the same run:

    eager          the reference model run as the published code runs it (backend torch: bf16 casts, SDPA attention)
    compile        that model under whole-model torch.compile, as the published code runs it
    trm_fast-L<k>  backend triton at recomputation level k (GPU only)
    trm_fast-L<k>-graph  the same step captured once and replayed as one CUDA graph (train.cuda_graphs; GPU only)

Model FLOPs are counted once, on the eager reference with FlopCounterMode (it cannot see custom ops), and the same
count is used for every contender. MFU is reported against the datasheet dense-bf16 peak and against a bf16 matmul
measured in the same run; `roofline_fraction` is the time the step's matmuls would take at the measured ceilings
(each matmul at max(flops / matmul rate, bytes / copy bandwidth), so the MLP-mixer's narrow token-mixing matmuls
count as memory-bound) divided by the measured step time.
"""
from __future__ import annotations

import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trm_fast.config import TRMConfig
from trm_fast.model import build_model
from trm_fast.tools.bench.contenders import Deadline, run_contenders, selected
from trm_fast.tools.bench.timing import datasheet_peak_tflops, measure_calls, on_gpu, peak_memory

# The same structure at a width a CPU finishes in seconds.
CPU_SHRINK = ["model.hidden_size=64", "model.num_heads=2", "model.puzzle_emb_dim=64", "model.n=2", "model.T=2"]
STEP_PRESETS_GPU = ["sudoku-att", "sudoku-mlp", "maze", "arc1", "arc2"]
STEP_PRESETS_QUICK = ["sudoku-att", "sudoku-mlp", "maze"]


def default_batch(preset: str, quick: bool) -> int:
    """768 (the published global batch) for Sudoku, 192 (the published per-GPU share) for Maze/ARC; 192 for every
    preset with --quick; small on a CPU."""
    if not on_gpu():
        return 2 if quick else 8
    if quick:
        return 192
    return 768 if preset.startswith("sudoku") else 192


def bench_config(preset: str, overrides: list[str] | None = None) -> TRMConfig:
    config = TRMConfig.preset(preset)
    if not on_gpu() and config.model.hidden_size > 64:
        config = config.override(CPU_SHRINK + (["model.seq_len=48"] if config.model.seq_len > 100 else []))
    return config.override(list(overrides or []))


def contender_configs(config: TRMConfig, levels=(0, 1, 2)) -> dict[str, tuple[TRMConfig, bool]]:
    """name -> (config, torch.compile the model?)"""
    torch_cfg = config.override(["model.backend=torch", "model.recompute=0"])
    out = {"eager": (torch_cfg, False)}
    if on_gpu():
        out.update({f"trm_fast-L{lv}": (config.override(["model.backend=triton", f"model.recompute={lv}"]), False)
                    for lv in levels[:1]})
    out["compile"] = (torch_cfg, True)
    if on_gpu():
        out.update({f"trm_fast-L{lv}": (config.override(["model.backend=triton", f"model.recompute={lv}"]), False)
                    for lv in levels[1:]})
        out[f"trm_fast-L{levels[0]}-graph"] = out[f"trm_fast-L{levels[0]}"]  # StepRunner(graphed=True)
    return out


def random_batch(m, batch: int, device, seed: int = 1) -> dict:
    """Random tokens and labels (all supervised) for a ModelConfig `m`; sample i gets puzzle id i modulo the table."""
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(0, m.vocab_size, (batch, m.seq_len), generator=g).to(device),
            "labels": torch.randint(1, m.vocab_size, (batch, m.seq_len), generator=g).to(device),
            "puzzle_identifiers": (torch.arange(batch) % m.num_puzzle_identifiers).to(device)}


class StepRunner:
    """One optimizer step of the published scheme on fixed random data, callable repeatedly (the carry advances, so
    halted slots restart as in training)."""

    def __init__(self, config: TRMConfig, batch: int, device, compile_model: bool, graphed: bool = False):
        from trm_fast.train.act import SupervisionState
        from trm_fast.train.ema import EMA
        from trm_fast.train.optim import SparseSignSGD, build_dense_optimizer

        torch.manual_seed(0)
        t = config.train
        self.model = build_model(copy.deepcopy(config.model)).to(device)
        self.model.train()
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.dense = build_dense_optimizer(t, [p for p in self.model.parameters() if p.requires_grad])
        emb = getattr(self.model, "puzzle_emb", None)
        self.sparse = SparseSignSGD(emb, t.puzzle_emb_lr, t.puzzle_emb_weight_decay) if emb is not None else None
        self.ema = EMA(self.model, t.ema_rate) if t.ema else None
        self.batch = random_batch(config.model, batch, device)
        self.state = SupervisionState.fresh(self.model, batch, config.model.seq_len, device)
        self.slots = torch.arange(batch, device=device)
        self.loss_kind = t.loss
        self.global_batch = batch
        self.steps = 0
        self.graphed = None
        if graphed:  # the trainer's CUDA-graph step; on a CPU its same tensor-parameterised step runs eagerly
            from trm_fast.train.cuda_graph import CarryStepParts, GraphedCarryStep

            parts = CarryStepParts(train=t, device=self.slots.device, distributed=False, model=self.model,
                                   forward_model=self.model, dense_opt=self.dense, sparse_opt=self.sparse, ema=self.ema,
                                   local_batch=batch, micro_batch=batch, loss_scale=1.0 / batch, slot_index=self.slots,
                                   log=print)
            self.graphed = GraphedCarryStep(parts, capture=torch.device(device).type == "cuda")

    def __call__(self):
        graphed = None
        if self.graphed is not None:
            sparse_lr = self.sparse.lr if self.sparse is not None else 0.0
            graphed = self.graphed(self.batch, self.state, self.steps, sparse_lr)
            if graphed is None:  # capture failed: the eager step from now on
                self.graphed = None
        if graphed is None:
            self.eager_step()
        else:
            self.state = graphed[1]
        self.steps += 1

    def eager_step(self) -> None:
        from trm_fast.train.act import supervision_step

        result = supervision_step(self.forward, self.state, self.batch, step=self.steps, seed=0, slot_index=self.slots,
                                  training=True, loss_kind=self.loss_kind)
        (result.loss.total / self.global_batch).backward()
        self.dense.step()
        self.dense.zero_grad(set_to_none=True)
        if self.sparse is not None:
            self.sparse.step()
        if self.ema is not None:
            self.ema.update()
        self.state = result.state


# ---------------------------------------------------------------------------------------------- FLOPs and roofline

_MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
            torch.ops.aten.baddbmm.default}


class MatmulLedger(TorchDispatchMode):
    """Records (flops, fewest bytes) of every matmul that runs: the operands read once and the output written once."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _MATMULS:
            a, b = (args[1], args[2]) if func in (torch.ops.aten.addmm.default, torch.ops.aten.baddbmm.default) else args[:2]
            batch = a.shape[0] if a.dim() == 3 else 1
            m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
            nbytes = sum(t.numel() * t.element_size() for t in (a, b, out))
            self.calls.append((2 * batch * m * k * n, nbytes))
        return out


def _cpu_attention_flops() -> dict:
    """FlopCounterMode counts the CUDA SDPA kernels but not the CPU one: the same formulas for the CPU op."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda query, key, value, *args, out_shape=None, **kwargs: fc.sdpa_flop_count(query, key, value))
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda grad_out, query, key, value, *args, out_shape=None, **kwargs:
            fc.sdpa_backward_flop_count(grad_out, query, key, value))
    return mapping


def count_step(runner: StepRunner) -> dict:
    """Runs one step of `runner` (an eager reference model) under FlopCounterMode and the matmul ledger."""
    from torch.utils.flop_counter import FlopCounterMode

    ledger = MatmulLedger()
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter, ledger:
        runner()
    return {"flops": int(counter.get_total_flops()), "matmuls": ledger.calls}


def model_flops(config: TRMConfig, batch: int, device) -> int:
    """FLOPs of one training step (forward of all T cycles, loss, backward) counted on the eager reference."""
    runner = StepRunner(config.override(["model.backend=torch", "model.recompute=0"]), batch, device, compile_model=False)
    return count_step(runner)["flops"]


def roofline_ms(counted: dict, matmul_tflops: float | None, copy_gbs: float | None) -> float | None:
    """Step time if every matmul ran at its roofline and the rest of the counted FLOPs (attention) at the matmul
    rate; elementwise work is not charged (so it is a lower bound)."""
    if not matmul_tflops or not copy_gbs:
        return None
    rate, bw = matmul_tflops * 1e12, copy_gbs * 1e9
    mm_flops = sum(f for f, _ in counted["matmuls"])
    seconds = sum(max(f / rate, b / bw) for f, b in counted["matmuls"]) + max(0, counted["flops"] - mm_flops) / rate
    return seconds * 1e3


def _step_jobs(presets, overrides, levels, only) -> list[tuple[str, str, TRMConfig, bool]]:
    """(preset, contender, config, compiled) in the order they run: eager and trm_fast level 0 of every preset first,
    then the compiled baseline, then the other levels, so a run cut short by --budget-s keeps the main figures."""
    jobs = []
    for preset in presets:
        for name, (cfg, compiled) in contender_configs(bench_config(preset, overrides), levels).items():
            if name == "eager" or selected(name, only):
                jobs.append((preset, name, cfg, compiled))
    rank = lambda name: 0 if name == "eager" else 1 if name == f"trm_fast-L{levels[0]}" else 2 if name == "compile" else 3
    return sorted(jobs, key=lambda j: rank(j[1]))  # stable: presets keep their order within a pass


def run_step(presets: list[str], batches: dict[str, int], quick: bool, levels, overrides: list[str], ceilings: dict,
             deadline: Deadline, notes: list[str], only: list[str] | None = None, log=print, emit=None) -> list[dict]:
    from trm_fast.tools.memory import saved_bytes_per_step

    device = torch.device("cuda" if on_gpu() else "cpu")
    peak = datasheet_peak_tflops()
    if not on_gpu():
        notes.append("CPU: the presets at reduced width (" + ", ".join(CPU_SHRINK) + "), eager and torch.compile only")
    warmup, reps = (2, 5) if quick else (3, 10)
    results: dict[str, dict] = {p: {} for p in presets}
    counted: dict[str, dict] = {}

    def build_rows() -> list[dict]:
        rows = []
        for preset in presets:
            batch, tokens = batches[preset], batches[preset] * bench_config(preset, overrides).model.total_seq_len
            if not results[preset]:
                continue
            flops = counted[preset]["flops"] if preset in counted else None
            roof = roofline_ms(counted[preset], ceilings.get("matmul_tflops"), ceilings.get("copy_bandwidth_gbs")) if flops else None
            eager_ms = results[preset].get("eager", {}).get("ms")
            compile_ms = results[preset].get("compile", {}).get("ms")
            for name, r in results[preset].items():
                ms = r["ms"]
                tflops = flops / (ms * 1e-3) / 1e12 if flops else None
                rows.append({
                    "preset": preset, "batch": batch, "contender": name, "ms_per_step": ms, "steps_per_s": 1e3 / ms,
                    "tokens_per_s": tokens / (ms * 1e-3), "flops_per_step": flops, "model_tflops": tflops,
                    "mfu_datasheet": tflops / peak if tflops and peak else None,
                    "mfu_measured_matmul": tflops / ceilings["matmul_tflops"] if tflops and ceilings.get("matmul_tflops") else None,
                    "roofline_ms": roof, "roofline_fraction": roof / ms if roof else None,
                    "peak_memory_bytes": r["peak"], "saved_for_backward_bytes": r["saved"],
                    "speedup_vs_eager": eager_ms / ms if eager_ms else None,
                    "speedup_vs_compile": compile_ms / ms if compile_ms else None,
                })
        return rows

    def measure(job) -> tuple:
        preset, name, cfg, compile_model = job
        batch = batches[preset]
        runner = StepRunner(cfg, batch, device, compile_model, graphed=name.endswith("-graph"))
        if name == "eager":  # the count is also the eager contender's first warm-up step
            counted[preset] = count_step(runner)
        if runner.graphed is not None:  # its eager warm-up steps and the capture stay out of the timed calls
            for _ in range(runner.graphed.warmup_steps + 1):
                runner()
            if runner.graphed is None:
                raise RuntimeError("CUDA-graph capture failed (see the line above); no graph figures")
        ms = measure_calls(runner, warmup, reps)
        mem = peak_memory(runner)
        # saved-tensor hooks would make torch.compile fall back to eager: the compiled model's saved bytes are
        # not counted this way (bench memory reports what it holds after the forward instead)
        saved = None if compile_model else saved_bytes_per_step(runner.model, batch, device)
        return ms, mem, saved

    jobs = [(f"{preset}@{batches[preset]}: {name}", compiled, (preset, name, cfg, compiled))
            for preset, name, cfg, compiled in _step_jobs(presets, overrides, levels, only)]
    for (preset, name, _, _), (ms, mem, saved) in run_contenders(jobs, measure, deadline, notes, log):
        results[preset][name] = {"ms": ms, "peak": mem, "saved": saved}
        log(f"  {preset}@{batches[preset]} {name}: {ms:.2f} ms/step" + (f", peak {mem / 2**30:.2f} GiB" if mem else "")
            + (f", saved {saved / 2**20:.1f} MiB" if saved is not None else ""))
        if emit is not None:
            emit(build_rows())
    return build_rows()
