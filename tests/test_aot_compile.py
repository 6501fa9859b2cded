"""Ahead-of-time compilation of every registered kernel (kernels/aot.py) at every launch config the presets use,
for sm_90 and sm_80, on a machine without a GPU: each build compiles, spills no registers (ptxas -v), fits the
architecture's shared memory, and, for bf16 matmul kernels on sm_90, uses wgmma.

The compiles run in ONE subprocess with TRITON_INTERPRET unset (this test session's kernels are interpreted and
cannot be compiled) and a throw-away Triton cache, so every run really compiles and nothing is written to the
repository; the per-kernel tests then read its rows.
"""
from kernel_utils import GPU  # noqa: F401  (first: sets TRITON_INTERPRET like every kernel test)

import json
import os
import subprocess
import sys

import pytest

from trm_fast.kernels import aot

JOBS = [(spec["label"], arch) for arch in aot.ARCHS for spec in aot.collect_specs(arch)]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "triton-cache")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = tmp / "rows.json"
    result = subprocess.run([sys.executable, "-m", "trm_fast.kernels.aot", "--arch", *map(str, aot.ARCHS), "--json", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    print(result.stdout)  # the resource table: shown with -s, or on failure
    assert out.exists(), f"the AOT run wrote no rows (exit {result.returncode}):\n{result.stderr[-3000:]}"
    return {(r["label"], r["arch"]): r for r in json.loads(out.read_text())}


def test_registry_has_every_kernel_family():
    for arch in aot.ARCHS:
        labels = [label for label, a in JOBS if a == arch]
        for prefix in ("add_rms_norm_fwd", "rms_norm_bwd", "add_rms_norm_seq_fwd", "rms_norm_seq_bwd",
                       "swiglu_gate_up[channel", "swiglu_gate_up[token", "swiglu_bwd_elementwise"):
            assert any(label.startswith(prefix) for label in labels), (prefix, arch)


@pytest.mark.parametrize("label, arch", JOBS, ids=[f"{label}-sm_{arch}" for label, arch in JOBS])
def test_kernel_builds_within_resources(rows, label, arch):
    row = rows[(label, arch)]
    assert not aot.problems(row), aot.problems(row)
    assert row["cubin_bytes"] > 0 and row["registers"] > 0


def test_problem_checks_catch_spills_and_missing_wgmma():
    """The checks themselves: a row with spills, too much shared memory, or a Hopper matmul without wgmma fails."""
    good = {"label": "k", "arch": 90, "error": None, "spill_stores": 0, "spill_loads": 0, "shared_bytes": 1024,
            "shared_limit": aot.SHARED_LIMIT[90], "is_matmul": True, "bf16": True, "wgmma": True}
    assert aot.problems(good) == []
    assert aot.problems(dict(good, spill_stores=8))
    assert aot.problems(dict(good, shared_bytes=aot.SHARED_LIMIT[90] + 1))
    assert aot.problems(dict(good, wgmma=False))
    assert aot.problems(dict(good, error="boom"))
    assert aot.parse_ptxas("ptxas info    : Used 128 registers, used 1 barriers\n"
                           "    16 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads") == \
        {"registers": 128, "spill_stores": 16, "spill_loads": 8}


@pytest.mark.skipif(not os.environ.get("TRM_TRITON_SMOKE_PYTHON"),
                    reason="set TRM_TRITON_SMOKE_PYTHON=$(bash scripts/triton36_env.sh) (CI does) to compile under the "
                           "GPU image's Triton 3.6")
def test_aot_compile_under_the_gpu_images_triton(tmp_path):
    """Every kernel and launch config also builds cleanly (no spills, shared memory fits, wgmma) with the Triton
    of the GPU machine's image, whose compiler allocates registers differently from 3.9's."""
    python = os.environ["TRM_TRITON_SMOKE_PYTHON"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    version = subprocess.run([python, "-c", "import triton; print(triton.__version__)"], capture_output=True,
                             text=True, env=env, check=True).stdout.strip()
    assert version == os.environ.get("TRITON_SMOKE_VERSION", "3.6.0"), version
    out = tmp_path / "rows.json"
    result = subprocess.run([python, "-m", "trm_fast.kernels.aot", "--arch", *map(str, aot.ARCHS), "--json", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    print(result.stdout)
    assert out.exists(), f"the AOT run under triton {version} wrote no rows (exit {result.returncode}):\n{result.stderr[-3000:]}"
    rows = json.loads(out.read_text())
    assert {(r["label"], r["arch"]) for r in rows} == set(JOBS)
    bad = {f"{r['label']} sm_{r['arch']}": aot.problems(r) for r in rows if aot.problems(r)}
    assert not bad, bad
