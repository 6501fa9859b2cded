"""Per-op benchmark: residual+norm (channel and sequence axis), SwiGLU, token-mixing SwiGLU, attention with RoPE and
the loss head, forward / backward / both, at the presets' shapes, every contender in the same run:

    eager                   the plain-PyTorch reference (trm_fast.ops.reference), as the published code runs it
    compile                 torch.compile of that reference (default mode)
    compile-max-autotune    torch.compile(mode="max-autotune-no-cudagraphs") of it (GPU only)
    liger                   Liger-Kernel where it has the op (optional import; GPU only)
    trm_fast                get_ops("triton") (GPU only)
    trm_fast-cublas         swiglu's contender "triton_cublas": the gate_up matmul on cuBLAS, silu * up in an
                            elementwise kernel (GPU only; the swiglu op only)

Each row also carries the op's FLOPs (counted once on the eager reference), the achieved TFLOP/s, and for the
memory-bound norms the achieved bandwidth over the fewest bytes the op must move, as a fraction of the measured
device-to-device copy bandwidth. A contender that cannot run an op is skipped with a note, never fatal.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trm_fast.config import swiglu_hidden
from trm_fast.ops import reference as R
from trm_fast.tools.bench.contenders import Deadline, run_contenders, selected
from trm_fast.tools.bench.timing import measure_op, measure_op_cudagraph, on_gpu


@dataclass(frozen=True)
class OpShape:
    name: str  # which presets use it
    batch: int
    seq: int  # sequence length including the 16 puzzle tokens
    hidden: int = 512
    heads: int = 8
    vocab: int = 11
    puzzle_len: int = 16
    mixer_ops: bool = True  # the MLP-mixer's ops (token-mixing SwiGLU, sequence-axis norm) belong to this shape

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.seq}x{self.hidden}"


def op_shapes(quick: bool, presets: list[str] | None = None, batch: int | None = None) -> list[OpShape]:
    """Sudoku (L = 16 + 81, batch 768) and Maze/ARC (L = 16 + 900, batch 192) on GPU; reduced on CPU."""
    if on_gpu():
        shapes = {"sudoku": OpShape("sudoku", 768, 97), "maze": OpShape("maze", 192, 916, vocab=6, mixer_ops=False)}
    elif quick:
        shapes = {"sudoku": OpShape("sudoku", 2, 24, hidden=64, heads=2, puzzle_len=4)}
    else:
        shapes = {"sudoku": OpShape("sudoku", 4, 97), "maze": OpShape("maze", 1, 916, vocab=6, mixer_ops=False)}
    wanted = ["sudoku"] if quick else list(shapes)
    if presets:
        wanted = list(dict.fromkeys("sudoku" if p.startswith("sudoku") else "maze" for p in presets))
    out = [shapes[w] for w in wanted if w in shapes]
    if batch:
        out = [OpShape(**{**s.__dict__, "batch": batch}) for s in out]
    return out


# ---------------------------------------------------------------------------------------------- Liger-Kernel


def liger_functions() -> dict:
    """Liger-Kernel's autograd Functions for the ops it has ({} when it is absent or does not import)."""
    found = {}
    for key, module, name in (("rms_norm", "liger_kernel.ops.rms_norm", "LigerRMSNormFunction"),
                              ("fused_add_rms_norm", "liger_kernel.ops.fused_add_rms_norm", "LigerFusedAddRMSNormFunction"),
                              ("silu_mul", "liger_kernel.ops.swiglu", "LigerSiLUMulFunction"),
                              ("rope", "liger_kernel.ops.rope", "LigerRopeFunction")):
        try:
            found[key] = getattr(__import__(module, fromlist=[name]), name)
        except Exception:  # absent, or built against another torch/triton
            pass
    return found


def _liger_add_rms_norm(liger, hidden, device):
    ones = torch.ones(hidden, device=device)  # Liger's norms have a gain; TRM's have none
    if "fused_add_rms_norm" in liger:
        fn = liger["fused_add_rms_norm"]
        return lambda x, r: fn.apply(x, r, ones.to(x.dtype), R.RMS_EPS, 0.0, "llama", False)[0]
    if "rms_norm" in liger:
        fn = liger["rms_norm"]
        return lambda x, r: fn.apply(r + x, ones.to(x.dtype), R.RMS_EPS, 0.0, "llama", False)
    return None


def _liger_swiglu(liger):
    if "silu_mul" not in liger:
        return None
    fn = liger["silu_mul"]

    def swiglu(x, w_gate_up, w_down):
        gate, up = R.linear(x, w_gate_up).chunk(2, dim=-1)
        return R.linear(fn.apply(gate, up), w_down)

    return swiglu


def _liger_attention(liger, cos, sin, heads):
    if "rope" not in liger:
        return None
    fn = liger["rope"]

    def attention(x, w_qkv, w_o):
        B, L, D = x.shape
        qkv = R.linear(x, w_qkv).view(B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
        q, k = fn.apply(qkv[0], qkv[1], cos[None].to(x.dtype), sin[None].to(x.dtype))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, qkv[2], is_causal=False)
        return R.linear(o.transpose(1, 2).reshape(B, L, D), w_o)

    return attention


# ---------------------------------------------------------------------------------------------- the ops


OP_NAMES = ("add_rms_norm", "swiglu", "add_rms_norm_seq", "swiglu_token_mix", "swiglu_token_mix_norm", "attention_rope",
            "loss_head")


@dataclass
class OpCase:
    name: str
    reference: object
    make_inputs: object  # () -> list of tensors (activations in the forward dtype, fp32 master weights)
    trm_fast: object = None
    liger: object = None
    trm_fast_cublas: object = None  # the op's "triton_cublas" contender, where it has one
    norm_elements: int = 0  # for memory-bound ops: elements of one (B, L, D) activation, for the byte floor
    note: str = ""


def op_cases(shape: OpShape, device: str, dtype: torch.dtype, notes: list[str]) -> list[OpCase]:
    from trm_fast.data.format import IGNORE_LABEL
    from trm_fast.train.losses import supervision_loss

    B, L, D, H = shape.batch, shape.seq, shape.hidden, shape.heads
    I, Im = swiglu_hidden(D), swiglu_hidden(L)
    g = torch.Generator().manual_seed(0)
    act = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)
    weight = lambda o, i: (torch.randn(o, i, generator=g) / i**0.5).to(device)
    cos, sin = (t.to(device) for t in R.rope_cos_sin(L, D // H))
    labels = torch.randint(1, shape.vocab, (B, L - shape.puzzle_len), generator=g).to(device)
    labels[:, :3] = IGNORE_LABEL  # some unsupervised tokens, as in real data

    fast = cublas = None
    if on_gpu():
        try:
            from trm_fast.ops import OP_NAMES, get_ops

            fast = get_ops("triton")
            cublas = get_ops({**dict.fromkeys(OP_NAMES, "triton"), "swiglu": "triton_cublas"})
        except Exception as exc:
            notes.append(f"trm_fast skipped: get_ops('triton') failed ({type(exc).__name__}: {str(exc)[:120]})")
    else:
        notes.append("trm_fast and Liger-Kernel (Triton kernels) are timed on GPUs only; this CPU run times eager "
                     "and torch.compile")
    liger = liger_functions() if on_gpu() else {}
    if on_gpu() and not liger:
        notes.append("Liger-Kernel not installed (optional): its column is absent")

    def loss_head(token_cross_entropy=None):
        def head(y, w_lm, w_q, b_q):
            logits = R.linear(y, w_lm)[:, shape.puzzle_len:]
            q = R.linear(y[:, 0], w_q, b_q).float()
            return supervision_loss(logits, labels, q[:, 0], q[:, 1], token_cross_entropy=token_cross_entropy).total
        return head

    act_pair = lambda: [act(B, L, D), act(B, L, D)]
    cases = [
        OpCase("add_rms_norm", R.add_rms_norm, act_pair, fast and fast.add_rms_norm,
               _liger_add_rms_norm(liger, D, device), norm_elements=B * L * D),
        OpCase("swiglu", R.swiglu, lambda: [act(B, L, D, scale=0.5), weight(2 * I, D), weight(D, I)],
               fast and fast.swiglu, _liger_swiglu(liger), trm_fast_cublas=cublas and cublas.swiglu),
    ]
    if shape.mixer_ops:
        cases += [
            OpCase("add_rms_norm_seq", R.add_rms_norm_seq, act_pair, fast and fast.add_rms_norm_seq,
                   norm_elements=B * L * D),
            OpCase("swiglu_token_mix", R.swiglu_token_mix, lambda: [act(B, L, D, scale=0.5), weight(2 * Im, L), weight(L, Im)],
                   fast and fast.swiglu_token_mix),
            OpCase("swiglu_token_mix_norm", lambda x, a, b: R.add_rms_norm_seq(R.swiglu_token_mix(x, a, b), x),
                   lambda: [act(B, L, D, scale=0.5), weight(2 * Im, L), weight(L, Im)],
                   fast and (lambda x, a, b: fast.swiglu_token_mix(x, a, b, post_norm=True)),
                   note="the sub-layer and its post-norm as the model calls them; trm_fast runs one kernel "
                        "(kernels/token_mixer.py) where L <= 128"),
        ]
    cases += [
        OpCase("attention_rope", lambda x, a, b: R.attention(x, a, b, cos, sin, H),
               lambda: [act(B, L, D, scale=0.5), weight(3 * D, D), weight(D, D)],
               fast and (lambda x, a, b: fast.attention(x, a, b, cos, sin, H)), _liger_attention(liger, cos, sin, H)),
        OpCase("loss_head", loss_head(),
               lambda: [act(B, L, D), weight(shape.vocab, D), weight(2, D) * 0.1, torch.full((2,), -5.0, device=device)],
               fast and loss_head(fast.token_cross_entropy),
               note="the heads' matmuls and the supervision loss; trm_fast's token loss (stablemax in float64) is one "
                    "Triton kernel each way; Liger's fused linear cross-entropy is a softmax loss, not this one"),
    ]
    return cases


def _modes(fn, base: list[torch.Tensor]):
    """Callables for forward (no grad), backward (through a kept graph) and both, and the forward output, on fresh
    leaf copies of the case's inputs (every contender sees the same values)."""
    inputs = [t.detach().clone().requires_grad_(True) for t in base]
    out = fn(*inputs)
    dy = torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out)

    def fwd():
        with torch.no_grad():
            return fn(*inputs)

    def bwd():
        torch.autograd.grad(out, inputs, dy, retain_graph=True, allow_unused=True)

    def both():
        torch.autograd.grad(fn(*inputs), inputs, dy, allow_unused=True)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}, out.detach()


def _flops(fn, base: list[torch.Tensor]) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    inputs = [t.detach().clone().requires_grad_(True) for t in base]
    with FlopCounterMode(display=False) as fwd_counter:
        out = fn(*inputs)
    with FlopCounterMode(display=False) as bwd_counter:
        torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True)
    f, b = fwd_counter.get_total_flops(), bwd_counter.get_total_flops()
    return {"fwd": f, "bwd": b, "fwd+bwd": f + b}


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


# Cheap contenders first, so a run cut short by --budget-s still has every op's eager / trm_fast / Liger figures.
CONTENDER_ORDER = ("eager", "trm_fast", "trm_fast-cublas", "liger", "compile", "compile-max-autotune")


def _time_contender(fn, base, quick: bool, notes: list[str], label: str) -> tuple[dict, torch.Tensor]:
    calls, out = _modes(fn, base)
    timings = {}
    for mode, call in calls.items():
        ms = measure_op(call, quick)
        graph_ms = None
        if mode == "fwd" and on_gpu():
            try:
                graph_ms = measure_op_cudagraph(call, quick)
            except Exception as exc:
                notes.append(f"{label}: CUDA-graph timing failed ({type(exc).__name__})")
        timings[mode] = (ms, graph_ms)
    return timings, out


def run_ops(shapes: list[OpShape], quick: bool, autotune: bool, ceilings: dict, deadline: Deadline,
            notes: list[str], only: list[str] | None = None, op_names: list[str] | None = None, log=print,
            emit=None) -> list[dict]:
    device = "cuda" if on_gpu() else "cpu"
    dtype = torch.bfloat16 if on_gpu() else torch.float32
    elt = torch.tensor([], dtype=dtype).element_size()
    copy_gbs = ceilings.get("copy_bandwidth_gbs")
    if autotune and not on_gpu():
        notes.append("torch.compile max-autotune is run on GPUs only")
    if autotune and on_gpu():
        notes.append("torch.compile max-autotune is run for the ops with matmuls (its templates are matmul templates; "
                     "for the norms it is the default compile)")
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    cases = []  # (shape, case, inputs, flops, {contender: fn})
    for shape in shapes:
        for case in op_cases(shape, device, dtype, notes):
            if op_names and case.name not in op_names:
                continue
            if case.note:
                notes.append(f"{case.name}: {case.note}")
            contenders = {"eager": case.reference, "trm_fast": case.trm_fast, "trm_fast-cublas": case.trm_fast_cublas,
                          "liger": case.liger,
                          "compile": lambda ref=case.reference: torch.compile(ref),
                          "compile-max-autotune": (lambda ref=case.reference: torch.compile(ref, mode="max-autotune-no-cudagraphs"))
                          if autotune and on_gpu() and not case.norm_elements else None}
            contenders = {k: v for k, v in contenders.items() if v is not None and (k == "eager" or selected(k, only))}
            base = case.make_inputs()
            cases.append((shape, case, base, _flops(case.reference, base), contenders))

    def build_rows() -> list[dict]:
        rows = []
        for shape, case, _, flops, contenders in cases:
            # fewest bytes of the norms: fwd reads x and residual, writes y; bwd reads dy and y, writes dx (the fp32
            # per-row statistics, under 1% of that at these widths, are left out)
            rows_bytes = 3 * case.norm_elements * elt
            floor = {"fwd": rows_bytes, "bwd": rows_bytes, "fwd+bwd": 2 * rows_bytes}
            eager = results.get((case.name, shape.label, "eager"))
            for contender in contenders:
                if (case.name, shape.label, contender) not in results:
                    continue
                timings, err = results[(case.name, shape.label, contender)]
                for mode, (ms, graph_ms) in timings.items():
                    row = {"op": case.name, "shape": shape.label, "preset_shape": shape.name, "mode": mode,
                           "contender": contender, "ms": ms, "ms_cudagraph": graph_ms,
                           "speedup_vs_eager": eager[0][mode][0] / ms if eager else None,
                           "flops": flops[mode], "tflops": flops[mode] / (ms * 1e-3) / 1e12 if flops[mode] else None,
                           "rel_err_vs_eager": err}
                    if case.norm_elements:
                        row["gbs"] = floor[mode] / (ms * 1e-3) / 1e9
                        row["copy_bw_fraction"] = row["gbs"] / copy_gbs if copy_gbs else None
                    rows.append(row)
        return rows

    results = {}  # (op, shape label, contender) -> ({mode: (ms, graph_ms)}, rel_err)
    reference_out = {}
    jobs = [(f"{case.name} {shape.label} {contender}:", contender.startswith("compile"),
             (shape, case, base, contender, contenders[contender]))
            for contender in CONTENDER_ORDER for shape, case, base, _, contenders in cases if contender in contenders]

    def measure(job) -> tuple[dict, torch.Tensor]:
        shape, case, base, contender, fn = job
        fn = fn() if contender.startswith("compile") else fn
        return _time_contender(fn, base, quick, notes, f"{case.name} {shape.label} {contender}")

    for (shape, case, _, contender, _), (timings, out) in run_contenders(jobs, measure, deadline, notes, log):
        key = (case.name, shape.label)
        if contender == "eager":
            reference_out[key] = out
        err = _rel_err(out, reference_out[key]) if key in reference_out else None
        results[(*key, contender)] = (timings, err)
        log(f"  {case.name} {shape.label} {contender}: " + ", ".join(f"{m} {t[0]:.3f} ms" for m, t in timings.items()))
        if emit is not None:
            emit(build_rows())
    return build_rows()
