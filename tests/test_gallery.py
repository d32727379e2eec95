"""The persistent gallery (rmnet/gallery): FAISS indexes, SQLite metadata, atomic saves, model and
dimension checks, evaluation through an index, and tools/gallery.py end to end on real JPEGs of
the synthetic dataset with a real (random) caffemodel of the light deploy net."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rmnet.bench.gallery import SyntheticDescriptors, exact_topk, recall_at
from rmnet.eval.metrics import compute_distance, evaluate_rank
from rmnet.gallery import Entry, Gallery, GalleryError, entry_from_path
from rmnet.gallery import gallery as gmod
from rmnet.gallery import index as ix
from rmnet.gallery.evaluate import index_distance, topk_distance
from tests.absent_packages import needs
from tests.conftest import REPO

PROTOTXT = REPO / "prototxt" / "light" / "deploy.prototxt"
MODEL_A = "a" * 64
MODEL_B = "b" * 64


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def feats(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def entries(n: int, start: int = 0) -> list[Entry]:
    return [Entry(path=f"crop_{start + i:04d}.jpg", camera=(start + i) % 6 + 1,
                  timestamp=1000.0 + start + i, pid=(start + i) // 3) for i in range(n)]


# --- index choice and kinds -------------------------------------------------------------------

def test_auto_spec_by_size():
    assert ix.auto_spec(10).kind == "flat"
    assert ix.auto_spec(ix.FLAT_MAX - 1).kind == "flat"
    assert ix.auto_spec(ix.FLAT_MAX).kind == "hnsw"
    assert ix.auto_spec(ix.HNSW_MAX - 1).kind == "hnsw"
    assert ix.auto_spec(ix.HNSW_MAX).kind == "ivf-sq8"
    assert ix.auto_spec(ix.SQ8_MAX - 1).kind == "ivf-sq8"
    assert ix.auto_spec(ix.SQ8_MAX).kind == "ivf-pq"
    # nlist: the power of two at or below 2 sqrt(n), and n / 39 training points a cell at least
    assert ix.default_nlist(10 ** 6) == 1024 and ix.default_nlist(10 ** 5) == 512
    assert ix.default_nlist(1000) == 25 and ix.default_nlist(100) == 2
    spec = ix.resolve(ix.IndexSpec("ivf-pq"), 10 ** 6, 256)
    assert (spec.nlist, spec.m, spec.nprobe) == (1024, 64, 128)
    assert ix.default_nprobe(4) == 4 and ix.default_nprobe(32) == 8
    # ef_search: 16 ceil(3 (n / 10^5) ** 0.6), at least 32: 3 x 2 ** 0.6 = 4.55 -> 80 at 2x10^5,
    # 3 x 10 ** 0.6 = 11.9 -> 192 at 10^6, 3 x 0.5 ** 0.6 = 1.98 -> 32 at 5x10^4
    assert [ix.default_ef_search(n) for n in (1, 10 ** 4, 5 * 10 ** 4, 10 ** 5, 2 * 10 ** 5,
                                              10 ** 6)] == [32, 32, 32, 48, 80, 192]
    spec = ix.resolve(ix.IndexSpec("hnsw"), 10 ** 5, 256)
    assert (spec.m, spec.ef_search, spec.ef_construction) == (32, 48, 40)
    assert ix.resolve(ix.parse_spec("hnsw:m=16,ef_search=200"), 10 ** 5, 256).ef_search == 200
    assert ix.approx_spec(1000).kind == "hnsw"   # --index approx on a small gallery


def test_parse_spec():
    assert ix.parse_spec("auto") is None
    s = ix.parse_spec("ivf-sq8:nlist=64,nprobe=8")
    assert (s.kind, s.nlist, s.nprobe) == ("ivf-sq8", 64, 8)
    assert str(s) == "ivf-sq8:nlist=64,nprobe=8"
    assert ix.parse_spec(str(s)) == s
    assert ix.IndexSpec.from_json(s.to_json()) == s
    for bad, why in (("nope", "unknown index kind"), ("ivf-sq8:nlist", "expected name=value"),
                     ("ivf-sq8:color=3", "unknown index parameter"),
                     ("ivf-sq8:nlist=x", "bad index spec")):
        with pytest.raises(ix.IndexSpecError, match=why):
            ix.parse_spec(bad)


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw"])
def test_every_kind_adds_searches_removes(kind):
    x = feats(400, 16, seed=1)
    spec = ix.resolve(ix.IndexSpec(kind, nlist=4 if kind != "flat" else 0, nprobe=4), 400, 16)
    built = ix.build_filled(spec, x, ids=np.arange(400, dtype=np.int64) * 7 + 3)
    ids, sims = ix.search(built.index, x[:5], 3)
    # each vector finds itself first (PQ codes are lossy: among its top 3)
    assert all((3 + 7 * i) in ids[i] for i in range(5))
    if kind != "ivf-pq":
        assert list(ids[:, 0]) == [3 + 7 * i for i in range(5)]
    index = ix.remove(built.index, spec, np.array([3, 10]))
    assert index.ntotal == 398
    ids, _ = ix.search(index, x[:2], 10)
    assert 3 not in ids and 10 not in ids


# --- the gallery in memory and on disk --------------------------------------------------------

def test_round_trip_add_search_remove_save_load(tmp_path):
    folder = tmp_path / "g"
    x = feats(50)
    g = Gallery.create(folder, 16, MODEL_A, model_info={"files": ["m.prototxt"]})
    ids = g.add(x, entries(50), model_sha256=MODEL_A)
    assert list(ids) == list(range(50)) and len(g) == 50 and g.spec.kind == "flat"
    hits = g.search(x[[7, 20]], k=3, model_sha256=MODEL_A)
    top = hits[0][0]
    assert (top.id, top.path, top.camera, top.timestamp, top.pid) == \
        (7, "crop_0007.jpg", 2, 1007.0, 2)
    assert top.score == pytest.approx(1.0, abs=1e-5)
    assert hits[1][0].id == 20 and [h.score for h in hits[0]] == sorted(
        [h.score for h in hits[0]], reverse=True)
    # scores are the cosine similarities
    want = np.sort(x @ x[7])[::-1][:3]
    np.testing.assert_allclose([h.score for h in hits[0]], want, atol=1e-5)
    assert g.remove([7, 8, 999]) == 2 and len(g) == 48
    assert 7 not in [h.id for h in g.search(x[7], 5, model_sha256=MODEL_A)[0]]
    g.save()

    g2 = Gallery.load(folder)
    assert len(g2) == 48 and g2.next_id == 50 and g2.model_sha256 == MODEL_A
    assert g2.model_info == {"files": ["m.prototxt"]}
    assert g2.get([0, 7, 49]) == [g.get([0])[0], None, g.get([49])[0]]
    np.testing.assert_array_equal(g2.search_ids(x, 5, model_sha256=MODEL_A)[0],
                                  g.search_ids(x, 5, model_sha256=MODEL_A)[0])
    # incremental: new ids continue after the removed ones, the next save is a new version
    new = g2.add(feats(5, seed=9), entries(5, start=50), model_sha256=MODEL_A)
    assert list(new) == [50, 51, 52, 53, 54]
    v2 = g2.save()
    g3 = Gallery.load(folder)
    assert len(g3) == 53 and g3.version == 2 and v2.name == "v000002"
    assert g3.get([52])[0].path == "crop_0052.jpg"
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["current"] == "v000002" and manifest["count"] == 53


def test_empty_gallery_and_short_answers(tmp_path):
    g = Gallery.create(tmp_path / "g", 16, MODEL_A)
    assert g.search(feats(2), 5, model_sha256=MODEL_A) == [[], []]
    g.save()
    g = Gallery.load(tmp_path / "g")
    assert len(g) == 0 and g.spec is None
    g.add(feats(3), entries(3), model_sha256=MODEL_A)
    hits = g.search(feats(1, seed=7), 10, model_sha256=MODEL_A)[0]
    assert sorted(h.id for h in hits) == [0, 1, 2]      # k beyond the gallery: what there is


def test_entries_from_market_names():
    e = entry_from_path("/x/0002_c3s1_000451_03.jpg")
    assert (e.path, e.camera, e.pid, e.timestamp) == ("/x/0002_c3s1_000451_03.jpg", 3, 2, None)
    assert entry_from_path("-1_c1s1_000401_03.jpg").pid == -1
    e = entry_from_path("/frames/cam7/person.png")
    assert (e.camera, e.pid) == (None, None)


def test_bad_entries_refused_and_nothing_added(tmp_path):
    g = Gallery.create(tmp_path / "g", 16, MODEL_A)
    with pytest.raises(GalleryError, match=r"entry 1 \(b\): camera must be an integer"):
        g.add(feats(2), [Entry("a"), Entry("b", camera="3")], model_sha256=MODEL_A)
    with pytest.raises(GalleryError, match="2 descriptors but 1 entries"):
        g.add(feats(2), [Entry("a")], model_sha256=MODEL_A)
    assert len(g) == 0 and len(g.store) == 0


def test_wrong_model_and_dimension_refused(tmp_path):
    folder = tmp_path / "gal"
    g = Gallery.create(folder, 16, MODEL_A, model_info={"files": ["a.caffemodel"]})
    g.add(feats(10), entries(10), model_sha256=MODEL_A)
    g.save()
    g = Gallery.load(folder)
    with pytest.raises(GalleryError) as e:
        g.add(feats(2), entries(2), model_sha256=MODEL_B)
    msg = str(e.value)
    assert str(folder) in msg and "bbbbbbbbbbbb" in msg and "aaaaaaaaaaaa" in msg
    assert "a.caffemodel" in msg
    with pytest.raises(GalleryError, match="queries come from model bbbbbbbbbbbb"):
        g.search(feats(1), 3, model_sha256=MODEL_B)
    with pytest.raises(GalleryError, match=rf"{folder}: descriptors are 8-d, this gallery holds "
                                           r"16-d"):
        g.add(feats(2, dim=8), entries(2), model_sha256=MODEL_A)
    with pytest.raises(GalleryError, match="queries are 32-d"):
        g.search(feats(1, dim=32), 3, model_sha256=MODEL_A)
    bad = feats(2)
    bad[1, 3] = np.nan
    with pytest.raises(GalleryError, match="row 1 has a NaN"):
        g.add(bad, entries(2), model_sha256=MODEL_A)
    assert len(g) == 10


def test_auto_gallery_grows_from_flat_to_hnsw_to_ivf(tmp_path, monkeypatch):
    monkeypatch.setattr(ix, "FLAT_MAX", 2000)
    monkeypatch.setattr(ix, "HNSW_MAX", 2500)
    data = SyntheticDescriptors(3000, dim=32, chunk=1000, seed=2)
    x = data.all()
    g = Gallery.create(tmp_path / "g", 32, MODEL_A)
    g.add(x[:1500], entries(1500), model_sha256=MODEL_A)
    assert g.spec.kind == "flat"
    g.add(x[1500:2200], entries(700, start=1500), model_sha256=MODEL_A)
    assert g.spec.kind == "hnsw" and len(g) == 2200 and g.index.ntotal == 2200
    ids, _ = g.search_ids(x[:2200], 1, model_sha256=MODEL_A)
    assert np.mean(ids[:, 0] == np.arange(2200)) > 0.99
    g.add(x[2200:], entries(800, start=2200), model_sha256=MODEL_A)
    assert g.spec.kind == "ivf-sq8" and len(g) == 3000 and g.trained_on == 3000
    assert g.spec.nlist == ix.default_nlist(3000)
    # every entry, old and new, is found by its own descriptor (scanning every cell)
    g.set_search_params(nprobe=g.spec.nlist)
    ids, _ = g.search_ids(x, 1, model_sha256=MODEL_A)
    assert np.mean(ids[:, 0] == np.arange(3000)) > 0.99
    g.save()
    loaded = Gallery.load(tmp_path / "g")
    assert loaded.spec == g.spec and ix.faiss_module().extract_index_ivf(
        loaded.index).nprobe == g.spec.nlist
    # an index asked for explicitly stays what was asked
    h = Gallery.create(tmp_path / "h", 32, MODEL_A, index="flat")
    h.add(x, entries(3000), model_sha256=MODEL_A)
    assert h.spec.kind == "flat"


def test_hnsw_search_breadth_follows_the_gallery_unless_set(tmp_path, monkeypatch):
    # the rule's own steps are at tens of thousands of entries: a small stand-in rule here
    monkeypatch.setattr(ix, "default_ef_search", lambda n: 32 if n < 100 else 48)
    g = Gallery.create(tmp_path / "g", 16, MODEL_A, index="hnsw")
    g.add(feats(90), entries(90), model_sha256=MODEL_A)
    assert g.spec.ef_search == 32
    g.add(feats(20, seed=1), entries(20, start=90), model_sha256=MODEL_A)
    assert g.spec.ef_search == 48                   # 110 entries
    assert ix.faiss_module().downcast_index(g.index.index).hnsw.efSearch == 48
    g.set_search_params(ef_search=40)
    g.add(feats(10, seed=2), entries(10, start=110), model_sha256=MODEL_A)
    assert g.spec.ef_search == 40                   # set by hand: kept


@pytest.mark.parametrize("kind", ["hnsw", "ivf-sq8"])
def test_approximate_gallery_round_trip(tmp_path, kind):
    """An approximate gallery saved and loaded answers exactly as before, keeps its spec and
    search breadth, and removes and adds after loading."""
    x = SyntheticDescriptors(3000, dim=32, chunk=1000, seed=4).all()
    request = "hnsw:ef_search=50" if kind == "hnsw" else "ivf-sq8:nlist=16,nprobe=5"
    g = Gallery.create(tmp_path / "g", 32, MODEL_A, index=request)
    g.add(x[:2500], entries(2500), model_sha256=MODEL_A)
    g.save()
    g2 = Gallery.load(tmp_path / "g")
    assert g2.spec == g.spec and len(g2) == 2500
    if kind == "hnsw":
        assert (g2.spec.m, g2.spec.ef_search) == (32, 50)
        assert ix.faiss_module().downcast_index(g2.index.index).hnsw.efSearch == 50
    else:
        assert ix.faiss_module().extract_index_ivf(g2.index).nprobe == 5
    a_ids, a_sims = g.search_ids(x[:200], 10, model_sha256=MODEL_A)
    b_ids, b_sims = g2.search_ids(x[:200], 10, model_sha256=MODEL_A)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_array_equal(a_sims, b_sims)
    assert g2.remove([0, 1, 2]) == 3 and len(g2) == 2497 and g2.index.ntotal == 2497
    g2.add(x[2500:], entries(500, start=2500), model_sha256=MODEL_A)
    g2.save()
    g3 = Gallery.load(tmp_path / "g")
    ids, _ = g3.search_ids(x, 1, model_sha256=MODEL_A)
    assert not np.isin([0, 1, 2], ids).any() and len(g3) == 2997
    assert np.mean(ids[2500:, 0] == np.arange(2500, 3000)) > 0.95   # added after loading


def test_approximate_recall_on_structured_descriptors():
    """IVF-SQ8 on 20,000 structured 256-d descriptors (10 images an identity), 200 new images of
    gallery identities as queries, against exact search. Recall grows with the cells scanned,
    and scanning them all leaves only the 8-bit quantisation's loss."""
    # Thresholds: scanning 64 of 256 cells (a quarter of the gallery) gives 0.97, and all of
    # them 0.98, with FAISS 1.12.0 on this seeded set; 0.9 and 0.95 leave room for another
    # build's k-means, while a broken index (wrong ids, metric or normalisation) scores near 0.
    data = SyntheticDescriptors(20_000, chunk=10_000, seed=5)
    x, q = data.all(), data.queries(200, stream=3)
    gt, _ = exact_topk(q, data.chunks, 10)
    built = ix.build_filled(ix.IndexSpec("ivf-sq8", nlist=256), x, seed=0)
    recalls = {}
    for nprobe in (4, 64, 256):
        ix.set_search_params(built.index, ix.IndexSpec("ivf-sq8", nlist=256, nprobe=nprobe))
        ids, _ = ix.search(built.index, q, 10)
        recalls[nprobe] = recall_at(ids, gt, 10)
    assert recalls[4] < recalls[64] <= recalls[256]
    assert recalls[64] >= 0.9, recalls
    assert recalls[256] >= 0.95, recalls
    exact = ix.build_filled(ix.IndexSpec("flat"), x)
    ids, _ = ix.search(exact.index, q, 10)
    assert recall_at(ids, gt, 10) == 1.0


def test_hnsw_recall_on_structured_descriptors():
    """HNSW (m 32) on the same 20,000 structured descriptors and queries as the IVF test: recall
    against exact search grows with the search breadth, and the default breadth for this size
    reaches the recall the benchmark's target asks for."""
    # Thresholds: ef_search 16 gives 0.948 and the default for 20,000 entries (32) 0.988 with
    # FAISS 1.12.0 on this seeded set (threads insert in parallel, so the graph may differ a
    # little from run to run); 0.95 leaves room, while a broken index (wrong ids, metric or
    # normalisation) scores near 0.
    data = SyntheticDescriptors(20_000, chunk=10_000, seed=5)
    x, q = data.all(), data.queries(200, stream=3)
    gt, _ = exact_topk(q, data.chunks, 10)
    built = ix.build_filled(ix.IndexSpec("hnsw"), x)
    assert built.spec.ef_search == ix.default_ef_search(20_000) == 32
    recalls = {}
    for ef in (16, 32):
        ix.set_search_params(built.index, replace(built.spec, ef_search=ef))
        ids, _ = ix.search(built.index, q, 10)
        recalls[ef] = recall_at(ids, gt, 10)
    assert recalls[16] < recalls[32]
    assert recalls[32] >= 0.95, recalls


# --- atomic saves -----------------------------------------------------------------------------

def _saved(folder: Path, n: int) -> Gallery:
    g = Gallery.create(folder, 16, MODEL_A)
    g.add(feats(n), entries(n), model_sha256=MODEL_A)
    g.save()
    return Gallery.load(folder)


@pytest.mark.parametrize("hook", ["write_index_file", "write_meta_file", "write_manifest"])
def test_crash_mid_save_leaves_previous_gallery(tmp_path, monkeypatch, hook):
    folder = tmp_path / "g"
    g = _saved(folder, 20)
    g.add(feats(30, seed=4), entries(30, start=20), model_sha256=MODEL_A)
    real = getattr(gmod, hook)

    def crash(obj, path):
        if hook != "write_manifest":     # (the manifest itself is written atomically)
            real(obj, path)              # the file is (partly) there ...
            with open(path, "r+b") as f:     # ... cut short, and then the process "dies"
                f.truncate(10)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(gmod, hook, crash)
    with pytest.raises(KeyboardInterrupt):
        g.save()
    old = Gallery.load(folder)
    assert len(old) == 20 and old.version == 1
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "MANIFEST.json", "v000001"]
    monkeypatch.setattr(gmod, hook, real)
    g.save()                              # the next save works and cleans up
    assert len(Gallery.load(folder)) == 50
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".lock", "MANIFEST.json", "v000001", "v000002"]


def test_crash_after_new_version_before_manifest(tmp_path, monkeypatch):
    """The new version folder is complete and renamed, the process dies before the manifest
    switch: readers still get the old version; the orphan is removed by the next save."""
    folder = tmp_path / "g"
    g = _saved(folder, 5)
    g.add(feats(5, seed=2), entries(5, start=5), model_sha256=MODEL_A)

    def die(manifest, path):
        raise SystemExit("killed")

    monkeypatch.setattr(gmod, "write_manifest", die)
    monkeypatch.setattr(gmod.shutil, "rmtree", lambda *a, **k: None)   # no cleanup: a real kill
    with pytest.raises(SystemExit):
        g.save()
    assert (folder / "v000002").is_dir()
    assert len(Gallery.load(folder)) == 5
    monkeypatch.undo()
    g.save()
    assert Gallery.load(folder).version == 3 and len(Gallery.load(folder)) == 10
    assert not (folder / "v000002").exists()


def test_old_versions_pruned_and_lock(tmp_path):
    folder = tmp_path / "g"
    g = _saved(folder, 3)
    for _ in range(3):
        g.save()
    assert sorted(p.name for p in folder.glob("v*")) == ["v000003", "v000004"]
    import fcntl
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(GalleryError, match=r"another process is saving this gallery "
                                               r"\(waited 0.2 s"):
            g.save(lock_timeout=0.2)


def test_damaged_galleries_are_errors(tmp_path):
    with pytest.raises(GalleryError, match="no such gallery folder"):
        Gallery.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GalleryError, match=r"not a gallery \(no MANIFEST.json\)"):
        Gallery.load(tmp_path / "empty")
    folder = tmp_path / "g"
    _saved(folder, 10)
    manifest = folder / "MANIFEST.json"
    good = manifest.read_text()
    manifest.write_text(good[:40])
    with pytest.raises(GalleryError, match=rf"{manifest}: corrupt gallery manifest"):
        Gallery.load(folder)
    m = json.loads(good)
    del m["dim"]
    manifest.write_text(json.dumps(m))
    with pytest.raises(GalleryError, match=r"missing dim"):
        Gallery.load(folder)
    manifest.write_text(good)
    index_file = folder / "v000001" / "index.faiss"
    data = bytearray(index_file.read_bytes())
    data[-5] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match=rf"{index_file}: sha256 differs"):
        Gallery.load(folder)
    index_file.write_bytes(bytes(data[:100]))
    with pytest.raises(GalleryError, match="bytes, the manifest says"):
        Gallery.load(folder)
    with pytest.raises(GalleryError, match="already holds a gallery"):
        Gallery.create(folder, 16, MODEL_A)


# --- evaluation through an index --------------------------------------------------------------

def test_topk_distance_by_hand():
    ids = np.array([[2, 0, -1], [1, 3, 2]])
    sims = np.array([[0.9, 0.5, -np.inf], [0.8, 0.1, 0.0]], np.float32)
    d = topk_distance(ids, sims, 4)
    inf = np.inf
    np.testing.assert_allclose(d, [[0.5, inf, 0.1, inf], [inf, 0.2, 1.0, 0.9]], atol=1e-6)
    # unretrieved true matches rank after every retrieved item
    res = evaluate_rank(d, [7, 8], [7, 7, 1, 8], [1, 1], [2, 3, 2, 2])
    # query 0 (pid 7, cam 1): list 2 (neg), 0 (match, rank 2), then 1 (match, rank 3: +inf)
    assert res.ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # query 1 (pid 8): 1, 3 (match at rank 2)
    assert res.ap[1] == pytest.approx(1 / 2)


def test_exact_index_scores_as_brute_force():
    rng = np.random.default_rng(0)
    qf, gf = rng.standard_normal((30, 32)), rng.standard_normal((200, 32))
    q_pids, g_pids = rng.integers(1, 8, 30), rng.integers(0, 8, 200)
    q_cam, g_cam = rng.integers(1, 4, 30), rng.integers(1, 4, 200)
    brute = evaluate_rank(compute_distance(qf, gf), q_pids, g_pids, q_cam, g_cam)
    dist, spec, k = index_distance(qf, gf, "exact", k=1000)
    assert spec.kind == "flat" and k == 200
    exact = evaluate_rank(dist, q_pids, g_pids, q_cam, g_cam)
    np.testing.assert_allclose(exact.cmc, brute.cmc)
    assert exact.mAP == pytest.approx(brute.mAP, abs=1e-12)
    assert exact.mAP_official == pytest.approx(brute.mAP_official, abs=1e-12)
    # a truncated exact list keeps the CMC of the ranks it covers
    dist, _, k = index_distance(qf, gf, "exact", k=60)
    short = evaluate_rank(dist, q_pids, g_pids, q_cam, g_cam, max_rank=10)
    assert k == 60 and np.isfinite(dist).sum(axis=1).max() == 60
    np.testing.assert_allclose(short.cmc, brute.cmc[:10])
    # approx on a tiny gallery: an HNSW index over it
    dist, spec, _ = index_distance(qf, gf, "approx")
    assert spec.kind == "hnsw"


def _load(tool: str):
    spec = importlib.util.spec_from_file_location(f"{tool}_tool", REPO / "tools" / f"{tool}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_main(mod, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = mod.main([str(a) for a in args])
        except SystemExit as e:   # argparse's usage errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


@needs("faiss")   # through tools/eval_market.py, which reports the ImportError itself
def test_eval_market_index_exact_equals_brute_force(tmp_path):
    from rmnet.eval.features import FeatureSet, write_features
    rng = np.random.default_rng(1)

    def fs(n, pids, cams):
        f = unit(rng.standard_normal((n, 64)) + 2.0 * np.eye(64)[pids % 64])
        return FeatureSet(f, np.asarray(pids), np.asarray(cams), [f"{i}.jpg" for i in range(n)])

    q = fs(40, rng.integers(1, 20, 40), rng.integers(1, 7, 40))
    g = fs(300, rng.integers(-1, 20, 300), rng.integers(1, 7, 300))
    path = tmp_path / "feats.h5"
    write_features(path, q, g, {"flip": 0})
    tool = _load("eval_market")
    outs = {}
    for name, extra in (("brute", []), ("exact", ["--index", "exact"]),
                        ("approx", ["--index", "approx"])):
        code, stdout, stderr = run_main(tool, "--features", path, "--json",
                                        tmp_path / f"{name}.json", *extra)
        assert code == 0, stderr
        outs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for key in ("cmc", "mAP", "mAP_official", "mINP", "num_valid_queries"):
        assert outs["exact"][key] == outs["brute"][key], key
    assert outs["exact"]["config"]["index"] == {"mode": "exact", "k": 1000}
    assert 0 < outs["approx"]["mAP"] <= 1
    code, _, stderr = run_main(tool, "--features", path, "--index", "exact", "--rerank")
    assert code == 2 and "--index ranks by cosine" in stderr
    code, _, stderr = run_main(tool, "--features", path, "--index", "ivf-sq8:nlist=x")
    assert code == 2 and "bad index spec" in stderr


def test_quiet_wait_caps_each_wait_and_the_total():
    from commands.bench_gallery import QuietWait
    assert QuietWait(0.0, 10.0, 10.0)()["waited_s"] < 0.01        # limit 0: never waits
    wait = QuietWait(1e-9, 0.2, 0.3, poll=0.02)                    # a load never reached
    waits = [wait()["waited_s"] for _ in range(3)]
    assert waits[0] == pytest.approx(0.2, abs=0.05)                 # one wait's cap
    assert waits[1] == pytest.approx(0.1, abs=0.05)                 # what is left of 0.3
    assert waits[2] < 0.01 and wait.left <= 0.0


def test_bench_gallery_small_run(tmp_path):
    """A whole benchmark run at 2,000 entries: exact rows, the HNSW and IVF rows with their
    tuning sweeps, the load average with every row, the text and JSON written."""
    out = tmp_path / "bench.txt"
    code, stdout, err = run_main(_load("bench_gallery"), "--sizes", "2000", "--queries", "64",
                                 "--tune-queries", "40", "--kind", "hnsw", "--kind",
                                 "ivf-flat:nlist=16", "--out", out)
    assert code == 0, err
    data = json.loads(out.with_suffix(".json").read_text())
    rows = data["results"][0]["rows"]
    assert [r["index"].split(":")[0] for r in rows] == \
        ["brute force (numpy, rmnet.deploy.embedder.search)", "faiss flat (exact)", "hnsw",
         "ivf-flat"]
    for r in rows:
        assert r["loadavg"] >= 0 and r["batch1"]["calls"] > 0
    # exact rows are exact; the tuned rows stop at the first breadth reaching the tuning target
    assert rows[0]["recall@10"] == 1.0 and rows[1]["recall@10"] == 1.0
    for r in rows[2:]:
        reached = [s["recall@10"] >= 0.955 for s in r["sweep"]]
        assert r["sweep"] and not any(reached[:-1])
    text = out.read_text()
    assert "load average" in text and " load" in text.splitlines()[2] and stdout == text + "\n"


# --- the command line, end to end --------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gallery_cli")


@pytest.fixture(scope="module")
def market(work) -> Path:
    root = work / "market"
    subprocess.run([sys.executable, "-m", "rmnet.data.synthetic", "--out", str(root),
                    "--train-ids", "2", "--test-ids", "4", "--images-per-id", "3",
                    "--queries-per-id", "2", "--junk", "1", "--distractors", "1", "--seed", "4"],
                   check=True, cwd=REPO, capture_output=True)
    return root


@pytest.fixture(scope="module")
def weights(work, caffe) -> tuple[Path, Path]:
    from rmnet.deploy.export import random_caffemodel
    return (random_caffemodel(PROTOTXT, work / "a.caffemodel", seed=1),
            random_caffemodel(PROTOTXT, work / "b.caffemodel", seed=2))


@pytest.fixture(scope="module")
def cli():
    return _load("gallery")


def test_embedder_model_hash(weights):
    from rmnet.deploy.embedder import Embedder, model_sha256
    a, b = weights
    ha = model_sha256([PROTOTXT, a])
    assert ha == model_sha256([a, PROTOTXT]) and len(ha) == 64
    assert ha != model_sha256([PROTOTXT, b])
    assert Embedder.load([PROTOTXT, a], runtime="pycaffe").model_sha256 == ha


@needs("faiss")   # through tools/gallery.py, which reports the ImportError itself
def test_cli_build_search_add(work, market, weights, cli):
    from rmnet.deploy.embedder import Embedder, search
    a, b = weights
    out = work / "gallery"
    test_dir, query_dir = market / "bounding_box_test", market / "query"
    code, _, stderr = run_main(cli, "build", "--prototxt", PROTOTXT, "--weights", a,
                               "--images", test_dir, "--out", out, "--runtime", "pycaffe",
                               "--no-progress")
    assert code == 0, stderr
    n_gallery = len(list(test_dir.glob("*.jpg")))
    g = Gallery.load(out)
    assert len(g) == n_gallery and g.spec.kind == "flat" and g.dim == 256
    assert g.model_info["files"] == [str(PROTOTXT.resolve()), str(a.resolve())]

    code, stdout, stderr = run_main(cli, "search", out, "--images", query_dir, "--k", "5",
                                    "--json", work / "hits.json", "--runtime", "pycaffe")
    assert code == 0, stderr
    res = json.loads((work / "hits.json").read_text())
    queries = sorted(query_dir.glob("*.jpg"))
    assert [Path(r["path"]).name for r in res["queries"]] == [p.name for p in queries]
    assert len(stdout.splitlines()) == len(queries)
    # the same ranking as brute-force search over the same descriptors
    emb = Embedder.load([PROTOTXT, a], runtime="pycaffe")
    gal_paths = sorted(test_dir.glob("*.jpg"))
    want, want_s = search(emb.embed_paths(queries), emb.embed_paths(gal_paths), 5)
    for r, wi, ws in zip(res["queries"], want, want_s):
        hits = r["hits"]
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        assert [Path(h["path"]).name for h in hits] == [gal_paths[i].name for i in wi]
        np.testing.assert_allclose([h["score"] for h in hits], ws, atol=1e-4)
        for h in hits:   # metadata parsed from the Market-1501 names
            e = entry_from_path(h["path"])
            assert (h["camera"], h["pid"]) == (e.camera, e.pid) and h["camera"] is not None

    # add: incremental, same model found from the manifest
    code, _, stderr = run_main(cli, "add", out, "--images", market / "bounding_box_train",
                               "--runtime", "pycaffe", "--no-progress")
    assert code == 0, stderr
    n_train = len(list((market / "bounding_box_train").glob("*.jpg")))
    g2 = Gallery.load(out)
    assert len(g2) == n_gallery + n_train and g2.version == 2
    assert g2.get([0])[0] == g.get([0])[0]

    # another model is refused, naming the gallery
    code, _, stderr = run_main(cli, "add", out, "--prototxt", PROTOTXT, "--weights", b,
                               "--images", query_dir, "--runtime", "pycaffe")
    assert code == 2 and str(out) in stderr and "is not the one this gallery was built with" \
        in stderr
    assert len(Gallery.load(out)) == n_gallery + n_train
    code, stdout, _ = run_main(cli, "info", out)
    assert code == 0 and json.loads(stdout)["entries"] == n_gallery + n_train


def test_cli_bad_input(work, market, weights, cli):
    a, _ = weights
    code, _, err = run_main(cli, "search", work / "nowhere", "--images", market / "query")
    assert code == 2 and "no such gallery folder" in err and "Traceback" not in err
    bad = work / "corrupt"
    bad.mkdir()
    (bad / "MANIFEST.json").write_text("{not json")
    code, _, err = run_main(cli, "search", bad, "--images", market / "query")
    assert code == 2 and f"{bad / 'MANIFEST.json'}: corrupt gallery manifest" in err
    code, _, err = run_main(cli, "build", "--prototxt", PROTOTXT, "--weights", a, "--images",
                            work / "no_images", "--out", work / "g2")
    assert code == 2 and "no such image folder" in err
    code, _, err = run_main(cli, "build", "--prototxt", PROTOTXT, "--weights",
                            work / "x.caffemodel", "--images", market / "query", "--out",
                            work / "g3")
    assert code == 2 and "x.caffemodel" in err
    code, _, err = run_main(cli, "build", "--prototxt", PROTOTXT, "--weights", a, "--images",
                            market / "query", "--out", work / "g4", "--index", "ivf-sq8:m=z")
    assert code == 2 and "bad index spec" in err
