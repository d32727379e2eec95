"""Size and cost of each variant's deploy net: parameters, convolution MACs, feature-map sizes.

    .venv/bin/python tools/model_stats.py                  # table, every variant
    .venv/bin/python tools/model_stats.py --variant light --output embedding --json

The deploy net is generated (generator.render), instantiated with caffe.Net (TEST phase) for the
blob shapes and parameter blobs, and walked layer by layer:

- params_raw: every Caffe parameter blob value (BatchNorm mean, variance and factor; Scale weight
  and bias; convolution weights).
- params_affine: each BatchNorm+Scale pair counted as one scale and one bias per channel.
- params_folded: each BatchNorm+Scale pair right after a convolution folded into it (weights
  rescaled, one bias per output channel); a pair with no convolution before it (the input
  normalisation) stays an affine map (scale + bias per channel); a lone Scale (calibration)
  counts its blobs. This is how the published OpenVINO model counts.
- macs: multiply-accumulates of the convolutions (incl. depthwise and 1x1, batch 1);
  gflops = 2 * macs / 1e9 (the paper's convention: a multiply-add is two operations).
- feature maps: (H, W) of the stem output and of each stage's last block.

--output embedding gives the published graph (no calibration layer); the default is each
variant's deploy output (embedding_calibrated: +512 parameters, no extra MACs to speak of).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("GLOG_minloglevel", "2")

from generator import list_variants, render  # noqa: E402
from generator.render import OUTPUTS  # noqa: E402
from rmnet.caffe.pycaffe import net_from_param  # noqa: E402
from rmnet.deploy.graph import conv_macs, count_params  # noqa: E402


def variant_stats(name: str, output: str | None = None) -> dict:
    net = render(name, "deploy", deploy_output=output)
    cnet = net_from_param(net.net)
    shapes = {k: tuple(v.data.shape) for k, v in cnet.blobs.items()}
    sizes = {k: [b.data.size for b in v] for k, v in cnet.params.items()}
    macs = conv_macs(net.net, shapes)
    stages = {}
    for i, (blob, _) in enumerate(net.plan.stage_outputs):
        label = "stem" if i == 0 else f"stage{i}"
        stages[label] = list(shapes[blob][2:])
    out_blob = output or net.net.layer[-1].top[0]
    return {
        "variant": name,
        "input": [net.plan.height, net.plan.width],
        "output": out_blob,
        "output_shape": list(shapes[out_blob]),
        **count_params(net.net, sizes),
        "macs": macs,
        "gmacs": macs / 1e9,
        "gflops": 2 * macs / 1e9,
        "feature_maps": stages,
    }


def format_table(rows: list[dict]) -> str:
    head = (f"{'variant':28s} {'input':>8s} {'output':>21s} {'raw':>9s} {'affine':>9s} "
            f"{'folded':>9s} {'GMACs':>7s} {'GFLOPs':>7s}  feature maps (stem, stages)")
    lines = [head, "-" * len(head)]
    for r in rows:
        maps = " ".join(f"{h}x{w}" for h, w in r["feature_maps"].values())
        size = f"{r['input'][0]}x{r['input'][1]}"
        lines.append(f"{r['variant']:28s} {size:>8s} "
                     f"{r['output']:>21s} {r['params_raw']:>9,d} {r['params_affine']:>9,d} "
                     f"{r['params_folded']:>9,d} {r['gmacs']:>7.4f} {r['gflops']:>7.4f}  {maps}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", metavar="NAME",
                    help="only this variant (repeatable); default: all")
    ap.add_argument("--output", choices=OUTPUTS,
                    help="deploy output blob (default: each variant's; 'embedding' is the "
                         "published graph)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    names = args.variant or list_variants()
    unknown = sorted(set(names) - set(list_variants()))
    if unknown:
        ap.error(f"unknown variant(s): {', '.join(unknown)}")
    rows = [variant_stats(n, args.output) for n in names]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
