"""Optimisers against closed forms: AdamATan2 (float64 hand computation of the published rule), AdamW wiring, the
warm-up/cosine schedule, sparse sign-SGD on the puzzle table, EMA."""
import math

import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.model.trm import PuzzleEmbedding
from trm_fast.train.ema import EMA
from trm_fast.train.optim import AdamATan2, SparseSignSGD, build_dense_optimizer, lr_at


def adam_atan2_by_hand(p0, grads, lrs, b1, b2, wd):
    """The published kernel's rule in float64, written out step by step."""
    p, m, v = p0.double().clone(), torch.zeros_like(p0, dtype=torch.float64), torch.zeros_like(p0, dtype=torch.float64)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p * (1 - lr * wd)
        p = p - lr / (1 - b1**t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - b2**t))
    return p


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_adam_atan2_matches_the_published_rule_by_hand(dtype, tol):
    gen = torch.Generator().manual_seed(1)
    shapes = [(7, 3), (5,)]
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) * 10 ** (k - 2) for k in range(5)] for s in shapes]
    lrs = [0.01, 0.02, 0.005, 0.03, 0.01]  # a schedule changes lr between steps
    params = [torch.nn.Parameter(p.to(dtype, copy=True)) for p in start]
    opt = AdamATan2(params, lr=lrs[0], betas=(0.9, 0.95), weight_decay=0.5)
    for k, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, g in zip(params, grads):
            p.grad = g[k].to(dtype)
        opt.step()
    for p, p0, g in zip(params, start, grads):
        want = adam_atan2_by_hand(p0, g, lrs, 0.9, 0.95, 0.5)
        torch.testing.assert_close(p.detach().double(), want, atol=tol, rtol=tol)
    assert all(opt.state[p]["exp_avg"].dtype == dtype for p in params)


def test_adam_atan2_first_step_is_bias_corrected_outside_the_atan2():
    # step 1: m = (1-b1) g, sqrt(v / bc2) = |g|, so the update is lr / (1-b1) * atan2((1-b1) g, |g|) per element;
    # the variant with m / bc1 inside the atan2 would give lr * pi/4 instead
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    p.grad = torch.tensor([2.0, -0.5, 1e-8], dtype=torch.float64)
    AdamATan2([p], lr=0.1, betas=(0.9, 0.99)).step()
    expected = -0.1 / 0.1 * math.atan(0.1) * torch.sign(p.grad)
    torch.testing.assert_close(p.detach(), expected, atol=1e-12, rtol=1e-12)


def test_adam_atan2_weight_decay_is_decoupled_and_update_bounded():
    p = torch.nn.Parameter(torch.tensor([3.0, -2.0, 0.5]))
    untouched = torch.nn.Parameter(torch.tensor([1.0]))  # no gradient: no decay, no state
    opt = AdamATan2([p, untouched], lr=0.1, betas=(0.9, 0.95), weight_decay=2.0)
    p.grad = torch.zeros(3)  # atan2(0, 0) = 0: only the decay acts
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, -2.0, 0.5]) * (1 - 0.1 * 2.0))
    assert untouched.item() == 1.0 and untouched not in opt.state
    # no epsilon and still bounded: huge or tiny gradients move a weight by at most lr / bc1 * pi / 2
    q = torch.nn.Parameter(torch.zeros(4))
    opt = AdamATan2([q], lr=0.1, betas=(0.9, 0.95), weight_decay=0.0)
    q.grad = torch.tensor([1e30, -1e30, 1e-30, 0.0])
    opt.step()
    assert torch.isfinite(q).all() and q.abs().max() <= 0.1 / 0.1 * math.pi / 2 + 1e-6


def test_adam_atan2_low_precision_parameters_keep_fp32_moments():
    p = torch.nn.Parameter(torch.randn(8).to(torch.bfloat16))
    opt = AdamATan2([p], lr=0.01)
    p.grad = torch.randn(8).to(torch.bfloat16)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float32 and p.dtype == torch.bfloat16
    # a state dict round trip keeps them fp32 (torch would cast them to the parameter's dtype)
    other = AdamATan2([p], lr=0.01)
    other.load_state_dict(opt.state_dict())
    assert other.state[p]["exp_avg_sq"].dtype == torch.float32


def test_adam_atan2_state_dict_resumes_bitwise():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(6, generator=gen) for _ in range(6)]
    a = torch.nn.Parameter(torch.randn(6, generator=gen))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = AdamATan2([a], lr=0.01, weight_decay=0.1)
    opt_b = AdamATan2([b], lr=0.01, weight_decay=0.1)
    for g in grads[:3]:
        for p, o in ((a, opt_a), (b, opt_b)):
            p.grad = g.clone()
            o.step()
    restored = AdamATan2([b], lr=0.01, weight_decay=0.1)
    restored.load_state_dict(opt_b.state_dict())
    for g in grads[3:]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        restored.step()
    assert torch.equal(a, b)


def test_adam_atan2_rejects_bad_hyperparameters():
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="betas"):
        AdamATan2(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="lr"):
        AdamATan2(p, lr=-1.0)


@pytest.mark.parametrize("name,cls", [("adam_atan2", AdamATan2), ("adamw", torch.optim.AdamW)])
def test_build_dense_optimizer_wiring(name, cls):
    cfg = TRMConfig.preset("sudoku4-tiny").override([f"train.optimizer={name}", "train.lr=0.003", "train.beta1=0.8",
                                                    "train.beta2=0.9", "train.weight_decay=0.25"]).train
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    live = torch.nn.Parameter(torch.zeros(2))
    opt = build_dense_optimizer(cfg, [frozen, live])
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.003 and tuple(group["betas"]) == (0.8, 0.9) and group["weight_decay"] == 0.25
    assert group["params"] == [live]
    if name == "adamw":  # torch's decoupled decay: p * (1 - lr wd) before the Adam step
        live.grad = torch.zeros(2)
        with torch.no_grad():
            live.fill_(1.0)
        opt.step()
        torch.testing.assert_close(live.detach(), torch.full((2,), 1 - 0.003 * 0.25))


def published_schedule(step, base_lr, warmup, total, min_ratio):
    """cosine_schedule_with_warmup_lr_lambda of the published code, re-derived: half a cosine (num_cycles 0.5)."""
    if step < warmup:
        return base_lr * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * 2 * 0.5 * progress))))


def test_lr_schedule_values():
    assert lr_at(0, 1e-4, 2000, 65000) == 0.0
    assert lr_at(1, 1e-4, 2000, 65000) == pytest.approx(5e-8)
    assert lr_at(1000, 1e-4, 2000, 65000) == pytest.approx(5e-5)
    assert lr_at(2000, 1e-4, 2000, 65000) == pytest.approx(1e-4)
    assert lr_at(40000, 1e-4, 2000, 65000) == pytest.approx(1e-4)  # min_ratio 1.0: constant (published)
    assert lr_at(6000, 1e-3, 2000, 10000, min_ratio=0.1) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(10000, 1e-3, 2000, 10000, min_ratio=0.1) == pytest.approx(1e-4)
    assert lr_at(5, 1e-3, 0, 10, min_ratio=0.0) == pytest.approx(0.5e-3)  # no warm-up
    for step in range(0, 130, 7):
        for min_ratio in (0.0, 0.3, 1.0):
            assert lr_at(step, 2e-3, 20, 120, min_ratio) == pytest.approx(published_schedule(step, 2e-3, 20, 120, min_ratio))


# ---------------------------------------------------------------------------------------------- sparse sign-SGD


def make_table(num_ids=9, dim=4, seed=0):
    emb = PuzzleEmbedding(num_ids, dim)
    emb.weight.copy_(torch.randn(num_ids, dim, generator=torch.Generator().manual_seed(seed)))
    emb.train()
    return emb


def record(emb, ids, grads):
    """One grad-enabled forward of the embedding followed by a backward that gives `grads` to its rows."""
    rows = emb(torch.tensor(ids))
    (rows * grads).sum().backward()


def test_sparse_sign_sgd_sums_duplicates_and_touches_only_batch_rows():
    emb = make_table()
    before = emb.weight.clone()
    ids = [1, 4, 1, 7, 1]
    grads = torch.tensor([[1.0, -2.0, 0.5, 0.0], [1.0, 1.0, -1.0, 0.0], [-3.0, 1.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.0], [1.5, 0.5, -1.0, 0.0]])
    record(emb, ids, grads)
    opt = SparseSignSGD(emb, lr=0.1, weight_decay=0.5)
    opt.step()
    decay = 1 - 0.1 * 0.5
    # id 1: sum of rows 0, 2, 4 = [-0.5, -0.5, -0.5, 0]: the sign of the SUM, not of each row
    torch.testing.assert_close(emb.weight[1], before[1] * decay - 0.1 * torch.tensor([-1.0, -1.0, -1.0, 0.0]))
    torch.testing.assert_close(emb.weight[4], before[4] * decay - 0.1 * torch.tensor([1.0, 1.0, -1.0, 0.0]))
    torch.testing.assert_close(emb.weight[7], before[7] * decay)  # in the batch with a zero gradient: decay only
    for untouched in (0, 2, 3, 5, 6, 8):
        assert torch.equal(emb.weight[untouched], before[untouched]), untouched
    assert emb.pending == []


def test_sparse_sign_sgd_gradient_accumulation_equals_one_batch():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 6, (12,), generator=gen).tolist()
    grads = torch.randn(12, 4, generator=gen)
    one, two = make_table(), make_table()
    record(one, ids, grads)
    record(two, ids[:5], grads[:5])  # two micro-batches: two pending entries
    record(two, ids[5:], grads[5:])
    assert len(two.pending) == 2
    SparseSignSGD(one, lr=0.05, weight_decay=0.2).step()
    SparseSignSGD(two, lr=0.05, weight_decay=0.2).step()
    torch.testing.assert_close(one.weight, two.weight, atol=0, rtol=0)


def test_sparse_sign_sgd_against_the_unique_formulation():
    gen = torch.Generator().manual_seed(5)
    emb = make_table(num_ids=50, dim=8)
    ids = torch.randint(0, 20, (64,), generator=gen)
    grads = torch.randn(64, 8, generator=gen)
    record(emb, ids.tolist(), grads)
    want = emb.weight.clone()
    unique, inverse = torch.unique(ids, return_inverse=True)
    summed = torch.zeros(len(unique), 8).index_add_(0, inverse, grads)
    want[unique] = want[unique] * (1 - 0.01 * 0.1) - 0.01 * torch.sign(summed)
    opt = SparseSignSGD(emb, lr=0.5, weight_decay=0.1)
    opt.step(lr=0.01)  # the schedule's lr overrides the constructor's
    torch.testing.assert_close(emb.weight, want)


def test_sparse_sign_sgd_zero_grad_state_and_errors():
    emb = make_table()
    before = emb.weight.clone()
    record(emb, [2, 3], torch.ones(2, 4))
    opt = SparseSignSGD(emb, lr=0.1, weight_decay=0.1)
    opt.zero_grad()
    assert emb.pending == []
    opt.step()  # nothing pending: nothing changes
    assert torch.equal(emb.weight, before)
    other = SparseSignSGD(emb, lr=1.0, weight_decay=0.0)
    other.load_state_dict(opt.state_dict())
    assert (other.lr, other.weight_decay) == (0.1, 0.1)
    with pytest.raises(ValueError, match="puzzle-embedding"):
        SparseSignSGD(None, lr=0.1, weight_decay=0.0)
    # an eval-mode or no-grad forward records nothing
    emb.eval()
    emb(torch.tensor([1]))
    emb.train()
    with torch.no_grad():
        emb(torch.tensor([1]))
    assert emb.pending == []


# ---------------------------------------------------------------------------------------------- EMA


class WithBuffers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
        self.register_buffer("table", torch.zeros(4, 3))


def test_ema_math_over_several_updates():
    model = WithBuffers()
    ema = EMA(model, rate=0.9)
    assert ema.names == ["lin.weight", "lin.bias"]  # neither the frozen parameter nor buffers
    want = {n: p.detach().double().clone() for n, p in model.named_parameters() if p.requires_grad}
    for k in range(4):
        with torch.no_grad():
            for p in model.lin.parameters():
                p.mul_(1.5).add_(k)
        ema.update()
        for n, p in model.named_parameters():
            if p.requires_grad:
                want[n] = 0.9 * want[n] + 0.1 * p.detach().double()
    for n, s in ema.state_dict().items():
        assert s.dtype == torch.float32
        torch.testing.assert_close(s.double(), want[n], atol=1e-6, rtol=1e-6)


def test_ema_apply_to_restores_the_live_weights_even_on_error():
    model = WithBuffers()
    ema = EMA(model, rate=0.5)
    with torch.no_grad():
        model.lin.weight.add_(1.0)
    ema.update()
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.apply_to(model):
        torch.testing.assert_close(model.lin.weight, ema.state_dict()["lin.weight"])
    with pytest.raises(RuntimeError, match="inside"):
        with ema.apply_to(model):
            raise RuntimeError("inside")
    assert all(torch.equal(live[k], v) for k, v in model.state_dict().items())
    # copy_to a second model, by parameter name; a DDP-style wrapper (.module) is unwrapped
    other = WithBuffers()
    wrapper = torch.nn.Module()
    wrapper.module = other
    ema.copy_to(wrapper)
    assert torch.equal(other.lin.weight, ema.state_dict()["lin.weight"])


def test_ema_state_dict_round_trip_and_mismatch():
    model = WithBuffers()
    ema = EMA(model, rate=0.99)
    with torch.no_grad():
        model.lin.bias.add_(3.0)
    ema.update()
    fresh = EMA(WithBuffers(), rate=0.99)
    fresh.load_state_dict({k: v.clone() for k, v in ema.state_dict().items()})
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ema.state_dict().items())
    with pytest.raises(ValueError, match="lin.bias"):
        fresh.load_state_dict({"lin.weight": ema.state_dict()["lin.weight"]})
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict({"lin.weight": torch.zeros(5, 3), "lin.bias": torch.zeros(2)})
