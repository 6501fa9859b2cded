"""Memory of a training step: bytes saved for backward counted exactly per recomputation level, the memory model
against measurements, the budget planner, the puzzle table in host memory, and the CUDA-graph step's
tensor-parameterised pieces (fixed-shape sparse update, optimiser step, the whole step run eagerly) against the
eager engine. Capture and replay themselves need a GPU (marked gpu)."""
import math

import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.tools.memory import estimate, estimate_saved_bytes, parse_bytes, plan_for_budget, saved_bytes_per_step
from trm_fast.model import build_model
from trm_fast.ops import OP_NAMES
from trm_fast.train.act import keyed_uniform
from trm_fast.train.cuda_graph import GraphedCarryStep, make_graphed_step, tensor_dense_step_
from trm_fast.train.optim import AdamATan2, SparseSignSGD, sign_sgd_rows_


def config_for(mixer, backend="torch", level=0, D=32, H=1, T=2, n=2, blocks=2):
    pos = "rope" if mixer == "attention" else "none"
    return TRMConfig.preset("sudoku4-tiny").override([
        f"model.backend={backend}", f"model.mixer={mixer}", f"model.pos_encoding={pos}", f"model.hidden_size={D}",
        f"model.puzzle_emb_dim={D}", f"model.num_heads={H}", f"model.T={T}", f"model.n={n}",
        f"model.num_blocks={blocks}", f"model.recompute={level}", "model.forward_dtype=float32"])


# ---------------------------------------------------------------------------------------------- exact counts


def expected_saved_bytes(config, backend, level, B):
    """Bytes saved for backward by one fp32 supervision step, derived from what each op's backward keeps.

    Reference path (per block; an (L, D) tensor is 'LD', all fp32):
      attention, level 0: block input, qkv (3LD: v is a view of it), q and k after RoPE, attention output,
        the two residual sums the norms keep, the first norm's output, gate_up (2LI), silu(gate) (LI),
        h = silu * up (LI); fp32 statistics: log-sum-exp (H per row) and one rstd per row per norm.
      attention, level 1 (selective checkpointing): the block input and every matmul / attention output:
        qkv, attention output + log-sum-exp, o projection, gate_up, down.
      token mixing, level 0: the transposed copy of the input, gate_up (2 D*Im), silu (D*Im), h (D*Im), the two
        residual sums, the first norm's output, the channel SwiGLU's three; rstd per channel, then per row.
      token mixing, level 1: block input, the four matmul outputs.
    Triton path: qkv, attention output, both norm outputs and rstds, h of each SwiGLU (and gate/up at level 0);
      each network call's input is kept by its first block's qkv / token-mix matmul.
    Level 2 (both): each block's input only. Outside the blocks: the final y (lm head) and the embedding's int64
    token indices."""
    m = config.model
    L, D, I, H, Im = m.total_seq_len, m.hidden_size, m.mlp_hidden, m.num_heads, m.token_mix_hidden
    blocks, calls = (m.n + 1) * m.num_blocks, m.n + 1
    indices = m.seq_len * 8
    attention = m.mixer == "attention"
    if level == 2:
        elements = blocks * L * D + L * D
    elif backend == "torch":
        if attention:
            per_block = {0: 10 * L * D + 4 * L * I + H * L + 2 * L, 1: 7 * L * D + 2 * L * I + H * L}[level]
        else:
            per_block = {0: 4 * L * D + 4 * D * Im + 4 * L * I + D + L, 1: 3 * L * D + 2 * D * Im + 2 * L * I}[level]
        elements = blocks * per_block + L * D
    else:
        gate_up = 2 if level == 0 else 0
        if attention:
            per_block = 6 * L * D + (1 + gate_up) * L * I + H * L + 2 * L
        else:
            per_block = 2 * L * D + (1 + gate_up) * (D * Im + L * I) + D + L
        elements = blocks * per_block + calls * L * D
    return B * (4 * elements + indices)


EXACT_CASES = [("torch", level, {}) for level in (0, 1, 2)] + [
    ("triton", level, dict(T=1, n=1)) for level in (0, 1, 2)]


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
@pytest.mark.parametrize("backend, level, small", EXACT_CASES)
def test_saved_bytes_are_exact(mixer, backend, level, small):
    config = config_for(mixer, backend, level, **small)
    expected = expected_saved_bytes(config, backend, level, 3)
    assert saved_bytes_per_step(build_model(config.model), 3) == expected
    assert estimate_saved_bytes(config.model, 3, level, backend, "cpu") == expected  # the model is exact here


MIXED_SETS = [("torch", {"attention": "triton"}), ("torch", {"swiglu": "triton"}),  # (the config's backend, overrides)
              ("torch", {"add_rms_norm": "triton", "add_rms_norm_seq": "triton"}),
              ("triton", {"attention": "torch", "swiglu_token_mix": "torch"})]


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
@pytest.mark.parametrize("backend, overrides", MIXED_SETS, ids=lambda o: o if isinstance(o, str) else ",".join(o))
def test_saved_bytes_of_mixed_op_sets_are_exact(mixer, backend, overrides):
    """Some ops on Triton (the interpreter), the rest on the reference: the memory model, summed per op from the levels
    table, is exact at every level. At level 1 a block with a reference op runs under selective checkpointing, which
    keeps the Triton ops' outputs; every activation between two ops is counted once."""
    for level in (0, 1, 2):
        config = config_for(mixer, backend, level, T=1, n=1)
        model = build_model(config.model)
        model.override_ops(overrides)
        implementations = model.op_implementations(torch.device("cpu"))
        assert len(set(implementations.values())) == 2
        measured = saved_bytes_per_step(model, 3)
        assert estimate_saved_bytes(config.model, 3, level, implementations, "cpu") == measured, (level, implementations)


# (preset, backend, device) -> [(saved_for_backward, transient) per level] at batch 64 on a capability-9.0 GPU or the
# CPU, computed with the formulas per backend that the per-op levels table (trm_fast.ops.levels) replaced
PINNED_ESTIMATES = {
    ("sudoku-att", "torch", "cuda"): [(2145824256, 69926912), (1166152192, 139903488), (95396352, 222743040)],
    ("sudoku-att", "triton", "cuda"): [(1382985216, 69926912), (848997888, 69926912), (95396352, 171887104)],
    ("sudoku-mlp", "torch", "cpu"): [(6620966912, 226754560), (3493765632, 450126080), (190751232, 698769664)],
    ("sudoku-mlp", "triton", "cuda"): [(2434985984, 113377280), (961474560, 113377280), (95396352, 290480384)],
    ("maze", "torch", "cuda"): [(14491375616, 660340736), (7883278336, 1321150464), (660801536, 2103429120)],
    ("maze", "triton", "cpu"): [(18633512960, 1320681472), (11429795840, 1320681472), (1321142272, 3244017664)],
    ("hrm-sudoku", "triton", "cuda"): [(657342976, 59113472), (399393280, 59113472), (48407040, 145306624)],
}


@pytest.mark.parametrize("preset, backend, device", sorted(PINNED_ESTIMATES))
def test_memory_model_of_pure_op_sets_is_unchanged(preset, backend, device):
    est = estimate(TRMConfig.preset(preset), 64, device, backend, capability=(9, 0))
    got = [(est["levels"][level]["saved_for_backward"], est["levels"][level]["transient"]) for level in (0, 1, 2)]
    assert got == PINNED_ESTIMATES[(preset, backend, device)]
    assert est["implementations"] == {op: backend for op in OP_NAMES}
    if preset == "sudoku-att":  # the resolver's choice on such a GPU, and the whole peak
        peaks = [estimate(TRMConfig.preset(preset), 64, "cuda", capability=(9, 0))["levels"][lv]["peak"] for lv in (0, 1, 2)]
        casts = 2 * 6_828_034  # the Triton ops' cached bf16 weight casts (added with the cast cache), 2 B/parameter
        assert peaks == [1602188840 + casts, 1068201512 + casts, 416560168 + casts]


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_level_two_saves_a_small_fraction(mixer):
    b0 = saved_bytes_per_step(build_model(config_for(mixer, "torch", 0, D=64, H=2, n=4).model), 2)
    b2 = saved_bytes_per_step(build_model(config_for(mixer, "torch", 2, D=64, H=2, n=4).model), 2)
    assert b2 * 16 <= b0


def test_saved_bytes_counts_compiled_and_custom_steps():
    """step_fn replaces the plain call (e.g. a compiled model): a no-grad step saves nothing."""
    def no_grad_step(model, carry, inputs, ids):
        with torch.no_grad():
            return model(carry, inputs, ids)

    model = build_model(config_for("mlp").model)
    with_grad = saved_bytes_per_step(model, 2)
    no_grad = saved_bytes_per_step(model, 2, step_fn=no_grad_step)
    assert with_grad > 0 and no_grad == 0


# ---------------------------------------------------------------------------------------------- the model


GRID = [(32, 1, 2, 2, 1), (32, 1, 3, 1, 2), (64, 2, 2, 3, 2), (64, 2, 3, 1, 1)]  # (D, heads, T, n, blocks)


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
@pytest.mark.parametrize("backend, dtype", [("torch", "float32"), ("torch", "bfloat16"), ("triton", "float32")])
def test_memory_model_within_ten_percent(mixer, backend, dtype):
    """bf16 on the reference path: the norms keep fp32 copies of their inputs, the rest is bf16."""
    grid = GRID if dtype == "float32" and backend == "torch" else [(32, 1, 1, 1, 2), (64, 2, 1, 2, 1)]
    for D, H, T, n, blocks in grid:
        for level in (0, 1, 2):
            config = config_for(mixer, backend, level, D, H, T, n, blocks).override([f"model.forward_dtype={dtype}"])
            measured = saved_bytes_per_step(build_model(config.model), 3)
            predicted = estimate_saved_bytes(config.model, 3, level, backend, "cpu")
            assert abs(predicted - measured) <= 0.1 * measured, (D, H, T, n, blocks, level, measured, predicted)


def test_estimate_parts_and_levels():
    config = TRMConfig.preset("sudoku-att")
    est = estimate(config, 768, "cuda")
    params = 6_830_000
    assert abs(est["fixed"]["weights"] / 4 - params) < 0.01 * params  # ~6.83M trainable parameters, fp32
    assert est["fixed"]["optimizer"] == 2 * est["fixed"]["weights"] == 2 * est["fixed"]["ema"]
    L, D = 97, 512
    assert est["fixed"]["carry"] == 768 * 2 * L * D * 2  # y and z in bf16
    levels = est["levels"]
    assert levels[0]["peak"] > levels[1]["peak"] > levels[2]["peak"]
    eager = estimate(config, 768, "cuda", backend="torch")["levels"][0]["saved_for_backward"]
    assert levels[2]["saved_for_backward"] * 16 <= eager  # the target: level 2 keeps <= 1/16 of eager's
    host = estimate(config.override(["train.puzzle_emb_device=cpu"]), 768, "cuda")
    assert host["fixed"]["puzzle_table"] == 0 < est["fixed"]["puzzle_table"]


def test_budget_planner_picks_lightest_fitting_plan():
    config = TRMConfig.preset("sudoku-att")
    levels = estimate(config, 768, "cuda")["levels"]
    lines = []
    plan = plan_for_budget(config, f"{levels[1]['peak'] / 1e9 + 0.01:.3f}GB", log=lines.append, device="cuda")
    assert plan.model.recompute == 1 and plan.train.grad_accum == 1 and "recompute level 1" in lines[-1]
    roomy = plan_for_budget(config, "1000GB", log=lines.append, device="cuda")
    assert roomy.model.recompute == 0 and roomy.train.grad_accum == 1
    tight = plan_for_budget(config, f"{levels[2]['peak'] / 1e9 * 0.6:.3f}GB", log=lines.append, device="cuda")
    assert tight.model.recompute == 2 and tight.train.grad_accum > 1 and tight.data.global_batch_size == 768
    assert estimate(tight, 768 // tight.train.grad_accum, "cuda")["levels"][2]["peak"] <= levels[2]["peak"] * 0.6
    with pytest.raises(ValueError, match="memory-budget"):
        plan_for_budget(config, "1MB", log=lines.append, device="cuda")
    assert parse_bytes("8GB") == 8_000_000_000 and parse_bytes("512MiB") == 512 * 2**20
    with pytest.raises(ValueError, match="expected a size"):
        parse_bytes("lots")


def test_budget_planner_estimates_the_ops_the_self_check_leaves(monkeypatch):
    """On a GPU an op that fails its self-check runs the reference, which keeps more for backward (attention's
    probabilities): the plan is made for that mix, as the model resolves it, not for the config's implementations."""
    from types import SimpleNamespace

    from trm_fast.ops import fallback, resolve

    config = TRMConfig.preset("sudoku-att")
    mix = {**resolve.op_implementations(config.model, "cuda"), "attention": "torch"}  # as after a failed check
    expected = estimate(config, 768, "cuda", backend=mix)["levels"][0]["peak"]
    assert expected > estimate(config, 768, "cuda")["levels"][0]["peak"] + 1e9
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(major=9, minor=0))
    monkeypatch.setattr(fallback, "checked_op_implementations", lambda *args, **kwargs: dict(mix))
    lines = []
    plan = plan_for_budget(config, "1000GB", log=lines.append, device="cuda")
    assert plan.model.recompute == 0 and f"predicted peak {expected / 1e9:.2f} GB" in lines[-1], lines


def test_budget_planner_moves_a_large_puzzle_table_to_the_host():
    config = TRMConfig.preset("arc1").override(["model.num_puzzle_identifiers=1000000"])
    lines = []
    plan = plan_for_budget(config, "4GB", log=lines.append, device="cuda")  # the table alone is ~2 GB
    assert plan.train.puzzle_emb_device == "cpu" and "host" in lines[-1]
    assert estimate(plan, 768 // plan.train.grad_accum, "cuda")["levels"][plan.model.recompute]["peak"] <= 4e9


# ---------------------------------------------------------------------------------------------- host table


def test_puzzle_table_stays_on_the_host():
    model = build_model(config_for("mlp").override(["model.num_puzzle_identifiers=10"]).model)
    emb = model.puzzle_emb
    emb.weight.normal_()
    table = emb.keep_on_host().weight
    model.to(torch.float64)  # stands in for .to("cuda"): every other tensor moves, the table does not
    assert emb.weight is table and emb.weight.dtype == torch.float32
    assert model.lm_head.dtype == torch.float64
    rows = emb(torch.tensor([3, 0, 3]))
    assert torch.equal(rows, table[[3, 0, 3]])
    # checkpoints load into the host table in place, and the sparse optimiser updates its rows there
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["puzzle_emb.weight"].fill_(0.5)
    model.load_state_dict(state)
    assert emb.weight is table and bool((table == 0.5).all())
    rows.sum().backward()
    SparseSignSGD(emb, lr=0.1, weight_decay=0.0).step()
    assert torch.equal(table[3], torch.full_like(table[3], 0.4)) and torch.equal(table[1], torch.full_like(table[1], 0.5))


# ---------------------------------------------------------------------------------------------- CUDA-graph pieces


@pytest.mark.parametrize("lr", [1e-2, "tensor"])
def test_fixed_shape_sparse_update_equals_reference(lr):
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([5, 2, 5, 7, 2, 5, 0, 9])
    grads = torch.randn(8, 6, generator=g)
    grads[3] = 0.0  # a zero gradient: sign 0, only the decay moves the row
    weight = torch.randn(12, 6, generator=g)
    ours = weight.clone()
    rate = torch.tensor(1e-2, dtype=torch.float64) if lr == "tensor" else lr
    sign_sgd_rows_(ours, ids, grads, rate, weight_decay=0.1)

    class Emb:
        pass

    emb = Emb()
    emb.weight, leaf = weight.clone(), torch.zeros(8, 6, requires_grad=True)
    leaf.grad = grads.clone()
    emb.pending = [(ids, leaf)]
    SparseSignSGD(emb, lr=1e-2, weight_decay=0.1).step()
    assert torch.equal(ours, emb.weight)
    untouched = [i for i in range(12) if i not in ids.tolist()]
    assert torch.equal(ours[untouched], weight[untouched])


def test_keyed_draws_with_device_tensors_equal_python_ints():
    index = torch.arange(0, 4000, 7, dtype=torch.int64)
    for seed, step in ((0, 0), (12345678901234, 65000), ((1 << 63) - 1, 3)):
        expected = keyed_uniform(seed, step, index, 1)
        got = keyed_uniform(torch.tensor(seed & 0xFFFFFFFF), torch.tensor(step), index, 1)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", ["adam_atan2", "adamw"])
def test_tensor_dense_step_matches_the_optimiser(kind):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(17, 5, generator=g).requires_grad_(), torch.randn(3, generator=g).requires_grad_()]
    twins = [p.detach().clone().requires_grad_() for p in params]
    make = (lambda ps: AdamATan2(ps, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)) if kind == "adam_atan2" else \
        (lambda ps: torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1))
    eager, tensor_opt = make(params), make(twins)
    for step in range(1, 4):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        lr = 1e-3 * step
        eager.param_groups[0]["lr"] = lr
        eager.step()
        tensor_dense_step_(tensor_opt, kind, torch.tensor(lr, dtype=torch.float64), torch.tensor(float(step), dtype=torch.float64))
        for q in twins:
            tensor_opt.state[q]["step"] += 1
        for p, q in zip(params, twins):
            torch.testing.assert_close(q, p, atol=1e-7, rtol=1e-6)
            torch.testing.assert_close(tensor_opt.state[q]["exp_avg_sq"], eager.state[p]["exp_avg_sq"], atol=0, rtol=1e-6)


def _trainer(tmp_path, name, *extra):
    from trm_fast.train.trainer import Trainer

    config = TRMConfig.preset("sudoku4-tiny").override([
        f"train.out_dir={tmp_path / name}", "train.max_steps=3", "train.grad_accum=2", "train.seed=12345678901234",
        "train.puzzle_emb_lr=0.01", *extra])
    return Trainer(config, progress=False, log=lambda *a: None)


def _run(trainer, step_fn, steps):
    from trm_fast.data.format import to_device_batch

    metrics = []
    for _ in range(steps):
        batch = to_device_batch(trainer.sampler.next_batch(), trainer.data.train_meta.ignore_label_id, trainer.device)
        trainer._set_lr()
        metrics.append(step_fn(batch))
        trainer.step += 1
    return metrics


def _assert_same_training_state(a, b, atol):
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(q, p, atol=atol, rtol=1e-6, msg=name)
    for s, t in zip(a.ema.shadow, b.ema.shadow):
        torch.testing.assert_close(t, s, atol=atol, rtol=1e-6)
    torch.testing.assert_close(b.model.puzzle_emb.weight, a.model.puzzle_emb.weight, atol=atol, rtol=1e-6)
    assert torch.equal(a.state.steps, b.state.steps) and torch.equal(a.state.halted, b.state.halted)
    assert torch.equal(a.state.puzzle_ids, b.state.puzzle_ids) and torch.equal(a.state.inputs, b.state.inputs)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert float(a.dense_opt.state[p]["step"]) == float(b.dense_opt.state[q]["step"])


def test_graph_step_body_equals_the_eager_engine(tmp_path):
    """The tensor-parameterised step (what a CUDA graph captures) run eagerly on the CPU: same halting, carry
    slots, puzzle rows and (to fp32 rounding of the optimiser arithmetic) weights as the trainer's eager step."""
    eager, graphed = _trainer(tmp_path, "eager"), _trainer(tmp_path, "graphed")
    graphed.graphed_step = GraphedCarryStep(graphed.carry_step_parts(), capture=False)
    m_eager = _run(eager, eager.carry_step, 3)
    m_graph = _run(graphed, graphed.carry_step, 3)
    assert graphed.state is graphed.graphed_step.state
    lines = []
    eager.log = lines.append
    assert make_graphed_step(eager.carry_step_parts()) is None and len(lines) == 1 and "CUDA graphs need CUDA" in lines[0]
    _assert_same_training_state(eager, graphed, atol=1e-6)
    assert eager.model.puzzle_emb.weight.abs().sum() > 0
    for a, b in zip(m_eager, m_graph):
        assert set(a) == set(b)
        for key in a:
            assert math.isclose(float(a[key]), float(b[key]), rel_tol=1e-5, abs_tol=1e-6), key


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_graph_replay_equals_eager(tmp_path, backend):
    extra = ("train.device=cuda", f"model.backend={backend}", "model.forward_dtype=float32")
    eager, graphed = _trainer(tmp_path, "eager", *extra), _trainer(tmp_path, "graphed", *extra)
    graphed.graphed_step = step = GraphedCarryStep(graphed.carry_step_parts(), warmup_steps=1)
    _run(eager, eager.carry_step, 3)
    _run(graphed, graphed.carry_step, 3)
    assert step.graph is not None and step.active, "capture failed"
    _assert_same_training_state(eager, graphed, atol=1e-5)
    # the same through the trainer option: two eager warm-up steps, then capture and replay inside carry_step
    option = _trainer(tmp_path, "option", *extra, "train.cuda_graphs=true")
    assert option.graphed_step is not None
    _run(option, option.carry_step, 3)
    assert option.graphed_step.graph is not None and option.graphed_step.active, "capture failed"
    _assert_same_training_state(eager, option, atol=1e-5)


@pytest.mark.parametrize("variant", [
    ("model.arch=hrm", "model.hrm_high_blocks=2", "model.hrm_low_blocks=3", "model.n=2"),  # one call of each network
    ("model.grad_mode=one_step",),  # the last z update and the y update only
])
@pytest.mark.parametrize("backend, level", [("torch", 0), ("torch", 1), ("torch", 2), ("triton", 0)])
def test_saved_bytes_of_variants_with_fewer_gradient_calls(variant, backend, level):
    config = TRMConfig.preset("sudoku4-tiny").override([*variant, f"model.recompute={level}",
                                                        f"model.backend={backend}", "model.T=2"])
    measured = saved_bytes_per_step(build_model(config.model), 3)
    assert estimate_saved_bytes(config.model, 3, level, backend, "cpu") == measured


@pytest.mark.parametrize("latent", ["dual", "single", "multiscale"])
def test_carry_bytes_follow_the_latent_layout(latent):
    from trm_fast.tools.memory import estimate

    config = TRMConfig.preset("sudoku4-tiny").override([f"model.latent={latent}", "model.n=3"])
    carry = build_model(config.model).initial_carry(5, torch.device("cpu"))
    assert estimate(config, 5, "cpu")["fixed"]["carry"] == sum(t.numel() * t.element_size() for t in carry)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_memory_model_against_the_measured_peak_gpu(backend):
    """trm_fast.tools.memory.estimate's peak (meant to over-estimate a little) against torch.cuda.max_memory_allocated
    over one whole optimizer step, weights, optimiser state, EMA and puzzle table included."""
    from trm_fast.tools.bench.step import StepRunner
    from trm_fast.tools.bench.timing import peak_memory
    from trm_fast.tools.memory import estimate

    base = TRMConfig.preset("sudoku-att").override(["model.hidden_size=256", "model.num_heads=4",
                                                    "model.puzzle_emb_dim=256", "model.num_puzzle_identifiers=64",
                                                    f"model.backend={backend}"])
    for level in (0, 2):
        config = base.override([f"model.recompute={level}"])
        runner = StepRunner(config, 64, torch.device("cuda"), False)
        runner()  # the optimiser state exists from here on, as in training
        measured = peak_memory(runner)
        predicted = estimate(config, 64, "cuda", backend)["levels"][level]["peak"]
        del runner
        torch.cuda.empty_cache()
        assert 0.8 * measured <= predicted <= 1.5 * measured, (level, measured, predicted)
