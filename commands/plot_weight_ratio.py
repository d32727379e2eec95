#!/usr/bin/env python3
"""Figure 4 of the paper: per convolution layer, the ratio |w|max / |w|min of filter magnitudes.

    .venv/bin/python tools/plot_weight_ratio.py relu.caffemodel elu.caffemodel \
        --labels ReLU ELU -o figure4.png [--norm l2|max|l1] [--json ratios.json]

Layers are ordered by the first model's ratios (the paper orders by the ReLU model), on a log
scale, one line per model; only layers present in every model are compared. See training/filter_ratio.py
for what "filter magnitude" means here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from training.filter_ratio import NORMS, conv_weights, filter_ratio  # noqa: E402
from rmnet.atomic import atomic_path  # noqa: E402
from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402


def ratios(models: list[Path], norm: str) -> tuple[list[str], list[list[float]]]:
    weights = [conv_weights(m) for m in models]
    common = [name for name in weights[0] if all(name in w for w in weights[1:])]
    if not common:
        raise ValueError("the caffemodels share no Convolution layer names")
    table = [[filter_ratio(w[name], norm) for name in common] for w in weights]
    order = sorted(range(len(common)), key=lambda i: table[0][i])
    return [common[i] for i in order], [[row[i] for i in order] for row in table]


@command('plot_weight_ratio')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("caffemodels", type=Path, nargs="+")
    ap.add_argument("--labels", nargs="+", help="one label per caffemodel (default: file names)")
    ap.add_argument("--norm", choices=NORMS, default="l2")
    ap.add_argument("-o", "--out", type=Path, default=Path("figure4.png"))
    ap.add_argument("--json", type=Path, help="also write the ratios as JSON")
    args = ap.parse_args(argv)
    check_output(args.out, '--out')
    check_output(args.json, '--json')
    labels = args.labels or [m.stem for m in args.caffemodels]
    if len(labels) != len(args.caffemodels):
        ap.error("give one --labels entry per caffemodel")
    try:
        names, table = ratios(args.caffemodels, args.norm)
    except (OSError, ValueError) as e:
        print(f"plot_weight_ratio: {e}", file=sys.stderr)
        return 2

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for label, row in zip(labels, table):
        ax.semilogy(range(len(row)), row, label=label, linewidth=1.2)
    ax.set_xlabel(f"convolution layer (ordered by {labels[0]} ratio)")
    ax.set_ylabel(f"filter |w|max / |w|min ({args.norm})")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(
                {"norm": args.norm, "layers": names,
                 "ratios": {lab: row for lab, row in zip(labels, table)}}, indent=1))
    for label, row in zip(labels, table):
        med = sorted(row)[len(row) // 2]
        print(f"{label}: {len(row)} conv layers, median ratio {med:.3g}, max {max(row):.3g}")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
