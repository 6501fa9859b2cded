"""Ahead-of-time compilation of every kernel at every launch config the presets use, for sm_90 and sm_80, on a
machine without a GPU: it compiles, no register spills, shared memory within the device limit, and sm_90 matmul
builds use wgmma. Runs in a subprocess because the test session's kernels are interpreted."""
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "trm_fast.kernels.aot", "--arch", "90", "80", "--json", str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    print(result.stdout)  # the resource table, shown with -s or on failure
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_kernel_compiles_for_both_archs(rows):
    from trm_fast.kernels.aot import collect_specs  # noqa: F401  (import check only)

    labels = {(r["label"], r["arch"]) for r in rows}
    for arch in (90, 80):
        assert any(label.startswith("attn_bwd_dkdv") and a == arch for label, a in labels)
        assert any(label.startswith("swiglu_gate_up[token") and a == arch for label, a in labels)
        assert any(label.startswith("add_rms_norm_seq_fwd") and a == arch for label, a in labels)
    assert all(r["cubin_bytes"] > 0 for r in rows)


def test_no_register_spills(rows):
    spilled = [(r["label"], r["arch"], r["spill_stores"], r["spill_loads"]) for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, spilled


def test_shared_memory_fits(rows):
    over = [(r["label"], r["arch"], r["shared_bytes"]) for r in rows if r["shared_bytes"] > r["shared_limit"]]
    assert not over, over


def test_hopper_matmul_builds_use_wgmma(rows):
    missing = [r["label"] for r in rows if r["arch"] == 90 and r["is_matmul"] and not r["wgmma"]]
    assert not missing, missing
