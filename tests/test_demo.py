"""The README demo's outcome does not depend on the machine's speed: it trains a fixed number of steps, and a time
cap, where one is set, says loudly that it cut the training short and by how much."""
from trm_fast.config import TRMConfig
from trm_fast.train.trainer import train


def test_the_demo_trains_a_fixed_number_of_steps():
    train_config = TRMConfig.preset("sudoku6-demo").train
    assert train_config.max_steps == 800 and train_config.max_minutes == 0


def test_a_time_cap_says_loudly_what_it_cost(tmp_path):
    lines = []
    config = TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path}", "train.max_steps=20",
                                                         "train.max_minutes=0.00001"])
    summary = train(config, progress=False, log=lines.append)
    assert summary["steps"] == 1 and summary["planned_steps"] == 20
    warning = ("WARNING: STOPPED EARLY: train.max_minutes = 1e-05 ended training at step 1 of 20; 19 steps (95% of the "
               "training) were not run")
    assert summary["stopped_early"].startswith(warning)
    assert lines[-1] == summary["stopped_early"]  # the last line, after the accuracy it qualifies
    assert sum(line.startswith(warning) for line in lines) == 2
