"""Plots people look at instead of reading logs: training curves of a `caffe train` log.

``curve_panels(log)`` says what is drawn (the series of each panel, their points and how they
are joined); ``plot_training`` only draws it, so the tests check the data rather than pixels.
Panels, top to bottom: the training loss terms; the held-out retrieval scores of the
snapshots (rank-1 and mAP in %, one marker per validation point, training.heldout; a note where
the log has none); the test net's outputs (losses on training images every ``test_interval``);
the learning rate (log scale, a step function where the schedule is one, training.log.lr_curve).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from training.log import CaffeLog, lr_curve
from rmnet.atomic import atomic_path

HELDOUT = (("heldout/mAP", "held-out mAP"), ("heldout/rank1", "held-out rank-1"))


@dataclass(frozen=True)
class Curve:
    label: str
    iterations: list[int]
    values: list[float]
    drawstyle: str = "default"      # matplotlib's: "steps-post" holds each value until the next
    marker: str | None = None
    linewidth: float = 1.0


@dataclass(frozen=True)
class Panel:
    ylabel: str
    curves: list[Curve] = field(default_factory=list)
    empty: str = ""                 # shown when there is nothing to draw
    log_y: bool = False


def curve_panels(log: CaffeLog) -> list[Panel]:
    """What ``plot_training`` draws, panel by panel (see the module doc)."""
    train = sorted(k for k in log.series if k.startswith("train/") and not k.endswith("per_sample"))
    test = sorted(k for k in log.series if k.startswith("test/") and not k.endswith("per_sample"))
    if not log.series.get("loss") and not train:
        raise ValueError("the log has no training iterations (is it a `caffe train` log?)")
    panels = []
    curves = []
    for name in ["loss", *train]:
        its, vals = log.values(name)
        if its:
            curves.append(Curve(name.removeprefix("train/"), its, vals,
                                linewidth=2.0 if name == "loss" else 1.0))
    panels.append(Panel("train loss", curves))
    held = [Curve(label, its, [100 * v for v in vals], marker="o", linewidth=1.5)
            for name, label in HELDOUT for its, vals in [log.values(name)] if its]
    panels.append(Panel("held-out score (%)", held,
                        empty="no held-out scores: tools/plot_training.py LOG --heldout DIR "
                              "scores the snapshots"))
    panels.append(Panel("test net outputs",
                        [Curve(name.removeprefix("test/"), *log.values(name), marker="o")
                         for name in test],
                        empty="no test iterations in this log"))
    lr = lr_curve(log)
    panels.append(Panel("learning rate",
                        [Curve(f"lr ({'solver schedule' if lr.source == 'solver' else 'logged'})",
                               lr.iterations, lr.values, drawstyle=lr.drawstyle)]
                        if lr.iterations else [], empty="no learning rate in this log",
                        log_y=True))
    return panels


def plot_training(log: CaffeLog, out: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(log)
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 + 2.5 * len(panels)), sharex=True)
    for ax, panel in zip(axes, panels):
        for c in panel.curves:
            ax.plot(c.iterations, c.values, label=c.label, drawstyle=c.drawstyle,
                    marker=c.marker, linewidth=c.linewidth)
        if panel.log_y and panel.curves:
            ax.set_yscale("log")
        if panel.curves:
            ax.legend(fontsize=8)
        elif panel.empty:
            ax.text(0.5, 0.5, panel.empty, ha="center", transform=ax.transAxes)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
