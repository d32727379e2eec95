"""Plots people look at instead of reading logs: training curves of a `caffe train` log."""
from __future__ import annotations

from pathlib import Path

from training.log import CaffeLog
from rmnet.atomic import atomic_path


def plot_training(log: CaffeLog, out: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = sorted(k for k in log.series if k.startswith("train/") and not k.endswith("per_sample"))
    test = sorted(k for k in log.series if k.startswith("test/") and not k.endswith("per_sample"))
    if not log.series.get("loss") and not train:
        raise ValueError("the log has no training iterations (is it a `caffe train` log?)")
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax = axes[0]
    for name in ["loss", *train]:
        its, vals = log.values(name)
        if its:
            ax.plot(its, vals, label=name.removeprefix("train/"),
                    linewidth=2.0 if name == "loss" else 1.0)
    ax.set_ylabel("train loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    for name in test:
        its, vals = log.values(name)
        ax.plot(its, vals, marker="o", label=name.removeprefix("test/"))
    ax.set_ylabel("test net outputs")
    if test:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no test iterations in this log", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    ax = axes[2]
    its, vals = log.values("lr")
    if its:
        ax.semilogy(its, vals)
    ax.set_ylabel("learning rate")
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
