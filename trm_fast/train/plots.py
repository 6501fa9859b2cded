"""PNG of the training curves from a run's metrics.jsonl."""
from __future__ import annotations

import json
import os

from trm_fast.files import save_figure


def plot_training_curves(metrics_path: str, png_path: str) -> str | None:
    """Loss, accuracy, mean supervision steps and throughput over optimizer steps. Returns the PNG path."""
    if not os.path.exists(metrics_path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    with open(metrics_path) as f:
        for line in f:
            record = json.loads(line)
            (train if record.get("kind") == "train" else evals).append(record)
    if not train:
        return None
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    axes[0].plot(steps, [r["lm_loss"] for r in train], label="token loss")
    axes[0].plot(steps, [r["halt_loss"] for r in train], label="halt loss")
    axes[0].set_yscale("log")
    axes[0].set_title("loss per sample")
    axes[1].plot(steps, [r["train_exact_accuracy"] for r in train], label="train exact (halted)")
    axes[1].plot(steps, [r["train_token_accuracy"] for r in train], label="train token (halted)")
    if evals:
        axes[1].plot([r["step"] for r in evals], [r["exact_accuracy"] for r in evals], "o-", label="eval exact")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("accuracy")
    axes[2].plot(steps, [r["train_mean_steps"] for r in train])
    axes[2].set_title("supervision steps at halt (train)")
    axes[3].plot(steps, [r["samples_per_s"] for r in train])
    axes[3].set_title("samples / s")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, png_path, dpi=90)


def plot_accuracy_by_step(result: dict, png_path: str, title: str = "") -> str:
    """Held-out exact and token accuracy had evaluation stopped after each supervision step (test-time compute)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, len(result["exact_accuracy_by_step"]) + 1))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(steps, result["exact_accuracy_by_step"], "o-", label="exact")
    ax.plot(steps, result["token_accuracy_by_step"], "s--", label="token")
    ax.axvline(result["mean_halt_step"], color="0.5", linestyle=":", label=f"mean halting step {result['mean_halt_step']:.2f}")
    ax.set_xlabel("supervision steps run")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(steps)
    ax.set_title(title or "accuracy by supervision step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, png_path, dpi=100)


def plot_test_time(result: dict, png_path: str, title: str = "") -> str:
    """eval --tta-sweep: held-out exact accuracy against network calls per puzzle, one line per selection with and
    without verifier-guided halting, each point labelled with its K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for verify in (False, True):
        for select, marker in (("q", "o"), ("vote", "s")):
            rows = [r for r in result["sweep"] if r["verify"] == verify and r["select"] == select]
            x = [r["network_calls_per_puzzle"] for r in rows]
            y = [r["exact_accuracy"] for r in rows]
            ax.plot(x, y, marker + ("-" if verify else "--"), label=f"{select}{', verifier halting' if verify else ''}")
            for r, xi, yi in zip(rows, x, y):
                ax.annotate(str(r["trajectories"]), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("network calls per puzzle")
    ax.set_ylabel("held-out exact accuracy")
    ax.set_title(title or f"test-time compute (noise {result['noise']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, png_path, dpi=100)
