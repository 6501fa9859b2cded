"""Memory-lean recursion: gradients equal at every recomputation level on both backends, bytes saved for backward
counted exactly at a small config, the memory model against measurements, and the budget planner."""
import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.memory import estimate, estimate_saved_bytes, parse_bytes, plan_for_budget, saved_bytes_per_step
from trm_fast.model import build_model


def config_for(mixer, backend="torch", level=0, D=32, H=1, T=2, n=2, blocks=2):
    pos = "rope" if mixer == "attention" else "none"
    return TRMConfig.preset("sudoku4-tiny").override([
        f"model.backend={backend}", f"model.mixer={mixer}", f"model.pos_encoding={pos}", f"model.hidden_size={D}",
        f"model.puzzle_emb_dim={D}", f"model.num_heads={H}", f"model.T={T}", f"model.n={n}",
        f"model.num_blocks={blocks}", f"model.recompute={level}"])


def grads_at(config):
    torch.manual_seed(0)
    model = build_model(config.model)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, config.model.vocab_size, (3, config.model.seq_len), generator=g)
    out = model(model.initial_carry(3, "cpu"), inputs, torch.zeros(3, dtype=torch.long))
    (out.logits.square().sum() + out.q_halt.sum()).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_gradients_equal_full_backprop_at_every_level(backend, mixer):
    base = grads_at(config_for(mixer, backend, 0))
    for level in (1, 2):
        for g, g0 in zip(grads_at(config_for(mixer, backend, level)), base):
            if backend == "torch":
                assert torch.equal(g, g0), f"level {level}"  # same ops replayed: bitwise
            else:
                torch.testing.assert_close(g, g0, atol=1e-4, rtol=1e-5)


def _expected(config, level, backend, B):
    """Exact bytes saved for backward at a fp32 CPU config, from what each op saves (see trm_fast/memory.py)."""
    m = config.model
    L, D, I, H, Im = m.total_seq_len, m.hidden_size, m.mlp_hidden, m.num_heads, m.token_mix_hidden
    blocks, calls = (m.n + 1) * m.num_blocks, m.n + 1
    index = m.seq_len * 8  # the embedding lookup keeps its int64 indices
    if level == 2:  # every block's input, the final y (kept by the lm head), the indices
        return B * (4 * (blocks * L * D + L * D) + index)
    assert backend == "triton" and level == 1
    if m.mixer == "attention":
        per_block = 4 * (3 * L * D + L * D + L * D + L * I + L * D) + 4 * (H * L + 2 * L)
    else:
        per_block = 4 * (D * Im + L * D + L * I + L * D) + 4 * (D + L)
    return B * (4 * calls * L * D + blocks * per_block + index)


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
@pytest.mark.parametrize("backend, level", [("torch", 2), ("triton", 2), ("triton", 1)])
def test_saved_bytes_are_exact(mixer, backend, level):
    config = config_for(mixer, backend, level)
    assert saved_bytes_per_step(build_model(config.model), 4) == _expected(config, level, backend, 4)


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_level_two_saves_a_small_fraction(mixer):
    b0 = saved_bytes_per_step(build_model(config_for(mixer, "torch", 0, D=64, H=2, n=4).model), 4)
    b2 = saved_bytes_per_step(build_model(config_for(mixer, "torch", 2, D=64, H=2, n=4).model), 4)
    assert b2 * 16 <= b0


GRID = [(32, 1, 2, 2, 1), (32, 1, 3, 1, 2), (64, 2, 2, 2, 2), (64, 2, 3, 1, 1)]  # (D, heads, T, n, blocks)


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_memory_model_within_ten_percent(mixer, backend):
    for D, H, T, n, blocks in GRID:
        for level in (0, 1, 2):
            config = config_for(mixer, backend, level, D, H, T, n, blocks)
            measured = saved_bytes_per_step(build_model(config.model), 3)
            predicted = estimate_saved_bytes(config.model, 3, level, backend, "cpu")
            assert abs(predicted - measured) <= 0.1 * measured, (D, H, T, n, blocks, level, measured, predicted)


def test_budget_planner_picks_lightest_fitting_plan():
    config = TRMConfig.preset("sudoku-att")
    levels = estimate(config, 768, "cuda")["levels"]
    assert levels[0]["peak"] > levels[1]["peak"] > levels[2]["peak"]
    lines = []
    plan = plan_for_budget(config, f"{levels[1]['peak'] / 1e9 + 0.01:.3f}GB", log=lines.append, device="cuda")
    assert plan.model.recompute == 1 and plan.train.grad_accum == 1 and "recompute level 1" in lines[0]
    tight = plan_for_budget(config, f"{levels[2]['peak'] / 1e9 * 0.6:.3f}GB", log=lines.append, device="cuda")
    assert tight.train.grad_accum > 1 and tight.data.global_batch_size == 768
    with pytest.raises(ValueError, match="memory-budget"):
        plan_for_budget(config, "1MB", log=lines.append, device="cuda")
    assert parse_bytes("8GB") == 8_000_000_000 and parse_bytes("512MiB") == 512 * 2**20
    with pytest.raises(ValueError, match="expected a size"):
        parse_bytes("lots")
