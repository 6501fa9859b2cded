"""The paper's comparison rows: every row builds and trains, gradients reach exactly what the row says, HRM's
published parameter count, and the Q-continue target of HRM's halting."""
import pytest
import torch

from trm_fast.ablations import ROWS, render_table, row_config, run_row
from trm_fast.config import TRMConfig
from trm_fast.model import HRM, build_model, count_parameters
from trm_fast.train.act import SupervisionState, supervision_step
from trm_fast.train.losses import q_continue_target

TINY = ["model.hidden_size=32", "model.num_heads=2", "model.puzzle_emb_dim=32"]


def tiny_row(row):
    return row_config(row, base="sudoku4-tiny", extra=TINY)


def _batch(config, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = config.model
    return torch.randint(0, m.vocab_size, (B, m.seq_len), generator=g), torch.zeros(B, dtype=torch.long)


def _net_calls_with_grad(model, config):
    """Counts forward calls and calls whose output receives gradient, per network module."""
    counts = {}

    def hook(name):
        def fn(module, args, output):
            c = counts.setdefault(name, {"forward": 0, "grad": 0})
            c["forward"] += 1
            if output.requires_grad:
                output.register_hook(lambda g: c.__setitem__("grad", c["grad"] + 1))
        return fn

    for name in ("net", "net_y", "net_high"):
        if hasattr(model, name):
            getattr(model, name).register_forward_hook(hook(name))
    inputs, ids = _batch(config)
    out = model(model.initial_carry(3, "cpu"), inputs, ids)
    (out.logits.float().square().sum() + out.q_halt.sum()).backward()
    return counts, out


@pytest.mark.parametrize("row", list(ROWS))
def test_every_row_builds_and_trains(row, tmp_path):
    result = run_row(row, budget_steps=2, base="sudoku4-tiny", out_root=str(tmp_path), extra=TINY, progress=False)
    assert result["row"] == row and 0.0 <= result["exact_accuracy"] <= 1.0
    md, png = render_table(str(tmp_path))
    assert row in open(md).read()


def test_full_backprop_reaches_the_last_cycle():
    config = tiny_row("trm-mlp")
    counts, _ = _net_calls_with_grad(build_model(config.model), config)
    T, n = config.model.T, config.model.n
    assert counts["net"] == {"forward": T * (n + 1), "grad": n + 1}


def test_one_step_gradient_reaches_only_the_last_z_update_and_the_y_update():
    config = tiny_row("1-step-grad")
    model = build_model(config.model)
    counts, _ = _net_calls_with_grad(model, config)
    T, n = config.model.T, config.model.n
    assert counts["net"] == {"forward": T * (n + 1), "grad": 2}


def test_separate_networks_both_receive_gradient():
    config = tiny_row("separate-nets")
    model = build_model(config.model)
    counts, _ = _net_calls_with_grad(model, config)
    assert counts["net"]["grad"] == config.model.n and counts["net_y"]["grad"] == 1
    for name in ("net", "net_y"):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters())


def test_single_latent_has_no_y_state():
    config = tiny_row("single-latent")
    model = build_model(config.model)
    carry = model.initial_carry(3, "cpu")
    assert len(carry) == 1
    counts, out = _net_calls_with_grad(model, config)
    assert len(out.carry) == 1 and counts["net"]["grad"] == config.model.n + 1


def test_multiscale_carries_n_plus_one_features():
    config = tiny_row("multiscale-latent")
    model = build_model(config.model)
    assert len(model.initial_carry(2, "cpu")) == config.model.n + 1
    counts, out = _net_calls_with_grad(model, config)
    assert len(out.carry) == config.model.n + 1 and counts["net"]["grad"] == config.model.n + 1


def test_hrm_uses_two_networks_and_the_one_step_gradient():
    config = tiny_row("hrm")
    model = build_model(config.model)
    assert isinstance(model, HRM)
    counts, _ = _net_calls_with_grad(model, config)
    T, n = config.model.T, config.model.n
    assert counts["net"] == {"forward": T * n, "grad": 1}
    assert counts["net_high"] == {"forward": T, "grad": 1}


@pytest.mark.parametrize("vocab, expected", [(11, 27_275_266), (12, 27_276_290)])
def test_hrm_parameter_count(vocab, expected):
    config = TRMConfig.preset("hrm-sudoku").override([f"model.vocab_size={vocab}"])
    assert count_parameters(build_model(config.model)) == expected


def test_hrm_q_continue_target_is_computed_as_defined():
    config = tiny_row("hrm").override(["model.halt_max_steps=3"])
    model = build_model(config.model)
    with torch.no_grad():
        model.q_head_weight.normal_(0, 0.5)
    B = 4
    state = SupervisionState.fresh(model, B, config.model.seq_len, "cpu")
    inputs, ids = _batch(config, B)
    batch = {"inputs": inputs, "labels": inputs.clone(), "puzzle_identifiers": ids}
    for step in range(3):
        res = supervision_step(model, state, batch, step=step, seed=0, slot_index=torch.arange(B), training=True)
        # the target: an extra no-grad forward from the new carry, sigmoid(next q_halt) on the last step,
        # else sigmoid(max(next q_halt, next q_continue))
        with torch.no_grad():
            nxt = model(res.state.carry, res.state.inputs, res.state.puzzle_ids)
        is_last = res.state.steps >= 3
        want = q_continue_target(nxt.q_halt, nxt.q_continue, is_last)
        manual = torch.sigmoid(torch.where(is_last, nxt.q_halt, torch.maximum(nxt.q_halt, nxt.q_continue)))
        torch.testing.assert_close(res.continue_target, manual)
        torch.testing.assert_close(want, manual)
        # the continue loss of the step is the summed BCE of q_continue against that target
        out = model(model.reset_carry(state.halted, state.carry), res.state.inputs, res.state.puzzle_ids)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.q_continue, manual, reduction="sum")
        torch.testing.assert_close(res.loss.cont.float(), bce.detach(), atol=1e-5, rtol=1e-5)
        state = res.state
        state.halted = torch.zeros_like(state.halted) if step < 1 else state.halted
