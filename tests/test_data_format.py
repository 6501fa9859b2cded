"""The on-disk format: round trip, validation errors that name file and field, atomic output (which replaces
only a dataset this tool wrote, and that only when asked), manifest; a run's dataset (load_data) and its device
batches (to_device_batch)."""
import json
import os
import stat

import numpy as np
import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.data.format import (IGNORE_LABEL, DatasetMetadata, PuzzleSet, atomic_output_dir, dataset_manifest,
                                  load_data, read_split, rows_in, to_device_batch, write_split)


def _example(seed=0, groups=(2, 1, 3), examples_per_puzzle=2, seq_len=5, vocab=7):
    rng = np.random.default_rng(seed)
    puzzles = sum(groups)
    n = puzzles * examples_per_puzzle
    puzzle_set = PuzzleSet(
        inputs=rng.integers(0, vocab, (n, seq_len)).astype(np.int32),
        labels=rng.integers(0, vocab, (n, seq_len)).astype(np.int32),
        puzzle_identifiers=np.arange(1, puzzles + 1, dtype=np.int32),
        puzzle_indices=np.arange(0, n + 1, examples_per_puzzle, dtype=np.int32),
        group_indices=np.concatenate([[0], np.cumsum(groups)]).astype(np.int32),
    )
    meta = DatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab, seq_len=seq_len,
                           num_puzzle_identifiers=puzzles + 1, total_groups=len(groups),
                           mean_puzzle_examples=float(examples_per_puzzle), total_puzzles=puzzles, sets=["all"])
    return meta, puzzle_set


def test_round_trip_with_published_names(tmp_path):
    meta, puzzle_set = _example()
    write_split(str(tmp_path), meta, {"all": puzzle_set})
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(["dataset.json"] + [f"all__{k}.npy" for k in
                                              ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")])
    raw = json.loads((tmp_path / "dataset.json").read_text())
    assert set(raw) == {"pad_id", "ignore_label_id", "blank_identifier_id", "vocab_size", "seq_len",
                        "num_puzzle_identifiers", "total_groups", "mean_puzzle_examples", "total_puzzles", "sets"}
    for mmap in (False, True):
        meta2, sets = read_split(str(tmp_path), mmap=mmap)
        assert meta2 == meta
        for field in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices"):
            assert np.array_equal(getattr(sets["all"], field), getattr(puzzle_set, field))
    assert np.load(tmp_path / "all__group_indices.npy").dtype == np.int32


def test_published_file_without_total_puzzles_reads(tmp_path):
    meta, puzzle_set = _example()
    write_split(str(tmp_path), meta, {"all": puzzle_set})
    raw = json.loads((tmp_path / "dataset.json").read_text())
    del raw["total_puzzles"]
    (tmp_path / "dataset.json").write_text(json.dumps(raw))
    assert read_split(str(tmp_path))[0].total_puzzles == 6


@pytest.mark.parametrize("field, value, message", [
    ("vocab_size", "11", "field vocab_size = '11' is invalid"),
    ("seq_len", 0, "field seq_len = 0 is invalid"),
    ("pad_id", True, "field pad_id = True is invalid"),
    ("mean_puzzle_examples", -1, "field mean_puzzle_examples = -1 is invalid"),
    ("sets", [], "field sets = \\[\\] is invalid"),
    ("ignore_label_id", 1.5, "field ignore_label_id = 1.5 is invalid"),
    ("total_groups", 5, "field total_groups = 5 but the sets hold 3 groups"),
    ("seq_len", 6, "sequence length 5 differs from dataset.json seq_len 6"),
    ("vocab_size", 3, "inputs hold token ids outside \\[0, 3\\)"),
    ("num_puzzle_identifiers", 3, "puzzle_identifiers outside \\[0, 3\\)"),
])
def test_bad_dataset_json_field_is_named(tmp_path, field, value, message):
    meta, puzzle_set = _example()
    write_split(str(tmp_path), meta, {"all": puzzle_set})
    raw = json.loads((tmp_path / "dataset.json").read_text())
    raw[field] = value
    (tmp_path / "dataset.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as info:
        read_split(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_missing_field_missing_file_and_bad_json(tmp_path):
    meta, puzzle_set = _example()
    write_split(str(tmp_path), meta, {"all": puzzle_set})
    raw = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "seq_len"}))
    with pytest.raises(ValueError, match="dataset.json: missing field\\(s\\) seq_len"):
        read_split(str(tmp_path))
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json:1: not valid JSON"):
        read_split(str(tmp_path))
    (tmp_path / "dataset.json").write_text(json.dumps(raw))
    os.remove(tmp_path / "all__labels.npy")
    with pytest.raises(ValueError, match="all__labels.npy: missing"):
        read_split(str(tmp_path))
    with pytest.raises(ValueError, match="no such file"):
        read_split(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("mutate, message", [
    (lambda s: setattr(s, "labels", s.labels[:, :4]), "labels shape"),
    (lambda s: setattr(s, "inputs", s.inputs.astype(np.float32)), "inputs must hold integers"),
    (lambda s: setattr(s, "puzzle_indices", s.puzzle_indices[:-1]), "puzzle_indices must have shape"),
    (lambda s: setattr(s, "puzzle_indices", s.puzzle_indices[::-1].copy()), "puzzle_indices must rise"),
    (lambda s: setattr(s, "group_indices", np.array([0, 2, 2, 6], dtype=np.int32)), "group_indices must rise strictly"),
    (lambda s: setattr(s, "group_indices", np.array([0, 2, 5], dtype=np.int32)), "group_indices must rise strictly"),
    (lambda s: setattr(s, "puzzle_identifiers", s.puzzle_identifiers[:, None]), "puzzle_identifiers must be 1-D"),
])
def test_puzzle_set_validation(mutate, message):
    meta, puzzle_set = _example()
    mutate(puzzle_set)
    with pytest.raises(ValueError, match=f"train/all: {message}"):
        puzzle_set.validate("train/all", meta)


def _built(tmp, name="first"):
    """A folder as a builder leaves it: train/dataset.json and the build stamp."""
    os.makedirs(os.path.join(tmp, "train"), exist_ok=True)
    open(os.path.join(tmp, "train", "dataset.json"), "w").write("{}")
    open(os.path.join(tmp, "build.json"), "w").write(json.dumps({"name": name}))


def test_atomic_output_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "ds"
    with atomic_output_dir(str(out)) as tmp:
        _built(tmp, "first")
    assert json.loads((out / "build.json").read_text()) == {"name": "first"}
    with pytest.raises(RuntimeError):
        with atomic_output_dir(str(out), overwrite=True) as tmp:
            _built(tmp, "half")
            raise RuntimeError("build failed")
    assert json.loads((out / "build.json").read_text()) == {"name": "first"}  # the old dataset survives a failed rebuild
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # and no temporary folder is left behind
    with atomic_output_dir(str(out), overwrite=True) as tmp:
        _built(tmp, "second")
        open(os.path.join(tmp, "identifiers.json"), "w").write("[]")
    assert sorted(os.listdir(out)) == ["build.json", "identifiers.json", "train"]
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_output_dir_replaces_only_a_dataset_this_tool_wrote(tmp_path, monkeypatch):
    def refused(out, match, **kw):
        with pytest.raises(ValueError, match=match):
            with atomic_output_dir(str(out), **kw) as tmp:
                _built(tmp, "new")

    mine = tmp_path / "mine"
    (mine / "keep").parent.mkdir()
    (mine / "keep").write_text("x")
    refused(mine, "not a dataset this tool wrote .it holds keep.", overwrite=True)
    assert (mine / "keep").read_text() == "x" and sorted(os.listdir(tmp_path)) == ["mine"]
    stamped = tmp_path / "stamped"  # a build stamp is not enough: train/dataset.json too
    stamped.mkdir()
    (stamped / "build.json").write_text("{}")
    refused(stamped, "no train/dataset.json with build.json or recipe.json", overwrite=True)
    built = tmp_path / "built"
    _built(str(built), "old")
    refused(built, "pass --overwrite to replace it")
    (built / "notes.txt").write_text("mine")  # something of the user's inside a built dataset: never replaced
    refused(built, "it holds notes.txt", overwrite=True)
    os.remove(built / "notes.txt")
    with atomic_output_dir(str(built), overwrite=True) as tmp:
        _built(tmp, "new")
    assert json.loads((built / "build.json").read_text()) == {"name": "new"}
    (tmp_path / "file").write_text("x")
    refused(tmp_path / "file", "exists and is not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_output_dir(str(empty)) as tmp:
        _built(tmp)
    # a folder holding an input, the current folder and a folder above it: refused even when empty or built here
    refused(built, "it holds the input .*train.csv", overwrite=True, inputs=[str(built / "train.csv")])
    refused(built, "it holds the input", overwrite=True, inputs=[str(built / "train")])
    monkeypatch.chdir(built)
    refused(".", "the current folder or holds it", overwrite=True)
    refused(tmp_path, "the current folder or holds it", overwrite=True)
    monkeypatch.chdir(empty / "train")
    refused("..", "the current folder or holds it", overwrite=True)
    assert json.loads((built / "build.json").read_text()) == {"name": "new"}


def test_output_dir_is_made_with_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output_dir(str(tmp_path / "ds")) as tmp:
            _built(tmp)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "ds").st_mode) == 0o755  # not mkdtemp's 0700


def test_rows_in():
    pool = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    assert rows_in(np.array([[4, 5, 6], [1, 2, 4], [1, 2, 3]]), pool).tolist() == [True, False, True]
    assert rows_in(np.zeros((0, 3), dtype=np.uint8), pool).tolist() == []


def test_manifest_detects_any_change(tmp_path):
    meta, puzzle_set = _example()
    write_split(str(tmp_path / "train"), meta, {"all": puzzle_set})
    first = dataset_manifest(str(tmp_path))
    assert "train/dataset.json" in first and all(len(v["sha256"]) == 64 for v in first.values())
    assert dataset_manifest(str(tmp_path)) == first
    puzzle_set.inputs[0, 0] = (puzzle_set.inputs[0, 0] + 1) % meta.vocab_size
    write_split(str(tmp_path / "train"), meta, {"all": puzzle_set})
    second = dataset_manifest(str(tmp_path))
    assert second["train/all__inputs.npy"] != first["train/all__inputs.npy"]
    assert second["train/all__labels.npy"] == first["train/all__labels.npy"]


def test_load_data_reads_both_splits_and_names_what_is_missing(tmp_path):
    meta, puzzle_set = _example()
    for split in ("train", "test"):
        write_split(str(tmp_path / "ds" / split), meta, {"all": puzzle_set})
    config = TRMConfig.preset("sudoku4-tiny").override(["data.recipe=", f"data.path={tmp_path / 'ds'}"])
    data = load_data(config)
    assert data.root == str(tmp_path / "ds") and data.train_meta.seq_len == meta.seq_len
    assert np.array_equal(data.test_set.inputs, puzzle_set.inputs)
    with pytest.raises(ValueError, match="no built dataset there"):
        load_data(config.override([f"data.path={tmp_path / 'nowhere'}"]))
    with pytest.raises(ValueError, match="nothing to train on"):
        load_data(config.override(["data.path="]))


def test_device_batch_marks_the_datasets_ignored_label():
    batch = {"inputs": np.array([[1, 2, 3]], dtype=np.uint8), "labels": np.array([[0, 4, 0]], dtype=np.int32),
             "puzzle_identifiers": np.array([5], dtype=np.int32)}
    tensors = to_device_batch(batch, 0, "cpu")
    assert tensors["labels"].tolist() == [[IGNORE_LABEL, 4, IGNORE_LABEL]]
    assert tensors["inputs"].dtype == torch.int32 and tensors["labels"].dtype == tensors["puzzle_identifiers"].dtype == torch.int64
    assert to_device_batch(batch, None, "cpu")["labels"].tolist() == [[0, 4, 0]]  # no ignore id: every label counts
