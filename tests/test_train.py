"""The training engine end to end: resume bitwise, gradient accumulation, the per-batch scheme, checkpoints refused
and skipped, starting from another checkpoint's weights (--init-from), the global RNGs seeded. Optimisers, schedule
and EMA on their own: tests/test_optim.py; checkpoint files: tests/test_checkpoint.py."""
import os
import random

import numpy as np
import pytest
import torch

from trm_fast.cli import main
from trm_fast.config import TRMConfig
from trm_fast.checkpoint import find_latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from trm_fast.train.trainer import Trainer, train


def quiet(*args):
    pass


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


def test_corrupted_checkpoint_is_refused_and_previous_used(tmp_path, capsys):
    train(tiny(tmp_path, "train.max_steps=4", "train.checkpoint_interval=2"), progress=False, log=lambda *a: None)
    latest = find_latest_checkpoint(str(tmp_path))
    assert latest.endswith("step_00000004")
    with open(os.path.join(latest, "model.safetensors"), "r+b") as f:
        f.seek(100)
        f.write(b"garbage!")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(latest)
    assert find_latest_checkpoint(str(tmp_path)).endswith("step_00000002")
    assert "skipping unusable checkpoint" in capsys.readouterr().err
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


def test_resume_auto_refuses_when_every_checkpoint_is_unusable(tmp_path, capsys):
    """Retraining from step 0 over a run whose checkpoints are all damaged needs --allow-fresh; the refusal names
    each checkpoint and what is wrong with it, in one line, and leaves the folder as it was."""
    train(tiny(tmp_path, "train.max_steps=4", "train.checkpoint_interval=2"), progress=False, log=quiet)
    first, last = list_checkpoints(str(tmp_path))
    with open(os.path.join(last, "model.safetensors"), "r+b") as f:
        f.truncate(100)
    with open(os.path.join(first, "state.pt"), "r+b") as f:
        f.seek(60)
        byte = f.read(1)
        f.seek(60)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    argv = ["train", "--preset", "sudoku4-tiny", "--out", str(tmp_path), "--set", "train.max_steps=4",
            "--set", "train.checkpoint_interval=2", "--no-progress", "--resume", "auto"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("trm-fast train: error: --resume auto: none of the 2 checkpoints")
    assert "step_00000004/model.safetensors: truncated" in err and "step_00000002/state.pt: corrupted" in err
    assert "--allow-fresh" in err
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert main(argv + ["--allow-fresh"]) == 0
    assert load_checkpoint(find_latest_checkpoint(str(tmp_path)))["state"]["step"] == 4
    assert main(["train", "--preset", "sudoku4-tiny", "--out", str(tmp_path / "x"), "--allow-fresh"]) == 2
    assert "--allow-fresh only goes with --resume auto" in capsys.readouterr().err


def test_resume_names_what_a_state_file_lacks(tmp_path):
    """A state.pt whose hashes match but whose content is no training state: one line naming the file and the
    missing entries, not a KeyError."""
    trainer = Trainer(tiny(tmp_path), progress=False, log=quiet)
    save_checkpoint(str(tmp_path), 3, model_state=trainer.model.state_dict(), ema_state=None, train_state={},
                    keep_last=1)
    with pytest.raises(ValueError, match=r"step_00000003/state\.pt: no 'step', 'dense_optimizer', .*'rng' entries, "
                                         r"which resuming needs"):
        trainer.resume("auto")
    state = trainer.train_state()
    state["sampler"] = {"seed": state["sampler"]["seed"]}  # the right entry, the wrong content
    save_checkpoint(str(tmp_path), 4, model_state=trainer.model.state_dict(), ema_state=None, train_state=state,
                    keep_last=1)
    with pytest.raises(ValueError, match=r"step_00000004/state\.pt: its 'sampler' entry does not fit this run"):
        trainer.resume(str(tmp_path))  # a run folder: its newest checkpoint


def test_runs_of_one_seed_save_the_same_global_rng_states(tmp_path):
    """numpy's and python's global generators are seeded from train.seed (torch's alone was): two runs of one seed
    save the same RNG states whatever their processes drew before."""
    saved = []
    for disturbance in (1, 2):
        np.random.seed(disturbance)
        random.seed(disturbance)
        trainer = Trainer(tiny(tmp_path / str(disturbance)), progress=False, log=quiet)
        saved.append(trainer.train_state()["rng"])
    a, b = saved
    assert torch.equal(a["torch"], b["torch"]) and a["python"] == b["python"]
    assert torch.equal(a["numpy"]["keys"], b["numpy"]["keys"]) and a["numpy"]["pos"] == b["numpy"]["pos"]
    seed = tiny(tmp_path).train.seed
    np.random.seed(seed)
    random.seed(seed)
    assert np.array_equal(a["numpy"]["keys"].numpy(), np.random.get_state()[1].astype(np.int64))
    assert a["python"]["state"] == list(random.getstate()[1])


def test_init_from_loads_the_weights_and_starts_the_rest_fresh(tmp_path):
    """--init-from a run folder: the weights, the EMA and the puzzle table of its newest checkpoint; fresh optimiser
    states, schedule, sampler and carry; this run's checkpoints name where it started."""
    source = train(tiny(tmp_path / "src", "train.max_steps=3"), progress=False, log=quiet)
    ckpt = load_checkpoint(source["checkpoint"])
    trainer = Trainer(tiny(tmp_path / "ft", "train.max_steps=2"), progress=False, log=quiet)
    fresh_sampler = trainer.sampler.state_dict()
    trainer.init_from(str(tmp_path / "src"))
    assert trainer.model.puzzle_emb.weight.abs().sum() > 0  # a trained table came along
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, ckpt["model"][name]), name
    for name, value in trainer.ema.state_dict().items():
        assert torch.equal(value, ckpt["ema"][name]), name
    assert trainer.step == 0 and not trainer.dense_opt.state and trainer.sampler.state_dict() == fresh_sampler
    assert bool(trainer.state.halted.all()) and int(trainer.state.steps.sum()) == 0
    summary = trainer.fit()
    assert summary["steps"] == 2
    assert load_checkpoint(summary["checkpoint"])["state"]["initialised_from"] == source["checkpoint"]
    # another architecture is named by its first differing tensor, and the checkpoint's preset
    wide = Trainer(tiny(tmp_path / "wide", "model.hidden_size=48", "model.puzzle_emb_dim=48"), progress=False,
                   log=quiet)
    with pytest.raises(ValueError, match=r"--init-from .*step_00000003: architecture mismatch: tensor 'embed_tokens' "
                                         r"has shape \[6, 32\] float32 in the checkpoint, \[6, 48\]"
                                         r".*preset: sudoku4-tiny"):
        wide.init_from(source["checkpoint"])


def test_init_from_a_larger_puzzle_table_is_refused_or_reinitialised(tmp_path, capsys):
    """Fine-tuning on another dataset: a checkpoint whose puzzle table has more rows than this dataset has puzzle
    identifiers is refused, or, with --reinit-puzzle-emb, loaded without its table (zeros, the initialisation)."""
    trainer = Trainer(tiny(tmp_path / "ft"), progress=False, log=quiet)
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in trainer.model.state_dict().items()}
    rows = weights["puzzle_emb.weight"].shape[0]
    weights["puzzle_emb.weight"] = torch.randn(rows + 5, weights["puzzle_emb.weight"].shape[1])
    other = save_checkpoint(str(tmp_path / "other"), 9, model_state=weights, ema_state=None,
                            train_state={"step": 9, "config": trainer.config.to_dict()}, keep_last=1)
    with pytest.raises(ValueError, match=rf"its puzzle-embedding table has {rows + 5} rows, this dataset has {rows} "
                                         r"puzzle identifiers: add --reinit-puzzle-emb"):
        trainer.init_from(other)
    trainer.init_from(other, reinit_puzzle_emb=True)
    loaded = trainer.model.state_dict()
    assert torch.equal(loaded["puzzle_emb.weight"], torch.zeros(rows, weights["puzzle_emb.weight"].shape[1]))
    for name in weights:
        if name != "puzzle_emb.weight":
            assert torch.equal(loaded[name], weights[name]), name
    for name, value in trainer.ema.state_dict().items():  # no EMA saved: it starts from the weights
        assert torch.equal(value, weights[name].float()), name
    argv = ["train", "--preset", "sudoku4-tiny", "--out", str(tmp_path / "cli"), "--init-from", str(tmp_path / "other"),
            "--set", "train.max_steps=1", "--no-progress"]
    assert main(argv) == 2
    assert "--reinit-puzzle-emb" in capsys.readouterr().err
    assert main(argv + ["--reinit-puzzle-emb"]) == 0
    assert "the puzzle-embedding table starts from zeros" in capsys.readouterr().out


def test_the_trainer_leaves_range_checks_to_the_data(tmp_path):
    """Its datasets' ids were checked at load against dataset.json, which the model was fitted to: the model's
    per-step check (device syncs on a GPU) is off, unless a split's ranges exceed the model's."""
    from dataclasses import replace

    from trm_fast.train.trainer import ids_in_model_ranges

    trainer = Trainer(tiny(tmp_path), progress=False, log=quiet)
    assert trainer.model.check_input_ranges is False
    model_config, meta = trainer.config.model, trainer.data.test_meta
    assert ids_in_model_ranges((trainer.data.train_meta, meta), model_config)
    assert not ids_in_model_ranges((replace(meta, vocab_size=model_config.vocab_size + 1),), model_config)
    assert not ids_in_model_ranges((replace(meta, num_puzzle_identifiers=model_config.num_puzzle_identifiers + 1),),
                                   model_config)
