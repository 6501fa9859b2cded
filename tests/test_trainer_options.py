"""Trainer options: learning rate of the first step, sampler packing, host puzzle table, CUDA-graph fallback,
torch.compile. Each option is checked against the plain eager trainer on the same seed."""
import math

import pytest
import torch

from trm_fast.config import TRMConfig
from trm_fast.data.format import to_device_batch
from trm_fast.train.optim import lr_at
from trm_fast.train.trainer import Trainer, epochs_per_iteration, train


def tiny(tmp_path, *extra):
    return TRMConfig.preset("sudoku4-tiny").override([f"train.out_dir={tmp_path}", *extra])


def run_steps(trainer: Trainer, steps: int) -> dict:
    for _ in range(steps):
        batch = to_device_batch(trainer.sampler.next_batch(), trainer.data.train_meta.ignore_label_id, trainer.device)
        trainer._set_lr()
        trainer.carry_step(batch)
        trainer.step += 1
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    state["carry_steps"] = trainer.state.steps.clone()
    return state


def test_first_step_uses_step_one_of_the_schedule(tmp_path):
    """The published loop increments its step counter before asking for the rate: the first update is not lr 0."""
    trainer = Trainer(tiny(tmp_path, "train.lr_warmup_steps=10", "train.lr=1e-3"), progress=False, log=lambda *a: None)
    assert trainer._set_lr() == pytest.approx(1e-4)
    assert trainer.sparse_lr == pytest.approx(lr_at(1, trainer.config.train.puzzle_emb_lr, 10, trainer.total_steps))
    trainer.step = 9
    assert trainer._set_lr() == pytest.approx(1e-3)


def test_epochs_per_iteration_auto_and_explicit(tmp_path):
    config = tiny(tmp_path)
    trainer = Trainer(config, progress=False, log=lambda *a: None)
    meta = trainer.data.train_meta
    per_epoch = meta.total_groups * meta.mean_puzzle_examples
    auto = epochs_per_iteration(config, meta)
    assert auto == max(1, math.ceil(100 * config.data.global_batch_size / per_epoch))
    assert trainer.sampler.epochs_per_iter == auto
    assert auto * per_epoch >= 100 * config.data.global_batch_size > (auto - 1) * per_epoch or auto == 1
    assert epochs_per_iteration(config.override(["data.epochs_per_iter=7"]), meta) == 7
    with pytest.raises(ValueError, match="epochs_per_iter"):
        config.override(["data.epochs_per_iter=-1"])


def test_host_puzzle_table_trains_like_the_device_table(tmp_path):
    logs = []
    same = run_steps(Trainer(tiny(tmp_path / "a"), progress=False, log=lambda *a: None), 4)
    host_trainer = Trainer(tiny(tmp_path / "b", "train.puzzle_emb_device=cpu"), progress=False, log=logs.append)
    assert host_trainer.model.puzzle_emb.on_host
    host = run_steps(host_trainer, 4)
    assert not torch.equal(host["puzzle_emb.weight"], torch.zeros_like(host["puzzle_emb.weight"]))  # it was trained
    for name in same:
        assert torch.equal(same[name], host[name]), name


def test_cuda_graphs_fall_back_with_one_line_and_train_the_same(tmp_path):
    logs = []
    eager = run_steps(Trainer(tiny(tmp_path / "a"), progress=False, log=lambda *a: None), 3)
    graphed_trainer = Trainer(tiny(tmp_path / "b", "train.cuda_graphs=true"), progress=False, log=logs.append)
    assert graphed_trainer.graphed_step is None
    messages = [m for m in logs if "cuda_graphs" in m]
    assert len(messages) == 1 and "CUDA graphs need CUDA" in messages[0] and "eagerly" in messages[0]
    graphed = run_steps(graphed_trainer, 3)
    for name in eager:
        assert torch.equal(eager[name], graphed[name]), name


def test_compiled_forward_trains_like_eager(tmp_path):
    steps = 2
    eager = run_steps(Trainer(tiny(tmp_path / "a"), progress=False, log=lambda *a: None), steps)
    compiled_trainer = Trainer(tiny(tmp_path / "b", "train.compile=true"), progress=False, log=lambda *a: None)
    assert compiled_trainer.forward_model is not compiled_trainer.model
    compiled = run_steps(compiled_trainer, steps)
    assert torch.equal(eager["carry_steps"], compiled["carry_steps"])  # same halting decisions
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], atol=1e-5, rtol=1e-4, msg=name)


def test_host_table_checkpoint_round_trip(tmp_path):
    summary = train(tiny(tmp_path, "train.puzzle_emb_device=cpu", "train.max_steps=3"), progress=False,
                    log=lambda *a: None)
    trainer = Trainer(tiny(tmp_path, "train.puzzle_emb_device=cpu", "train.max_steps=3"), progress=False,
                      log=lambda *a: None)
    trainer.resume(summary["checkpoint"])
    assert trainer.model.puzzle_emb.on_host and trainer.model.puzzle_emb.weight.device.type == "cpu"
    assert trainer.step == 3
