"""rmnet.data.synthetic: the seeded Market-1501-shaped dataset (real JPEG files) and its identity
signal, checked with hand-written baselines (the project's metrics module is not used here)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rmnet.data.images import load_bgr
from rmnet.data.market import SPLITS, load_market, pids_camids
from rmnet.data.synthetic import SyntheticConfig, generate, main

CFG = SyntheticConfig(train_ids=24, test_ids=24, images_per_id=6, queries_per_id=2, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "market"
    summary = generate(out, CFG)
    assert summary.counts == {"train": 144, "query": 48, "gallery": 144 + 12 + 24}
    return out


@pytest.fixture(scope="module")
def ds(dataset):
    return load_market(dataset)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(dataset, tmp_path):
    again = tmp_path / "again"
    generate(again, CFG)
    a, b = _files(dataset), _files(again)
    assert len(a) == 144 + 48 + 180 + 1           # + synthetic.json
    assert a == b


def test_different_seed_differs(tmp_path):
    small = dict(train_ids=3, test_ids=3, images_per_id=2, queries_per_id=1, junk=1,
                 distractors=1)
    generate(tmp_path / "s1", SyntheticConfig(seed=1, **small))
    generate(tmp_path / "s2", SyntheticConfig(seed=2, **small))
    a, b = _files(tmp_path / "s1"), _files(tmp_path / "s2")
    assert sorted(a) != sorted(b)                  # other pids, cameras and frame numbers
    assert not set(a.values()) & set(b.values())   # and no image in common


def test_layout_and_identities(ds, dataset):
    assert ds.layout == "market1501"
    train = {r.pid for r in ds.train}
    test = {r.pid for r in ds.query} | {r.pid for r in ds.gallery if r.pid > 0}
    assert len(train) == 24 and len(test) == 24 and not train & test      # disjoint
    assert {r.pid for r in ds.query} == {r.pid for r in ds.gallery if r.pid > 0}
    assert all(1 <= p <= 1501 for p in train | test)
    meta = json.loads((dataset / "synthetic.json").read_text())
    assert meta["config"]["seed"] == 0 and meta["train_pids"] == sorted(train)
    # every identity is seen by at least two cameras; all six cameras are used
    for split in (ds.train, ds.gallery):
        cams = {}
        for r in split:
            cams.setdefault(r.pid, set()).add(r.camid)
        assert all(len(c) >= 2 for p, c in cams.items() if p > 0)
    assert {r.camid for r in ds.train + ds.gallery + ds.query} == set(range(1, 7))


def test_every_query_has_a_true_match_on_another_camera(ds):
    gallery = {(r.pid, r.camid) for r in ds.gallery}
    per_id = {}
    for r in ds.query:
        assert any(pid == r.pid and cam != r.camid for pid, cam in gallery), r.name
        per_id.setdefault(r.pid, []).append(r.camid)
    assert all(len(c) == 2 and len(set(c)) == 2 for c in per_id.values())   # distinct cameras


def test_junk_and_distractors(ds):
    pids = [r.pid for r in ds.gallery]
    assert pids.count(-1) == CFG.n_junk == 12
    assert pids.count(0) == CFG.n_distractors == 24
    assert all(r.name.startswith("-1_c") for r in ds.gallery if r.pid == -1)
    assert all(r.name.startswith("0000_c") for r in ds.gallery if r.pid == 0)
    assert all(r.pid > 0 for r in ds.train + ds.query)


def test_jpegs_decode(ds):
    for r in ds.train[:10] + ds.query[:10] + ds.gallery[:10] + ds.gallery[-10:]:
        data = r.path.read_bytes()
        assert data[:3] == b"\xff\xd8\xff"
        img = load_bgr(r.path)
        assert img.shape == (128, 64, 3) and img.dtype == np.uint8
        assert img.std() > 10                     # a picture, not a flat fill


def test_image_size_is_configurable(tmp_path):
    cfg = SyntheticConfig(train_ids=2, test_ids=2, images_per_id=2, queries_per_id=1,
                          height=96, width=48, seed=5)
    generate(tmp_path / "d", cfg)
    ds = load_market(tmp_path / "d")
    assert {load_bgr(r.path).shape for r in ds.train + ds.gallery} == {(96, 48, 3)}


def test_refuses_to_overwrite_unless_forced(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = ["--out", str(out), "--train-ids", "2", "--test-ids", "2", "--images-per-id", "2",
            "--queries-per-id", "1", "--seed", "1"]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"
    assert main(args + ["--force"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "bounding_box_train/ 4 images of 2 ids" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(list(SPLITS.values())
                                                           + ["synthetic.json"])
    assert [p.name for p in tmp_path.iterdir()] == ["d"]    # no temporary folders left


def test_bad_arguments(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--images-per-id", "1"]) == 2
    assert "images_per_id must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="cameras must be in 2..6"):
        SyntheticConfig(cameras=7)
    with pytest.raises(ValueError, match="queries_per_id must be <= cameras"):
        SyntheticConfig(cameras=2, queries_per_id=3)


# --- the identity signal ---------------------------------------------------------------------

def _rank1_map(dist, qp, qc, gp, gc) -> tuple[float, float, float]:
    """Market protocol (junk -1 and same pid + same camera removed), non-interpolated AP.
    Also the rank-1 a random ranking would reach on average (fraction of true matches)."""
    r1, aps, chance = [], [], []
    for i in range(len(qp)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~(((gp[order] == qp[i]) & (gc[order] == qc[i])) | (gp[order] == -1))
        match = (gp[order] == qp[i])[keep]
        if not match.any():
            continue
        hits = np.flatnonzero(match)
        r1.append(match[0])
        aps.append(np.mean(np.arange(1, len(hits) + 1) / (hits + 1)))
        chance.append(match.mean())
    return float(np.mean(r1)), float(np.mean(aps)), float(np.mean(chance))


def test_rank1_map_helper_by_hand():
    # one query (pid 1, cam 1); gallery: junk, same-camera match (removed), a wrong id, a match
    gp, gc = np.array([-1, 1, 2, 1]), np.array([2, 1, 2, 3])
    dist = np.array([[0.0, 0.1, 0.2, 0.3]])
    r1, ap, chance = _rank1_map(dist, np.array([1]), np.array([1]), gp, gc)
    assert (r1, ap, chance) == (0.0, 0.5, 0.5)    # the match is 2nd of the 2 kept items


def _stripe_histograms(img: np.ndarray) -> np.ndarray:
    """The classic baseline: HSV colour histograms of the upper and lower body (the central half
    of the crop's width), square-rooted so that L2 distance is the Hellinger distance."""
    h, w = img.shape[:2]
    centre = img[:, w // 4: w - w // 4]
    out = []
    for top, bottom in ((0.1, 0.5), (0.5, 0.95)):
        hsv = cv2.cvtColor(np.ascontiguousarray(centre[int(h * top):int(h * bottom)]),
                           cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
        out.append(np.sqrt(hist / hist.sum()))
    return np.concatenate(out)


def _pixels(img: np.ndarray) -> np.ndarray:
    x = cv2.resize(img, (8, 16), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    x -= x.mean()
    return x / np.linalg.norm(x)


def _features(records, f) -> np.ndarray:
    return np.stack([f(load_bgr(r.path)) for r in records])


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _pca_lda(x: np.ndarray, y: np.ndarray, dims: int = 64, reg: float = 1e-2) -> np.ndarray:
    """PCA to ``dims`` dimensions, then Fisher LDA (within-class whitening, then the
    between-class directions): the classic learnt linear metric. Returns the projection."""
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    pca = vt[:dims].T
    x = x @ pca
    mu, d = x.mean(0), x.shape[1]
    sw, sb = np.zeros((d, d)), np.zeros((d, d))
    for c in np.unique(y):
        xc = x[y == c]
        m = xc.mean(0)
        sw += (xc - m).T @ (xc - m)
        sb += len(xc) * np.outer(m - mu, m - mu)
    sw += np.eye(d) * reg * np.trace(sw) / d
    ew, vw = np.linalg.eigh(sw)
    white = vw / np.sqrt(ew)
    _, vb = np.linalg.eigh(white.T @ sb @ white)
    return pca @ white @ vb[:, ::-1][:, :len(np.unique(y)) - 1]


def test_colour_histograms_match_far_above_chance_but_not_perfectly(ds):
    qp, qc = pids_camids(ds.query)
    gp, gc = pids_camids(ds.gallery)
    fq, fg = _features(ds.query, _stripe_histograms), _features(ds.gallery, _stripe_histograms)
    r1, m_ap, chance = _rank1_map(_dist(fq, fg), qp, qc, gp, gc)
    assert chance < 0.05
    assert r1 > 5 * chance and r1 > 0.25 and m_ap > 0.2
    assert r1 < 0.9                                # the nuisance makes it no trivial task


def test_identity_signal_learnt_on_train_ids_transfers_to_test_ids(ds):
    """A metric learnt on the train split (LDA on colour histograms + tiny pixels) ranks the
    disjoint test identities far better than the same features unlearnt: the images carry an
    identity signal that training can pick up, as a CNN's training is meant to."""
    def f(img):
        return np.concatenate([_stripe_histograms(img), 3 * _pixels(img)])
    qp, qc = pids_camids(ds.query)
    gp, gc = pids_camids(ds.gallery)
    fq, fg = _features(ds.query, f), _features(ds.gallery, f)
    _, raw_map, _ = _rank1_map(_dist(fq, fg), qp, qc, gp, gc)
    proj = _pca_lda(_features(ds.train, f), ds.train_labels())
    r1, learnt_map, _ = _rank1_map(_dist(fq @ proj, fg @ proj), qp, qc, gp, gc)
    assert learnt_map > raw_map + 0.15 and r1 > 0.5
