"""Every Triton kernel against its plain-PyTorch reference, forward and backward (in Triton's interpreter on a
CPU, natively on a GPU), the hand-written backward formulas under fp64 gradcheck, the kernels against those
transcriptions, runs at the presets' real constexprs, torch.compile composition, and the whole fast TRM against
the reference TRM."""
import copy

import pytest
import torch

from kernel_utils import DEVICE, GPU, assert_close, poisoned, randn, rel_err
from trm_fast.kernels import attention as attn_k
from trm_fast.kernels import norm as norm_k
from trm_fast.kernels import reference as R
from trm_fast.kernels import swiglu as swiglu_k
from trm_fast.ops import attention as attn_op
from trm_fast.ops import norm as norm_op
from trm_fast.ops import swiglu as swiglu_op

# ---------------------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("shape", [(3, 17, 48), (2, 1, 80), (1, 97, 512)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_rms_norm_kernels(shape, dtype):
    x, r, dy = randn(*shape, dtype=dtype, seed=1), randn(*shape, dtype=dtype, seed=2), randn(*shape, dtype=dtype, seed=3)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for dim, fwd, bwd, rstd_shape in ((-1, norm_k.add_rms_norm_fwd, norm_k.rms_norm_bwd, shape[:-1]),
                                      (1, norm_k.add_rms_norm_seq_fwd, norm_k.rms_norm_seq_bwd, (shape[0], shape[2]))):
        y, rstd = poisoned(*shape, dtype=dtype), poisoned(*rstd_shape)
        fwd(x, r, 1e-5, y, rstd)
        y_ref, rstd_ref = norm_k.add_rms_norm_reference(x, r, dim=dim)
        assert_close(y, y_ref, tol, tol, f"y dim={dim}")
        assert_close(rstd, rstd_ref, tol, tol, f"rstd dim={dim}")
        dx = poisoned(*shape, dtype=dtype)
        bwd(dy, y, rstd, dx)
        assert_close(dx, norm_k.rms_norm_backward_reference(dy, y, rstd, dim), tol, tol, f"dx vs transcription dim={dim}")


@pytest.mark.parametrize("seq_axis", [False, True])
def test_add_rms_norm_op_matches_reference_autograd(seq_axis):
    x, r = randn(2, 17, 48, seed=4, requires_grad=True), randn(2, 17, 48, seed=5, requires_grad=True)
    op, ref = (norm_op.add_rms_norm_seq, R.add_rms_norm_seq) if seq_axis else (norm_op.add_rms_norm, R.add_rms_norm)
    y = op(x, r)
    dy = randn(*y.shape, seed=6)
    gx, gr = torch.autograd.grad(y, (x, r), dy)
    y_ref = ref(x, r)
    gx_ref, gr_ref = torch.autograd.grad(y_ref, (x, r), dy)
    assert_close(y, y_ref, name="y")
    assert_close(gx, gx_ref, name="dx")
    assert_close(gr, gr_ref, name="dresidual")


class _RmsNormFromOutput(torch.autograd.Function):
    """rms_norm with the hand-written backward (from output and rstd), for gradcheck."""

    @staticmethod
    def forward(ctx, s, dim):
        rstd = torch.rsqrt(s.square().mean(dim, keepdim=True) + 1e-5)
        y = s * rstd
        ctx.dim = dim
        ctx.save_for_backward(y, rstd.squeeze(dim))
        return y

    @staticmethod
    def backward(ctx, dy):
        y, rstd = ctx.saved_tensors
        return norm_k.rms_norm_backward_reference(dy, y, rstd, ctx.dim), None


@pytest.mark.parametrize("dim", [-1, 1])
def test_rms_norm_backward_formula_gradcheck(dim):
    s = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _RmsNormFromOutput.apply(t, dim), (s,))


# ---------------------------------------------------------------------------------------------- SwiGLU


class _SwiGLUFromGateUp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, dh):
        return swiglu_k.swiglu_backward_reference(*ctx.saved_tensors, dh)


def test_swiglu_backward_formula_gradcheck_and_kernel():
    gate, up = (torch.randn(3, 10, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(_SwiGLUFromGateUp.apply, (gate, up))
    gu, dh = randn(5, 2 * 48, seed=7), randn(5, 48, seed=8)
    dgu = poisoned(5, 2 * 48)
    swiglu_k.swiglu_bwd_from_saved(gu, dh, dgu)
    d_gate, d_up = swiglu_k.swiglu_backward_reference(gu[:, :48], gu[:, 48:], dh)
    assert_close(dgu, torch.cat([d_gate, d_up], -1), name="dgu")


@pytest.mark.parametrize("B, L, D, I", [(2, 17, 48, 64), (1, 1, 80, 32), (2, 5, 64, 256)])
@pytest.mark.parametrize("recompute", [False, True])
def test_swiglu_ops(B, L, D, I, recompute):
    x = randn(B, L, D, seed=9, requires_grad=True)
    for name, op, ref, wgu_shape, wd_shape in (
        ("channel", swiglu_op.swiglu, R.swiglu, (2 * I, D), (D, I)),
        ("token", swiglu_op.swiglu_token_mix, R.swiglu_token_mix, (2 * I, L), (L, I)),
    ):
        wgu = randn(*wgu_shape, seed=10, scale=wgu_shape[1] ** -0.5, requires_grad=True)
        wd = randn(*wd_shape, seed=11, scale=wd_shape[1] ** -0.5, requires_grad=True)
        y = op(x, wgu, wd, recompute=recompute)
        dy = randn(*y.shape, seed=12)
        grads = torch.autograd.grad(y, (x, wgu, wd), dy)
        y_ref = ref(x, wgu, wd)
        grads_ref = torch.autograd.grad(y_ref, (x, wgu, wd), dy)
        assert_close(y, y_ref, name=f"{name} y")
        for g, g_ref, what in zip(grads, grads_ref, ("dx", "dw_gate_up", "dw_down")):
            assert g.dtype == torch.float32
            assert_close(g, g_ref, atol=2e-5, rtol=1e-4, name=f"{name} {what}")
        with torch.no_grad():
            assert_close(op(x, wgu, wd), y_ref, name=f"{name} no-grad path")


def test_swiglu_gate_up_kernel_writes_every_output():
    x, w = randn(19, 48, seed=13), randn(2 * 40, 48, seed=14)
    h, gu = poisoned(19, 40), poisoned(19, 80)
    swiglu_k.channel_gate_up(x, w, h, gu)
    h_ref, gu_ref = swiglu_k.swiglu_gate_up_reference(x, w)
    assert_close(h, h_ref, name="h")
    assert_close(gu, gu_ref, name="gate_up")


# ---------------------------------------------------------------------------------------------- attention


class _AttentionHandWritten(torch.autograd.Function):
    """RoPE + softmax attention with the hand-written flash backward and RoPE transpose, for gradcheck."""

    @staticmethod
    def forward(ctx, q, k, v, cos, sin):
        rope = lambda t: t * cos[:, None] + R.rotate_half(t) * sin[:, None]  # in the input dtype (float64 here)
        qr, kr = rope(q), rope(k)
        scale = q.shape[-1] ** -0.5
        s = torch.einsum("blhd,bmhd->bhlm", qr, kr) * scale
        lse = torch.logsumexp(s, -1)
        o = torch.einsum("bhlm,bmhd->blhd", torch.softmax(s, -1), v)
        ctx.save_for_backward(qr, kr, v, o, lse, cos, sin)
        return o

    @staticmethod
    def backward(ctx, do):
        qr, kr, v, o, lse, cos, sin = ctx.saved_tensors
        dq, dk, dv = attn_k.attention_backward_reference(qr, kr, v, o, do, lse)
        return attn_k.rope_backward_reference(dq, cos, sin), attn_k.rope_backward_reference(dk, cos, sin), dv, None, None


def test_attention_backward_formula_gradcheck():
    q, k, v = (torch.randn(1, 5, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    cos, sin = (t.double() for t in R.rope_cos_sin(5, 4))
    assert torch.autograd.gradcheck(lambda a, b, c: _AttentionHandWritten.apply(a, b, c, cos, sin), (q, k, v))


def test_attention_kernels_against_transcription():
    B, L, H, hd = 2, 17, 2, 32
    qkv = randn(B, L, 3 * H * hd, seed=15)
    cos, sin = (t.to(DEVICE) for t in R.rope_cos_sin(L, hd))
    o, lse = poisoned(B, L, H * hd), poisoned(B * H, L)
    attn_k.attention_fwd(qkv, H, cos, sin, o, lse)
    q, k, v = qkv.view(B, L, 3 * H, hd).split(H, dim=2)
    qr, kr = R.apply_rope(q, cos, sin), R.apply_rope(k, cos, sin)
    o_ref = R.attention_core(qr, kr, v)
    assert_close(o, o_ref.reshape(B, L, H * hd), name="o")
    lse_natural = torch.logsumexp(torch.einsum("blhd,bmhd->bhlm", qr, kr) * hd ** -0.5, -1)
    assert_close(lse, (lse_natural / torch.log(torch.tensor(2.0))).reshape(B * H, L), name="lse (base 2)")
    do = randn(B, L, H * hd, seed=16)
    dqkv = poisoned(B, L, 3 * H * hd)
    attn_k.attention_bwd(do, qkv, o, lse, H, cos, sin, dqkv)
    dq, dk, dv = attn_k.attention_backward_reference(qr, kr, v, o_ref, do.view(B, L, H, hd), lse_natural)
    want = torch.cat([attn_k.rope_backward_reference(dq, cos, sin), attn_k.rope_backward_reference(dk, cos, sin), dv], 2)
    assert_close(dqkv, want.reshape(B, L, -1), name="dqkv")


@pytest.mark.parametrize("B, L, H, hd, rope", [(2, 17, 2, 32, True), (1, 1, 2, 32, True), (2, 97, 3, 32, False)])
def test_attention_op_matches_reference(B, L, H, hd, rope):
    D = H * hd
    x = randn(B, L, D, seed=17, requires_grad=True)
    w_qkv = randn(3 * D, D, seed=18, scale=D ** -0.5, requires_grad=True)
    w_o = randn(D, D, seed=19, scale=D ** -0.5, requires_grad=True)
    cos, sin = (t.to(DEVICE) for t in R.rope_cos_sin(L, hd)) if rope else (None, None)
    y = attn_op.attention(x, w_qkv, w_o, cos, sin, H)
    dy = randn(*y.shape, seed=20)
    grads = torch.autograd.grad(y, (x, w_qkv, w_o), dy)
    y_ref = R.attention(x, w_qkv, w_o, cos, sin, H)
    grads_ref = torch.autograd.grad(y_ref, (x, w_qkv, w_o), dy)
    assert_close(y, y_ref, name="y")
    for g, g_ref, what in zip(grads, grads_ref, ("dx", "dw_qkv", "dw_o")):
        assert_close(g, g_ref, atol=2e-5, rtol=1e-4, name=what)


def test_bad_inputs_are_refused_before_any_kernel():
    x = randn(2, 5, 48)
    with pytest.raises(ValueError, match="residual has shape"):
        norm_op.add_rms_norm(x, randn(2, 5, 40))
    with pytest.raises(ValueError, match="dtype"):
        norm_op.add_rms_norm(x.long(), x.long())
    with pytest.raises(ValueError, match="w_gate_up"):
        swiglu_op.swiglu(x, randn(64, 40), randn(48, 32))
    with pytest.raises(ValueError, match="head dim"):
        attn_op.attention(x, randn(3 * 48, 48), randn(48, 48), None, None, 3)


# ---------------------------------------------------------------------------------------------- presets' constexprs


def test_real_preset_constexprs_run():
    """One run per kernel at D = 512, I = 1536, L = 97, 8 heads of 64: the launch configs used on GPUs."""
    B, L, D, I, H = 1, 97, 512, 1536, 8
    x = randn(B, L, D, seed=21, scale=0.5, requires_grad=True)
    checks = []
    y = norm_op.add_rms_norm(x, x)
    checks.append((y, R.add_rms_norm(x, x)))
    checks.append((norm_op.add_rms_norm_seq(x, x), R.add_rms_norm_seq(x, x)))
    w_gu, w_d = randn(2 * I, D, seed=22, scale=D ** -0.5), randn(D, I, seed=23, scale=I ** -0.5)
    checks.append((swiglu_op.swiglu(x, w_gu, w_d), R.swiglu(x, w_gu, w_d)))
    Im = 512  # token-mixing hidden size at L = 97
    t_gu, t_d = randn(2 * Im, L, seed=24, scale=L ** -0.5), randn(L, Im, seed=25, scale=Im ** -0.5)
    checks.append((swiglu_op.swiglu_token_mix(x, t_gu, t_d), R.swiglu_token_mix(x, t_gu, t_d)))
    cos, sin = (t.to(DEVICE) for t in R.rope_cos_sin(L, D // H))
    w_qkv, w_o = randn(3 * D, D, seed=26, scale=D ** -0.5), randn(D, D, seed=27, scale=D ** -0.5)
    out = attn_op.attention(x, w_qkv, w_o, cos, sin, H)
    checks.append((out, R.attention(x, w_qkv, w_o, cos, sin, H)))
    for i, (got, want) in enumerate(checks):
        assert_close(got, want, atol=5e-5, rtol=1e-4, name=f"op {i}")
    out.float().square().sum().backward()  # attention backward at the real config
    x_ref = x.detach().clone().requires_grad_(True)
    R.attention(x_ref, w_qkv, w_o, cos, sin, H).float().square().sum().backward()
    assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4, name="attention dx")


# ---------------------------------------------------------------------------------------------- composition


def test_custom_ops_compose_with_torch_compile_fullgraph():
    x = randn(2, 17, 64, seed=28, requires_grad=True)
    w_gu, w_d = randn(128, 64, seed=29, requires_grad=True), randn(64, 64, seed=30, requires_grad=True)
    cos, sin = (t.to(DEVICE) for t in R.rope_cos_sin(17, 32))
    w_qkv, w_o = randn(192, 64, seed=31, requires_grad=True), randn(64, 64, seed=32, requires_grad=True)

    def block(h):
        h = norm_op.add_rms_norm(attn_op.attention(h, w_qkv, w_o, cos, sin, 2), h)
        return norm_op.add_rms_norm_seq(swiglu_op.swiglu(h, w_gu, w_d), h)

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert_close(out, block(x), name="compiled block")
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_fast_trm_matches_reference_over_supervision_steps(mixer):
    from trm_fast import TRMConfig
    from trm_fast.model import build_model
    from trm_fast.train.act import SupervisionState, supervision_step

    pos = "rope" if mixer == "attention" else "none"
    config = TRMConfig.preset("sudoku4-tiny").override([
        f"model.mixer={mixer}", f"model.pos_encoding={pos}", "model.hidden_size=64", "model.puzzle_emb_dim=64",
        "model.num_heads=2"])
    reference = build_model(config.model).to(DEVICE)
    fast = copy.deepcopy(reference)
    fast.config = copy.deepcopy(config.model)
    fast.config.backend = "triton"
    fast.load_state_dict(reference.state_dict())  # the same state_dict, unchanged
    B, L = 4, config.model.seq_len
    states = [SupervisionState.fresh(m, B, L, DEVICE) for m in (reference, fast)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (reference, fast)]
    g = torch.Generator().manual_seed(33)
    for step in range(3):
        batch = {"inputs": torch.randint(0, 6, (B, L), generator=g).to(DEVICE),
                 "labels": torch.randint(2, 6, (B, L), generator=g).to(DEVICE),
                 "puzzle_identifiers": torch.zeros(B, dtype=torch.long, device=DEVICE)}
        results = [supervision_step(m, s, batch, step=step, seed=0, slot_index=torch.arange(B, device=DEVICE), training=True)
                   for m, s in zip((reference, fast), states)]
        for r in results:
            r.loss.total.backward()
        assert abs(results[0].loss.total.item() - results[1].loss.total.item()) < 1e-4 * max(1.0, results[0].loss.total.item())
        for (name, p_ref), p_fast in zip(reference.named_parameters(), fast.parameters()):
            assert_close(p_fast.grad, p_ref.grad, atol=1e-4, rtol=1e-3, name=f"step {step} grad {name}")
        for opt, m in zip(optimizers, (reference, fast)):
            opt.step()
            opt.zero_grad()
            m.puzzle_emb.pending.clear()
        states = [r.state for r in results]


# ---------------------------------------------------------------------------------------------- GPU, bf16


def _bf16_rule(fast_out, torch_bf16_out, fp32_out, name):
    """The guide's rule: error of the kernel in bf16 at most twice PyTorch's error in bf16, both vs fp32."""
    ours, theirs = rel_err(fast_out, fp32_out), rel_err(torch_bf16_out, fp32_out)
    assert ours <= 2 * theirs + 1e-6, f"{name}: bf16 error {ours:.2e} vs PyTorch bf16 {theirs:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("L", [97, 916])
def test_bf16_ops_at_preset_shapes_gpu(L):
    B, D, I, H = 4, 512, 1536, 8
    x32 = randn(B, L, D, seed=40, scale=0.5)
    x16 = x32.to(torch.bfloat16)
    w_gu, w_d = randn(2 * I, D, seed=41, scale=D ** -0.5), randn(D, I, seed=42, scale=I ** -0.5)
    _bf16_rule(swiglu_op.swiglu(x16, w_gu, w_d), R.swiglu(x16, w_gu, w_d), R.swiglu(x32, w_gu, w_d), "swiglu")
    Im = 512 if L == 97 else 2560
    t_gu, t_d = randn(2 * Im, L, seed=43, scale=L ** -0.5), randn(L, Im, seed=44, scale=Im ** -0.5)
    _bf16_rule(swiglu_op.swiglu_token_mix(x16, t_gu, t_d), R.swiglu_token_mix(x16, t_gu, t_d),
               R.swiglu_token_mix(x32, t_gu, t_d), "token mix")
    cos, sin = (t.cuda() for t in R.rope_cos_sin(L, D // H))
    w_qkv, w_o = randn(3 * D, D, seed=45, scale=D ** -0.5), randn(D, D, seed=46, scale=D ** -0.5)
    _bf16_rule(attn_op.attention(x16, w_qkv, w_o, cos, sin, H), R.attention(x16, w_qkv, w_o, cos, sin, H),
               R.attention(x32, w_qkv, w_o, cos, sin, H), "attention")
    r32 = randn(B, L, D, seed=47)
    _bf16_rule(norm_op.add_rms_norm(x16, r32.bfloat16()), R.add_rms_norm(x16, r32.bfloat16()), R.add_rms_norm(x32, r32), "norm")
    _bf16_rule(norm_op.add_rms_norm_seq(x16, r32.bfloat16()), R.add_rms_norm_seq(x16, r32.bfloat16()),
               R.add_rms_norm_seq(x32, r32), "seq norm")


@pytest.mark.gpu
def test_bf16_backward_at_preset_shapes_gpu():
    B, L, D, H = 4, 97, 512, 8
    cos, sin = (t.cuda() for t in R.rope_cos_sin(L, D // H))
    w_qkv, w_o = randn(3 * D, D, seed=50, scale=D ** -0.5), randn(D, D, seed=51, scale=D ** -0.5)
    grads = {}
    for name, dtype, fn in (("fast", torch.bfloat16, attn_op.attention), ("torch", torch.bfloat16, R.attention),
                            ("fp32", torch.float32, R.attention)):
        x = randn(B, L, D, seed=52, scale=0.5).to(dtype).requires_grad_(True)
        fn(x, w_qkv, w_o, cos, sin, H).float().square().sum().backward()
        grads[name] = x.grad
    _bf16_rule(grads["fast"], grads["torch"], grads["fp32"], "attention dx")
