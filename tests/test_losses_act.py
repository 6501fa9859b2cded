"""Losses against float64 formulas, and the deep-supervision halting/carry rules."""
import math

import pytest
import torch
import torch.nn.functional as F

from trm_fast.config import TRMConfig
from trm_fast.data.format import IGNORE_LABEL
from trm_fast.model import TRM
from trm_fast.train.act import SupervisionState, keyed_uniform, supervision_step
from trm_fast.train.losses import q_continue_target, supervision_loss, token_losses


def test_stablemax_cross_entropy_against_float64_formula():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 7, 11, generator=g) * 3
    labels = torch.randint(0, 11, (4, 7), generator=g)
    labels[0, :3] = IGNORE_LABEL
    got = token_losses(logits, labels, "stablemax")
    for b in range(4):
        for t in range(7):
            if labels[b, t] == IGNORE_LABEL:
                assert got[b, t] == 0
                continue
            s = [1.0 / (1.0 - x) if x < 0 else x + 1.0 for x in logits[b, t].double().tolist()]
            want = -math.log(s[labels[b, t]] / sum(s))
            assert abs(got[b, t].item() - want) < 1e-12
    assert got.dtype == torch.float64


def test_softmax_cross_entropy():
    logits = torch.randn(3, 5, 6)
    labels = torch.randint(0, 6, (3, 5))
    labels[1, 1] = IGNORE_LABEL
    got = token_losses(logits, labels, "softmax")
    want = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_LABEL, reduction="none")
    torch.testing.assert_close(got, want)


def test_supervision_loss_normalises_per_sequence_and_combines_halt():
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[1, 2, IGNORE_LABEL, IGNORE_LABEL], [0, 1, 2, 3]])
    q_halt = torch.tensor([0.3, -1.0])
    out = supervision_loss(logits, labels, q_halt, torch.zeros(2), "stablemax")
    per_token = token_losses(logits, labels, "stablemax")
    lm = per_token[0].sum() / 2 + per_token[1].sum() / 4
    exact = (logits.argmax(-1) == labels) | (labels == IGNORE_LABEL)
    halt = F.binary_cross_entropy_with_logits(q_halt, exact.all(-1).float(), reduction="sum")
    torch.testing.assert_close(out.total, lm + 0.5 * halt.double())


def test_q_continue_target():
    nh, nc = torch.tensor([0.5, -2.0, 1.0]), torch.tensor([1.5, -1.0, 3.0])
    last = torch.tensor([False, False, True])
    want = torch.sigmoid(torch.tensor([1.5, -1.0, 1.0]))
    torch.testing.assert_close(q_continue_target(nh, nc, last), want)


def test_keyed_draws_do_not_depend_on_the_split():
    idx = torch.arange(64)
    whole = keyed_uniform(7, 11, idx, 0)
    split = torch.cat([keyed_uniform(7, 11, idx[:20], 0), keyed_uniform(7, 11, idx[20:], 0)])
    assert torch.equal(whole, split)
    assert not torch.equal(whole, keyed_uniform(7, 12, idx, 0))
    assert not torch.equal(whole, keyed_uniform(7, 11, idx, 1))
    many = keyed_uniform(1, 2, torch.arange(100_000), 0)
    assert 0 <= many.min() and many.max() < 1 and abs(many.mean().item() - 0.5) < 0.01


def _model(*overrides):
    config = TRMConfig.preset("sudoku4-tiny").override(["model.halt_max_steps=16", *overrides])
    return TRM(config.model), config


def _batch(config, B, fill):
    L = config.model.seq_len
    return {"inputs": torch.full((B, L), fill, dtype=torch.int32), "labels": torch.full((B, L), fill, dtype=torch.int64),
            "puzzle_identifiers": torch.zeros(B, dtype=torch.int64)}


def test_halted_slots_restart_and_take_the_fresh_rows():
    model, config = _model()
    B = 4
    state = SupervisionState.fresh(model, B, config.model.seq_len, "cpu")
    idx = torch.arange(B)
    res = supervision_step(model, state, _batch(config, B, 2), step=0, seed=0, slot_index=idx, training=True)
    assert torch.all(res.state.inputs == 2) and torch.all(res.state.steps == 1)
    res.state.halted = torch.tensor([True, False, True, False])
    res2 = supervision_step(model, res.state, _batch(config, B, 3), step=1, seed=0, slot_index=idx, training=True)
    assert res2.state.inputs[:, 0].tolist() == [3, 2, 3, 2]
    assert res2.state.steps.tolist() == [1, 2, 1, 2]


def test_cap_at_halt_max_steps_and_eval_runs_all_steps():
    model, config = _model()  # q_head bias -5: never wants to halt
    B = 6
    for training in (True, False):
        state = SupervisionState.fresh(model, B, config.model.seq_len, "cpu")
        state.halted[:] = True
        for step in range(16):
            res = supervision_step(model, state, _batch(config, B, 2), step=step, seed=0, slot_index=torch.arange(B),
                                   training=training)
            state = res.state
            if step < 15:
                assert not state.halted.any()
        assert state.halted.all() and torch.all(state.steps == 16)


def test_exploration_bounds_minimum_steps():
    model, config = _model("model.halt_exploration_prob=1.0")
    with torch.no_grad():
        model.q_head_bias.fill_(5.0)  # always wants to halt
    B = 512
    state = SupervisionState.fresh(model, B, config.model.seq_len, "cpu")
    halt_step = torch.zeros(B, dtype=torch.int64)
    for step in range(16):
        res = supervision_step(model, state, _batch(config, B, 2), step=step, seed=5, slot_index=torch.arange(B),
                               training=True)
        newly = res.state.halted & (halt_step == 0)
        halt_step[newly] = res.state.steps[newly].long()
        res.state.halted = res.state.halted & (halt_step == 0)  # keep halted slots from restarting
        state = res.state
        state.halted = torch.zeros_like(state.halted)
        state.steps = torch.where(halt_step > 0, torch.full_like(state.steps, -100), state.steps)
    halted = halt_step[halt_step > 0]
    assert halted.min() >= 2 and halted.max() <= 16
    # The minimum is drawn anew every step (as the published code does): P(halt at step s | running) = (s-1)/15.
    assert 0.03 < (halted == 2).float().sum().item() / B < 0.11
    assert (halt_step > 0).all()

    model2, config2 = _model("model.halt_exploration_prob=0.0")
    with torch.no_grad():
        model2.q_head_bias.fill_(5.0)
    state = SupervisionState.fresh(model2, 8, config2.model.seq_len, "cpu")
    res = supervision_step(model2, state, _batch(config2, 8, 2), step=0, seed=0, slot_index=torch.arange(8), training=True)
    assert res.state.halted.all()  # without exploration a confident head halts after one step


def test_keyed_uniform_draws_several_streams_in_one_pass():
    idx = torch.arange(3, 300, 7)
    for seed, step in ((7, 11), (torch.tensor(7), torch.tensor(11))):
        both = keyed_uniform(seed, step, idx, (0, 1))
        assert both.shape == (2, len(idx))
        assert torch.equal(both[0], keyed_uniform(7, 11, idx, 0))
        assert torch.equal(both[1], keyed_uniform(7, 11, idx, 1))
        assert not torch.equal(both[0], both[1])
