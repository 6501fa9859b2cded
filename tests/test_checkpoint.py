"""Checkpoints: bitwise round trip loadable with weights_only, RNG capture, atomic writes (a failure mid-save keeps
the previous checkpoint usable), keep-last pruning, corrupted and truncated files refused with their names (warnings
in one line), architecture mismatches named, state files without their entries named, a checkpoint of another run
refused."""
import json
import os
import random

import numpy as np
import pytest
import torch

import trm_fast.checkpoint as ckpt_mod
from trm_fast.config import TRMConfig
from trm_fast.model import build_model
from trm_fast.checkpoint import (capture_rng_state, check_compatible, check_run_config, find_latest_checkpoint,
                                 list_checkpoints, load_checkpoint, load_trained_model, restore_rng_state,
                                 save_checkpoint)
from trm_fast.train.ema import EMA
from trm_fast.train.optim import AdamATan2


def tiny_model(**overrides):
    config = TRMConfig.preset("sudoku4-tiny").override([f"model.{k}={v}" for k, v in overrides.items()])
    config.model.num_puzzle_identifiers = 7
    model = build_model(config.model)
    with torch.no_grad():
        model.puzzle_emb.weight.normal_()
    return model


def training_state(model, step=3):
    opt = AdamATan2([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return {
        "step": step,
        "config": {"name": "sudoku4-tiny", "train": {"lr": 1e-3}},
        "dense_optimizer": opt.state_dict(),
        "supervision": {"carry": [torch.randn(4, 18, 32).to(torch.bfloat16)] * 2, "steps": torch.arange(4, dtype=torch.int32),
                        "halted": torch.tensor([True, False, True, False])},
        "rng": capture_rng_state(),
        "sampler": {"epoch": 2, "batches_drawn": 5, "seed": 0},
        "dataset_manifest": {"train/all__inputs.npy": {"bytes": 123, "sha256": "ab" * 32}},
    }


def save(run_dir, step, model, keep_last=3, ema=None):
    return save_checkpoint(str(run_dir), step, model_state=model.state_dict(),
                           ema_state=ema.state_dict() if ema else None, train_state=training_state(model, step),
                           keep_last=keep_last)


def assert_equal_nested(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_nested(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_round_trip_is_bitwise_and_loads_with_weights_only(tmp_path):
    model = tiny_model()
    ema = EMA(model, 0.9)
    state = training_state(model)
    path = save_checkpoint(str(tmp_path), 3, model_state=model.state_dict(), ema_state=ema.state_dict(),
                           train_state=state, keep_last=2)
    assert path == str(tmp_path / "checkpoints" / "step_00000003")
    assert sorted(os.listdir(path)) == ["ema.safetensors", "meta.json", "model.safetensors", "state.pt"]
    loaded = load_checkpoint(path)
    # every model tensor, buffers included: the puzzle table and the bf16 initial states
    assert loaded["model"].keys() == model.state_dict().keys()
    assert {"puzzle_emb.weight", "y_init", "z_init"} <= loaded["model"].keys()
    assert loaded["model"]["y_init"].dtype == torch.bfloat16
    assert_equal_nested(model.state_dict(), loaded["model"], "model")
    assert_equal_nested(ema.state_dict(), loaded["ema"], "ema")
    assert_equal_nested(state, loaded["state"])
    # the state file itself is weights_only-loadable (no pickled classes, numpy arrays or tuples of objects)
    torch.load(os.path.join(path, "state.pt"), weights_only=True)
    meta = loaded["meta"]
    assert meta["step"] == 3 and meta["config_name"] == "sudoku4-tiny"
    assert ["lm_head", [6, 32], "float32"] in meta["architecture"]
    assert set(meta["files"]) == {"model.safetensors", "ema.safetensors", "state.pt"}
    with open(tmp_path / "checkpoints" / "latest") as f:
        assert f.read().strip() == "step_00000003"
    fresh = tiny_model()
    check_compatible(meta, fresh)
    fresh.load_state_dict(loaded["model"])
    assert_equal_nested(model.state_dict(), fresh.state_dict(), "reloaded")


def test_shared_storage_and_views_are_saved(tmp_path):
    base = torch.randn(4, 6)
    tensors = {"a": base, "a_tied": base, "a_view": base[:, 1:3], "t": base.t()}
    path = save_checkpoint(str(tmp_path), 1, model_state=tensors, ema_state=None, train_state={"step": 1}, keep_last=1)
    loaded = load_checkpoint(path)["model"]
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v), k
    assert load_checkpoint(path)["ema"] is None


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(11), np.random.seed(12), random.seed(13)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    rng = capture_rng_state()
    want = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.standard_normal())
    path = save_checkpoint(str(tmp_path), 1, model_state={"w": torch.zeros(1)}, ema_state=None,
                           train_state={"rng": rng}, keep_last=1)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng_state(load_checkpoint(path)["state"]["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.standard_normal())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2] and want[3] == got[3]


def test_failure_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny_model()
    first = save(tmp_path, 10, model)

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)  # dies after model.safetensors is written
    with pytest.raises(OSError, match="simulated"):
        save(tmp_path, 20, model)
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["latest", "step_00000010"]  # no partial folder, no temporary left
    assert find_latest_checkpoint(str(tmp_path)) == first
    assert load_checkpoint(first)["state"]["step"] == 10
    # a save that dies while re-writing the same step leaves the old folder in place too
    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with pytest.raises(OSError):
        save(tmp_path, 10, model)
    monkeypatch.undo()
    assert load_checkpoint(first)["state"]["step"] == 10


def test_keep_last_prunes_oldest_and_resave_replaces(tmp_path):
    model = tiny_model()
    for step in (1, 2, 3, 4, 5):
        save(tmp_path, step, model, keep_last=2)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step_00000004", "step_00000005"]
    with open(tmp_path / "checkpoints" / "latest") as f:
        assert f.read().strip() == "step_00000005"
    with torch.no_grad():
        model.lm_head.add_(1.0)
    path = save(tmp_path, 5, model, keep_last=2)  # the same step again replaces it
    assert torch.equal(load_checkpoint(path)["model"]["lm_head"], model.lm_head.detach())


def test_saving_an_earlier_step_sets_later_checkpoints_aside(tmp_path, capsys):
    model = tiny_model()
    for step in (2, 4, 6):
        save(tmp_path, step, model, keep_last=5)
    save(tmp_path, 3, model, keep_last=5)  # e.g. resumed explicitly from step 2
    warned = capsys.readouterr().err.splitlines()
    assert len(warned) == 2 and all(line.startswith("warning: checkpoint ") and "another history" in line
                                    for line in warned)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["step_00000002", "step_00000003"]
    assert find_latest_checkpoint(str(tmp_path)).endswith("step_00000003")
    assert sum(n.startswith("abandoned-step_") for n in os.listdir(tmp_path / "checkpoints")) == 2


def corrupt(path, offset=200):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_corrupted_truncated_and_incomplete_checkpoints_are_refused(tmp_path, capsys):
    model = tiny_model()
    good = save(tmp_path, 1, model)
    bad = save(tmp_path, 2, model, ema=EMA(model, 0.9))
    corrupt(os.path.join(bad, "model.safetensors"))
    with pytest.raises(ValueError, match=r"step_00000002/model\.safetensors: corrupted"):
        load_checkpoint(bad)
    capsys.readouterr()
    assert find_latest_checkpoint(str(tmp_path)) == good
    # one line on stderr naming the file and what is wrong (warnings.warn would add its source line)
    assert capsys.readouterr().err == (f"warning: skipping unusable checkpoint: {bad}/model.safetensors: corrupted "
                                       "(sha256 differs from the one meta.json records)\n")
    # truncated; a checkpoint with a wrong-sized file does not count towards keep_last: the good one survives
    with open(os.path.join(bad, "model.safetensors"), "r+b") as f:
        f.truncate(100)
    newer = save(tmp_path, 3, model, keep_last=2)
    assert os.path.isdir(good)
    with open(os.path.join(newer, "state.pt"), "r+b") as f:
        f.truncate(40)
    with pytest.raises(ValueError, match=r"step_00000003/state\.pt: truncated"):
        load_checkpoint(newer)
    # a file missing, and an unreadable meta.json
    newest = save(tmp_path, 4, model, keep_last=5, ema=EMA(model, 0.9))
    os.remove(os.path.join(newest, "ema.safetensors"))
    with pytest.raises(ValueError, match=r"ema\.safetensors: missing"):
        load_checkpoint(newest)
    with open(os.path.join(good, "meta.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match=r"meta\.json: corrupted"):
        load_checkpoint(good)
    assert find_latest_checkpoint(str(tmp_path)) is None
    assert len(capsys.readouterr().err.splitlines()) == len(list_checkpoints(str(tmp_path))) == 2  # one line each
    with pytest.raises(ValueError, match="no such checkpoint"):
        load_checkpoint(str(tmp_path / "checkpoints" / "step_00000099"))


class NotATensor:
    pass


def test_state_file_with_pickled_objects_is_refused(tmp_path):
    # a state.pt that needs arbitrary unpickling (an instance of some class) is refused, even with matching hashes
    path = save_checkpoint(str(tmp_path), 1, model_state={"w": torch.zeros(1)}, ema_state=None,
                           train_state={"bad": NotATensor()}, keep_last=1)
    with pytest.raises(ValueError, match=r"state\.pt: unreadable with torch\.load\(weights_only=True\) \(Unsupported "
                                         r"global: .*NotATensor") as refused:
        load_checkpoint(path)
    assert "\n" not in str(refused.value)  # torch's advice on weights_only spans several lines


def test_state_file_without_a_config_is_named(tmp_path):
    """A state.pt whose hashes match but which is not a training state: one line naming the file and the entry."""
    path = save(tmp_path, 1, tiny_model())
    save_checkpoint(str(tmp_path), 2, model_state=tiny_model().state_dict(), ema_state=None, train_state={},
                    keep_last=5)
    with pytest.raises(ValueError, match=r"step_00000002/state\.pt: no 'config' entry, which loading the model needs"):
        load_trained_model(str(tmp_path))
    save_checkpoint(str(tmp_path), 3, model_state=tiny_model().state_dict(), ema_state=None,
                    train_state=torch.zeros(2), keep_last=5)
    with pytest.raises(ValueError, match=r"step_00000003/state\.pt: holds a Tensor, not a trm_fast training state"):
        load_checkpoint(os.path.join(tmp_path, "checkpoints", "step_00000003"))
    assert os.path.isdir(path)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    """Inside <run>/checkpoints a checkpoint must be the run's model: its name and model fields equal config.json's,
    except settings of how the same weights run (backend, dtype, recompute, exploration)."""
    config = TRMConfig.preset("sudoku4-tiny").to_dict()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(config))
    ckpt = str(tmp_path / "checkpoints" / "step_00000001")
    check_run_config(ckpt, config)
    same_model = json.loads(json.dumps(config))
    same_model["model"].update(backend="torch", recompute=2, forward_dtype="float32", halt_exploration_prob=0.5)
    same_model["train"]["max_steps"] = 99
    check_run_config(ckpt, same_model)
    other = json.loads(json.dumps(config))
    other["name"], other["model"]["n"] = "maze", 5
    with pytest.raises(ValueError, match=r"step_00000001 is not the model of the run .*config\.json describes: name is "
                                         r"'maze' in the checkpoint, 'sudoku4-tiny' in config\.json; model\.n is 5"):
        check_run_config(ckpt, other)
    check_run_config(str(tmp_path / "elsewhere" / "step_00000001"), other)  # not in a run folder: nothing to match


def test_architecture_mismatch_names_the_tensor(tmp_path):
    model = tiny_model()
    path = save(tmp_path, 1, model)
    meta = load_checkpoint(path)["meta"]
    with pytest.raises(ValueError, match=r"architecture mismatch: tensor 'embed_tokens' has shape \[6, 32\]"):
        check_compatible(meta, tiny_model(hidden_size=48, puzzle_emb_dim=48))
    with pytest.raises(ValueError, match="net.blocks.2"):
        check_compatible(meta, tiny_model(num_blocks=3))
    meta_path = os.path.join(path, "meta.json")
    with open(meta_path) as f:
        assert json.load(f)["files"]["model.safetensors"]["bytes"] == os.path.getsize(os.path.join(path, "model.safetensors"))
