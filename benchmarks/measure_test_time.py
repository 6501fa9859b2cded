"""The test-time compute tables of docs/test_time.md: a checkpoint's held-out puzzles under parallel noisy
trajectories (K copies, SIGMA), symmetry voting (N versions) and verifier-guided halting, each scored per puzzle
against plain evaluation (K = 1, no verifier: how many puzzles it gets wrong that a method recovers, and loses).

    python benchmarks/measure_test_time.py --ckpt runs/sudoku6-demo --out benchmarks/results/test_time_demo.json
    python benchmarks/measure_test_time.py --ckpt runs/sudoku6-demo/checkpoints/step_00000300 --sigmas 0.1,0.3,1 ...

One run of the largest K scores every smaller K from its first K copies (copy 1 is noise-free, so K = 1 is plain
evaluation); each N of --augments is a run of its own. Compute is network calls per puzzle (trm_fast.eval.test_time).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def per_puzzle(model, test_set, options, track_valid=True):
    """(Trajectories, inputs, labels) of every held-out puzzle under `options`."""
    from trm_fast.eval.test_time import Task, solve_puzzles

    task = Task.of(model.config)
    inputs = torch.as_tensor(np.asarray(test_set.inputs), dtype=torch.int64)
    labels = torch.as_tensor(np.asarray(test_set.labels), dtype=torch.int64)
    ids = torch.as_tensor(np.asarray(test_set.puzzle_identifiers), dtype=torch.int64)
    ids = ids[np.repeat(np.arange(len(ids)), np.diff(test_set.puzzle_indices))]
    symmetries = task.symmetries(options.augment, np.random.default_rng(options.noise_seed))
    generator = torch.Generator().manual_seed(options.noise_seed)
    t = solve_puzzles(model, inputs, ids, options, task, symmetries, generator, track_valid=track_valid)
    return t, task, inputs, labels


def score(t, task, inputs, labels, k, verify, select, calls):
    from trm_fast.eval.test_time import select_answers

    chosen = select_answers(t, select, verify, task, inputs, copies=k)
    exact = (chosen.answer == labels).all(-1)
    return exact, float(chosen.row_steps.double().mean()) * calls, float(chosen.steps.double().mean())


def main():
    from dataclasses import replace

    from trm_fast.checkpoint import load_trained_model
    from trm_fast.data.format import load_data
    from trm_fast.eval.test_time import TestTimeOptions, calls_per_step

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--ks", default="1,2,4,8,16,32,64")
    p.add_argument("--augments", default="2,4,8,16")
    p.add_argument("--sigmas", default="", help="also K = --sigma-k at each of these noise scales")
    p.add_argument("--sigma-k", type=int, default=16)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, config, _ = load_trained_model(args.ckpt, "cpu")
    data = load_data(config, log=lambda *a: None)
    calls = calls_per_step(model.config)[0]
    base = TestTimeOptions(noise=args.noise, max_steps=args.max_steps, chunk_rows=4096)
    ks = [int(k) for k in args.ks.split(",")]
    rows, started = [], time.time()

    t, task, inputs, labels = per_puzzle(model, data.test_set, replace(base, trajectories=max(ks)))
    plain, _, _ = score(t, task, inputs, labels, 1, False, "q", calls)

    def add(method, k, n, sigma, verify, select, source):
        exact, cost, steps = score(*source, k, verify, select, calls)
        rows.append({"method": method, "K": k, "N": n, "noise": sigma, "verify": verify, "select": select,
                     "solved": int(exact.sum()), "count": len(exact), "calls_per_puzzle": round(cost, 1),
                     "mean_steps": round(steps, 2), "recovered": int((exact & ~plain).sum()),
                     "lost": int((plain & ~exact).sum())})
        print(json.dumps(rows[-1]), flush=True)

    for k in ks:
        for verify in (False, True):
            for select in ("q", "vote", "verified"):
                if not (verify and select == "verified"):  # verified halting already takes the verified answer
                    add("trajectories", k, 1, args.noise if k > 1 else 0.0, verify, select, (t, task, inputs, labels))
    for n in [int(n) for n in args.augments.split(",") if n]:
        source = per_puzzle(model, data.test_set, replace(base, augment=n))
        for verify in (False, True):
            for select in ("vote", "q"):
                add("symmetries", 1, n, 0.0, verify, select, source)
    for sigma in [float(s) for s in args.sigmas.split(",") if s]:
        source = per_puzzle(model, data.test_set, replace(base, trajectories=args.sigma_k, noise=sigma))
        for verify in (False, True):
            add("noise scale", args.sigma_k, 1, sigma, verify, "q", source)
    result = {"checkpoint": args.ckpt, "plain_solved": int(plain.sum()), "count": len(plain),
              "calls_per_step": calls, "seconds": round(time.time() - started, 1), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(f"plain: {int(plain.sum())}/{len(plain)}; {result['seconds']} s")


if __name__ == "__main__":
    main()
