"""Checkpoint interop with the published code: key mapping both ways, the torch.compile prefix, round trips."""
import pytest
import torch

from trm_fast.cli import main
from trm_fast.config import TRMConfig
from trm_fast.convert import published_to_trm_fast, trm_fast_to_published
from trm_fast.model import build_model


@pytest.mark.parametrize("preset", ["sudoku-att", "sudoku-mlp"])
def test_mapping_round_trip_and_published_names(preset):
    model = build_model(TRMConfig.preset(preset).model)
    state = model.state_dict()
    published = trm_fast_to_published(state, compiled=True)
    assert "_orig_mod.model.inner.H_init" in published and "_orig_mod.model.inner.puzzle_emb.weights" in published
    block = "mlp_t" if preset == "sudoku-mlp" else "self_attn.qkv_proj"
    assert any(f"L_level.layers.1.{block}" in k for k in published)
    back = published_to_trm_fast(published)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    # the sparse embedding's per-batch buffers of the published layout are ignored
    published["model.inner.puzzle_emb.local_weights"] = torch.zeros(3, 512)
    assert published_to_trm_fast(published).keys() == state.keys()


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="H_level"):
        published_to_trm_fast({"model.inner.H_level.layers.0.mlp.down_proj.weight": torch.zeros(1)})


def test_cli_export_then_import(tmp_path, capsys):
    from trm_fast.train.checkpoint import find_latest_checkpoint, load_checkpoint
    from trm_fast.train.trainer import train

    config = TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path / 'run'}", "train.max_steps=2"])
    train(config, progress=False, log=lambda *a: None)
    exported = tmp_path / "published.pt"
    assert main(["convert", "export", "--ckpt", str(tmp_path / "run"), "--out", str(exported), "--compiled", "--no-ema"]) == 0
    state = torch.load(exported, weights_only=True)
    assert all(k.startswith("_orig_mod.model.inner.") for k in state)
    # importing needs a preset of the same architecture: the tiny preset
    assert main(["convert", "import", "--published", str(exported), "--preset", "sudoku4-tiny", "--out", str(tmp_path / "imp")]) == 0
    original = load_checkpoint(find_latest_checkpoint(str(tmp_path / "run")))["model"]
    imported = load_checkpoint(find_latest_checkpoint(str(tmp_path / "imp")))["model"]
    assert all(torch.equal(original[k], imported[k]) for k in original)
    assert main(["convert", "import", "--published", str(exported), "--preset", "sudoku-att", "--out", str(tmp_path / "bad")]) == 2
    assert "wrong --preset" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(tmp_path / "imp"), "--device", "cpu"]) == 0
