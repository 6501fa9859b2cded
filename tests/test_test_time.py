"""Test-time compute (trm_fast/eval/test_time.py): trajectories, symmetry voting, verifier-guided halting."""
import copy
import itertools

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trm_fast.config import TRMConfig
from trm_fast.data.augment import (TokenSymmetry, augment_sudoku, maze_token_symmetry, random_sudoku_symmetry,
                                   restore_sudoku, sudoku_token_symmetry)
from trm_fast.data.sudoku import grid_to_tokens, is_valid_solution, valid_solution_rows
from trm_fast.eval.evaluate import evaluate, run_puzzles
from trm_fast.eval.test_time import (Task, TestTimeOptions, Trajectories, calls_per_step, check_model,
                                     select_answers, solve_puzzles)
from trm_fast.model import build_model
from trm_fast.model.trm import StepOutput


def tiny(*overrides):
    config = TRMConfig.preset("sudoku4-tiny").override(list(overrides))
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    with torch.no_grad():  # a random puzzle vector and halting head (zero-initialised), so both are exercised
        model.puzzle_emb.weight.normal_()
        model.q_head_weight.normal_()
    return config, model


def puzzles_4x4(count, seed=0):
    """(inputs (count, 16) tokens, solution grids) of random 4x4 puzzles with about half the cells given."""
    grids = all_4x4_grids()
    rng = np.random.default_rng(seed)
    solutions = grids[rng.integers(0, len(grids), count)]
    puzzles = np.where(rng.random(solutions.shape) < 0.5, solutions, 0)
    return torch.as_tensor(np.stack([grid_to_tokens(p) for p in puzzles])), solutions


def all_4x4_grids():
    """The 288 solved 4x4 grids."""
    rows = list(itertools.permutations(range(1, 5)))
    grids = []

    def extend(prefix):
        if len(prefix) == 4:
            if is_valid_solution(np.zeros((4, 4), int), np.array(prefix)):
                grids.append(np.array(prefix))
            return
        for row in rows:
            if all(row[c] != above[c] for above in prefix for c in range(4)):
                extend(prefix + [row])

    extend([])
    return np.stack(grids)


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------------------------------------- equal when off


def test_noise_off_forward_is_the_plain_step_op_for_op():
    """forward without noise is the recursion of TRM_SPEC: the same outputs and gradients, and no more dispatched ops
    (fewer: y + x is added once per cycle; tests/test_launches.py pins the step's launch counts)."""
    config, model = tiny()
    model.train()
    inputs, ids = puzzles_4x4(3)[0], torch.zeros(3, dtype=torch.long)

    def plain_step():
        x, (y, z), ops, rope = model.prepare(model.initial_carry(3, "cpu"), inputs, ids)
        for cycle in range(config.model.T):
            with torch.set_grad_enabled(cycle == config.model.T - 1):
                for _ in range(config.model.n):
                    z = model.net(z, y + x, ops, rope)
                y = model.net(y, z, ops, rope)
        y.detach(), z.detach()  # the carry forward returns
        return model.heads(y)

    results = []
    for step in (plain_step, lambda: (lambda o: (o.logits, o.q_halt, o.q_continue))(
            model(model.initial_carry(3, "cpu"), inputs, ids))):
        model.zero_grad()
        with CountOps() as ops:
            logits, q_halt, q_continue = step()
            (logits.square().sum() + q_halt.sum()).backward()
        results.append((ops.count, logits, q_halt, [p.grad.clone() for p in model.parameters()]))
    (count_a, logits_a, q_a, grads_a), (count_b, logits_b, q_b, grads_b) = results
    assert count_b < count_a
    assert torch.equal(logits_a, logits_b) and torch.equal(q_a, q_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_evaluate_with_options_off_is_plain_evaluation():
    from trm_fast.data.format import load_data

    config, model = tiny()
    data = load_data(config, log=lambda *a: None)
    results = []
    for options in (None, TestTimeOptions(), TestTimeOptions(trajectories=1, noise=0.9)):
        with CountOps() as ops:
            result = evaluate(model, data.test_set, data.test_meta, 32, "cpu", max_steps=2, progress=False,
                              test_time=options)
        results.append((ops.count, result))
    assert results[0] == results[1] == results[2]
    assert results[0][1]["network_calls_per_puzzle"] == 2 * config.model.T * (config.model.n + 1)


@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_one_trajectory_is_plain_evaluation_bit_for_bit(noise):
    config, model = tiny()
    inputs, _ = puzzles_4x4(5)
    ids = torch.zeros(5, dtype=torch.long)
    preds, q_halt, _, _ = run_puzzles(model, inputs.int(), ids, 4)
    options = TestTimeOptions(trajectories=1, noise=noise, max_steps=4)
    t = solve_puzzles(model, inputs, ids, options, Task.of(config.model), Task.of(config.model).symmetries(1, None))
    assert torch.equal(t.final_answer, preds) and torch.equal(t.final_q, q_halt)
    chosen = select_answers(t, "q", verify=False)
    assert torch.equal(chosen.answer, preds) and chosen.row_steps.tolist() == [4] * 5


# ---------------------------------------------------------------------------------------------- selection


def constructed(final_q, answers, valid_step=None):
    R, L = len(final_q), answers.shape[1]
    zeros = torch.zeros(R, dtype=torch.int64)
    return Trajectories(1, R, 4, answers, torch.tensor(final_q), torch.full((R,), 4),
                        zeros if valid_step is None else torch.tensor(valid_step), answers.clone(),
                        torch.tensor(final_q))


def test_q_picks_the_highest_halting_logit_and_vote_the_majority():
    answers = torch.tensor([[1, 1], [2, 2], [3, 3], [2, 2], [4, 4]])
    t = constructed([0.5, -1.0, 3.0, -2.0, 0.1], answers)
    assert select_answers(t, "q", verify=False).answer.tolist() == [[3, 3]]
    assert select_answers(t, "vote", verify=False).answer.tolist() == [[2, 2]]
    assert select_answers(t, "q", verify=False, copies=2).answer.tolist() == [[1, 1]]  # the first 2 copies only
    tie = constructed([0.5, -1.0, 3.0, 0.2], torch.tensor([[1, 1], [1, 1], [3, 3], [3, 3]]))
    assert select_answers(tie, "vote", verify=False).answer.tolist() == [[3, 3]]  # tie: higher mean q


def test_verified_halting_takes_the_first_valid_answer():
    answers = torch.tensor([[1, 1], [2, 2], [3, 3]])
    t = constructed([5.0, 0.0, 1.0], answers, valid_step=[0, 3, 2])
    chosen = select_answers(t, "q", verify=True)
    assert chosen.answer.tolist() == [[3, 3]] and chosen.steps.tolist() == [2] and chosen.verified.tolist() == [True]
    assert chosen.row_steps.tolist() == [2 * 3]


# ---------------------------------------------------------------------------------------------- symmetries


@pytest.mark.parametrize("seed", range(20))
def test_every_symmetry_is_undone_by_its_inverse(seed):
    rng = np.random.default_rng(seed)
    for size in (4, 6, 9):
        grid = rng.integers(0, size + 1, (size, size))
        symmetry = random_sudoku_symmetry(size, rng)
        assert np.array_equal(restore_sudoku(augment_sudoku(grid, symmetry), symmetry), grid)
        tokens = sudoku_token_symmetry(symmetry, size + 2)
        assert np.array_equal(tokens.apply(grid_to_tokens(grid)), grid_to_tokens(augment_sudoku(grid, symmetry)))
        rows = rng.integers(0, size + 2, (3, size * size))
        assert np.array_equal(tokens.restore(tokens.apply(rows)), rows)
    maze = rng.integers(0, 6, (2, 900))
    for k in range(8):
        symmetry = maze_token_symmetry(k, 30, 6)
        assert np.array_equal(symmetry.restore(symmetry.apply(maze)), maze)
        assert k == 0 or not np.array_equal(symmetry.apply(maze), maze)


class OracleModel(torch.nn.Module):
    """Answers every puzzle it is shown with its solution (in the frame it is shown), from step `solves_at` on;
    before that, the puzzle as given. Records the rows of every call."""

    def __init__(self, config, solves_at=1, q=None):
        super().__init__()
        self.config, self.solves_at, self.q, self.calls = config, solves_at, q, []
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def initial_carry(self, batch, device):
        return (torch.zeros(batch, dtype=torch.long),)

    def forward(self, carry, inputs, puzzle_ids=None):
        from trm_fast.data.sudoku import solve

        self.calls.append(len(inputs))
        (step,) = carry
        step = step + 1
        answers = []
        for row, s in zip(inputs.numpy(), step.tolist()):
            grid = np.where(row >= 2, row - 1, 0).reshape(4, 4)
            solution = solve(grid) if s >= self.solves_at else None
            answers.append(grid_to_tokens(grid if solution is None else solution))
        logits = torch.nn.functional.one_hot(torch.as_tensor(np.stack(answers)), self.config.vocab_size).float()
        q = torch.zeros(len(inputs)) if self.q is None else self.q[: len(inputs)]
        return StepOutput((step,), logits, q, q)


def test_votes_are_counted_after_the_inverse():
    config, _ = tiny()
    _, solutions = puzzles_4x4(3, seed=1)
    unique = np.eye(4, dtype=int) == 0  # one blank per row, column and box: a unique solution
    inputs = torch.as_tensor(np.stack([grid_to_tokens(s * unique) for s in solutions]))
    task = Task.of(config.model)
    symmetries = task.symmetries(6, np.random.default_rng(0))
    t = solve_puzzles(OracleModel(config.model), inputs, torch.zeros(3, dtype=torch.long),
                      TestTimeOptions(augment=6, max_steps=1), task, symmetries)
    expected = torch.as_tensor(np.stack([grid_to_tokens(s) for s in solutions]))
    # every version's answer, mapped back, is the puzzle's own solution: six votes for one answer
    assert torch.equal(t.final_answer.view(3, 6, 16), expected[:, None].expand(3, 6, 16))
    assert torch.equal(select_answers(t, "vote", verify=False).answer, expected)


def test_verifier_guided_halting_stops_at_the_first_valid_step():
    config, _ = tiny()
    inputs, _ = puzzles_4x4(2, seed=3)
    model = OracleModel(config.model, solves_at=3)
    task = Task.of(config.model)
    options = TestTimeOptions(verify=True, max_steps=6)
    t = solve_puzzles(model, inputs, torch.zeros(2, dtype=torch.long), options, task, task.symmetries(1, None))
    chosen = select_answers(t, "q", verify=True)
    assert model.calls == [2, 2, 2] and chosen.steps.tolist() == [3, 3] and chosen.verified.all()
    assert chosen.row_steps.tolist() == [3, 3]
    # a puzzle leaves the batch at its first valid step; the other, unsolvable, runs on
    model = OracleModel(config.model, solves_at=1)
    mixed = inputs.clone()
    mixed[1] = torch.as_tensor(grid_to_tokens(np.array([[1, 1, 0, 0]] + [[0] * 4] * 3)))
    t = solve_puzzles(model, mixed, torch.zeros(2, dtype=torch.long), options, task, task.symmetries(1, None))
    assert model.calls == [2, 1, 1, 1, 1, 1]
    assert select_answers(t, "q", verify=True).steps.tolist() == [1, 6]


# ---------------------------------------------------------------------------------------------- verifiers


def test_verifiers_accept_every_label_and_reject_single_cell_corruptions():
    from trm_fast.data.format import load_data
    from trm_fast.data.maze import OPEN, PATH, check_path, generate_mazes

    config, _ = tiny()
    data = load_data(config, log=lambda *a: None)
    task = Task.of(config.model)
    for split in (data.test_set, data.train_set):
        inputs, labels = np.asarray(split.inputs).astype(np.int64), np.asarray(split.labels).astype(np.int64)
        assert task.check(inputs, labels).all()
        rng = np.random.default_rng(0)
        corrupt = labels.copy()
        cells = rng.integers(0, 16, len(labels))
        rows = np.arange(len(labels))
        corrupt[rows, cells] = 2 + (corrupt[rows, cells] - 2 + rng.integers(1, 4, len(labels))) % 4
        assert not task.check(inputs, corrupt).any()
    # the verifier never sees a label: a puzzle with two solutions accepts both
    grids = all_4x4_grids()
    a, b = next((g, h) for g, h in itertools.combinations(grids, 2) if (g != h).sum() == 4)
    puzzle = np.where(a == b, a, 0)
    assert valid_solution_rows(np.stack([puzzle, puzzle]), np.stack([a, b])).all()

    mazes = generate_mazes(3, seed=0)
    maze_task = Task("maze", 30, 6)
    assert maze_task.check(mazes["inputs"].astype(np.int64), mazes["labels"].astype(np.int64)).all()
    for maze, label in zip(mazes["inputs"], mazes["labels"]):
        path = np.flatnonzero(label == PATH)
        dropped = label.copy()
        dropped[path[len(path) // 2]] = OPEN
        extra = label.copy()
        extra[np.flatnonzero(label == OPEN)[0]] = PATH
        assert not check_path(maze, dropped)["valid"] and not check_path(maze, extra)["valid"]
        assert not maze_task.check(np.stack([maze, maze]), np.stack([dropped, extra])).any()


# ---------------------------------------------------------------------------------------------- refusals


def test_bad_values_are_refused_by_name():
    for options, name in ((TestTimeOptions(trajectories=0), "trajectories"), (TestTimeOptions(noise=-0.1), "noise"),
                          (TestTimeOptions(select="best"), "select"), (TestTimeOptions(augment=0), "augment")):
        with pytest.raises(ValueError, match=name):
            options.validate()
    with pytest.raises(ValueError, match="augment.*maze.*8"):
        Task("maze", 30, 6).symmetries(9, np.random.default_rng(0))
    arc = TRMConfig.preset("sudoku4-tiny").override(["model.seq_len=900", "model.vocab_size=12"]).model
    with pytest.raises(ValueError, match="augment"):
        Task.of(arc).symmetries(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="verifier"):
        check_model(None, TestTimeOptions(verify=True), Task.of(arc))
    config = TRMConfig.preset("sudoku4-tiny").override(["model.arch=hrm", "model.hrm_low_blocks=1",
                                                         "model.hrm_high_blocks=1"])
    with pytest.raises(ValueError, match="trajectories.*HRM"):
        check_model(build_model(config.model), TestTimeOptions(trajectories=2), Task.of(config.model))
    assert calls_per_step(config.model) == (config.model.T * (config.model.n + 1),
                                            config.model.T * (config.model.n + 1))


# ---------------------------------------------------------------------------------------------- backends


def test_triton_backend_agrees_with_torch_at_zero_noise():
    config, model = tiny("model.hidden_size=32", "model.num_blocks=1", "model.T=1")
    fast = copy.deepcopy(model)
    fast.config = copy.deepcopy(config.model)
    fast.config.backend = "triton"
    assert fast.backend(torch.device("cpu")) == "triton"
    inputs, _ = puzzles_4x4(2)
    ids = torch.zeros(2, dtype=torch.long)
    task = Task.of(config.model)
    options = TestTimeOptions(trajectories=2, noise=0.0, max_steps=2)
    a, b = (solve_puzzles(m, inputs, ids, options, task, task.symmetries(1, None)) for m in (model, fast))
    assert torch.equal(a.final_answer, b.final_answer)
    torch.testing.assert_close(a.final_q, b.final_q, atol=1e-4, rtol=1e-4)
    noisy = TestTimeOptions(trajectories=2, noise=0.5, max_steps=1)  # the same draws from equal generators
    a, b = (solve_puzzles(m, inputs, ids, noisy, task, task.symmetries(1, None), torch.Generator().manual_seed(1))
            for m in (model, fast))
    torch.testing.assert_close(a.final_q, b.final_q, atol=1e-4, rtol=1e-4)
    assert not torch.equal(a.final_q[0::2], a.final_q[1::2])  # the noise reached the second copies


# ---------------------------------------------------------------------------------------------- command line


def test_solve_and_eval_flags(tmp_path, capsys):
    import json

    from trm_fast.cli import main
    from trm_fast.train.trainer import train

    config = TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path / 'run'}", "train.max_steps=3"])
    train(config, progress=False, log=lambda *a: None)
    run = str(tmp_path / "run")
    code = main(["solve", "--ckpt", run, "--puzzle", "1.3..4.2.......1", "--trajectories", "2", "--augment", "2"])
    out = capsys.readouterr().out
    assert code in (0, 1) and "network calls: " in out and "valid solution" in out
    assert main(["solve", "--ckpt", run, "--puzzle", "1.3..4.2.......1", "--trajectories", "0"]) == 2
    assert "trajectories" in capsys.readouterr().err
    assert main(["eval", "--ckpt", run, "--noise", "-1", "--trajectories", "2"]) == 2
    assert "noise" in capsys.readouterr().err
    assert main(["eval", "--ckpt", run, "--tta-sweep", "--trajectories", "4", "--out", str(tmp_path / "ev"),
                 "--device", "cpu", "--max-steps", "2"]) == 0
    result = json.loads((tmp_path / "ev" / "test_time.json").read_text())
    assert [(r["trajectories"], r["verify"], r["select"]) for r in result["sweep"]] == [
        (k, v, s) for k in (1, 2, 4) for v in (False, True) for s in ("q", "vote")]
    assert (tmp_path / "ev" / "test_time.png").stat().st_size > 0
