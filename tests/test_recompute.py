"""Recomputation levels of the gradient cycle: gradients equal plain full backprop at every level, on the reference
path (bitwise, fp32 and bf16), on the Triton path (interpreter) and on mixed op sets; each op saves what the levels
table lists; tied weights accumulate fp32 gradients."""
import pytest
import torch
import torch.nn.functional as F

from kernel_utils import randn  # first: sets TRITON_INTERPRET without a GPU
from trm_fast.config import TRMConfig
from trm_fast.model import build_model
from trm_fast.model.recompute import BlockRecompute, run_block
from trm_fast.model.layers import BLOCK_OPS
from trm_fast.ops import get_ops, levels, reference

LEVEL_OPS = sorted({op for ops in BLOCK_OPS.values() for op in ops})  # the ops the recomputation levels concern


def config_for(mixer, backend="torch", level=0, D=32, H=2, T=2, n=2, blocks=2, dtype="float32"):
    pos = "rope" if mixer == "attention" else "none"
    return TRMConfig.preset("sudoku4-tiny").override([
        f"model.backend={backend}", f"model.mixer={mixer}", f"model.pos_encoding={pos}", f"model.hidden_size={D}",
        f"model.puzzle_emb_dim={D}", f"model.num_heads={H}", f"model.T={T}", f"model.n={n}",
        f"model.num_blocks={blocks}", f"model.recompute={level}", f"model.forward_dtype={dtype}"])


def grads_at(config, batch=3, overrides=None):
    """Gradients of every parameter and of the puzzle rows after one supervision step from a random carry."""
    torch.manual_seed(0)
    model = build_model(config.model)
    model.override_ops(overrides or {})
    model.train()
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, config.model.vocab_size, (batch, config.model.seq_len), generator=g)
    y, z = model.initial_carry(batch, "cpu")
    carry = (y + torch.randn(y.shape, generator=g).to(y.dtype), z + torch.randn(z.shape, generator=g).to(z.dtype))
    out = model(carry, inputs, torch.tensor([0, 0, 0][:batch]))
    (out.logits.float().square().sum() + out.q_halt.sum()).backward()
    rows = model.puzzle_emb.pending[0][1].grad
    return [p.grad.clone() for p in model.parameters()] + [rows.clone()], out.logits.detach()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_reference_levels_equal_full_backprop_bitwise(mixer, dtype):
    base, logits0 = grads_at(config_for(mixer, "torch", 0, dtype=dtype))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in base)
    for level in (1, 2):
        grads, logits = grads_at(config_for(mixer, "torch", level, dtype=dtype))
        assert torch.equal(logits, logits0), f"level {level}: forward changed"
        for i, (g, g0) in enumerate(zip(grads, base)):
            assert torch.equal(g, g0), f"level {level}, gradient {i}: max diff {(g - g0).abs().max()}"


def assert_close_to_max(actual, expected, rel, what):
    """max |actual - expected| <= rel * max |expected| (fp32 rounding differences of other summation orders)."""
    err = ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()
    assert err <= rel, f"{what}: max error {err:.2e} of the largest entry (allowed {rel:.0e})"


# The Triton attention kernel supports head dims 32/64/128 only; the token-mixing variant has no such limit.
TRITON_SMALL = {"attention": dict(D=32, H=1, T=1, n=1, blocks=2), "mlp": dict(D=16, H=2, T=1, n=1, blocks=2)}


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_triton_levels_equal_full_backprop(mixer):
    """The Triton ops (interpreter): level 2 replays level 0's kernels (bitwise); level 1 re-runs the gate_up matmul
    inside the SwiGLU backward (fp32 rounding apart); every level against the reference path's full backprop."""
    small = TRITON_SMALL[mixer]
    reference_grads, _ = grads_at(config_for(mixer, "torch", 0, **small), batch=2)
    triton0, _ = grads_at(config_for(mixer, "triton", 0, **small), batch=2)
    for i, (g, g_ref) in enumerate(zip(triton0, reference_grads)):
        assert_close_to_max(g, g_ref, 1e-5, f"triton level 0 vs reference, gradient {i}")
    for level in (1, 2):
        grads, _ = grads_at(config_for(mixer, "triton", level, **small), batch=2)
        for i, (g, g0, g_ref) in enumerate(zip(grads, triton0, reference_grads)):
            if level == 2:
                assert torch.equal(g, g0), f"triton level 2, gradient {i}"
            else:
                assert_close_to_max(g, g0, 2e-6, f"triton level 1 vs level 0, gradient {i}")
            assert_close_to_max(g, g_ref, 1e-5, f"triton level {level} vs reference, gradient {i}")


@pytest.mark.parametrize("mixer, overrides", [("attention", {"attention": "triton"}), ("mlp", {"swiglu": "triton"})])
def test_mixed_op_set_levels_equal_full_backprop(mixer, overrides):
    """One op on Triton (interpreter), the rest on the reference. Level 1 runs each block under selective
    checkpointing that keeps the Triton op's outputs: bitwise for attention; the Triton SwiGLU re-runs its gate_up
    matmul in backward (fp32 rounding apart). Level 2 replays level 0 bitwise."""
    small = TRITON_SMALL[mixer]
    base, logits0 = grads_at(config_for(mixer, "torch", 0, **small), batch=2, overrides=overrides)
    reference_grads, _ = grads_at(config_for(mixer, "torch", 0, **small), batch=2)
    for i, (g, g_ref) in enumerate(zip(base, reference_grads)):
        assert_close_to_max(g, g_ref, 1e-5, f"mixed level 0 vs reference, gradient {i}")
    for level in (1, 2):
        grads, logits = grads_at(config_for(mixer, "torch", level, **small), batch=2, overrides=overrides)
        assert torch.equal(logits, logits0), f"level {level}: forward changed"
        for i, (g, g0) in enumerate(zip(grads, base)):
            if level == 2 or mixer == "attention":
                assert torch.equal(g, g0), f"mixed level {level}, gradient {i}"
            else:
                assert_close_to_max(g, g0, 2e-6, f"mixed level 1 vs level 0, gradient {i}")


def _op_call(op, shape, implementation, recompute):
    """(output, activation input, weights and tables) of one application of `op` on fp32 tensors of `shape`."""
    L, D, H, I, Im = shape
    ops = get_ops(implementation)
    x = randn(2, L, D, seed=1, requires_grad=True)
    weight = lambda rows, cols, seed: randn(rows, cols, seed=seed, scale=cols ** -0.5, requires_grad=True)
    if op == "attention":
        w_qkv, w_o, (cos, sin) = weight(3 * D, D, 2), weight(D, D, 3), reference.rope_cos_sin(L, D // H)
        return ops.attention(x, w_qkv, w_o, cos, sin, H), x, (w_qkv, w_o, cos, sin)
    if op in ("swiglu", "swiglu_token_mix"):
        width, hidden = (D, I) if op == "swiglu" else (L, Im)
        w_gate_up, w_down = weight(2 * hidden, width, 2), weight(width, hidden, 3)
        return getattr(ops, op)(x, w_gate_up, w_down, recompute=recompute), x, (w_gate_up, w_down)
    return getattr(ops, op)(x, randn(2, L, D, seed=2, requires_grad=True)), x, ()


@pytest.mark.parametrize("op", LEVEL_OPS)
@pytest.mark.parametrize("implementation, recompute", [("torch", False), ("triton", False), ("triton", True)])
def test_each_op_saves_what_the_levels_table_lists(op, implementation, recompute):
    """An op called alone (fp32) saves its input, its output and the named tensors of its OP_SAVES entry, and nothing
    else but its weights and RoPE tables."""
    config = config_for("attention", D=32, H=1)
    shape = levels.Shape.of(config.model)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out, x, fixed = _op_call(op, shape, implementation, recompute)
    entry = levels.OP_SAVES[(op, implementation)]["recompute" if recompute else "plain"]
    fixed = {t.untyped_storage().data_ptr() for t in fixed}
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    storages = {ptr: nbytes for ptr, nbytes in storages.items() if ptr not in fixed}
    assert (x.untyped_storage().data_ptr() in storages) == entry.input
    assert (out.untyped_storage().data_ptr() in storages) == entry.output
    B, LD = 2, shape.L * shape.D
    listed = B * (LD * (entry.input + entry.output) + sum(t.elements(shape) for t in entry.tensors))
    assert sum(storages.values()) == 4 * listed


def test_level_two_keeps_only_block_inputs():
    """BlockRecompute saves exactly its input: nothing of the block's internals survives the forward."""
    config = config_for("attention", "torch", 2)
    model = build_model(config.model)
    h = torch.randn(2, config.model.total_seq_len, config.model.hidden_size, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = run_block(model.net.blocks[0], h, get_ops("torch"),
                        model.rope(), 2)
    assert len(saved) == 1 and saved[0] is h
    assert out.grad_fn.name() == BlockRecompute.__name__ + "Backward"
    # under no_grad (the T-1 cycles, evaluation) nothing is recorded at any level
    with torch.no_grad():
        for level in (0, 1, 2):
            assert run_block(model.net.blocks[0], h, get_ops("torch"),
                             model.rope(), level).grad_fn is None


def test_tied_weight_gradients_accumulate_in_fp32():
    """14 bf16 uses of one fp32 master weight: the gradient is the fp32 sum of exact per-use products (F.linear on
    a cast weight rounds each use's contribution to bf16 first, about 1e-3 relative)."""
    torch.manual_seed(0)
    w = torch.randn(24, 16, requires_grad=True)
    xs = [torch.randn(3, 5, 16).bfloat16().requires_grad_() for _ in range(14)]
    gs = [torch.randn(3, 5, 24).bfloat16() for _ in range(14)]
    sum((reference.linear(x, w).float() * g.float()).sum() for x, g in zip(xs, gs)).backward()
    exact = sum(g.reshape(-1, 24).double().t() @ x.detach().reshape(-1, 16).double() for x, g in zip(xs, gs))
    assert w.grad.dtype == torch.float32
    assert (w.grad.double() - exact).abs().max() <= 1e-6 * exact.abs().max()
    # input gradients and the forward are those of F.linear on the cast weight
    for x, g in zip(xs, gs):
        x_ref = x.detach().requires_grad_()
        (F.linear(x_ref, w.detach().bfloat16()).float() * g.float()).sum().backward()
        assert torch.equal(x.grad, x_ref.grad)
        assert torch.equal(reference.linear(x, w), F.linear(x, w.bfloat16()))
    # the per-use bf16 rounding this avoids is real: the plain form is measurably off
    w2 = w.detach().clone().requires_grad_()
    sum((F.linear(x.detach(), w2.to(torch.bfloat16)).float() * g.float()).sum() for x, g in zip(xs, gs)).backward()
    assert (w2.grad.double() - exact).abs().max() > 1e-5 * exact.abs().max()


def test_casted_linear_bias_gradient_is_fp32():
    w, b = torch.randn(2, 8, requires_grad=True), torch.randn(2, requires_grad=True)
    x = torch.randn(5, 8).bfloat16().requires_grad_()
    out = reference.linear(x, w, b)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert b.grad.dtype == torch.float32 and torch.equal(b.grad, torch.full((2,), 5.0))
