"""The Triton ops' two entry points (trm_fast.ops._custom_op.EagerFastOp): a plain eager call runs the op's
implementation directly, recorded by an autograd.Function made from the op's own setup_context and backward; a call
that something must see (a TorchDispatchMode here, torch.compile below) goes through the registered trm_fast:: custom
op. Both give bit-identical values and gradients, and torch.compile's graphs hold the custom ops, forward and
backward."""
from kernel_utils import DEVICE, randn  # first: sets TRITON_INTERPRET

import collections

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch.utils._python_dispatch import TorchDispatchMode

from trm_fast.ops import attention as attn_op
from trm_fast.ops import cross_entropy as ce_op
from trm_fast.ops import norm as norm_op
from trm_fast.ops import reference as R
from trm_fast.ops import swiglu as swiglu_op
from trm_fast.ops._custom_op import EagerFastOp

B, L, D, H, HD, I = 2, 9, 64, 2, 32, 40


class _PassThrough(TorchDispatchMode):
    """Runs every op as it is: only being active matters (any dispatch mode sends the ops through torch.library)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.fixture
def dispatched(monkeypatch):
    """Counter of the calls that reach the registered custom ops, by op name."""
    calls = collections.Counter()
    ops = {id(v): v for m in (attn_op, ce_op, norm_op, swiglu_op) for v in vars(m).values() if isinstance(v, EagerFastOp)}
    assert len(ops) >= 12
    for op in ops.values():
        def counting(*args, _registered=op.op, **kwargs):
            calls[_registered._name] += 1
            return _registered(*args, **kwargs)

        monkeypatch.setattr(op, "op", counting)
    return calls


def _cases():
    cos, sin = (t.to(DEVICE) for t in R.rope_cos_sin(L, HD))
    w_qkv = randn(3 * H * HD, D, seed=1, scale=D ** -0.5)
    w_o = randn(D, H * HD, seed=2, scale=(H * HD) ** -0.5)
    channel = (randn(2 * I, D, seed=3, scale=D ** -0.5), randn(D, I, seed=4, scale=I ** -0.5))
    token = (randn(2 * I, L, seed=5, scale=L ** -0.5), randn(L, I, seed=6, scale=I ** -0.5))
    x, other = randn(B, L, D, seed=7), randn(B, L, D, seed=8)
    qkv = randn(B, L, 3 * H * HD, seed=9)
    labels = torch.randint(0, 11, (B, L), generator=torch.Generator().manual_seed(14)).to(DEVICE)
    labels[0, :3] = -100
    return {  # name: (function of the inputs, inputs, the custom ops it goes through with grad)
        "attention": (lambda x, a, b: attn_op.attention(x, a, b, cos, sin, H), (x, w_qkv, w_o),
                      {"attention_fwd", "attention_bwd"}),
        "attention_no_rope": (lambda x, a, b: attn_op.attention(x, a, b, None, None, H), (x, w_qkv, w_o),
                              {"attention_fwd", "attention_bwd"}),
        "flash_attention": (lambda q: attn_op.flash_attention(q, H, cos, sin), (qkv,),
                            {"flash_attention_fwd", "flash_attention_bwd"}),
        "add_rms_norm": (norm_op.add_rms_norm, (x, other), {"add_rms_norm_fwd", "rms_norm_bwd"}),
        "add_rms_norm_inject": (lambda x, r, t: torch.stack(norm_op.add_rms_norm(x, r, inject=t)),
                                (x, other, randn(B, L, D, seed=10)), {"add_rms_norm_fwd", "rms_norm_bwd"}),
        "add_rms_norm_seq": (norm_op.add_rms_norm_seq, (x, other), {"add_rms_norm_fwd", "rms_norm_bwd"}),
        "swiglu": (swiglu_op.swiglu, (x, *channel), {"swiglu_fwd", "swiglu_bwd"}),
        "swiglu_recompute": (lambda *a: swiglu_op.swiglu(*a, recompute=True), (x, *channel),
                             {"swiglu_fwd", "swiglu_bwd"}),
        "swiglu_cublas": (swiglu_op.swiglu_cublas, (x, *channel), {"swiglu_cublas_fwd", "swiglu_cublas_bwd"}),
        "swiglu_token_mix": (swiglu_op.swiglu_token_mix, (x, *token), {"swiglu_token_mix_fwd", "swiglu_token_mix_bwd"}),
        # the sub-layers with their post-norm in one node (the forms the Triton block calls)
        "attention_post_norm": (lambda x, a, b: attn_op.attention(x, a, b, cos, sin, H, post_norm=True),
                                (x, w_qkv, w_o), {"attention_fwd", "attention_bwd"}),
        "swiglu_post_norm_inject": (lambda x, a, b, t: torch.stack(swiglu_op.swiglu(x, a, b, recompute=True,
                                                                                    post_norm=True, inject=t)),
                                    (x, *channel, randn(B, L, D, seed=12)), {"swiglu_fwd", "swiglu_bwd"}),
        "swiglu_token_mix_post_norm": (lambda *a: swiglu_op.swiglu_token_mix(*a, post_norm=True), (x, *token),
                                       {"swiglu_token_mix_fwd", "swiglu_token_mix_bwd",
                                        "swiglu_token_mix_post_norm_nograd"}),  # the call without grad: one kernel
        "token_cross_entropy": (lambda logits: ce_op.token_cross_entropy(logits, labels, "stablemax", -100)[0].float(),
                                (randn(B, L, 11, seed=13),), {"token_cross_entropy_fwd", "token_cross_entropy_bwd"}),
    }


def _run(fn, inputs, dy_seed=11):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, randn(*out.shape, seed=dy_seed))
    with torch.no_grad():
        out_no_grad = fn(*inputs)
    return [out, out_no_grad, *grads]


@pytest.mark.parametrize("name", list(_cases()))
def test_eager_path_and_custom_op_give_identical_values_and_gradients(name, dispatched):
    fn, inputs, op_names = _cases()[name]
    eager = _run(fn, inputs)
    assert not dispatched, dispatched  # the eager calls never reached the custom ops
    with _PassThrough():
        through_op = _run(fn, inputs)
    assert set(dispatched) == op_names, dispatched
    for a, b in zip(eager, through_op):
        assert torch.equal(a, b), name


def test_torch_compile_traces_the_custom_ops_forward_and_backward():
    """torch.compile(fullgraph=True) records trm_fast:: ops in its forward and backward graphs (not their
    implementations), and the compiled block gives the eager block's values and gradients."""
    cos, sin = (t.to(DEVICE) for t in R.rope_cos_sin(L, HD))
    w_qkv = randn(3 * H * HD, D, seed=1, scale=D ** -0.5, requires_grad=True)
    w_o = randn(D, H * HD, seed=2, scale=(H * HD) ** -0.5, requires_grad=True)
    w_gu = randn(2 * I, D, seed=3, scale=D ** -0.5, requires_grad=True)
    w_d = randn(D, I, seed=4, scale=I ** -0.5, requires_grad=True)
    weights = [w_qkv, w_o, w_gu, w_d]

    def block(h):
        h = norm_op.add_rms_norm(attn_op.attention(h, w_qkv, w_o, cos, sin, H), h)
        return norm_op.add_rms_norm(swiglu_op.swiglu(h, w_gu, w_d), h)

    graphs = {}

    def recorder(kind):
        def compiler(gm, example_inputs):
            graphs[kind] = {str(node.target) for node in gm.graph.nodes if node.op == "call_function"}
            return make_boxed_func(gm.forward)
        return compiler

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True,
                             backend=aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward")))
    x = randn(B, L, D, seed=7, requires_grad=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), [x] + weights)
    assert {"trm_fast.attention_fwd.default", "trm_fast.add_rms_norm_fwd.default",
            "trm_fast.swiglu_fwd.default"} <= graphs["forward"], graphs["forward"]
    assert {"trm_fast.attention_bwd.default", "trm_fast.rms_norm_bwd.default",
            "trm_fast.swiglu_bwd.default"} <= graphs["backward"], graphs["backward"]
    x_eager = x.detach().clone().requires_grad_(True)
    out_eager = block(x_eager)
    grads_eager = torch.autograd.grad(out_eager.square().sum(), [x_eager] + weights)
    assert torch.equal(out, out_eager)
    for g, e in zip(grads, grads_eager):
        assert torch.equal(g, e)
