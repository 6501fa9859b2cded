"""Residual add + RMSNorm kernels (channel and sequence-axis forms) and their custom ops: forward and backward
against the plain-PyTorch reference (Triton's interpreter without a GPU), the hand-written backward under fp64
gradcheck and the kernels against it, the looped (two-pass) sequence path, the presets' real launch configs,
input errors, and bf16 at preset shapes on a GPU."""
from kernel_utils import DEVICE, GPU, assert_bf16_rule, assert_close, poisoned, randn  # first: sets TRITON_INTERPRET

import pytest
import torch
import triton

from trm_fast.kernels import launch_configs
from trm_fast.kernels import norm as K
from trm_fast.ops import norm as ops
from trm_fast.ops import reference as R

FORMS = {  # name: (launch fwd, launch bwd, reduced dim, rstd shape of (B, L, D))
    "channel": (K.add_rms_norm_fwd, K.rms_norm_bwd, -1, lambda s: s[:-1]),
    "seq": (K.add_rms_norm_seq_fwd, K.rms_norm_seq_bwd, 1, lambda s: (s[0], s[2])),
}


class _RmsNormFromOutput(torch.autograd.Function):
    """rms_norm(s) with the kernels' hand-written backward (from the output and rstd), for gradcheck."""

    @staticmethod
    def forward(ctx, s, dim):
        rstd = torch.rsqrt(s.square().mean(dim, keepdim=True) + R.RMS_EPS)
        y = s * rstd
        ctx.dim = dim
        ctx.save_for_backward(y, rstd.squeeze(dim))
        return y

    @staticmethod
    def backward(ctx, dy):
        y, rstd = ctx.saved_tensors
        return K.rms_norm_backward_reference(dy, y, rstd, ctx.dim), None


@pytest.mark.parametrize("dim", [-1, 1])
def test_backward_formula_gradcheck_fp64(dim):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 7, dtype=torch.float64, generator=g).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _RmsNormFromOutput.apply(t, dim), (s,))


@pytest.mark.parametrize("form", ["channel", "seq"])
@pytest.mark.parametrize("shape", [(3, 17, 48), (2, 1, 80), (1, 97, 80)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_against_reference_and_transcription(form, shape, dtype):
    fwd, bwd, dim, rstd_shape = FORMS[form]
    x, r, dy = (randn(*shape, dtype=dtype, seed=s) for s in (1, 2, 3))
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    y, rstd = poisoned(*shape, dtype=dtype), poisoned(*rstd_shape(shape))
    fwd(x, r, R.RMS_EPS, y, rstd)
    y_ref, rstd_ref = K.add_rms_norm_reference(x, r, R.RMS_EPS, dim=dim)
    assert_close(y, y_ref, tol, tol, "y")
    assert_close(y, (R.add_rms_norm if form == "channel" else R.add_rms_norm_seq)(x, r), tol, tol, "y vs reference op")
    assert_close(rstd, rstd_ref, 1e-5, 1e-5, "rstd")
    dx = poisoned(*shape, dtype=dtype)
    bwd(dy, y, rstd, dx)
    assert_close(dx, K.rms_norm_backward_reference(dy, y, rstd, dim), tol, tol, "dx vs transcription")


def test_seq_form_looped_path():
    """Columns longer than one tile (L > 1024 in real use) loop twice over L; forced here with BLOCK_L = 8."""
    B, L, D = 2, 19, 24
    x, r, dy = (randn(B, L, D, seed=s) for s in (4, 5, 6))
    y, rstd, dx = poisoned(B, L, D), poisoned(B, D), poisoned(B, L, D)
    grid = (triton.cdiv(D, 16) * B,)
    K._add_rms_norm_seq_fwd[grid](x, r, y, rstd, L, D, R.RMS_EPS, BLOCK_L=8, BLOCK_D=16, SINGLE_PASS=False)
    y_ref, rstd_ref = K.add_rms_norm_reference(x, r, R.RMS_EPS, dim=1)
    assert_close(y, y_ref, name="y")
    assert_close(rstd, rstd_ref, name="rstd")
    K._rms_norm_seq_bwd[grid](dy, y, rstd, dx, L, D, BLOCK_L=8, BLOCK_D=16, SINGLE_PASS=False)
    assert_close(dx, K.rms_norm_backward_reference(dy, y, rstd, 1), name="dx")


@pytest.mark.parametrize("form", ["channel", "seq"])
def test_ops_match_reference_autograd(form):
    op, ref = (ops.add_rms_norm, R.add_rms_norm) if form == "channel" else (ops.add_rms_norm_seq, R.add_rms_norm_seq)
    x, r = randn(2, 17, 48, seed=7, requires_grad=True), randn(2, 17, 48, seed=8, requires_grad=True)
    dy = randn(2, 17, 48, seed=9)
    y = op(x, r)
    gx, gr = torch.autograd.grad(y, (x, r), dy)
    y_ref = ref(x, r)
    gx_ref, gr_ref = torch.autograd.grad(y_ref, (x, r), dy)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, name="y")
    assert_close(gx, gx_ref, name="dx")
    assert_close(gr, gr_ref, name="dresidual")
    # a non-contiguous input (a transposed view) gives the same result
    xt = randn(2, 48, 17, seed=7).transpose(1, 2)
    assert_close(op(xt, r.detach()), ref(xt, r.detach()), name="non-contiguous x")


def test_fused_injection_output():
    """add_rms_norm(x, residual, inject) -> (y, y + inject): the kernels against the reference, and gradients
    through both outputs (the backward adds d sum to dy in fp32) against autograd on the reference."""
    shape = (2, 17, 48)
    x, r, inject, dy, dsum = (randn(*shape, seed=s) for s in (30, 31, 32, 33, 34))
    y, rstd, out_sum = poisoned(*shape), poisoned(2, 17), poisoned(*shape)
    K.add_rms_norm_fwd(x, r, R.RMS_EPS, y, rstd, inject, out_sum)
    y_ref, _ = K.add_rms_norm_reference(x, r, R.RMS_EPS)
    assert_close(out_sum, y_ref + inject, name="y + inject")
    dx = poisoned(*shape)
    K.rms_norm_bwd(dy, y, rstd, dx, dsum)
    assert_close(dx, K.rms_norm_backward_reference(dy + dsum, y, rstd), name="dx with d sum")

    leaves = [t.clone().requires_grad_(True) for t in (x, r, inject)]
    y, out_sum = ops.add_rms_norm(*leaves[:2], inject=leaves[2])
    grads = torch.autograd.grad([y, out_sum], leaves, [dy, dsum])
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, r, inject)]
    y_ref = R.add_rms_norm(*ref_leaves[:2])
    grads_ref = torch.autograd.grad([y_ref, y_ref + ref_leaves[2]], ref_leaves, [dy, dsum])
    assert_close(y, y_ref, name="y")
    for g, g_ref, what in zip(grads, grads_ref, ("dx", "dresidual", "dinject")):
        assert_close(g, g_ref, name=what)
    only_sum = torch.autograd.grad(ops.add_rms_norm(*leaves[:2], inject=leaves[2])[1].sum(), leaves[0])[0]
    assert_close(only_sum, torch.autograd.grad((R.add_rms_norm(*ref_leaves[:2]) + ref_leaves[2]).sum(), ref_leaves[0])[0],
                 name="dx through the sum only")


def test_preset_launch_configs_run():
    """D = 512 (channel) and (L, D) = (97, 512), (916, 512) (sequence) at their table configs, batch 1."""
    D = launch_configs.PRESET_HIDDEN
    assert launch_configs.norm_config(D)["table"]
    for L in launch_configs.PRESET_SEQ_LENS:
        assert launch_configs.norm_seq_config(L, D)["table"]
        x, r = randn(1, L, D, seed=10, requires_grad=True), randn(1, L, D, seed=11, requires_grad=True)
        dy = randn(1, L, D, seed=12)
        for op, ref in ((ops.add_rms_norm_seq, R.add_rms_norm_seq), (ops.add_rms_norm, R.add_rms_norm)):
            if op is ops.add_rms_norm and L != 97:
                continue  # the channel form's config depends on D only
            y = op(x, r)
            gx = torch.autograd.grad(y, x, dy)[0]
            y_ref = ref(x, r)
            assert_close(y, y_ref, name=f"{op.__name__} L={L} y")
            assert_close(gx, torch.autograd.grad(y_ref, x, dy)[0], atol=1e-5, rtol=1e-4, name=f"{op.__name__} L={L} dx")


def test_bad_inputs_name_the_problem():
    x = randn(2, 5, 48)
    with pytest.raises(ValueError, match="residual has shape"):
        ops.add_rms_norm(x, randn(2, 5, 40))
    with pytest.raises(ValueError, match="dtype torch.int64"):
        ops.add_rms_norm(x.long(), x.long())
    with pytest.raises(ValueError, match="residual has dtype"):
        ops.add_rms_norm(x, x.double())
    with pytest.raises(ValueError, match="3 dimensions"):
        ops.add_rms_norm_seq(randn(5, 48), randn(5, 48))
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        ops.add_rms_norm(x, 1.0)
    with pytest.raises(ValueError, match="inject has shape"):
        ops.add_rms_norm(x, x, inject=randn(2, 5, 40))


@pytest.mark.gpu
@pytest.mark.parametrize("L", launch_configs.PRESET_SEQ_LENS)
def test_bf16_at_preset_shapes_gpu(L):
    B, D = 8, launch_configs.PRESET_HIDDEN
    for op, ref in ((ops.add_rms_norm, R.add_rms_norm), (ops.add_rms_norm_seq, R.add_rms_norm_seq)):
        x32, r32, dy32 = randn(B, L, D, seed=20), randn(B, L, D, seed=21), randn(B, L, D, seed=22)
        outs = {}
        for name, fn, dtype in (("ours", op, torch.bfloat16), ("torch", ref, torch.bfloat16), ("fp32", ref, torch.float32)):
            x = x32.to(dtype).requires_grad_(True)
            y = fn(x, r32.to(dtype))
            outs[name] = (y, torch.autograd.grad(y, x, dy32.to(dtype))[0])
        assert_bf16_rule(outs["ours"][0], outs["torch"][0], outs["fp32"][0], f"{op.__name__} y")
        assert_bf16_rule(outs["ours"][1], outs["torch"][1], outs["fp32"][1], f"{op.__name__} dx")
