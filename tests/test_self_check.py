"""The self-check of `model.backend=auto` and `trm-fast doctor`, on the CPU: the Triton ops run in Triton's
interpreter and `force=True` drives the logic a CUDA device triggers. Faults are injected into the kernels: one that
raises, one that returns wrong values. Every test keeps its verdict cache in its own folder (XDG_CACHE_HOME)."""
import json
import os
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from kernel_utils import assert_close  # first: sets TRITON_INTERPRET without a GPU
from trm_fast.config import TRMConfig
from trm_fast.kernels import swiglu as swiglu_kernels
from trm_fast.tools.memory import estimate_saved_bytes, saved_bytes_per_step
from trm_fast.model import build_model
from trm_fast.model.layers import BLOCK_OPS
from trm_fast.ops import OP_NAMES, fallback, verdict_cache
from trm_fast.ops.accuracy import error_rule

# one block, one cycle, L = 8 (B * L is a multiple of 16 at B = 2, not at B = 1): seconds in the interpreter
TINY = TRMConfig.preset("sudoku4-tiny").override(["model.seq_len=6", "model.T=1", "model.n=1", "model.num_blocks=1"])
USED = BLOCK_OPS["attention"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(fallback.SWITCH, raising=False)
    monkeypatch.setattr(fallback, "_WARNED", set())
    monkeypatch.setattr(fallback, "_AGREED", {})
    return tmp_path / "cache" / "trm_fast"


def _raising_gate_up(*args, **kwargs):
    raise RuntimeError("injected fault")


def _wrong_gate_up(original):
    def gate_up(x, w, h=None, gu=None, dh=None, dgu=None):
        original(x, w, h, gu, dh=dh, dgu=dgu)
        for out in (h, dgu):
            if out is not None:
                out.mul_(1.01)
    return gate_up


def _step(model, seed=0):
    """Logits and every parameter's gradient of one forward from the initial carry."""
    g = torch.Generator().manual_seed(seed)
    B, L = 3, model.config.seq_len
    inputs = torch.randint(1, model.config.vocab_size, (B, L), generator=g)
    out = model(model.initial_carry(B, CPU), inputs, torch.zeros(B, dtype=torch.long))
    out.logits.float().square().mean().backward()
    return out.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_error_rule():
    ref = torch.linspace(1, 2, 100)
    low = ref + 1e-3
    assert error_rule(ref + 2e-3, low, ref).ok
    assert not error_rule(ref + 3e-3, low, ref).ok
    assert not error_rule(torch.full_like(ref, float("nan")), low, ref).ok
    assert error_rule(ref + 1e-7, ref, ref).ok and not error_rule(ref + 1e-5, ref, ref).ok  # fp32: rounding only


@pytest.mark.parametrize("fault", ["raises", "wrong values"])
def test_auto_falls_back_for_the_failing_op_alone(fault, monkeypatch):
    monkeypatch.setattr(swiglu_kernels, "channel_gate_up",
                        _raising_gate_up if fault == "raises" else _wrong_gate_up(swiglu_kernels.channel_gate_up))
    config = TINY.override(["model.recompute=1"]).model
    with pytest.warns(RuntimeWarning, match=r"Triton swiglu failed.*(injected fault|error).*trm-fast doctor"):
        implementations = fallback.checked_op_implementations(config, CPU, ops=USED, force=True, progress=None)
    assert implementations == {**dict.fromkeys(OP_NAMES, "triton"), "swiglu": "torch"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second resolve (another model) warns no more
        assert fallback.checked_op_implementations(config, CPU, ops=USED, force=True, progress=None) == implementations

    reference = build_model(TINY.override(["model.backend=torch"]).model)
    mixed = build_model(config)
    mixed.load_state_dict(reference.state_dict())
    mixed.override_ops(implementations)
    assert mixed.op_implementations(CPU) == implementations
    logits, grads = _step(mixed)
    ref_logits, ref_grads = _step(reference)
    assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4, name="logits")
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, name=f"d {name}")
    # the recompute levels and the memory model see the mix: a block with a reference op runs selectively at level 1
    measured = saved_bytes_per_step(mixed, 3)
    assert estimate_saved_bytes(config, 3, 1, implementations, "cpu") == measured
    assert estimate_saved_bytes(config, 3, 1, "triton", "cpu") != measured


def test_a_fault_in_the_post_norm_form_alone_fails_its_op(monkeypatch):
    """The sub-layers' post_norm forms are checked cases of their own: a backward that drops the residual's gradient
    there (and only there) fails the op, naming the case and the gradient."""
    from trm_fast.ops import swiglu as swiglu_ops
    from trm_fast.ops.self_check import CheckShape, check_ops

    monkeypatch.setattr(swiglu_ops, "_input_grad", lambda ds2d, dgu, wgu: dgu @ wgu)
    verdicts = check_ops(CheckShape.of(TINY.model), CPU, torch.float32, ops=("swiglu",), batches=(1,))
    cases = {case.label: case.ok for case in verdicts["swiglu"].cases}
    assert cases == {"swiglu[B=1]": True, "swiglu[recompute, B=1]": True, "swiglu[post_norm, B=1]": False,
                     "swiglu[post_norm+recompute+inject, B=1]": False}
    assert verdicts["swiglu"].error.startswith("swiglu[post_norm, B=1] d x: error")


def test_a_fault_in_the_fused_no_grad_token_mixer_alone_fails_its_op(monkeypatch):
    """The token-mixing sub-layer and its post-norm are one kernel (kernels/token_mixer.py); without grad it is a build
    of its own (nothing saved for a backward), which no grad-enabled case runs: its own case (post_norm+nograd)
    catches a wrong value there."""
    from trm_fast.kernels import token_mixer
    from trm_fast.ops.self_check import CheckShape, check_ops

    real = token_mixer.token_mixer_fused

    def wrong(x, w_gate_up_t, w_down, eps, y, rstd=None, h=None, gu=None):
        real(x, w_gate_up_t, w_down, eps, y, rstd, h, gu)
        if h is None:  # the no-grad build only
            y.mul_(1.01)

    monkeypatch.setattr(token_mixer, "token_mixer_fused", wrong)
    shape = CheckShape.of(TINY.override(["model.mixer=mlp"]).model)
    verdicts = check_ops(shape, CPU, torch.float32, ops=("swiglu_token_mix",), batches=(1,))
    cases = {case.label: case.ok for case in verdicts["swiglu_token_mix"].cases}
    assert cases == {"swiglu_token_mix[B=1]": True, "swiglu_token_mix[recompute, B=1]": True,
                     "swiglu_token_mix[post_norm, B=1]": True, "swiglu_token_mix[post_norm+nograd, B=1]": False}
    assert verdicts["swiglu_token_mix"].error.startswith("swiglu_token_mix[post_norm+nograd, B=1] y: error")


def test_triton_never_falls_back(monkeypatch):
    monkeypatch.setattr(swiglu_kernels, "channel_gate_up", _wrong_gate_up(swiglu_kernels.channel_gate_up))
    config = TINY.override(["model.backend=triton"]).model
    with pytest.raises(ValueError, match=r"model.backend=triton: the Triton swiglu failed .*swiglu\[B=1\] y: error"):
        fallback.checked_op_implementations(config, CPU, ops=USED, force=True, progress=None)


def test_switched_off_and_not_on_a_cpu(own_cache, monkeypatch):
    monkeypatch.setattr(swiglu_kernels, "channel_gate_up", _raising_gate_up)
    triton = dict.fromkeys(OP_NAMES, "triton")
    off = TINY.override(["model.self_check=false"]).model
    assert fallback.checked_op_implementations(off, CPU, ops=USED, force=True) == triton
    monkeypatch.setenv(fallback.SWITCH, "0")
    assert fallback.checked_op_implementations(TINY.model, CPU, ops=USED, force=True) == triton
    monkeypatch.delenv(fallback.SWITCH)
    model = build_model(TINY.model)  # a CPU device without force: auto is the reference, nothing to check
    assert model.op_implementations(CPU) == dict.fromkeys(OP_NAMES, "torch")
    assert not own_cache.exists()


def test_the_verdict_is_cached_and_rechecked_when_broken_or_stale(own_cache, monkeypatch):
    calls = []
    check_ops = fallback.self_check.check_ops
    monkeypatch.setattr(fallback.self_check, "check_ops", lambda *a, **k: calls.append(a[3]) or check_ops(*a, **k))
    ops, config = ("add_rms_norm",), TINY.model

    def resolve():  # as a new process would: without the verdicts agreed in this one
        fallback._AGREED.clear()
        return fallback.checked_op_implementations(config, CPU, ops=ops, force=True, progress=None)

    resolve()
    (path,) = own_cache.iterdir()
    content = json.loads(path.read_text())
    assert content["environment"] == verdict_cache.environment(CPU)
    assert calls == [ops]
    resolve()  # the second build reads the verdict
    assert calls == [ops]
    path.write_text('{"format": 1, "environment": ')  # cut short
    resolve()
    assert calls == [ops, ops] and json.loads(path.read_text()) == content
    path.write_text(json.dumps({**content, "environment": {**content["environment"], "triton": "0.0.1"}}))
    resolve()
    assert calls == [ops, ops, ops] and json.loads(path.read_text()) == content


def _rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    os.environ["XDG_CACHE_HOME"] = os.path.join(out_dir, f"cache{rank}")
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if rank == 1:  # a rank whose own check would fail: it must not check, and runs rank 0's verdict
            swiglu_kernels.channel_gate_up = _raising_gate_up
        implementations = fallback.checked_op_implementations(TINY.model, CPU, ops=("swiglu",), force=True,
                                                              progress=None)
    finally:
        torch.distributed.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(implementations, f)


def test_ranks_run_rank_zeros_verdict(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1] == dict.fromkeys(OP_NAMES, "triton")
    assert (tmp_path / "cache0" / "trm_fast").is_dir() and not (tmp_path / "cache1").exists()


def test_doctor_reports_every_op_and_fails_on_a_broken_one(tmp_path, monkeypatch, capsys):
    from trm_fast.cli import main

    monkeypatch.setattr(swiglu_kernels, "channel_gate_up", _raising_gate_up)
    path = tmp_path / "doctor.json"
    assert main(["doctor", "--device", "cpu", "--preset", "sudoku4-tiny", "--json", str(path)]) == 1
    report = json.loads(path.read_text())
    assert {op: entry["verdict"] for op, entry in report["ops"].items()} == \
        {**dict.fromkeys(OP_NAMES, "ok"), "swiglu": "failed"}
    assert "injected fault" in report["ops"]["swiglu"]["error"]
    assert report["mode"] == "interpreter" and "bf16" in report["not_covered"]
    step = report["training_step"]
    assert step["ok"] and step["implementations"] == {**dict.fromkeys(OP_NAMES, "triton"), "swiglu": "torch"}
    assert report["recommended"]["backend"] == "auto" and not report["ok"]
    out = capsys.readouterr().out
    assert "no GPU" in out and "not covered here" in out and "swiglu" in out and "FAILED" in out
