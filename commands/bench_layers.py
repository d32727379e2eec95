"""Benchmark: forward+backward time of the loss layers against RMNet's own, in one run.

    .venv/bin/python tools/bench_layers.py                     # batch 128, 256-d, 751 classes
    .venv/bin/python tools/bench_layers.py --repeats 10 --rmnet-repeats 1
    .venv/bin/python tools/bench_layers.py --no-rmnet          # the loss layers only
    .venv/bin/python tools/bench_layers.py --data-only         # the data layer's images/s
    .venv/bin/python tools/bench_layers.py --dropout-cost --rmnet-repeats 5   # dropout switch cost

Target: the two loss layers (AM-Softmax + local structure, forward + backward) take < 5% of the
RMNet 160x64 forward + backward at the same batch size.

- Loss layers: a net of Input blobs (embedding_calibrated, embedding, label, sample_weight) and
  the two loss layers exactly as the generated train net defines them (``--train``, default
  prototxt/light/train.prototxt: param_str, loss weights, params), else the contract's
  defaults. Labels come as ``images_per_id`` images of each identity, like the training batches.
- RMNet: the generated deploy net (``--deploy``, default prototxt/light/deploy.prototxt) with its
  Input resized to the batch, ``force_backward``, in the TRAIN phase (BatchNorm on batch
  statistics, as in training), random pixels, a random gradient on the output blob. The train
  net's dropout layers are not in the deploy net, so the true training step is a bit slower
  than this reference, which makes the ratio a slight over-estimate.

Times are medians over ``--repeats`` (after one warm-up pass), wall clock, CPU Caffe with the
threads OpenBLAS chooses. Numbers only: nothing is asserted.

- Data layer (``--data``, or ``--data-only``): images/s of ``layers.data.MarketDataLayer`` under
  pycaffe at the train net's size (160x64), with augmentation at full difficulty, hard-sample
  mining (weighted) and its feedback layer, on a synthetic Market-1501-shaped dataset written to a
  temporary folder (``--data-root`` for a real one). The feedback's per-sample "losses" come from a
  Power layer on the labels: the miner's work does not depend on the values. Target: >= 1,000
  images/s on this 2-core machine, so a GPU would not wait on it.
- Dropout switch-off cost (``--dropout-cost``): a full training step (forward + backward, losses
  included, data from an Input layer) of the light train net with its 36 scheduled Dropout
  layers (the project Caffe's ``switch_off_iter`` option), against the same net with Caffe's
  plain Dropout (``switch_off_iter: null``), at ``--dropout-batch`` (default 32); medians of
  ``--rmnet-repeats``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

import numpy as np  # noqa: E402

from rmnet.caffe.protos import caffe_pb2, parse_net  # noqa: E402
from rmnet.caffe.pycaffe import net_from_param  # noqa: E402
from training.run import without_data_layer  # noqa: E402

from rmnet.paths import REPO  # noqa: E402
from commands.errors import command  # noqa: E402
LOSS_LAYERS = ("loss/am_softmax", "loss/local")

DEFAULT_LOSSES = """\
layer { name: "loss/am_softmax" type: "Python"
  bottom: "embedding_calibrated" bottom: "label" bottom: "sample_weight"
  top: "loss/am_softmax" top: "loss/am_softmax/per_sample"
  loss_weight: 1 loss_weight: 0
  param { lr_mult: 1 decay_mult: 1 }
  python_param { module: "layers.losses" layer: "AMSoftmaxLossLayer"
                 param_str: '{"num_classes": CLASSES, "scale": 30.0, "margin": 0.35}' } }
layer { name: "loss/local" type: "Python"
  bottom: "embedding" bottom: "label" bottom: "sample_weight"
  top: "loss/center" top: "loss/push" top: "loss/glob_push" top: "loss/local/per_sample"
  loss_weight: 1 loss_weight: 1 loss_weight: 1 loss_weight: 0
  param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
  python_param { module: "layers.losses" layer: "LocalStructureLossLayer"
                 param_str: '{"num_classes": CLASSES, "smart_margins": {"start": 0.15, "ramp_iters": 40000}}' } }
"""




def loss_net_param(train: Path, batch: int, dim: int, classes: int):
    """NetParameter: Input blobs + the two loss layers (from the train net when it exists)."""
    net = caffe_pb2().NetParameter(name="bench_losses", force_backward=True)
    inp = net.layer.add(name="input", type="Input")
    for top, shape in (("embedding_calibrated", [batch, dim, 1, 1]),
                       ("embedding", [batch, dim, 1, 1]), ("label", [batch]),
                       ("sample_weight", [batch])):
        inp.top.append(top)
        inp.input_param.shape.add(dim=shape)
    source = "contract defaults"
    layers = []
    if train.exists():
        found = {layer.name: layer for layer in parse_net(train.read_text()).layer
                 if layer.name in LOSS_LAYERS}
        layers = [found[name] for name in LOSS_LAYERS if name in found]
        source = f"{train.relative_to(REPO) if train.is_relative_to(REPO) else train}"
    if not layers:
        layers = list(parse_net(DEFAULT_LOSSES.replace("CLASSES", str(classes))).layer)
        source = "contract defaults"
    for layer in layers:
        net.layer.add().CopyFrom(layer)
    return net, source


def median_time(fn, repeats: int) -> float:
    fn()   # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_losses(caffe, args) -> dict[str, tuple[float, float]]:
    net_param, source = loss_net_param(args.train, args.batch, args.dim, args.classes)
    net = net_from_param(net_param, "TRAIN")
    rng = np.random.default_rng(0)
    per_id = args.images_per_id
    ids = rng.choice(args.classes, size=-(-args.batch // per_id), replace=False)
    labels = np.repeat(ids, per_id)[:args.batch]
    for blob in ("embedding_calibrated", "embedding"):
        net.blobs[blob].data[...] = rng.standard_normal(net.blobs[blob].data.shape)
    net.blobs["label"].data[...] = labels
    net.blobs["sample_weight"].data[...] = rng.uniform(0.25, 4.0, args.batch)
    print(f"loss layers ({source}): batch {args.batch}, {args.dim}-d, {args.classes} classes")
    out = {}
    for name in [layer.name for layer in net_param.layer if layer.name in LOSS_LAYERS]:
        fwd = median_time(lambda: net.forward(start=name, end=name), args.repeats)
        bwd = median_time(lambda: net.backward(start=name, end=name), args.repeats)
        out[name] = (fwd, bwd)
        print(f"  {name:18s} forward {fwd * 1e3:8.2f} ms   backward {bwd * 1e3:8.2f} ms   "
              f"total {(fwd + bwd) * 1e3:8.2f} ms")
    total = sum(f + b for f, b in out.values())
    print(f"  {'both':18s} {'':46s}total {total * 1e3:8.2f} ms")
    return out


def bench_rmnet(caffe, args) -> float | None:
    if not args.deploy.exists():
        print(f"RMNet: {args.deploy} not found: run `make prototxt` and re-run for the ratio.")
        return None
    net_param = parse_net(args.deploy.read_text())
    inputs = [layer for layer in net_param.layer if layer.type == "Input"]
    if len(inputs) != 1:
        raise SystemExit(f"{args.deploy}: expected one Input layer, found {len(inputs)}")
    inputs[0].input_param.shape[0].dim[0] = args.batch
    net_param.force_backward = True
    net = net_from_param(net_param, "TRAIN")
    rng = np.random.default_rng(0)
    data = inputs[0].top[0]
    net.blobs[data].data[...] = rng.uniform(0, 255, net.blobs[data].data.shape)
    outputs = list(net.outputs)
    shape = net.blobs[data].data.shape
    print(f"RMNet ({args.deploy.relative_to(REPO) if args.deploy.is_relative_to(REPO) else args.deploy}"
          f", TRAIN phase): input {shape[0]}x{shape[1]}x{shape[2]}x{shape[3]}, "
          f"output {outputs}")

    def step():
        net.forward()
        for name in outputs:
            net.blobs[name].diff[...] = rng.standard_normal(net.blobs[name].diff.shape)
        net.backward()

    t = median_time(step, args.rmnet_repeats)
    print(f"  forward+backward {t * 1e3:10.1f} ms  (median of {args.rmnet_repeats})")
    return t


DATA_NET = """\
name: "data_bench"
layer {{ name: "data" type: "Python" top: "data" top: "label" top: "sample_weight" top: "sample_id"
        param {{ lr_mult: 0 decay_mult: 0 }}
        python_param {{ module: "layers.data" layer: "MarketDataLayer" param_str: '{params}' }} }}
layer {{ name: "fake_loss" type: "Power" bottom: "label" top: "fake_loss"
        power_param {{ scale: 0.37 shift: 1 }} }}
layer {{ name: "hsm_feedback" type: "Python" bottom: "sample_id" bottom: "fake_loss"
        python_param {{ module: "layers.data" layer: "HardSampleFeedbackLayer"
                       param_str: '{{"source": "data", "weights": [1.0]}}' }} }}
layer {{ name: "silence" type: "Silence" bottom: "data" bottom: "sample_weight" }}
"""


def bench_data(caffe, args) -> dict:
    """Images/s of the data layer in a net of its own (see the module docstring): a dict with
    the images and seconds timed, the rate, and the batches the layer served in all (warm-up
    included, from its batch counter)."""
    import json

    from layers.data import batch_sources
    from rmnet.data.synthetic import SyntheticConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        if root is None:
            root = Path(tmp) / "market"
            generate(root, SyntheticConfig(train_ids=64, test_ids=1, images_per_id=10))
        params = dict(root=str(root), height=args.height, width=args.width,
                      batch_size=args.data_batch, images_per_id=args.images_per_id,
                      mining=True, weighted=True, difficulty_start=1.0,
                      workers=args.workers, seed=0, name="data")
        path = Path(tmp) / "data_bench.prototxt"
        path.write_text(DATA_NET.format(params=json.dumps(params)))
        net = caffe.Net(str(path), caffe.TRAIN)
        try:
            for _ in range(5):                      # fill the prefetch queue, warm the workers
                net.forward()
            start = time.perf_counter()
            for _ in range(args.data_batches):
                net.forward()
            elapsed = time.perf_counter() - start
            served = int(net.params["data"][0].data.flat[0])
        finally:
            batch_sources.get("data", caffe.TRAIN).close()
    images = args.data_batches * args.data_batch
    rate = images / elapsed
    print(f"data layer ({args.height}x{args.width}, batch {args.data_batch}, "
          f"{args.workers} workers, augmentation + weighted mining, {root if args.data_root else 'synthetic dataset'}):")
    print(f"  {rate:10.0f} images/s over {args.data_batches} batches "
          f"(target >= 1000: {'met' if rate >= 1000 else 'NOT met'})")
    return {"images": images, "seconds": elapsed, "rate": rate, "batches_served": served}


def bench_dropout_cost(caffe, args) -> tuple[float, float]:
    """(Caffe Dropout, scheduled Dropout) ms per training step of the light train net.

    The two nets' steps alternate (A B A B ...), so load from other processes hits both alike."""
    from generator import render

    rng = np.random.default_rng(0)
    nets = {}
    for label, dropout in (("Caffe Dropout", {"switch_off_iter": None}),
                           ("scheduled Dropout", {"switch_off_iter": 100000})):
        net_param = render("light", "train", overrides={
            "dropout": dropout, "data": {"batch_size": args.dropout_batch}}).net
        net = net_from_param(without_data_layer(net_param, drop_feedback=True), "TRAIN")
        n = args.dropout_batch
        net.blobs["data"].data[...] = rng.uniform(0, 255, net.blobs["data"].data.shape)
        net.blobs["label"].data[...] = np.repeat(np.arange(n // 4 + 1), 4)[:n]
        net.blobs["sample_weight"].data[...] = 1
        net.blobs["sample_id"].data[...] = np.arange(n)
        net.forward()          # warm-up
        net.backward()
        nets[label] = net
    times: dict[str, list[float]] = {label: [] for label in nets}
    for _ in range(args.rmnet_repeats):
        for label, net in nets.items():
            t0 = time.perf_counter()
            net.forward()
            net.backward()
            times[label].append(time.perf_counter() - t0)
    med = {label: statistics.median(t) for label, t in times.items()}
    for label, t in med.items():
        print(f"  {label:26s} {t * 1e3:10.1f} ms per step (batch {args.dropout_batch}, "
              f"median of {args.rmnet_repeats}, alternating)")
    base, sched = med["Caffe Dropout"], med["scheduled Dropout"]
    print(f"dropout switch-off cost: {100 * (sched - base) / base:+.1f}% per training step")
    return base, sched


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=751)
    ap.add_argument("--images-per-id", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20, help="loss-layer timing repeats")
    ap.add_argument("--rmnet-repeats", type=int, default=2, help="RMNet timing repeats")
    ap.add_argument("--train", type=Path, default=REPO / "prototxt/light/train.prototxt")
    ap.add_argument("--deploy", type=Path, default=REPO / "prototxt/light/deploy.prototxt")
    ap.add_argument("--no-rmnet", action="store_true", help="time the loss layers only")
    ap.add_argument("--dropout-cost", action="store_true",
                    help="only: the scheduled dropout's cost per training step")
    ap.add_argument("--dropout-batch", type=int, default=32)
    ap.add_argument("--data", action="store_true", help="also the data layer's images/s")
    ap.add_argument("--data-only", action="store_true", help="the data layer's images/s only")
    ap.add_argument("--data-root", type=Path, help="Market-1501-layout folder "
                    "(default: a synthetic one in a temporary folder)")
    ap.add_argument("--data-batch", type=int, default=64)
    ap.add_argument("--data-batches", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--height", type=int, default=160)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args(argv)
    if min(args.batch, args.dim, args.repeats, args.rmnet_repeats, args.images_per_id,
           args.data_batch, args.data_batches) < 1 or args.classes < 2:
        ap.error("sizes and repeats must be >= 1, classes >= 2")
    return args


@command("bench_layers")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data_root is not None:
        from rmnet.data.datasets import load_dataset
        from rmnet.data.market import DatasetError
        try:
            load_dataset(args.data_root)
        except DatasetError as e:
            print(f"bench_layers: {e}", file=sys.stderr)
            return 2
    import caffe
    caffe.set_mode_cpu()
    if args.data_only:
        bench_data(caffe, args)
        return 0
    if args.dropout_cost:
        bench_dropout_cost(caffe, args)
        return 0
    if args.data:
        bench_data(caffe, args)
    losses = bench_losses(caffe, args)
    total = sum(f + b for f, b in losses.values())
    if args.no_rmnet:
        return 0
    rmnet = bench_rmnet(caffe, args)
    if rmnet is None:
        return 0
    ratio = 100 * total / rmnet
    print(f"ratio: loss layers {total * 1e3:.1f} ms / RMNet {rmnet * 1e3:.1f} ms = {ratio:.2f}% "
          f"(target < 5%: {'met' if ratio < 5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
