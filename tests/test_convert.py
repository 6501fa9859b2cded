"""Checkpoint interop with the published code: its key names and shapes, the torch.compile prefix, its puzzle and
initial-state buffers, its all_config.yaml; import/export round trips through the CLI; bad input named."""
import os

import pytest
import torch
import yaml

from trm_fast.cli import main
from trm_fast.config import TRMConfig
from trm_fast.tools.convert import (config_from_published, config_to_published, published_to_trm_fast,
                              trm_fast_to_published)
from trm_fast.model import build_model


def published_names_and_shapes(preset):
    """What the published TinyRecursiveReasoningModel_ACTV1 holds, written from its code's facts (CastedLinear weights
    are (out, in); the token-mixing SwiGLU works on seq_len + 16 positions) for the Sudoku presets, vocab 11."""
    D, L, P = 512, 81 + 16, 5
    inner = {"embed_tokens.embedding_weight": (11, D), "lm_head.weight": (11, D), "q_head.weight": (2, D),
             "q_head.bias": (2,), "puzzle_emb.weights": (P, D), "H_init": (D,), "L_init": (D,)}
    for i in range(2):
        if preset == "sudoku-mlp":
            inner[f"L_level.layers.{i}.mlp_t.gate_up_proj.weight"] = (2 * 512, L)  # I = 512 for L = 97
            inner[f"L_level.layers.{i}.mlp_t.down_proj.weight"] = (L, 512)
        else:
            inner[f"L_level.layers.{i}.self_attn.qkv_proj.weight"] = (3 * D, D)
            inner[f"L_level.layers.{i}.self_attn.o_proj.weight"] = (D, D)
        inner[f"L_level.layers.{i}.mlp.gate_up_proj.weight"] = (2 * 1536, D)
        inner[f"L_level.layers.{i}.mlp.down_proj.weight"] = (D, 1536)
    return {"_orig_mod.model.inner." + k: v for k, v in inner.items()}


@pytest.mark.parametrize("preset", ["sudoku-att", "sudoku-mlp"])
def test_export_layout_is_the_published_one_and_round_trips(preset):
    config = TRMConfig.preset(preset)
    config.model.num_puzzle_identifiers = 5
    model = build_model(config.model)
    with torch.no_grad():
        model.puzzle_emb.weight.normal_()
    state = model.state_dict()
    published = trm_fast_to_published(state)  # compiled prefix by default
    assert {k: tuple(v.shape) for k, v in published.items()} == published_names_and_shapes(preset)
    assert published["_orig_mod.model.inner.H_init"].dtype == torch.bfloat16
    back = published_to_trm_fast(published)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    plain = trm_fast_to_published(state, compiled=False)
    assert all(k.startswith("model.inner.") for k in plain)
    assert published_to_trm_fast(plain).keys() == state.keys()
    # the sparse embedding's per-batch buffers, if a state_dict carries them, are ignored
    published["_orig_mod.model.inner.puzzle_emb.local_weights"] = torch.zeros(3, 512)
    assert published_to_trm_fast(published).keys() == state.keys()


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="H_level.*no trm_fast counterpart"):
        published_to_trm_fast({"model.inner.H_level.layers.0.mlp.oops.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="embed_pos.*learned"):
        published_to_trm_fast({"_orig_mod.model.inner.embed_pos.embedding_weight": torch.zeros(1)})


@pytest.mark.parametrize("preset", ["sudoku-mlp", "sudoku-att", "maze", "arc1"])
def test_all_config_round_trip(preset):
    config = TRMConfig.preset(preset)
    dumped = yaml.safe_load(yaml.safe_dump(config_to_published(config)))
    back = config_from_published(dumped, TRMConfig())
    for field in ("T", "n", "num_blocks", "hidden_size", "num_heads", "expansion", "mixer", "pos_encoding",
                  "puzzle_emb_dim", "puzzle_emb_len", "halt_max_steps", "halt_exploration_prob", "act_continue"):
        assert getattr(back.model, field) == getattr(config.model, field), field
    for field in ("lr", "beta2", "weight_decay", "puzzle_emb_lr", "lr_warmup_steps", "ema_rate", "loss"):
        assert getattr(back.train, field) == getattr(config.train, field), field
    assert back.data.global_batch_size == config.data.global_batch_size
    with pytest.raises(ValueError, match="neither the published TRM .* nor HRM"):
        config_from_published({"arch": {"name": "transformer@Baseline"}}, TRMConfig())


def test_hrm_checkpoint_and_config_round_trip():
    """HRM of the same code base: H_level is the high-level network, L_level the low-level one; its all_config.yaml
    (H_layers/L_layers, no mlp_t, no puzzle_emb_len: one puzzle token from puzzle_emb_ndim) maps back to HRM."""
    config = TRMConfig.preset("hrm-sudoku").override(["model.num_puzzle_identifiers=3"])
    model = build_model(config.model)
    state = model.state_dict()
    published = trm_fast_to_published(state)
    levels = {k.split("inner.")[1].split(".layers")[0] for k in published if ".layers." in k}
    assert levels == {"H_level", "L_level"}
    assert sum(".self_attn.qkv_proj." in k for k in published) == 4 + 4
    # the high-level network's tensors land in H_level and come back to net_high
    assert torch.equal(published["_orig_mod.model.inner.H_level.layers.3.mlp.down_proj.weight"],
                       state["net_high.blocks.3.mlp.w_down"])
    back = published_to_trm_fast(published)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    dumped = yaml.safe_load(yaml.safe_dump(config_to_published(config)))
    assert dumped["arch"]["name"].startswith("recursive_reasoning.hrm@")
    del dumped["arch"]["puzzle_emb_len"], dumped["arch"]["mlp_t"]  # the published HRM config has neither
    again = config_from_published(dumped, TRMConfig())
    for field in ("arch", "T", "n", "hrm_high_blocks", "hrm_low_blocks", "mixer", "pos_encoding", "puzzle_emb_len",
                  "act_continue", "hidden_size", "num_heads"):
        assert getattr(again.model, field) == getattr(config.model, field), field
    rebuilt = build_model(again.model.__class__(**{**again.model.__dict__, "num_puzzle_identifiers": 3,
                                                   "seq_len": config.model.seq_len,
                                                   "vocab_size": config.model.vocab_size}))
    rebuilt.load_state_dict(back)  # same architecture: every tensor fits


def test_import_a_published_run_folder_without_a_preset(tmp_path):
    """A checkpoint as the published script leaves it: <checkpoint_path>/step_N plus all_config.yaml (Hydra dump
    with keys trm_fast does not use)."""
    from trm_fast.checkpoint import find_latest_checkpoint, load_checkpoint

    config = TRMConfig.preset("sudoku-mlp").override(["model.num_puzzle_identifiers=3", "model.n=4"])
    model = build_model(config.model)
    with torch.no_grad():
        model.puzzle_emb.weight.uniform_()
    folder = tmp_path / "checkpoints" / "Sudoku-extreme-1k-aug-1000-ACT-torch" / "pretrain_mlp_t_sudoku"
    folder.mkdir(parents=True)
    torch.save(trm_fast_to_published(model.state_dict()), folder / "step_21700")
    dump = config_to_published(config)
    dump.update({"data_paths": ["data/sudoku-extreme-1k-aug-1000"], "checkpoint_path": str(folder),
                 "project_name": "Sudoku-extreme-1k-aug-1000-ACT-torch", "run_name": "pretrain_mlp_t_sudoku"})
    dump["arch"]["loss"]["extra"] = 1
    (folder / "all_config.yaml").write_text(yaml.safe_dump(dump))
    assert main(["convert", "import", "--published", str(folder / "step_21700"), "--out", str(tmp_path / "imp")]) == 0
    ckpt = load_checkpoint(find_latest_checkpoint(str(tmp_path / "imp")))
    assert ckpt["state"]["config"]["model"]["n"] == 4 and ckpt["state"]["config"]["model"]["mixer"] == "mlp"
    for name, value in model.state_dict().items():
        assert torch.equal(ckpt["model"][name], value), name


def test_cli_export_then_import_and_errors(tmp_path, capsys):
    from trm_fast.checkpoint import find_latest_checkpoint, load_checkpoint
    from trm_fast.train.trainer import train

    config = TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path / 'run'}", "train.max_steps=2"])
    train(config, progress=False, log=lambda *a: None)
    exported = tmp_path / "exported" / "step_2"
    assert main(["convert", "export", "--ckpt", str(tmp_path / "run"), "--out", str(exported), "--no-ema"]) == 0
    state = torch.load(exported, weights_only=True)
    assert all(k.startswith("_orig_mod.model.inner.") for k in state)
    assert (tmp_path / "exported" / "all_config.yaml").is_file()
    # all_config.yaml beside the file names the architecture: no preset needed
    assert main(["convert", "import", "--published", str(exported), "--out", str(tmp_path / "imp")]) == 0
    original = load_checkpoint(find_latest_checkpoint(str(tmp_path / "run")))["model"]
    imported = load_checkpoint(find_latest_checkpoint(str(tmp_path / "imp")))["model"]
    assert all(torch.equal(original[k], imported[k]) for k in original)
    assert main(["eval", "--ckpt", str(tmp_path / "imp"), "--device", "cpu"]) == 0  # seq_len and data came along
    capsys.readouterr()
    # without all_config.yaml the preset decides, and a wrong one is named
    os.remove(tmp_path / "exported" / "all_config.yaml")
    assert main(["convert", "import", "--published", str(exported), "--preset", "sudoku-att", "--out", str(tmp_path / "bad")]) == 2
    assert "wrong --preset" in capsys.readouterr().err
    assert main(["convert", "import", "--published", str(exported), "--out", str(tmp_path / "bad")]) == 2
    assert "--preset" in capsys.readouterr().err
    exported.write_bytes(b"not a checkpoint")
    assert main(["convert", "import", "--published", str(exported), "--preset", "sudoku4-tiny", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "step_2: not a readable PyTorch state_dict (not a file torch.save writes" in err and err.count("\n") == 1
    # a file torch.save wrote, damaged: torch's several lines of advice become one
    torch.save({"w": torch.zeros(3)}, exported)
    exported.write_bytes(exported.read_bytes()[:60])
    assert main(["convert", "import", "--published", str(exported), "--preset", "sudoku4-tiny",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "step_2: not a readable PyTorch state_dict (" in err and err.count("\n") == 1
    (tmp_path / "exported" / "all_config.yaml").write_text("arch:\n  name: [trm\n")
    assert main(["convert", "import", "--published", str(exported), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "all_config.yaml: not valid YAML (line 3, column 1: expected ',' or ']'" in err and err.count("\n") == 1


def test_eval_interval_epochs_become_steps_and_the_sampler_packing(tmp_path):
    """The published eval_interval counts epochs (and is its sampler's epochs per iteration); ours counts steps."""
    import json
    import math

    from trm_fast.data.recipes import ensure_recipe

    data = ensure_recipe("sudoku4-tiny", str(tmp_path / "data"), log=lambda *a: None)
    meta = json.loads(open(os.path.join(data, "train", "dataset.json")).read())
    dump = config_to_published(TRMConfig.preset("sudoku-mlp"))
    dump.update({"eval_interval": 5000, "global_batch_size": 64, "data_paths": [data]})
    del dump["trm_fast"]  # as the published script writes it
    config = config_from_published(dump, TRMConfig())
    per_epoch = meta["total_groups"] * meta["mean_puzzle_examples"]
    assert config.data.epochs_per_iter == 5000
    assert config.train.eval_interval == math.ceil(5000 * per_epoch / 64)
    assert config_to_published(config)["eval_interval"] == 5000
    # without the dataset on disk the step count cannot be known: the packing still follows, steps stay the base's
    dump["data_paths"] = [str(tmp_path / "absent")]
    assert config_from_published(dump, TRMConfig()).train.eval_interval == TRMConfig().train.eval_interval


def test_training_continues_from_an_imported_checkpoint(tmp_path, capsys):
    """What `convert import` writes holds weights only: --resume on it says to use --init-from, which starts a run
    from those weights (the EMA from the same weights, fresh optimiser, schedule and sampler)."""
    from trm_fast.checkpoint import load_checkpoint
    from trm_fast.tools.convert import export_published, import_published
    from trm_fast.train.trainer import Trainer, train

    quiet = lambda *a: None
    tiny = lambda out, *extra: TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={out}", *extra])
    train(tiny(tmp_path / "run", "train.max_steps=2"), progress=False, log=quiet)
    export_published(str(tmp_path / "run"), str(tmp_path / "published" / "step_2"), use_ema=False)
    imported = import_published(str(tmp_path / "published" / "step_2"), str(tmp_path / "imp"))
    argv = ["train", "--preset", "sudoku4-tiny", "--out", str(tmp_path / "imp"), "--resume", "auto", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {imported} was written by `trm-fast convert import`" in err
    assert f"start a run from it with --init-from {imported}" in err and err.count("\n") == 1
    trainer = Trainer(tiny(tmp_path / "ft", "train.max_steps=2"), progress=False, log=quiet)
    trainer.init_from(str(tmp_path / "imp"))
    weights = load_checkpoint(imported)["model"]
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    for name, value in trainer.ema.state_dict().items():
        assert torch.equal(value, weights[name].float()), name
    assert trainer.fit()["steps"] == 2
    assert main(["train", "--preset", "sudoku4-tiny", "--out", str(tmp_path / "x"), "--resume", str(tmp_path / "imp"),
                 "--init-from", imported]) == 2
    assert "--resume PATH and --init-from exclude each other" in capsys.readouterr().err
