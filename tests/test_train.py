"""The training engine: optimisers against closed forms, resume bitwise, gradient accumulation, checkpoints."""
import math
import os

import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.train.checkpoint import find_latest_checkpoint, load_checkpoint
from trm_fast.train.ema import EMA
from trm_fast.train.optim import AdamATan2, SparseSignSGD, lr_at
from trm_fast.train.trainer import Trainer, train


def test_adam_atan2_matches_its_closed_form():
    torch.manual_seed(0)
    p0 = torch.randn(5, dtype=torch.float64)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(4)]
    lr, wd, b1, b2 = 0.01, 0.5, 0.9, 0.95
    p = torch.nn.Parameter(p0.clone())
    opt = AdamATan2([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    want, m, v = p0.clone(), torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        want = want * (1 - lr * wd)
        want = want - lr / (1 - b1**t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - b2**t))
    torch.testing.assert_close(p.detach(), want, atol=1e-12, rtol=1e-12)


def test_lr_schedule():
    assert lr_at(0, 1e-4, 2000, 10000) == 0.0
    assert lr_at(1000, 1e-4, 2000, 10000) == pytest.approx(5e-5)
    assert lr_at(5000, 1e-4, 2000, 10000) == pytest.approx(1e-4)  # min_ratio 1: constant after warm-up
    assert lr_at(10000, 1e-4, 2000, 10000, min_ratio=0.1) == pytest.approx(1e-5)
    assert lr_at(6000, 1e-4, 2000, 10000, min_ratio=0.0) == pytest.approx(5e-5)


def test_sparse_sign_sgd_sums_duplicates_and_touches_only_batch_rows():
    from trm_fast.model.trm import PuzzleEmbedding

    emb = PuzzleEmbedding(6, 3)
    emb.weight.copy_(torch.arange(18, dtype=torch.float32).view(6, 3))
    before = emb.weight.clone()
    emb.train()
    for ids, grad in (([1, 4, 1], [[1.0, -2.0, 0.5], [1.0, 1.0, 1.0], [-3.0, 1.0, 0.0]]), ([4], [[-5.0, 0.0, 0.0]])):
        rows = emb(torch.tensor(ids))
        (rows * torch.tensor(grad)).sum().backward()
    opt = SparseSignSGD(emb, lr=0.1, weight_decay=0.5)
    opt.step()
    decay = 1 - 0.1 * 0.5
    torch.testing.assert_close(emb.weight[1], before[1] * decay - 0.1 * torch.tensor([-1.0, -1.0, 1.0]))
    torch.testing.assert_close(emb.weight[4], before[4] * decay - 0.1 * torch.tensor([-1.0, 1.0, 1.0]))
    for untouched in (0, 2, 3, 5):
        assert torch.equal(emb.weight[untouched], before[untouched])
    assert emb.pending == []


def test_ema_update_and_apply():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, rate=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    for s, p0 in zip(ema.shadow, start):
        torch.testing.assert_close(s, p0 + 0.1)
    live = [p.detach().clone() for p in model.parameters()]
    with ema.apply_to(model):
        torch.testing.assert_close(model.weight, start[0] + 0.1)
    for p, l in zip(model.parameters(), live):
        assert torch.equal(p, l)


def tiny(tmp_path, *extra):
    return TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path}", *extra])


def test_resume_is_bitwise(tmp_path):
    full = train(tiny(tmp_path / "full", "train.max_steps=12", "train.checkpoint_interval=6"), progress=False, log=lambda *a: None)
    first = tiny(tmp_path / "cut", "train.max_steps=6")
    train(first, progress=False, log=lambda *a: None)
    resumed = tiny(tmp_path / "cut", "train.max_steps=12", "train.checkpoint_interval=6")
    train(resumed, resume="auto", progress=False, log=lambda *a: None)
    a = load_checkpoint(full["checkpoint"])
    b = load_checkpoint(find_latest_checkpoint(str(tmp_path / "cut")))
    assert a["state"]["step"] == b["state"]["step"] == 12
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in a["ema"]:
        assert torch.equal(a["ema"][name], b["ema"][name]), name
    for key in ("carry", "steps", "halted", "inputs"):
        x, y = a["state"]["supervision"][key], b["state"]["supervision"][key]
        assert all(torch.equal(u, v) for u, v in zip(x, y)) if key == "carry" else torch.equal(x, y)


def test_gradient_accumulation_matches_one_batch(tmp_path):
    results = []
    for accum in (1, 4):
        trainer = Trainer(tiny(tmp_path / f"a{accum}", f"train.grad_accum={accum}", "train.max_steps=3"), progress=False,
                          log=lambda *a: None)
        for _ in range(3):
            from trm_fast.eval.evaluate import to_device_batch

            batch = to_device_batch(trainer.sampler.next_batch(), trainer.data.train_meta.ignore_label_id, trainer.device)
            trainer._set_lr()
            trainer.carry_step(batch)
            trainer.step += 1
        results.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=2e-6, rtol=1e-5, msg=name)


def test_per_batch_supervision_runs(tmp_path):
    summary = train(tiny(tmp_path, "train.supervision=per_batch", "train.max_steps=6"), progress=False, log=lambda *a: None)
    assert summary["steps"] >= 6 and 0 <= summary["eval"]["exact_accuracy"] <= 1


def test_corrupted_checkpoint_is_refused_and_previous_used(tmp_path):
    train(tiny(tmp_path, "train.max_steps=4", "train.checkpoint_interval=2"), progress=False, log=lambda *a: None)
    latest = find_latest_checkpoint(str(tmp_path))
    assert latest.endswith("step_00000004")
    with open(os.path.join(latest, "model.safetensors"), "r+b") as f:
        f.seek(100)
        f.write(b"garbage!")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(latest)
    with pytest.warns(UserWarning, match="skipping unusable checkpoint"):
        assert find_latest_checkpoint(str(tmp_path)).endswith("step_00000002")
    state = os.path.join(find_latest_checkpoint(str(tmp_path)), "state.pt")
    with open(state, "r+b") as f:
        f.truncate(50)
    with pytest.raises(ValueError, match="state.pt"):
        load_checkpoint(os.path.dirname(state))


def test_architecture_mismatch_is_named(tmp_path):
    from trm_fast.eval.inference import load_trained_model
    from trm_fast.model import build_model
    from trm_fast.train.checkpoint import check_compatible

    summary = train(tiny(tmp_path, "train.max_steps=2"), progress=False, log=lambda *a: None)
    other = build_model(TRMConfig.preset("sudoku4-tiny").override(["model.hidden_size=48", "model.puzzle_emb_dim=48"]).model)
    with pytest.raises(ValueError, match="shape"):
        check_compatible(load_checkpoint(summary["checkpoint"])["meta"], other)
    model, config, _ = load_trained_model(str(tmp_path))
    assert config.model.hidden_size == 32
