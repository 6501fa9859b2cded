"""The fused token mixer (kernels/token_mixer.py: the token-mixing SwiGLU and its post-norm over the sequence in one
kernel; with grad it also writes what the backward reads): against its plain-PyTorch reference and the unfused kernels
at odd sizes, every output poisoned first, the op's gradients with it against the reference's, and bf16 at the
Sudoku preset's shape on a GPU."""
from kernel_utils import DEVICE, GPU, assert_bf16_rule, assert_close, poisoned, randn  # first: sets TRITON_INTERPRET

import pytest
import torch

from trm_fast.kernels import launch_configs
from trm_fast.kernels import token_mixer as K
from trm_fast.ops import norm as norm_ops
from trm_fast.ops import reference as R
from trm_fast.ops import swiglu as ops
from trm_fast.ops._custom_op import cast_weight

EPS = R.RMS_EPS


def _inputs(B, L, D, I, dtype=torch.float32, seed=0):
    return (randn(B, L, D, dtype=dtype, seed=seed), randn(2 * I, L, seed=seed + 1, scale=L ** -0.5),
            randn(L, I, seed=seed + 2, scale=I ** -0.5))


def _composed(x, w_gate_up, w_down):
    """The reference's sub-layer and post-norm, as the model composes them on the torch path."""
    return R.add_rms_norm_seq(R.swiglu_token_mix(x, w_gate_up, w_down), x)


def _check_low_precision(B, L, D, I, dtype, seed):
    """The kernel in `dtype` within the low-precision rule: its error against fp32 at most twice PyTorch's."""
    x32, w_gate_up, w_down = _inputs(B, L, D, I, seed=seed)
    x = x32.to(dtype)
    assert_bf16_rule(_fused(x, w_gate_up, w_down), _composed(x, w_gate_up, w_down), _composed(x32, w_gate_up, w_down),
                     name=f"y {dtype}")


def _fused(x, w_gate_up, w_down, save=None):
    """y, or with `save` ("h" or "gu") (y, rstd, h[, gate/up]) from the kernel, every output poisoned first."""
    B, L, D = x.shape
    I = w_down.shape[1]
    y = poisoned(B, L, D, dtype=x.dtype)
    saved = {} if save is None else {"rstd": poisoned(B, D), "h": poisoned(B, I, D, dtype=x.dtype)}
    if save == "gu":
        saved["gu"] = poisoned(B, 2 * I, D, dtype=x.dtype)
    K.token_mixer_fused(x, cast_weight(w_gate_up, x.dtype, transposed=True).t(), cast_weight(w_down, x.dtype), EPS, y,
                        **saved)
    return y if save is None else (y, *saved.values())


@pytest.mark.parametrize("B,L,D,I", [(2, 7, 24, 40), (1, 18, 16, 48), (3, 33, 40, 72), (2, 97, 20, 24)])
def test_kernel_matches_its_reference_fp32(B, L, D, I):
    x, w_gate_up, w_down = _inputs(B, L, D, I, seed=B + L)
    y, rstd, h, gu = K.token_mixer_reference(x, w_gate_up, w_down, EPS)
    assert_close(_fused(x, w_gate_up, w_down), y, name="y")
    for got, expected, name in zip(_fused(x, w_gate_up, w_down, save="gu"), (y, rstd, h, gu), ("y", "rstd", "h", "gu")):
        assert_close(got, expected, name=f"{name} (saved for a backward)")
    assert_close(_fused(x, w_gate_up, w_down, save="h")[2], h, name="h without gate/up")


def test_kernel_matches_the_unfused_op_and_its_composed_reference():
    B, L, D, I = 2, 19, 24, 40
    x, w_gate_up, w_down = _inputs(B, L, D, I, seed=7)
    composed = _composed(x, w_gate_up, w_down)
    with torch.no_grad():
        unfused = ops._token_fwd.op(x, w_gate_up, w_down, False, False)[0]  # no post-norm: the unfused kernels
        unfused = norm_ops.add_rms_norm_seq(unfused, x)
    fused = _fused(x, w_gate_up, w_down)
    assert_close(fused, composed, atol=2e-5, rtol=2e-5, name="against the reference")
    assert_close(fused, unfused, atol=2e-5, rtol=2e-5, name="against the unfused kernels")


def test_fp16_within_the_low_precision_rule():
    _check_low_precision(2, 21, 32, 48, torch.float16, seed=11)


def test_the_op_takes_the_fused_kernel_only_without_grad(monkeypatch):
    calls = []
    real = K.token_mixer_fused
    monkeypatch.setattr(K, "token_mixer_fused", lambda *a: calls.append(1) or real(*a))
    B, L, D, I = 2, 11, 16, 24
    x, w_gate_up, w_down = _inputs(B, L, D, I, seed=13)
    expected = _composed(x, w_gate_up, w_down)
    with torch.no_grad():
        y = ops.swiglu_token_mix(x, w_gate_up, w_down, post_norm=True)
    assert len(calls) == 1
    assert_close(y, expected, atol=2e-5, rtol=2e-5, name="no grad")
    ops.swiglu_token_mix(x, w_gate_up, w_down)  # no post-norm: the unfused kernels
    assert len(calls) == 1


@pytest.mark.parametrize("recompute", [False, True])
def test_with_grad_the_kernel_saves_for_the_backward(recompute):
    """Autograd records: the same kernel writes h (and at level 0 gate/up) and rstd, and the op's backward (as for the
    unfused kernels) gives the reference's gradients."""
    B, L, D, I = 2, 13, 16, 24
    x0, w_gate_up0, w_down0 = _inputs(B, L, D, I, seed=23)
    grads = {}
    for name, fn in (("ours", lambda *a: ops.swiglu_token_mix(*a, recompute=recompute, post_norm=True)),
                     ("reference", _composed)):
        x, w_gate_up, w_down = (t.clone().requires_grad_(True) for t in (x0, w_gate_up0, w_down0))
        y = fn(x, w_gate_up, w_down)
        y.backward(randn(B, L, D, seed=29))
        grads[name] = (y.detach(), x.grad, w_gate_up.grad, w_down.grad)
    for got, expected, name in zip(grads["ours"], grads["reference"], ("y", "d x", "d w_gate_up", "d w_down")):
        assert_close(got, expected, atol=2e-5, rtol=2e-5, name=name)


def test_long_sequences_keep_the_unfused_op(monkeypatch):
    monkeypatch.setattr(K, "token_mixer_fused", lambda *a: pytest.fail("a sequence longer than MAX_L was fused"))
    L = launch_configs.TOKEN_MIXER_MAX_L + 1
    x, w_gate_up, w_down = _inputs(1, L, 16, 16, seed=17)
    with torch.no_grad():
        y = ops.swiglu_token_mix(x, w_gate_up, w_down, post_norm=True)
    assert_close(y, _composed(x, w_gate_up, w_down), atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="bf16 on a GPU")
def test_bf16_at_the_sudoku_preset_shape_gpu():
    _check_low_precision(64, 97, 512, 512, torch.bfloat16, seed=19)


def test_torch_compile_traces_the_fused_op_without_grad():
    """torch.compile(fullgraph=True) traces the no-grad route (a custom op with a fake) and gives the eager values."""
    B, L, D, I = 2, 9, 16, 24
    x, w_gate_up, w_down = _inputs(B, L, D, I, seed=31)
    fn = lambda x, a, b: ops.swiglu_token_mix(x, a, b, post_norm=True)
    with torch.no_grad():
        eager = fn(x, w_gate_up, w_down)
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, w_gate_up, w_down)
    assert torch.equal(compiled, eager)
