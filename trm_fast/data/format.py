"""The on-disk dataset format the published reference tooling reads and writes (TRM_SPEC section 5).

    <root>/<split>/dataset.json                 metadata (DatasetMetadata)
    <root>/<split>/<set>__inputs.npy            (N, seq_len) token ids
    <root>/<split>/<set>__labels.npy            (N, seq_len) token ids; ignore_label_id = unsupervised
    <root>/<split>/<set>__puzzle_identifiers.npy (P,) puzzle id of each puzzle
    <root>/<split>/<set>__puzzle_indices.npy    (P+1,) example offsets per puzzle
    <root>/<split>/<set>__group_indices.npy     (G+1,) puzzle offsets per group (a puzzle and its augmentations)

Builders write into a temporary folder and rename it when complete (`atomic_output_dir`), so a failed build
leaves nothing half-written; the folder they replace may only be a dataset this tool wrote, and that only when
asked (`check_output_dir`). Readers: `read_split` (one split), `load_data` (a run's dataset: both splits of
data.path or of an embedded recipe), `to_device_batch` (a sampled batch as tensors, unsupervised labels as
IGNORE_LABEL).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass, field

import numpy as np

from trm_fast.config import TRMConfig
from trm_fast.files import atomic_write_json, read_json

IGNORE_LABEL = -100  # the label of unsupervised tokens in device batches (the loss and the metrics skip them)
ARRAY_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
INDEX_FIELDS = ("puzzle_identifiers", "puzzle_indices", "group_indices")


@dataclass
class DatasetMetadata:
    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int = 0
    sets: list[str] = field(default_factory=lambda: ["all"])

    @property
    def examples_per_epoch(self) -> float:
        """Examples one epoch of the published sampler draws: one puzzle (with its examples) per group."""
        return self.total_groups * self.mean_puzzle_examples

    @classmethod
    def from_json(cls, data: dict, source: str) -> "DatasetMetadata":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("pad_id", "vocab_size", "seq_len", "num_puzzle_identifiers", "total_groups",
                               "mean_puzzle_examples", "sets") if n not in data]
        if missing:
            raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in names}  # extra fields are ignored, as the published loader does
        kwargs.setdefault("ignore_label_id", None)
        kwargs.setdefault("blank_identifier_id", 0)
        meta = cls(**kwargs)
        meta.validate(source)
        return meta

    def validate(self, source: str = "dataset.json") -> None:
        def need(ok: bool, name: str, what: str):
            if not ok:
                raise ValueError(f"{source}: field {name} = {getattr(self, name)!r} is invalid: {what}")

        def is_int(v) -> bool:  # bool is an int subclass; json true/false is not a count
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("pad_id", "blank_identifier_id", "vocab_size", "seq_len", "num_puzzle_identifiers", "total_groups",
                     "total_puzzles"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "must be a non-negative integer")
        need(self.vocab_size >= 2, "vocab_size", "must be at least 2")
        need(self.pad_id < self.vocab_size, "pad_id", f"must be below vocab_size {self.vocab_size}")
        need(self.seq_len >= 1, "seq_len", "must be at least 1")
        need(self.num_puzzle_identifiers >= 1, "num_puzzle_identifiers", "must be at least 1")
        need(self.blank_identifier_id < self.num_puzzle_identifiers, "blank_identifier_id",
             f"must be below num_puzzle_identifiers {self.num_puzzle_identifiers}")
        need(self.ignore_label_id is None or is_int(self.ignore_label_id), "ignore_label_id", "must be an integer or null")
        need(isinstance(self.mean_puzzle_examples, (int, float)) and not isinstance(self.mean_puzzle_examples, bool)
             and self.mean_puzzle_examples >= 0, "mean_puzzle_examples", "must be a non-negative number")
        need(isinstance(self.sets, list) and all(isinstance(s, str) and s for s in self.sets) and len(self.sets) > 0,
             "sets", "must be a non-empty list of set names")


@dataclass
class PuzzleSet:
    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray

    def validate(self, name: str, meta: DatasetMetadata | None = None) -> None:
        def fail(what: str):
            raise ValueError(f"{name}: {what}")

        for arr_name in INDEX_FIELDS:
            if getattr(self, arr_name).ndim != 1:
                fail(f"{arr_name} must be 1-D, got shape {getattr(self, arr_name).shape}")
        if self.inputs.ndim != 2:
            fail(f"inputs must be 2-D (examples, seq_len), got shape {self.inputs.shape}")
        if self.labels.shape != self.inputs.shape:
            fail(f"labels shape {self.labels.shape} differs from inputs shape {self.inputs.shape}")
        for arr_name in ARRAY_FIELDS:
            arr = getattr(self, arr_name)
            if not np.issubdtype(arr.dtype, np.integer):
                fail(f"{arr_name} must hold integers, got dtype {arr.dtype}")
        P = len(self.puzzle_identifiers)
        if self.puzzle_indices.shape != (P + 1,):
            fail(f"puzzle_indices must have shape ({P + 1},) for {P} puzzles, got {self.puzzle_indices.shape}")
        if self.puzzle_indices[0] != 0 or self.puzzle_indices[-1] != len(self.inputs) or np.any(np.diff(self.puzzle_indices) < 0):
            fail("puzzle_indices must rise from 0 to the number of examples")
        if len(self.group_indices) < 1 or self.group_indices[0] != 0 or self.group_indices[-1] != P or np.any(np.diff(self.group_indices) <= 0):
            fail("group_indices must rise strictly from 0 to the number of puzzles (every group holds a puzzle)")
        if meta is not None:
            if self.inputs.shape[1] != meta.seq_len:
                fail(f"sequence length {self.inputs.shape[1]} differs from dataset.json seq_len {meta.seq_len}")
            for arr_name in ("inputs", "labels"):
                arr = getattr(self, arr_name)
                if arr.size and (arr.min() < 0 or arr.max() >= meta.vocab_size):
                    fail(f"{arr_name} hold token ids outside [0, {meta.vocab_size}): min {arr.min()}, max {arr.max()}")
            if P and (self.puzzle_identifiers.min() < 0 or self.puzzle_identifiers.max() >= meta.num_puzzle_identifiers):
                fail(f"puzzle_identifiers outside [0, {meta.num_puzzle_identifiers})")

    @property
    def num_groups(self) -> int:
        return len(self.group_indices) - 1


def write_split(split_dir: str, metadata: DatasetMetadata, sets: dict[str, PuzzleSet]) -> None:
    """Writes one split (train or test) in the published layout."""
    metadata.validate(os.path.join(split_dir, "dataset.json"))
    os.makedirs(split_dir, exist_ok=True)
    for set_name, puzzle_set in sets.items():
        puzzle_set.validate(f"{split_dir}/{set_name}", metadata)
        for arr_name in ARRAY_FIELDS:
            arr = getattr(puzzle_set, arr_name)
            if arr_name in INDEX_FIELDS:  # the published loader's dtype for ids and offsets
                arr = np.asarray(arr, dtype=np.int32)
            np.save(os.path.join(split_dir, f"{set_name}__{arr_name}.npy"), arr)
    data = dataclasses.asdict(metadata)
    data["sets"] = list(sets)
    atomic_write_json(os.path.join(split_dir, "dataset.json"), data)


def read_metadata(split_dir: str) -> DatasetMetadata:
    """A split's dataset.json, validated; errors name the file."""
    meta_path = os.path.join(split_dir, "dataset.json")
    raw = read_json(meta_path, f"is {split_dir!r} a built dataset split?")
    if not isinstance(raw, dict):
        raise ValueError(f"{meta_path}: expected a JSON object")
    return DatasetMetadata.from_json(raw, meta_path)


def read_split(split_dir: str, mmap: bool = False) -> tuple[DatasetMetadata, dict[str, PuzzleSet]]:
    """Reads and validates one split; errors name the file that is wrong."""
    meta = read_metadata(split_dir)
    meta_path = os.path.join(split_dir, "dataset.json")
    sets = {}
    for set_name in meta.sets:
        arrays = {}
        for arr_name in ARRAY_FIELDS:
            path = os.path.join(split_dir, f"{set_name}__{arr_name}.npy")
            if not os.path.isfile(path):
                raise ValueError(f"{path}: missing (listed in {meta_path} set {set_name!r})")
            try:
                arrays[arr_name] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise ValueError(f"{path}: unreadable ({exc})") from None
        puzzle_set = PuzzleSet(**arrays)
        puzzle_set.validate(os.path.join(split_dir, set_name), meta)
        sets[set_name] = puzzle_set
    groups = sum(s.num_groups for s in sets.values())
    if groups != meta.total_groups:
        raise ValueError(f"{meta_path}: field total_groups = {meta.total_groups} but the sets hold {groups} groups")
    if not meta.total_puzzles:  # older files lack it (0 by default): the published loader derives it the same way
        meta.total_puzzles = sum(len(s.puzzle_identifiers) for s in sets.values())
    return meta, sets


@dataclass
class DataBundle:
    root: str
    train_meta: DatasetMetadata
    train_set: PuzzleSet
    test_meta: DatasetMetadata
    test_set: PuzzleSet


def load_data(config: TRMConfig, log=print) -> DataBundle:
    """The run's dataset: a built folder (data.path) or an embedded recipe built on first use (data.recipe)."""
    root = config.data.path
    if config.data.recipe:
        from trm_fast.data.recipes import ensure_recipe

        root = ensure_recipe(config.data.recipe, root or None, log=log)
    if not root:
        raise ValueError("config field data.path is empty and data.recipe names no embedded dataset: nothing to train on")
    if not os.path.isdir(os.path.join(root, "train")):
        raise ValueError(
            f"config field data.path = {root!r}: no built dataset there (expected {root}/train/dataset.json); "
            "build one with `trm-fast data build ...`"
        )
    train_meta, train_sets = read_split(os.path.join(root, "train"))
    test_meta, test_sets = read_split(os.path.join(root, "test"))
    return DataBundle(root, train_meta, train_sets["all"], test_meta, test_sets["all"])


def to_device_batch(batch: dict, ignore_label_id: int | None, device) -> dict:
    """Numpy batch -> tensors; labels equal to the dataset's ignore_label_id become IGNORE_LABEL."""
    import torch  # not at the top: building datasets needs no torch

    labels = torch.as_tensor(np.asarray(batch["labels"]), dtype=torch.int64)
    if ignore_label_id is not None:
        labels = torch.where(labels == ignore_label_id, torch.full_like(labels, IGNORE_LABEL), labels)
    return {
        "inputs": torch.as_tensor(np.asarray(batch["inputs"]), dtype=torch.int32).to(device, non_blocking=True),
        "labels": labels.to(device, non_blocking=True),
        "puzzle_identifiers": torch.as_tensor(np.asarray(batch["puzzle_identifiers"]), dtype=torch.int64).to(device, non_blocking=True),
    }


def rows_in(rows: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """(len(rows),) bool: whether each row of a 2-D array equals some row of `pool` (exact train/test overlap)."""
    dtype = np.result_type(rows, pool)
    as_void = lambda a: np.ascontiguousarray(a, dtype=dtype).view(np.dtype((np.void, dtype.itemsize * a.shape[1]))).ravel()
    if not len(rows) or not len(pool):
        return np.zeros(len(rows), dtype=bool)
    return np.isin(as_void(rows), as_void(pool))


# What a builder writes at the top of a dataset folder; build.json (every builder's summary) or recipe.json (an
# embedded recipe's stamp) beside train/dataset.json marks a dataset this tool wrote.
DATASET_ENTRIES = frozenset({"train", "test", "identifiers.json", "build.json", "recipe.json", "test_puzzles.json",
                             "provenance.json", "distributions.png"})
BUILD_STAMPS = ("build.json", "recipe.json")


def check_output_dir(out_dir: str, overwrite: bool = False, inputs=(), flag: str = "--out") -> None:
    """Refuses an output folder whose replacement would destroy what this tool did not write: the current folder
    (or one above it), a folder holding one of `inputs` (source files or folders), a non-empty folder that is not a
    dataset this tool wrote (train/dataset.json, a build stamp, nothing else at the top), and, without
    `overwrite`, any earlier dataset. A missing or empty folder is fine. Errors name the folder as `flag` gave it."""
    out = os.path.realpath(out_dir)
    cwd = os.path.realpath(os.getcwd())
    inside = lambda path, folder: path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
    if inside(cwd, out):
        raise ValueError(f"{flag} {out_dir}: that is the current folder or holds it, and a build replaces the "
                         "folder wholesale; give a new one")
    for path in inputs:
        if path and inside(os.path.realpath(path), out):
            raise ValueError(f"{flag} {out_dir}: it holds the input {path}, and a build replaces the folder "
                             "wholesale; give a new one")
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise ValueError(f"{flag} {out_dir}: exists and is not a folder")
    entries = os.listdir(out)
    if not entries:
        return
    foreign = sorted(set(entries) - DATASET_ENTRIES)
    ours = os.path.isfile(os.path.join(out, "train", "dataset.json")) and any(
        os.path.isfile(os.path.join(out, stamp)) for stamp in BUILD_STAMPS)
    if foreign or not ours:
        what = f"it holds {', '.join(foreign[:5])}" + (" ..." if len(foreign) > 5 else "") if foreign else \
            f"no train/dataset.json with {' or '.join(BUILD_STAMPS)} beside it"
        raise ValueError(f"{flag} {out_dir}: a folder that is not a dataset this tool wrote ({what}); nothing was "
                         "touched: give a new or empty folder")
    if not overwrite:
        raise ValueError(f"{flag} {out_dir}: holds a dataset built earlier; pass --overwrite to replace it")


def _make_sibling_dir(out_dir: str, suffix: str) -> str:
    """A new hidden folder beside out_dir, made with the user's umask (tempfile.mkdtemp would make it 0700)."""
    parent, base = os.path.split(out_dir)
    while True:
        path = os.path.join(parent, f".{base}.{suffix}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_output_dir(out_dir: str, overwrite: bool = False, inputs=()):
    """Yields a temporary sibling folder; on success it replaces `out_dir`, on failure it is removed. What may be
    replaced is `check_output_dir`'s to say (checked on entry, and again before the rename)."""
    check_output_dir(out_dir, overwrite, inputs)
    out_dir = os.path.realpath(out_dir)  # through a symbolic link: the folder it names is replaced, the link kept
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = _make_sibling_dir(out_dir, "tmp")
    try:
        yield tmp
        check_output_dir(out_dir, overwrite, inputs)  # something may have appeared there meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(out_dir):
        old = f"{tmp}-old"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def dataset_manifest(root: str) -> dict:
    """File names, sizes and sha256 of every file under a built dataset folder."""
    manifest = {}
    for dirpath, _, filenames in sorted(os.walk(root)):
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            manifest[os.path.relpath(path, root)] = {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}
    return manifest
