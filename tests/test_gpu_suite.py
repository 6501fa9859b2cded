"""benchmarks/gpu_suite.sh on a CPU: the script parses, and its first step (trm_fast importable, kernels/ inside it)
passes in this environment. The rest needs a GPU (docs/gpu_checks.md)."""
import os
import re
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu_suite.sh")


def test_gpu_suite_parses():
    subprocess.run(["bash", "-n", SCRIPT], check=True, capture_output=True)


def test_gpu_suite_import_step_imports(tmp_path):
    """The script's IMPORT_CHECK, run as the script runs it: from an empty working directory (its OUTDIR)."""
    with open(SCRIPT) as f:
        checks = re.findall(r'^IMPORT_CHECK="([^"]+)"$', f.read(), flags=re.M)
    assert len(checks) == 1 and checks[0].startswith("import trm_fast.kernels.")
    result = subprocess.run([sys.executable, "-c", checks[0]], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
