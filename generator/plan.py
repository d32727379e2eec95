"""The network plan: which blocks, with which names, widths and feature-map sizes.

The templates render layers; this module decides what to render, from a variant config, so the
templates stay free of arithmetic. It also refuses input sizes the RMNet graph cannot take.

Names (stable across train/test/deploy and across variants, so weights transfer by name):

  input_norm/{bn,scale}                       learned input normalisation (blob input_norm)
  stem/{conv,bn,scale,act}                    3x3 stride-2 conv (blob stem)
  bottleneck<S>_<I>/dim_red/{conv,bn,scale,act}   1x1 squeeze     (S: stage 1..4, I from 0;
  bottleneck<S>_<I>/dw/{conv,bn,scale,act}        3x3 depthwise    in stages 2..4 block 0 is
  bottleneck<S>_<I>/dim_inc/{conv,bn,scale}       1x1 expand       the downsampling block)
  bottleneck<S>_<I>/dropout                   TRAIN nets only
  bottleneck<S>_<I>/shortcut/{pool,conv,bn,scale} downsampling blocks only
  bottleneck<S>_<I>/{sum,act}                 block output (blob bottleneck<S>_<I>)
  head/pool, head/expand/{conv,bn,scale,act}, head/embedding/{conv,bn,scale} (blob embedding)
  calibration                                 blob embedding_calibrated
"""
from __future__ import annotations

from dataclasses import dataclass


class InputSizeError(ValueError):
    """The input size does not fit the RMNet graph."""


@dataclass(frozen=True)
class Block:
    name: str
    bottom: str
    in_channels: int
    channels: int
    squeeze: int
    downsample: bool
    in_size: tuple[int, int]    # (H, W) of the block input
    out_size: tuple[int, int]
    index: int                  # 0-based position among all blocks (seeds per block)


@dataclass(frozen=True)
class Plan:
    height: int
    width: int
    stem_channels: int
    stem_size: tuple[int, int]
    blocks: tuple[Block, ...]
    stage_outputs: tuple[tuple[str, tuple[int, int]], ...]   # (blob, (H, W)) after each stage
    head_channels: int
    embedding_size: int

    @property
    def backbone_output(self) -> str:
        return self.blocks[-1].name if self.blocks else "stem"

    @property
    def backbone_channels(self) -> int:
        return self.blocks[-1].channels if self.blocks else self.stem_channels

    @property
    def final_size(self) -> tuple[int, int]:
        return self.blocks[-1].out_size if self.blocks else self.stem_size


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's convolution output side: rounds down."""
    return (size + 2 * pad - kernel) // stride + 1


def pool_out(size: int, kernel: int, stride: int, pad: int = 0) -> int:
    """Caffe's pooling output side: rounds up (then drops a window starting in the padding)."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def working_sizes(n_down: int) -> str:
    return f"multiples of {2 ** (n_down + 1)}"


def build_plan(cfg: dict, where: str = "variant") -> Plan:
    """Lay out the backbone for cfg's input size; InputSizeError if a side cannot work."""
    h, w = cfg["input"]["height"], cfg["input"]["width"]
    bb = cfg["backbone"]
    n_down = sum(1 for s in bb["stages"] if s["downsample"])
    if min(h, w) < 3:
        raise InputSizeError(f"{where}: input {h}x{w} is too small; height and width must be "
                             f"{working_sizes(n_down)} (e.g. 160x64, 384x128)")
    size = (conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1))
    stem_size = size
    blocks: list[Block] = []
    stage_outputs: list[tuple[str, tuple[int, int]]] = [("stem", size)]
    bottom, channels = "stem", bb["stem_channels"]
    index = 0
    for s, stage in enumerate(bb["stages"], start=1):
        n = stage["blocks"] + (1 if stage["downsample"] else 0)
        for i in range(n):
            down = stage["downsample"] and i == 0
            in_size = size
            if down:
                odd = [side for side in size if side % 2]
                if odd:
                    raise InputSizeError(
                        f"{where}: input {h}x{w} gives a {size[0]}x{size[1]} feature map at the "
                        f"downsampling block bottleneck{s}_0: an odd side there makes the "
                        f"shortcut's 2x2 max-pool (Caffe rounds pooling up: its last window "
                        f"hangs over the edge) and the stride-2 depthwise convolution (rounds "
                        f"down, padded) cover different pixels, and floor-mode pooling (ONNX, "
                        f"PyTorch) gives a smaller map than the convolution, breaking the SUM. "
                        f"Use height and width that are {working_sizes(n_down)} "
                        f"(e.g. 160x64, 384x128).")
                size = (conv_out(size[0], 3, 2, 1), conv_out(size[1], 3, 2, 1))
                assert size == (pool_out(in_size[0], 2, 2), pool_out(in_size[1], 2, 2))
            name = f"bottleneck{s}_{i}"
            c_out = stage["channels"]
            blocks.append(Block(name=name, bottom=bottom, in_channels=channels, channels=c_out,
                                squeeze=c_out // bb["squeeze_factor"], downsample=down,
                                in_size=in_size, out_size=size, index=index))
            index += 1
            bottom, channels = name, c_out
        stage_outputs.append((bottom, size))
    return Plan(height=h, width=w, stem_channels=bb["stem_channels"], stem_size=stem_size,
                blocks=tuple(blocks), stage_outputs=tuple(stage_outputs),
                head_channels=bb["head_channels"], embedding_size=bb["embedding_size"])
