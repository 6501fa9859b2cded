import json

import pytest

from trm_fast.config import PRESETS, TRMConfig, swiglu_hidden


def test_presets_build_and_roundtrip():
    for name in PRESETS:
        config = TRMConfig.preset(name)
        again = TRMConfig.from_dict(json.loads(config.to_json()))
        assert again.to_dict() == config.to_dict()


def test_published_presets_match_spec():
    mlp = TRMConfig.preset("sudoku-mlp")
    assert (mlp.model.hidden_size, mlp.model.num_heads, mlp.model.num_blocks, mlp.model.T, mlp.model.n) == (512, 8, 2, 3, 6)
    assert mlp.model.mixer == "mlp" and mlp.model.pos_encoding == "none"
    assert mlp.model.mlp_hidden == 1536 and mlp.model.total_seq_len == 97 and mlp.model.token_mix_hidden == 512
    assert mlp.data.global_batch_size == 768 and mlp.train.lr == 1e-4 and mlp.train.lr_warmup_steps == 2000
    assert mlp.train.weight_decay == 1.0 and mlp.train.puzzle_emb_lr == 1e-4 and mlp.train.ema_rate == 0.999
    arc = TRMConfig.preset("arc1")
    assert (arc.model.n, arc.model.seq_len, arc.model.vocab_size) == (4, 900, 12)
    assert arc.train.puzzle_emb_lr == 1e-2 and arc.train.weight_decay == 0.1
    assert TRMConfig.preset("maze").model.vocab_size == 6


def test_swiglu_hidden():
    assert swiglu_hidden(512) == 1536
    assert swiglu_hidden(97) == 512
    assert swiglu_hidden(916) == 2560


def test_overrides_parse_and_validate():
    config = TRMConfig.preset("sudoku-mlp").override(["model.n=4", "train.lr=3e-4", "train.ema=false"])
    assert config.model.n == 4 and config.train.lr == 3e-4 and config.train.ema is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n=0", "model.n"),
        ("model.mixer=conv", "model.mixer"),
        ("train.lr=-1", "train.lr"),
        ("train.ema_rate=1.5", "train.ema_rate"),
        ("model.nn=3", "not a config field"),
        ("nosection.x=1", "not a config field"),
        ("model.hidden_size=100", "divisible"),
        ("model.n", "section.field=value"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        TRMConfig.preset("sudoku-att").override([override])


def test_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  n: 3\ntrain:\n  lr: 1e-3\n")
    config = TRMConfig.from_file(str(path), base=TRMConfig.preset("sudoku-mlp"))
    assert config.model.n == 3 and config.train.lr == 1e-3
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"T": "three"}}')
    with pytest.raises(ValueError, match="model.T"):
        TRMConfig.from_file(str(bad))
    with pytest.raises(ValueError, match="unknown preset"):
        TRMConfig.preset("nope")


def test_every_preset_recipe_is_embedded():
    from trm_fast.data.recipes import RECIPES

    for name in PRESETS:
        recipe = TRMConfig.preset(name).data.recipe
        assert not recipe or recipe in RECIPES, (name, recipe)


def test_every_attention_preset_runs_on_the_triton_kernels():
    """backend=auto picks Triton on GPUs: no preset may have a head dim the attention kernel refuses."""
    from trm_fast.kernels.attention import SUPPORTED_HEAD_DIMS

    for name in PRESETS:
        model = TRMConfig.preset(name).model
        if model.mixer == "attention":
            assert model.head_dim in SUPPORTED_HEAD_DIMS, (name, model.head_dim)
