"""Test-time compute on a trained model (docs/test_time.md): more answers per puzzle, and a way to pick one.

- Verifier-guided halting (`verify`): Sudoku and Maze answers can be checked without the label
  (trm_fast.data.sudoku.valid_solution_rows, trm_fast.data.maze.check_path). A puzzle keeps running supervision
  steps while no answer of it passes the check, up to max_steps; it stops at the first step where one does.
- Parallel noisy trajectories (PTRM, arXiv 2605.19943): K copies of each puzzle run in one batch; copies 2..K get
  Gaussian noise of scale `noise` added to z after every z update (trm_fast.model.trm.LatentNoise), copy 1 none.
- Symmetry voting (`augment` N): N symmetric versions of each puzzle (the identity first; Sudoku: random
  relabelling, transposition, band/stack and line permutations; Maze: the dihedral transforms), every answer
  mapped back before it is compared, counted or checked.
- Selection among the V x K answers of a puzzle: `q` the highest halting logit (as PTRM), `vote` the most frequent
  answer (ties: the higher mean halting logit), `verified` the answer that passes the verifier (the highest
  halting logit among those), else as `q`. With `verify`, a puzzle that stopped on a valid answer takes it.

Compute is counted in network calls (one application of the recursive network: T * (n + 1) per supervision step
and row) and block applications; a puzzle's cost is the sum over its rows of the steps they ran.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SELECTIONS = ("q", "vote", "verified")
SWEEP_TRAJECTORIES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_NOISE = 0.3  # the scale the sweeps of docs/test_time.md use (z is RMS-normalised: about 1 per channel)
CPU_BUDGET_BYTES = 1 << 30


@dataclass(frozen=True)
class TestTimeOptions:
    """What `evaluate(test_time=...)` and `solve_tokens(test_time=...)` spend at test time. The defaults are plain
    evaluation."""
    __test__ = False  # not a pytest class

    trajectories: int = 1  # K copies per puzzle version
    noise: float = DEFAULT_NOISE  # SIGMA of copies 2..K
    noise_seed: int = 0  # seeds the noise and the Sudoku symmetries drawn
    select: str = "q"
    verify: bool = False  # verifier-guided halting
    augment: int = 1  # symmetric versions per puzzle, the identity first (1: none)
    max_steps: int | None = None  # supervision steps (default: the model's halt_max_steps)
    chunk_rows: int | None = None  # rows per forward (default: what fits CPU_BUDGET_BYTES, a quarter of a GPU)

    def validate(self) -> "TestTimeOptions":
        def need(ok, what):
            if not ok:
                raise ValueError(what)

        need(isinstance(self.trajectories, int) and self.trajectories >= 1,
             f"trajectories (--trajectories K) must be an integer >= 1, got {self.trajectories!r}")
        need(float(self.noise) >= 0 and np.isfinite(self.noise),
             f"noise (--noise SIGMA) must be a finite number >= 0, got {self.noise!r}")
        need(self.select in SELECTIONS, f"select (--select) must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        need(isinstance(self.augment, int) and self.augment >= 1,
             f"augment (--augment N) must be an integer >= 1 (1: no symmetric versions), got {self.augment!r}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps!r}")
        need(self.chunk_rows is None or self.chunk_rows >= 1, f"chunk_rows must be >= 1, got {self.chunk_rows!r}")
        return self

    @property
    def plain(self) -> bool:
        """Exactly plain evaluation (one noise-free copy of the puzzle as given, all steps): the noise is moot."""
        return self.trajectories == 1 and self.augment == 1 and not self.verify


# ---------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """The puzzle kind a model was trained on, from its shape: what can verify and transform its answers."""
    kind: str  # "sudoku", "maze" or "other" (ARC and anything else: no verifier, no symmetries here)
    side: int
    vocab_size: int

    @classmethod
    def of(cls, config) -> "Task":
        side = int(round(config.seq_len ** 0.5))
        if config.seq_len == 900 and config.vocab_size == 6:
            return cls("maze", 30, 6)
        if config.seq_len in (16, 36, 81) and config.vocab_size == side + 2:
            return cls("sudoku", side, config.vocab_size)
        return cls("other", side, config.vocab_size)

    def require_verifier(self, what: str = "verify (--verify, --select verified)") -> None:
        if self.kind == "other":
            raise ValueError(f"{what} needs a verifier: only Sudoku and Maze answers can be checked without the "
                             f"label (ARC votes over its augmented versions)")

    def check(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """(R,) bool: whether each answer row solves its input row (token rows, the label never seen)."""
        self.require_verifier()
        inputs, answers = np.asarray(inputs), np.asarray(answers)
        if self.kind == "sudoku":
            from trm_fast.data.sudoku import valid_solution_rows

            def digits(tokens):
                return np.where(tokens >= 2, tokens - 1, 0).reshape(-1, self.side, self.side)

            return valid_solution_rows(digits(inputs), digits(answers))
        if self.kind == "maze":
            from trm_fast.data.maze import PATH, check_path

            # cheap necessary condition first: only path marks may differ from the maze
            candidates = ((answers == inputs) | (answers == PATH)).all(axis=1) & (answers == PATH).any(axis=1)
            return np.array([bool(c) and check_path(m, a, self.side)["valid"]
                             for m, a, c in zip(inputs, answers, candidates)], dtype=bool)

    def symmetries(self, count: int, rng: np.random.Generator) -> list:
        """`count` TokenSymmetry, the identity first."""
        from trm_fast.data.augment import (TokenSymmetry, maze_token_symmetry, random_sudoku_symmetry,
                                           sudoku_token_symmetry)

        identity = TokenSymmetry(np.arange(self.side * self.side), np.arange(self.vocab_size))
        if count == 1:
            return [identity]
        if self.kind == "sudoku":
            return [identity] + [sudoku_token_symmetry(random_sudoku_symmetry(self.side, rng), self.vocab_size)
                                 for _ in range(count - 1)]
        if self.kind == "maze":
            if count > 8:
                raise ValueError(f"augment (--augment N) for a maze is at most 8 (its dihedral transforms), got {count}")
            return [maze_token_symmetry(k, self.side, self.vocab_size) for k in range(count)]
        raise ValueError(f"augment (--augment N) > 1 needs a Sudoku or Maze model; this one has seq_len "
                         f"{self.side * self.side}, vocab {self.vocab_size} (ARC votes over its dataset's versions)")


def calls_per_step(config) -> tuple[int, int]:
    """(network calls, block applications) of one supervision step of one row."""
    calls = config.T * (config.n + 1)
    if config.arch == "hrm":
        return calls, config.T * (config.n * config.hrm_low_blocks + config.hrm_high_blocks)
    return calls, calls * config.num_blocks


def check_model(model, options: TestTimeOptions, task: Task) -> None:
    """Refuses by name what this model or task cannot do."""
    from trm_fast.model.trm import TRM

    if options.trajectories > 1 and type(model).forward is not TRM.forward:
        raise ValueError(f"trajectories (--trajectories K > 1) need a TRM with a plain latent z; this model is "
                         f"{type(model).__name__}, whose recursion takes no noise")
    if options.verify or options.select == "verified":
        task.require_verifier()
    if options.augment > 1:
        task.symmetries(options.augment, np.random.default_rng(0))


def default_chunk_rows(model, device: torch.device) -> int:
    """Rows per forward within the memory budget: about 32 activations of (sequence, hidden) fp32 per row."""
    c = model.config
    per_row = (c.seq_len + (c.puzzle_emb_len if c.puzzle_emb_dim else 0)) * c.hidden_size * 4 * 32
    budget = CPU_BUDGET_BYTES
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory // 4
    return max(1, budget // per_row)


# ---------------------------------------------------------------------------------------------- trajectories


@dataclass
class Trajectories:
    """Every row of a batch of puzzles, rows ordered (puzzle, version, copy). Answers are in the puzzle's own
    frame (mapped back). first_valid_* are filled only where the verifier ran (0: never valid)."""
    versions: int
    copies: int
    max_steps: int
    final_answer: torch.Tensor  # (R, L) int64
    final_q: torch.Tensor  # (R,) fp32
    steps_run: torch.Tensor  # (R,) int64
    first_valid_step: torch.Tensor  # (R,) int64
    first_valid_answer: torch.Tensor  # (R, L)
    first_valid_q: torch.Tensor  # (R,)

    @property
    def puzzles(self) -> int:
        return len(self.final_q) // (self.versions * self.copies)


@torch.no_grad()
def run_trajectories(model, inputs: torch.Tensor, puzzle_ids: torch.Tensor, options: TestTimeOptions, task: Task,
                     symmetries: list, generator: torch.Generator | None = None, track_valid: bool = False,
                     stop_when_valid: bool = False) -> Trajectories:
    """All rows of one chunk of puzzles (inputs (B, L)) through the supervision steps. `track_valid` checks every
    step's answers; `stop_when_valid` (verifier-guided halting) also drops a puzzle's rows once one is valid."""
    device = inputs.device
    B, L = inputs.shape
    V, K = len(symmetries), options.trajectories
    S = options.max_steps or model.config.halt_max_steps
    R = B * V * K
    positions = torch.as_tensor(np.stack([s.positions for s in symmetries]), device=device)
    tokens = torch.as_tensor(np.stack([s.tokens for s in symmetries]), device=device)
    back_positions, back_tokens = positions.argsort(dim=1), tokens.argsort(dim=1)
    puzzle = torch.arange(B, device=device).repeat_interleave(V * K)
    version = torch.arange(V, device=device).repeat_interleave(K).repeat(B)
    copy = torch.arange(K, device=device).repeat(B * V)
    original = inputs.long()[puzzle]
    rows = tokens[version].gather(1, original.gather(1, positions[version]))
    ids = puzzle_ids[puzzle]
    noisy = K > 1 and options.noise > 0
    scale = torch.where(copy > 0, float(options.noise), 0.0).float()
    inputs_np = inputs.long().cpu().numpy()

    final_answer = torch.zeros(R, L, dtype=torch.int64, device=device)
    final_q = torch.zeros(R, device=device)
    steps_run = torch.zeros(R, dtype=torch.int64, device=device)
    first_valid_step = torch.zeros(R, dtype=torch.int64, device=device)
    first_valid_answer = torch.zeros(R, L, dtype=torch.int64, device=device)
    first_valid_q = torch.zeros(R, device=device)

    alive = torch.arange(R, device=device)
    carry = model.initial_carry(R, device)
    for step in range(1, S + 1):
        if noisy:
            from trm_fast.model.trm import LatentNoise

            out = model(carry, rows[alive], ids[alive], noise=LatentNoise(scale[alive], generator))
        else:
            out = model(carry, rows[alive], ids[alive])
        carry = out.carry
        v = version[alive]
        preds = out.logits.argmax(-1)
        answer = back_tokens[v].gather(1, preds.gather(1, back_positions[v]))
        final_answer[alive], final_q[alive], steps_run[alive] = answer, out.q_halt.float(), step
        if not (track_valid or stop_when_valid):
            continue
        valid = torch.as_tensor(task.check(inputs_np[puzzle[alive].cpu().numpy()], answer.cpu().numpy()), device=device)
        newly = alive[valid & (first_valid_step[alive] == 0)]
        first_valid_step[newly] = step
        first_valid_answer[newly] = final_answer[newly]
        first_valid_q[newly] = final_q[newly]
        if stop_when_valid and bool(valid.any()):
            keep = ~torch.isin(puzzle[alive], puzzle[alive][valid])
            alive = alive[keep]
            carry = tuple(c[keep] for c in carry)
            if not len(alive):
                break
    return Trajectories(V, K, S, final_answer, final_q, steps_run, first_valid_step, first_valid_answer, first_valid_q)


def concat_trajectories(parts: list) -> Trajectories:
    first = parts[0]
    fields = ("final_answer", "final_q", "steps_run", "first_valid_step", "first_valid_answer", "first_valid_q")
    return Trajectories(first.versions, first.copies, first.max_steps,
                        *(torch.cat([getattr(p, f) for p in parts]) for f in fields))


def solve_puzzles(model, inputs: torch.Tensor, puzzle_ids: torch.Tensor, options: TestTimeOptions, task: Task,
                  symmetries: list, generator: torch.Generator | None = None, track_valid: bool = False) -> Trajectories:
    """run_trajectories over chunks of whole puzzles of at most options.chunk_rows rows each."""
    rows_per_puzzle = len(symmetries) * options.trajectories
    chunk_rows = options.chunk_rows or default_chunk_rows(model, inputs.device)
    per_chunk = max(1, chunk_rows // rows_per_puzzle)
    needs_check = options.verify or options.select == "verified"
    parts = [run_trajectories(model, inputs[i:i + per_chunk], puzzle_ids[i:i + per_chunk], options, task, symmetries,
                              generator, track_valid=track_valid or needs_check,
                              stop_when_valid=options.verify and not track_valid)
             for i in range(0, len(inputs), per_chunk)]
    return concat_trajectories(parts)


# ---------------------------------------------------------------------------------------------- selection


@dataclass
class Selection:
    answer: torch.Tensor  # (B, L) the chosen answer of each puzzle
    q: torch.Tensor  # (B,) its halting logit
    steps: torch.Tensor  # (B,) supervision steps the puzzle ran (the verified step, or max_steps)
    row_steps: torch.Tensor  # (B,) sum over its rows of the steps they ran: compute, times calls_per_step
    verified: torch.Tensor  # (B,) bool: the answer came from verifier-guided halting


def _vote(answers: torch.Tensor, q: torch.Tensor) -> int:
    """Index of the row of the most frequent answer; ties go to the higher mean halting logit."""
    _, inverse, counts = torch.unique(answers, dim=0, return_inverse=True, return_counts=True)
    mean_q = torch.zeros(len(counts), dtype=torch.float64, device=q.device).index_add_(0, inverse, q.double()) / counts
    best = max(range(len(counts)), key=lambda u: (int(counts[u]), float(mean_q[u])))
    return int((inverse == best).nonzero()[0])


def select_answers(t: Trajectories, select: str, verify: bool, task: Task | None = None,
                   inputs: torch.Tensor | None = None, copies: int | None = None) -> Selection:
    """One answer per puzzle from the first `copies` copies (default all) of every version. `inputs` (B, L) and
    `task` are needed by select="verified"."""
    copies = copies or t.copies
    B, V, L = t.puzzles, t.versions, t.final_answer.shape[1]

    def per_puzzle(x):
        return x.view(B, V, t.copies, *x.shape[1:])[:, :, :copies].reshape(B, V * copies, *x.shape[1:])

    final_answer, final_q = per_puzzle(t.final_answer), per_puzzle(t.final_q)
    valid_at, valid_answer, valid_q = (per_puzzle(x) for x in (t.first_valid_step, t.first_valid_answer, t.first_valid_q))
    final_valid = None
    if select == "verified":
        final_valid = torch.as_tensor(task.check(inputs.long().cpu().numpy().repeat(V * copies, axis=0),
                                                 final_answer.reshape(-1, L).cpu().numpy()),
                                      device=final_q.device).view(B, V * copies)
    answer = torch.empty(B, L, dtype=torch.int64, device=final_q.device)
    q = torch.empty(B, device=final_q.device)
    steps = torch.full((B,), t.max_steps, dtype=torch.int64, device=final_q.device)
    verified = torch.zeros(B, dtype=torch.bool, device=final_q.device)
    for b in range(B):
        if verify and bool((valid_at[b] > 0).any()):
            first = int(valid_at[b][valid_at[b] > 0].min())
            candidates = (valid_at[b] == first).nonzero().view(-1)
            row = int(candidates[valid_q[b][candidates].argmax()])
            answer[b], q[b] = valid_answer[b][row], valid_q[b][row]
            steps[b], verified[b] = first, True
            continue
        if select == "vote":
            row = _vote(final_answer[b], final_q[b])
        elif select == "verified" and bool(final_valid[b].any()):
            candidates = final_valid[b].nonzero().view(-1)
            row = int(candidates[final_q[b][candidates].argmax()])
        else:
            row = int(final_q[b].argmax())
        answer[b], q[b] = final_answer[b][row], final_q[b][row]
    return Selection(answer, q, steps, steps * V * copies, verified)


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_test_time(model, puzzle_set, metadata, batch_size: int, device, options: TestTimeOptions,
                       rank: int = 0, world_size: int = 1, progress: bool = True, arc_voter=None,
                       sweep: tuple | None = None) -> dict:
    """trm_fast.eval.evaluate.evaluate with test-time compute: each rank takes its slice of every batch of
    puzzles and runs their V x K rows. `sweep` (a tuple of K values <= options.trajectories) instead scores the
    first K copies of every version for each K, with and without verifier-guided halting, by q and by vote, from
    one run: {"sweep": [rows]} (see sweep_rows)."""
    from tqdm.auto import tqdm

    from trm_fast.data.format import IGNORE_LABEL, to_device_batch
    from trm_fast.data.sampler import iter_eval_batches

    options.validate()
    device = torch.device(device)
    task = Task.of(model.config)
    check_model(model, options, task)
    if sweep:
        if max(sweep) > options.trajectories:
            raise ValueError(f"the sweep's largest K {max(sweep)} exceeds trajectories {options.trajectories}")
        task.require_verifier("--tta-sweep (it scores verifier-guided halting too)")
    symmetries = task.symmetries(options.augment, np.random.default_rng(options.noise_seed))
    generator = torch.Generator(device=device).manual_seed(options.noise_seed + rank)
    was_training = model.training
    model.eval()
    calls, blocks = calls_per_step(model.config)
    configs = [(k, verify, select) for k in sweep for verify in (False, True) for select in ("q", "vote")] if sweep else \
        [(options.trajectories, options.verify, options.select)]
    # per configuration: count, exact, token, row steps, steps, verified, recovered, lost (vs the first: plain)
    sums = torch.zeros(len(configs), 8, dtype=torch.float64, device=device)
    puzzle_of_example = np.repeat(np.arange(len(puzzle_set.puzzle_identifiers)), np.diff(puzzle_set.puzzle_indices))
    local = -(-batch_size // world_size)
    total_batches = -(-len(puzzle_set.inputs) // batch_size)
    bar = tqdm(iter_eval_batches(puzzle_set, batch_size, rank=rank, world_size=world_size), total=total_batches,
               desc="eval (test-time)", disable=not progress or rank != 0, leave=False)
    for batch_index, (batch, num_valid) in enumerate(bar):
        if not num_valid:
            continue
        b = to_device_batch(batch, metadata.ignore_label_id, device)
        inputs, labels = b["inputs"][:num_valid], b["labels"][:num_valid]
        mask = labels != IGNORE_LABEL
        counts = mask.sum(-1)
        scored = counts > 0
        t = solve_puzzles(model, inputs, b["puzzle_identifiers"][:num_valid], options, task, symmetries, generator,
                          track_valid=bool(sweep))
        plain_exact = None
        for c, (k, verify, select) in enumerate(configs):
            chosen = select_answers(t, select, verify, task, inputs, copies=k)
            right = (mask & (chosen.answer == labels)).sum(-1)
            exact = scored & (right == counts)
            plain_exact = exact if plain_exact is None else plain_exact
            sums[c] += torch.stack([
                scored.sum(), exact.sum(), torch.where(scored, right / counts.clamp_min(1), 0.0).sum(),
                torch.where(scored, chosen.row_steps, 0).sum(), torch.where(scored, chosen.steps, 0).sum(),
                (scored & chosen.verified).sum(), (exact & ~plain_exact).sum(), (plain_exact & ~exact).sum(),
            ]).double()
            if arc_voter is not None and c == 0:
                examples = batch_index * batch_size + rank * local + np.arange(num_valid)
                puzzles = puzzle_of_example[examples]
                arc_voter.add(np.asarray(puzzle_set.puzzle_identifiers)[puzzles],
                              examples - puzzle_set.puzzle_indices[puzzles], chosen.answer.cpu().numpy(),
                              chosen.q.cpu().numpy())
    if world_size > 1:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    rows = []
    for (k, verify, select), (count, exact, token, row_steps, steps, verified, recovered, lost) in zip(configs, sums.tolist()):
        n = max(count, 1.0)
        rows.append({
            "trajectories": k, "verify": verify, "select": select, "count": int(count), "exact_accuracy": exact / n,
            "token_accuracy": token / n, "mean_steps": steps / n, "verified_fraction": verified / n,
            "network_calls_per_puzzle": row_steps * calls / n, "block_applications_per_puzzle": row_steps * blocks / n,
            "recovered": int(recovered), "lost": int(lost),
        })
    common = {"noise": options.noise if options.trajectories > 1 else 0.0, "noise_seed": options.noise_seed,
              "augment": options.augment, "steps": options.max_steps or model.config.halt_max_steps}
    if sweep:
        return {**common, "sweep": rows}
    row = rows[0]
    del row["recovered"], row["lost"]
    return {**common, **row}
