"""BatchNorm un-folding: make a model with identity BatchNorm (an imported OpenVINO IR, whose
BatchNorm was folded into the convolutions) fine-tunable without moving its descriptors.

In Caffe's TRAIN phase BatchNorm normalises by the statistics of the batch, not by its stored
ones. After an import every BatchNorm is the identity (mean 0, variance 1 - eps, factor 1), so a
first training step would normalise every convolution's output to zero mean and unit variance and
the imported model would be gone. Un-folding puts real statistics into each BatchNorm and makes
the Scale after it compensate, so that the TEST-phase function is unchanged (exactly, up to
float32 rounding) and the TRAIN-phase function is nearly the same (batch statistics are close to
the stored ones):

  Caffe TEST phase:  y = s * (x - m / f) / sqrt(v / f + eps) + b
  un-folded:         y = s' * (x - M) / sqrt(V + eps) + b'   (factor 1)
  equal for every x  <=>  s' = s * sqrt(V + eps) / sqrt(v / f + eps),
                          b' = b + s * (M - m / f) / sqrt(v / f + eps)

(``unfold_affine``; with identity statistics, s' = s * sqrt(V + eps) and b' = b + s * M.) M and
V are each BatchNorm input's per-channel mean and variance, averaged over batches of training
images: M the mean of the batch means, V the mean of the biased batch variances, which is what
TRAIN-phase BatchNorm divides by. They are measured in one TEST-phase pass per batch, layer by
layer, reading each BatchNorm's input just before it runs; because un-folding leaves the
TEST-phase function unchanged, every layer sees the imported model's own activations.

``unfold_batchnorm`` prints what it measured: the cosine between each image's descriptor from
the TRAIN-phase net and from the imported model, on a batch not used for the estimate, before
and after.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rmnet.atomic import atomic_path
from training.run import TrainingError, image_batches


def unfold_affine(scale: np.ndarray, bias: np.ndarray, mean0: np.ndarray, var0: np.ndarray,
                  factor0: float, mean: np.ndarray, var: np.ndarray,
                  eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The Scale (s', b') that keeps a BatchNorm + Scale pair's TEST-phase function when the
    BatchNorm's statistics (m, v, f) become (M, V, 1); see the module doc. float64."""
    inv = 0.0 if factor0 == 0 else 1.0 / float(factor0)
    d0 = np.sqrt(np.asarray(var0, np.float64) * inv + eps)
    s = np.asarray(scale, np.float64)
    new_scale = s * np.sqrt(np.asarray(var, np.float64) + eps) / d0
    new_bias = np.asarray(bias, np.float64) + s * (np.asarray(mean, np.float64)
                                                   - np.asarray(mean0, np.float64) * inv) / d0
    return new_scale, new_bias


def batchnorm_pairs(net) -> list[tuple[str, str]]:
    """(BatchNorm, the Scale right after it on the same blob) layer names of a pycaffe Net."""
    names, layers = list(net._layer_names), list(net.layers)
    pairs = []
    for i, (name, layer) in enumerate(zip(names, layers)):
        if layer.type != "BatchNorm":
            continue
        top = net.top_names[name][0]
        nxt = names[i + 1] if i + 1 < len(names) else None
        if nxt is None or layers[i + 1].type != "Scale" or net.bottom_names[nxt][0] != top:
            raise TrainingError(f"BatchNorm {name!r} is not followed by a Scale on its blob; "
                                f"cannot compensate its statistics")
        pairs.append((name, nxt))
    return pairs


def is_identity_batchnorm(mean: np.ndarray, var: np.ndarray, factor: np.ndarray,
                          eps: float = 1e-5) -> bool:
    """Whether stored statistics make a BatchNorm the identity (what an import writes)."""
    f = float(np.asarray(factor).reshape(-1)[0])
    if f == 0:
        return False
    return bool(np.all(np.asarray(mean) == 0) and
                np.allclose(np.asarray(var, np.float64) / f + eps, 1.0, rtol=0, atol=1e-6))


def has_identity_batchnorm(weights: str | os.PathLike, prototxt: str | os.PathLike) -> bool:
    """Whether every BatchNorm of ``prototxt`` found in the caffemodel is the identity."""
    from rmnet.caffe.caffemodel import read_caffemodel
    from rmnet.caffe.protos import read_net

    blobs = read_caffemodel(weights)
    found = False
    for layer in read_net(prototxt).layer:
        if layer.type == "BatchNorm" and layer.name in blobs:
            b = blobs[layer.name]
            if len(b) != 3 or not is_identity_batchnorm(b[0], b[1], b[2],
                                                        layer.batch_norm_param.eps):
                return False
            found = True
    return found


def batchnorm_input_stats(net, batches, log: Callable[[str], None] | None = None
                          ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """{BatchNorm: (mean of batch means, mean of biased batch variances)} of each BatchNorm's
    input over the batches, from a layer-by-layer TEST-phase forward; and the image count."""
    from tqdm import tqdm

    names, layers = list(net._layer_names), list(net.layers)
    inp = net.inputs[0]
    sums: dict[str, list[np.ndarray]] = {}
    n_batches = n_images = 0
    for blob in tqdm(batches, desc="BatchNorm statistics", unit="batch", leave=False):
        net.blobs[inp].reshape(*blob.shape)
        net.reshape()
        net.blobs[inp].data[...] = blob
        for i, (name, layer) in enumerate(zip(names, layers)):
            if layer.type == "BatchNorm":
                x = np.asarray(net.blobs[net.bottom_names[name][0]].data, np.float64)
                axes = (0,) + tuple(range(2, x.ndim))
                m = x.mean(axis=axes)
                v = x.var(axis=axes)
                acc = sums.setdefault(name, [np.zeros_like(m), np.zeros_like(v)])
                acc[0] += m
                acc[1] += v
            net._forward(i, i)
        n_batches += 1
        n_images += len(blob)
    if not n_batches:
        raise TrainingError("no batches to estimate BatchNorm statistics on")
    return {k: (a[0] / n_batches, a[1] / n_batches) for k, a in sums.items()}, n_images


def _forward(net, blob: np.ndarray, output: str) -> np.ndarray:
    inp = net.inputs[0]
    net.blobs[inp].reshape(*blob.shape)
    net.reshape()
    net.blobs[inp].data[...] = blob
    net.forward()
    return np.array(net.blobs[output].data, np.float64).reshape(len(blob), -1)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                       1e-30)


def train_phase_cosine(deploy: str | os.PathLike, weights: str | os.PathLike, blob: np.ndarray,
                       reference: np.ndarray) -> np.ndarray:
    """Cosine of each image's descriptor from the net in Caffe's TRAIN phase (BatchNorm on batch
    statistics; the deploy net has no dropout) with ``reference``."""
    from rmnet.caffe.pycaffe import import_caffe, output_blob

    caffe = import_caffe()
    net = caffe.Net(str(deploy), caffe.TRAIN, weights=str(weights))
    return cosines(_forward(net, blob, output_blob(net)), reference)


@dataclass
class UnfoldReport:
    layers: int
    images: int
    batch_size: int
    check_images: int
    cos_before: np.ndarray
    cos_after: np.ndarray
    test_max_abs_diff: float     # TEST-phase descriptors after vs before (L2-normalised)

    def lines(self) -> list[str]:
        def c(x: np.ndarray) -> str:
            return f"mean {x.mean():.4f}, min {x.min():.4f}"
        return [f"un-folded {self.layers} BatchNorm layers: statistics from {self.images} "
                f"images in batches of {self.batch_size}, Scale layers compensating",
                f"TEST phase unchanged: max abs diff {self.test_max_abs_diff:.3g} "
                f"(L2-normalised descriptors)",
                f"cosine, TRAIN-phase net vs the imported model, on {self.check_images} other "
                f"images: before un-folding {c(self.cos_before)}; after {c(self.cos_after)}"]


def unfold_batchnorm(deploy: str | os.PathLike, weights: str | os.PathLike,
                     image_paths: list[str], out: str | os.PathLike, batch_size: int = 32,
                     batches: int = 10, seed: int = 0) -> UnfoldReport:
    """Estimate BatchNorm statistics on ``image_paths`` and un-fold (module doc); write ``out``
    atomically. The batch after the ``batches`` used for the estimate is the check batch."""
    from rmnet.caffe.protos import read_net
    from rmnet.caffe.pycaffe import import_caffe, output_blob, save_net

    caffe = import_caffe()
    net = caffe.Net(str(deploy), caffe.TEST, weights=str(weights))
    h, w = net.blobs[net.inputs[0]].data.shape[2:]
    all_batches = list(image_batches(image_paths, h, w, batch_size, batches + 1, seed))
    check = all_batches.pop()
    output = output_blob(net)
    ref = _forward(net, check, output)
    cos_before = train_phase_cosine(deploy, weights, check, ref)
    pairs = batchnorm_pairs(net)
    eps_of = {lay.name: float(lay.batch_norm_param.eps) for lay in read_net(deploy).layer
              if lay.type == "BatchNorm"}
    stats, n_images = batchnorm_input_stats(net, all_batches)
    for bn, sc in pairs:
        mean0, var0, factor0 = (np.array(b.data) for b in net.params[bn])
        scale_blobs = net.params[sc]
        s0 = np.array(scale_blobs[0].data)
        b0 = np.array(scale_blobs[1].data) if len(scale_blobs) > 1 else np.zeros_like(s0)
        eps = eps_of[bn]
        m, v = stats[bn]
        s1, b1 = unfold_affine(s0, b0, mean0, var0, float(factor0.reshape(-1)[0]), m, v, eps)
        if len(scale_blobs) < 2 and np.any(np.abs(b1) > 0):
            raise TrainingError(f"{deploy}: Scale {sc!r} has no bias term to compensate "
                                f"BatchNorm {bn!r}'s mean")
        net.params[bn][0].data[...] = m
        net.params[bn][1].data[...] = v
        net.params[bn][2].data[...] = 1
        scale_blobs[0].data[...] = s1
        if len(scale_blobs) > 1:
            scale_blobs[1].data[...] = b1
    after = _forward(net, check, output)
    diff = float(np.abs(_l2n(after) - _l2n(ref)).max())
    out = Path(out)
    with atomic_path(out) as tmp:
        save_net(net, tmp)
        cos_after = train_phase_cosine(deploy, tmp, check, ref)
    return UnfoldReport(len(pairs), n_images, batch_size, len(check), cos_before, cos_after, diff)


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def unfold_if_imported(deploy: str | os.PathLike, weights: str | os.PathLike,
                       source: str | os.PathLike, image_paths: Callable[[], list[str]],
                       log: Callable[[str], None] = print, batch_size: int = 32,
                       batches: int = 10, seed: int = 0) -> UnfoldReport | None:
    """For ``tools/train.py --from``: when ``source`` has identity BatchNorm throughout (a model
    imported from OpenVINO without ``--train``), un-fold ``weights`` (the initial caffemodel
    the source was copied into) in place on the training images. None when nothing to do."""
    if not has_identity_batchnorm(source, deploy):
        return None
    log(f"{source}: every BatchNorm is the identity (an imported model): estimating BatchNorm "
        f"statistics on the training images and un-folding, so that TRAIN-phase batch "
        f"statistics do not move its descriptors")
    report = unfold_batchnorm(deploy, weights, image_paths(), weights, batch_size=batch_size,
                              batches=batches, seed=seed)
    for line in report.lines():
        log(line)
    return report
