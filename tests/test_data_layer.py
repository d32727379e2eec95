"""The Market-1501 data layer: batch planning without Caffe (determinism, worker independence,
corrupt images), then the real layers through pycaffe: tops, the TEST phase, the loss feedback
reaching the miner, and the errors a user meets first (wrong folder, wrong class count)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from layers.data import BatchSource, DataConfig, load_train_list
from rmnet.data.synthetic import SyntheticConfig, generate

H, W = 32, 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "market"
    generate(root, SyntheticConfig(train_ids=6, test_ids=2, images_per_id=4, seed=3))
    return root


def make_source(root: Path, workers: int = 0, seed: int = 0, train: bool = True, log=print,
                **kw) -> BatchSource:
    cfg = DataConfig(root=str(root), height=H, width=W, batch_size=8, images_per_id=2,
                     workers=workers, prefetch=2, seed=seed, **kw)
    paths, labels, _ = load_train_list(root)
    return BatchSource(cfg, paths, labels, train, log=log)


def take(source: BatchSource, n: int) -> list[tuple]:
    try:
        return [source.next() for _ in range(n)]
    finally:
        source.close()


def test_same_seed_same_batches_whoever_renders_them(dataset):
    a = take(make_source(dataset, workers=0, seed=5), 6)
    b = take(make_source(dataset, workers=2, seed=5), 6)
    c = take(make_source(dataset, workers=0, seed=6), 6)
    for (ia, la, wa, da), (ib, lb, wb, db) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(da, db)
    assert any(not np.array_equal(x[3], y[3]) for x, y in zip(a, c))


def test_batches_are_k_images_of_each_identity_and_augmented(dataset):
    (images, labels, weights, ids), = take(make_source(dataset, mining=False), 1)
    assert images.shape == (8, H, W, 3) and images.dtype == np.uint8
    _, counts = np.unique(labels, return_counts=True)
    assert set(counts) == {2}                      # images_per_id, no mining: no selection
    np.testing.assert_array_equal(weights, 1.0)
    paths, all_labels, _ = load_train_list(dataset)
    np.testing.assert_array_equal(all_labels[ids], labels)


def test_test_phase_walks_the_list_in_order_without_augmentation(dataset):
    from layers import augment
    from rmnet.data.images import load_bgr

    src = make_source(dataset, train=False)
    (images, _, weights, ids), (_, _, _, ids2) = take(src, 2)
    np.testing.assert_array_equal(ids, np.arange(8))
    np.testing.assert_array_equal(ids2, np.arange(8, 16))
    np.testing.assert_array_equal(weights, 1.0)
    np.testing.assert_array_equal(images[3], augment.apply(load_bgr(src.paths[3]), H, W, None))


def test_corrupt_image_gets_weight_zero_is_never_drawn_again_and_reported_once(dataset, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(dataset, root)
    paths, labels, _ = load_train_list(root)
    victim = Path(paths[0])
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])   # truncated JPEG
    messages: list[str] = []
    src = make_source(root, workers=2, log=messages.append, mining=False)
    seen_bad = 0
    batches = take(src, 40)                  # 40 batches of 4 ids = several rounds of 6 ids
    for images, _, weights, ids in batches:
        for i in np.flatnonzero(ids == 0):
            assert weights[i] == 0.0 and not images[i].any()
            seen_bad += 1
    assert seen_bad == 1                     # drawn once, then excluded by the miner
    assert src.bad == {0}
    assert len(messages) == 1 and victim.name in messages[0] and "skipped 1" in messages[0]


def test_every_image_unreadable_stops_with_a_message(dataset, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(dataset, root)
    for p in (root / "bounding_box_train").glob("*.jpg"):
        p.write_bytes(b"not a jpeg")
    src = make_source(root, mining=False)
    with pytest.raises(RuntimeError, match="no readable image"):
        take(src, 100)


# --- through Caffe ------------------------------------------------------------------------------

def data_net(tmp_path: Path, root: Path, classes: int, **data_kw) -> str:
    """Data layer -> InnerProduct -> AM-Softmax (per-sample losses) -> feedback to the data layer."""
    cfg = dict(root=str(root), height=H, width=W, batch_size=8, images_per_id=2, workers=1,
               prefetch=2, num_classes=classes, mining=True, weighted=True, name="data")
    cfg.update(data_kw)
    am = dict(num_classes=classes, scale=10.0, margin=0.2)
    text = f"""\
        name: "data_test"
        layer {{ name: "data" type: "Python"
                top: "data" top: "label" top: "sample_weight" top: "sample_id"
                param {{ lr_mult: 0 decay_mult: 0 }}
                python_param {{ module: "layers.data" layer: "MarketDataLayer"
                               param_str: '{json.dumps(cfg)}' }} }}
        layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
                inner_product_param {{ num_output: 6 weight_filler {{ type: "gaussian" std: 0.001 }} }} }}
        layer {{ name: "loss/am_softmax" type: "Python"
                bottom: "fc" bottom: "label" bottom: "sample_weight"
                top: "loss/am_softmax" top: "loss/am_softmax/per_sample"
                loss_weight: 1 loss_weight: 0
                param {{ lr_mult: 1 decay_mult: 1 }}
                python_param {{ module: "layers.losses" layer: "AMSoftmaxLossLayer"
                               param_str: '{json.dumps(am)}' }} }}
        layer {{ name: "hsm_feedback" type: "Python"
                bottom: "sample_id" bottom: "loss/am_softmax/per_sample"
                python_param {{ module: "layers.data" layer: "HardSampleFeedbackLayer"
                               param_str: '{{"source": "data", "weights": [1.0]}}' }} }}
    """
    path = tmp_path / "data_net.prototxt"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_layer_tops_and_feedback_reach_the_miner(caffe, dataset, tmp_path):
    from layers.data import batch_sources

    net = caffe.Net(data_net(tmp_path, dataset, 6), caffe.TRAIN)
    try:
        source = batch_sources.get("data", caffe.TRAIN)
        assert np.isnan(source.miner.losses).all()
        for _ in range(3):
            net.forward()
        data = net.blobs["data"].data
        assert data.shape == (8, 3, H, W) and data.min() >= 0 and data.max() <= 255
        assert data.max() > 50                               # real pixels, not zeros
        ids = net.blobs["sample_id"].data.astype(int)
        labels = net.blobs["label"].data.astype(int)
        np.testing.assert_array_equal(source.labels[ids], labels)
        assert labels.max() < 6
        w = net.blobs["sample_weight"].data
        assert w.min() > 0 and w.mean() == pytest.approx(1.0, abs=1e-5)
        # The per-sample losses of the last batch are what the miner now knows about those ids.
        known = source.miner.losses[ids]
        np.testing.assert_allclose(known, net.blobs["loss/am_softmax/per_sample"].data.ravel(),
                                   rtol=1e-6)
        assert np.isfinite(source.miner.losses).sum() >= 8
    finally:
        batch_sources.get("data", caffe.TRAIN).close()


def test_batch_counter_is_saved_and_a_resumed_layer_continues(caffe, dataset, tmp_path):
    from layers.data import batch_sources

    prototxt = data_net(tmp_path, dataset, 6, difficulty_ramp_iters=10)
    net = caffe.Net(prototxt, caffe.TRAIN)
    for _ in range(4):
        net.forward()
    assert net.params["data"][0].data[0] == 4
    first_ids = net.blobs["sample_id"].data.copy()
    net.save(str(tmp_path / "snap.caffemodel"))
    resumed = caffe.Net(prototxt, caffe.TRAIN, weights=str(tmp_path / "snap.caffemodel"))
    source = batch_sources.get("data", caffe.TRAIN)
    assert source is not None and source is not net.layers[0].source
    resumed.forward()
    try:
        assert resumed.params["data"][0].data[0] == 5
        assert source.first_batch == 4
        assert source.cfg.difficulty(0, 4) == pytest.approx(0.4)   # the ramp continues
        assert not np.array_equal(resumed.blobs["sample_id"].data, first_ids)
    finally:
        source.close()


def test_a_later_net_replaces_and_stops_the_earlier_source(caffe, dataset, tmp_path):
    from layers.data import batch_sources

    a = caffe.Net(data_net(tmp_path, dataset, 6), caffe.TRAIN)
    a.forward()
    first = batch_sources.get("data", caffe.TRAIN)
    b = caffe.Net(data_net(tmp_path, dataset, 6), caffe.TRAIN)
    try:
        assert first._pool is None                       # its workers were stopped
        assert batch_sources.get("data", caffe.TRAIN) is not first
        b.forward()
    finally:
        batch_sources.get("data", caffe.TRAIN).close()


def test_difficulty_ramp_and_rounds():
    ramp = DataConfig(root="x", difficulty_ramp_iters=100, difficulty_start=0.2)
    assert ramp.difficulty(0, 0) == 0.2 and ramp.difficulty(7, 50) == pytest.approx(0.6)
    assert ramp.difficulty(0, 1000) == 1.0
    rounds = DataConfig(root="x", difficulty_step=0.25)
    assert rounds.difficulty(2, 10**6) == 0.5 and rounds.difficulty(9, 0) == 1.0


def test_test_phase_layer_gives_unit_weights(caffe, dataset, tmp_path):
    from layers.data import batch_sources

    net = caffe.Net(data_net(tmp_path, dataset, 6), caffe.TEST)
    try:
        net.forward()
        np.testing.assert_array_equal(net.blobs["sample_weight"].data, 1.0)
        np.testing.assert_array_equal(net.blobs["sample_id"].data, np.arange(8))
        assert np.isnan(batch_sources.get("data", caffe.TEST).miner.losses).all()   # no mining in TEST
    finally:
        batch_sources.get("data", caffe.TEST).close()


def test_class_count_mismatch_is_refused(caffe, dataset, tmp_path):
    with pytest.raises(ValueError, match="6 train identities but the net was generated for "
                                         "num_classes=751"):
        caffe.Net(data_net(tmp_path, dataset, 751), caffe.TRAIN)


def test_missing_dataset_names_the_expected_layout(caffe, tmp_path):
    with pytest.raises(Exception, match="bounding_box_train"):
        caffe.Net(data_net(tmp_path, tmp_path / "nowhere", 6), caffe.TRAIN)


def test_unknown_param_is_refused(caffe, dataset, tmp_path):
    with pytest.raises(Exception, match="batchsize"):
        caffe.Net(data_net(tmp_path, dataset, 6, batchsize=3), caffe.TRAIN)


def test_data_benchmark_times_the_batches_it_says(caffe, capsys):
    from commands import bench_layers
    args = bench_layers.parse_args(["--data-only", "--data-batches", "3", "--data-batch", "16",
                                    "--workers", "1"])
    got = bench_layers.bench_data(caffe, args)
    assert got["images"] == 3 * 16
    assert got["batches_served"] == 5 + 3          # the warm-up forwards, then the timed ones
    assert got["rate"] == pytest.approx(got["images"] / got["seconds"])
    out = capsys.readouterr().out
    assert f"{got['rate']:10.0f} images/s over 3 batches" in out


def test_workers_do_not_hang_after_the_parent_used_opencv_threads(dataset):
    """OpenCV's thread pool does not survive fork: without the guard in BatchSource.start the
    workers hang in their first resize once this process has run a parallel OpenCV call."""
    import cv2
    big = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
    for _ in range(3):
        cv2.resize(big, (700, 700))
        cv2.GaussianBlur(big, (9, 9), 3)
    threads = cv2.getNumThreads()
    src = make_source(dataset, workers=2, worker_timeout=30)
    (images, *_), = take(src, 1)
    assert images.any()
    assert cv2.getNumThreads() == threads          # the caller's setting is back


def test_a_killed_worker_is_named_at_once_and_close_never_waits_on_it(dataset):
    """A worker killed mid-run (out of memory, say) is reported by name at the next batch,
    without waiting out worker_timeout, and stopping the source returns at once."""
    import signal
    import time

    src = make_source(dataset, workers=2, worker_timeout=120)
    src.next()
    victim = src._pool._workers[0][0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"worker 0 \(pid {victim.pid}\) (died|is gone)"):
        for _ in range(4):
            src.next()
    stopped = src._pool._workers[1][0]
    os.kill(stopped.pid, signal.SIGSTOP)                # a worker that hangs forever
    src.close()
    assert time.monotonic() - t0 < 30
    assert not victim.is_alive() and not stopped.is_alive() and src._pool is None


def test_batches_larger_than_a_pipe_with_deep_prefetch_do_not_deadlock(dataset, tmp_path):
    """Jobs over the 64 KiB pipe buffer (long paths), three queued per worker: the parent never
    blocks sending a job while a worker blocks sending a finished batch."""
    import pickle

    deep = tmp_path
    for i in range(15):                                 # a ~3700-character root
        deep = deep / (f"{i:02d}" + "d" * 240)
    deep.mkdir(parents=True)
    (deep / "market").symlink_to(dataset)
    paths, labels, _ = load_train_list(deep / "market")
    cfg = DataConfig(root=str(deep / "market"), height=H, width=W, batch_size=24,
                     images_per_id=4, workers=2, prefetch=6, worker_timeout=60)
    serial = dataclasses.replace(cfg, workers=0)
    assert len(pickle.dumps(BatchSource(serial, paths, labels, True)._plan()[0])) > 64 * 1024
    src = BatchSource(cfg, paths, labels, True)
    ref = BatchSource(serial, paths, labels, True)
    for (a, *_), (b, *_) in zip(take(src, 8), take(ref, 8)):
        assert np.array_equal(a, b)
