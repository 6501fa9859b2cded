"""What the command line tells its user: errors name what was typed (the flag, the file) in one line, and eval says
which checkpoint it scores and refuses one of another run placed in the run folder."""
import shutil

import torch

from trm_fast.cli import main
from trm_fast.config import TRMConfig
from trm_fast.train.trainer import train


def test_device_errors_name_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in (["eval", "--ckpt", str(tmp_path)], ["solve", "--ckpt", str(tmp_path), "--puzzle", "." * 16]):
        assert main([*command, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err == f"trm-fast {command[0]}: error: --device cuda: no CUDA device is available\n"
    assert main(["eval", "--ckpt", str(tmp_path), "--device", "gpu"]) == 2
    assert "--device gpu: not a device" in capsys.readouterr().err


def test_broken_yaml_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "extra.yaml"
    bad.write_text("model:\n  n: [1\n")
    assert main(["train", "--preset", "sudoku4-tiny", "--config", str(bad), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err == (f"trm-fast train: error: config file {str(bad)!r} is not valid YAML: line 3, column 1: expected ',' "
                   "or ']', but got '<stream end>' (while parsing a flow sequence at line 2, column 6)\n")


def test_eval_names_its_checkpoint_and_refuses_another_runs(tmp_path, capsys):
    quiet = lambda *a: None
    for name, extra in (("run", []), ("other", ["model.n=3"])):
        config = TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path / name}", "train.max_steps=2",
                                                            *extra])
        train(config, progress=False, log=quiet)
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(tmp_path / "run"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {tmp_path / 'run' / 'checkpoints' / 'step_00000002'} (step 2, preset sudoku4-tiny)\n" in err
    # another run's checkpoint, placed newest in the run folder, is not scored in the run's name
    foreign = tmp_path / "run" / "checkpoints" / "step_00000009"
    shutil.copytree(tmp_path / "other" / "checkpoints" / "step_00000002", foreign)
    assert main(["eval", "--ckpt", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        f"trm-fast eval: error: checkpoint {foreign} is not the model of the run {tmp_path / 'run' / 'config.json'} "
        "describes: model.n is 3 in the checkpoint, 2 in config.json; a checkpoint of another run placed there?\n")
