#!/usr/bin/env bash
# The whole test suite under the GPU machine image's stack (torch 2.11, triton 3.6; numpy < 2.3, which triton 3.6's
# interpreter needs) on this CPU machine, in its own environment .venv-gpu-stack (about 5 GB: PyPI's torch wheel
# brings its CUDA libraries). Run it before a GPU session to catch APIs newer than the image. Not part of CI.
#   bash scripts/test_gpu_stack.sh [pytest args]        TORCH_VERSION / TRITON_VERSION pick another pair
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH_VERSION:-2.11.0}
TRITON=${TRITON_VERSION:-3.6.0}
ENV=.venv-gpu-stack
PY=${PYTHON:-python3}
if ! "$ENV/bin/python" -c "import sys, torch, triton; sys.exit(not (torch.__version__.split('+')[0] == '$TORCH' and triton.__version__ == '$TRITON'))" 2>/dev/null; then
  rm -rf "$ENV"
  "$PY" -m venv "$ENV"
  "$ENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH" "triton==$TRITON" "numpy<2.3" \
    setuptools wheel "pybind11>=2.10" 2>&1 | grep -v "^WARNING: Location" || true
fi
"$ENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test]" 2>&1 \
  | grep -v "^WARNING: Location" || true
"$ENV/bin/python" -c "import torch, triton, numpy; print(f'GPU-image stack: torch {torch.__version__}, triton {triton.__version__}, numpy {numpy.__version__}')"
exec "$ENV/bin/python" -m pytest -q -ra tests "$@"
