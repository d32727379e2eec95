"""A ResNet-50 re-identification baseline as a Caffe deploy net, for the speed comparison.

The paper's Table 3 compares RMNet with ResNet-50 based re-ID models of "8 GFLOPs" and
24.66 MParams at 384x128. This module writes that kind of baseline in Caffe, in the same deploy
conventions as the RMNet nets (Input of raw BGR, every convolution ``bias_term: false`` followed by
BatchNorm + Scale with bias), so every runtime and the exporter treat both alike:

- stem: 7x7/2 convolution (64, pad 3), BN, Scale, ReLU, 3x3/2 max-pool (no padding, Caffe's ceil
  rounding, as in the original Caffe ResNet-50: 192x64 -> 96x32 at 384x128);
- stages of bottleneck blocks 3-4-6-3 at widths 256/512/1024/2048 (squeeze 64/128/256/512):
  1x1, BN, Scale, ReLU; 3x3 (stride 2 in the first block of stages 3-5, the "v1.5" placement of
  torchvision's ResNet-50 that re-ID baselines build on), BN, Scale, ReLU; 1x1, BN, Scale; a
  projection shortcut (1x1 with the block's stride, BN, Scale) in each stage's first block;
  Eltwise SUM; ReLU;
- head: global average pooling to 2048, then 1x1 convolution 2048 -> 256, BN, Scale: a 256-d
  descriptor like RMNet's.

At 384x128: 4.00 G multiply-adds (8.0 GFLOPs, the paper's "8"), 24.0 M parameters (BN folded).
Why not a generator variant: the generator's templates and config schema describe RMNet blocks
(squeeze factor, depthwise convolutions, ELU, calibration, the train-net losses); a ResNet would
need its own templates and schema, so a short emitter here is the cleaner choice.

The text is built as a ``caffe_pb2.NetParameter`` and re-parsed with ``text_format`` before it is
returned, so Caffe accepts it by construction.

    python -m rmnet.bench.baselines --out prototxt_resnet50.prototxt [--height 384 --width 128]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rmnet.atomic import atomic_write_text
from rmnet.caffe.protos import caffe_pb2, net_text, parse_net

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))   # (squeeze width, blocks); out = 4 x squeeze
EMBEDDING = 256


def resnet50_net(height: int = 384, width: int = 128, embedding: int = EMBEDDING):
    """The ResNet-50 re-ID deploy net as a ``caffe_pb2.NetParameter``."""
    pb2 = caffe_pb2()
    if height % 32 or width % 32:
        raise ValueError(f"ResNet-50 input must be a multiple of 32 on each side (five "
                         f"halvings), got {height}x{width}")
    net = pb2.NetParameter(name=f"resnet50_reid_{height}x{width}_deploy")

    def layer(name: str, type_: str, bottom: list[str], top: str):
        lay = net.layer.add(name=name, type=type_, top=[top])
        lay.bottom.extend(bottom)
        return lay

    def conv_bn(name: str, bottom: str, out: int, kernel: int, stride: int = 1, pad: int = 0,
                relu: bool = True) -> str:
        c = layer(f"{name}/conv", "Convolution", [bottom], name)
        p = c.convolution_param
        p.num_output, p.bias_term = out, False
        p.kernel_size.append(kernel)
        if stride != 1:
            p.stride.append(stride)
        if pad:
            p.pad.append(pad)
        p.weight_filler.type = "msra"
        layer(f"{name}/bn", "BatchNorm", [name], name)
        s = layer(f"{name}/scale", "Scale", [name], name)
        s.scale_param.bias_term = True
        if relu:
            layer(f"{name}/relu", "ReLU", [name], name)
        return name

    inp = layer("data", "Input", [], "data")
    inp.input_param.shape.add(dim=[1, 3, height, width])
    x = conv_bn("conv1", "data", 64, 7, stride=2, pad=3)
    pool = layer("pool1", "Pooling", [x], "pool1")
    pool.pooling_param.pool = pb2.PoolingParameter.MAX
    pool.pooling_param.kernel_size, pool.pooling_param.stride = 3, 2
    x = "pool1"
    for s, (width_, blocks) in enumerate(STAGES, start=2):
        for b in range(blocks):
            name = f"res{s}_{b}"
            stride = 2 if (b == 0 and s > 2) else 1
            y = conv_bn(f"{name}/a", x, width_, 1)
            y = conv_bn(f"{name}/b", y, width_, 3, stride=stride, pad=1)
            y = conv_bn(f"{name}/c", y, 4 * width_, 1, relu=False)
            short = conv_bn(f"{name}/proj", x, 4 * width_, 1, stride=stride,
                            relu=False) if b == 0 else x
            layer(f"{name}/sum", "Eltwise", [y, short], name)
            layer(f"{name}/relu", "ReLU", [name], name)
            x = name
    gp = layer("pool5", "Pooling", [x], "pool5")
    gp.pooling_param.pool = pb2.PoolingParameter.AVE
    gp.pooling_param.global_pooling = True
    conv_bn("embedding", "pool5", embedding, 1, relu=False)
    return net


def resnet50_prototxt(height: int = 384, width: int = 128, embedding: int = EMBEDDING) -> str:
    """Prototxt text of ``resnet50_net``, re-parsed by Caffe's NetParameter as a check."""
    net = resnet50_net(height, width, embedding)
    text = (f"# ResNet-50 re-ID baseline (rmnet.bench.baselines), {height}x{width} raw BGR input, "
            f"{embedding}-d output 'embedding'. Generated; do not edit by hand.\n"
            + net_text(net))
    check = parse_net(text, "the ResNet-50 baseline")
    if check != net:   # pragma: no cover - a protobuf round-trip bug
        raise RuntimeError("ResNet-50 prototxt does not round-trip through text_format")
    return text


def write_resnet50(out: str | Path, height: int = 384, width: int = 128,
                   embedding: int = EMBEDDING) -> Path:
    """Write the prototxt atomically; returns ``out``."""
    return atomic_write_text(out, resnet50_prototxt(height, width, embedding))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rmnet.bench.baselines",
                                 description="Write the ResNet-50 re-ID baseline deploy prototxt.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--embedding", type=int, default=EMBEDDING)
    args = ap.parse_args(argv)
    try:
        print(write_resnet50(args.out, args.height, args.width, args.embedding))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
