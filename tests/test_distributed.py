"""Scale-out and fault tolerance on CPU (gloo), with the tiny preset:
- sparse sign-SGD sums the gradients of an id across ranks;
- torchrun with 2 processes reaches the one-process weights (fp32 tolerance), gathers the global carry into its
  checkpoints and evaluates like one process; a 1-process run resumes its checkpoint (another world size);
- SIGKILL at an arbitrary moment + `--resume auto` ends bitwise equal to an uninterrupted run;
- SIGTERM to torchrun makes every rank stop at the same step and leaves a usable checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from trm_fast.checkpoint import find_latest_checkpoint, list_checkpoints, load_checkpoint

TINY = ["--preset", "sudoku4-tiny", "--no-progress", "--set", "data.global_batch_size=16",
        "--set", "train.checkpoint_interval=4", "--set", "train.keep_checkpoints=8"]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"  # the same thread count in every run: bitwise comparisons stay meaningful
    return env


def _train_cmd(out, *args):
    return [sys.executable, "-m", "trm_fast", "train", *TINY, "--out", str(out), *args]


def _torchrun_cmd(nproc, out, *args):
    # '--': torchrun's parser leaves what follows alone (our --log would be ambiguous with its --log-dir, --logs-specs)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "trm_fast", "--", "train", *TINY, "--out", str(out), *args]


def _run(cmd):
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _checkpoint(run_dir, step):
    path = os.path.join(run_dir, "checkpoints", f"step_{step:08d}")
    return load_checkpoint(path)


def _assert_close_models(a, b, what):
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=1e-5, rtol=1e-4, msg=f"{what}: {name}")


def _assert_bitwise(a, b):
    for part in ("model", "ema"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name}"
    sa, sb = a["state"], b["state"]
    assert sa["sampler"] == sb["sampler"]
    for key in ("steps", "halted", "inputs", "labels", "puzzle_ids"):
        assert torch.equal(sa["supervision"][key], sb["supervision"][key]), key
    assert all(torch.equal(u, v) for u, v in zip(sa["supervision"]["carry"], sb["supervision"]["carry"]))
    for key in ("exp_avg", "exp_avg_sq"):
        for i, st in sa["dense_optimizer"]["state"].items():
            assert torch.equal(st[key], sb["dense_optimizer"]["state"][i][key]), (i, key)


REFERENCE_STEPS = 40


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted process, checkpoints every 4 steps up to 40 (the learning rate is constant after the
    warm-up, lr_min_ratio = 1, so its step-k checkpoint is also what a run with max_steps = k ends with)."""
    out = tmp_path_factory.mktemp("reference")
    _run(_train_cmd(out, "--set", f"train.max_steps={REFERENCE_STEPS}", "--set", "train.keep_checkpoints=20"))
    return out


def _train_in_process(out, max_steps):
    from trm_fast.config import TRMConfig
    from trm_fast.train.trainer import train

    config = TRMConfig.preset("sudoku4-tiny").override(
        [f"train.out_dir={out}", "data.global_batch_size=16", "train.checkpoint_interval=4", f"train.max_steps={max_steps}"])
    lines = []
    train(config, resume="auto", progress=False, log=lines.append)
    return "\n".join(map(str, lines))


# ---------------------------------------------------------------------------------------------- sparse update


def _sparse_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from trm_fast.model.trm import PuzzleEmbedding
    from trm_fast.train.optim import SparseSignSGD

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        emb = PuzzleEmbedding(6, 2)
        emb.weight.copy_(torch.arange(12, dtype=torch.float32).view(6, 2))
        emb.train()
        ids, grads = _sparse_batch()
        half = len(ids) // world
        for start in range(rank * half, (rank + 1) * half, 2):  # two micro-batches per rank
            rows = emb(ids[start:start + 2])
            (rows * grads[start:start + 2]).sum().backward()
        SparseSignSGD(emb, lr=0.5, weight_decay=0.1).step()
        torch.save(emb.weight, os.path.join(out_dir, f"table{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _sparse_batch():
    # id 3 appears on both ranks: its first component sums to 1 - 4 + 0 < 0, while rank 0 alone would see +1
    ids = torch.tensor([3, 1, 1, 5, 3, 0, 3, 2])
    grads = torch.tensor([[1.0, 2.0], [1.0, -1.0], [-2.0, 3.0], [0.5, 0.5], [-4.0, 1.0], [1.0, 1.0], [0.0, 0.0],
                          [-1.0, 0.0]])
    return ids, grads


def test_sparse_sign_sgd_sums_an_id_across_ranks(tmp_path):
    from trm_fast.model.trm import PuzzleEmbedding
    from trm_fast.train.optim import SparseSignSGD

    mp.start_processes(_sparse_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    tables = [torch.load(tmp_path / f"table{r}.pt", weights_only=True) for r in range(2)]
    single = PuzzleEmbedding(6, 2)
    single.weight.copy_(torch.arange(12, dtype=torch.float32).view(6, 2))
    single.train()
    ids, grads = _sparse_batch()
    (single(ids) * grads).sum().backward()
    SparseSignSGD(single, lr=0.5, weight_decay=0.1).step()
    assert torch.equal(tables[0], tables[1])
    assert torch.equal(tables[0], single.weight)
    before = torch.arange(12, dtype=torch.float32).view(6, 2)
    torch.testing.assert_close(tables[0][3], before[3] * (1 - 0.05) - 0.5 * torch.tensor([-1.0, 1.0]))
    assert torch.equal(tables[0][4], before[4])  # not in the batch of any rank


# ---------------------------------------------------------------------------------------------- torchrun


def test_two_processes_match_one_and_resume_on_one(reference, tmp_path):
    out = tmp_path / "two"
    two = _run(_torchrun_cmd(2, out, "--set", "train.max_steps=8", "--log", "tensorboard"))
    assert "(2 processes)" in two.stdout
    assert two.stdout.count("trm_fast: sudoku4-tiny") == 1  # logging on rank 0 only
    (tracking_run,) = os.listdir(out / "tensorboard")  # experiment tracking too: one run, one event file
    assert len(os.listdir(out / "tensorboard" / tracking_run)) == 1
    for step in (4, 8):
        a, b = _checkpoint(reference, step), _checkpoint(out, step)
        _assert_close_models(a, b, f"step {step}")
        # the checkpoint holds the carry of the whole global batch, gathered from both ranks
        assert b["state"]["supervision"]["steps"].shape[0] == 16 and b["state"]["world_size"] == 2
        assert len(b["state"]["rng_per_rank"]) == 2
        assert torch.equal(a["state"]["supervision"]["halted"], b["state"]["supervision"]["halted"])
        # the carry is the output of 42 block applications: weights equal to 1e-5 (another all-reduce order) give
        # differences of ~1e-4 there; slots gathered in the wrong order would differ by O(1)
        torch.testing.assert_close(a["state"]["supervision"]["carry"][0], b["state"]["supervision"]["carry"][0],
                                   atol=1e-3, rtol=1e-2)
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step_00000004", "step_00000008"]  # rank 0 writes

    # the evaluation split across the two ranks equals one process evaluating the same weights
    from trm_fast.eval.evaluate import evaluate
    from trm_fast.checkpoint import load_trained_model
    from trm_fast.data.format import load_data

    with open(out / "metrics.jsonl") as f:
        distributed_eval = [r for r in map(json.loads, f) if r["kind"] == "eval"][-1]
    model, config, _ = load_trained_model(str(out), "cpu", use_ema=True)
    data = load_data(config, log=lambda *a: None)
    single = evaluate(model, data.test_set, data.test_meta, config.data.global_batch_size, "cpu", progress=False)
    for key in ("count", "exact_accuracy", "token_accuracy", "halt_accuracy", "mean_halt_step"):
        assert single[key] == pytest.approx(distributed_eval[key], abs=1e-9), key

    # one process resumes the 2-process run (another world size: each rank's slice of the carry is rebuilt)
    log = _train_in_process(out, 12)
    assert "resumed from" in log and "step_00000008" in log
    _assert_close_models(_checkpoint(reference, 12), _checkpoint(out, 12), "resumed at 12")


# ---------------------------------------------------------------------------------------------- faults


def _wait_for(predicate, proc, what, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before {what}: {proc.stdout.read()[-1000:]} {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no {what} within {timeout} s")


def test_sigkill_then_resume_auto_is_bitwise(reference, tmp_path):
    # a long run killed at whatever step it has reached after its first checkpoint
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_train_cmd(cut, "--set", "train.max_steps=100000"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(list_checkpoints(str(cut))) >= 1, proc, "the first checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    step = load_checkpoint(find_latest_checkpoint(str(cut)))["state"]["step"]
    target = step + 4
    assert target <= REFERENCE_STEPS, f"the killed run got to step {step} before the kill landed"
    _run(_train_cmd(cut, "--set", f"train.max_steps={target}", "--resume", "auto"))
    _assert_bitwise(_checkpoint(reference, target), _checkpoint(cut, target))


def test_sigterm_to_torchrun_saves_a_usable_checkpoint(tmp_path):
    out = tmp_path / "term"
    proc = subprocess.Popen(_torchrun_cmd(2, out, "--set", "train.max_steps=100000", "--set", "train.checkpoint_interval=0"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: os.path.exists(out / "metrics.jsonl"), proc, "the first log line")
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    stdout, stderr = proc.communicate(timeout=120)
    assert "SIGTERM: saved checkpoint" in stdout, stdout[-2000:] + stderr[-3000:]
    path = find_latest_checkpoint(str(out))
    assert path is not None
    ckpt = load_checkpoint(path)
    step = ckpt["state"]["step"]
    assert 10 <= step < 100000 and ckpt["state"]["supervision"]["steps"].shape[0] == 16
    log = _train_in_process(out, step + 2)
    assert f"at step {step}" in log
    assert load_checkpoint(find_latest_checkpoint(str(out)))["state"]["step"] == step + 2
