#!/usr/bin/env bash
# Creates .venv (reusing a torch already installed system-wide, e.g. a CUDA build) and installs trm_fast into it,
# building the native extension where a C++ compiler exists. CI (CI=true) always installs the pinned stack.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv --system-site-packages .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ "${CI:-}" = "true" ] || ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0" "triton==3.9.0" numpy
fi
"${PIP[@]}" setuptools wheel "pybind11>=2.10"
"${PIP[@]}" --no-build-isolation -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import trm_fast, torch; print(f'trm_fast {trm_fast.__version__} ready: torch {torch.__version__}, CUDA {torch.cuda.is_available()}')"
