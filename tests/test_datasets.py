"""rmnet.data.datasets and its readers (msmt17, cuhk03, custom): hand-made roots of empty files
(the readers never read pixels) with hand-counted protocol corner cases, the synthetic dataset
in every layout, several training sets at once, and the errors for layouts that do not match."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rmnet.data.datasets import (FORMATS, combine_train, detect_format, load_dataset,
                                 load_train_sets, sources, split_list)
from rmnet.data.market import DatasetError, load_market, pids_camids
from rmnet.data.synthetic import SyntheticConfig
from rmnet.data.synthetic_layouts import LAYOUTS, write_layout
from rmnet.eval.metrics import evaluate_rank


def touch(root, rel):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


# --- MSMT17 ---------------------------------------------------------------------------------------

MSMT_TRAIN = ["0000/0000_000_01_0303morning_0015_0.jpg 0",
              "0000/0000_001_03_0303morning_0016_0.jpg 0",
              "0001/0001_000_15_0303noon_0020_0.jpg 1"]
MSMT_VAL = ["0001/0001_001_02_0303noon_0021_0.jpg 1"]
MSMT_QUERY = ["0000/0000_000_01_0303morning_0100_0.jpg 0",
              "0001/0001_000_02_0303noon_0101_0.jpg 1"]
MSMT_GALLERY = ["0000/0000_001_01_0303morning_0200_0.jpg 0",    # q0's camera: junk for q0
                "0000/0000_002_05_0303morning_0201_0.jpg 0",    # q0's true match
                "0001/0001_001_02_0303noon_0202_0.jpg 1",       # q1's camera: q1 has no match
                "0002/0002_000_07_0303noon_0203_0.jpg 2"]       # an identity only in the gallery


def make_msmt17(root, v2=False, train=MSMT_TRAIN, val=MSMT_VAL, query=MSMT_QUERY,
                gallery=MSMT_GALLERY):
    tr, te = ("mask_train_v2", "mask_test_v2") if v2 else ("train", "test")
    for name, lines, folder in (("train", train, tr), ("val", val, tr), ("query", query, te),
                                ("gallery", gallery, te)):
        write_lines(root / f"list_{name}.txt", lines)
        for line in lines:
            touch(root / folder, line.split()[0])
    return root


@pytest.mark.parametrize("v2", [False, True])
def test_msmt17_protocol(tmp_path, v2):
    root = make_msmt17(tmp_path / "msmt", v2)
    assert detect_format(root) == "msmt17"
    ds = load_dataset(root)
    assert ds.layout == ("msmt17_v2" if v2 else "msmt17_v1") and ds.has_camids
    # pids are the 0-based labels + 1; cameras the third name field
    assert [(r.pid, r.camid) for r in ds.train] == [(1, 1), (1, 3), (2, 15)]
    assert [(r.pid, r.camid) for r in ds.val] == [(2, 2)]
    assert ds.num_train_ids == 2 and list(ds.train_labels()) == [0, 0, 1]
    q_pids, q_cams = pids_camids(ds.query)
    g_pids, g_cams = pids_camids(ds.gallery)
    assert list(q_pids) == [1, 2] and list(q_cams) == [1, 2]
    assert list(g_pids) == [1, 1, 2, 3] and list(g_cams) == [1, 5, 2, 7]
    # q0: junk g0 (same camera) removed, true match g1 at junk-free rank 2 behind g3 -> AP 1/2;
    # q1: its only gallery image is on its camera -> skipped
    dist = np.array([[0.0, 0.5, 0.9, 0.2], [0.3, 0.4, 0.1, 0.6]])
    res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    assert (res.num_valid_queries, res.num_skipped_queries) == (1, 1)
    assert res.mAP == pytest.approx(0.5) and list(res.cmc) == [0.0, 1.0, 1.0]
    tv = load_dataset(root, "msmt17", trainval=True)
    assert len(tv.train) == 4 and tv.val == [] and tv.num_train_ids == 2
    assert tv.layout.endswith("+val")


def test_msmt17_errors(tmp_path):
    root = make_msmt17(tmp_path / "a", train=MSMT_TRAIN + ["0001/0001_002_01_x.jpg"])
    with pytest.raises(DatasetError, match=r"list_train\.txt:4: expected 'relative/path label'"):
        load_dataset(root)
    root = make_msmt17(tmp_path / "b", query=["0000/0000_000_16_0303morning_0100_0.jpg 0"])
    with pytest.raises(DatasetError, match=r"list_query\.txt:1: camera 16 .* outside 1\.\.15"):
        load_dataset(root)
    root = make_msmt17(tmp_path / "c")
    (root / "test" / MSMT_GALLERY[1].split()[0]).unlink()
    with pytest.raises(DatasetError, match=r"list_gallery\.txt:2: image .*0000_002_05.* does not"):
        load_dataset(root)
    root = make_msmt17(tmp_path / "d", val=["0005/0005_000_01_0303noon_0021_0.jpg 5"])
    with pytest.raises(DatasetError, match=r"list_val\.txt: .*label 5, which is no identity"):
        load_dataset(root)
    root = make_msmt17(tmp_path / "e" / "MSMT17_V1")
    with pytest.raises(DatasetError, match=r"missing list_query\.txt.*did you mean .*MSMT17_V1"):
        load_dataset(tmp_path / "e", "msmt17")
    root = make_msmt17(tmp_path / "f")
    (root / "list_val.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing list_val\.txt"):
        load_dataset(root)        # detected as MSMT17 from the other lists
    root = make_msmt17(tmp_path / "g", train=MSMT_TRAIN + [MSMT_TRAIN[0]])
    with pytest.raises(DatasetError, match=r"list_train\.txt:4: .* listed twice"):
        load_dataset(root)


# --- CUHK03-NP ------------------------------------------------------------------------------------

CUHK = {"bounding_box_train": ["0001_c1_1.png", "0001_c2_1.png", "0002_c1_1.png", "0002_c2_1.png"],
        "query": ["0003_c1_1.png", "0003_c2_1.png", "0004_c1_1.png"],
        "bounding_box_test": ["0003_c1_2.png", "0003_c2_2.png", "0004_c1_2.png", "0004_c2_2.png",
                              "0005_c1_1.png"]}


def make_cuhk03(root, names=CUHK, subsets=("labeled", "detected")):
    for sub in subsets:
        for folder, files in names.items():
            for f in files:
                touch(root / sub / folder, f)
    return root


def test_cuhk03_protocol(tmp_path):
    root = make_cuhk03(tmp_path / "cuhk03-np")
    with pytest.raises(DatasetError, match="cuhk03-labeled or cuhk03-detected"):
        load_dataset(root)
    for sub in ("labeled", "detected"):
        ds = load_dataset(root, f"cuhk03-{sub}")
        assert ds.root == root / sub and ds.layout == f"cuhk03-np-{sub}"
        assert detect_format(root / sub) == f"cuhk03-{sub}"
        assert load_dataset(root / sub).gallery == ds.gallery
    ds = load_dataset(root, "cuhk03-labeled")
    assert ds.num_train_ids == 2 and len(ds.query) == 3 and len(ds.gallery) == 5
    q_pids, q_cams = pids_camids(ds.query)
    g_pids, g_cams = pids_camids(ds.gallery)
    # each query: its other-camera image is the one true match, its own camera's is junk;
    # pid 5 is only in the gallery. Distances put a wrong id first for every query.
    dist = np.array([[0.5, 0.4, 0.1, 0.9, 0.9],     # q 0003 c1: g 0004_c1 first, match rank 2
                     [0.4, 0.5, 0.9, 0.9, 0.1],     # q 0003 c2: g 0005 first, match rank 2
                     [0.9, 0.9, 0.0, 0.3, 0.2]])    # q 0004 c1: junk 0.0 dropped, 0005, match
    res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=2)
    assert res.num_valid_queries == 3 and list(res.cmc) == [0.0, 1.0]
    assert res.mAP == pytest.approx(0.5)
    # one subset only: detected without the format
    only = make_cuhk03(tmp_path / "one", subsets=("detected",))
    assert detect_format(only) == "cuhk03-detected"


def test_cuhk03_errors(tmp_path):
    bad = dict(CUHK, query=["0003_c3_1.png"])
    root = make_cuhk03(tmp_path / "a", bad, subsets=("labeled",))
    with pytest.raises(DatasetError, match=r"query/0003_c3_1\.png: .*CUHK03-NP naming"):
        load_dataset(root, "cuhk03-labeled")
    root = make_cuhk03(tmp_path / "b", subsets=("labeled",))
    with pytest.raises(DatasetError, match=r"b/detected: missing query/, bounding_box_test/"):
        load_dataset(root, "cuhk03-detected")
    # CUHK03-NP names in a folder that is not labeled/ or detected/: the format must say which
    renamed = make_cuhk03(tmp_path / "c", subsets=("mine",)) / "mine"
    with pytest.raises(DatasetError, match="CUHK03-NP names .* pass format"):
        load_dataset(renamed)
    assert len(load_dataset(renamed, "cuhk03-labeled").gallery) == 5


# --- custom folders -------------------------------------------------------------------------------

def make_folders(root, cams=True):
    files = {"train": [("7", "1", "a.jpg"), ("7", "2", "b.jpg"), ("9", "1", "c.jpg")],
             "query": [("3", "1", "q1.jpg"), ("4", "2", "q2.jpg")],
             "gallery": [("3", "2", "g1.jpg"),      # q1's true match
                         ("3", "1", "g2.jpg"),      # q1's camera: junk only with camera ids
                         ("4", "2", "g3.jpg"),      # q2's camera: junk only with camera ids
                         ("-1", "1", "j.jpg"),      # junk
                         ("0", "2", "d.jpg"),       # distractor
                         ("5", "1", "o.jpg")]}      # an identity only in the gallery
    for split, rows in files.items():
        for pid, cam, name in rows:
            touch(root / split, f"{pid}/{cam}/{name}" if cams else f"{pid}/{name}")
    return root


def test_custom_folders_with_and_without_cameras(tmp_path):
    ds = load_dataset(make_folders(tmp_path / "cams"))
    assert ds.layout == "folders" and ds.has_camids
    assert [(r.name, r.pid, r.camid) for r in ds.train] == [("a.jpg", 7, 1), ("b.jpg", 7, 2),
                                                             ("c.jpg", 9, 1)]
    q_pids, q_cams = pids_camids(ds.query)
    g_pids, g_cams = pids_camids(ds.gallery)
    # gallery sorted by path: -1/1/j, 0/2/d, 3/1/g2, 3/2/g1, 4/2/g3, 5/1/o
    assert [r.name for r in ds.gallery] == ["j.jpg", "d.jpg", "g2.jpg", "g1.jpg", "g3.jpg",
                                            "o.jpg"]
    assert list(g_pids) == [-1, 0, 3, 3, 4, 5] and list(g_cams) == [1, 2, 1, 2, 2, 1]
    dist = np.array([[0.0, 0.1, 0.05, 0.3, 0.9, 0.2],
                     [0.9, 0.9, 0.9, 0.9, 0.1, 0.9]])
    res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    # q1 (pid 3): junk -1 and same-camera g2 dropped; list d(0.1), o(0.2), g1(0.3): rank 3.
    # q2 (pid 4): its only image shares its camera: skipped.
    assert (res.num_valid_queries, res.num_skipped_queries) == (1, 1)
    assert list(res.cmc) == [0.0, 0.0, 1.0] and res.mAP == pytest.approx(1 / 3)

    no = load_dataset(make_folders(tmp_path / "nocam", cams=False))
    assert not no.has_camids and "no camera ids" in no.summary()
    q_pids, q_cams = pids_camids(no.query)
    g_pids, g_cams = pids_camids(no.gallery)
    assert set(q_cams) == {1} and set(g_cams) == {2} and {r.camid for r in no.train} == {1}
    res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    # Without cameras nothing but pid -1 is junk: q1 list d(0.1) ... g2(0.05) first: it is
    # now a true match at rank 1 (0.05 < 0.1), g1 at rank 4; q2 matches g3 at rank 1.
    assert (res.num_valid_queries, res.num_skipped_queries) == (2, 0)
    assert list(res.cmc) == [1.0, 1.0, 1.0]
    assert res.mAP == pytest.approx(((1 + 2 / 4) / 2 + 1) / 2)


def test_custom_folders_names_and_errors(tmp_path):
    root = tmp_path / "named"
    for rel in ("query/alice/1.jpg", "gallery/alice/2.jpg", "gallery/bob/3.jpg",
                "gallery/-1/4.jpg"):
        touch(root, rel)
    ds = load_dataset(root)
    assert ds.train == [] and [r.pid for r in ds.query] == [1]
    assert [r.pid for r in ds.gallery] == [-1, 1, 2]          # alice 1, bob 2 (sorted names)
    with pytest.raises(DatasetError, match="no training images"):
        combine_train([ds])
    bad = tmp_path / "mixed"
    touch(bad, "query/1/1/a.jpg")
    touch(bad, "gallery/1/b.jpg")
    with pytest.raises(DatasetError, match=r"camera folders in .*query/1 but images without "
                                           r"one in .*gallery/1"):
        load_dataset(bad)
    junkq = tmp_path / "junkq"
    touch(junkq, "query/-1/a.jpg")
    touch(junkq, "gallery/1/b.jpg")
    with pytest.raises(DatasetError, match=r"query/-1/a\.jpg: junk \(pid -1\) in the query"):
        load_dataset(junkq)
    loose = tmp_path / "loose"
    touch(loose, "query/a.jpg")
    touch(loose, "gallery/1/b.jpg")
    with pytest.raises(DatasetError, match=r"query/a\.jpg: an image directly in"):
        load_dataset(loose)
    nogal = tmp_path / "nogal"
    touch(nogal, "query/1/a.jpg")
    with pytest.raises(DatasetError, match=r"nogal: missing gallery/"):
        load_dataset(nogal)


# --- custom lists ---------------------------------------------------------------------------------

def test_custom_lists(tmp_path, monkeypatch):
    root = tmp_path / "lists"
    for rel in ("img/t1.jpg", "img/t2.jpg", "img/q.jpg", "img/g1.jpg", "img/g2.jpg", "img/g3.jpg"):
        touch(root, rel)
    write_lines(root / "train.csv", ["path,pid,camid", "img/t1.jpg,11,1", "img/t2.jpg,12,2"])
    write_lines(root / "query.csv", ["# the query", "img/q.jpg,5,1"])
    write_lines(root / "gallery.tsv", ["img/g1.jpg\t5\t2", "", "img/g2.jpg\t5\t1",
                                       f"{root / 'img/g3.jpg'}\t0\t3"])
    assert detect_format(root) == "csv"
    ds = load_dataset(root)
    assert ds.layout == "csv" and ds.has_camids and ds.num_train_ids == 2
    assert [(r.name, r.pid, r.camid) for r in ds.gallery] == [("g1.jpg", 5, 2), ("g2.jpg", 5, 1),
                                                               ("g3.jpg", 0, 3)]
    q_pids, q_cams = pids_camids(ds.query)
    g_pids, g_cams = pids_camids(ds.gallery)
    res = evaluate_rank(np.array([[0.3, 0.1, 0.2]]), q_pids, g_pids, q_cams, g_cams, max_rank=2)
    assert list(res.cmc) == [0.0, 1.0] and res.mAP == pytest.approx(0.5)   # g2 junk, g3 first

    def expect(match, **files):
        r = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        for rel in ("a.jpg", "b.jpg"):
            touch(r, rel)
        base = {"query.csv": ["a.jpg,1"], "gallery.csv": ["b.jpg,1"]}
        base.update({k.replace("_", "."): v for k, v in files.items()})
        for name, lines in base.items():
            write_lines(r / name, lines)
        with pytest.raises(DatasetError, match=match):
            load_dataset(r, "csv")

    expect(r"gallery\.csv:2: expected path,pid or path,pid,camid", gallery_csv=["b.jpg,1", "b.jpg"])
    expect(r"gallery\.csv:2: 3 columns, but earlier lines have 2",
           gallery_csv=["b.jpg,1", "a.jpg,1,2"])
    expect(r"camera ids in query\.csv but not in gallery\.csv", query_csv=["a.jpg,1,1"])
    expect(r"gallery\.csv:1: \.\./x\.jpg is outside the dataset root", gallery_csv=["../x.jpg,1"])
    expect(r"gallery\.csv:1: image .*nope\.jpg does not exist", gallery_csv=["nope.jpg,1"])
    expect(r"both query\.csv and query\.tsv", query_tsv=["a.jpg\t1"])
    expect(r"query\.csv:1: .*a distractor \(pid 0\) in the query", query_csv=["a.jpg,0"])

    # a relative root and an absolute path inside it: stored under the root as given
    monkeypatch.chdir(tmp_path)
    rel = load_dataset("lists")
    assert rel.gallery[2].path == Path("lists") / "img" / "g3.jpg"
    assert [r.path.relative_to(rel.root) for r in rel.gallery][2] == Path("img/g3.jpg")

    nocam = tmp_path / "nocam"
    touch(nocam, "a.jpg")
    touch(nocam, "b.jpg")
    write_lines(nocam / "query.csv", ["a.jpg,x"])
    write_lines(nocam / "gallery.csv", ["b.jpg,x"])
    ds = load_dataset(nocam)
    assert not ds.has_camids and [r.camid for r in ds.query + ds.gallery] == [1, 2]


# --- detection and errors -------------------------------------------------------------------------

def test_unknown_layouts_are_named(tmp_path):
    (tmp_path / "x" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path / "x")
    msg = str(e.value)
    assert "x: no known dataset layout (found: images/)" in msg
    for expected in ("bounding_box_train/", "list_train.txt", "labeled/ and detected/",
                     "query/<pid>/<image>", "query.csv"):
        assert expected in msg
    with pytest.raises(DatasetError, match=r"nowhere does not exist; expected one of"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="unknown dataset format 'viper'"):
        load_dataset(tmp_path / "x", "viper")
    with pytest.raises(DatasetError, match="trainval applies to MSMT17 only"):
        load_dataset(make_folders(tmp_path / "f"), trainval=True)
    half = tmp_path / "half"
    (half / "bounding_box_train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"missing query/, bounding_box_test/"):
        load_dataset(half)        # part of the Market layout: its reader says what is missing


def test_sources_and_split_list():
    assert split_list(["a,b", "c", " d , "]) == ["a", "b", "c", "d"]
    assert [(s.root, s.format) for s in sources(["a", "b"], "msmt17")] == [("a", "msmt17"),
                                                                           ("b", "msmt17")]
    assert [s.format for s in sources("a")] == [None]
    with pytest.raises(DatasetError, match="2 formats for 3 dataset roots"):
        sources(["a", "b", "c"], ["market", "csv"])
    assert set(FORMATS) >= {"market", "duke", "msmt17", "cuhk03-labeled", "cuhk03-detected",
                            "folders", "csv"}


# --- the synthetic dataset in every layout --------------------------------------------------------

CFG = SyntheticConfig(train_ids=4, test_ids=3, images_per_id=4, queries_per_id=2, seed=2)
CFG2 = SyntheticConfig(train_ids=4, test_ids=3, images_per_id=4, queries_per_id=2, seed=2,
                       cameras=2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    return {lay: (base / lay, write_layout(base / lay, CFG2 if lay == "cuhk03" else CFG, lay))
            for lay in LAYOUTS}


def _multiset(records):
    return sorted((r.pid, r.camid) for r in records)


def test_every_synthetic_layout_reads_back(synthetic):
    market = load_market(synthetic["market"][0])
    n_train = CFG.train_ids * CFG.images_per_id                      # 16
    n_query = CFG.test_ids * CFG.queries_per_id                      # 6
    n_gallery = CFG.test_ids * CFG.images_per_id                     # 12 identity images
    n_junk, n_dis = CFG.test_ids // 2, CFG.test_ids                  # 1 junk, 3 distractors
    assert (len(market.train), len(market.query), len(market.gallery)) == \
        (n_train, n_query, n_gallery + n_junk + n_dis)
    for lay in ("folders", "csv"):
        ds = load_dataset(synthetic[lay][0])
        assert ds.has_camids
        for split in ("train", "query", "gallery"):
            assert _multiset(ds.split(split)) == _multiset(market.split(split)), (lay, split)
        # the same JPEG bytes as the Market copy, for every image
        by_name = {r.name: r.path.read_bytes() for r in market.gallery}
        assert all(by_name[r.name] == r.path.read_bytes() for r in ds.gallery)
        no = load_dataset(synthetic[lay + "-nocam"][0])
        assert not no.has_camids
        assert sorted(r.pid for r in no.gallery) == sorted(r.pid for r in market.gallery)
    for lay in ("msmt17_v1", "msmt17_v2"):
        ds = load_dataset(synthetic[lay][0])
        assert ds.layout == lay
        # the last of each id's 4 train images is in list_val.txt; no junk or distractors
        assert (len(ds.train), len(ds.val)) == (n_train - CFG.train_ids, CFG.train_ids)
        assert (len(ds.query), len(ds.gallery)) == (n_query, n_gallery)
        assert sorted(r.camid for r in ds.train + ds.val) == sorted(r.camid for r in market.train)
        assert {r.pid for r in ds.query} == {1, 2, 3} and ds.num_train_ids == CFG.train_ids
    for sub in ("labeled", "detected"):
        ds = load_dataset(synthetic["cuhk03"][0], f"cuhk03-{sub}")
        drop = CFG2.test_ids if sub == "detected" else 0             # one per test id
        assert (len(ds.train), len(ds.query), len(ds.gallery)) == \
            (n_train, n_query, n_gallery - drop)
        assert {r.camid for r in ds.gallery} == {1, 2}


def test_combined_training_sets_keep_identities_apart(synthetic):
    # the Market and folders copies have the same pids: combined, they are 2 x 4 classes
    a, b = synthetic["market"][0], synthetic["folders"][0]
    ts = load_train_sets([str(a), str(b)])
    assert ts.num_classes == 2 * CFG.train_ids and ts.offsets == (0, CFG.train_ids)
    n = CFG.train_ids * CFG.images_per_id
    assert list(ts.labels[:n]) == list(load_market(a).train_labels())
    assert list(ts.labels[n:]) == list(load_dataset(b).train_labels() + CFG.train_ids)
    assert set(ts.labels[:n]).isdisjoint(ts.labels[n:])
    three = load_train_sets([str(a), str(synthetic["msmt17_v1"][0]), str(synthetic["csv"][0])],
                            ["market", "msmt17", None], trainval=True)
    assert three.num_classes == 12 and three.offsets == (0, 4, 8)
    assert len(three.paths) == 3 * n                 # trainval: MSMT17's val images included
    with pytest.raises(DatasetError, match="trainval applies to MSMT17 sets only"):
        load_train_sets([str(a), str(b)], trainval=True)
