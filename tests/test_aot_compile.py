"""Ahead-of-time builds of every kernel launch the presets make (kernels/aot.py), for sm_90 and sm_80, exactly as
Triton's JIT specialises them: each build compiles, spills no registers, fits the architecture's shared memory,
uses wgmma for bf16 matmul tiles of 64+ rows on sm_90, and stages its matmul tiles with cp.async (no scalar
2-byte global loads). tests/test_aot_launches.py checks that these are the launches the model's blocks make.

The builds run in ONE subprocess per Triton version with TRITON_INTERPRET unset (this session's kernels are
interpreted and cannot be compiled). Time ceiling: AOT_TIMEOUT_S per run on 2 cores; measured with an empty
result cache ~120 s under Triton 3.9 and ~60 s under 3.6 (140 builds each, on 2 cores shared with other work),
a few seconds with the cache filled. The result cache (kernels/aot.py CACHE_DIR) is keyed by everything Triton's
own compile cache key covers, so a cached row is the row a new compile gives: the check is deterministic.
"""
from kernel_utils import GPU  # noqa: F401  (first: sets TRITON_INTERPRET like every kernel test)

import json
import os
import subprocess
import sys

import pytest

from trm_fast.kernels import aot

AOT_TIMEOUT_S = 600
CAPTURED = {arch: aot.preset_launches(arch) for arch in aot.ARCHS}  # in this (interpreter) process
JOBS = [(arch, launch.key, *aot.describe(launch)) for arch, launches in CAPTURED.items() for launch in launches]


def _run_aot(python: str, tmp_path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), TRITON_DEFAULT_FP_FUSION="1")
    out = tmp_path / "rows.json"
    result = subprocess.run([python, "-m", "trm_fast.kernels.aot", "--arch", *map(str, aot.ARCHS), "--json", str(out)],
                            capture_output=True, text=True, env=env, timeout=AOT_TIMEOUT_S)
    print(result.stdout)  # the resource table: shown with -s, or on failure
    assert out.exists(), f"the AOT run wrote no rows (exit {result.returncode}):\n{result.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return {(r["arch"], r["key"]): r for r in _run_aot(sys.executable, tmp_path_factory.mktemp("aot"))}


def test_builds_are_the_captured_launches(rows):
    """The subprocess built every launch this process captures (the interpreter's launches go through the same
    JIT specialisation), and nothing else."""
    assert set(rows) == {(arch, key) for arch, key, _, _ in JOBS}
    for arch in aot.ARCHS:
        labels = {label for a, _, label, _ in JOBS if a == arch}
        # (no add_rms_norm_seq_fwd: at the MLP presets' lengths the token mixer's forward and its norm are one kernel)
        for prefix in ("add_rms_norm_fwd", "rms_norm_bwd", "token_mixer_fused", "rms_norm_seq_bwd", "swiglu_gate_up",
                       "swiglu_bwd_elementwise", "sum_over_batch_abt", "attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq",
                       "attn_bwd_preprocess", "token_cross_entropy_fwd", "token_cross_entropy_bwd"):
            assert any(label.startswith(prefix) for label in labels), (prefix, arch)


@pytest.mark.parametrize("arch, key, label, variant", JOBS,
                         ids=[f"{label}{'-' + variant if variant else ''}-sm_{arch}" for arch, _, label, variant in JOBS])
def test_kernel_builds_within_resources(rows, arch, key, label, variant):
    row = rows[(arch, key)]
    assert not aot.problems(row), aot.problems(row)
    assert row["cubin_bytes"] > 0 and row["registers"] > 0


def test_matmul_tiles_are_all_cp_async(rows):
    """The SwiGLU gate_up (both forms) and the batch-reduction matmul load every operand tile with cp.async: no
    global load into registers at all outside the recompute mode's epilogue (which reads dh), and no scalar
    2-byte loads anywhere. The token form's weight was once loaded by masked 2-byte scalar loads along L = 97."""
    matmuls = [r for r in rows.values() if r["label"].startswith(("swiglu_gate_up", "sum_over_batch_abt"))]
    assert any("K!16" in r["variant"] for r in matmuls)  # the token form (K = L = 97) is among them
    for r in matmuls:
        assert r["cp_async"] > 0 and r["ld_global_scalar16"] == 0, r
        if "RECOMPUTE=True" not in r["label"]:
            assert r["ld_global"] == 0, r


def test_problem_checks_catch_spills_missing_wgmma_and_scalar_loads():
    """The checks themselves: spills, too much shared memory, a Hopper matmul without wgmma, matmul tiles loaded
    without cp.async or with scalar 2-byte loads, or an error all fail; a small-tile matmul needs no wgmma."""
    good = {"label": "k", "arch": 90, "error": None, "spill_stores": 0, "spill_loads": 0, "shared_bytes": 1024,
            "shared_limit": aot.SHARED_LIMIT[90], "dot_rows": 64, "bf16": True, "wgmma": True, "cp_async": 6,
            "ld_global": 0, "ld_global_scalar16": 0}
    assert aot.problems(good) == []
    assert aot.problems(dict(good, dot_rows=32, wgmma=False)) == []
    assert aot.problems(dict(good, spill_stores=8))
    assert aot.problems(dict(good, shared_bytes=aot.SHARED_LIMIT[90] + 1))
    assert aot.problems(dict(good, wgmma=False))
    assert aot.problems(dict(good, cp_async=0))
    assert aot.problems(dict(good, ld_global=16, ld_global_scalar16=16))
    assert aot.problems(dict(good, error="boom"))
    assert aot.parse_ptxas("ptxas info    : Used 128 registers, used 1 barriers\n"
                           "    16 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads") == \
        {"registers": 128, "spill_stores": 16, "spill_loads": 8}
    ptx = ("\tcp.async.cg.shared.global [ %r1 + 0 ], [ %rd2 + 0 ], 0x10, %r3;\n"
           "\t@%p4 ld.global.b16 { %rs1 }, [ %rd5 + 0 ];\n\tld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd6 + 0 ];\n")
    assert aot.ptx_counts(ptx) == {"cp_async": 1, "ld_global": 2, "ld_global_scalar16": 1, "wgmma": False}


@pytest.mark.skipif(not os.environ.get("TRM_TRITON_SMOKE_PYTHON"),
                    reason="set TRM_TRITON_SMOKE_PYTHON=$(bash scripts/triton36_env.sh) (CI does) to compile under the "
                           "GPU image's Triton 3.6")
def test_aot_compile_under_the_gpu_images_triton(tmp_path):
    """The same launches, specialised and built by the GPU machine's Triton (3.6), whose compiler allocates
    registers differently from 3.9's: the same kernels, tiles and specialisations, and every build clean."""
    python = os.environ["TRM_TRITON_SMOKE_PYTHON"]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    version = subprocess.run([python, "-c", "import triton; print(triton.__version__)"], capture_output=True,
                             text=True, env=env, check=True).stdout.strip()
    assert version == os.environ.get("TRITON_SMOKE_VERSION", "3.6.0"), version
    built = _run_aot(python, tmp_path)
    assert sorted((r["arch"], r["label"], r["variant"], r["num_warps"], r["num_stages"]) for r in built) == sorted(
        (arch, *aot.describe(launch), json.loads(launch.data)["options"]["num_warps"],
         json.loads(launch.data)["options"]["num_stages"]) for arch, launches in CAPTURED.items() for launch in launches)
    bad = {f"{r['label']} {r['variant']} sm_{r['arch']}": aot.problems(r) for r in built if aot.problems(r)}
    assert not bad, bad
