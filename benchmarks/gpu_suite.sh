#!/usr/bin/env bash
# The GPU benchmark suite on a bare machine with no network (system python with torch and triton).
#   benchmarks/gpu_suite.sh --quick OUTDIR     GPU tests + ops at D=512 + training step for sudoku-att, sudoku-mlp
#                                             and maze at 192 (meant to finish in under 8 minutes on one H100)
#   benchmarks/gpu_suite.sh --stage N OUTDIR   the full suite in stages of at most ~9 minutes:
#                                             1 GPU tests, 2 ops, 3 step (sudoku), 4 step (maze, arc1), 5 memory + eval
# Compile caches live under OUTDIR (TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR) so later stages reuse them.
# Liger-Kernel is installed from a wheel carried in .whl/ when present; its columns are skipped otherwise.
set -euo pipefail
QUICK=0
STAGE=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --stage) STAGE="$2"; shift ;;
    *) OUT="$1" ;;
  esac
  shift
done
[ -n "$OUT" ] || { echo "usage: $0 [--quick] [--stage N] OUTDIR" >&2; exit 2; }
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export TRITON_CACHE_DIR="$OUT/triton_cache" TORCHINDUCTOR_CACHE_DIR="$OUT/inductor_cache" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if ! $PY -c "import trm_fast.kernels" 2>/dev/null; then
  $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 || {
    # no setuptools/pip: expose the package layout through a symlinked copy
    mkdir -p "$OUT/site" && rm -rf "$OUT/site/trm_fast" && cp -r trm_fast "$OUT/site/trm_fast"
    rm -rf "$OUT/site/trm_fast/kernels" && ln -s "$(pwd)/kernels" "$OUT/site/trm_fast/kernels"
    export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
  }
fi
if ls .whl/liger_kernel*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --no-index .whl/liger_kernel*.whl && echo "Liger-Kernel installed from .whl/"
else
  echo "Liger-Kernel wheel absent (.whl/liger_kernel*.whl): its columns are skipped"
fi
$PY -c "import torch, triton; print('device', torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)"

bench() { $PY -m trm_fast bench "$@" --out "$OUT" 2>&1 | tee -a "$OUT/bench.log"; }
gpu_tests() { $PY -m pytest -q -m gpu tests/test_kernels.py 2>&1 | tee "$OUT/gpu_tests.log"; }

if [ "$QUICK" = 1 ]; then
  gpu_tests
  bench ops --quick
  for p in sudoku-att sudoku-mlp maze; do bench step --quick --preset "$p"; done
  exit 0
fi
case "$STAGE" in
  1) gpu_tests; $PY -m pytest -q tests/test_kernels.py -k "fast_trm" 2>&1 | tee -a "$OUT/gpu_tests.log" ;;
  2) bench ops; bench ops --seq 916 --no-autotune ;;
  3) bench step --preset sudoku-att; bench step --preset sudoku-mlp ;;
  4) bench step --preset maze; bench step --preset arc1 ;;
  5) for p in sudoku-att sudoku-mlp maze; do bench memory --preset "$p"; done; bench eval --preset sudoku-att; bench eval --preset arc1 ;;
  *) echo "give --quick or --stage 1..5" >&2; exit 2 ;;
esac
