"""The README demo measured: set-up apart, then training + evaluation of `sudoku6-demo` and a held-out puzzle solved,
on the machine as it is ("idle") and beside one CPU-bound process ("one busy core": `python -c 'while True: pass'`).

    python3 benchmarks/bench_demo.py                 # bash scripts/setup.sh (timed), then both conditions
    python3 benchmarks/bench_demo.py --no-setup --python /path/to/venv/bin/python --conditions idle

Each condition trains in its own folder (runs/bench-demo-<condition>, replaced each time) with the demo's settings.
Writes benchmarks/results/demo-<machine>.json and prints the line for the README. Not part of CI (minutes, and the
timings are the machine's). Run it on a quiet machine: the idle condition says how many other tasks were running.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trm_fast.threads import busy_elsewhere, usable_cores  # noqa: E402  (stdlib only)


def run(command: list[str], env: dict) -> tuple[float, str]:
    start = time.time()
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.time() - start
    if out.returncode not in (0, 1):  # solve exits 1 for an invalid solution: recorded, not an error
        raise RuntimeError(f"{' '.join(command)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return seconds, out.stdout + out.stderr


def measure(condition: str, python: str, env: dict, extra: list[str]) -> dict:
    run_dir = os.path.join("runs", f"bench-demo-{condition}")
    trm = [python, "-m", "trm_fast"]
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "one-busy-core" else None
    try:
        time.sleep(1.0 if spinner else 0.0)  # let the scheduler see it
        others = busy_elsewhere()
        with tempfile.TemporaryDirectory() as tmp:
            summary_path = os.path.join(tmp, "summary.json")
            seconds, train_log = run([*trm, "train", "--preset", "sudoku6-demo", "--out", run_dir, "--overwrite",
                                      "--no-progress", "--summary-json", summary_path, *extra], env)
            with open(summary_path) as f:
                summary = json.load(f)
        _, puzzle = run([python, "-m", "trm_fast.data.recipes", "held-out-puzzle", "sudoku6-demo"], env)
        solve_seconds, solved = run([*trm, "solve", "--ckpt", run_dir, "--puzzle", puzzle.strip().splitlines()[-1]], env)
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    threads = re.search(r" with (\d+) threads? \(", train_log)
    return {
        "condition": condition, "other_tasks_running_at_start": others,
        "threads": int(threads.group(1)) if threads else None,
        "train_and_eval_seconds": round(seconds, 1), "train_seconds": summary["train_seconds"],
        "steps": summary["steps"], "planned_steps": summary.get("planned_steps"),
        "stopped_early": summary.get("stopped_early"),
        "held_out_exact_accuracy": summary["eval"]["exact_accuracy"], "held_out_puzzles": summary["eval"]["count"],
        "solve_seconds": round(solve_seconds, 1), "solve_valid": "valid solution: yes" in solved,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", nargs="+", default=["idle", "one-busy-core"], choices=["idle", "one-busy-core"])
    parser.add_argument("--no-setup", action="store_true", help="skip bash scripts/setup.sh (use --python's packages)")
    parser.add_argument("--python", help="interpreter with trm_fast installed (default: .venv/bin/python of set-up)")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/demo-<machine>.json)")
    parser.add_argument("--steps", type=int, help="train this many steps instead (a quick check of the script only)")
    args = parser.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = {"machine": f"{platform.machine()}, {usable_cores()} cores", "date": time.strftime("%Y-%m-%d %H:%M"),
              "setup_seconds": None, "runs": []}
    if not args.no_setup:
        result["setup_seconds"] = round(run(["bash", "scripts/setup.sh"], env)[0], 1)
    python = args.python or os.path.join(REPO, ".venv", "bin", "python")
    # the embedded dataset is built on first use: part of set-up, not of the timed training
    start = time.time()
    run([python, "-m", "trm_fast.data.recipes", "held-out-puzzle", "sudoku6-demo"], env)
    result["dataset_seconds"] = round(time.time() - start, 1)
    for condition in args.conditions:
        row = measure(condition, python, env, [f"--set=train.max_steps={args.steps}"] if args.steps else [])
        result["runs"].append(row)
        if condition == "idle" and row["other_tasks_running_at_start"]:
            print(f"warning: the machine was not idle ({row['other_tasks_running_at_start']} other tasks running)")
        print(f"{condition}: training + evaluation {row['train_and_eval_seconds']:.0f} s ({row['steps']} steps, "
              f"threads: {row['threads']}, {row['other_tasks_running_at_start']} other tasks running at start), "
              f"held-out exact {100 * row['held_out_exact_accuracy']:.1f}% of {row['held_out_puzzles']}, "
              f"solve {'valid' if row['solve_valid'] else 'INVALID'}"
              + (f"; {row['stopped_early']}" if row["stopped_early"] else ""), flush=True)
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"demo-{platform.machine()}-{usable_cores()}cores.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    cells = "; ".join(f"{r['condition']} {r['train_and_eval_seconds'] / 60:.1f} min, "
                      f"{100 * r['held_out_exact_accuracy']:.1f}% held-out exact" for r in result["runs"])
    setup = f"set-up {result['setup_seconds']:.0f} s apart, " if result["setup_seconds"] is not None else ""
    print(f"README: {result['date']}, {result['machine']}: {setup}dataset {result['dataset_seconds']:.0f} s; "
          f"training + evaluation of {result['runs'][0]['steps']} steps: {cells} ({os.path.relpath(out, REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
