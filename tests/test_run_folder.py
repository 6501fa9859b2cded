"""A run folder holding a run of another configuration is refused unless --resume or --overwrite says what to do;
the same configuration again (re-running the demo) trains as before."""
import json

import pytest

from trm_fast.checkpoint import find_latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from trm_fast.cli import main
from trm_fast.config import TRMConfig
from trm_fast.train.run_folder import claim_run_folder, config_hash
from trm_fast.train.trainer import train

QUIET = dict(progress=False, log=lambda *a: None)


def tiny(run_dir, *extra):
    return TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={run_dir}", "train.max_steps=2", *extra])


def metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_the_hash_leaves_out_only_the_folder():
    a = TRMConfig.preset("sudoku4-tiny").to_dict()
    moved = TRMConfig.preset("sudoku4-tiny").override(["train.out_dir=elsewhere"]).to_dict()
    other = TRMConfig.preset("sudoku4-tiny").override(["train.seed=1"]).to_dict()
    assert config_hash(a) == config_hash(moved) != config_hash(other)
    assert len(config_hash(a)) == 12


def test_another_configuration_is_refused_the_same_one_retrains(tmp_path):
    run = tmp_path / "run"
    train(tiny(run), **QUIET)
    train(tiny(run), **QUIET)  # re-running the same command (the demo) works as before
    with pytest.raises(ValueError, match=r"another configuration .*train\.lr: 0\.001 -> 0\.002.*--resume auto "
                                         r"continues it, --overwrite replaces it"):
        train(tiny(run, "train.lr=0.002"), **QUIET)
    assert load_checkpoint(find_latest_checkpoint(str(run)))["state"]["config"]["train"]["lr"] == 0.001  # untouched


def test_overwrite_replaces_the_run_and_resume_continues_it(tmp_path):
    run = tmp_path / "run"
    train(tiny(run, "train.checkpoint_interval=1", "train.log_interval=1"), **QUIET)
    (run / "notes.txt").write_text("mine")
    # --resume continues the run there, under a changed configuration (more steps)
    assert train(tiny(run, "train.max_steps=3", "train.log_interval=1"), resume="auto", **QUIET)["steps"] == 3
    with pytest.raises(ValueError, match="give one of them"):
        train(tiny(run, "train.lr=0.002"), resume="auto", overwrite=True, **QUIET)
    lines = []
    train(tiny(run, "train.lr=0.002", "train.log_interval=1"), overwrite=True, progress=False, log=lines.append)
    assert any(line.startswith("--overwrite: removed config.json, metrics.jsonl") for line in lines), lines
    assert [r["step"] for r in metrics(run) if r["kind"] == "train"] == [1, 2]  # the old run's records are gone
    assert [p.rsplit("_", 1)[1] for p in list_checkpoints(str(run))] == ["00000002"]
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.002
    assert (run / "notes.txt").read_text() == "mine"  # only what training writes is removed


def test_checkpoints_without_a_recorded_configuration_are_refused(tmp_path):
    """An imported checkpoint's folder (no config.json): training afresh there would prune it away."""
    run = tmp_path / "run"
    train(tiny(run), **QUIET)
    ckpt = load_checkpoint(find_latest_checkpoint(str(run)))
    save_checkpoint(str(tmp_path / "imported"), 0, model_state=ckpt["model"], ema_state=None,
                    train_state={"step": 0, "config": ckpt["state"]["config"]})
    with pytest.raises(ValueError, match="holds checkpoints but no config.json"):
        claim_run_folder(str(tmp_path / "imported"), tiny(tmp_path / "imported").to_dict(), None, False)
    claim_run_folder(str(tmp_path / "imported"), tiny(tmp_path / "imported").to_dict(), "auto", False)


def test_the_cli_refuses_with_one_line_and_overwrites_when_told(tmp_path, capsys):
    run = str(tmp_path / "run")
    argv = ["train", "--preset", "sudoku4-tiny", "--out", run, "--set", "train.max_steps=2", "--no-progress"]
    assert main(argv) == 0
    assert main([*argv, "--set", "model.T=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.T: 2 -> 1" in err and err.startswith("trm-fast train: error:")
    assert main([*argv, "--set", "model.T=1", "--overwrite"]) == 0
