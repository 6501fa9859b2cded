"""The fused token loss (kernels/cross_entropy.py, trm_fast/ops/cross_entropy.py): the kernels against their
transcriptions and against the published code (trm_fast/token_loss.py, the op's "torch" implementation), forward
and backward, stablemax (float64) and softmax (fp32), fp32 and fp16 logits, NaN-poisoned outputs, odd sizes, V in
chunks, ignored labels, a sample without any supervised token, ties in argmax, large negative logits (stablemax's
1/(1-x) branch); the hand-written backward under fp64 gradcheck; the op under torch.compile(fullgraph=True); input
errors; the presets' launch configs; the supervision loss and step on the Triton op against the torch path; bf16 at
the presets' shapes on a GPU."""
from kernel_utils import DEVICE, GPU, assert_bf16_rule, assert_close, poisoned, randn  # first: sets TRITON_INTERPRET

import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.data.format import IGNORE_LABEL
from trm_fast.kernels import cross_entropy as K
from trm_fast.kernels import launch_configs
from trm_fast.ops import cross_entropy as ops
from trm_fast.ops import get_ops
from trm_fast.token_loss import token_cross_entropy as published

KINDS = ("stablemax", "softmax")
LOSS_DTYPE = {"stablemax": torch.float64, "softmax": torch.float32}


def _case(B, L, V, dtype=torch.float32, seed=0, puzzle=0, label_dtype=torch.int64):
    """Logits (B, L, V) sliced past `puzzle` positions as the model's head does, and labels with every hard case:
    ignored tokens, sample 1 without any supervised token (when B > 1), ties in argmax (a row of equal logits, a
    two-way tie of columns 1 and 2; each labelled with its first index: right under torch.argmax, wrong under a
    last-index rule), large negative logits."""
    full = randn(B, puzzle + L, V, dtype=torch.float32, seed=seed, scale=3.0)
    logits = full[:, puzzle:]
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, V, (B, L), generator=g).to(DEVICE)
    labels[:, ::4] = IGNORE_LABEL
    if B > 1:
        labels[1] = IGNORE_LABEL
    if L > 3:
        logits[0, 1] = 0.75  # all tied: argmax is column 0
        labels[0, 1] = 0
        logits[0, 2, 1:3] = logits[0, 2].max() + 1.0  # columns 1 and 2 tied at the top
        labels[0, 2] = 1
        logits[0, 3] = -1e4  # far into stablemax's 1/(1-x) branch (representable in fp16)
        logits[0, 3, -1] = -30.0
        labels[0, 3] = V - 1
    return logits.to(dtype), labels.to(label_dtype)


def _run_kernels(logits, labels, kind, d_loss):
    B, L, V = logits.shape
    loss, valid, correct = poisoned(B, dtype=LOSS_DTYPE[kind]), torch.full((B,), -1, device=DEVICE), \
        torch.full((B,), -1, device=DEVICE)
    K.token_cross_entropy_fwd(logits, labels, IGNORE_LABEL, kind == "stablemax", loss, valid, correct)
    dx = poisoned(B, L, V, dtype=logits.dtype)
    K.token_cross_entropy_bwd(d_loss, logits, labels, valid, IGNORE_LABEL, kind == "stablemax", dx)
    return loss, valid, correct, dx


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(3, 17, 11), (2, 1, 6), (1, 300, 6), (2, 9, 700)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_against_transcriptions_and_published_code(kind, shape, dtype):
    """(1, 300, 6) loops over L in several tiles, (2, 9, 700) over V in two chunks (online softmax)."""
    logits, labels = _case(*shape, dtype=dtype, puzzle=2)
    d_loss = randn(shape[0], dtype=LOSS_DTYPE[kind], seed=5)
    loss, valid, correct, dx = _run_kernels(logits, labels, kind, d_loss)
    ref_loss, ref_valid, ref_correct = K.token_cross_entropy_reference(logits, labels, IGNORE_LABEL, kind == "stablemax")
    tol = 1e-12 if kind == "stablemax" else 1e-5
    assert loss.dtype == LOSS_DTYPE[kind] and valid.dtype == correct.dtype == torch.int64
    assert_close(loss, ref_loss, tol, tol, "loss")
    assert torch.equal(valid, ref_valid) and torch.equal(correct, ref_correct)
    d_tol = 1e-6 if dtype == torch.float32 else 1e-3
    assert_close(dx, K.token_cross_entropy_backward_reference(d_loss, logits, labels, IGNORE_LABEL, kind == "stablemax"),
                 d_tol, d_tol, "d logits")

    leaf = logits.detach().clone().requires_grad_(True)
    pub_loss, pub_valid, pub_correct = published(leaf, labels, kind, IGNORE_LABEL)
    pub_dx = torch.autograd.grad(pub_loss, leaf, d_loss)[0]
    assert_close(loss, pub_loss, tol, tol, "loss vs published")
    assert torch.equal(valid, pub_valid) and torch.equal(correct, pub_correct)
    assert_close(dx, pub_dx, d_tol, d_tol, "d logits vs published")
    if shape[0] > 1:
        assert valid[1] == 0 and loss[1] == 0 and (dx[1] == 0).all()  # no supervised token: no loss, no gradient
    if shape[1] > 3:
        hits = (logits[0].argmax(-1) == labels[0]) & (labels[0] != IGNORE_LABEL)
        assert hits[1] and hits[2]  # the tie rows, counted right above (first index)
        assert torch.isfinite(loss).all() and torch.isfinite(dx).all()


class _TokenLossWithKernelBackward(torch.autograd.Function):
    """The kernels' forward transcription with the hand-written backward transcription, for gradcheck."""

    @staticmethod
    def forward(ctx, logits, labels, stablemax):
        ctx.save_for_backward(logits, labels)
        ctx.stablemax = stablemax
        return K.token_cross_entropy_reference(logits, labels, IGNORE_LABEL, stablemax)[0]

    @staticmethod
    def backward(ctx, d_loss):
        logits, labels = ctx.saved_tensors
        return K.token_cross_entropy_backward_reference(d_loss, logits, labels, IGNORE_LABEL, ctx.stablemax), None, None


@pytest.mark.parametrize("kind", KINDS)
def test_backward_formula_gradcheck_fp64(kind):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 7, dtype=torch.float64, generator=g) * 2).requires_grad_(True)
    labels = torch.randint(0, 7, (3, 5), generator=g)
    labels[0, 0], labels[2] = IGNORE_LABEL, IGNORE_LABEL
    assert torch.autograd.gradcheck(lambda x: _TokenLossWithKernelBackward.apply(x, labels, kind == "stablemax"),
                                    (logits,))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
def test_op_matches_published_code_with_autograd(kind, label_dtype):
    """The op on the head's strided logits slice, with the upstream gradient of a sum (an expanded scalar: stride 0)
    and of a weighted sum (stride 1)."""
    logits, labels = _case(4, 13, 11, puzzle=3, label_dtype=label_dtype)
    weight = randn(4, dtype=LOSS_DTYPE[kind], seed=7)
    for reduce in (lambda loss: loss.sum(), lambda loss: (loss * weight).sum()):
        outs, grads = [], []
        for fn in (ops.token_cross_entropy, published):
            leaf = logits.detach().clone().requires_grad_(True)
            loss, valid, correct = fn(leaf[:, :], labels, kind, IGNORE_LABEL)
            outs.append((loss, valid, correct))
            grads.append(torch.autograd.grad(reduce(loss), leaf)[0])
        (loss, valid, correct), (ref_loss, ref_valid, ref_correct) = outs
        assert loss.dtype == ref_loss.dtype and not valid.requires_grad and not correct.requires_grad
        assert_close(loss, ref_loss, 1e-6, 1e-6, "loss")
        assert torch.equal(valid, ref_valid) and torch.equal(correct, ref_correct)
        assert_close(grads[0], grads[1], 1e-6, 1e-6, "d logits")


def test_op_set_and_resolver_know_the_op():
    assert get_ops("torch").token_cross_entropy is published
    assert get_ops("triton").token_cross_entropy is ops.token_cross_entropy


def test_a_label_out_of_range_gives_nan_and_reads_nothing_out_of_bounds():
    logits, labels = _case(2, 6, 5)
    labels[0, 1] = 5  # one past the vocabulary
    loss, valid, correct = ops.token_cross_entropy(logits, labels, "stablemax", IGNORE_LABEL)
    assert torch.isnan(loss[0]) and not torch.isnan(loss[1:]).any()
    assert valid[0] == (labels[0] != IGNORE_LABEL).sum()


def test_op_composes_with_torch_compile_fullgraph():
    logits, labels = _case(3, 9, 6, puzzle=1)
    leaf = logits.detach().clone().requires_grad_(True)

    def fn(x):
        loss, valid, correct = ops.token_cross_entropy(x, labels, "stablemax", IGNORE_LABEL)
        return loss.sum() + (correct == valid).sum()

    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(leaf)
    (grad,) = torch.autograd.grad(out, leaf)
    ref = logits.detach().clone().requires_grad_(True)
    ref_out = fn(ref)
    assert_close(out, ref_out, name="compiled loss")
    assert_close(grad, torch.autograd.grad(ref_out, ref)[0], name="compiled d logits")


def test_bad_inputs_name_the_problem():
    logits, labels = _case(2, 5, 6)
    with pytest.raises(ValueError, match="logits has dtype torch.int64"):
        ops.token_cross_entropy(labels.unsqueeze(-1), labels, "stablemax", IGNORE_LABEL)
    with pytest.raises(ValueError, match="3 dimensions"):
        ops.token_cross_entropy(logits[0], labels[0], "stablemax", IGNORE_LABEL)
    with pytest.raises(ValueError, match="labels have dtype torch.float32"):
        ops.token_cross_entropy(logits, labels.float(), "stablemax", IGNORE_LABEL)
    with pytest.raises(ValueError, match=r"labels have shape \(2, 4\)"):
        ops.token_cross_entropy(logits, labels[:, :4], "stablemax", IGNORE_LABEL)
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        ops.token_cross_entropy(logits, [1, 2], "stablemax", IGNORE_LABEL)
    with pytest.raises(ValueError, match="kind must be 'stablemax' or 'softmax', got 'hinge'"):
        ops.token_cross_entropy(logits, labels, "hinge", IGNORE_LABEL)
    with pytest.raises(TypeError, match="ignore_label must be an int"):
        ops.token_cross_entropy(logits, labels, "stablemax", -100.0)


@pytest.mark.parametrize("L, V", [(81, 11), (900, 6), (900, 12)])
def test_preset_launch_configs_run(L, V):
    """Sudoku, Maze and ARC's logits at their launch configs (one program, the tiles looped over L)."""
    cfg = launch_configs.cross_entropy_config(L, V)
    assert cfg["BLOCK_L"] * cfg["BLOCK_V"] <= launch_configs.CROSS_ENTROPY_TILE and cfg["BLOCK_V"] >= V
    logits, labels = _case(1, L, V, puzzle=16)
    for kind in KINDS:
        d_loss = randn(1, dtype=LOSS_DTYPE[kind], seed=9)
        loss, valid, correct, dx = _run_kernels(logits, labels, kind, d_loss)
        ref = K.token_cross_entropy_reference(logits, labels, IGNORE_LABEL, kind == "stablemax")
        assert_close(loss, ref[0], 1e-6, 1e-6, f"{kind} loss")
        assert torch.equal(valid, ref[1]) and torch.equal(correct, ref[2])
        assert_close(dx, K.token_cross_entropy_backward_reference(d_loss, logits, labels, IGNORE_LABEL,
                                                                  kind == "stablemax"), name=f"{kind} d logits")


# ---------------------------------------------------------------------------------------------- the trainer's loss


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_supervision_loss_on_the_triton_op_matches_the_torch_path(kind, weighted):
    from trm_fast.train.losses import supervision_loss

    logits, labels = _case(5, 12, 6, puzzle=2)
    q_halt, q_continue, target = (randn(5, seed=s) for s in (11, 12, 13))
    weight = (torch.arange(5, device=DEVICE) % 2).float() if weighted else None
    results = []
    for op in (None, ops.token_cross_entropy):
        leaf = logits.detach().clone().requires_grad_(True)
        out = supervision_loss(leaf, labels, q_halt, q_continue, kind, target, weight, token_cross_entropy=op)
        results.append((out, torch.autograd.grad(out.total, leaf)[0]))
    (ref, ref_grad), (out, grad) = results
    for name in ("total", "lm", "halt", "cont"):
        assert getattr(out, name).dtype == getattr(ref, name).dtype
        assert_close(getattr(out, name), getattr(ref, name), 1e-6, 1e-6, name)
    for name in ("seq_correct", "token_correct", "supervised"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    assert_close(grad, ref_grad, 1e-6, 1e-6, "d logits")


def test_supervision_step_reaches_the_op_through_the_model():
    """A reference model whose token loss alone runs on Triton (a per-op override): the step's loss, metrics and
    every gradient match the all-reference model's; on a CPU the model resolves the published code by default."""
    import copy

    from trm_fast.model import build_model
    from trm_fast.train.act import SupervisionState, supervision_step

    config = TRMConfig.preset("sudoku4-tiny").override(["model.backend=torch"])
    reference = build_model(config.model).to(DEVICE)
    assert reference.resolved(torch.device(DEVICE))[1].token_cross_entropy is published
    fast = copy.deepcopy(reference)
    fast.override_ops({"token_cross_entropy": "triton"})
    assert fast.op_implementations(torch.device(DEVICE))["token_cross_entropy"] == "triton"
    B, L = 6, config.model.seq_len
    g = torch.Generator().manual_seed(3)
    batch = {"inputs": torch.randint(0, 6, (B, L), generator=g).to(DEVICE),
             "labels": torch.randint(1, 6, (B, L), generator=g).to(DEVICE),
             "puzzle_identifiers": torch.zeros(B, dtype=torch.long, device=DEVICE)}
    batch["labels"][:, ::3] = IGNORE_LABEL
    batch["labels"][2] = IGNORE_LABEL
    results = []
    for model in (reference, fast):
        state = SupervisionState.fresh(model, B, L, DEVICE)
        result = supervision_step(model, state, batch, step=0, seed=0, slot_index=torch.arange(B, device=DEVICE),
                                  training=True)
        result.loss.total.backward()
        results.append(result)
    ref, out = results
    assert_close(out.loss.total, ref.loss.total, 1e-6, 1e-6, "total")
    for name in ("seq_correct", "token_correct", "supervised"):
        assert torch.equal(getattr(out.loss, name), getattr(ref.loss, name)), name
    assert out.metrics.keys() == ref.metrics.keys()
    for name in ref.metrics:
        assert torch.equal(out.metrics[name], ref.metrics[name]), name
    for (name, p_ref), p in zip(reference.named_parameters(), fast.parameters()):
        assert_close(p.grad, p_ref.grad, 1e-6, 1e-5, f"d {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("L, V", [(81, 11), (900, 6), (900, 12)])
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_at_preset_shapes_gpu(L, V, kind):
    logits32, labels = _case(64, L, V, puzzle=16)
    d_loss = randn(64, dtype=LOSS_DTYPE[kind], seed=21)
    outs = {}
    for name, fn, dtype in (("ours", ops.token_cross_entropy, torch.bfloat16), ("torch", published, torch.bfloat16),
                            ("fp32", published, torch.float32)):
        x = logits32.to(dtype).requires_grad_(True)
        loss = fn(x, labels, kind, IGNORE_LABEL)[0]
        outs[name] = (loss, torch.autograd.grad(loss, x, d_loss)[0])
    assert_bf16_rule(outs["ours"][0], outs["torch"][0], outs["fp32"][0], "loss")
    assert_bf16_rule(outs["ours"][1], outs["torch"][1], outs["fp32"][1], "d logits")
