#!/usr/bin/env bash
# Set-up, then the main job: train a small TRM on generated 6x6 Sudoku (GPU when there is one, else CPU) with
# deep supervision, halting and EMA, evaluate it on held-out puzzles, and solve one of them with `trm-fast solve`.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
# a fixed number of steps (800), replacing the previous demo run in runs/sudoku6-demo
.venv/bin/trm-fast train --preset sudoku6-demo --overwrite "$@"
puzzle=$(.venv/bin/python -m trm_fast.data.recipes held-out-puzzle sudoku6-demo)
echo "held-out puzzle: $puzzle"
.venv/bin/trm-fast solve --ckpt runs/sudoku6-demo --puzzle "$puzzle"
echo "demo finished in $(( $(date +%s) - start )) s (set-up included); curves: runs/sudoku6-demo/curves.png"
