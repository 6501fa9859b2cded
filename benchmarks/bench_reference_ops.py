"""pytest-benchmark: the plain-PyTorch reference ops on the CPU (forward, and forward + backward) at a small
Sudoku-like shape. `pytest benchmarks/bench_reference_ops.py --benchmark-only` (add --benchmark-json=FILE to keep
the figures); the GPU comparison of every contender is `trm-fast bench ops`."""
import pytest
import torch

from trm_fast.config import swiglu_hidden
from trm_fast.ops import reference as R
from trm_fast.token_loss import stablemax_cross_entropy

B, L, D, H = 4, 97, 128, 4  # Sudoku's sequence (16 puzzle tokens + 81 cells) at a CPU-sized width


def _inputs(name: str):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale
    I, Im = swiglu_hidden(D), swiglu_hidden(L)
    cos, sin = R.rope_cos_sin(L, D // H)
    labels = torch.randint(1, 11, (B, L), generator=g)
    cases = {
        "add_rms_norm": (R.add_rms_norm, [rnd(B, L, D), rnd(B, L, D)]),
        "add_rms_norm_seq": (R.add_rms_norm_seq, [rnd(B, L, D), rnd(B, L, D)]),
        "swiglu": (R.swiglu, [rnd(B, L, D), rnd(2 * I, D, scale=D**-0.5), rnd(D, I, scale=I**-0.5)]),
        "swiglu_token_mix": (R.swiglu_token_mix, [rnd(B, L, D), rnd(2 * Im, L, scale=L**-0.5), rnd(L, Im, scale=Im**-0.5)]),
        "attention_rope": (lambda x, a, b: R.attention(x, a, b, cos, sin, H),
                           [rnd(B, L, D), rnd(3 * D, D, scale=D**-0.5), rnd(D, D, scale=D**-0.5)]),
        "stablemax_loss": (lambda y, w: stablemax_cross_entropy(R.linear(y, w), labels, labels > 0).sum(),
                           [rnd(B, L, D), rnd(11, D, scale=D**-0.5)]),
    }
    return cases[name]


OPS = ["add_rms_norm", "add_rms_norm_seq", "swiglu", "swiglu_token_mix", "attention_rope", "stablemax_loss"]


@pytest.mark.parametrize("name", OPS)
def test_forward(benchmark, name):
    fn, inputs = _inputs(name)
    with torch.no_grad():
        out = benchmark(fn, *inputs)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", OPS)
def test_forward_backward(benchmark, name):
    fn, inputs = _inputs(name)
    inputs = [t.requires_grad_(True) for t in inputs]

    def step():
        out = fn(*inputs)
        return torch.autograd.grad(out, inputs, torch.ones_like(out))

    grads = benchmark(step)
    assert all(torch.isfinite(g).all() for g in grads)
