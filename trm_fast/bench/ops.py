"""Per-op benchmark: residual+norm (both axes), SwiGLU, token-mixing SwiGLU, attention with RoPE and the loss head,
forward / backward / both, at the presets' shapes, for every contender side by side:
eager reference, torch.compile (default, and max-autotune on GPU), Liger-Kernel where it has the op, trm_fast."""
from __future__ import annotations

import torch

from trm_fast.bench.common import measure
from trm_fast.kernels import reference as R


def _liger():
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        return LigerRMSNormFunction, LigerSiLUMulFunction
    except Exception:  # absent, or built for another torch
        return None


def op_cases(batch: int, seq: int, hidden: int = 512, heads: int = 8, device="cpu", dtype=torch.float32):
    """(name, reference fn, trm_fast fn or None, liger fn or None, input factory) per op."""
    from trm_fast.config import swiglu_hidden

    I, Im = swiglu_hidden(hidden), swiglu_hidden(seq)
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dtype)
    w = lambda *s: (torch.randn(*s, generator=g) / s[1] ** 0.5).to(device)  # fp32 master weights
    cos, sin = (t.to(device) for t in R.rope_cos_sin(seq, hidden // heads))
    fast = None
    if device != "cpu":
        from trm_fast.ops import get_ops

        fast = get_ops("triton")
    liger = _liger() if device != "cpu" else None
    x_shape = (batch, seq, hidden)
    cases = [
        ("add_rms_norm", R.add_rms_norm, fast and fast.add_rms_norm,
         liger and (lambda x, r: liger[0].apply(r + x, torch.ones(hidden, device=device, dtype=dtype), 1e-5, 0.0, "llama", True)),
         lambda: [rnd(*x_shape), rnd(*x_shape)]),
        ("add_rms_norm_seq", R.add_rms_norm_seq, fast and fast.add_rms_norm_seq, None, lambda: [rnd(*x_shape), rnd(*x_shape)]),
        ("swiglu", R.swiglu, fast and fast.swiglu,
         liger and (lambda x, wgu, wd: R.linear(liger[1].apply(*R.linear(x, wgu).chunk(2, -1)), wd)),
         lambda: [rnd(*x_shape, scale=0.5), w(2 * I, hidden), w(hidden, I)]),
        ("swiglu_token_mix", R.swiglu_token_mix, fast and fast.swiglu_token_mix, None,
         lambda: [rnd(*x_shape, scale=0.5), w(2 * Im, seq), w(seq, Im)]),
        ("attention_rope", lambda x, a, b: R.attention(x, a, b, cos, sin, heads),
         fast and (lambda x, a, b: fast.attention(x, a, b, cos, sin, heads)), None,
         lambda: [rnd(*x_shape, scale=0.5), w(3 * hidden, hidden), w(hidden, hidden)]),
        ("loss_head_stablemax", lambda y, wl: R.stablemax_cross_entropy(R.linear(y, wl), labels, labels >= 0).sum(),
         None, None, lambda: [rnd(*x_shape), w(12, hidden)]),
    ]
    labels = torch.randint(0, 12, (batch, seq), generator=g).to(device)
    return cases


def _modes(fn, make_inputs):
    """Callables for forward, backward (from a kept graph) and both."""
    inputs = [t.requires_grad_(True) for t in make_inputs()]
    out = fn(*inputs)
    dy = torch.randn_like(out)

    def fwd():
        with torch.no_grad():
            fn(*inputs)

    def bwd():
        torch.autograd.grad(out, inputs, dy, retain_graph=True)

    def both():
        o = fn(*inputs)
        torch.autograd.grad(o, inputs, torch.ones_like(o) if o.dim() == 0 else dy)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}


def run_ops(batch: int, seq: int, quick: bool, autotune: bool, log=print) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    for name, ref, fast, liger, make in op_cases(batch, seq, device=device, dtype=dtype):
        contenders = {"eager": ref, "compile": torch.compile(ref)}
        if autotune and device == "cuda":
            contenders["compile-max-autotune"] = torch.compile(ref, mode="max-autotune-no-cudagraphs")
        if liger is not None:
            contenders["liger"] = liger
        if fast is not None:
            contenders["trm_fast"] = fast
        results = {}
        for contender, fn in contenders.items():
            try:
                for mode, call in _modes(fn, make).items():
                    results[(contender, mode)] = measure(call, warmup=2 if quick else 5, reps=5 if quick else 20)
            except Exception as exc:  # a contender that cannot run this op is reported, not fatal
                log(f"  {name}: {contender} skipped ({type(exc).__name__}: {str(exc)[:120]})")
        for (contender, mode), ms in results.items():
            eager = results.get(("eager", mode))
            rows.append({"op": name, "shape": f"{batch}x{seq}x512", "mode": mode, "contender": contender, "ms": ms,
                         "speedup_vs_eager": eager / ms if eager else None})
        log(f"  {name}: " + ", ".join(f"{c}/{m} {ms:.3f} ms" for (c, m), ms in results.items() if m == "fwd+bwd"))
    if _liger() is None:
        log("  Liger-Kernel not installed (optional): its column is absent")
    return rows
