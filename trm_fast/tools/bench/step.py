"""Whole training step per preset: one optimizer step of the published scheme (a supervision step of every slot:
forward of all T cycles, the loss, backward through the last cycle, AdamATan2, the sparse puzzle-embedding update
and the EMA), every contender in the same run:

    eager          the reference model run as the published code runs it (backend torch: bf16 casts, SDPA attention)
    compile        that model under whole-model torch.compile, as the published code runs it
    trm_fast-L<k>  backend triton at recomputation level k (GPU only)
    trm_fast-L<k>-graph  the same step captured once and replayed as one CUDA graph (train.cuda_graphs; GPU only)

Model FLOPs are counted once, on the eager reference with FlopCounterMode (it cannot see custom ops), and the same
count is used for every contender. MFU is reported against the datasheet dense-bf16 peak and against a bf16 matmul
measured in the same run; `roofline_fraction` is the roofline model's step time (`roofline`: every launch of the
Triton path at the contender's level, level 0 for eager and compile, at max(FLOPs / measured matmul rate, HBM bytes
/ measured copy bandwidth), with the device's L2 size) divided by the measured step time. `trm-fast bench roofline`
prints that model per kernel, on a GPU or for a datasheet GPU on any machine.
"""
from __future__ import annotations

import copy
import dataclasses
import time

import torch

from trm_fast.config import TRMConfig
from trm_fast.model import build_model
from trm_fast.tools.bench.contenders import Deadline, run_contenders, selected
from trm_fast.tools.bench.launches import count_step_launches
from trm_fast.tools.bench.timing import (Hardware, datasheet_peak_tflops, device_name, measure_calls, on_gpu,
                                         peak_memory, synchronize)

# The same structure at a width a CPU finishes in seconds.
CPU_SHRINK = ["model.hidden_size=64", "model.num_heads=2", "model.puzzle_emb_dim=64", "model.n=2", "model.T=2"]
STEP_PRESETS_GPU = ["sudoku-att", "sudoku-mlp", "maze", "arc1", "arc2"]
STEP_PRESETS_QUICK = ["sudoku-att", "sudoku-mlp", "maze"]


def default_batch(preset: str, quick: bool, gpu: bool | None = None) -> int:
    """768 (the published global batch) for Sudoku, 192 (the published per-GPU share) for Maze/ARC, with --quick too
    (at 192 a Sudoku step's activations fit in an H100's L2 and hide its HBM traffic); small on a CPU."""
    if not (on_gpu() if gpu is None else gpu):
        return 2 if quick else 8
    return 768 if preset.startswith("sudoku") else 192


def bench_config(preset: str, overrides: list[str] | None = None) -> TRMConfig:
    config = TRMConfig.preset(preset)
    if not on_gpu() and config.model.hidden_size > 64:
        config = config.override(CPU_SHRINK + (["model.seq_len=48"] if config.model.seq_len > 100 else []))
    return config.override(list(overrides or []))


def contender_configs(config: TRMConfig, levels=(0, 1, 2), gpu: bool | None = None) -> dict[str, tuple[TRMConfig, bool]]:
    """name -> (config, torch.compile the model?); the trm_fast contenders on a GPU (`gpu`) only."""
    torch_cfg = config.override(["model.backend=torch", "model.recompute=0"])
    out = {"eager": (torch_cfg, False)}
    if on_gpu() if gpu is None else gpu:
        out.update({f"trm_fast-L{lv}": (config.override(["model.backend=triton", f"model.recompute={lv}"]), False)
                    for lv in levels})
        out[f"trm_fast-L{levels[0]}-graph"] = out[f"trm_fast-L{levels[0]}"]  # StepRunner(graphed=True)
    out["compile"] = (torch_cfg, True)
    return out


def contender_level(name: str) -> int | None:
    """The recomputation level of a trm_fast contender's name (trm_fast-L1, trm_fast-L0-graph); None otherwise."""
    return int(name.split("-L")[1][0]) if name.startswith("trm_fast-L") else None


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


# ---------------------------------------------------------------------------------------------- FLOPs


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
    """Runs one step of `runner` (an eager reference model) under FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        runner()
    return {"flops": int(counter.get_total_flops())}


def model_flops(config: TRMConfig, batch: int, device) -> int:
    """FLOPs of one training step (forward of all T cycles, loss, backward) counted on the eager reference."""
    runner = StepRunner(config.override(["model.backend=torch", "model.recompute=0"]), batch, device, compile_model=False)
    return count_step(runner)["flops"]


# ---------------------------------------------------------------------------------------------- roofline
# One model for every roofline figure: the launches of one supervision step (bench/launches.py: the Triton path in
# bf16, as a GPU runs it), each at max(FLOPs / matmul rate, HBM bytes / bandwidth). FLOPs are those of matmuls and
# attention (elementwise arithmetic is never the bound at these widths). HBM bytes: every tensor a kernel reads
# (distinct elements) and writes, once, times the L2 re-read factor of its tile order (`_gate_up_reads`; the other
# kernels' orders re-read nothing from HBM at the presets' shapes, see docs/kernels.md). Launch gaps and host time
# are not charged: the sum is a lower bound of a CUDA-graph replay.

ROWS_FASTEST = 1 << 30  # a GROUP_M covering every row block: the order before issue 14 (row blocks fastest)
_GATHERS = {"index", "index_select", "gather", "embedding"}  # read the selected rows only (= the output) + indices
_OVERWRITES = {"copy_", "fill_", "zero_"}  # the destination (first input) is written, not read


def _gate_up_reads(a_bytes: int, b_bytes: int, blocks_m: int, blocks_n: int, block_m_bytes: int, group_m: int,
                   l2_bytes: int | None) -> tuple[int, int]:
    """HBM bytes read of A (one batch element's rows x K) and B (K x 2I) by the gate_up grid: programs walk
    `group_m` row blocks across all `blocks_n` column blocks, then the next group. A group's A rows are read once if
    they fit in the L2 (else once per column block); B is read once if it fits (else once per group). A threshold
    model: an operand is reused if it fits the L2, and streamed again if not."""
    if l2_bytes is None:
        return a_bytes, b_bytes
    group = min(group_m, blocks_m)
    groups = -(-blocks_m // group)
    a_group = group * block_m_bytes
    return (a_bytes * (1 if a_group <= l2_bytes else blocks_n),
            b_bytes * (1 if b_bytes <= l2_bytes else groups))


def kernel_cost(launch, l2_bytes: int | None, group_m: int | None = None) -> tuple[int, int, float]:
    """(FLOPs, HBM bytes, L2 re-read factor of the operands) of one launch. `group_m` replaces the gate_up kernels'
    GROUP_M (ROWS_FASTEST: the old order)."""
    args = launch.args
    if launch.kind != "triton":
        ins, outs = args["inputs"], args["outputs"]
        written = sum(t.distinct_bytes for t in outs)
        if launch.name in _GATHERS:
            read = written + sum(t.distinct_bytes for t in ins if not t.dtype.startswith(("float", "bfloat")))
        else:
            read = sum(t.distinct_bytes for t in (ins[1:] if launch.name in _OVERWRITES else ins))
        flops = 0
        if launch.kind == "cublas":
            a, b = ins[-2], ins[-1]  # addmm/baddbmm: (bias, a, b)
            batch = max(a.shape[0], b.shape[0]) if len(a.shape) == 3 else 1
            flops = 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        return flops, read + written, 1.0
    name, grid = launch.name, launch.grid
    t = lambda key: args[key]
    if name == "_swiglu_gate_up":
        M, N, K, batch = t("M"), t("N_HALF"), t("K"), grid[2]
        e, out_e = t("a_ptr").itemsize, t("h_ptr").itemsize
        a_bytes, b_bytes = M * K * e, 2 * N * K * t("b_ptr").itemsize
        blocks_m, blocks_n = -(-M // t("BLOCK_M")), -(-N // t("BLOCK_N"))
        a_read, b_read = _gate_up_reads(a_bytes, b_bytes, blocks_m, blocks_n, t("BLOCK_M") * K * e,
                                        group_m or t("GROUP_M"), l2_bytes)
        # the token form (batch > 1): B is the same weight for every batch element, in L2 after the first
        reads = batch * a_read + (b_read if batch == 1 else b_bytes)
        if t("RECOMPUTE"):
            io = batch * M * N * out_e * (1 + 2)  # reads dh, writes d gate_up
        else:
            io = batch * M * N * out_e * (1 + (2 if t("SAVE") else 0))  # writes h (and gate/up)
        factor = reads / (batch * a_bytes + b_bytes)
        return 2 * batch * M * K * 2 * N, reads + io, factor
    if name == "_swiglu_bwd_elementwise":
        return 0, t("n_rows") * t("N_HALF") * t("gu_ptr").itemsize * 5, 1.0  # gu, dh read; d gate_up written
    if name in ("_add_rms_norm_fwd", "_rms_norm_bwd"):
        rows, cols, e = t("n_rows"), t("n_cols"), t("y_ptr").itemsize
        tensors = 3 + (2 if name == "_add_rms_norm_fwd" and t("HAS_INJECT") else 0) + (
            1 if name == "_rms_norm_bwd" and t("HAS_DSUM") else 0)  # x, r, y / dy, y, dx (+ inject, sum / + dsum)
        return 0, rows * cols * e * tensors + rows * 4, 1.0
    if name in ("_add_rms_norm_seq_fwd", "_rms_norm_seq_bwd"):
        B, L, D = t("y_ptr").shape
        return 0, B * L * D * t("y_ptr").itemsize * 3 + B * D * 4, 1.0
    if name.startswith("_attn"):
        qkv = t("qkv_ptr") if "qkv_ptr" in args else t("o_ptr")
        B, L = qkv.shape[:2]
        H, hd, e = t("H"), t("HEAD_DIM"), qkv.itemsize
        act, rows = B * L * H * hd * e, B * H * L * 4  # one (B, L, D) activation; one fp32 value per (b, h, row)
        tables = 2 * L * hd * 4 if args.get("ROPE") else 0
        if name == "_attn_bwd_preprocess":
            return 0, 2 * act + rows, 1.0  # o, dO read; delta written
        # L x L x hd products per (b, h): forward S = QK^T, O = PV; dK/dV recomputes S, then dV, dP, dK; dQ
        # recomputes S and dP, then dQ
        products = {"_attn_fwd": 2, "_attn_bwd_dkdv": 4, "_attn_bwd_dq": 3}[name] * B * H * L * L * hd
        written = {"_attn_fwd": act + rows, "_attn_bwd_dkdv": 2 * act, "_attn_bwd_dq": act}[name]
        read = 3 * act + tables + (0 if name == "_attn_fwd" else act + 2 * rows)  # qkv (+ dO, lse, delta)
        return 2 * products, read + written, 1.0
    if name == "_sum_over_batch_abt":
        M, N, K, B, e = t("M"), t("N"), t("K"), t("n_batch"), t("p_ptr").itemsize
        return 2 * B * M * N * K, B * (M + N) * K * e + grid[2] * M * N * 4, 1.0
    if name == "_token_mixer_fused":
        # gate and up (2I x L by L x D), down (L x I by I x D) per batch element; x read and y written once, the
        # weights from HBM once (every program re-reads them from L2: BLOCK_D FLOP per byte, not charged here); for
        # a backward h and rstd written too (SAVE_H), and gate/up (SAVE_GU)
        L, D, I, e = t("L"), t("D"), t("I"), t("x_ptr").itemsize
        B = grid[0] // -(-D // t("BLOCK_D"))
        weights = 3 * I * L * t("wgu_ptr").itemsize
        saved = (B * I * D * e + B * D * 4 if t("SAVE_H") else 0) + (2 * B * I * D * e if t("SAVE_GU") else 0)
        return 2 * B * D * (2 * I * L + L * I), 2 * B * L * D * e + weights + saved, 1.0
    if name in ("_token_cross_entropy_fwd", "_token_cross_entropy_bwd"):
        # logits and labels read once (the backward's second pass over a row's columns hits L1); the forward writes
        # three (B,) values, the backward reads the upstream gradient and count and writes d logits
        logits, labels, B = t("x_ptr"), t("y_ptr"), grid[0]
        read = logits.distinct_bytes + labels.distinct_bytes
        if name == "_token_cross_entropy_fwd":
            return 0, read + B * (t("loss_ptr").itemsize + 2 * 8), 1.0
        return 0, read + B * (t("g_ptr").itemsize + 8) + t("dx_ptr").distinct_bytes, 1.0
    raise ValueError(f"roofline: no cost model for Triton kernel {name}")


def roofline(launches, hardware, group_m: int | None = None) -> dict:
    """Per kernel (grouped by phase, name and shapes): calls, FLOPs, HBM bytes, L2 re-read factor and lower-bound
    milliseconds on `hardware` (timing.Hardware); the sum, the compute-only floor and the launch count."""
    from trm_fast.tools.bench.launches import summary

    rate, bandwidth = hardware.bf16_tflops * 1e12, hardware.hbm_tbs * 1e12
    rows: dict[tuple, dict] = {}
    total_s = flops_total = 0.0
    for launch in launches:
        flops, nbytes, factor = kernel_cost(launch, hardware.l2_bytes, group_m)
        seconds = max(flops / rate, nbytes / bandwidth)
        total_s += seconds
        flops_total += flops
        shapes = launch.args.get("inputs", [v for v in launch.args.values() if hasattr(v, "shape")])
        key = (launch.phase, launch.kind, launch.name, " ".join("x".join(map(str, s.shape)) for s in shapes[:3]))
        row = rows.setdefault(key, {"phase": key[0], "kind": key[1], "kernel": key[2], "shapes": key[3], "calls": 0,
                                    "gflop": 0.0, "hbm_mb": 0.0, "l2_reread": factor, "ms": 0.0,
                                    "bound": "compute" if flops / rate >= nbytes / bandwidth else "memory"})
        row["calls"] += 1
        row["gflop"] += flops / 1e9
        row["hbm_mb"] += nbytes / 1e6
        row["ms"] += seconds * 1e3
    return {"hardware": dataclasses.asdict(hardware), "ms": total_s * 1e3, "compute_floor_ms": flops_total / rate * 1e3,
            "launches": summary(launches), "kernels": sorted(rows.values(), key=lambda r: -r["ms"])}


def roofline_ms(launches, hardware) -> float:
    return roofline(launches, hardware)["ms"]


PRINTED_MS = 0.05  # kernels below this many ms per step are summed into one printed row (the JSON has them all)


def roofline_batch(preset: str) -> int:
    """The batch the roofline is reported at: the published 768 for Sudoku, 192 (the per-GPU share) for the rest."""
    return 768 if preset.startswith("sudoku") else 192


def run_roofline(presets: list[str], batch: int | None, levels, gpu: str | None, overrides: list[str],
                 group_m: int | None = None, log=print) -> dict:
    """`trm-fast bench roofline`: the model per preset and level on `gpu` (a ROOFLINE_GPUS name), or, with
    gpu=None on a GPU, with this device's measured matmul rate, copy bandwidth and L2 size."""
    from trm_fast.tools.bench.launches import count_step_launches
    from trm_fast.tools.bench.report import markdown_table
    from trm_fast.tools.bench.timing import ROOFLINE_GPUS, measured_hardware

    hardware = ROOFLINE_GPUS[gpu] if gpu else measured_hardware() or ROOFLINE_GPUS["h100"]
    arch = hardware.arch
    log(f"roofline on {hardware.name}: {hardware.bf16_tflops:.0f} TFLOP/s bf16, {hardware.hbm_tbs:.2f} TB/s, "
        + (f"L2 {hardware.l2_bytes / 2**20:.0f} MiB" if hardware.l2_bytes else "L2 size unknown (no re-reads charged)")
        + f"; sm_{arch} launch tables"
        + (" ; gate_up tile order: row blocks fastest (before issue 14)" if group_m == ROWS_FASTEST else ""))
    results = []
    for preset in presets:
        config = TRMConfig.preset(preset).override(list(overrides))
        b = batch or roofline_batch(preset)
        for level in levels:
            model = roofline(count_step_launches(config, b, level, arch), hardware, group_m)
            results.append({"preset": preset, "batch": b, "level": level} | model)
            log(f"\n## {preset} @ {b}, level {level}\n")
            shown = [r for r in model["kernels"] if r["ms"] >= PRINTED_MS]
            rest = model["kernels"][len(shown):]
            if rest:
                shown.append({"phase": "-", "kind": "-", "kernel": f"({len(rest)} smaller rows)",
                              "calls": sum(r["calls"] for r in rest), "hbm_mb": sum(r["hbm_mb"] for r in rest),
                              "ms": sum(r["ms"] for r in rest)})
            log(markdown_table([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in shown],
                               ["phase", "kind", "kernel", "shapes", "calls", "gflop", "hbm_mb", "l2_reread", "ms",
                                "bound"]))
            n = model["launches"]
            log(f"\nsum {model['ms']:.2f} ms; compute-only floor {model['compute_floor_ms']:.2f} ms; {n['total']} "
                f"launches ({n['triton']} Triton, {n['cublas']} cuBLAS, {n['aten']} other aten; "
                f"{n['weight_casts']} weight casts)")
    log("\n" + markdown_table([{k: r[k] for k in ("preset", "batch", "level", "ms", "compute_floor_ms")}
                                | {"launches": r["launches"]["total"]} for r in results],
                               ["preset", "batch", "level", "ms", "compute_floor_ms", "launches"]))
    return {"hardware": dataclasses.asdict(hardware), "arch": arch, "group_m_override": group_m, "results": results}


def step_jobs(presets, overrides, levels, only, gpu: bool | None = None) -> list[tuple[str, str, TRMConfig, bool]]:
    """(preset, contender, config, compiled) in the order they run, each pass over every preset: eager (the ratios'
    baseline), trm_fast at the first two levels given (0 and 1 by default: which is faster is the open question),
    the CUDA-graph contender, the remaining levels, and torch.compile last (its compile takes minutes on a cold
    machine), so a run cut short by --budget-s keeps the main figures."""
    jobs = []
    for preset in presets:
        for name, (cfg, compiled) in contender_configs(bench_config(preset, overrides), levels, gpu).items():
            if name == "eager" or selected(name, only):
                jobs.append((preset, name, cfg, compiled))

    order = (["eager"] + [f"trm_fast-L{lv}" for lv in levels[:2]] + [f"trm_fast-L{levels[0]}-graph"]
             + [f"trm_fast-L{lv}" for lv in levels[2:]] + ["compile"])
    return sorted(jobs, key=lambda j: order.index(j[1]))  # stable: presets keep their order within a pass


def run_step(presets: list[str], batches: dict[str, int], quick: bool, levels, overrides: list[str], ceilings: dict,
             deadline: Deadline, notes: list[str], only: list[str] | None = None, log=print, emit=None) -> list[dict]:
    from trm_fast.tools.memory import estimate, saved_bytes_per_step

    device = torch.device("cuda" if on_gpu() else "cpu")
    peak = datasheet_peak_tflops()
    if not on_gpu():
        notes.append("CPU: the presets at reduced width (" + ", ".join(CPU_SHRINK) + "), eager and torch.compile only")
    warmup, reps = (2, 5) if quick else (3, 10)
    results: dict[str, dict] = {p: {} for p in presets}
    counted: dict[str, dict] = {}

    hardware = None
    if ceilings.get("matmul_tflops") and ceilings.get("copy_bandwidth_gbs"):
        hardware = Hardware(device_name(), ceilings["matmul_tflops"], ceilings["copy_bandwidth_gbs"] / 1e3,
                            ceilings.get("l2_bytes"), 90 if torch.cuda.get_device_capability()[0] >= 9 else 80)
    rooflines: dict[tuple[str, int], float] = {}

    def roofline_of(preset: str, contender: str) -> float | None:
        """The roofline of the Triton path at the contender's level (level 0 for eager and compile)."""
        if hardware is None:
            return None
        level = contender_level(contender) or 0
        if (preset, level) not in rooflines:
            launches = count_step_launches(bench_config(preset, overrides), batches[preset], level, hardware.arch)
            rooflines[preset, level] = roofline_ms(launches, hardware)
        return rooflines[preset, level]

    def build_rows() -> list[dict]:
        rows = []
        for preset in presets:
            batch, tokens = batches[preset], batches[preset] * bench_config(preset, overrides).model.total_seq_len
            if not results[preset]:
                continue
            flops = counted[preset]["flops"] if preset in counted else None
            eager_ms = results[preset].get("eager", {}).get("ms")
            compile_ms = results[preset].get("compile", {}).get("ms")
            for name, r in results[preset].items():
                ms = r["ms"]
                roof = roofline_of(preset, name)
                tflops = flops / (ms * 1e-3) / 1e12 if flops else None
                rows.append({
                    "preset": preset, "batch": batch, "contender": name, "ms_per_step": ms, "steps_per_s": 1e3 / ms,
                    "tokens_per_s": tokens / (ms * 1e-3), "flops_per_step": flops, "model_tflops": tflops,
                    "mfu_datasheet": tflops / peak if tflops and peak else None,
                    "mfu_measured_matmul": tflops / ceilings["matmul_tflops"] if tflops and ceilings.get("matmul_tflops") else None,
                    "roofline_ms": roof, "roofline_fraction": roof / ms if roof else None,
                    "compile_s": r["compile_s"], "peak_memory_bytes": r["peak"],
                    "predicted_peak_bytes": r["predicted"], "saved_for_backward_bytes": r["saved"],
                    "speedup_vs_eager": eager_ms / ms if eager_ms else None,
                    "speedup_vs_compile": compile_ms / ms if compile_ms else None,
                })
        return rows

    def measure(job) -> tuple:
        preset, name, cfg, compile_model = job
        batch = batches[preset]
        runner = StepRunner(cfg, batch, device, compile_model, graphed=name.endswith("-graph"))
        set_up, start = 1, time.perf_counter()
        if name == "eager":  # the count is also the eager contender's first warm-up step
            counted[preset] = count_step(runner)
        elif runner.graphed is not None:  # its eager warm-up steps and the capture stay out of the timed calls
            set_up = runner.graphed.warmup_steps + 1
            for _ in range(set_up):
                runner()
            if runner.graphed is None:
                raise RuntimeError("CUDA-graph capture failed (see the line above); no graph figures")
        else:  # the first call compiles (torch.compile; Triton's JIT on a cold cache)
            runner()
        synchronize()
        first_s = time.perf_counter() - start
        ms = measure_calls(runner, max(0, warmup - 1), reps)
        # set-up time apart from the step time: the first call(s) less what they would take at the steady rate
        compile_s = None if name == "eager" else max(0.0, first_s - set_up * ms / 1e3)
        mem = peak_memory(runner)
        # saved-tensor hooks would make torch.compile fall back to eager: the compiled model's saved bytes are
        # not counted this way (bench memory reports what it holds after the forward instead)
        saved = None if compile_model else saved_bytes_per_step(runner.model, batch, device)
        level = contender_level(name) or 0
        predicted = estimate(cfg, batch, device.type)["levels"][level]["peak"]
        return ms, mem, saved, compile_s, predicted

    jobs = [(f"{preset}@{batches[preset]}: {name}", compiled, (preset, name, cfg, compiled))
            for preset, name, cfg, compiled in step_jobs(presets, overrides, levels, only)]
    for (preset, name, _, _), (ms, mem, saved, compile_s, predicted) in run_contenders(jobs, measure, deadline, notes,
                                                                                      log):
        results[preset][name] = {"ms": ms, "peak": mem, "saved": saved, "compile_s": compile_s, "predicted": predicted}
        log(f"  {preset}@{batches[preset]} {name}: {ms:.2f} ms/step"
            + (f" (set-up {compile_s:.1f} s)" if compile_s is not None else "")
            + (f", peak {mem / 2**30:.2f} GiB (predicted {predicted / 2**30:.2f})" if mem else "")
            + (f", saved {saved / 2**20:.1f} MiB" if saved is not None else ""))
        if emit is not None:
            emit(build_rows())
    return build_rows()
