"""The ahead-of-time check builds what really runs: the model's own blocks (trm_fast.model.layers.ReasoningNet, the
Triton ops, every recomputation level, with and without gradient) and the trainer's loss on the model's head
(trm_fast.train.losses.supervision_loss with the op set's token_cross_entropy, both kinds) at every preset's shapes
launch exactly the specialisations kernels/aot.py captures from the kernel launchers, which
tests/test_aot_compile.py compiles.

The blocks run on "meta" tensors (shapes and strides without memory, at the presets' real batch sizes) with the
ops' custom-op bodies dispatched directly (on meta, torch would otherwise run their fake shape functions), while
kernels/aot.py's `capture` records each launch as Triton's JIT would specialise it for sm_90 and sm_80.
"""
from kernel_utils import GPU  # noqa: F401  (first: sets TRITON_INTERPRET like every kernel test)

import dataclasses
import functools

import pytest
import torch
from torch._C import DispatchKey
from torch.utils._python_dispatch import TorchDispatchMode

from trm_fast.config import ModelConfig
from trm_fast.data.format import IGNORE_LABEL
from trm_fast.kernels import aot
from trm_fast.ops import reference
from trm_fast.model import TRM
from trm_fast.model.layers import ReasoningNet
from trm_fast.ops import OP_NAMES, get_ops
from trm_fast.train.losses import supervision_loss

SHAPES = aot.preset_block_shapes()
LOSS_SHAPES = aot.preset_loss_shapes()


class _OpBodiesOnMeta(TorchDispatchMode):
    """trm_fast's custom ops run their real bodies (which launch the kernels) on meta tensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "trm_fast":
            with self:
                return func._op_dk(DispatchKey.CompositeExplicitAutograd, *args, **kwargs)
        return func(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _net(shape: aot.BlockShape) -> tuple[ReasoningNet, tuple | None]:
    config = ModelConfig(seq_len=shape.seq, puzzle_emb_len=0, puzzle_emb_dim=0, hidden_size=shape.hidden,
                         num_heads=shape.heads, mixer=shape.mixer, pos_encoding="rope" if shape.rope else "none")
    assert (config.total_seq_len, config.mlp_hidden, config.head_dim) == (shape.seq, shape.mlp_hidden, shape.head_dim)
    if shape.mixer == "mlp":
        assert config.token_mix_hidden == shape.token_mix_hidden
    net = ReasoningNet(config, num_blocks=1).to("meta")
    rope = None
    if shape.rope:
        rope = tuple(t.to("meta") for t in reference.rope_cos_sin(shape.seq, shape.head_dim, config.rope_theta))
    return net, rope


def model_launches(shape: aot.BlockShape, recorder: aot.Recorder) -> None:
    """One block of the model as training and evaluation run it: without gradient, then forward and backward at
    recomputation levels 0, 1 and 2; with the Triton ops, then with swiglu's contender "triton_cublas"."""
    for swiglu in ("triton", "triton_cublas"):
        _block_launches(shape, recorder, get_ops({**dict.fromkeys(OP_NAMES, "triton"), "swiglu": swiglu}))


def _block_launches(shape: aot.BlockShape, recorder: aot.Recorder, ops) -> None:
    """The network called both ways the recursion calls it: with an injection, and on a sum made already with
    `then_add` (its last norm writes out + then_add too)."""
    net, rope = _net(shape)
    state = torch.empty(shape.batch, shape.seq, shape.hidden, dtype=aot.DTYPE, device="meta", requires_grad=True)
    injection = torch.empty_like(state, requires_grad=True)
    with _OpBodiesOnMeta():
        recorder.site = f"{shape.name}:eval"
        with torch.no_grad():
            net(state, injection, ops, rope)
            net(state, None, ops, rope, then_add=injection)
        for level in (0, 1, 2):
            recorder.site = f"{shape.name}:train level {level}"
            net.recompute = level
            outs = [net(state, injection, ops, rope), net(state, None, ops, rope, then_add=injection)]
            torch.autograd.grad(outs, [state, injection, *net.parameters()], [torch.empty_like(o) for o in outs])


@functools.lru_cache(maxsize=None)
def _head_model(vocab: int, seq: int, puzzle_len: int) -> TRM:
    """A narrow model with the shape's head: its logits are the lm_head's output sliced past the puzzle tokens."""
    config = ModelConfig(vocab_size=vocab, seq_len=seq, puzzle_emb_len=puzzle_len, puzzle_emb_dim=32 if puzzle_len else 0,
                         hidden_size=32, num_heads=1, num_blocks=1)
    return TRM(config).to("meta")


def loss_launches(shape: aot.LossShape, recorder: aot.Recorder) -> None:
    """The training step's loss on the model's head output with the Triton op set, both kinds, forward and backward;
    with a sample weight too (the per-batch scheme: the upstream gradient is then not an expanded scalar)."""
    model = _head_model(shape.vocab, shape.seq, shape.puzzle_len)
    ops = get_ops("triton")
    y = torch.empty(shape.batch, shape.puzzle_len + shape.seq, 32, dtype=aot.DTYPE, device="meta", requires_grad=True)
    labels = torch.empty(shape.batch, shape.seq, dtype=torch.int64, device="meta")
    with _OpBodiesOnMeta():
        for kind in ("stablemax", "softmax"):
            for weight in (None, torch.empty(shape.batch, device="meta")):
                recorder.site = f"{shape.name}:train loss {kind}{'' if weight is None else ' weighted'}"
                logits, q_halt, q_continue = model.heads(y)
                loss = supervision_loss(logits, labels, q_halt, q_continue, kind, sample_weight=weight,
                                        token_cross_entropy=ops.token_cross_entropy)
                torch.autograd.grad(loss.total, [y])


def test_the_loss_runs_the_op_of_the_trainers_ignore_label():
    """kernels/aot.py captures the loss with the trainer's ignore label (it may not import trm_fast.data)."""
    assert aot.LOSS_IGNORE_LABEL == IGNORE_LABEL


@pytest.mark.parametrize("arch", aot.ARCHS)
def test_model_launches_are_the_captured_builds(arch):
    """Every specialisation the model's blocks and the trainer's loss launch at every preset shape is one the AOT
    check builds, and the check builds nothing they do not launch."""
    with aot.capture(arch) as recorder:
        for shape in SHAPES:
            model_launches(shape, recorder)
        for shape in LOSS_SHAPES:
            loss_launches(shape, recorder)
    built = aot.preset_launches(arch, SHAPES, LOSS_SHAPES)
    missing = {aot.describe(launch): sites[:3] for launch, sites in recorder.launches.items() if launch not in built}
    extra = {aot.describe(launch): sites[:3] for launch, sites in built.items() if launch not in recorder.launches}
    assert not missing, f"sm_{arch}: launched by the model but not built by kernels/aot.py: {missing}"
    assert not extra, f"sm_{arch}: built by kernels/aot.py but never launched by the model: {extra}"


def test_capture_sees_batch_dependent_specialisations():
    """The capture really specialises on argument values: one preset block at its batch and at USER_BATCH gives
    two specialisations of the channel SwiGLU (M = B * L divisible by 16, or not) and one of the attention forward
    (batch only in its grid)."""
    shape = next(s for s in SHAPES if s.mixer == "attention" and s.hidden == 512 and s.seq == 97 and s.batch == 768)
    labels = {}
    for batch in (768, aot.USER_BATCH):
        with aot.capture(90) as recorder:
            model_launches(aot.BlockShape(**{**shape.__dict__, "batch": batch}), recorder)
        labels[batch] = {aot.describe(launch) for launch in recorder.launches}
    gate_up = {b: {v for label, v in ls if label.startswith("swiglu_gate_up") and "SAVE=True" in label}
               for b, ls in labels.items()}
    assert all("M!16" not in v for v in gate_up[768]) and all("M!16" in v for v in gate_up[aot.USER_BATCH])
    attn = {b: {(label, v) for label, v in ls if label.startswith("attn_fwd")} for b, ls in labels.items()}
    assert attn[768] == attn[aot.USER_BATCH] and len(attn[768]) == 1


@pytest.mark.parametrize("arch", aot.ARCHS)
def test_every_batch_size_launches_a_built_specialisation(arch):
    """Batch sizes other than the captured ones (1 to 33: every residue of B * L modulo 16; the per-GPU batches of
    2, 4 and 8 GPUs; evaluation's last partial batch is any of these) launch no specialisation the check lacks."""
    built = aot.preset_launches(arch, SHAPES, LOSS_SHAPES)
    batches = lambda shape: {*range(1, 34), *(shape.batch // gpus for gpus in (2, 4, 8) if shape.batch >= gpus)}
    shapes = {dataclasses.replace(shape, batch=batch): [] for shape in SHAPES for batch in batches(shape)}
    loss_shapes = {dataclasses.replace(shape, batch=batch): [] for shape in LOSS_SHAPES for batch in batches(shape)}
    missing = {aot.describe(launch): sites[:3] for launch, sites in aot.preset_launches(arch, shapes, loss_shapes).items()
               if launch not in built}
    assert not missing, f"sm_{arch}: specialisations launched at other batch sizes but not built: {missing}"
