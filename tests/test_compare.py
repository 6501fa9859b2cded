"""trm-fast compare: arms parsed, curves compared, verdicts, outputs written; a real two-arm run at a tiny size."""
import json
import os

import pytest

from trm_fast.cli import main
from trm_fast.tools.compare import compare_curves, parse_arm, verdict


def test_parse_arm():
    assert parse_arm("level2:model.recompute=2,model.backend=torch") == ("level2", ["model.recompute=2", "model.backend=torch"])
    assert parse_arm("base") == ("base", [])
    for bad in ("", ":model.recompute=2", "a b:model.recompute=2", "x:recompute=2", "x:model.recompute"):
        with pytest.raises(ValueError, match="--arm"):
            parse_arm(bad)


def test_curve_comparison_and_verdict():
    base = [{"step": s, "lm_loss": 1.0} for s in (10, 20, 30, 40)]
    close = [{"step": s, "lm_loss": v} for s, v in ((10, 5.0), (20, 1.01), (30, 0.99), (40, 1.03))]
    c = compare_curves(base, close, after=10)  # step 10 (warm-up) is not compared
    assert c["windows"] == 3 and c["mean_rel_diff"] == pytest.approx(0.05 / 3) and c["max_rel_diff"] == pytest.approx(0.03)
    assert verdict(c, 0.50, 0.515, 0.02, 2.0)["pass"]
    assert not verdict(c, 0.50, 0.53, 0.02, 2.0)["pass"]  # 3 points apart
    far = compare_curves(base, [{"step": s, "lm_loss": 1.1} for s in (20, 30, 40)], after=10)
    assert not verdict(far, 0.5, 0.5, 0.02, 2.0)["loss_ok"]
    assert not verdict(compare_curves(base, [], after=0), 0.5, 0.5, 0.02, 2.0)["pass"]  # nothing compared: no pass


def test_compare_command_level0_against_level2(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--preset", "sudoku4-tiny", "--steps", "8", "--after", "2", "--out", str(out), "--no-progress",
               "--arm", "level0:model.recompute=0", "--arm", "level2:model.recompute=2"])
    payload = json.loads((out / "compare.json").read_text())
    assert rc == 0 and payload["pass"], payload["arms"][1]["verdict"]
    level2 = payload["arms"][1]
    # recomputation changes no arithmetic on the reference path: the curves agree to rounding
    assert level2["verdict"]["windows"] >= 1 and level2["verdict"]["max_rel_diff"] < 1e-4
    assert payload["environment"]["torch"] and payload["steps"] == 8
    assert os.path.getsize(out / "compare.png") > 0 and "level2" in (out / "compare.md").read_text()
    assert "pass" in capsys.readouterr().out
    # a second call into the same folder starts fresh curves rather than appending to the old ones
    assert main(["compare", "--preset", "sudoku4-tiny", "--steps", "8", "--after", "2", "--out", str(out),
                 "--no-progress", "--arm", "level0:model.recompute=0", "--arm", "level2:model.recompute=2"]) == 0
    again = json.loads((out / "compare.json").read_text())
    assert [p["step"] for p in again["arms"][0]["train_curve"]] == [p["step"] for p in level2["train_curve"]]
    # --reuse reads finished arms of the same configuration and trains only what is new or changed
    capsys.readouterr()
    assert main(["compare", "--preset", "sudoku4-tiny", "--steps", "8", "--after", "2", "--out", str(out), "--reuse",
                 "--no-progress", "--drop-checkpoints", "--arm", "level0:model.recompute=0",
                 "--arm", "level2:model.recompute=1"]) == 0
    assert not (out / "level2" / "checkpoints").exists() and (out / "level2" / "compare_arm.json").exists()
    printed = capsys.readouterr().out
    assert "arm level0: reusing" in printed and "arm level2: the run" in printed
    reused = json.loads((out / "compare.json").read_text())
    assert reused["arms"][0] == again["arms"][0] and reused["arms"][1]["overrides"] == ["model.recompute=1"]
    # records moved to another folder (another machine) are still reused
    import shutil

    shutil.copytree(out, tmp_path / "moved")
    assert main(["compare", "--preset", "sudoku4-tiny", "--steps", "8", "--after", "2", "--out", str(tmp_path / "moved"),
                 "--reuse", "--no-progress", "--arm", "level0:model.recompute=0", "--arm", "level2:model.recompute=1"]) == 0
    assert capsys.readouterr().out.count("reusing the finished run") == 2


def test_compare_refuses_bad_arguments(tmp_path, capsys):
    assert main(["compare", "--preset", "sudoku4-tiny", "--out", str(tmp_path), "--arm", "only:model.recompute=0"]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["compare", "--preset", "sudoku4-tiny", "--out", str(tmp_path), "--steps", "4", "--after", "9",
                 "--arm", "a:model.recompute=0", "--arm", "b:model.recompute=1"]) == 2
    assert "--after" in capsys.readouterr().err
