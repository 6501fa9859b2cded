#!/usr/bin/env bash
# The GPU benchmark suite for a bare machine with no network (system python with torch and triton).
#
#   benchmarks/gpu_suite.sh --quick OUTDIR      `trm-fast doctor` (report: OUTDIR/results/doctor.json); GPU tests;
#                                              the training step of sudoku-att and sudoku-mlp at batch 768
#                                              and maze at 192 (at 192 a Sudoku step fits in the L2 and hides its
#                                              HBM traffic), its contenders in the order eager, trm_fast levels 0
#                                              and 1, the CUDA-graph step, level 2, torch.compile last (each row:
#                                              compile/set-up seconds apart from the step time, the memory model's
#                                              predicted peak beside the measured one); then ops at the Sudoku shape
#                                              (D = 512, batch 768; max-autotune for single ops only): meant to end
#                                              within 8 minutes on one H100 with cold compile caches (each part has
#                                              a time budget and a hard limit)
#   benchmarks/gpu_suite.sh --quick --dry-run OUTDIR   (any machine) the plan only: each part's budget and hard
#                                              limit as if every part ran to its limit, and the step contenders'
#                                              order (`trm-fast bench step --plan`); nothing is measured
#   benchmarks/gpu_suite.sh --stage N OUTDIR    the full suite, one stage of at most 9 minutes per call:
#       1  GPU tests; ops at the Sudoku shape (eager, trm_fast, Liger, torch.compile)
#       2  ops: torch.compile max-autotune at the Sudoku shape; the Maze/ARC shape (L = 916, batch 192)
#       3  training step, sudoku-att and sudoku-mlp at batch 768
#       4  training step, maze and arc1 at batch 192
#       5  memory: sudoku-att, sudoku-mlp at 768; maze, arc1 at 192
#       6  evaluation throughput (16 supervision steps): sudoku-mlp, sudoku-att at 768; arc1 at 192
#       7  training check (issues 3/4): sudoku-mlp on the generated sudoku9-small for COMPARE_STEPS (1500) steps,
#          backend torch against triton (trm-fast compare; OUTDIR/compare); arms finished by an earlier call are
#          reused (COMPARE_OUT, default OUTDIR/compare, holds only their small records), so repeat the stage until
#          compare.json there lists both
#       8  the same with a third arm, triton at recomputation level 2 (after 7)
#          The dataset is built on first use (data_cache/, or TRM_FAST_DATA_CACHE); carry data_cache/sudoku9-small
#          to skip building it without the native engine. COMPARE_ARGS adds arguments (e.g. --set overrides).
#   SUITE_BUDGET_S  the call's time in seconds (default 450 for --quick, 525 per stage; the dry-run's plan sets
#            SETUP_S of it, default 30, aside for the set-up): set it to what the
#            session's device time leaves (the budget is 15 minutes per session, all calls together)
#   --pip    make trm_fast importable with `pip install --no-deps --no-build-isolation -e .` (builds the optional
#            C++ data engines) instead of the default, a symlinked package layout on PYTHONPATH (instant, no build)
#
# Results (merged JSON, markdown, PNG charts) go to OUTDIR/results, logs to OUTDIR/*.log, compile caches to
# OUTDIR/cache (TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR), so later stages on the same machine reuse them.
# Liger-Kernel is installed from a wheel carried in the tree (.whl/liger_kernel-*.whl) when present.
# Through the device tool: carry [".whl"], put OUTDIR outside $OUT (it returns at most 8 files), then e.g.
#   benchmarks/gpu_suite.sh --quick /tmp/suite; tar czf $OUT/suite.tgz -C /tmp/suite results $(cd /tmp/suite && ls *.log)
set -uo pipefail

QUICK=0
STAGE=""
OUT=""
USE_PIP=0
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --stage) STAGE="${2:-}"; shift ;;
    --pip) USE_PIP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    -*) echo "gpu_suite.sh: unknown option $1" >&2; exit 2 ;;
    *) OUT="$1" ;;
  esac
  shift
done
if [ -z "$OUT" ] || { [ "$QUICK" = 0 ] && [ -z "$STAGE" ]; }; then
  echo "usage: $0 --quick OUTDIR | $0 --stage N OUTDIR   (N = 1..8; --pip to install with pip; --dry-run)" >&2
  exit 2
fi
SUITE_START=$(date +%s)
SIMULATED=${SETUP_S:-30}  # --dry-run: seconds the plan has used so far (the set-up, then each part's hard limit)
now() { if [ "$DRY_RUN" = 1 ]; then echo $(( SUITE_START + SIMULATED )); else date +%s; fi; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
mkdir -p "$OUT/results" "$OUT/cache"
OUT=$(cd "$OUT" && pwd)
export TRITON_CACHE_DIR="$OUT/cache/triton" TORCHINDUCTOR_CACHE_DIR="$OUT/cache/inductor" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG="$OUT/suite.log"
say() { echo "[gpu_suite $(( $(now) - SUITE_START ))s] $*" | tee -a "$LOG"; }

# ---- trm_fast importable with the system python. Every part runs from OUTDIR: `python -m` puts the working
# directory first on sys.path, and the tree's own trm_fast/ (without kernels/ inside) would shadow the layout below.
# IMPORT_CHECK: kernels/ as trm_fast.kernels (a module without Triton), the ops, the CLI (tests/test_gpu_suite.py)
IMPORT_CHECK="import trm_fast.kernels.launch_configs, trm_fast.ops.reference, trm_fast.tools.bench.cli"
if (cd "$OUT" && $PY -c "$IMPORT_CHECK") 2>/dev/null; then
  say "trm_fast already importable: $(cd "$OUT" && $PY -c 'import trm_fast; print(trm_fast.__file__)')"
elif [ "$USE_PIP" = 1 ]; then
  say "installing trm_fast: pip install --no-deps --no-build-isolation --no-index -e ."
  if ! $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1; then
    say "pip install failed (see install.log)"; exit 1
  fi
else
  # the installed layout without a build: trm_fast/* plus kernels/ as trm_fast/kernels, all symlinks into the tree
  SITE="$OUT/site"
  rm -rf "$SITE" && mkdir -p "$SITE/trm_fast"
  for entry in "$REPO"/trm_fast/*; do ln -s "$entry" "$SITE/trm_fast/$(basename "$entry")"; done
  rm -f "$SITE/trm_fast/kernels" && ln -s "$REPO/kernels" "$SITE/trm_fast/kernels"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  say "trm_fast on PYTHONPATH through $SITE (symlinks into $REPO; the optional C++ data engines are not built)"
fi
(cd "$OUT" && $PY -c "$IMPORT_CHECK") || { say "trm_fast does not import"; exit 1; }

# ---- optional Liger-Kernel from a carried wheel (not for a dry run)
shopt -s nullglob
if [ "$DRY_RUN" = 0 ]; then
WHEELS=(.whl/liger_kernel*.whl)
if [ ${#WHEELS[@]} -gt 0 ]; then
  if $PY -m pip install -q --no-deps --no-index --no-build-isolation "${WHEELS[@]}" >>"$OUT/install.log" 2>&1; then
    say "Liger-Kernel installed from ${WHEELS[*]}"
  else
    say "Liger-Kernel wheel ${WHEELS[*]} did not install (see install.log): its columns are skipped"
  fi
else
  say "Liger-Kernel wheel absent (.whl/liger_kernel-*.whl; carry .whl to bring one): its columns are skipped"
fi
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import subprocess, torch, triton
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                            text=True).stdout.strip()
except OSError:
    driver = "no nvidia-smi"
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE", "| torch", torch.__version__,
      "| triton", triton.__version__, "| driver", driver)
EOF
fi

cd "$OUT"
STATUS=0
# run LIMIT_S NAME CMD...: a part with a hard limit; a part that fails or times out is reported and the suite goes on
run() {
  local limit=$1 name=$2; shift 2
  if [ "$DRY_RUN" = 1 ]; then
    say "plan $name limit=${limit}s: $*"
    SIMULATED=$(( SIMULATED + limit ))
    return
  fi
  say "start $name (hard limit ${limit}s)"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then say "$name: stopped at its ${limit}s limit"; STATUS=1
  elif [ "$rc" != 0 ]; then say "$name: exit status $rc"; STATUS=1
  else say "done $name"; fi
}
# `timeout` runs programs, not shell functions: the commands are spelled out
BENCH=("$PY" -m trm_fast bench)
RES=(--out "$OUT/results")
GPU_TESTS=("$PY" -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests")

# The whole call's time: 8 minutes for --quick, 9 per stage, setup included (SUITE_BUDGET_S overrides, in seconds); each part gets a budget for starting
# contenders (--budget-s) and a hard limit, both cut from what is left, and the report is rendered last.
TOTAL=${SUITE_BUDGET_S:-$([ "$QUICK" = 1 ] && echo 450 || echo 525)}
left() { echo $(( TOTAL - ($(now) - SUITE_START) )); }
REPORT_S=10  # rendering the report at the end
# part NAME SHARE_S TAIL_S ARGS...: a bench part that may start contenders for SHARE_S seconds (at most what is left
# minus TAIL_S, for the contender in flight to finish, and the report's time), then is stopped TAIL_S after that
part() {
  local name=$1 share=$2 tail=$3; shift 3
  local l; l=$(left)
  local budget=$(( share < l - tail - REPORT_S ? share : l - tail - REPORT_S ))
  if [ "$budget" -lt 10 ]; then say "$name: not started, no time left"; STATUS=1; return; fi
  if [ "$DRY_RUN" = 1 ] && [ "$1" = step ]; then  # the contenders in the order a GPU run starts them
    "${BENCH[@]}" "$@" --plan 2>&1 | grep '^plan ' | tee -a "$LOG"
  fi
  run $(( budget + tail )) "$name" "${BENCH[@]}" "$@" --budget-s "$budget" "${RES[@]}"
}
if [ "$QUICK" = 1 ]; then
  # first: does every kernel work here at all (per op, and one training step; its compiles fill the Triton cache
  # the later parts read), then the training step (its torch.compile contender last), then single ops
  run 75 doctor "$PY" -m trm_fast doctor --json "$OUT/results/doctor.json"
  run 90 gpu_tests "${GPU_TESTS[@]}"
  part bench_step 100 100 step --quick --preset sudoku-att,sudoku-mlp,maze
  part bench_ops 25 30 ops --quick
else
  case "$STAGE" in
    1) run 200 gpu_tests "${GPU_TESTS[@]}"
       part bench_ops 1000 40 ops --preset sudoku-att --no-autotune ;;
    2) part bench_ops_autotune 200 120 ops --preset sudoku-att --contenders compile-max-autotune
       part bench_ops_maze 1000 40 ops --preset maze --no-autotune ;;
    3) part bench_step 1000 40 step --preset sudoku-att,sudoku-mlp ;;
    4) part bench_step 1000 40 step --preset maze,arc1 ;;
    5) part bench_memory 1000 40 memory --preset sudoku-att,sudoku-mlp,maze,arc1 ;;
    6) part bench_eval 1000 40 eval --preset sudoku-mlp,sudoku-att,arc1 ;;
    7|8) [ -d "$REPO/data_cache/sudoku9-small" ] && export TRM_FAST_DATA_CACHE="${TRM_FAST_DATA_CACHE:-$REPO/data_cache}"
       ARMS=(--arm torch:model.backend=torch --arm triton:model.backend=triton)
       [ "$STAGE" = 8 ] && ARMS+=(--arm triton-level2:model.backend=triton,model.recompute=2)
       run $(( $(left) - 20 )) compare "$PY" -m trm_fast compare --preset sudoku-mlp --set data.recipe=sudoku9-small \
         --set data.path= --set train.lr_warmup_steps=150 --steps "${COMPARE_STEPS:-1500}" \
         --out "${COMPARE_OUT:-$OUT/compare}" --reuse --drop-checkpoints --no-progress "${ARMS[@]}" ${COMPARE_ARGS:-} ;;
    *) echo "gpu_suite.sh: --stage must be 1..8, got '$STAGE'" >&2; exit 2 ;;
  esac
fi
if [ "$DRY_RUN" = 1 ]; then
  say "plan total $(( SIMULATED + REPORT_S ))s of SUITE_BUDGET_S=${TOTAL}s (set-up, every part at its hard limit, report)"
  exit $STATUS
fi
# rows are merged after every contender, so a part stopped at its limit still has figures: render them all
"${BENCH[@]}" report "${RES[@]}" >>"$LOG" 2>&1 || say "rendering the report failed"
say "finished in $(( $(now) - SUITE_START ))s; results in $OUT/results:"
ls -l "$OUT/results" | tee -a "$LOG"
exit $STATUS
