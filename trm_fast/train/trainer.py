"""The training engine: deep supervision on a persistent per-sample carry (or the paper's per-batch N_sup loop),
AdamATan2/AdamW for dense weights, sparse sign-SGD for puzzle embeddings, warm-up schedule, EMA, gradient
accumulation, periodic evaluation, atomic checkpoints with exact resume, a JSONL metrics log and a PNG of the
training curves.

    summary = train(TRMConfig.preset("sudoku6-demo"))
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from trm_fast.config import TRMConfig
from trm_fast.data.format import load_data, to_device_batch
from trm_fast.device import resolve_device
from trm_fast.eval.evaluate import evaluate
from trm_fast.files import atomic_write_json, atomic_write_text
from trm_fast.model import build_model, count_parameters
from trm_fast.train.act import SupervisionState, supervision_step
from trm_fast.train.losses import model_token_loss, supervision_loss
from trm_fast.train.tracking import Trackers


def fit_model_to_data(config: TRMConfig, meta, log=print) -> None:
    """The dataset decides vocab size, sequence length and the number of puzzle identifiers."""
    model = config.model
    for field, value in (("vocab_size", meta.vocab_size), ("seq_len", meta.seq_len),
                         ("num_puzzle_identifiers", meta.num_puzzle_identifiers)):
        if getattr(model, field) != value:
            if field != "num_puzzle_identifiers":
                log(f"model.{field}: {getattr(model, field)} -> {value} (from the dataset)")
            setattr(model, field, int(value))
    model.validate()


def ids_in_model_ranges(metas, model_config) -> bool:
    """Whether every token and puzzle id of datasets validated at load against `metas` (trm_fast.data.format: each
    id below its dataset.json's vocab_size / num_puzzle_identifiers) lies in the model's ranges."""
    return all(meta.vocab_size <= model_config.vocab_size and
               meta.num_puzzle_identifiers <= model_config.num_puzzle_identifiers for meta in metas)


def total_train_steps(config: TRMConfig, meta) -> int:
    if config.train.max_steps:
        return config.train.max_steps
    examples = config.train.epochs * meta.examples_per_epoch
    return max(1, int(examples / config.data.global_batch_size))


def epochs_per_iteration(config: TRMConfig, meta, min_batches: int = 100) -> int:
    """data.epochs_per_iter, or (0 = auto) the fewest epochs whose examples fill `min_batches` global batches."""
    if config.data.epochs_per_iter:
        return config.data.epochs_per_iter
    return max(1, math.ceil(min_batches * config.data.global_batch_size / max(1.0, meta.examples_per_epoch)))


class Trainer:
    def __init__(self, config: TRMConfig, progress: bool = True, log=None):
        from trm_fast.data.sampler import TrainSampler
        from trm_fast.train.ema import EMA
        from trm_fast.train.optim import SparseSignSGD, build_dense_optimizer

        self.config = config
        self.progress = progress
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world_size = torch.distributed.get_world_size() if self.distributed else 1
        self.log = log or (print if self.rank == 0 else (lambda *a, **k: None))
        cfg_t, cfg_d = config.train, config.data
        if cfg_d.global_batch_size % (self.world_size * cfg_t.grad_accum):
            raise ValueError(
                f"config field data.global_batch_size = {cfg_d.global_batch_size} must be divisible by "
                f"world size x train.grad_accum = {self.world_size} x {cfg_t.grad_accum}"
            )
        self.local_batch = cfg_d.global_batch_size // self.world_size
        self.micro_batch = self.local_batch // cfg_t.grad_accum
        # loss summed over this rank's samples -> gradient of the global batch's mean (DDP averages over ranks)
        self.loss_scale = self.world_size / cfg_d.global_batch_size

        self.device = resolve_device(cfg_t.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", torch.cuda.current_device())
        torch.manual_seed(cfg_t.seed)
        # numpy's and python's global generators too: checkpoints save their states, so two runs of one seed save
        # the same ones (nothing of the training draws from them; numpy takes 32-bit seeds)
        np.random.seed(cfg_t.seed % (1 << 32))
        random.seed(cfg_t.seed)
        from trm_fast.train.distributed import rank_zero_first

        with rank_zero_first():  # an embedded recipe is built once, by rank 0, before the others read it
            self.data = load_data(config, log=self.log)
        fit_model_to_data(config, self.data.train_meta, log=self.log)
        self.total_steps = total_train_steps(config, self.data.train_meta)

        self.model = build_model(config.model)
        if cfg_t.puzzle_emb_device == "cpu":
            emb = getattr(self.model, "puzzle_emb", None)
            if emb is None:
                self.log("train.puzzle_emb_device=cpu: this model has no puzzle-embedding table; nothing to keep on the host")
            else:
                emb.keep_on_host()  # .to(device) below leaves the (pinned) table in host memory
        self.model = self.model.to(self.device)
        self.model.train()
        # the batches' ids were range-checked at load: the model's per-step check (device syncs on a GPU) is moot
        self.model.check_input_ranges = not ids_in_model_ranges((self.data.train_meta, self.data.test_meta),
                                                                config.model)
        self.forward_model = self.model
        if self.distributed:
            from trm_fast.train.distributed import wrap_model

            self.forward_model = wrap_model(self.model, self.device)
        if cfg_t.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.dense_opt = build_dense_optimizer(cfg_t, [p for p in self.model.parameters() if p.requires_grad])
        emb = getattr(self.model, "puzzle_emb", None)
        self.sparse_opt = SparseSignSGD(emb, cfg_t.puzzle_emb_lr, cfg_t.puzzle_emb_weight_decay) if emb is not None else None
        self.ema = EMA(self.model, cfg_t.ema_rate) if cfg_t.ema else None
        self.sampler = TrainSampler(self.data.train_set, cfg_d.global_batch_size, cfg_t.seed,
                                    rank=self.rank, world_size=self.world_size,
                                    epochs_per_iter=epochs_per_iteration(config, self.data.train_meta))
        self.state = SupervisionState.fresh(self.model, self.local_batch, config.model.seq_len, self.device)
        self.step = 0
        self.sparse_lr = 0.0  # the puzzle table's rate of the current step (_set_lr)
        self.slot_index = torch.arange(self.local_batch, device=self.device, dtype=torch.int64) + self.rank * self.local_batch
        self.run_dir = cfg_t.out_dir
        self.metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
        self._stop_requested = False
        self.initialised_from = None  # the checkpoint init_from loaded (recorded in this run's checkpoints)
        self.trackers = Trackers([])  # train() opens the ones --log names
        self.graphed_step = None
        if cfg_t.cuda_graphs:
            from trm_fast.train.cuda_graph import make_graphed_step

            # None, after one line saying why, where capture is impossible
            self.graphed_step = make_graphed_step(self.carry_step_parts())

    def carry_step_parts(self):
        """What the CUDA-graph step works with (trm_fast.train.cuda_graph.CarryStepParts)."""
        from trm_fast.train.cuda_graph import CarryStepParts

        return CarryStepParts(
            train=self.config.train, device=self.device, distributed=self.distributed, model=self.model,
            forward_model=self.forward_model, dense_opt=self.dense_opt, sparse_opt=self.sparse_opt, ema=self.ema,
            local_batch=self.local_batch, micro_batch=self.micro_batch, loss_scale=self.loss_scale,
            slot_index=self.slot_index, log=self.log)

    # -- checkpoints ---------------------------------------------------------------------------------
    def train_state(self, supervision: SupervisionState | None = None) -> dict:
        """Everything a checkpoint holds besides the weights; `supervision` replaces this rank's training carry
        (the carry of every rank, gathered by a multi-process save)."""
        from trm_fast.checkpoint import capture_rng_state
        from trm_fast.data.format import dataset_manifest

        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "dense_optimizer": self.dense_opt.state_dict(),
            "sparse_optimizer": self.sparse_opt.state_dict() if self.sparse_opt else {},
            "supervision": (self.state if supervision is None else supervision).state_dict(),
            "rng": capture_rng_state(),
            "sampler": self.sampler.state_dict(),
            "dataset_manifest": dataset_manifest(self.data.root),
            **({"initialised_from": self.initialised_from} if self.initialised_from else {}),
        }

    def save(self) -> str | None:
        from trm_fast.checkpoint import save_checkpoint

        if self.distributed:
            from trm_fast.train.distributed import gather_train_state

            state = gather_train_state(self.state, self.train_state)
        else:
            state = self.train_state()
        if self.rank != 0:
            return None
        return save_checkpoint(
            self.run_dir, self.step,
            model_state=self.model.state_dict(),
            ema_state=self.ema.state_dict() if self.ema else None,
            train_state=state,
            keep_last=self.config.train.keep_checkpoints,
        )

    def _on_rank_zero(self, choose):
        """choose() run by rank 0 alone (it may print warnings), its result, or its ValueError, on every rank."""
        from trm_fast.train.distributed import broadcast_object

        outcome = None
        if self.rank == 0:
            try:
                outcome = (True, choose())
            except ValueError as exc:
                outcome = (False, str(exc))
        ok, value = broadcast_object(outcome)
        if not ok:
            raise ValueError(value)
        return value

    def _newest_usable_checkpoint(self, allow_fresh: bool) -> str | None:
        """`--resume auto`'s choice: this run's newest checkpoint that verifies; None when the run has none at all.
        When every one is unusable: a ValueError naming each and why, unless `allow_fresh` (then None too)."""
        from trm_fast.checkpoint import scan_checkpoints

        path, skipped = scan_checkpoints(self.run_dir)
        root = os.path.join(self.run_dir, "checkpoints")
        if path is None and skipped and not allow_fresh:
            count = "the only checkpoint" if len(skipped) == 1 else f"none of the {len(skipped)} checkpoints"
            raise ValueError(f"--resume auto: {count} under {root} is usable: {'; '.join(skipped)}. Repair or "
                             "remove them, or add --allow-fresh to start from step 0")
        for reason in skipped:
            self.log(f"warning: skipping unusable checkpoint: {reason}")
        if path is None:
            self.log(f"resume auto: no {'usable ' if skipped else ''}checkpoint under {root}, starting fresh"
                     + (" (--allow-fresh)" if skipped else ""))
        return path

    def resume(self, path: str, allow_fresh: bool = False) -> bool:
        """Continues from a checkpoint folder, a run folder (its newest usable checkpoint) or "auto" (this run's).
        Returns False when "auto" found nothing to resume (a fresh start)."""
        from trm_fast.checkpoint import check_compatible, check_train_state, load_checkpoint, resolve_checkpoint
        from trm_fast.checkpoint import restore_rng_state

        if path == "auto":
            path = self._on_rank_zero(lambda: self._newest_usable_checkpoint(allow_fresh))  # one choice for all
            if path is None:
                return False
        else:
            path = self._on_rank_zero(lambda: resolve_checkpoint(path))
        ckpt = load_checkpoint(path, map_location=self.device)
        state = ckpt["state"]
        if "imported_from" in state:
            raise ValueError(f"checkpoint {path} was written by `trm-fast convert import`: it holds weights but no "
                             "optimiser, sampler or training carry to resume; start a run from it with "
                             f"--init-from {path}")
        check_train_state(path, state, ("step", "dense_optimizer", "sparse_optimizer", "sampler", "supervision", "rng"),
                          "resuming")
        check_compatible(ckpt["meta"], self.model)
        from trm_fast.data.format import dataset_manifest

        if state.get("dataset_manifest") and state["dataset_manifest"] != dataset_manifest(self.data.root):
            self.log(f"warning: the dataset under {self.data.root} differs from the one checkpoint {path} was trained on")
        state_path = os.path.join(path, "state.pt")

        def restore(entry: str, apply) -> None:
            # an entry of the right name whose content does not fit: one line naming the file and the entry
            try:
                apply()
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ValueError(f"{state_path}: its {entry!r} entry does not fit this run ({reason})") from None

        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        restore("dense_optimizer", lambda: self.dense_opt.load_state_dict(state["dense_optimizer"]))
        if self.sparse_opt is not None:
            restore("sparse_optimizer", lambda: self.sparse_opt.load_state_dict(state["sparse_optimizer"]))
        restore("sampler", lambda: self.sampler.load_state_dict(state["sampler"]))

        def load_carry():
            if self.distributed:
                from trm_fast.train.distributed import scatter_supervision_state

                self.state = scatter_supervision_state(state["supervision"], self.rank, self.world_size,
                                                       self.local_batch, self.device)
            else:
                self.state = SupervisionState.from_state_dict(state["supervision"], self.device)

        restore("supervision", load_carry)
        from trm_fast.train.distributed import rng_state_for_rank

        restore("rng", lambda: restore_rng_state(rng_state_for_rank(state, self.rank, self.world_size)))
        self.step = int(state["step"])
        self.initialised_from = state.get("initialised_from")
        self.log(f"resumed from {path} at step {self.step}")
        return True

    def init_from(self, source: str, reinit_puzzle_emb: bool = False) -> None:
        """Starts this run from the weights of a checkpoint folder, a run folder (its newest usable checkpoint) or
        what `trm-fast convert import` wrote: the model's tensors, the EMA where saved (else the EMA starts from the
        weights), the puzzle-embedding table; fresh optimiser states, schedule, sampler and carry. The architecture
        must be this config's. A table with another number of rows (another dataset's puzzles) is refused, or
        left at its initialisation (zeros) with `reinit_puzzle_emb`, which also discards a table that fits."""
        from trm_fast.checkpoint import PUZZLE_TABLE, check_compatible, load_checkpoint, resolve_checkpoint
        from trm_fast.data.format import dataset_manifest

        path = self._on_rank_zero(lambda: resolve_checkpoint(source))
        ckpt = load_checkpoint(path, map_location="cpu")
        state = ckpt["state"]
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        preset = config.get("name", "unknown")
        try:
            check_compatible(ckpt["meta"], self.model, rows_may_differ=(PUZZLE_TABLE,))
        except ValueError as exc:
            raise ValueError(f"--init-from {path}: {exc} (the checkpoint's preset: {preset})") from None
        weights = dict(ckpt["model"])
        table_note = ""
        if PUZZLE_TABLE in weights:
            rows, ours = weights[PUZZLE_TABLE].shape[0], self.config.model.num_puzzle_identifiers
            if rows != ours and not reinit_puzzle_emb:
                raise ValueError(f"--init-from {path}: its puzzle-embedding table has {rows} rows, this dataset has "
                                 f"{ours} puzzle identifiers: add --reinit-puzzle-emb to start the table from zeros "
                                 f"(every other weight is still loaded)")
            if reinit_puzzle_emb:
                del weights[PUZZLE_TABLE]
                table_note = "; the puzzle-embedding table starts from zeros (--reinit-puzzle-emb)"
            elif state.get("dataset_manifest") and state["dataset_manifest"] != dataset_manifest(self.data.root):
                table_note = (f"; note: it was trained on another dataset than {self.data.root}, and its "
                              "puzzle-embedding table follows that one's puzzle identifiers (--reinit-puzzle-emb "
                              "starts it from zeros)")
        # names and shapes were checked above: only the table left at its initialisation may be missing
        self.model.load_state_dict(weights, strict=not reinit_puzzle_emb)
        with_ema = self.ema is not None and ckpt["ema"] is not None
        if self.ema is not None:  # built from the random initialisation: restart it from what was loaded
            self.ema.load_state_dict(ckpt["ema"] if with_ema else {name: weights[name] for name in self.ema.names})
        self.state = SupervisionState.fresh(self.model, self.local_batch, self.config.model.seq_len, self.device)
        self.initialised_from = path
        self.log(f"initialised from {path} (step {ckpt['meta'].get('step')}, preset {preset}): weights"
                 f"{' and EMA' if with_ema else ''} loaded; fresh optimiser, schedule, sampler and carry{table_note}")

    # -- one optimizer step --------------------------------------------------------------------------
    def _set_lr(self) -> float:
        from trm_fast.train.optim import lr_at

        t = self.config.train
        lr = lr_at(self.step + 1, t.lr, t.lr_warmup_steps, self.total_steps, t.lr_min_ratio)
        for group in self.dense_opt.param_groups:
            group["lr"] = lr
        self.sparse_lr = lr_at(self.step + 1, t.puzzle_emb_lr, t.lr_warmup_steps, self.total_steps, t.lr_min_ratio)
        return lr

    def _optimizer_step(self) -> None:
        self.dense_opt.step()
        self.dense_opt.zero_grad(set_to_none=True)
        if self.sparse_opt is not None:
            self.sparse_opt.step(self.sparse_lr)
        if self.ema is not None:
            self.ema.update()

    def carry_step(self, batch: dict) -> dict:
        """One optimizer step of the published scheme: one supervision step of every slot."""
        from trm_fast.train.distributed import sync_gradients

        if self.graphed_step is not None and self.graphed_step.active:
            graphed = self.graphed_step(batch, self.state, self.step, self.sparse_lr)
            if graphed is not None:  # None: capture failed, the eager step below from now on
                metrics, self.state = graphed
                return metrics

        t = self.config.train
        metrics = {}
        parts = []
        for start in range(0, self.local_batch, self.micro_batch):
            stop = start + self.micro_batch
            micro = {k: v[start:stop] for k, v in batch.items()}
            with sync_gradients(self.forward_model, now=stop == self.local_batch):  # DDP all-reduces once per step
                result = supervision_step(
                    self.forward_model, self.state.slice(start, stop), micro, step=self.step, seed=t.seed,
                    slot_index=self.slot_index[start:stop], training=True, loss_kind=t.loss,
                )
                (result.loss.total * self.loss_scale).backward()
            parts.append(result.state)
            _accumulate(metrics, result.metrics)
            _accumulate(metrics, {"lm_loss": result.loss.lm, "halt_loss": result.loss.halt, "loss_rows": torch.tensor(stop - start)})
        self.state = SupervisionState.concat(parts)
        self._optimizer_step()
        return metrics

    def per_batch_steps(self, batch: dict) -> list[dict]:
        """The paper's loop: up to N_sup = halt_max_steps optimizer steps on one batch, each sample stopping
        once q_halt > 0; halted samples leave the loss. Returns the metrics of each optimizer step."""
        cfg = self.model.config
        t = self.config.train
        carry = self.model.initial_carry(self.local_batch, self.device)
        active = torch.ones(self.local_batch, dtype=torch.bool, device=self.device)
        history = []
        for sup_step in range(cfg.halt_max_steps):
            self._set_lr()
            out = self.forward_model(carry, batch["inputs"], batch["puzzle_identifiers"])
            loss = supervision_loss(out.logits, batch["labels"], out.q_halt, out.q_continue, t.loss,
                                    sample_weight=active.to(torch.float32),
                                    token_cross_entropy=model_token_loss(self.model, self.device))
            (loss.total * self.loss_scale).backward()
            self._optimizer_step()
            self.step += 1
            carry = out.carry
            with torch.no_grad():
                halting = active & ((out.q_halt > 0) | torch.tensor(sup_step == cfg.halt_max_steps - 1, device=self.device))
                counted = halting & loss.supervised
                history.append({
                    "count": counted.sum(), "exact_accuracy": (counted & loss.seq_correct).sum(),
                    "token_accuracy": torch.where(counted, loss.token_correct, 0.0).sum(),
                    "halt_accuracy": (counted & ((out.q_halt >= 0) == loss.seq_correct)).sum(),
                    "steps": counted.sum() * (sup_step + 1), "lm_loss": loss.lm, "halt_loss": loss.halt,
                    "loss_rows": active.sum(),
                })
                active = active & ~halting
            if self.step >= self.total_steps or not self._any_rank(bool(active.any())):
                break
        return history

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, use_ema: bool = True, progress: bool | None = None) -> dict:
        from trm_fast.eval.evaluate import arc_scores, arc_voter_for

        batch = self.config.data.eval_batch_size or self.config.data.global_batch_size
        voter = arc_voter_for(self.data.root)
        run = lambda: evaluate(self.model, self.data.test_set, self.data.test_meta, batch, self.device,
                               rank=self.rank, world_size=self.world_size,
                               progress=self.progress if progress is None else progress, arc_voter=voter,
                               per_step=self.trackers.requested)  # the trackers' per-step curve
        if use_ema and self.ema is not None:
            with self.ema.apply_to(self.model):
                result = run()
        else:
            result = run()
        if voter is not None:
            result.update(arc_scores(voter, self.run_dir, rank=self.rank))
        return result

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        t = self.config.train
        os.makedirs(self.run_dir, exist_ok=True)
        if self.rank == 0:
            atomic_write_text(os.path.join(self.run_dir, "config.json"), self.config.to_json())
        self.log(
            f"trm_fast: {self.config.name} on {self.device}{_cpu_threads(self.device)} "
            f"({self.world_size} process{'es' if self.world_size > 1 else ''}), "
            f"{count_parameters(self.model):,} parameters, backend {self.model.backend(self.device)}, "
            f"{self.total_steps} optimizer steps, global batch {self.config.data.global_batch_size}, "
            f"train {len(self.data.train_set.inputs)} / test {len(self.data.test_set.inputs)} examples"
        )
        previous_handler = _install_sigterm(self)
        start_time = time.time()
        tokens_per_sample = self.config.model.total_seq_len
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not self.progress or self.rank != 0,
                   dynamic_ncols=True)
        window: dict = {}
        window_start, window_steps = time.time(), 0
        last_eval = None
        try:
            while self.step < self.total_steps:
                batch = to_device_batch(self.sampler.next_batch(), self.data.train_meta.ignore_label_id, self.device)
                if t.supervision == "carry":
                    lr = self._set_lr()
                    step_metrics = [self.carry_step(batch)]
                    self.step += 1
                else:
                    lr = self.config.train.lr
                    step_metrics = self.per_batch_steps(batch)
                for m in step_metrics:
                    _accumulate(window, m)
                window_steps += len(step_metrics)
                bar.update(len(step_metrics))
                if self.step % t.log_interval < len(step_metrics) or self.step >= self.total_steps:
                    record = self._log_record(window, window_steps, time.time() - window_start, lr, tokens_per_sample)
                    bar.set_postfix(loss=f"{record['lm_loss']:.3f}", exact=f"{record['train_exact_accuracy']:.3f}",
                                    steps=f"{record['train_mean_steps']:.1f}", sps=f"{record['samples_per_s']:.0f}")
                    window, window_start, window_steps = {}, time.time(), 0
                if t.eval_interval and self.step % t.eval_interval < len(step_metrics) and self.step < self.total_steps:
                    last_eval = self.evaluate()
                    self._write_jsonl({"step": self.step, "kind": "eval", **last_eval})
                    self.log(f"step {self.step}: eval exact {last_eval['exact_accuracy']:.4f}, token {last_eval['token_accuracy']:.4f}")
                if t.checkpoint_interval and self.step % t.checkpoint_interval < len(step_metrics):
                    self.save()
                out_of_time = bool(t.max_minutes) and (time.time() - start_time) / 60.0 >= t.max_minutes
                if self._any_rank(out_of_time or self._stop_requested):  # every rank stops at the same step
                    self._stop_requested = self._any_rank(self._stop_requested)
                    break
        finally:
            bar.close()
            _restore_sigterm(previous_handler)
        train_seconds = time.time() - start_time
        if self._stop_requested:
            path = self.save()
            self.log(f"SIGTERM: saved checkpoint {path} at step {self.step}")
            return {"step": self.step, "interrupted": True, "checkpoint": path}
        stopped_early = None
        if self.step < self.total_steps:  # only the time cap ends the loop early without SIGTERM
            stopped_early = _stopped_early_warning(t.max_minutes, self.step, self.total_steps)
            self.log(stopped_early)
        final = self.evaluate()
        self._write_jsonl({"step": self.step, "kind": "eval", **final})
        path = self.save()
        summary = {
            "preset": self.config.name, "steps": self.step, "train_seconds": round(train_seconds, 1),
            "device": str(self.device), "parameters": count_parameters(self.model), "checkpoint": path,
            "eval": final, "run_dir": self.run_dir, "planned_steps": self.total_steps,
        }
        if stopped_early:
            summary["stopped_early"] = stopped_early
        if self.rank == 0:
            from trm_fast.train.plots import plot_training_curves

            summary["curves_png"] = plot_training_curves(self.metrics_path, os.path.join(self.run_dir, "curves.png"))
            atomic_write_json(os.path.join(self.run_dir, "summary.json"), summary)
        self.log(
            f"done: {self.step} steps in {train_seconds / 60:.1f} min; held-out exact accuracy {final['exact_accuracy']:.4f} "
            f"(token {final['token_accuracy']:.4f}, halting {final['halt_accuracy']:.4f}) over {final['count']} puzzles "
            f"with {final['steps']} steps; the model halts after {final['mean_halt_step']:.2f} steps on average "
            f"(exact {final['exact_accuracy_at_halt']:.4f} there); checkpoint {path}"
        )
        if stopped_early:
            self.log(stopped_early)  # again, last: the accuracy just printed is that of a cut-short run
        return summary

    def _any_rank(self, flag: bool) -> bool:
        """True when `flag` is true on any rank (a collective under torch.distributed)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def _log_record(self, window: dict, steps: int, seconds: float, lr: float, tokens_per_sample: int) -> dict:
        values = {k: float(v) for k, v in window.items()}
        if self.distributed:
            from trm_fast.train.distributed import all_reduce_sums

            values = all_reduce_sums(values, self.device)
        count = max(values.get("count", 0.0), 1.0)
        rows = max(values.get("loss_rows", 0.0), 1.0)
        samples = steps * self.config.data.global_batch_size
        record = {
            "step": self.step, "kind": "train", "lr": lr,
            "lm_loss": values.get("lm_loss", 0.0) / rows, "halt_loss": values.get("halt_loss", 0.0) / rows,
            "train_exact_accuracy": values.get("exact_accuracy", 0.0) / count,
            "train_token_accuracy": values.get("token_accuracy", 0.0) / count,
            "train_halt_accuracy": values.get("halt_accuracy", 0.0) / count,
            "train_mean_steps": values.get("steps", 0.0) / count,
            "halted": int(values.get("count", 0.0)),
            "samples_per_s": samples / max(seconds, 1e-9),
            "tokens_per_s": samples * tokens_per_sample / max(seconds, 1e-9),
            "epoch": self.sampler.epoch,
            "peak_memory_mb": _peak_memory_mb(self.device),
        }
        self._write_jsonl(record)
        return record

    def _write_jsonl(self, record: dict) -> None:
        if self.rank != 0:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({k: v for k, v in record.items() if not isinstance(v, torch.Tensor)}) + "\n")
        self.trackers.log(record)


def _cpu_threads(device: torch.device) -> str:
    """' with N threads' on a CPU (trm_fast.threads chose N for the machine, unless the environment did)."""
    if device.type != "cpu":
        return ""
    n = torch.get_num_threads()
    return f" with {n} thread{'s' if n > 1 else ''}"


def _stopped_early_warning(max_minutes: float, step: int, planned: int) -> str:
    missing = planned - step
    return (f"WARNING: STOPPED EARLY: train.max_minutes = {max_minutes:g} ended training at step {step} of {planned}; "
            f"{missing} steps ({100 * missing / planned:.0f}% of the training) were not run, so the model is "
            f"undertrained and its accuracy below what {planned} steps give (train.max_minutes=0 runs every step)")


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: the allocator's peak so far; CPU: the process's peak resident set (no allocator statistics there)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # Unix only, as the CPU path's memory figure

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _accumulate(into: dict, values: dict) -> None:
    for key, value in values.items():
        value = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
        into[key] = into[key] + value if key in into else value


def _install_sigterm(trainer: Trainer):
    """SIGTERM asks the loop to stop after the current step and save a checkpoint."""
    def handler(signum, frame):
        trainer._stop_requested = True

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _restore_sigterm(previous) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            pass


def train(config: TRMConfig, resume: str | None = None, progress: bool = True, log=None, init_from: str | None = None,
          reinit_puzzle_emb: bool = False, allow_fresh: bool = False, overwrite: bool = False, trackers=()) -> dict:
    """Trains a run described by `config` and returns its summary (final evaluation, checkpoint path).

    resume: a checkpoint folder, a run folder or "auto" (this run's newest usable checkpoint; a run without any
    starts fresh, one whose checkpoints are all unusable is refused unless `allow_fresh`). init_from: start from
    another checkpoint's weights (Trainer.init_from); with resume="auto" only when the run has no checkpoint yet.
    A train.out_dir holding a run of another configuration is refused unless `resume` continues it or `overwrite`
    replaces it (trm_fast.train.run_folder); `trackers` names experiment trackers (trm_fast.train.tracking.TRACKERS)."""
    from trm_fast.train.run_folder import claim_run_folder
    from trm_fast.train.tracking import open_trackers

    if init_from and resume not in (None, "auto"):
        raise ValueError("--resume PATH and --init-from exclude each other (--resume auto --init-from CKPT resumes "
                         "the run when it has a checkpoint, else starts from CKPT)")
    if allow_fresh and resume != "auto":
        raise ValueError("--allow-fresh only goes with --resume auto")
    if reinit_puzzle_emb and not init_from:
        raise ValueError("--reinit-puzzle-emb only goes with --init-from")
    trainer = Trainer(config, progress=progress, log=log)
    _on_rank_zero(trainer, lambda: claim_run_folder(trainer.run_dir, trainer.config.to_dict(), resume, overwrite,
                                                    log=trainer.log))
    resumed = trainer.resume(resume, allow_fresh=allow_fresh) if resume else False
    if init_from and not resumed:
        trainer.init_from(init_from, reinit_puzzle_emb=reinit_puzzle_emb)
    trainer.trackers = open_trackers(trackers, trainer.run_dir, trainer.config.to_dict(), trainer.step, trainer.rank)
    try:
        return trainer.fit()
    finally:
        trainer.trackers.close()


def _on_rank_zero(trainer: Trainer, check) -> None:
    """Runs `check` on rank 0; a ValueError it raises is raised on every rank (none waits for the others)."""
    from trm_fast.train.distributed import broadcast_object

    refusal = None
    if trainer.rank == 0:
        try:
            check()
        except ValueError as exc:
            refusal = str(exc)
    refusal = broadcast_object(refusal)
    if refusal:
        raise ValueError(refusal)
