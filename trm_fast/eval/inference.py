"""Solving single puzzles with a trained model (trm_fast.checkpoint.load_trained_model): test-time halting, and one
ARC task's augmented versions voted on."""
from __future__ import annotations

import os

import torch


@torch.no_grad()
def solve_tokens(model, tokens: torch.Tensor, puzzle_id: int = 0, max_steps: int = 16, halt: bool = True,
                 test_time=None) -> dict:
    """Runs supervision steps on one puzzle (tokens (seq_len,)) until q_halt > 0 (if `halt`) or max_steps.
    Returns the predicted tokens, the steps used and the halting confidence sigmoid(q_halt) of the last step.

    With `test_time` (trm_fast.eval.test_time.TestTimeOptions, not plain) the puzzle runs its trajectories and
    versions instead (verifier-guided halting stops at the first step with a valid answer; q_halt does not halt)
    and the result adds "valid" (None without a verifier), "verified" (the answer came from verifier-guided
    halting) and "network_calls" (the compute spent)."""
    device = next(model.parameters()).device
    inputs = tokens.view(1, -1).to(device)
    ids = torch.tensor([puzzle_id], device=device)
    if test_time is not None and not test_time.validate().plain:
        return _solve_test_time(model, inputs, ids, test_time, max_steps)
    carry = model.initial_carry(1, device)
    for step in range(1, max_steps + 1):
        out = model(carry, inputs, ids)
        carry = out.carry
        if halt and float(out.q_halt[0]) > 0:
            break
    return {
        "prediction": out.logits[0].argmax(-1).cpu(),
        "steps": step,
        "halt_confidence": float(torch.sigmoid(out.q_halt[0])),
    }


def _solve_test_time(model, inputs, ids, options, max_steps: int) -> dict:
    from dataclasses import replace

    import numpy as np

    from trm_fast.eval.test_time import Task, calls_per_step, check_model, select_answers, solve_puzzles

    options = replace(options, max_steps=options.max_steps or max_steps)
    task = Task.of(model.config)
    check_model(model, options, task)
    symmetries = task.symmetries(options.augment, np.random.default_rng(options.noise_seed))
    generator = torch.Generator(device=inputs.device).manual_seed(options.noise_seed)
    trajectories = solve_puzzles(model, inputs, ids, options, task, symmetries, generator)
    chosen = select_answers(trajectories, options.select, options.verify, task, inputs)
    prediction = chosen.answer[0].cpu()
    valid = None if task.kind == "other" else bool(task.check(inputs.cpu().numpy(), prediction.view(1, -1).numpy())[0])
    return {
        "prediction": prediction,
        "steps": int(chosen.steps[0]),
        "halt_confidence": float(torch.sigmoid(chosen.q[0])),
        "valid": valid,
        "verified": bool(chosen.verified[0]),
        "network_calls": int(chosen.row_steps[0]) * calls_per_step(model.config)[0],
    }


@torch.no_grad()
def solve_arc_task(model, dataset_root: str, task_id: str, max_steps: int | None = None, batch_size: int = 64) -> dict:
    """One ARC task of a built dataset (trm-fast data build arc1|arc2): every augmented version of its test inputs
    runs all supervision steps, the answers are mapped back and voted on (trm_fast.eval.arc.ArcVoter). Returns
    {"task", "versions", "answers": per test input the ranked grids, "truths", "solved_at": per test input the
    1-based rank of the true output among the answers (None when absent)}."""
    import numpy as np

    from trm_fast.data.augment import parse_arc_aug_name
    from trm_fast.data.format import read_split
    from trm_fast.eval.arc import ArcVoter
    from trm_fast.eval.evaluate import run_puzzles

    voter = ArcVoter.from_dataset(dataset_root)
    if task_id not in voter.truths:
        known = sorted(voter.truths)
        raise ValueError(f"task {task_id!r} is not an evaluation task of {dataset_root} ({len(known)} tasks, e.g. "
                         f"{', '.join(known[:5])})")
    _, sets = read_split(os.path.join(dataset_root, "test"))
    test = sets["all"]
    names = voter.identifiers
    pids, starts = np.asarray(test.puzzle_identifiers), np.asarray(test.puzzle_indices)
    mine = [p for p, pid in enumerate(pids) if 0 < pid < len(names) and parse_arc_aug_name(names[pid])[0] == task_id]
    rows = np.concatenate([np.arange(starts[p], starts[p + 1]) for p in mine])
    sizes = np.diff(starts)[mine]
    example_pid = np.repeat(pids[mine], sizes)
    example_idx = rows - np.repeat(starts[mine], sizes)  # each example's index within its puzzle: the test input
    device = next(model.parameters()).device
    max_steps = max_steps or model.config.halt_max_steps
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        inputs = torch.as_tensor(np.asarray(test.inputs)[rows[part]], dtype=torch.int32, device=device)
        ids = torch.as_tensor(example_pid[part], dtype=torch.int64, device=device)
        preds, q_halt, _, _ = run_puzzles(model, inputs, ids, max_steps)
        voter.add(example_pid[part], example_idx[part], preds.cpu().numpy(), q_halt.cpu().numpy())
    truths = voter.truths[task_id]
    answers = [voter.ranked(task_id, i) for i in range(len(truths))]
    solved_at = [next((r + 1 for r, grid in enumerate(ranked) if np.array_equal(grid, truth)), None)
                 for ranked, truth in zip(answers, truths)]
    return {"task": task_id, "versions": len(mine), "answers": answers, "truths": truths, "solved_at": solved_at}
