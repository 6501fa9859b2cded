"""`trm-fast doctor`: does the fast path work on this machine?

    trm-fast doctor [--device DEV] [--preset P] [--full] [--json FILE]

Prints the device and the software, then checks every fused op (trm_fast.ops.self_check: forward and backward of
each form, at the preset's widths and sequence length with small batches whose B * L is and is not a multiple of 16)
against the fp32 reference next to PyTorch's own error in the same precision, runs one training step of the preset
on the implementations `model.backend=auto` would choose against the reference (loss and gradient agreement, time,
peak memory against the memory model), and ends with a verdict per op, the recommended backend and recompute level.
`--full` adds each op's time against PyTorch eager at the preset's published batch. Exit status 1 when an op fails
or the step disagrees.

Without a GPU it says so and checks the kernels in Triton's interpreter at tiny widths in fp32 (seconds), and lists
what that does not cover.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from trm_fast.config import PRESETS

DEFAULT_PRESET = "sudoku-mlp"
# Triton's interpreter runs about a millisecond per program instance: tiny widths, and a step of one block, T = n = 1
INTERPRETER_OVERRIDES = ("model.hidden_size=32", "model.num_heads=1", "model.seq_len=6", "model.puzzle_emb_len=2",
                         "model.T=1", "model.n=1", "model.num_blocks=1", "model.halt_max_steps=2")
INTERPRETER_NOT_COVERED = (
    "compilation for a real GPU (PTX, ptxas, the launch configurations of the preset widths, register and shared "
    "memory limits)", "bf16", "the preset's widths, sequence length and batch", "timings", "peak GPU memory")
STEP_BATCH = 8  # samples of the training step (its peak memory is compared with the memory model at this batch)
MEMORY_HEADROOM = 0.9  # the recommended recompute level leaves this fraction of the GPU's memory to the run


def add_doctor_subparser(sub) -> None:
    p = sub.add_parser("doctor", help="check that the Triton kernels work on this machine (per op, and one step)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (default: the GPU when there is one)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"the widths and sequence length to check at (default {DEFAULT_PRESET})")
    p.add_argument("--full", action="store_true", help="also time each op against PyTorch eager at the published batch")
    p.add_argument("--json", metavar="FILE", help="also write the report here")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    import torch

    name = args.device
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device {name}: the doctor checks a CUDA GPU or, in Triton's interpreter, the CPU")
    if device.type == "cpu":
        _use_interpreter()
    report = run_doctor(args.preset, device, full=args.full, log=print)
    if args.json:
        from trm_fast.files import atomic_write_json

        atomic_write_json(args.json, report)
        print(f"written: {args.json}")
    return 0 if report["ok"] else 1


def _use_interpreter() -> None:
    """Kernels read TRITON_INTERPRET when they are decorated, i.e. when their module is first imported."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    if any(m.startswith("trm_fast.kernels.") for m in sys.modules):
        raise ValueError("--device cpu: the Triton kernels were imported for a GPU in this process; run the doctor "
                         "in a fresh process (or with TRITON_INTERPRET=1)")
    os.environ["TRITON_INTERPRET"] = "1"


# ---------------------------------------------------------------------------------------------- the machine


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def _native_extension() -> bool:
    try:
        import trm_fast._maze  # noqa: F401
        import trm_fast._sudoku  # noqa: F401
    except ImportError:
        return False
    return True


def _driver_version() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "unknown (no nvidia-smi)"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"


def machine(device) -> dict:
    import torch

    import trm_fast

    info = {"device": str(device), "python": platform.python_version(), "torch": torch.__version__,
            "triton": _version("triton"), "numpy": _version("numpy"), "trm_fast": trm_fast.__version__,
            "native_extension": _native_extension()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_bytes=p.total_memory,
                    l2_bytes=getattr(p, "L2_cache_size", None), multiprocessors=p.multi_processor_count,
                    cuda=torch.version.cuda, driver=_driver_version())
    else:
        info.update(name=f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores), no GPU")
    return info


def _print_machine(info: dict, log) -> None:
    log(f"device:   {info['name']}")
    if "capability" in info:
        log(f"          compute capability {info['capability']}, {info['memory_bytes'] / 2**30:.1f} GiB, "
            f"L2 {info['l2_bytes'] / 2**20:.0f} MiB, {info['multiprocessors']} SMs" if info["l2_bytes"] else
            f"          compute capability {info['capability']}, {info['memory_bytes'] / 2**30:.1f} GiB")
        log(f"          driver {info['driver']}, CUDA {info['cuda']}")
    log(f"software: python {info['python']}, torch {info['torch']}, triton {info['triton']}, numpy {info['numpy']}, "
        f"trm_fast {info['trm_fast']}; native extension {'built' if info['native_extension'] else 'NOT built'}")


# ---------------------------------------------------------------------------------------------- the doctor


def doctor_config(preset: str, device):
    """The preset's configuration as the doctor runs it: tiny widths on a CPU (Triton's interpreter)."""
    from trm_fast.config import TRMConfig

    config = TRMConfig.preset(preset)
    overrides = ["model.self_check=false"]  # the doctor checks explicitly; the models it builds must not
    if device.type == "cpu":
        overrides += list(INTERPRETER_OVERRIDES)
        if config.model.puzzle_emb_dim:
            overrides.append("model.puzzle_emb_dim=32")
    return config.override(overrides)


def run_doctor(preset: str, device, full: bool = False, log=print) -> dict:
    """Every check; the report as a JSON-able dict ("ok": no op failed and the step agreed)."""
    import torch

    from trm_fast.ops import OP_NAMES, resolve
    from trm_fast.ops.self_check import CheckShape, check_batches, check_ops

    info = machine(device)
    _print_machine(info, log)
    config = doctor_config(preset, device)
    interpreted = device.type == "cpu"
    shape, dtype = CheckShape.of(config.model), resolve.forward_dtype(config.model, device)
    batches = check_batches(shape.L)
    if interpreted:
        log("no GPU: the kernels run in Triton's interpreter at tiny widths, in fp32")
    log(f"checking every fused op at {preset}'s shape{' (tiny widths)' if interpreted else ''}: L={shape.L}, "
        f"D={shape.D}, heads={shape.H}, SwiGLU I={shape.I}, token-mixing I={shape.Im}, vocabulary {shape.V}, "
        f"{str(dtype).replace('torch.', '')}, batches {', '.join(map(str, batches))} (first calls compile kernels)")
    verdicts = check_ops(shape, device, dtype, OP_NAMES, batches, progress=lambda line: log("  " + line))
    ops_report = {op: {"verdict": "ok" if v.ok else "failed", "error": v.error,
                       "cases": [c.to_json() for c in v.cases]} for op, v in verdicts.items()}
    for op, v in verdicts.items():
        for case in v.cases:
            worst = max(case.compared.values(), key=lambda c: c.ours, default=None)
            detail = case.error if not case.ok else (f"worst {worst.describe()}" if worst else "")
            log(f"    {case.label:36s} {'ok    ' if case.ok else 'FAILED'} first call {case.first_call_s:6.2f} s  "
                f"{detail}")
    implementations = {op: "triton" if verdicts[op].ok else "torch" for op in OP_NAMES}
    if full and not interpreted:
        log(f"timing every op at the published batch ({config.data.global_batch_size}) against PyTorch eager")
        for op in OP_NAMES:
            ops_report[op]["timing"] = time_op(op, shape, config.data.global_batch_size, device, dtype,
                                               verdicts[op].ok)
            t = ops_report[op]["timing"]
            log(f"  {op:18s} " + (f"triton {t['triton_ms']:.3f} ms, eager {t['torch_ms']:.3f} ms (forward + "
                                  f"backward), {t['torch_ms'] / t['triton_ms']:.2f}x" if t.get("triton_ms") else
                                  t["note"]))
    step = training_step(config, device, implementations, log)
    failed = [op for op in OP_NAMES if not verdicts[op].ok]
    recommended = recommend(config, device, implementations, failed, log)
    not_covered = list(INTERPRETER_NOT_COVERED) if interpreted else []
    if not full and not interpreted:
        not_covered.append("op timings at the published batch (--full)")
    log("verdict:")
    for op in OP_NAMES:
        log(f"  {op:18s} {'ok' if verdicts[op].ok else 'FAILED: ' + verdicts[op].error}")
    if not_covered:
        log("not covered here: " + "; ".join(not_covered))
    ok = not failed and step.get("ok", True)
    log(f"doctor: {'every op passed' if ok else 'PROBLEMS FOUND'}")
    return {"ok": ok, "preset": preset, "mode": "interpreter" if interpreted else "gpu", "machine": info,
            "shape": {"L": shape.L, "D": shape.D, "H": shape.H, "I": shape.I, "Im": shape.Im, "rope": shape.rope,
                      "V": shape.V, "dtype": str(dtype).replace("torch.", ""), "batches": list(batches)},
            "ops": ops_report, "training_step": step, "recommended": recommended, "not_covered": not_covered}


# ---------------------------------------------------------------------------------------------- timing


def time_op(op: str, shape, batch: int, device, dtype, works: bool) -> dict:
    """Median forward + backward milliseconds of the Triton op and of the reference on the same inputs."""
    import torch

    from trm_fast.ops.self_check import VARIANTS, case_inputs, run_case
    from trm_fast.tools.bench.timing import measure_calls

    if not works:
        return {"note": "not timed: the op failed its check"}
    try:
        variant = VARIANTS[op][0]
        inputs = case_inputs(op, variant, shape, batch, device)
        times = {impl: measure_calls(lambda: run_case(op, variant, impl, dtype, inputs, shape), 3, 10)
                 for impl in ("triton", "torch")}
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"note": f"not timed: batch {batch} does not fit in memory for one op"}
    return {"batch": batch, "triton_ms": times["triton"], "torch_ms": times["torch"]}


# ---------------------------------------------------------------------------------------------- one training step


def _one_step(model, batch: dict, device):
    """Loss and parameter gradients of one supervision step from a fresh carry."""
    import torch

    from trm_fast.train.act import SupervisionState, supervision_step

    B, L = batch["inputs"].shape
    state = SupervisionState.fresh(model, B, L, device)
    result = supervision_step(model, state, batch, step=0, seed=0, slot_index=torch.arange(B, device=device),
                              training=True)
    result.loss.total.backward()
    # kept on the host: the next run's peak memory is its own
    grads = {name: p.grad.detach().float().cpu() for name, p in model.named_parameters() if p.grad is not None}
    return result.loss.total.detach().float().cpu(), grads


def training_step(config, device, implementations: dict, log) -> dict:
    """One supervision step of the preset's model on the implementations `auto` would choose, against the same
    step on the reference in the same precision and in fp32 (the error rule on the loss and every gradient); its
    time and, on a GPU, its peak memory next to the memory model's."""
    import copy

    import torch

    from trm_fast.model import build_model
    from trm_fast.ops.accuracy import error_rule
    from trm_fast.ops.resolve import describe

    if all(impl == "torch" for impl in implementations.values()):
        log("training step: skipped (every op failed: nothing but the reference would run)")
        return {"skipped": "every op failed"}
    m = config.model
    B = STEP_BATCH
    g = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randint(1, m.vocab_size, (B, m.seq_len), generator=g).to(device),
             "labels": torch.randint(1, m.vocab_size, (B, m.seq_len), generator=g).to(device),
             "puzzle_identifiers": torch.zeros(B, dtype=torch.long, device=device)}
    torch.manual_seed(0)
    base = build_model(copy.deepcopy(m))
    runs = {}
    for label, overrides in (("fast", implementations), ("torch", "torch"), ("fp32", "torch")):
        model = copy.deepcopy(base)
        if label == "fp32":
            model.config.forward_dtype = "float32"
        model.override_ops(dict.fromkeys(implementations, overrides) if isinstance(overrides, str) else overrides)
        model = model.to(device).train()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            loss, grads = _one_step(model, batch, device)
        except Exception as exc:  # a kernel that passed alone and fails inside the model
            log(f"training step ({label}): raised {type(exc).__name__}: {exc}")
            return {"ok": False, "error": f"{label}: {type(exc).__name__}: {exc}"}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        runs[label] = {"loss": loss, "grads": grads, "seconds": time.perf_counter() - start,
                       "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
        del model
    fast, same, fp32 = runs["fast"], runs["torch"], runs["fp32"]
    checks = {"loss": error_rule(fast["loss"].view(1), same["loss"].view(1), fp32["loss"].view(1))}
    for name, grad in fp32["grads"].items():
        checks[f"d {name}"] = error_rule(fast["grads"][name], same["grads"][name], grad)
    failed = [f"{name}: {c.describe()}" for name, c in checks.items() if not c.ok]
    report = {"ok": not failed, "batch": B, "implementations": implementations, "failed": failed,
              "loss": {"fast": fast["loss"].item(), "torch": same["loss"].item(), "fp32": fp32["loss"].item()},
              "seconds": {"fast": fast["seconds"], "torch": same["seconds"]},
              "peak_bytes": {"fast": fast["peak_bytes"], "torch": same["peak_bytes"]}}
    log(f"training step (batch {B}, {describe(implementations)} against the reference): loss {report['loss']['fast']:.6f}"
        f" vs {report['loss']['torch']:.6f} (fp32 {report['loss']['fp32']:.6f}); "
        + ("loss and every gradient within the error rule" if not failed else "DISAGREES: " + "; ".join(failed[:3])))
    log(f"  time {fast['seconds'] * 1e3:.1f} ms vs {same['seconds'] * 1e3:.1f} ms (first step: includes compiles)")
    if device.type == "cuda":
        from trm_fast.tools.memory import estimate

        est = estimate(config, B, str(device), backend=implementations)
        fixed, level = est["fixed"], config.model.recompute
        # one step builds no optimiser moments and no EMA shadow
        predicted = est["levels"][level]["peak"] - fixed["optimizer"] - fixed["ema"]
        report["predicted_peak_bytes"] = predicted
        log(f"  peak memory {fast['peak_bytes'] / 2**20:.1f} MiB (reference {same['peak_bytes'] / 2**20:.1f} MiB); "
            f"the memory model predicts {predicted / 2**20:.1f} MiB at level {level} (without optimiser and EMA)")
    return report


# ---------------------------------------------------------------------------------------------- recommendation


def recommend(config, device, implementations: dict, failed: list[str], log) -> dict:
    """The backend (auto falls back per op; torch when nothing works) and the lightest recompute level whose
    predicted peak at the published batch fits in MEMORY_HEADROOM of the GPU's memory."""
    import torch

    if len(failed) == len(implementations):
        backend = "torch"
    elif failed:
        backend = f"auto (runs the reference for {', '.join(failed)})"
    else:
        backend = "auto (every op on Triton)"
    level = None
    if device.type == "cuda":
        from trm_fast.tools.memory import estimate

        limit = MEMORY_HEADROOM * torch.cuda.get_device_properties(device).total_memory
        batch = config.data.global_batch_size
        est = estimate(config, batch, str(device), backend=implementations)
        fitting = [lv for lv in (0, 1, 2) if est["levels"][lv]["peak"] <= limit]
        level = fitting[0] if fitting else None
        where = (f"recompute level {level} (predicted peak {est['levels'][level]['peak'] / 2**30:.1f} GiB at batch "
                 f"{batch})" if fitting else f"no recompute level fits batch {batch}: use --memory-budget")
    else:
        where = "recompute level: not applicable without a GPU"
    log(f"recommended: model.backend={backend}; {where}")
    return {"backend": backend.split(" ")[0], "detail": backend, "recompute": level}
