"""The benchmark suite on a CPU: the commands write one merged results JSON (device, versions, commit, every figure),
a markdown report and PNG charts; the reference model's FLOP count equals an analytic count; the targets are judged
from the figures. Timings are never asserted."""
import json
import os

import pytest
import torch

from trm_fast.tools.bench import report
from trm_fast.tools.bench.step import model_flops
from trm_fast.cli import main
from trm_fast.config import TRMConfig


@pytest.mark.parametrize("mixer", ["mlp", "attention"])
def test_flop_count_of_a_training_step_matches_the_analytic_count(mixer):
    config = TRMConfig.preset("sudoku4-tiny").override(
        [f"model.mixer={mixer}", f"model.pos_encoding={'none' if mixer == 'mlp' else 'rope'}", "model.n=3"])
    m, B = config.model, 3
    L, D, I, Im, V = m.total_seq_len, m.hidden_size, m.mlp_hidden, m.token_mix_hidden, m.vocab_size
    matmul = lambda rows, k, n: 2 * rows * k * n
    channel_mlp = matmul(B * L, D, 2 * I) + matmul(B * L, I, D)
    if mixer == "mlp":  # the SwiGLU along the sequence: rows are (sample, channel) pairs
        mix, attention_core = matmul(B * D, L, 2 * Im) + matmul(B * D, Im, L), 0
    else:  # qkv and o projections; scores and scores @ v, each 2 * B * L * L * D
        mix, attention_core = matmul(B * L, D, 3 * D) + matmul(B * L, D, D), 2 * matmul(B * L, D, L)
    block = channel_mlp + mix + attention_core
    heads = matmul(B * L, D, V) + matmul(B, D, 2)  # lm_head runs on every position before the puzzle ones are dropped
    calls = (m.n + 1) * m.num_blocks  # block applications per cycle
    forward = m.T * calls * block + heads
    # backward: every matmul twice (input and weight gradients); SDPA's backward as torch counts it: 2.5x its forward
    # (the scores are recomputed)
    backward = 2 * (calls * (channel_mlp + mix) + heads) + calls * attention_core * 5 // 2
    assert model_flops(config, B, "cpu") == forward + backward


def _results(out_dir):
    files = sorted(os.listdir(out_dir))
    (name,) = [f for f in files if f.endswith(".json")]
    with open(os.path.join(out_dir, name)) as f:
        payload = json.load(f)
    with open(os.path.join(out_dir, name[:-5] + ".md")) as f:
        markdown = f.read()
    return payload, markdown, files


def test_bench_commands_merge_into_one_results_file(tmp_path, capsys):
    out = str(tmp_path)
    assert main(["bench", "ops", "--quick", "--ops", "add_rms_norm,loss_head", "--contenders", "compile", "--threads", "1", "--out", out]) == 0
    assert main(["bench", "step", "--quick", "--preset", "sudoku4-tiny", "--contenders", "eager", "--threads", "1", "--out", out]) == 0
    assert main(["bench", "memory", "--quick", "--preset", "sudoku4-tiny", "--threads", "1", "--out", out]) == 0
    payload, markdown, files = _results(out)
    env = payload["environment"]
    assert {"device", "torch", "triton", "commit", "date", "driver", "cuda"} <= set(env)
    assert env["device"].startswith("cpu-") and env["torch"] == torch.__version__

    ops = payload["ops"]
    assert {r["op"] for r in ops} == {"add_rms_norm", "loss_head"}
    assert {r["contender"] for r in ops} == {"eager", "compile"}
    assert {r["mode"] for r in ops} == {"fwd", "bwd", "fwd+bwd"}
    for r in ops:
        assert r["ms"] > 0 and r["speedup_vs_eager"] > 0 and r["rel_err_vs_eager"] < 1e-4
    assert all(r["flops"] > 0 for r in ops if r["op"] == "loss_head")

    (step,) = payload["step"]
    assert step["contender"] == "eager" and step["batch"] == 2 and step["speedup_vs_eager"] == 1.0
    assert step["flops_per_step"] > 0 and step["tokens_per_s"] > 0 and step["saved_for_backward_bytes"] > 0
    assert step["mfu_datasheet"] is None  # no datasheet peak for a CPU
    assert step["predicted_peak_bytes"] > 0 and step["compile_s"] is None  # eager compiles nothing

    memory = {r["contender"]: r for r in payload["memory"]}
    assert memory["eager"]["fraction_of_eager"] == 1.0
    assert memory["reference-L2"]["saved_bytes"] < memory["reference-L1"]["saved_bytes"] < memory["eager"]["saved_bytes"]
    assert all(r["predicted_peak_bytes"] > 0 for r in memory.values())

    assert [r["kind"] for r in payload["runs"]] == ["ops", "step", "memory"]
    assert len(payload["targets"]) >= 8 and all(t["met"] is None for t in payload["targets"])  # nothing judged on CPU
    for section in ("## ops", "## step", "## memory", "| op | shape | mode | contender |", "Targets"):
        assert section in markdown
    assert any(f.endswith("-ops.png") for f in files) and any(f.endswith("-memory.png") for f in files)
    printed = capsys.readouterr().out
    assert "targets (reported, never asserted)" in printed and "whole step" in printed


def test_a_rerun_replaces_rows_and_bad_arguments_are_named(tmp_path, capsys):
    out = str(tmp_path)
    for _ in range(2):
        assert main(["bench", "eval", "--quick", "--preset", "sudoku4-tiny", "--contenders", "eager", "--threads", "1", "--out", out]) == 0
    payload, _, _ = _results(out)
    (row,) = payload["eval"]
    assert row["puzzles_per_s"] > 0 and row["supervision_steps"] == 2
    assert len(payload["runs"]) == 2
    os.remove(os.path.join(out, next(f for f in os.listdir(out) if f.endswith(".md"))))
    assert main(["bench", "report", "--out", out]) == 0  # re-renders what a stopped run left
    assert any(f.endswith(".md") for f in os.listdir(out)) and any(f.endswith("-eval.png") for f in os.listdir(out))
    assert main(["bench", "step", "--preset", "nope", "--out", out]) == 2
    assert main(["bench", "ops", "--ops", "softmax", "--out", out]) == 2
    assert main(["bench", "step", "--levels", "3", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "unknown preset(s) nope" in err and "unknown op(s) softmax" in err and "levels are 0, 1 and 2" in err


def _gpu_like_payload():
    """Figures shaped like a GPU run, to check how the targets are judged (the numbers are made up for the test)."""
    step = []
    for preset, ms in (("sudoku-att", {"eager": 100.0, "compile": 60.0, "trm_fast-L0": 40.0, "trm_fast-L2": 45.0}),
                       ("sudoku-mlp", {"eager": 100.0, "compile": 60.0, "trm_fast-L0": 55.0, "trm_fast-L2": 80.0})):
        for c, t in ms.items():
            step.append({"preset": preset, "batch": 768, "contender": c, "ms_per_step": t,
                         "speedup_vs_eager": 100.0 / t, "speedup_vs_compile": 60.0 / t, "mfu_datasheet": 0.2 * 100 / t,
                         "mfu_measured_matmul": 0.25 * 100 / t, "roofline_fraction": 0.3,
                         "peak_memory_bytes": int(3e9) if c.startswith("trm_fast") else int(9e9)})
    ops = [{"op": "swiglu", "shape": "768x97x512", "mode": "fwd+bwd", "contender": c, "ms": t,
            "speedup_vs_eager": 2.0 / t} for c, t in (("eager", 2.0), ("compile", 1.0), ("liger", 0.9), ("trm_fast", 0.8))]
    ops += [{"op": "add_rms_norm", "shape": "768x97x512", "mode": "fwd+bwd", "contender": "trm_fast", "ms": 0.2,
             "speedup_vs_eager": 3.0, "copy_bw_fraction": 0.85}]
    memory = [{"preset": "sudoku-att", "batch": 768, "contender": c, "saved_bytes": b, "fraction_of_eager": b / 1600,
               "peak_memory_bytes": None} for c, b in (("eager", 1600), ("trm_fast-L2", 90))]
    return {"environment": {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-22T00:00:00", "torch": "2.11"},
            "step": step, "ops": ops, "memory": memory, "eval": []}


def test_targets_are_judged_from_the_figures():
    targets = {t["target"]: t for t in report.evaluate_targets(_gpu_like_payload())}
    pick = lambda text: next(t for name, t in targets.items() if text in name)
    assert pick("sudoku-att whole step")["met"] is True  # x2.5 vs eager, x1.5 vs compile
    assert pick("sudoku-mlp whole step")["met"] is False  # x1.8 vs eager
    assert pick("40% MFU")["met"] is True and "50.0%" in pick("40% MFU")["measured"]
    assert pick("every fused op")["met"] is True and "liger" in pick("every fused op")["measured"]
    assert pick("copy bandwidth")["met"] is True
    assert pick("sudoku-att at 768: level 2")["met"] is True  # 90 / 1600 < 1/16
    assert pick("within 4 GB")["met"] is True  # the lighter trm_fast level counts
    assert pick("recomputation")["met"] is False  # sudoku-mlp: +45%


def test_report_renders_markdown_and_png(tmp_path):
    payload = _gpu_like_payload()
    payload.update(ceilings={"matmul_tflops": 790.0}, notes={"ops": ["a note"]}, targets=report.evaluate_targets(payload))
    charts = report.render_charts(payload, str(tmp_path / "r"))
    assert sorted(os.path.basename(c) for c in charts) == ["r-memory.png", "r-ops.png", "r-step.png"]
    for c in charts:
        with open(c, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    text = report.render_markdown(payload)
    assert "matmul_tflops = 790" in text and "- a note" in text and "[NOT met]" in text
    table = report.markdown_table([{"a": 1.23456, "b": None, "c": None}, {"a": 2, "b": 3e9}], ["a", "b", "c"])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | - |", "| 2 | 3.000e+09 |"]  # empty columns dropped


@pytest.mark.gpu
def test_gpu_paths_of_ops_and_step(tmp_path):
    """On a GPU: trm_fast's contender is timed (events, CUDA-graph replay), agrees with eager, and the ceilings, MFU
    and memory figures are filled in."""
    out = str(tmp_path)
    assert main(["bench", "ops", "--quick", "--ops", "add_rms_norm,swiglu", "--contenders", "trm_fast,liger",
                 "--out", out]) == 0
    assert main(["bench", "step", "--quick", "--preset", "sudoku4-tiny", "--batch", "16", "--levels", "0,2",
                 "--contenders", "trm_fast", "--out", out]) == 0
    payload, _, _ = _results(out)
    assert payload["ceilings"]["matmul_tflops"] > 0 and payload["ceilings"]["copy_bandwidth_gbs"] > 0
    fast = [r for r in payload["ops"] if r["contender"] == "trm_fast"]
    assert {r["op"] for r in fast} == {"add_rms_norm", "swiglu"}, payload["notes"]
    for r in fast:
        assert r["ms"] > 0 and r["rel_err_vs_eager"] < 2e-2  # bf16
        if r["op"] == "add_rms_norm":
            assert r["gbs"] > 0 and r["copy_bw_fraction"] > 0
    assert any(r["ms_cudagraph"] for r in fast if r["mode"] == "fwd"), payload["notes"]
    steps = {r["contender"]: r for r in payload["step"]}
    assert {"eager", "trm_fast-L0", "trm_fast-L2", "trm_fast-L0-graph"} <= set(steps), payload["notes"]
    for name, r in steps.items():
        assert r["peak_memory_bytes"] > 0 and r["mfu_measured_matmul"] > 0 and r["roofline_fraction"] > 0
        assert r["predicted_peak_bytes"] > 0 and (r["compile_s"] is None) == (name == "eager")
    assert steps["trm_fast-L2"]["saved_for_backward_bytes"] < steps["trm_fast-L0"]["saved_for_backward_bytes"]


def test_graphed_step_runner_equals_the_eager_runner():
    """The `-graph` contender's runner drives the trainer's CUDA-graph step through a trainer view; on a CPU that
    step runs eagerly (capture=False) and must train exactly like the plain runner."""
    from trm_fast.tools.bench.step import StepRunner, bench_config, contender_configs

    config = bench_config("sudoku-att", ["model.hidden_size=32", "model.num_heads=2", "model.puzzle_emb_dim=32",
                                         "model.seq_len=16", "model.num_puzzle_identifiers=5"])
    plain, graphed = (StepRunner(config, 6, torch.device("cpu"), False, graphed=g) for g in (False, True))
    assert graphed.graphed is not None and not graphed.graphed.capture
    for _ in range(3):
        plain()
        graphed()
    assert plain.steps == graphed.steps == 3 and torch.equal(plain.state.steps, graphed.state.steps)
    for (name, a), b in zip(plain.model.state_dict().items(), graphed.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)
    for a, b in zip(plain.ema.shadow, graphed.ema.shadow):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert not any(name.endswith("-graph") for name in contender_configs(config))  # GPU only


def test_host_time_of_a_step():
    """benchmarks/bench_host_time.py's measurement runs the Triton path's step on the CPU with its launches dropped
    and reports the machine's load beside the figures (which are never asserted)."""
    from trm_fast.tools.bench.host_time import step_host_time

    result = step_host_time(TRMConfig.preset("sudoku4-tiny"), level=1, repeats=2)
    assert result["level"] == 1 and result["repeats"] == 2 and 0 < result["min_ms"] <= result["median_ms"]
    assert result["load_average_1min"] >= 0
