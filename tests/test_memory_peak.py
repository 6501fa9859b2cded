"""Peak memory measured on a CPU: trm_fast.tools.memory.peak_bytes (the allocator's events, recorded by the profiler),
allocation_only (the Triton path allocates as on a GPU and computes nothing), the memory model as an upper bound of
the measured peak of whole training steps, and the Triton ops' backward allocating only their own gradients.

Everything runs in fp32: then every op allocates on a CPU exactly what it allocates on a GPU (a CPU bf16 matmul adds
fp32 work buffers of its own, which a GPU's does not)."""
import contextlib
import itertools

import pytest
import torch

from kernel_utils import randn  # first: sets TRITON_INTERPRET without a GPU
from trm_fast.tools.bench.memory import cpu_step_peak
from trm_fast.tools.bench.step import StepRunner
from trm_fast.config import TRMConfig, swiglu_hidden
from trm_fast.tools.memory import allocation_only, estimate, peak_bytes

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU allocator measurement (Triton's interpreter)")
MB = 1e6


def test_peak_bytes_follows_allocations_and_frees():
    def work():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB: 12 MB live
        del a
        c = torch.empty(500_000)  # 2 MB: 10 MB live
        del b, c

    assert peak_bytes(work) == 12_000_000
    kept = []
    assert peak_bytes(lambda: kept.append(torch.empty(250_000))) == 1_000_000  # what stays allocated counts too


_SMALL = ["model.hidden_size=64", "model.num_heads=1", "model.puzzle_emb_dim=64", "model.n=2", "model.T=2",
          "model.forward_dtype=float32", "model.num_puzzle_identifiers=64"]  # on 97 tokens: Sudoku's length
_MIXERS = {"mlp": ["model.mixer=mlp", "model.pos_encoding=none"], "attention": ["model.mixer=attention", "model.pos_encoding=rope"]}


@cpu_only
def test_allocation_only_allocates_what_the_real_run_allocates():
    """allocation_only changes no allocation of its own: on the reference path in fp32, where it has nothing to skip,
    the peak is the real run's byte for byte (the measurement is deterministic). On the Triton path a real
    interpreter run also keeps the interpreter's own garbage alive for a while, which a GPU run does not have;
    a skipped launch allocates nothing by construction (kernels write into outputs they are given)."""
    config = TRMConfig.preset("sudoku-mlp").override(_SMALL + _MIXERS["attention"] + ["model.backend=torch"])
    peaks = []
    for dry in (False, True):
        runner = StepRunner(config, 8, torch.device("cpu"), False)
        runner()  # the optimiser state exists from here on
        with allocation_only() if dry else contextlib.nullcontext():
            peaks.append(peak_bytes(runner))
    assert peaks[0] == peaks[1] > 0


def _step_delta(config, batch):
    """(measured, predicted) bytes allocated above the step's start: the gradients, what the forward saves and the
    backward's working set. The model's fixed parts that exist before a step (weights, optimiser moments, EMA,
    puzzle table, carry) are taken out of its peak."""
    backend, level = config.model.backend, config.model.recompute
    measured = cpu_step_peak(config, batch)
    est = estimate(config, batch, "cpu", backend)
    fixed = est["fixed"]
    before = fixed["weights"] + fixed["optimizer"] + fixed["ema"] + fixed["puzzle_table"] + fixed["carry"]
    return measured, est["levels"][level]["peak"] - before


@cpu_only
@pytest.mark.parametrize("mixer, backend, level", list(itertools.product(_MIXERS, ("triton", "torch"), (0, 1, 2))))
def test_memory_model_bounds_the_measured_peak(mixer, backend, level):
    """The planner relies on the model never under-predicting; it over-predicts by at most 20% (13% seen)."""
    config = TRMConfig.preset("sudoku-mlp").override(_SMALL + _MIXERS[mixer] + [f"model.backend={backend}",
                                                                                 f"model.recompute={level}"])
    measured, predicted = _step_delta(config, 48)
    assert measured <= predicted <= 1.2 * measured, (measured / MB, predicted / MB)


@cpu_only
@pytest.mark.parametrize("mixer, backend, overrides, level", [
    *(("attention", "torch", {"attention": "triton"}, level) for level in (0, 1, 2)),
    ("mlp", "triton", {"swiglu": "torch"}, 1)])
def test_memory_model_bounds_the_peak_of_a_mixed_op_set(mixer, backend, overrides, level):
    """One op on the other implementation than the rest (at level 1 the blocks then run under selective
    checkpointing, which keeps the Triton ops' outputs): bounded as tightly as the pure sets."""
    config = TRMConfig.preset("sudoku-mlp").override(_SMALL + _MIXERS[mixer] + [f"model.backend={backend}",
                                                                                 f"model.recompute={level}"])
    with allocation_only():  # as bench.memory.cpu_step_peak, with the override
        runner = StepRunner(config, 48, torch.device("cpu"), False)
        runner.model.override_ops(overrides)
        runner()
        measured = peak_bytes(runner, "cpu")
    implementations = runner.model.op_implementations(torch.device("cpu"))
    assert len(set(implementations.values())) == 2
    est = estimate(config, 48, "cpu", implementations)
    fixed = est["fixed"]
    predicted = est["levels"][level]["peak"] - (fixed["weights"] + fixed["optimizer"] + fixed["ema"] +
                                                fixed["puzzle_table"] + fixed["carry"])
    assert measured <= predicted <= 1.2 * measured, (measured / MB, predicted / MB)


@cpu_only
@pytest.mark.parametrize("variant", [("model.arch=hrm", "model.hrm_high_blocks=2", "model.hrm_low_blocks=2"),
                                     ("model.grad_mode=one_step",), ("model.latent=single",)])
def test_memory_model_bounds_the_peak_of_variants(variant):
    for backend, level in (("triton", 0), ("triton", 2), ("torch", 1)):
        config = TRMConfig.preset("sudoku-mlp").override(_SMALL + _MIXERS["attention"] + list(variant) + [
            f"model.backend={backend}", f"model.recompute={level}"])
        measured, predicted = _step_delta(config, 48)
        assert measured <= predicted <= 1.2 * measured, (backend, level, measured / MB, predicted / MB)


# ---------------------------------------------------------------------------------------------- the ops' backward


def _weight_grad_bytes(*weights):
    return sum(4 * w.numel() for w in weights)


@cpu_only
@pytest.mark.parametrize("token_mix", [False, True])
def test_swiglu_backward_allocates_only_its_gradients(token_mix):
    """The backward's working set: d h (I wide, freed before d x), d gate_up (2I wide), d x and the fp32 weight
    gradients (with the token form's per-split partials). A materialised zero gradient for the saved gate/up
    (2I wide) or a copy of d gate_up inside a broadcast matmul would each add at least B * 2I * D * 4 bytes."""
    from trm_fast.kernels import launch_configs
    from trm_fast.ops import get_ops

    ops = get_ops("triton")
    B, L, D = 24, 97, 64
    width, hidden = (L, swiglu_hidden(L)) if token_mix else (D, swiglu_hidden(D))
    rows = D if token_mix else L  # the matmul's rows per sample
    x = randn(B, L, D, seed=1, requires_grad=True)
    w_gu = randn(2 * hidden, width, seed=2, scale=width ** -0.5, requires_grad=True)
    w_d = randn(width, hidden, seed=3, scale=hidden ** -0.5, requires_grad=True)
    op = ops.swiglu_token_mix if token_mix else ops.swiglu
    with allocation_only():
        out = op(x, w_gu, w_d)
        grad = torch.ones_like(out)
        measured = peak_bytes(lambda: out.backward(grad))
    act = lambda width_: 4 * B * rows * width_
    partials = 0
    if token_mix:
        for M, N in ((L, hidden), (2 * hidden, L)):
            partials = max(partials, launch_configs.batch_reduce_config(M, N, D, B, 4)["SPLIT"] * M * N * 4)
    budget = max(act(hidden) + act(2 * hidden), act(2 * hidden) + 4 * B * L * D) + 2 * _weight_grad_bytes(w_gu, w_d) + partials
    assert measured <= budget, (measured / MB, budget / MB)
    assert budget - measured < B * 2 * hidden * rows * 4  # tight enough that one 2I-wide extra would break it


@pytest.mark.parametrize("make, post_norm", [("norm", False), ("swiglu", False), ("swiglu", True), ("attention", False),
                                             ("attention", True)])
def test_auxiliary_outputs_carry_no_gradient(make, post_norm):
    """What an op saves for its backward (rstd, gate/up, qkv, log-sum-exp; the post-norm's rstd) is an output of the
    custom op but never a differentiable one, nor is an absent y + inject: autograd must not materialise zero
    gradients for them."""
    from trm_fast.ops import reference as R
    from trm_fast.ops import attention as A, norm as N, swiglu as S

    x = randn(2, 5, 32, seed=4, requires_grad=True)
    if make == "norm":
        outputs = N._add_rms_norm_fwd(x, x, 1e-5, False)
    elif make == "swiglu":
        outputs = S._swiglu_fwd(x, randn(64, 32, seed=5, requires_grad=True), randn(32, 32, seed=6), True, post_norm)
    else:
        cos, sin = R.rope_cos_sin(5, 32)
        outputs = A._attention_fwd(x, randn(96, 32, seed=7), randn(32, 32, seed=8), cos, sin, 1, True, post_norm)
    assert outputs[0].requires_grad
    assert not any(t.requires_grad for t in outputs[1:])


@cpu_only
def test_cpu_peak_benchmark_writes_its_results(tmp_path):
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "peak.json"
    subprocess.run([sys.executable, os.path.join(repo, "benchmarks", "bench_peak_memory_cpu.py"), "--preset",
                    "sudoku4-tiny", "--batches", "2,4", "--levels", "0,2", "--out", str(out)],
                   check=True, cwd=tmp_path, env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["level"]) for r in rows] == [("triton", 0), ("triton", 2)]
    assert 0 < rows[1]["measured_bytes_per_sample"] < rows[0]["measured_bytes_per_sample"]
    assert all(r["predicted_bytes_per_sample"] >= r["measured_bytes_per_sample"] for r in rows)
