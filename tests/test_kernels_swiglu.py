"""SwiGLU kernels (gate_up matmul with the silu * up epilogue in its no-grad, save and recompute modes; the
elementwise backward) and the channel and token-mixing custom ops: against the plain-PyTorch references (Triton's
interpreter without a GPU), fp64 gradcheck of the ops' hand-written backward transcribed in PyTorch and the ops
against it, what is saved with and without `recompute`, the presets' real launch configs, torch.compile
composition, input errors, and bf16 at preset shapes on a GPU."""
from kernel_utils import DEVICE, GPU, assert_bf16_rule, assert_close, poisoned, randn  # first: sets TRITON_INTERPRET

import pytest
import torch
import torch.nn.functional as F

from trm_fast.config import swiglu_hidden
from trm_fast.kernels import launch_configs
from trm_fast.kernels import matmul as MM
from trm_fast.kernels import swiglu as K
from trm_fast.ops import norm as norm_ops
from trm_fast.ops import reference as R
from trm_fast.ops import swiglu as ops

# ---------------------------------------------------------------------------------------------- transcriptions


class _ChannelHandWritten(torch.autograd.Function):
    """The channel op's backward exactly as trm_fast/ops/swiglu.py computes it, in PyTorch."""

    @staticmethod
    def forward(ctx, x2d, wgu, wd):
        gate, up = (x2d @ wgu.t()).chunk(2, dim=-1)
        h = F.silu(gate) * up
        ctx.save_for_backward(x2d, gate, up, h, wgu, wd)
        return h @ wd.t()

    @staticmethod
    def backward(ctx, dout):
        x2d, gate, up, h, wgu, wd = ctx.saved_tensors
        dh = dout @ wd
        d_gate, d_up = K.swiglu_backward_reference(gate, up, dh)
        dgu = torch.cat([d_gate, d_up], -1)
        return dgu @ wgu, dgu.t() @ x2d, dout.t() @ h


class _TokenHandWritten(torch.autograd.Function):
    """The token-mixing op's forward and backward on (B, L, D) without transposes, as the op computes them."""

    @staticmethod
    def forward(ctx, x, wgu, wd):
        gate, up = torch.matmul(wgu, x).chunk(2, dim=1)  # (2I, L) @ (B, L, D) -> (B, 2I, D)
        h = F.silu(gate) * up
        ctx.save_for_backward(x, gate, up, h, wgu, wd)
        return torch.matmul(wd, h)

    @staticmethod
    def backward(ctx, dout):
        x, gate, up, h, wgu, wd = ctx.saved_tensors
        dh = torch.matmul(wd.t(), dout)
        d_gate, d_up = K.swiglu_backward_reference(gate, up, dh)
        dgu = torch.cat([d_gate, d_up], 1)
        d_wd = torch.einsum("bld,bid->li", dout, h)
        d_wgu = torch.einsum("bjd,bld->jl", dgu, x)
        return torch.matmul(wgu.t(), dgu), d_wgu, d_wd


def _weights(rows, cols, seed, dtype=torch.float64, requires_grad=True):
    return randn(rows, cols, seed=seed, scale=cols ** -0.5, requires_grad=requires_grad).to(dtype).detach().requires_grad_(requires_grad)


def test_elementwise_backward_formula_gradcheck_fp64():
    class _FromGateUp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, gate, up):
            ctx.save_for_backward(gate, up)
            return F.silu(gate) * up

        @staticmethod
        def backward(ctx, dh):
            return K.swiglu_backward_reference(*ctx.saved_tensors, dh)

    g = torch.Generator().manual_seed(0)
    gate, up = (torch.randn(3, 10, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(2))
    assert torch.autograd.gradcheck(_FromGateUp.apply, (gate, up))


def test_op_backward_transcriptions_gradcheck_fp64():
    x = randn(5, 6, dtype=torch.float64, seed=1).cpu().requires_grad_(True)
    wgu, wd = _weights(8, 6, 2).cpu(), _weights(6, 4, 3).cpu()
    assert torch.autograd.gradcheck(_ChannelHandWritten.apply, (x, wgu, wd))
    xt = randn(2, 5, 3, dtype=torch.float64, seed=4).cpu().requires_grad_(True)
    twgu, twd = _weights(8, 5, 5).cpu(), _weights(5, 4, 6).cpu()
    assert torch.autograd.gradcheck(_TokenHandWritten.apply, (xt, twgu, twd))


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("M, D, I", [(19, 48, 40), (1, 80, 16), (97, 64, 48)])
def test_channel_gate_up_kernel_all_modes(M, D, I):
    x, w = randn(M, D, seed=7), randn(2 * I, D, seed=8, scale=D ** -0.5)
    h_ref, gu_ref = K.swiglu_gate_up_reference(x, w)
    h, gu = poisoned(M, I), poisoned(M, 2 * I)
    K.channel_gate_up(x, w, h, gu)  # save mode
    assert_close(h, h_ref, name="h (save)")
    assert_close(gu, gu_ref, name="gate_up (save)")
    h = poisoned(M, I)
    K.channel_gate_up(x, w, h)  # no-grad mode: h only
    assert_close(h, h_ref, name="h (no grad)")
    dh, dgu = randn(M, I, seed=9), poisoned(M, 2 * I)
    K.channel_gate_up(x, w, h=None, dh=dh, dgu=dgu)  # recompute mode
    d_gate, d_up = K.swiglu_backward_reference(gu_ref[:, :I], gu_ref[:, I:], dh)
    assert_close(dgu, torch.cat([d_gate, d_up], -1), name="d gate_up (recompute)")
    dgu2 = poisoned(M, 2 * I)
    K.swiglu_bwd_from_saved(gu_ref.contiguous(), dh, dgu2)  # the elementwise backward from saved gate/up
    assert_close(dgu2, torch.cat([d_gate, d_up], -1), name="d gate_up (saved)")


@pytest.mark.parametrize("B, L, D, I", [(2, 17, 48, 24), (1, 1, 80, 16), (2, 97, 16, 32)])
def test_token_gate_up_kernel_all_modes(B, L, D, I):
    x, w = randn(B, L, D, seed=10), randn(2 * I, L, seed=11, scale=L ** -0.5)
    gu_ref = torch.matmul(w, x)  # (B, 2I, D)
    h_ref = F.silu(gu_ref[:, :I]) * gu_ref[:, I:]
    h, gu = poisoned(B, I, D), poisoned(B, 2 * I, D)
    K.token_gate_up(x, w, h, gu)
    assert_close(h, h_ref, name="h (save)")
    assert_close(gu, gu_ref, name="gate_up (save)")
    h = poisoned(B, I, D)
    K.token_gate_up(x, w, h)
    assert_close(h, h_ref, name="h (no grad)")
    dh, dgu = randn(B, I, D, seed=12), poisoned(B, 2 * I, D)
    K.token_gate_up(x, w, h=None, dh=dh, dgu=dgu)
    d_gate, d_up = K.swiglu_backward_reference(gu_ref[:, :I], gu_ref[:, I:], dh)
    assert_close(dgu, torch.cat([d_gate, d_up], 1), name="d gate_up (recompute)")


def test_gate_up_grouped_tile_order_odd_size(monkeypatch):
    """The grouped (GROUP_M) program order with several row and column blocks, partial last blocks and a group
    size that does not divide the row-block count (7 row blocks in groups of 3): every output tile is written once
    and right, in every mode and both forms (NaN-poisoned outputs show a skipped tile)."""
    tiles = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 3, "num_warps": 4, "num_stages": 2}
    monkeypatch.setattr(K.launch_configs, "gate_up_config", lambda *args: dict(tiles, table=False))
    M, D, I = 7 * 16 - 5, 48, 40  # 7 row blocks, 3 column blocks (the last 8 wide), 3 K blocks
    assert -(-M // 16) % tiles["GROUP_M"] and -(-I // 16) == 3
    test_channel_gate_up_kernel_all_modes(M, D, I)
    test_token_gate_up_kernel_all_modes(2, D, M, I)  # token form: M = D = 107 rows, K = L = 48


@pytest.mark.parametrize("B, M, N, K", [(3, 17, 40, 48), (1, 1, 16, 80), (5, 97, 24, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sum_over_batch_abt_kernel(B, M, N, K, dtype):
    """The token-mixing weight-gradient kernel: sum_b P[b] @ Q[b]^T in fp32, batch split into ranges."""
    p, q = randn(B, M, K, seed=40, dtype=dtype), randn(B, N, K, seed=41, dtype=dtype)
    cfg = launch_configs.batch_reduce_config(M, N, K, B, p.element_size())
    assert cfg["SPLIT"] == B  # tiny outputs: every batch element its own range, partials summed
    out = MM.sum_over_batch_abt(p, q)
    assert out.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 1e-3  # fp16 inputs are exact in fp32 products; sums differ in order
    assert_close(out, MM.sum_over_batch_abt_reference(p, q), atol=tol, rtol=tol, name="sum_b P Q^T")
    partial = poisoned(2, M, N)  # the kernel writes every element of each split's partial
    MM._sum_over_batch_abt[(triton_cdiv(M, 16), triton_cdiv(N, 16), 2)](
        p, q, partial, M, N, K, B, triton_cdiv(B, 2), p.stride(0), p.stride(1), q.stride(0), q.stride(1), M * N,
        BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, IEEE=dtype == torch.float32)
    half = triton_cdiv(B, 2)
    assert_close(partial[0], MM.sum_over_batch_abt_reference(p[:half], q[:half]), atol=tol, rtol=tol, name="split 0")
    if B > half:
        assert_close(partial[1], MM.sum_over_batch_abt_reference(p[half:], q[half:]), atol=tol, rtol=tol, name="split 1")
    else:
        assert (partial[1] == 0).all()  # an empty range still stores its zero partial


def triton_cdiv(a, b):
    return -(-a // b)


# ---------------------------------------------------------------------------------------------- ops


CASES = [(2, 17, 48, 40), (1, 1, 80, 16), (2, 5, 64, 32)]


@pytest.mark.parametrize("B, L, D, I", CASES)
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("form", ["channel", "token"])
def test_ops_against_reference_and_transcription(B, L, D, I, recompute, form):
    x = randn(B, L, D, seed=13, requires_grad=True)
    if form == "channel":
        op, ref, hand, wgu_shape, wd_shape = ops.swiglu, R.swiglu, _ChannelHandWritten.apply, (2 * I, D), (D, I)
    else:
        op, ref, hand, wgu_shape, wd_shape = ops.swiglu_token_mix, R.swiglu_token_mix, _TokenHandWritten.apply, (2 * I, L), (L, I)
    wgu = randn(*wgu_shape, seed=14, scale=wgu_shape[1] ** -0.5, requires_grad=True)
    wd = randn(*wd_shape, seed=15, scale=wd_shape[1] ** -0.5, requires_grad=True)
    y = op(x, wgu, wd, recompute=recompute)
    dy = randn(*y.shape, seed=16)
    grads = torch.autograd.grad(y, (x, wgu, wd), dy)
    y_ref = ref(x, wgu, wd)
    grads_ref = torch.autograd.grad(y_ref, (x, wgu, wd), dy)
    if form == "channel":
        y_hand = hand(x.reshape(-1, D), wgu, wd).view(B, L, D)
    else:
        y_hand = hand(x, wgu, wd)
    grads_hand = torch.autograd.grad(y_hand, (x, wgu, wd), dy)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, name="y")
    for g, g_ref, g_hand, what in zip(grads, grads_ref, grads_hand, ("dx", "dw_gate_up", "dw_down")):
        assert g.dtype == torch.float32
        assert_close(g, g_ref, atol=2e-5, rtol=1e-4, name=f"{what} vs reference")
        assert_close(g, g_hand, atol=2e-5, rtol=1e-4, name=f"{what} vs transcription")


POST_NORM_FORMS = {  # form: (op, reference, gate_up width of (B, L, D), inject supported)
    "channel": (ops.swiglu, R.swiglu, lambda L, D: D, True),
    "cublas": (ops.swiglu_cublas, R.swiglu, lambda L, D: D, True),
    "token": (ops.swiglu_token_mix, R.swiglu_token_mix, lambda L, D: L, False),
}


@pytest.mark.parametrize("B, L, D, I", CASES)
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("form", sorted(POST_NORM_FORMS))
def test_post_norm_against_reference(B, L, D, I, recompute, form):
    """post_norm=True (and inject, for the channel forms): the norm of x + swiglu(x) from the op's own node, values
    and every gradient (x through both the sub-layer and the residual, the weights, inject) against the reference
    composition, fresh inputs at odd sizes. Without inject the norm output's gradient alone; with it, both outputs'."""
    op, ref, width_of, has_inject = POST_NORM_FORMS[form]
    width = width_of(L, D)
    leaves = [randn(B, L, D, seed=50), randn(2 * I, width, seed=51, scale=width ** -0.5),
              randn(width, I, seed=52, scale=I ** -0.5)] + ([randn(B, L, D, seed=53)] if has_inject else [])
    upstream = [randn(B, L, D, seed=54), randn(B, L, D, seed=55)]
    results = []
    for fn in (op, ref):
        xs = [t.clone().requires_grad_(True) for t in leaves]
        inject = {"inject": xs[3]} if has_inject else {}
        outs = fn(*xs[:3], recompute=recompute, post_norm=True, **inject)
        outs = outs if has_inject else (outs,)
        results.append((outs, torch.autograd.grad(outs, xs, upstream[:len(outs)])))
    (outs, grads), (outs_ref, grads_ref) = results
    for o, o_ref, what in zip(outs, outs_ref, ("y", "y + inject")):
        assert o.dtype == o_ref.dtype
        assert_close(o, o_ref, name=what)
    for g, g_ref, what in zip(grads, grads_ref, ("dx", "dw_gate_up", "dw_down", "dinject")):
        assert_close(g, g_ref, atol=2e-5, rtol=1e-4, name=f"{what} vs reference")


@pytest.mark.parametrize("form", sorted(POST_NORM_FORMS))
def test_post_norm_backward_adds_the_residual_in_the_matmul(form):
    """What one sub-layer and its post-norm launch in backward (counted on meta tensors): composed, autograd adds
    the residual's gradient to the sub-layer's d x in a separate (B, L, D) add; with post_norm=True that add is gone,
    the last matmul accumulating in place (addmm_ / baddbmm_) instead, and nothing else is launched."""
    from trm_fast.tools.bench.launches import LaunchCounter, intercept_triton

    op, _, width_of, _ = POST_NORM_FORMS[form]
    B, L, D, I = 2, 16, 64, 32
    norm = norm_ops.add_rms_norm_seq if form == "token" else norm_ops.add_rms_norm
    meta = lambda *shape: torch.empty(*shape, device="meta", requires_grad=True)
    launched = {}
    for fused in (False, True):
        x, wgu, wd = meta(B, L, D), meta(2 * I, width_of(L, D)), meta(width_of(L, D), I)
        counter = LaunchCounter(torch.device("meta"))
        with intercept_triton(counter), counter:
            y = op(x, wgu, wd, post_norm=True) if fused else norm(op(x, wgu, wd), x)
            counter.phase = "backward"
            torch.autograd.grad(y, (x, wgu, wd), torch.empty_like(y))
        launched[fused] = [l.name for l in counter.result() if l.phase == "backward"]
    accumulate = "baddbmm_" if form == "token" else "addmm_"
    assert launched[False].count("add") == 1 and accumulate not in launched[False]
    assert "add" not in launched[True] and launched[True].count(accumulate) == 1
    assert len(launched[True]) == len(launched[False]) - 1


def _low_precision_run(op, ref, x32, wgu, wd, dy32, dtype, recompute=False):
    """(ours in dtype, PyTorch reference in dtype, reference in fp32): each a tuple (y, dx, dw_gate_up, dw_down)."""
    results = {}
    for name, fn, dt in (("ours", op, dtype), ("torch", ref, dtype), ("fp32", ref, torch.float32)):
        x = x32.to(dt).requires_grad_(True)
        y = fn(x, wgu, wd, recompute=recompute)
        results[name] = (y, *torch.autograd.grad(y, (x, wgu, wd), dy32.to(dt)))
    return results


def _assert_low_precision_rule(results, label):
    assert results["ours"][0].dtype == results["torch"][0].dtype
    for i, what in enumerate(("y", "dx", "dw_gate_up", "dw_down")):
        assert_bf16_rule(results["ours"][i], results["torch"][i], results["fp32"][i], f"{label} {what}")


@pytest.mark.parametrize("form", ["channel", "token"])
def test_fp16_ops(form):
    """fp16 activations with fp32 master weights (cast in the op; rows padded to 16 bytes for the token form):
    errors against fp32 within twice PyTorch-in-fp16's."""
    B, L, D, I = 2, 17, 48, 32
    op, ref = (ops.swiglu, R.swiglu) if form == "channel" else (ops.swiglu_token_mix, R.swiglu_token_mix)
    width = D if form == "channel" else L
    wgu, wd = randn(2 * I, width, seed=18, scale=width ** -0.5, requires_grad=True), randn(width, I, seed=19, scale=I ** -0.5, requires_grad=True)
    results = _low_precision_run(op, ref, randn(B, L, D, seed=17), wgu, wd, randn(B, L, D, seed=20), torch.float16)
    _assert_low_precision_rule(results, form)


@pytest.mark.parametrize("form", ["channel", "token"])
def test_what_is_computed_and_saved(form, monkeypatch):
    """No grad: the gate_up kernel writes h only. Grad with recompute=False: it also writes gate/up and the
    backward is elementwise. recompute=True: no gate/up saved, the backward re-runs the matmul."""
    launcher = "channel_gate_up" if form == "channel" else "token_gate_up"
    calls = []
    real = getattr(K, launcher)
    monkeypatch.setattr(ops.kernels, launcher, lambda *a, **k: calls.append(
        ("recompute" if k.get("dh") is not None else "save" if (len(a) > 3 and a[3] is not None) or k.get("gu") is not None else "h only"))
        or real(*a, **k))
    B, L, D, I = 1, 5, 16, 16
    op = ops.swiglu if form == "channel" else ops.swiglu_token_mix
    width = D if form == "channel" else L
    x = randn(B, L, D, seed=21, requires_grad=True)
    wgu, wd = randn(2 * I, width, seed=22, requires_grad=True), randn(width, I, seed=23, requires_grad=True)
    with torch.no_grad():
        op(x, wgu, wd)
    assert calls == ["h only"]
    calls.clear()
    op(x.detach(), wgu.detach(), wd.detach())  # grad mode on, nothing requires grad
    assert calls == ["h only"]
    calls.clear()
    op(x, wgu, wd).sum().backward()
    assert calls == ["save"]
    calls.clear()
    op(x, wgu, wd, recompute=True).sum().backward()
    assert calls == ["h only", "recompute"]


def test_preset_launch_configs_run():
    """The gate_up kernel in every mode at the presets' table configs (D = 512, I = 1536; token L = 97, I = 512),
    batch 1, in fp16 (2-byte inputs select the same constexprs as bf16 on a GPU; the interpreter's bf16 is not
    usable)."""
    D, I = launch_configs.PRESET_HIDDEN, launch_configs.PRESET_MLP_HIDDEN
    L, Im = launch_configs.PRESET_TOKEN_MIX[0]
    assert launch_configs.gate_up_config("channel", L, I, D, 2)["table"]
    assert launch_configs.gate_up_config("token", D, Im, L, 2)["table"]
    x32, dy32 = randn(1, L, D, seed=24, scale=0.5), randn(1, L, D, seed=27)
    for op, ref, width, hidden in ((ops.swiglu, R.swiglu, D, I), (ops.swiglu_token_mix, R.swiglu_token_mix, L, Im)):
        wgu = randn(2 * hidden, width, seed=25, scale=width ** -0.5, requires_grad=True)
        wd = randn(width, hidden, seed=26, scale=hidden ** -0.5, requires_grad=True)
        for recompute in (False, True):
            results = _low_precision_run(op, ref, x32, wgu, wd, dy32, torch.float16, recompute)
            _assert_low_precision_rule(results, f"{op.__name__} recompute={recompute}")


def test_custom_ops_compose_with_torch_compile_fullgraph():
    """The ops of an MLP-mixer block (and the fused injection output), composed and with post_norm, under
    torch.compile(fullgraph=True): no graph break, same values and gradients as eager."""
    B, L, D, I, Im = 2, 17, 48, 32, 24
    x = randn(B, L, D, seed=28, requires_grad=True)
    w = [randn(2 * I, D, seed=29, requires_grad=True), randn(D, I, seed=30, requires_grad=True),
         randn(2 * Im, L, seed=31, requires_grad=True), randn(L, Im, seed=32, requires_grad=True)]

    inject = randn(B, L, D, seed=33, requires_grad=True)
    w = w + [inject]

    def block(h, recompute):
        h = norm_ops.add_rms_norm_seq(ops.swiglu_token_mix(h, w[2], w[3], recompute=recompute), h)
        h = norm_ops.add_rms_norm(ops.swiglu(h, w[0], w[1], recompute=recompute), h)
        y, next_input = norm_ops.add_rms_norm(h, h, inject=inject)  # the fused injection output
        # the same sub-layers with their post-norms in their own nodes, as a block calls them on Triton
        h = ops.swiglu_token_mix(y * next_input, w[2], w[3], recompute=recompute, post_norm=True)
        y, next_input = ops.swiglu(h, w[0], w[1], recompute=recompute, post_norm=True, inject=inject)
        return y * next_input

    for recompute in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        out = compiled(x, recompute)
        grads = torch.autograd.grad(out.square().sum(), [x] + w)
        out_eager = block(x, recompute)
        grads_eager = torch.autograd.grad(out_eager.square().sum(), [x] + w)
        assert_close(out, out_eager, name="compiled block")
        for g, ge in zip(grads, grads_eager):
            assert_close(g, ge, name="compiled gradient")


def test_bad_inputs_name_the_problem():
    x = randn(2, 5, 48)
    with pytest.raises(ValueError, match="w_gate_up has shape"):
        ops.swiglu(x, randn(64, 40), randn(48, 32))
    with pytest.raises(ValueError, match="w_gate_up must be"):
        ops.swiglu(x, randn(63, 48), randn(48, 32))
    with pytest.raises(ValueError, match=r"w_down has shape \(48, 16\), expected \(48, 32\)"):
        ops.swiglu(x, randn(64, 48), randn(48, 16))
    with pytest.raises(ValueError, match="x has dtype torch.int64"):
        ops.swiglu(x.long(), randn(64, 48), randn(48, 32))
    with pytest.raises(ValueError, match="3 dimensions"):
        ops.swiglu_token_mix(randn(5, 48), randn(64, 5), randn(5, 32))
    with pytest.raises(ValueError, match=r"w_gate_up has shape \(64, 6\), expected \(64, 5\)"):
        ops.swiglu_token_mix(x, randn(64, 6), randn(5, 32))
    with pytest.raises(ValueError, match="inject is the post-norm's second output; pass post_norm=True"):
        ops.swiglu(x, randn(64, 48), randn(48, 32), inject=x)
    with pytest.raises(ValueError, match=r"inject has shape \(2, 5, 40\), x has \(2, 5, 48\)"):
        ops.swiglu(x, randn(64, 48), randn(48, 32), post_norm=True, inject=randn(2, 5, 40))
    with pytest.raises(TypeError, match="inject"):
        ops.swiglu_token_mix(x, randn(64, 5), randn(5, 32), post_norm=True, inject=x)


# ---------------------------------------------------------------------------------------------- GPU, bf16


@pytest.mark.gpu
@pytest.mark.parametrize("L, recompute", [(97, False), (97, True), (916, False)])
def test_bf16_at_preset_shapes_gpu(L, recompute):
    """Forward and every gradient within twice PyTorch-in-bf16's error against fp32, at the presets' shapes."""
    B, D, I = 8, launch_configs.PRESET_HIDDEN, launch_configs.PRESET_MLP_HIDDEN
    Im = swiglu_hidden(L)
    x32, dy32 = randn(B, L, D, seed=40, scale=0.5), randn(B, L, D, seed=41)
    for op, ref, width, hidden in ((ops.swiglu, R.swiglu, D, I), (ops.swiglu_token_mix, R.swiglu_token_mix, L, Im)):
        wgu = randn(2 * hidden, width, seed=42, scale=width ** -0.5, requires_grad=True)
        wd = randn(width, hidden, seed=43, scale=hidden ** -0.5, requires_grad=True)
        results = _low_precision_run(op, ref, x32, wgu, wd, dy32, torch.bfloat16, recompute)
        _assert_low_precision_rule(results, f"{op.__name__} L={L}")


# ---------------------------------------------------------------------------------------------- cuBLAS contender


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cublas_contender_against_reference(recompute, dtype):
    """swiglu_cublas (the "triton_cublas" implementation: gate_up on cuBLAS, silu * up and its backward in
    elementwise kernels) against the reference: values and every gradient (fp32 weight gradients), both levels."""
    B, L, D, I = 2, 9, 32, 24
    x32 = randn(B, L, D, seed=40)
    w = [randn(2 * I, D, seed=41, scale=D ** -0.5), randn(D, I, seed=42, scale=I ** -0.5)]
    dy = randn(B, L, D, seed=43)
    x = x32.to(dtype).requires_grad_(True)
    wgu, wd = (t.clone().requires_grad_(True) for t in w)
    out = ops.swiglu_cublas(x, wgu, wd, recompute=recompute)
    grads = torch.autograd.grad(out, [x, wgu, wd], dy.to(dtype))
    xr = x32.double().requires_grad_(True)
    wr = [t.double().requires_grad_(True) for t in w]
    ref = R.swiglu(xr, *wr)
    ref_grads = torch.autograd.grad(ref, [xr] + wr, dy.double())
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    assert out.dtype == dtype and grads[1].dtype == grads[2].dtype == torch.float32
    assert_close(out, ref, name="output", **tol)
    for g, r, name in zip(grads, ref_grads, ("dx", "dw_gate_up", "dw_down")):
        assert_close(g, r, name=name, **tol)


def test_cublas_contender_saves_gate_up_only_at_level_0():
    x = randn(2, 5, 32, seed=44, requires_grad=True)
    wgu, wd = randn(48, 32, seed=45, requires_grad=True), randn(32, 24, seed=46, requires_grad=True)
    for recompute in (False, True):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
            ops.swiglu_cublas(x, wgu, wd, recompute=recompute)
        assert ((10, 48) in saved) == (not recompute), saved  # gate/up, 2I wide
        assert (10, 24) in saved  # h, for the down projection's weight gradient


def test_cublas_contender_is_chosen_by_override_and_by_the_preferred_table(monkeypatch):
    from trm_fast.config import TRMConfig
    from trm_fast.ops import get_ops, resolve

    config = TRMConfig.preset("sudoku-att").model
    assert resolve.op_implementations(config, "cuda", (9, 0))["swiglu"] == "triton"  # the fused kernel by default
    chosen = resolve.op_implementations(config, "cuda", (9, 0), overrides={"swiglu": "triton_cublas"})
    assert chosen["swiglu"] == "triton_cublas" and get_ops(chosen).swiglu is ops.swiglu_cublas
    monkeypatch.setitem(resolve.PREFERRED_CONTENDERS, ("swiglu", (9, 0), resolve.op_shape("swiglu", config)), "triton_cublas")
    assert resolve.op_implementations(config, "cuda", (9, 0))["swiglu"] == "triton_cublas"
    assert resolve.op_implementations(config, "cuda", (8, 0))["swiglu"] == "triton"
    with pytest.raises(ValueError, match="an implementation of attention is one of"):
        resolve.op_implementations(config, "cuda", (9, 0), overrides={"attention": "triton_cublas"})
