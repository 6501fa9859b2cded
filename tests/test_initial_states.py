"""The initial states y_init / z_init (the published H_init / L_init): fp32 for a float32 run, bf16 otherwise as
published; imported and exported in the run's real dtype; checkpoints of float32 runs saved with bf16 states still
load and resume."""
import pytest
import torch
import yaml

from trm_fast.checkpoint import find_latest_checkpoint, load_checkpoint, load_trained_model, save_checkpoint
from trm_fast.cli import main
from trm_fast.config import TRMConfig
from trm_fast.model import build_model
from trm_fast.tools.convert import config_to_published, trm_fast_to_published


def tiny_config(*overrides) -> TRMConfig:
    return TRMConfig.preset("sudoku4-tiny").override(["model.num_puzzle_identifiers=3", *overrides])


@pytest.mark.parametrize("forward_dtype, expected", [("auto", torch.bfloat16), ("bfloat16", torch.bfloat16),
                                                     ("float32", torch.float32)])
def test_initial_states_are_fp32_only_for_a_float32_run(forward_dtype, expected):
    torch.manual_seed(3)
    model = build_model(tiny_config(f"model.forward_dtype={forward_dtype}").model)
    torch.manual_seed(3)
    fp32 = build_model(tiny_config("model.forward_dtype=float32").model)
    assert model.y_init.dtype == expected and model.z_init.dtype == expected
    # the same draw: the other precisions round exactly the fp32 run's states (auto and bf16 unchanged)
    assert torch.equal(model.y_init, fp32.y_init.to(expected)) and torch.equal(model.z_init, fp32.z_init.to(expected))
    y, z = model.initial_carry(2, "cpu")
    assert torch.equal(y[0, 0], model.y_init.float()) and torch.equal(z[1, 3], model.z_init.float())


@pytest.mark.parametrize("forward_dtype, expected", [("auto", torch.bfloat16), ("float32", torch.float32)])
def test_the_multiscale_variants_z_starts_follow_the_run_dtype(forward_dtype, expected):
    model = build_model(tiny_config("model.latent=multiscale", f"model.forward_dtype={forward_dtype}").model)
    assert model.z_inits.dtype == expected == model.y_init.dtype
    carry = model.initial_carry(2, "cpu")
    assert torch.equal(carry[2][1, 0], model.z_inits[1].float())


@pytest.mark.parametrize("dtype_name, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_published_initial_states_keep_their_dtype_both_ways(tmp_path, dtype_name, dtype):
    """A published run's H_init / L_init come in unrounded when its forward_dtype is float32 (the model then starts
    from exactly the published state), and go out in the run's dtype with forward_dtype saying which."""
    config = tiny_config()
    model = build_model(config.model)
    published = trm_fast_to_published(model.state_dict())
    g = torch.Generator().manual_seed(1)
    states = {name: torch.randn(config.model.hidden_size, generator=g).to(dtype) for name in ("H_init", "L_init")}
    for name, value in states.items():
        published[f"_orig_mod.model.inner.{name}"] = value
    folder = tmp_path / "published"
    folder.mkdir()
    torch.save(published, folder / "step_10")
    dump = config_to_published(config)
    dump["arch"]["forward_dtype"] = dtype_name
    (folder / "all_config.yaml").write_text(yaml.safe_dump(dump))

    assert main(["convert", "import", "--published", str(folder / "step_10"), "--out", str(tmp_path / "imp")]) == 0
    imported = load_checkpoint(find_latest_checkpoint(str(tmp_path / "imp")))["model"]
    for ours, theirs in (("y_init", "H_init"), ("z_init", "L_init")):
        assert imported[ours].dtype == dtype and torch.equal(imported[ours], states[theirs]), ours
    loaded, _, _ = load_trained_model(str(tmp_path / "imp"))
    y, z = loaded.initial_carry(1, "cpu")  # fp32 on a CPU: exactly the published states, unrounded
    assert torch.equal(y[0, 0], states["H_init"].float()) and torch.equal(z[0, 0], states["L_init"].float())

    out = tmp_path / "exported" / "step_10"
    assert main(["convert", "export", "--ckpt", str(tmp_path / "imp"), "--out", str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    for name, value in states.items():
        assert exported[f"_orig_mod.model.inner.{name}"].dtype == dtype
        assert torch.equal(exported[f"_orig_mod.model.inner.{name}"], value), name
    assert yaml.safe_load((out.parent / "all_config.yaml").read_text())["arch"]["forward_dtype"] == dtype_name


def test_a_float32_checkpoint_with_bf16_states_still_loads_and_resumes(tmp_path):
    """Checkpoints of float32 runs written before the states were kept in fp32 hold bf16 ones: they load (widened
    exactly, so the run goes on from the same states) for evaluation and for resuming."""
    from trm_fast.train.trainer import train

    config = tiny_config(f"train.out_dir={tmp_path / 'run'}", "model.forward_dtype=float32", "train.max_steps=2")
    train(config, progress=False, log=lambda *a: None)
    ckpt = load_checkpoint(find_latest_checkpoint(str(tmp_path / "run")))
    old_states = {k: ckpt["model"][k].to(torch.bfloat16) for k in ("y_init", "z_init")}
    save_checkpoint(str(tmp_path / "old"), 2, model_state={**ckpt["model"], **old_states}, ema_state=ckpt["ema"],
                    train_state=ckpt["state"])
    model, _, _ = load_trained_model(str(tmp_path / "old"))
    assert model.y_init.dtype == torch.float32 and torch.equal(model.y_init, old_states["y_init"].float())
    resumed = config.override([f"train.out_dir={tmp_path / 'old'}", "train.max_steps=3"])
    assert train(resumed, resume="auto", progress=False, log=lambda *a: None)["steps"] == 3
