#!/usr/bin/env bash
# Set-up, then the whole test suite (CPU; GPU tests run too where CUDA is present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra --durations=15 tests "$@"
