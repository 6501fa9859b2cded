"""The Triton ops together: input errors refused before any kernel, a block of all three composing with
torch.compile(fullgraph=True), the whole fast TRM against the reference TRM over supervision steps, and bf16 at the
presets' shapes on a GPU. Each kernel on its own (forward, backward, fp64 gradcheck of its hand-written backward,
transcriptions, odd sizes, real launch configs) is tested in tests/test_kernels_{norm,swiglu,attention}.py."""
import copy

import pytest
import torch

from kernel_utils import DEVICE, assert_bf16_rule, assert_close, randn  # first: sets TRITON_INTERPRET without a GPU
from trm_fast.ops import attention as attn_op
from trm_fast.ops import norm as norm_op
from trm_fast.ops import reference as R
from trm_fast.ops import swiglu as swiglu_op


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


@pytest.mark.gpu
@pytest.mark.parametrize("L", [97, 916])
def test_bf16_ops_at_preset_shapes_gpu(L):
    B, D, I, H = 4, 512, 1536, 8
    x32 = randn(B, L, D, seed=40, scale=0.5)
    x16 = x32.to(torch.bfloat16)
    w_gu, w_d = randn(2 * I, D, seed=41, scale=D ** -0.5), randn(D, I, seed=42, scale=I ** -0.5)
    assert_bf16_rule(swiglu_op.swiglu(x16, w_gu, w_d), R.swiglu(x16, w_gu, w_d), R.swiglu(x32, w_gu, w_d), "swiglu")
    Im = 512 if L == 97 else 2560
    t_gu, t_d = randn(2 * Im, L, seed=43, scale=L ** -0.5), randn(L, Im, seed=44, scale=Im ** -0.5)
    assert_bf16_rule(swiglu_op.swiglu_token_mix(x16, t_gu, t_d), R.swiglu_token_mix(x16, t_gu, t_d),
               R.swiglu_token_mix(x32, t_gu, t_d), "token mix")
    cos, sin = (t.cuda() for t in R.rope_cos_sin(L, D // H))
    w_qkv, w_o = randn(3 * D, D, seed=45, scale=D ** -0.5), randn(D, D, seed=46, scale=D ** -0.5)
    assert_bf16_rule(attn_op.attention(x16, w_qkv, w_o, cos, sin, H), R.attention(x16, w_qkv, w_o, cos, sin, H),
               R.attention(x32, w_qkv, w_o, cos, sin, H), "attention")
    r32 = randn(B, L, D, seed=47)
    assert_bf16_rule(norm_op.add_rms_norm(x16, r32.bfloat16()), R.add_rms_norm(x16, r32.bfloat16()), R.add_rms_norm(x32, r32), "norm")
    assert_bf16_rule(norm_op.add_rms_norm_seq(x16, r32.bfloat16()), R.add_rms_norm_seq(x16, r32.bfloat16()),
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
    assert_bf16_rule(grads["fast"], grads["torch"], grads["fp32"], "attention dx")
