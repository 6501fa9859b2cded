"""Flash attention with fused RoPE (kernels/attention.py) and the attention mixer op (trm_fast/ops/attention.py).

On a CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set before Triton is imported); grids are
kept to a few programs. Checked: kernels against the packed-layout transcriptions at odd sizes (NaN-poisoned
outputs), the hand-written backward (flash backward with lse/delta, RoPE transpose) under fp64 gradcheck, the op
against reference.attention forward and backward (x, w_qkv, w_o gradients) in fp32 and fp16, the presets' real
constexprs, torch.compile(fullgraph=True), input errors, the launch table and the AOT specs. On a GPU: bf16 at the
preset shapes against PyTorch's SDPA in bf16 (error at most 2x SDPA's, both against fp32), and determinism.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton or any kernel module is imported

import pytest  # noqa: E402

from kernel_utils import DEVICE, assert_bf16_rule, assert_close, poisoned, randn  # noqa: E402
from trm_fast.kernels import attention as K  # noqa: E402
from trm_fast.kernels import launch_configs  # noqa: E402
from trm_fast.ops import attention as attn_op  # noqa: E402
from trm_fast.ops import reference as R  # noqa: E402


def _tables(L, hd, dtype=torch.float32):
    return tuple(t.to(device=DEVICE, dtype=dtype) for t in R.rope_cos_sin(L, hd))


def _mixer_weights(D, H, hd, seed, requires_grad=False):
    w_qkv = randn(3 * H * hd, D, seed=seed, scale=D ** -0.5, requires_grad=requires_grad)
    w_o = randn(D, H * hd, seed=seed + 1, scale=(H * hd) ** -0.5, requires_grad=requires_grad)
    return w_qkv, w_o


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("B, L, H, hd, rope", [
    (2, 1, 2, 32, True),     # a single token: every tile almost fully masked
    (2, 17, 3, 32, True),    # odd length, 3 heads
    (1, 97, 2, 64, False),   # the Sudoku length, no RoPE, two query blocks of 64
    (2, 40, 2, 64, True),
])
def test_kernels_match_transcription_fp32(B, L, H, hd, rope):
    qkv = randn(B, L, 3 * H * hd, seed=L + H)
    cos, sin = _tables(L, hd) if rope else (None, None)
    o, lse = poisoned(B, L, H * hd), poisoned(B * H, L)
    K.attention_fwd(qkv, H, cos, sin, o, lse)
    o_ref, lse_ref = K.attention_forward_reference(qkv, H, cos, sin)
    assert_close(o, o_ref, name="o")
    assert_close(lse, lse_ref, name="lse (base 2)")
    # the semantic oracle: reference.apply_rope + explicit softmax attention
    q, k, v = qkv.view(B, L, 3 * H, hd).split(H, dim=2)
    if rope:
        q, k = R.apply_rope(q, cos, sin), R.apply_rope(k, cos, sin)
    assert_close(o, R.attention_core(q, k, v).reshape(B, L, H * hd), name="o vs reference.attention_core")

    do = randn(B, L, H * hd, seed=L + H + 1)
    dqkv = poisoned(B, L, 3 * H * hd)
    K.attention_bwd(do, qkv, o, lse, H, cos, sin, dqkv)
    assert_close(dqkv, K.attention_backward_transcription(do, qkv, o, lse, H, cos, sin), name="dqkv")
    # and against autograd through the reference (RoPE transpose included)
    qkv_ref = qkv.clone().requires_grad_(True)
    q, k, v = qkv_ref.view(B, L, 3 * H, hd).split(H, dim=2)
    if rope:
        q, k = R.apply_rope(q, cos, sin), R.apply_rope(k, cos, sin)
    R.attention_core(q, k, v).reshape(B, L, H * hd).backward(do)
    assert_close(dqkv, qkv_ref.grad, atol=2e-5, rtol=1e-4, name="dqkv vs autograd of the reference")


def _check_fp16_against_reference(B, L, H, hd, seed):
    """fp16 forward against the reference and backward against the transcription of the kernels' backward."""
    qkv = randn(B, L, 3 * H * hd, seed=seed, dtype=torch.float16)
    cos, sin = _tables(L, hd)
    o, lse = poisoned(B, L, H * hd, dtype=torch.float16), poisoned(B * H, L)
    K.attention_fwd(qkv, H, cos, sin, o, lse)
    o_ref, lse_ref = K.attention_forward_reference(qkv, H, cos, sin)
    assert_close(o, o_ref, atol=2e-3, rtol=2e-3, name="o fp16")
    assert_close(lse, lse_ref, atol=2e-3, rtol=1e-3, name="lse fp16")
    do = randn(B, L, H * hd, seed=seed + 1, dtype=torch.float16)
    dqkv = poisoned(B, L, 3 * H * hd, dtype=torch.float16)
    K.attention_bwd(do, qkv, o, lse, H, cos, sin, dqkv)
    want = K.attention_backward_transcription(do.float(), qkv.float(), o.float(), lse, H, cos, sin)
    assert_close(dqkv, want, atol=5e-3, rtol=5e-3, name="dqkv fp16")


def test_kernels_match_transcription_fp16():
    _check_fp16_against_reference(2, 17, 2, 32, seed=3)


class _HandWrittenAttention(torch.autograd.Function):
    """reference-style forward, backward = the transcription of the kernels' backward (lse, delta, RoPE transpose)."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, num_heads):
        o, lse2 = K.attention_forward_reference(qkv, num_heads, cos, sin)
        ctx.save_for_backward(qkv, o, lse2, cos, sin)
        ctx.num_heads = num_heads
        return o

    @staticmethod
    def backward(ctx, do):
        qkv, o, lse2, cos, sin = ctx.saved_tensors
        return K.attention_backward_transcription(do, qkv, o, lse2, ctx.num_heads, cos, sin), None, None, None


@pytest.mark.parametrize("rope", [True, False])
def test_hand_written_backward_gradcheck_fp64(rope):
    B, L, H, hd = 2, 5, 2, 4
    qkv = torch.randn(B, L, 3 * H * hd, dtype=torch.float64, requires_grad=True)
    cos, sin = (t.double() for t in R.rope_cos_sin(L, hd)) if rope else (None, None)
    assert torch.autograd.gradcheck(lambda t: _HandWrittenAttention.apply(t, cos, sin, H), (qkv,))
    # the transcription's forward is the reference's math (reference.apply_rope computes in fp32 even for float64)
    q, k, v = qkv.view(B, L, 3 * H, hd).split(H, dim=2)
    if rope:
        q, k = R.apply_rope(q, cos, sin), R.apply_rope(k, cos, sin)
    torch.testing.assert_close(_HandWrittenAttention.apply(qkv, cos, sin, H), R.attention_core(q, k, v).reshape(B, L, H * hd),
                               atol=1e-6, rtol=1e-6)


def test_preset_constexprs_run_in_interpreter():
    """The real launch configs of the Sudoku preset (L = 97, 8 heads of 64, the table's 2-byte tiles), batch 1.
    fp16 stands in for bf16 (the interpreter's bf16 arithmetic is unreliable); fp32 would select halved tiles."""
    B, L, H, hd = 1, 97, 8, 64
    cfg = K.attention_config(L, 90, hd, elem_bytes=2)
    assert cfg["table"]
    for phase in K.PHASES:
        assert (cfg[phase]["BLOCK_M"], cfg[phase]["BLOCK_N"]) == K.ATTENTION_TABLE[(90, L, hd)][phase][:2]
    _check_fp16_against_reference(B, L, H, hd, seed=5)


def test_launch_table():
    for arch in (90, 80):
        for L in launch_configs.PRESET_SEQ_LENS:
            cfg = K.attention_config(L, arch, K.PRESET_HEAD_DIM)
            assert cfg["table"], (arch, L)
            for phase in K.PHASES:
                assert cfg[phase]["BLOCK_M"] >= 16 and cfg[phase]["BLOCK_N"] >= 16
    assert K.attention_config(916, 90, 64, elem_bytes=4)["fwd"]["BLOCK_M"] == K.ATTENTION_TABLE[(90, 916, 64)]["fwd"][0] // 2
    small = K.attention_config(17, 90, 32)  # fallback, clipped to the sequence
    assert not small["table"] and all(small[p]["BLOCK_M"] <= 32 and small[p]["BLOCK_N"] <= 32 for p in K.PHASES)
    assert all(small[p]["num_warps"] == 4 for p in K.PHASES)  # 32x32 tiles: one warp per 256 elements, at least 4
    assert K.attention_config(1, 80, 128)["fwd"]["BLOCK_M"] == 16


# ---------------------------------------------------------------------------------------------- the op


@pytest.mark.parametrize("B, L, H, hd, D, rope", [(2, 17, 2, 32, 48, True), (1, 1, 3, 32, 40, True), (2, 9, 2, 64, 64, False)])
def test_op_matches_reference_fp32(B, L, H, hd, D, rope):
    x = randn(B, L, D, seed=7, requires_grad=True)
    w_qkv, w_o = _mixer_weights(D, H, hd, seed=8, requires_grad=True)
    cos, sin = _tables(L, hd) if rope else (None, None)
    y = attn_op.attention(x, w_qkv, w_o, cos, sin, H)
    dy = randn(*y.shape, seed=10)
    grads = torch.autograd.grad(y, (x, w_qkv, w_o), dy)
    y_ref = R.attention(x, w_qkv, w_o, cos, sin, H)
    grads_ref = torch.autograd.grad(y_ref, (x, w_qkv, w_o), dy)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, name="y")
    for g, g_ref, name in zip(grads, grads_ref, ("dx", "dw_qkv", "dw_o")):
        assert g.dtype == g_ref.dtype, name
        assert_close(g, g_ref, atol=2e-5, rtol=1e-4, name=name)


@pytest.mark.parametrize("B, L, H, hd, D, rope", [(2, 17, 2, 32, 48, True), (1, 1, 3, 32, 40, True), (2, 9, 2, 64, 64, False)])
def test_op_post_norm_matches_reference_fp32(B, L, H, hd, D, rope):
    """post_norm=True: rms_norm(x + attention(x)) from the op's own node (its backward adds the residual's gradient
    in the d x matmul) against the reference composition, fresh inputs at odd sizes; and the gradient without x
    requiring one (weights only)."""
    x32 = randn(B, L, D, seed=60)
    w32 = _mixer_weights(D, H, hd, seed=61)
    cos, sin = _tables(L, hd) if rope else (None, None)
    dy = randn(B, L, D, seed=62)
    for x_grad in (True, False):
        results = []
        for fn in (attn_op.attention, R.attention):
            x = x32.clone().requires_grad_(x_grad)
            ws = [w.clone().requires_grad_(True) for w in w32]
            y = fn(x, *ws, cos, sin, H, post_norm=True)
            results.append((y, torch.autograd.grad(y, ([x] if x_grad else []) + ws, dy)))
        (y, grads), (y_ref, grads_ref) = results
        assert y.dtype == y_ref.dtype
        assert_close(y, y_ref, name="y")
        for g, g_ref, name in zip(grads, grads_ref, ("dx", "dw_qkv", "dw_o") if x_grad else ("dw_qkv", "dw_o")):
            assert_close(g, g_ref, atol=2e-5, rtol=1e-4, name=name)


def test_op_fp16_with_fp32_weights():
    """fp16 activations, fp32 master weights: output fp16, weight gradients fp32; errors against a float64
    reference at most twice those of reference.attention run in fp16 (the low-precision rule)."""
    B, L, H, hd, D = 2, 17, 2, 32, 64
    x32 = randn(B, L, D, seed=11)
    w_qkv, w_o = _mixer_weights(D, H, hd, seed=12)
    cos, sin = _tables(L, hd)
    dy = randn(B, L, D, seed=13)
    results = {}
    for name, fn, dtype in (("ours", attn_op.attention, torch.float16), ("torch", R.attention, torch.float16),
                            ("fp64", R.attention, torch.float64)):
        x = x32.to(dtype).requires_grad_(True)
        ws = [w.detach().to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_(True)
              for w in (w_qkv, w_o)]
        tabs = [t.double() for t in (cos, sin)] if dtype == torch.float64 else (cos, sin)
        y = fn(x, ws[0], ws[1], *tabs, H)
        y.backward(dy.to(dtype))
        results[name] = (y, x.grad, ws[0].grad, ws[1].grad)
    ours = results["ours"]
    assert ours[0].dtype == torch.float16 and ours[1].dtype == torch.float16
    assert ours[2].dtype == torch.float32 and ours[3].dtype == torch.float32  # fp32 weight gradients
    for i, what in enumerate(("y", "dx", "dw_qkv", "dw_o")):
        assert_bf16_rule(ours[i], results["torch"][i], results["fp64"][i], name=f"{what} fp16")


def test_op_without_input_grad_gives_weight_grads_only():
    B, L, H, hd, D = 1, 9, 2, 32, 32
    x = randn(B, L, D, seed=13)
    w_qkv, w_o = _mixer_weights(D, H, hd, seed=14, requires_grad=True)
    cos, sin = _tables(L, hd)
    attn_op.attention(x, w_qkv, w_o, cos, sin, H).sum().backward()
    w_ref = [w.detach().clone().requires_grad_(True) for w in (w_qkv, w_o)]
    R.attention(x, *w_ref, cos, sin, H).sum().backward()
    assert_close(w_qkv.grad, w_ref[0].grad, atol=2e-5, rtol=1e-4, name="dw_qkv")
    assert_close(w_o.grad, w_ref[1].grad, atol=2e-5, rtol=1e-4, name="dw_o")
    with torch.no_grad():
        assert_close(attn_op.attention(x, w_qkv, w_o, cos, sin, H), R.attention(x, w_qkv, w_o, cos, sin, H), name="no_grad")


def test_flash_attention_core_op():
    B, L, H, hd = 2, 17, 2, 32
    qkv = randn(B, L, 3 * H * hd, seed=15, requires_grad=True)
    cos, sin = _tables(L, hd)
    o = attn_op.flash_attention(qkv, H, cos, sin)
    do = randn(*o.shape, seed=16)
    (dqkv,) = torch.autograd.grad(o, qkv, do)
    qkv_ref = qkv.detach().clone().requires_grad_(True)
    q, k, v = qkv_ref.view(B, L, 3 * H, hd).split(H, dim=2)
    o_ref = R.attention_core(R.apply_rope(q, cos, sin), R.apply_rope(k, cos, sin), v).reshape(B, L, H * hd)
    o_ref.backward(do)
    assert_close(o, o_ref, name="o")
    assert_close(dqkv, qkv_ref.grad, atol=2e-5, rtol=1e-4, name="dqkv")


def test_op_composes_with_torch_compile_fullgraph():
    B, L, H, hd, D = 2, 17, 2, 32, 64
    x = randn(B, L, D, seed=17, requires_grad=True)
    w_qkv, w_o = _mixer_weights(D, H, hd, seed=18, requires_grad=True)
    cos, sin = _tables(L, hd)

    def mixer(h, attention, w):  # plain and with its post-norm
        return attention(h, *w, cos, sin, H) + attention(h, *w, cos, sin, H, post_norm=True)

    torch._dynamo.reset()
    out = torch.compile(lambda h: mixer(h, attn_op.attention, (w_qkv, w_o)), fullgraph=True, backend="aot_eager")(x)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (x, w_qkv, w_o)]
    refs = [t.detach().clone().requires_grad_(True) for t in (x, w_qkv, w_o)]
    mixer(refs[0], R.attention, refs[1:]).square().sum().backward()
    assert_close(out, mixer(x, R.attention, (w_qkv, w_o)), name="compiled y")
    for g, r, name in zip(grads, refs, ("dx", "dw_qkv", "dw_o")):
        assert_close(g, r.grad, atol=5e-5, rtol=1e-4, name=f"compiled {name}")


def test_bad_inputs_raise_clear_errors():
    x = randn(2, 5, 64)
    w_qkv, w_o = _mixer_weights(64, 2, 32, seed=19)
    cos, sin = _tables(5, 32)
    cases = [
        ((x[0], w_qkv, w_o, cos, sin, 2), "3 dimensions"),
        ((x.long(), w_qkv, w_o, cos, sin, 2), "dtype"),
        ((x, w_qkv[:, :40], w_o, cos, sin, 2), "w_qkv must be"),
        ((x, w_qkv, w_o[:, :32], cos, sin, 2), "w_o must be"),
        ((x, w_qkv, w_o, cos, sin, 3), "do not split"),
        ((x, w_qkv, w_o, cos, sin, 4), "head dim 16"),
        ((x, w_qkv, w_o, cos, sin, 0), "positive int"),
        ((x, w_qkv, w_o, cos[:4], sin[:4], 2), r"cos must be \(5, 32\)"),
        ((x, w_qkv, w_o, None, sin, 2), "pass both or neither"),
        ((x, w_qkv, w_o, cos, cos.long(), 2), "float32"),
        ((x, w_qkv.long(), w_o, cos, sin, 2), "floating"),
    ]
    for args, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            attn_op.attention(*args)
    qkv = randn(2, 5, 192)
    with pytest.raises(ValueError, match="lse must be"):
        K.attention_fwd(qkv, 2, cos, sin, poisoned(2, 5, 64), poisoned(2, 5))
    with pytest.raises(ValueError, match="cos must be"):
        K.attention_fwd(qkv, 2, cos.double(), sin, poisoned(2, 5, 64), poisoned(4, 5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-without-interpreter error")
def test_cpu_tensors_without_interpreter_are_refused(monkeypatch):
    from trm_fast.ops import _custom_op

    monkeypatch.setattr(_custom_op, "INTERPRETED", False)  # as if the kernels had been imported for a GPU
    w_qkv, w_o = _mixer_weights(64, 2, 32, seed=20)
    with pytest.raises(ValueError, match="CUDA"):
        attn_op.attention(randn(1, 5, 64), w_qkv, w_o, None, None, 2)


# ---------------------------------------------------------------------------------------------- GPU, bf16


@pytest.mark.gpu
@pytest.mark.parametrize("L", [97, 916])
def test_bf16_forward_and_backward_at_preset_shapes_gpu(L):
    B, D, H, hd = 4, 512, 8, 64
    w_qkv, w_o = _mixer_weights(D, H, hd, seed=21)
    cos, sin = _tables(L, hd)
    x32 = randn(B, L, D, seed=22)
    dy = randn(B, L, D, seed=23)
    results = {}
    for name, fn, dtype in (("ours", attn_op.attention, torch.bfloat16), ("sdpa", R.attention, torch.bfloat16),
                            ("fp32", R.attention, torch.float32)):
        x = x32.to(dtype).requires_grad_(True)
        ws = [w.detach().clone().requires_grad_(True) for w in (w_qkv, w_o)]
        y = fn(x, ws[0], ws[1], cos, sin, H)
        y.backward(dy.to(dtype))
        results[name] = (y, x.grad, ws[0].grad, ws[1].grad)
    for i, what in enumerate(("y", "dx", "dw_qkv", "dw_o")):
        assert_bf16_rule(results["ours"][i], results["sdpa"][i], results["fp32"][i], name=f"{what} L={L}")


@pytest.mark.gpu
def test_backward_is_deterministic_gpu():
    B, L, H, hd = 8, 916, 8, 64
    qkv = randn(B, L, 3 * H * hd, seed=24, dtype=torch.bfloat16)
    cos, sin = _tables(L, hd)
    o, lse = poisoned(B, L, H * hd, dtype=torch.bfloat16), poisoned(B * H, L)
    K.attention_fwd(qkv, H, cos, sin, o, lse)
    do = randn(B, L, H * hd, seed=25, dtype=torch.bfloat16)
    first, second = poisoned(B, L, 3 * H * hd, dtype=torch.bfloat16), poisoned(B, L, 3 * H * hd, dtype=torch.bfloat16)
    K.attention_bwd(do, qkv, o, lse, H, cos, sin, first)
    K.attention_bwd(do, qkv, o, lse, H, cos, sin, second)
    assert torch.equal(first, second)
