"""The reference TRM: shapes and dtypes per preset, parameter counts, where gradients flow, carry handling."""
import types

import pytest
import torch

from trm_fast.config import PRESETS, TRMConfig
from trm_fast.tools.memory import estimate
from trm_fast.model import TRM, build_model, count_parameters
from trm_fast.ops import OP_NAMES, reference, resolve

SMALL = ["model.hidden_size=32", "model.num_heads=2", "model.puzzle_emb_dim=32"]


def small_config(preset: str, *extra: str) -> TRMConfig:
    overrides = list(SMALL)
    config = TRMConfig.preset(preset)
    if config.model.seq_len > 100:  # keep Maze/ARC shapes' structure but a short sequence on the CPU
        overrides.append("model.seq_len=30")
    return config.override(overrides + list(extra))


def random_batch(config, batch=3, generator=None):
    m = config.model
    inputs = torch.randint(0, m.vocab_size, (batch, m.seq_len), generator=generator)
    ids = torch.randint(0, m.num_puzzle_identifiers, (batch,), generator=generator)
    return inputs, ids


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_and_dtypes_per_preset(preset, dtype):
    config = small_config(preset, f"model.forward_dtype={dtype}", "model.num_puzzle_identifiers=5")
    model = build_model(config.model)
    inputs, ids = random_batch(config)
    carry = model.initial_carry(3, "cpu")
    out = model(carry, inputs, ids)
    m = config.model
    want = getattr(torch, dtype)
    assert out.logits.shape == (3, m.seq_len, m.vocab_size) and out.logits.dtype == want
    assert out.q_halt.shape == (3,) and out.q_halt.dtype == torch.float32
    assert out.q_continue.dtype == torch.float32
    for t in out.carry:
        assert t.shape == (3, m.total_seq_len, m.hidden_size) and t.dtype == want and not t.requires_grad
    assert torch.isfinite(out.logits.float()).all()


def test_parameter_counts_match_the_published_models():
    assert count_parameters(TRM(TRMConfig.preset("sudoku-att").model)) == 6_828_034
    assert count_parameters(TRM(TRMConfig.preset("sudoku-mlp").model)) == 5_028_866


def test_initialisation_facts():
    model = TRM(TRMConfig.preset("sudoku-att").model)
    assert torch.all(model.q_head_weight == 0) and torch.all(model.q_head_bias == -5)
    assert model.y_init.dtype == torch.bfloat16 and model.z_init.dtype == torch.bfloat16
    assert torch.all(model.puzzle_emb.weight == 0)
    # truncated LeCun normal: std 1/sqrt(fan_in), nothing beyond 2 std of the raw normal
    w = model.net.blocks[0].mlp.w_gate_up
    assert abs(w.std().item() * 512**0.5 - 1.0) < 0.02
    assert w.abs().max().item() < 2.5 / 512**0.5
    names = {name for name, _ in model.state_dict().items()}
    assert {"y_init", "z_init", "puzzle_emb.weight"} <= names and "rope_cos" not in names


def _count_block_applications(model):
    counts = {"forward": 0, "backward": 0}

    def forward_hook(module, args, output):
        counts["forward"] += 1
        if output.requires_grad:
            output.register_hook(lambda grad: counts.__setitem__("backward", counts["backward"] + 1))

    for block in model.net.blocks:
        block.register_forward_hook(forward_hook)
    return counts


@pytest.mark.parametrize("T, n, blocks", [(3, 2, 2), (2, 3, 1), (1, 2, 2)])
def test_gradients_reach_exactly_the_last_cycle(T, n, blocks):
    config = TRMConfig.preset("sudoku4-tiny").override([f"model.T={T}", f"model.n={n}", f"model.num_blocks={blocks}"])
    model = TRM(config.model)
    counts = _count_block_applications(model)
    inputs, ids = random_batch(config)
    out = model(model.initial_carry(3, "cpu"), inputs, ids)
    (out.logits.float().square().sum() + out.q_halt.sum()).backward()
    assert counts["forward"] == T * (n + 1) * blocks
    assert counts["backward"] == (n + 1) * blocks
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.puzzle_emb.pending[0][1].grad is not None


def test_carry_reset_and_detach():
    config = TRMConfig.preset("sudoku4-tiny")
    model = TRM(config.model)
    y, z = torch.randn(2, 4, config.model.total_seq_len, config.model.hidden_size)
    ry, rz = model.reset_carry(torch.tensor([True, False, True, False]), (y, z))
    assert torch.equal(ry[0], model.y_init.float().expand_as(ry[0])) and torch.equal(rz[2], model.z_init.float().expand_as(rz[2]))
    assert torch.equal(ry[1], y[1]) and torch.equal(rz[3], z[3])


def test_attention_reference_forms_agree():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 17, 3, 16, generator=g) for _ in range(3))
    torch.testing.assert_close(reference.attention_sdpa(q, k, v), reference.attention_core(q, k, v), atol=1e-5, rtol=1e-5)


def test_rope_rotates_pairs_by_position():
    cos, sin = reference.rope_cos_sin(5, 8)
    x = torch.randn(1, 5, 1, 8)
    rotated = reference.apply_rope(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))  # a rotation
    torch.testing.assert_close(rotated[:, 0], x[:, 0])  # position 0 is not rotated


def test_bad_inputs_are_named():
    config = TRMConfig.preset("sudoku4-tiny")
    model = TRM(config.model)
    carry = model.initial_carry(2, "cpu")
    with pytest.raises(ValueError, match="shape"):
        model(carry, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="token out of range"):
        model(carry, torch.full((2, 16), 99), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(carry, torch.zeros(2, 16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="puzzle identifier"):
        model(carry, torch.zeros(2, 16, dtype=torch.long), torch.full((2,), 7))
    model.check_input_ranges = False  # left to the data (the trainer's datasets are checked at load): values unread
    with pytest.raises(IndexError):
        model(carry, torch.full((2, 16), 99), torch.zeros(2, dtype=torch.long))


def fake_gpu(monkeypatch, capability):
    """A CUDA device of `capability` on a machine without one (what trm_fast.ops.resolve asks torch); its kernels
    cannot run, so the self-check of `auto` is off (tests/test_self_check.py drives it on the CPU)."""
    monkeypatch.setenv("TRM_FAST_SELF_CHECK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(major=capability[0], minor=capability[1]))


def test_backend_and_dtype_follow_the_gpu_generation(monkeypatch):
    """auto: Triton and bf16 from compute capability 8.0 (the kernels' launch tables are sm_80/sm_90), the reference
    in fp32 below; an explicit triton on an older GPU is refused by name. Capabilities are faked: no GPU here."""
    cfg = TRMConfig.preset("sudoku4-tiny").model
    cuda = torch.device("cuda", 0)
    for capability, backend, dtype in (((9, 0), "triton", torch.bfloat16), ((8, 6), "triton", torch.bfloat16),
                                       ((7, 5), "torch", torch.float32)):
        fake_gpu(monkeypatch, capability)
        model = build_model(cfg)
        assert model.backend(cuda) == backend and model.forward_dtype(cuda) == dtype
        assert model.op_implementations(cuda) == dict.fromkeys(OP_NAMES, backend)
    cpu = torch.device("cpu")
    assert model.backend(cpu) == "torch" and model.forward_dtype(cpu) == torch.float32
    explicit = build_model(TRMConfig.preset("sudoku4-tiny").override(["model.backend=triton"]).model)
    with pytest.raises(ValueError, match="model.backend=triton needs a GPU of compute capability 8.0 or newer.*7.5"):
        explicit.backend(cuda)
    assert explicit.backend(cpu) == "triton"  # the interpreter
    # the memory model follows the same rule on the same (faked) GPU
    assert estimate(TRMConfig.preset("sudoku4-tiny"), 4, "cuda")["implementations"] == dict.fromkeys(OP_NAMES, "torch")
    assert estimate(TRMConfig.preset("sudoku4-tiny").override(["model.forward_dtype=auto"]), 4, "cuda")["fixed"][
        "carry"] == 4 * 2 * cfg.total_seq_len * cfg.hidden_size * 4  # fp32 below 8.0
    with pytest.raises(ValueError, match="model.backend=triton needs a GPU of compute capability 8.0"):
        estimate(TRMConfig.preset("sudoku4-tiny").override(["model.backend=triton"]), 4, "cuda")


def test_resolution_without_a_gpu_and_per_op_overrides(monkeypatch):
    """Planning for "cuda" without a GPU assumes one of capability 8.0 (or the one named); single ops can be moved to
    the other implementation, a GPU too old for Triton refuses them by name; bad names are named."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = TRMConfig.preset("sudoku4-tiny").model
    assert resolve.op_implementations(cfg, "cuda") == dict.fromkeys(OP_NAMES, "triton")
    assert resolve.forward_dtype(cfg, "cuda") == torch.bfloat16
    assert resolve.op_implementations(cfg, "cuda", capability=(7, 0)) == dict.fromkeys(OP_NAMES, "torch")
    assert resolve.forward_dtype(cfg, "cuda", capability=(7, 0)) == torch.float32
    mixed = resolve.op_implementations(cfg, "cuda", overrides={"attention": "torch"})
    assert mixed == dict(dict.fromkeys(OP_NAMES, "triton"), attention="torch")
    assert resolve.describe(mixed).startswith("mixed: ") and "attention=torch" in resolve.describe(mixed)
    with pytest.raises(ValueError, match="triton for swiglu needs a GPU of compute capability 8.0 or newer.*7.5"):
        resolve.op_implementations(cfg, "cuda", capability=(7, 5), overrides={"swiglu": "triton"})
    with pytest.raises(ValueError, match="'softmax' is not a fused op"):
        resolve.op_implementations(cfg, "cpu", overrides={"softmax": "torch"})
    with pytest.raises(ValueError, match="attention='cuda'"):
        resolve.op_implementations(cfg, "cpu", overrides={"attention": "cuda"})

    model = build_model(cfg)
    cpu = torch.device("cpu")
    assert model.backend(cpu) == "torch"
    model.override_ops({"swiglu": "triton"})  # resolved again: the Triton interpreter on a CPU
    assert model.op_implementations(cpu) == dict(dict.fromkeys(OP_NAMES, "torch"), swiglu="triton")
    model.override_ops({})
    assert model.backend(cpu) == "torch"


def test_resolved_once_per_device_and_traced_by_compile(monkeypatch):
    """The model asks the resolver once per device, not per forward, and a compiled forward (fullgraph) traces
    through the resolution and its cache."""
    calls = []
    resolve_ops = resolve.op_implementations
    monkeypatch.setattr(resolve, "op_implementations", lambda *a, **k: calls.append(a) or resolve_ops(*a, **k))
    config = small_config("sudoku4-tiny")
    model = build_model(config.model)
    inputs, ids = random_batch(config)
    for _ in range(3):
        model(model.initial_carry(3, "cpu"), inputs, ids)
    assert len(calls) == 1
    fresh = build_model(config.model)
    fresh.load_state_dict(model.state_dict())
    compiled = torch.compile(fresh, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(model.initial_carry(3, "cpu"), inputs, ids)
        expected = model(model.initial_carry(3, "cpu"), inputs, ids)
    assert torch.equal(out.logits, expected.logits)
