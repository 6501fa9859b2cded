"""Whether each fused op's Triton implementation works on this machine: every op, forward and backward, at a model's
widths and sequence length with small batches, against the plain-PyTorch reference under the error rule
(trm_fast.ops.accuracy). A kernel that fails to compile, raises, or misses the rule fails its op.

The batches: Triton specialises an integer argument on whether it is a multiple of 16, so M = B * L (the rows of the
channel ops) divisible by 16 and not are two different compiled kernels. A small batch of each kind is checked
(check_batches), so the specialisation a training batch hits is among them.

Used by `model.backend=auto` on CUDA (trm_fast.ops.fallback: the verdict decides which ops fall back to the
reference) and by `trm-fast doctor` (trm_fast.tools.doctor, which adds timings and a training step). The Triton op
modules are imported inside the functions: TRITON_INTERPRET must be set before the first kernel module is imported.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trm_fast.config import ModelConfig
from trm_fast.ops import OP_NAMES, get_ops, reference
from trm_fast.ops.accuracy import ErrorCheck, error_rule

# The forms of each op the model calls: the norm's `inject` output (y + inject from the same kernel), the SwiGLUs'
# `recompute` backward (the gate_up matmul re-run with the derivative in its epilogue) and the sub-layers'
# `post_norm` (the norm run inside the op, the residual's gradient added by the last backward matmul) run other
# kernels or other code; the token loss is either kind (train.loss). A variant's name lists its flags, joined by "+".
# "nograd": called without grad (outputs only), where the token-mixing sub-layer and its post-norm are one kernel
# (kernels/token_mixer.py) at sequences it fits.
VARIANTS = {
    "add_rms_norm": ("plain", "inject"),
    "add_rms_norm_seq": ("plain",),
    "swiglu": ("plain", "recompute", "post_norm", "post_norm+recompute+inject"),
    "swiglu_token_mix": ("plain", "recompute", "post_norm", "post_norm+nograd"),
    "attention": ("plain", "post_norm"),
    "token_cross_entropy": ("stablemax", "softmax"),
}
OUTPUT_NAMES = {"token_cross_entropy": ("loss", "valid", "correct")}  # the others: ("y", "y + inject")
IGNORE_LABEL = -100  # the token loss's unsupervised label in the checks (the trainer's: trm_fast.data.format)


@dataclass(frozen=True)
class CheckShape:
    """The widths the ops run at: sequence length with the puzzle tokens, hidden size, heads, the channel and the
    token-mixing SwiGLU hidden sizes, whether attention applies RoPE, and the vocabulary (the token loss's logits,
    checked at (B, L, V))."""

    L: int
    D: int
    H: int
    I: int
    Im: int
    rope: bool
    V: int

    @classmethod
    def of(cls, config: ModelConfig) -> "CheckShape":
        # an MLP-mixer model calls no attention; the doctor still checks it, in the RoPE form attention models use
        rope = config.pos_encoding == "rope" or config.mixer == "mlp"
        return cls(config.total_seq_len, config.hidden_size, config.num_heads, config.mlp_hidden,
                   config.token_mix_hidden, rope, config.vocab_size)

    def key(self) -> str:
        return f"L={self.L},D={self.D},H={self.H},I={self.I},Im={self.Im},rope={int(self.rope)},V={self.V}"


def check_batches(L: int) -> tuple[int, ...]:
    """The smallest batch whose B * L is not a multiple of 16 (none when L is) and the smallest whose B * L is."""
    multiple = 16 // math.gcd(L, 16)
    return (1, multiple) if multiple > 1 else (1,)


@dataclass
class CaseResult:
    """One form of one op at one batch: its label, whether it passed, the first failure, each compared tensor's
    errors, and how long its first call (Triton compiles there) took."""

    op: str
    label: str
    batch: int
    ok: bool = True
    error: str | None = None
    first_call_s: float = 0.0
    compared: dict[str, ErrorCheck] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"label": self.label, "batch": self.batch, "ok": self.ok, "error": self.error,
                "first_call_s": round(self.first_call_s, 3),
                "compared": {name: {"error": c.ours, "torch_error": c.torch, "ok": c.ok}
                             for name, c in self.compared.items()}}


@dataclass
class OpVerdict:
    op: str
    ok: bool
    error: str | None  # the first failing case's label and reason
    cases: list[CaseResult]

    def to_json(self) -> dict:
        return {"ok": self.ok, "error": self.error}


# ---------------------------------------------------------------------------------------------- one case


def _randn(shape, generator: torch.Generator, device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=generator) * scale).to(device)


def case_inputs(op: str, variant: str, shape: CheckShape, batch: int, device, seed: int = 0):
    """fp32 inputs of one case on `device`: (activations, weights, fixed inputs (RoPE tables, labels) or None,
    upstream gradients for each differentiable output). Weights are scaled by 1/sqrt(fan-in) like the model's."""
    g = torch.Generator().manual_seed(seed)
    B, L, D = batch, shape.L, shape.D
    if op == "token_cross_entropy":  # logits of the spread the model's reach; a third of the tokens unsupervised
        labels = torch.randint(0, shape.V, (B, L), generator=g)
        labels[:, ::3] = IGNORE_LABEL
        return {"logits": _randn((B, L, shape.V), g, device, 4.0)}, {}, labels.to(device), [_randn((B,), g, device)]
    acts = {"x": _randn((B, L, D), g, device, 0.5)}
    weights, tables = {}, None
    if op in ("add_rms_norm", "add_rms_norm_seq"):
        acts["residual"] = _randn((B, L, D), g, device)
    elif op == "swiglu":
        weights = {"w_gate_up": _randn((2 * shape.I, D), g, device, D ** -0.5),
                   "w_down": _randn((D, shape.I), g, device, shape.I ** -0.5)}
    elif op == "swiglu_token_mix":
        weights = {"w_gate_up": _randn((2 * shape.Im, L), g, device, L ** -0.5),
                   "w_down": _randn((L, shape.Im), g, device, shape.Im ** -0.5)}
    elif op == "attention":
        weights = {"w_qkv": _randn((3 * D, D), g, device, D ** -0.5), "w_o": _randn((D, D), g, device, D ** -0.5)}
        if shape.rope:
            tables = tuple(t.to(device) for t in reference.rope_cos_sin(L, D // shape.H))
    else:
        raise ValueError(f"self-check: {op!r} is not a fused op; the ops are {', '.join(OP_NAMES)}")
    if "inject" in variant.split("+"):
        acts["inject"] = _randn((B, L, D), g, device)
    outputs = 2 if "inject" in acts else 1
    upstream = [_randn((B, L, D), g, device) for _ in range(outputs)]
    return acts, weights, tables, upstream


def _apply(op: str, variant: str, implementation: str, acts: dict, weights: dict, tables, shape: CheckShape):
    fn = getattr(get_ops(implementation), op)
    flags = set(variant.split("+"))
    inject = {"inject": acts["inject"]} if "inject" in acts else {}
    if op in ("add_rms_norm", "add_rms_norm_seq"):
        return fn(acts["x"], acts["residual"], **inject)
    post_norm = {"post_norm": True, **inject} if "post_norm" in flags else {}
    if op in ("swiglu", "swiglu_token_mix"):
        return fn(acts["x"], weights["w_gate_up"], weights["w_down"], recompute="recompute" in flags, **post_norm)
    if op == "token_cross_entropy":
        return fn(acts["logits"], tables, variant, IGNORE_LABEL)
    cos, sin = tables if tables is not None else (None, None)
    return fn(acts["x"], weights["w_qkv"], weights["w_o"], cos, sin, shape.H, **post_norm)


def run_case(op: str, variant: str, implementation: str, dtype: torch.dtype, inputs, shape: CheckShape) -> dict:
    """The outputs and every input's gradient of one call: activations in `dtype`, fp32 master weights (as the
    model holds them). Returns {name: tensor}: "y" (and "y + inject"; the token loss's "loss", "valid",
    "correct"), "d x", "d w_gate_up", "d logits", ..."""
    acts32, weights32, tables, upstream = inputs
    grad = "nograd" not in variant.split("+")
    acts = {name: t.to(dtype).requires_grad_(grad) for name, t in acts32.items()}
    weights = {name: t.clone().requires_grad_(grad) for name, t in weights32.items()}
    with torch.set_grad_enabled(grad):
        out = _apply(op, variant, implementation, acts, weights, tables, shape)
    outs = tuple(out) if isinstance(out, tuple) else (out,)
    if not grad:
        return {name: o for name, o in zip(OUTPUT_NAMES.get(op, ("y", "y + inject")), outs)}
    leaves = {**acts, **weights}
    differentiable = outs[:len(upstream)]
    grads = torch.autograd.grad(differentiable, list(leaves.values()),
                                [u.to(o.dtype) for u, o in zip(upstream, differentiable)])
    results = {name: o.detach() for name, o in zip(OUTPUT_NAMES.get(op, ("y", "y + inject")), outs)}
    results.update({f"d {name}": g for name, g in zip(leaves, grads)})
    return results


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def check_case(op: str, variant: str, shape: CheckShape, batch: int, device, dtype: torch.dtype) -> CaseResult:
    """The Triton form against the reference in `dtype` and in fp32, under the error rule (in fp32 the reference in
    `dtype` is the fp32 one). Anything the Triton call raises fails the case with its first line."""
    device = torch.device(device)
    label = f"{op}[{variant}, B={batch}]" if variant != "plain" else f"{op}[B={batch}]"
    result = CaseResult(op, label, batch)
    inputs = case_inputs(op, variant, shape, batch, device)
    reference32 = run_case(op, variant, "torch", torch.float32, inputs, shape)
    same = reference32 if dtype == torch.float32 else run_case(op, variant, "torch", dtype, inputs, shape)
    start = time.perf_counter()
    try:
        ours = run_case(op, variant, "triton", dtype, inputs, shape)
        _synchronize(device)
    except Exception as exc:  # a compile error, a launch failure, a bad config: the op does not work here
        result.ok, result.error = False, f"{label}: {_first_line(exc)}"
        return result
    finally:
        result.first_call_s = time.perf_counter() - start
    for name, expected in reference32.items():
        got = ours.get(name)
        if got is None or got.shape != expected.shape:
            check = ErrorCheck(math.inf, 0.0, False)
        else:
            check = error_rule(got, same[name], expected)
        result.compared[name] = check
        if not check.ok and result.ok:
            result.ok, result.error = False, f"{label} {name}: {check.describe()}"
    return result


# ---------------------------------------------------------------------------------------------- every op


def check_ops(shape: CheckShape, device, dtype: torch.dtype, ops: tuple[str, ...] = OP_NAMES,
              batches: tuple[int, ...] | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, OpVerdict]:
    """op -> verdict over every variant of VARIANTS at every batch of check_batches(shape.L) (or `batches`).
    `progress(line)` is told each op's outcome as it finishes (the first calls compile kernels: seconds each)."""
    batches = batches or check_batches(shape.L)
    verdicts = {}
    for index, op in enumerate(ops, 1):
        start = time.perf_counter()
        cases = [check_case(op, variant, shape, batch, device, dtype) for batch in batches for variant in VARIANTS[op]]
        failed = [c for c in cases if not c.ok]
        verdicts[op] = OpVerdict(op, not failed, failed[0].error if failed else None, cases)
        if progress is not None:
            outcome = "ok" if not failed else f"FAILED: {failed[0].error}"
            progress(f"[{index}/{len(ops)}] {op}: {outcome} ({time.perf_counter() - start:.1f} s)")
    return verdicts
