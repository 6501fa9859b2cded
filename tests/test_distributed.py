"""Scale-out and fault tolerance on CPU: torchrun with gloo matches one process; SIGKILL + --resume auto ends
bitwise equal to an uninterrupted run; SIGTERM leaves a usable checkpoint."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from trm_fast.train.checkpoint import find_latest_checkpoint, list_checkpoints, load_checkpoint

TINY = ["--preset", "sudoku4-tiny", "--no-progress"]


def _run(args, **kw):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "trm_fast", "train", *TINY, *args], env=env, capture_output=True,
                          text=True, timeout=600, **kw)


def _torchrun(nproc, args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "trm_fast", "train", *TINY, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _weights(run_dir):
    return load_checkpoint(find_latest_checkpoint(str(run_dir)))


def test_two_gloo_processes_match_one_process(tmp_path):
    common = ["--set", "train.max_steps=8", "--set", "data.global_batch_size=16"]
    one = _run([*common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun(2, [*common, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stdout
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a["state"]["step"] == b["state"]["step"] == 8
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=1e-5, rtol=1e-4, msg=name)
    # the checkpoint of the 2-process run holds the carry of the whole global batch
    assert b["state"]["supervision"]["steps"].shape[0] == 16
    torch.testing.assert_close(a["state"]["supervision"]["carry"][0], b["state"]["supervision"]["carry"][0], atol=1e-4, rtol=1e-3)


def _start(args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.Popen([sys.executable, "-m", "trm_fast", "train", *TINY, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir, min_count, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list_checkpoints(str(run_dir))) >= min_count:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before the checkpoint: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    pytest.fail("no checkpoint in time")


def test_sigkill_then_resume_auto_is_bitwise(tmp_path):
    args = ["--set", "train.max_steps=60", "--set", "train.checkpoint_interval=5", "--set", "train.keep_checkpoints=2"]
    full = _run([*args, "--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-2000:]
    proc = _start([*args, "--out", str(tmp_path / "cut")])
    _wait_for_checkpoint(tmp_path / "cut", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut_step = load_checkpoint(find_latest_checkpoint(str(tmp_path / "cut")))["state"]["step"]
    assert cut_step < 60
    resumed = _run([*args, "--out", str(tmp_path / "cut"), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from" in resumed.stdout
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a["state"]["step"] == b["state"]["step"] == 60
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    assert a["state"]["sampler"] == b["state"]["sampler"]


def test_sigterm_saves_a_usable_checkpoint(tmp_path):
    proc = _start(["--set", "train.max_steps=100000", "--set", "train.checkpoint_interval=1000", "--out", str(tmp_path)])
    deadline = time.time() + 120
    while not os.path.exists(tmp_path / "metrics.jsonl") and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM: saved checkpoint" in out
    ckpt = load_checkpoint(find_latest_checkpoint(str(tmp_path)))
    assert 0 < ckpt["state"]["step"] < 100000
    resumed = _run(["--set", f"train.max_steps={ckpt['state']['step'] + 3}", "--out", str(tmp_path), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
