"""curves.png: loss, accuracy, macro-F1 and learning rate against epoch (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = ["plot_curves"]


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> str:
    """Draws the metrics history (records of `metrics.jsonl`) into a 2x2 PNG.

    Args:
      history: one dict per epoch with `epoch, lr, train_loss, val_loss, train_accuracy,
        val_accuracy, train_f1, val_f1`.
      path: output file.

    Returns:
      The path written.

    Examples:
      >>> import tempfile
      >>> h = [{"epoch": e, "lr": 0.1, "train_loss": 1 / e, "val_loss": 1.1 / e,
      ...       "train_accuracy": 0.5, "val_accuracy": 0.4, "train_f1": 0.5, "val_f1": 0.4}
      ...      for e in (1, 2)]
      >>> os.path.getsize(plot_curves(h, os.path.join(tempfile.mkdtemp(), "c.png"))) > 0
      True
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    panels = [("loss", "loss"), ("accuracy", "accuracy"), ("f1", "macro-F1")]
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for split in ("train", "val"):
            values = [r.get(f"{split}_{key}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    ax = axes.flat[3]
    ax.plot(epochs, [r["lr"] for r in history], marker="o", color="tab:green")
    ax.set_title("learning rate")
    ax.set_xlabel("epoch")
    if all(r["lr"] > 0 for r in history):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.fspath(path)
