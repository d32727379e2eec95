"""The verification ROC (``rmnet.eval.metrics.roc_curve``) as a PNG: TPR against FPR on a log
axis, from one negative pair in all of them to 1, with the reported FPR targets marked."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rmnet.atomic import atomic_path
from rmnet.eval.metrics import ROC_FPRS, RocResult


def plot_roc(roc: RocResult, out: str | Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1.0 / max(roc.num_negative, 1)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.step(np.maximum(roc.fpr, floor), roc.tpr, where="post", linewidth=1.5)
    for t in ROC_FPRS:
        if t >= floor:
            v = roc.tpr_at_fpr(t)
            ax.plot([t], [v], "o", color="C3")
            ax.annotate(f"{100 * v:.1f}% at {t:g}", (t, v), textcoords="offset points",
                        xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"false positive rate ({roc.num_negative} negative pairs)")
    ax.set_ylabel(f"true positive rate ({roc.num_positive} positive pairs)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "verification ROC (distance <= threshold)", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
