"""The PNG of training curves drawn from metrics.jsonl: the loss, and the model's quality (pairs: train and TEST
accuracy beside "longer wins"; rated responses: train accuracy for 0/1 labels and TEST Spearman).

Imports matplotlib lazily (Agg backend); nothing from the project.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_plot(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.set_xlabel("optimizer step")
    rated = bool(evals) and "spearman" in evals[-1]
    ax_loss.set_title("pointwise loss" if rated or "rmse" in (train or [{}])[-1] else "Bradley-Terry loss")
    if train and "accuracy" in train[-1]:
        ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train accuracy")
    if evals and rated:
        spearman = [r["spearman"] if r["spearman"] is not None else float("nan") for r in evals]
        ax_acc.plot([r["step"] for r in evals], spearman, "o-", label="TEST Spearman")
    elif evals:
        ax_acc.plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-", label="TEST accuracy")
        ax_acc.axhline(evals[-1]["length_baseline_accuracy"], linestyle="--", color="grey", label="longer wins")
    ax_acc.set_xlabel("optimizer step")
    ax_acc.set_ylim(-1 if rated else 0, 1)
    ax_acc.set_title("Spearman with the rewards" if rated else "pairwise accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
