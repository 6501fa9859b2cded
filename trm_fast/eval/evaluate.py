"""Evaluation: every puzzle runs all halt_max_steps supervision steps (16 in the published runs) and the final
answer is scored: exact accuracy (every supervised token right), token accuracy and halting accuracy
((q_halt >= 0) == exactly correct at the last step). Also reported: the step at which the model would have
halted (first q_halt > 0) and the exact accuracy of the answer at that step."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from trm_fast.data.format import IGNORE_LABEL, to_device_batch


@torch.no_grad()
def run_puzzles(model, inputs: torch.Tensor, puzzle_ids: torch.Tensor, max_steps: int, on_step=None):
    """All supervision steps on a batch. Returns final predictions (B, L), final q_halt (B,), the first step
    with q_halt > 0 (max_steps where never), and the predictions at that step. `on_step(step, preds, q_halt)`, when
    given, sees every step's predictions (test-time compute curves)."""
    B = inputs.shape[0]
    carry = model.initial_carry(B, inputs.device)
    first_halt = torch.full((B,), max_steps, dtype=torch.int64, device=inputs.device)
    halt_preds = None
    for step in range(1, max_steps + 1):
        out = model(carry, inputs, puzzle_ids)
        carry = out.carry
        preds = out.logits.argmax(-1)
        if on_step is not None:
            on_step(step, preds, out.q_halt)
        if halt_preds is None:
            halt_preds = preds.clone()
        newly = (out.q_halt > 0) & (first_halt == max_steps) & (step < max_steps)
        first_halt = torch.where(newly, torch.full_like(first_halt, step), first_halt)
        halt_preds = torch.where(newly.view(-1, 1) | (first_halt == max_steps).view(-1, 1), preds, halt_preds)
    return preds, out.q_halt.float(), first_halt, halt_preds


@torch.no_grad()
def evaluate(model, puzzle_set, metadata, batch_size: int, device, max_steps: int | None = None,
             rank: int = 0, world_size: int = 1, progress: bool = True, return_predictions: bool = False,
             arc_voter=None, per_step: bool = False, test_time=None) -> dict:
    """Scores `puzzle_set` (a trm_fast.data.format.PuzzleSet). With world_size > 1 each rank scores its slice of
    every batch and the sums are all-reduced. With an `arc_voter` (trm_fast.eval.arc.ArcVoter) every prediction
    also votes for its task's test input; the caller gathers and scores the votes. `per_step` adds
    exact_accuracy_by_step and token_accuracy_by_step: the accuracy had evaluation stopped after step 1, 2, ...
    `test_time` (trm_fast.eval.test_time.TestTimeOptions) spends more compute per puzzle unless it is plain;
    every result reports the compute: network calls and block applications per puzzle."""
    import numpy as np

    from trm_fast.data.sampler import iter_eval_batches
    from trm_fast.eval.test_time import calls_per_step, evaluate_test_time

    if test_time is not None and not test_time.validate().plain:
        if per_step or return_predictions:
            raise ValueError("per_step and return_predictions go with plain evaluation, not with test-time options")
        return evaluate_test_time(model, puzzle_set, metadata, batch_size, device,
                                  test_time if max_steps is None else replace(test_time, max_steps=max_steps),
                                  rank=rank, world_size=world_size, progress=progress, arc_voter=arc_voter)
    if test_time is not None and test_time.max_steps:
        max_steps = max_steps or test_time.max_steps
    puzzle_of_example = np.repeat(np.arange(len(puzzle_set.puzzle_identifiers)), np.diff(puzzle_set.puzzle_indices))
    local = -(-batch_size // world_size)
    was_training = model.training
    model.eval()
    max_steps = max_steps or model.config.halt_max_steps
    sums = torch.zeros(6, dtype=torch.float64, device=device)  # count, exact, token, halt_acc, halt_step, exact_at_halt
    by_step = torch.zeros(2, max_steps, dtype=torch.float64, device=device)  # exact, token accuracy sums per step
    predictions, q_halts = [], []
    total_batches = -(-len(puzzle_set.inputs) // batch_size)
    bar = tqdm(iter_eval_batches(puzzle_set, batch_size, rank=rank, world_size=world_size), total=total_batches,
               desc="eval", disable=not progress or rank != 0, leave=False)
    for batch_index, (batch, num_valid) in enumerate(bar):
        b = to_device_batch(batch, metadata.ignore_label_id, device)
        labels = b["labels"]
        mask = labels != IGNORE_LABEL
        counts = mask.sum(-1)
        rows = (torch.arange(len(labels), device=device) < num_valid) & (counts > 0)

        def correct_tokens(p):
            return (mask & (p == labels)).sum(-1)

        def score_step(step, step_preds, _q_halt):
            right = correct_tokens(step_preds)
            by_step[0, step - 1] += (rows & (right == counts)).sum()
            by_step[1, step - 1] += torch.where(rows, right / counts.clamp_min(1), 0.0).sum()

        preds, q_halt, first_halt, halt_preds = run_puzzles(model, b["inputs"], b["puzzle_identifiers"], max_steps,
                                                            score_step if per_step else None)
        if arc_voter is not None and num_valid:
            examples = batch_index * batch_size + rank * local + np.arange(num_valid)
            puzzles = puzzle_of_example[examples]
            arc_voter.add(np.asarray(puzzle_set.puzzle_identifiers)[puzzles], examples - puzzle_set.puzzle_indices[puzzles],
                          preds[:num_valid].cpu().numpy(), q_halt[:num_valid].cpu().numpy())
        correct = correct_tokens(preds)
        exact = (correct == counts) & (counts > 0)
        exact_at_halt = (correct_tokens(halt_preds) == counts) & (counts > 0)
        sums += torch.stack([
            rows.sum(), (rows & exact).sum(), torch.where(rows, correct / counts.clamp_min(1), 0.0).sum(),
            (rows & ((q_halt >= 0) == exact)).sum(), torch.where(rows, first_halt, 0).sum(), (rows & exact_at_halt).sum(),
        ]).double()
        if return_predictions:
            predictions.append(preds[:num_valid].cpu())
            q_halts.append(q_halt[:num_valid].cpu())
    if world_size > 1:
        torch.distributed.all_reduce(sums)
        if per_step:
            torch.distributed.all_reduce(by_step)
    model.train(was_training)
    count, exact, token, halt_acc, halt_step, exact_at_halt = sums.tolist()
    n = max(count, 1.0)
    result = {
        "count": int(count),
        "exact_accuracy": exact / n,
        "token_accuracy": token / n,
        "halt_accuracy": halt_acc / n,
        "mean_halt_step": halt_step / n,
        "exact_accuracy_at_halt": exact_at_halt / n,
        "steps": max_steps,
        "network_calls_per_puzzle": max_steps * calls_per_step(model.config)[0],
        "block_applications_per_puzzle": max_steps * calls_per_step(model.config)[1],
    }
    if per_step:
        result["exact_accuracy_by_step"] = (by_step[0] / n).tolist()
        result["token_accuracy_by_step"] = (by_step[1] / n).tolist()
    if return_predictions:
        result["predictions"] = torch.cat(predictions) if predictions else torch.empty(0)
        result["q_halt"] = torch.cat(q_halts) if q_halts else torch.empty(0)
    return result


def arc_voter_for(dataset_root: str):
    """An ArcVoter when the dataset is an ARC build (identifiers.json and test_puzzles.json), else None."""
    import os

    from trm_fast.eval.arc import ArcVoter

    if not all(os.path.isfile(os.path.join(dataset_root, name)) for name in ("identifiers.json", "test_puzzles.json")):
        return None
    return ArcVoter.from_dataset(dataset_root)


def arc_scores(voter, out_dir: str | None, ks=(1, 2, 10), rank: int = 0) -> dict:
    """Gathers the votes of every rank and, on rank 0, scores them and writes submission.json."""
    import os

    from trm_fast.eval.arc import gather_voter

    merged = gather_voter(voter)
    if rank != 0:
        return {}
    scores = merged.scores(ks)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        scores["submission"] = merged.write_submission(os.path.join(out_dir, "submission.json"))
    return scores
