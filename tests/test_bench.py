"""The benchmark suite runs on a CPU: results files with device and versions, markdown, charts; the model-FLOP
count against an analytic count. Timings are never asserted."""
import json
import os

import pytest

from trm_fast.bench.common import bar_chart, markdown_table
from trm_fast.bench.step import model_flops
from trm_fast.cli import main
from trm_fast.config import TRMConfig


def test_flop_count_of_a_training_step_matches_the_analytic_count():
    config = TRMConfig.preset("sudoku4-tiny").override(["model.mixer=mlp", "model.pos_encoding=none"])
    m, B = config.model, 3
    L, D, I, Im, V = m.total_seq_len, m.hidden_size, m.mlp_hidden, m.token_mix_hidden, m.vocab_size
    block = 2 * B * D * L * 2 * Im + 2 * B * D * Im * L + 2 * B * L * D * 2 * I + 2 * B * L * I * D
    heads = 2 * B * L * D * V + 2 * B * D * 2
    grad_calls = (m.n + 1) * m.num_blocks
    forward = m.T * grad_calls * block + heads
    backward = 2 * (grad_calls * block + heads)
    assert model_flops(config, B, "cpu") == forward + backward


@pytest.mark.parametrize("kind", ["memory", "eval"])
def test_bench_commands_write_results(kind, tmp_path, capsys):
    assert main(["bench", kind, "--quick", "--preset", "sudoku4-tiny", "--out", str(tmp_path)]) == 0
    files = sorted(os.listdir(tmp_path))
    assert any(f.endswith(f"-{kind}.json") for f in files) and any(f.endswith(f"-{kind}.png") for f in files)
    payload = json.load(open(tmp_path / next(f for f in files if f.endswith(".json"))))
    env = payload["environment"]
    assert {"device", "torch", "triton", "commit", "date"} <= set(env)
    assert payload["rows"] and payload["targets"]
    if kind == "memory":
        fractions = {r["contender"]: r["fraction_of_eager"] for r in payload["rows"]}
        assert fractions["eager"] == 1.0 and fractions["reference-L2"] < fractions["reference-L1"] < 1.0
    assert "|" in open(tmp_path / next(f for f in files if f.endswith(".md"))).read()


def test_report_helpers(tmp_path):
    table = markdown_table([{"a": 1.23456, "b": None}], ["a", "b"])
    assert "1.235" in table and "| - |" in table
    path = bar_chart(str(tmp_path / "c.png"), ["x", "y"], {"s": [1.0, 2.0]}, "speed-up", "t")
    assert os.path.getsize(path) > 0
