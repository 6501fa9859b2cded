"""benchmarks/gpu_suite.sh on a CPU: the script parses; its first step (trm_fast importable, kernels/ inside it)
passes in this environment; `--quick --dry-run` runs the parts in the order that keeps the main figures when time
runs out, the step contenders in the order a GPU run starts them, and every part fits SUITE_BUDGET_S even if each
runs to its hard limit. The rest needs a GPU (docs/gpu_checks.md)."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_suite.sh")


def test_gpu_suite_parses():
    subprocess.run(["bash", "-n", SCRIPT], check=True, capture_output=True)


def test_gpu_suite_import_step_imports(tmp_path):
    """The script's IMPORT_CHECK, run as the script runs it: from an empty working directory (its OUTDIR)."""
    with open(SCRIPT) as f:
        checks = re.findall(r'^IMPORT_CHECK="([^"]+)"$', f.read(), flags=re.M)
    assert len(checks) == 1 and checks[0].startswith("import trm_fast.kernels.")
    result = subprocess.run([sys.executable, "-c", checks[0]], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def _dry_run(tmp_path, budget=None):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO)
    env.pop("SUITE_BUDGET_S", None)
    if budget is not None:
        env["SUITE_BUDGET_S"] = str(budget)
    done = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), "--quick", "--dry-run",
                           str(tmp_path / "suite")], capture_output=True, text=True, env=env, timeout=240)
    return done.returncode, done.stdout + done.stderr


def test_quick_suite_plan_fits_its_budget_in_order(tmp_path):
    rc, out = _dry_run(tmp_path)
    assert rc == 0, out
    assert "not started" not in out
    parts = re.findall(r"plan (\w+) limit=(\d+)s", out)
    assert [name for name, _ in parts] == ["doctor", "gpu_tests", "bench_step", "bench_ops"], out
    (total, allowed), = re.findall(r"plan total (\d+)s of SUITE_BUDGET_S=(\d+)s", out)
    assert int(allowed) == 450 and int(total) <= int(allowed)
    assert 30 + sum(int(limit) for _, limit in parts) <= int(allowed)  # the set-up, then every part at its limit

    contenders = re.findall(r"^plan ([\w-]+)@(\d+) ([\w-]+)$", out, flags=re.M)
    assert {(preset, int(batch)) for preset, batch, _ in contenders} == {
        ("sudoku-att", 768), ("sudoku-mlp", 768), ("maze", 192)}  # Sudoku at 192 would fit in the L2
    passes = ["eager", "trm_fast-L0", "trm_fast-L1", "trm_fast-L0-graph", "trm_fast-L2", "compile"]
    # one pass per contender over all presets, in that order: levels 0 and 1 first, torch.compile last
    assert [name for _, _, name in contenders] == [name for name in passes for _ in range(3)]
    assert re.search(r"bench step --quick --preset sudoku-att,sudoku-mlp,maze --budget-s \d+", out)


def test_a_budget_too_small_for_every_part_is_reported(tmp_path):
    rc, out = _dry_run(tmp_path, 250)
    assert rc == 1 and "bench_step: not started, no time left" in out  # after the doctor and the GPU tests
    (total, allowed), = re.findall(r"plan total (\d+)s of SUITE_BUDGET_S=(\d+)s", out)
    assert int(total) <= int(allowed) == 250
