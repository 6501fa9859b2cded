"""The training engine end to end: resume bitwise, gradient accumulation, the per-batch scheme, checkpoints refused
and skipped. Optimisers, schedule and EMA on their own: tests/test_optim.py; checkpoint files: tests/test_checkpoint.py."""
import os

import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.checkpoint import find_latest_checkpoint, load_checkpoint
from trm_fast.train.trainer import Trainer, train


def tiny(tmp_path, *extra):
    return TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path}", *extra])


def test_resume_is_bitwise(tmp_path):
    full = train(tiny(tmp_path / "full", "train.max_steps=12", "train.checkpoint_interval=6"), progress=False, log=lambda *a: None)
    first = tiny(tmp_path / "cut", "train.max_steps=6")
    train(first, progress=False, log=lambda *a: None)
    resumed = tiny(tmp_path / "cut", "train.max_steps=12", "train.checkpoint_interval=6")
    train(resumed, resume="auto", progress=False, log=lambda *a: None)
    a = load_checkpoint(full["checkpoint"])
    b = load_checkpoint(find_latest_checkpoint(str(tmp_path / "cut")))
    assert a["state"]["step"] == b["state"]["step"] == 12
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    for key in ("carry", "steps", "halted", "inputs"):
        x, y = a["state"]["supervision"][key], b["state"]["supervision"][key]
        assert all(torch.equal(u, v) for u, v in zip(x, y)) if key == "carry" else torch.equal(x, y)


def test_gradient_accumulation_matches_one_batch(tmp_path):
    results = []
    for accum in (1, 4):
        trainer = Trainer(tiny(tmp_path / f"a{accum}", f"train.grad_accum={accum}", "train.max_steps=3"), progress=False,
                          log=lambda *a: None)
        for _ in range(3):
            from trm_fast.data.format import to_device_batch

            batch = to_device_batch(trainer.sampler.next_batch(), trainer.data.train_meta.ignore_label_id, trainer.device)
            trainer._set_lr()
            trainer.carry_step(batch)
            trainer.step += 1
        results.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=2e-6, rtol=1e-5, msg=name)


def test_per_batch_supervision_runs(tmp_path):
    summary = train(tiny(tmp_path, "train.supervision=per_batch", "train.max_steps=6"), progress=False, log=lambda *a: None)
    assert summary["steps"] >= 6 and 0 <= summary["eval"]["exact_accuracy"] <= 1


def test_corrupted_checkpoint_is_refused_and_previous_used(tmp_path):
    train(tiny(tmp_path, "train.max_steps=4", "train.checkpoint_interval=2"), progress=False, log=lambda *a: None)
    latest = find_latest_checkpoint(str(tmp_path))
    assert latest.endswith("step_00000004")
    with open(os.path.join(latest, "model.safetensors"), "r+b") as f:
        f.seek(100)
        f.write(b"garbage!")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(latest)
    with pytest.warns(UserWarning, match="skipping unusable checkpoint"):
        assert find_latest_checkpoint(str(tmp_path)).endswith("step_00000002")
    state = os.path.join(find_latest_checkpoint(str(tmp_path)), "state.pt")
    with open(state, "r+b") as f:
        f.truncate(50)
    with pytest.raises(ValueError, match="state.pt"):
        load_checkpoint(os.path.dirname(state))


def test_architecture_mismatch_is_named(tmp_path):
    from trm_fast.checkpoint import check_compatible, load_trained_model
    from trm_fast.model import build_model

    summary = train(tiny(tmp_path, "train.max_steps=2"), progress=False, log=lambda *a: None)
    other = build_model(TRMConfig.preset("sudoku4-tiny").override(["model.hidden_size=48", "model.puzzle_emb_dim=48"]).model)
    with pytest.raises(ValueError, match="shape"):
        check_compatible(load_checkpoint(summary["checkpoint"])["meta"], other)
    model, config, _ = load_trained_model(str(tmp_path))
    assert config.model.hidden_size == 32
