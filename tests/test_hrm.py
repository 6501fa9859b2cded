"""HRM on the shared engine: the published parameter count, its recursion against a hand-written transcription,
the 1-step gradient at block level, the carry, and the Q-continue target of its halting."""
import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.model import HRM, build_model, count_parameters
from trm_fast.train.act import SupervisionState, supervision_step
from trm_fast.train.losses import q_continue_target

from model_utils import count_block_grads, tiny_batch

TINY = ["model.hidden_size=32", "model.num_heads=2", "model.puzzle_emb_dim=32", "model.num_puzzle_identifiers=4"]


def tiny_hrm(*extra):
    base = TRMConfig.preset("hrm-sudoku").model
    config = TRMConfig.preset("sudoku4-tiny").override(
        [f"model.{k}={getattr(base, k)}" for k in ("arch", "T", "n", "hrm_high_blocks", "hrm_low_blocks", "mixer",
                                                   "pos_encoding", "puzzle_emb_len", "act_continue")]
        + TINY + list(extra))
    return config


@pytest.mark.parametrize("vocab, expected", [(11, 27_275_266), (12, 27_276_290)])
def test_parameter_count_of_the_published_model(vocab, expected):
    config = TRMConfig.preset("hrm-sudoku").override([f"model.vocab_size={vocab}"])
    with torch.device("meta"):  # the full-size model's shapes without allocating or initialising it
        model = build_model(config.model)
    assert isinstance(model, HRM) and count_parameters(model) == expected
    # 8 blocks of attention (4 D^2) + SwiGLU (3 D I), embeddings and lm head (2 V D), q head (2 D + 2)
    D, I = 512, 1536
    assert len(model.net.blocks) == 4 and len(model.net_high.blocks) == 4
    assert expected == 8 * (4 * D * D + 3 * D * I) + 2 * vocab * D + 2 * D + 2


def test_published_configuration():
    m = TRMConfig.preset("hrm-sudoku").model
    assert (m.T, m.n, m.hrm_high_blocks, m.hrm_low_blocks, m.hidden_size, m.num_heads) == (2, 2, 4, 4, 512, 8)
    assert (m.mixer, m.pos_encoding, m.puzzle_emb_len, m.act_continue) == ("attention", "rope", 1, True)
    assert m.total_seq_len == 82
    assert TRMConfig.preset("hrm-sudoku").train.ema is False  # HRM trains without EMA


def test_forward_matches_a_transcription_of_the_published_recursion():
    config = tiny_hrm("model.T=3", "model.n=3")  # odd cycle counts catch an off-by-one in the no-grad part
    model = build_model(config.model)
    with torch.no_grad():
        model.q_head_weight.normal_(0, 0.3)
    inputs, ids = tiny_batch(config)
    carry = model.initial_carry(3, "cpu")
    out = model(carry, inputs, ids)

    # the published loops, written out: H cycles of L steps, skipping the last L and H step, then both with grad
    x, (z_h, z_l), ops, rope = model.prepare(carry, inputs, ids)
    T, n = config.model.T, config.model.n
    with torch.no_grad():
        for h_step in range(T):
            for l_step in range(n):
                if not (h_step == T - 1 and l_step == n - 1):
                    z_l = model.net(z_l, z_h + x, ops, rope)
            if h_step != T - 1:
                z_h = model.net_high(z_h, z_l, ops, rope)
        z_l = model.net(z_l, z_h + x, ops, rope)
        z_h = model.net_high(z_h, z_l, ops, rope)
        logits = (z_h @ model.lm_head.t())[:, config.model.puzzle_emb_len:]
        q = z_h[:, 0] @ model.q_head_weight.t() + model.q_head_bias
    torch.testing.assert_close(out.carry[0], z_h, rtol=0, atol=0)
    torch.testing.assert_close(out.carry[1], z_l, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.q_halt, q[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.q_continue, q[:, 1], rtol=1e-5, atol=1e-5)


def test_one_step_gradient_reaches_only_the_last_low_and_high_step():
    config = tiny_hrm("model.T=3", "model.n=3")
    model = build_model(config.model)
    counts, out = count_block_grads(model, config)
    T, n, low, high = config.model.T, config.model.n, config.model.hrm_low_blocks, config.model.hrm_high_blocks
    assert counts["net"] == [T * n * low, low]
    assert counts["net_high"] == [T * high, high]
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(not t.requires_grad for t in out.carry)


def test_carry_starts_from_the_init_buffers_and_resets_per_sample():
    model = build_model(tiny_hrm().model)
    z_h, z_l = model.initial_carry(2, "cpu")
    assert torch.equal(z_h, model.H_init.float().expand_as(z_h)) and torch.equal(z_l, model.L_init.float().expand_as(z_l))
    assert model.H_init.dtype == torch.bfloat16 and not torch.equal(model.H_init, model.L_init)
    moved = (z_h + 1.0, z_l - 1.0)
    reset = model.reset_carry(torch.tensor([True, False]), moved)
    assert torch.equal(reset[0][0], z_h[0]) and torch.equal(reset[1][0], z_l[0])
    assert torch.equal(reset[0][1], moved[0][1]) and torch.equal(reset[1][1], moved[1][1])


def test_q_continue_target_is_computed_as_defined():
    """The engine's target: an extra no-grad forward on the new carry; sigmoid(next q_halt) on the last step, else
    sigmoid(max(next q_halt, next q_continue)); loss = lm + 0.5 (halt BCE + continue BCE)."""
    config = tiny_hrm("model.halt_max_steps=3", "model.halt_exploration_prob=0.0")
    model = build_model(config.model)
    with torch.no_grad():
        model.q_head_weight.normal_(0, 0.5)
        model.q_head_bias.copy_(torch.tensor([-2.0, 2.0]))  # some samples halt by Q, one runs to the last step
    B = 4
    state = SupervisionState.fresh(model, B, config.model.seq_len, "cpu")
    inputs, ids = tiny_batch(config, B)
    batch = {"inputs": inputs, "labels": inputs.clone(), "puzzle_identifiers": ids}
    saw_last = saw_q_halt = False
    for step in range(4):
        carry_in = model.reset_carry(state.halted, state.carry)
        res = supervision_step(model, state, batch, step=step, seed=0, slot_index=torch.arange(B), training=True)
        with torch.no_grad():
            nxt = model(res.state.carry, res.state.inputs, res.state.puzzle_ids)
        is_last = res.state.steps >= 3
        manual = torch.sigmoid(torch.where(is_last, nxt.q_halt, torch.maximum(nxt.q_halt, nxt.q_continue)))
        torch.testing.assert_close(res.continue_target, manual)
        torch.testing.assert_close(q_continue_target(nxt.q_halt, nxt.q_continue, is_last), manual)
        # the step's continue loss: summed BCE of this step's q_continue against that target
        out = model(carry_in, res.state.inputs, res.state.puzzle_ids)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.q_continue, manual, reduction="sum")
        torch.testing.assert_close(res.loss.cont.float(), bce.detach(), atol=1e-5, rtol=1e-5)
        # halting with the continue loss: q_halt > q_continue (no exploration here), or the last step
        torch.testing.assert_close(res.state.halted, is_last | (out.q_halt > out.q_continue))
        saw_last |= bool(is_last.any())
        saw_q_halt |= bool((res.state.halted & ~is_last).any())
        state = res.state
    assert saw_last and saw_q_halt
