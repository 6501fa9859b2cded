"""The Triton ops' weight casts (trm_fast.ops._custom_op.cast_weight): each fp32 master is cast to the activation dtype
once and reused until the master changes (an optimiser step, an EMA swap, a checkpoint load, a CUDA-graph replay), the
values those of a fresh cast, and the weight gradients still reach the fp32 masters in fp32.

On a GPU only (not run here): a captured step casts at every use inside the graph (cast_weight caches nothing while
the stream captures) and GraphedCarryStep bumps the masters' versions after each replay
(train.optim.mark_parameters_written, the dense optimiser's step post-hook); the CPU checks the bump."""

from kernel_utils import DEVICE, randn  # first: sets TRITON_INTERPRET

import torch

from trm_fast.ops import swiglu as ops
from trm_fast.ops._custom_op import cast_weight
from trm_fast.config import TRMConfig
from trm_fast.train.ema import EMA
from trm_fast.train.optim import build_dense_optimizer, mark_parameters_written

BF16 = torch.bfloat16
LOW = torch.float16  # the ops' activations here: Triton's CPU interpreter has no bf16 arithmetic


def _master(rows=6, cols=5, seed=0):
    return torch.nn.Parameter(randn(rows, cols, seed=seed))


def test_a_weight_is_cast_once_until_it_is_written():
    w = _master()
    first = cast_weight(w, BF16)
    assert cast_weight(w, BF16) is first and torch.equal(first, w.detach().to(BF16))
    transposed = cast_weight(w, BF16, transposed=True)
    assert cast_weight(w, BF16, transposed=True) is transposed and torch.equal(transposed, w.detach().t().to(BF16))
    with torch.no_grad():
        w.mul_(3.0)  # an optimiser step writes in place: the version counter moves
    again = cast_weight(w, BF16)
    assert again is not first and torch.equal(again, w.detach().to(BF16))
    assert torch.equal(cast_weight(w, BF16, transposed=True), w.detach().t().to(BF16))
    assert cast_weight(w, LOW).dtype == LOW and cast_weight(w, LOW) is not first  # one entry per dtype


def test_the_ema_swap_is_seen():
    module = torch.nn.Linear(5, 6, bias=False).to(DEVICE)
    ema = EMA(module, rate=0.5)
    with torch.no_grad():
        module.weight.add_(1.0)
    live = cast_weight(module.weight, BF16)
    ema.update()
    with ema.apply_to(module):
        assert torch.equal(cast_weight(module.weight, BF16), ema.shadow[0].to(BF16))
    assert torch.equal(cast_weight(module.weight, BF16), live)


def test_writes_unseen_by_the_version_counter_are_marked():
    w = _master()
    first = cast_weight(w, BF16)
    with torch.no_grad():  # what a graph replay does: the optimiser inside the graph writes w, Python does not see it
        w.data.add_(1.0)  # (.data: an in-place write that leaves the version counter alone, as a replay does)
    assert cast_weight(w, BF16) is first  # stale until the step says what the replay wrote
    mark_parameters_written(torch.optim.AdamW([w]))  # what GraphedCarryStep runs after each replay
    assert torch.equal(cast_weight(w, BF16), w.detach().to(BF16))


def test_a_fused_optimiser_step_is_seen():
    w = _master()
    w.grad = torch.ones_like(w)
    opt = torch.optim.AdamW([w], lr=0.1, fused=True)  # its kernel does not move the version counter
    opt.register_step_post_hook(mark_parameters_written)
    first = cast_weight(w, BF16)
    opt.step()
    assert not torch.equal(w.detach().to(BF16), first) and torch.equal(cast_weight(w, BF16), w.detach().to(BF16))
    for optimizer in ("adam_atan2", "adamw"):
        train = TRMConfig.preset("sudoku4-tiny").override([f"train.optimizer={optimizer}"]).train
        dense = build_dense_optimizer(train, [w])
        assert mark_parameters_written in dense._optimizer_step_post_hooks.values()


def _swiglu_run(form, x, w_gate_up, w_down):
    op = ops.swiglu if form == "channel" else ops.swiglu_token_mix
    out = op(x, w_gate_up, w_down)
    grads = torch.autograd.grad(out.float().square().sum(), [x, w_gate_up, w_down])
    return out, grads


def _swiglu_masters(form):
    B, L, D, I = 2, 9, 16, 8
    width = D if form == "channel" else L
    return (randn(B, L, D, dtype=LOW, seed=1, requires_grad=True),
            _master(2 * I, width, seed=2), _master(width, I, seed=3))


def test_cached_casts_give_fresh_values_and_fp32_master_gradients():
    for form in ("channel", "token"):
        x, w_gate_up, w_down = _swiglu_masters(form)
        first = _swiglu_run(form, x, w_gate_up, w_down)
        second = _swiglu_run(form, x, w_gate_up, w_down)  # every cast from the cache
        for a, b in zip((first[0],) + first[1], (second[0],) + second[1]):
            assert torch.equal(a, b)
        assert first[1][1].dtype == first[1][2].dtype == torch.float32
        with torch.no_grad():
            w_gate_up.mul_(0.5)
            w_down.add_(0.25)
        cached = _swiglu_run(form, x, w_gate_up, w_down)
        fresh = _swiglu_run(form, x, *(torch.nn.Parameter(w.detach().clone()) for w in (w_gate_up, w_down)))
        for a, b in zip((cached[0],) + cached[1], (fresh[0],) + fresh[1]):
            assert torch.equal(a, b), form


def test_compiled_ops_see_written_masters():
    x, w_gate_up, w_down = _swiglu_masters("channel")
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: ops.swiglu(*a), fullgraph=True, backend="aot_eager")
    compiled(x, w_gate_up, w_down)
    with torch.no_grad():
        w_gate_up.mul_(0.5)
    out = compiled(x, w_gate_up, w_down)
    fresh = ops.swiglu(x, torch.nn.Parameter(w_gate_up.detach().clone()), w_down)
    assert torch.equal(out, fresh)


def test_an_entry_goes_with_its_master():
    from trm_fast.ops import _custom_op

    w = _master(seed=3)
    cast_weight(w, BF16)
    key = (id(w), BF16, False)
    assert key in _custom_op._CASTS
    del w  # the weak reference's callback drops the entry: a later weight with the same id starts afresh
    assert key not in _custom_op._CASTS
