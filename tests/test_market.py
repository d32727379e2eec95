"""rmnet.data.market: Market-1501 / DukeMTMC-reID folder parsing, on hand-made folders and on a
dataset written by rmnet.data.synthetic."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from rmnet.data.market import (SPLITS, DatasetError, Record, load_market, load_split, parse_name,
                          pids_camids)
from rmnet.data.synthetic import SyntheticConfig, generate

TRAIN = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s3_015265_04.jpg",
         "1500_c6s4_002202_01.jpg", "0007_c4s2_048373_01.jpg"]
QUERY = ["0003_c1s1_000051_00.jpg", "0003_c6s1_000121_00.jpg", "1501_c5s3_062390_00.jpg"]
GALLERY = ["-1_c1s1_000401_03.jpg", "-1_c3s1_000551_01.jpg", "0000_c1s1_000151_01.jpg",
           "0000_c6s4_002527_03.jpg", "0003_c2s1_000076_01.jpg", "0003_c1s1_000151_02.jpg",
           "1501_c1s6_000746_02.jpg"]


def make_root(root: Path, train=TRAIN, query=QUERY, gallery=GALLERY, shuffle_seed=0) -> Path:
    """Empty files with the given names (parsing never reads pixels), created in random order."""
    names = [(SPLITS["train"], n) for n in train] + [(SPLITS["query"], n) for n in query] + \
            [(SPLITS["gallery"], n) for n in gallery]
    random.Random(shuffle_seed).shuffle(names)
    for folder in SPLITS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
    for folder, name in names:
        (root / folder / name).write_bytes(b"")
    return root


def test_names_to_pid_and_camera():
    assert parse_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_name("-1_c3s1_000551_01.jpg") == (-1, 3)
    assert parse_name("0000_c6s4_002527_03.jpg") == (0, 6)
    assert parse_name("1501_c5s3_062390_00.JPG") == (1501, 5)
    assert parse_name("0005_c8_f0046985.jpg") == (5, 8)                  # Duke
    assert parse_name("0005_c2_f0046985.jpg", "duke") == (5, 2)
    with pytest.raises(DatasetError, match=r"0002_c7s1_000451_03\.jpg: camera 7 is outside 1\.\.6"):
        parse_name("0002_c7s1_000451_03.jpg")
    with pytest.raises(DatasetError, match=r"0005_c2_f0046985\.jpg: .*market1501 naming"):
        parse_name("0005_c2_f0046985.jpg", "market1501")
    with pytest.raises(DatasetError, match=r"person\.jpg: .*0002_c1s1_000451_03\.jpg"):
        parse_name("person.jpg")
    with pytest.raises(DatasetError, match="unknown layout 'viper'"):
        parse_name("0002_c1s1_000451_03.jpg", "viper")


def test_market_root(tmp_path):
    ds = load_market(make_root(tmp_path))
    assert ds.layout == "market1501" and ds.root == tmp_path
    assert [r.name for r in ds.train] == sorted(TRAIN)
    assert [r.name for r in ds.query] == sorted(QUERY)
    assert [r.name for r in ds.gallery] == sorted(GALLERY)
    assert ds.train[0] == Record(tmp_path / SPLITS["train"] / "0002_c1s1_000451_03.jpg", 2, 1)
    # contiguous labels 0..K-1 in pid order; query/gallery keep the original pids
    assert ds.train_pids == (2, 7, 1500) and ds.num_train_ids == 3
    assert [ds.train_label(p) for p in (2, 7, 1500)] == [0, 1, 2]
    assert ds.train_labels().tolist() == [0, 0, 1, 1, 2]
    assert ds.train_labels().dtype == np.int64
    with pytest.raises(KeyError, match="pid 3 is not a train identity"):
        ds.train_label(3)
    assert [(r.pid, r.camid) for r in ds.query] == [(3, 1), (3, 6), (1501, 5)]
    # the gallery keeps junk (-1) and distractors (0)
    pids, cams = pids_camids(ds.gallery)
    assert pids.tolist() == [-1, -1, 0, 0, 3, 3, 1501]
    assert cams.tolist() == [1, 3, 1, 6, 1, 2, 1]
    assert pids.dtype == cams.dtype == np.int64
    assert "gallery 7 images of 2 ids on 4 cameras, 2 junk, 2 distractors" in ds.summary()


def test_order_does_not_depend_on_creation_order(tmp_path):
    a = load_market(make_root(tmp_path / "a", shuffle_seed=1))
    b = load_market(make_root(tmp_path / "b", shuffle_seed=2))
    for split in SPLITS:
        assert [r.name for r in a.split(split)] == [r.name for r in b.split(split)]
        assert [r.name for r in a.split(split)] == sorted(r.name for r in a.split(split))


def test_duke_naming(tmp_path):
    root = make_root(tmp_path,
                     train=["0005_c2_f0046985.jpg", "0001_c8_f0000001.jpg", "0005_c7_f0046000.jpg"],
                     query=["0010_c1_f0010000.jpg"],
                     gallery=["0010_c8_f0010500.jpg", "0011_c3_f0020000.jpg"])
    ds = load_market(root)
    assert ds.layout == "duke"
    assert [(r.pid, r.camid) for r in ds.train] == [(1, 8), (5, 2), (5, 7)]
    assert ds.train_labels().tolist() == [0, 1, 1]
    assert load_market(root, layout="duke").train == ds.train
    with pytest.raises(DatasetError, match=r"0001_c8_f0000001\.jpg: .*market1501 naming"):
        load_market(root, layout="market1501")


def test_mixed_naming_names_the_file_and_the_detected_layout(tmp_path):
    root = make_root(tmp_path, query=["0003_c1s1_000051_00.jpg", "0003_c2_f0046985.jpg"])
    with pytest.raises(DatasetError) as e:
        load_market(root)
    msg = str(e.value)
    assert str(root / "query" / "0003_c2_f0046985.jpg") in msg
    assert "market1501 naming was detected from bounding_box_train/0002_c1s1_000451_03.jpg" in msg


def test_missing_folder_lists_the_expected_layout(tmp_path):
    root = make_root(tmp_path / "Market-1501-v15.09.15")
    (root / "query" / QUERY[0]).unlink()
    for name in QUERY[1:]:
        (root / "query" / name).unlink()
    (root / "query").rmdir()
    with pytest.raises(DatasetError) as e:
        load_market(root)
    msg = str(e.value)
    assert "missing query/" in msg
    for folder in ("bounding_box_train/", "bounding_box_test/", "query/"):
        assert folder in msg
    assert "0002_c1s1_000451_03.jpg" in msg          # an example file name


def test_pointing_at_the_parent_folder_suggests_the_real_root(tmp_path):
    make_root(tmp_path / "Market-1501-v15.09.15")
    with pytest.raises(DatasetError, match=r"did you mean .*Market-1501-v15\.09\.15\?"):
        load_market(tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere does not exist; expected the folders"):
        load_market(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_market(tmp_path / "file")
    with pytest.raises(DatasetError, match="unknown layout"):
        load_market(make_root(tmp_path / "ok"), layout="cuhk03")


def test_bad_name_names_the_file(tmp_path):
    root = make_root(tmp_path, gallery=GALLERY + ["0003_c1s1_000151.jpg"])
    with pytest.raises(DatasetError) as e:
        load_market(root)
    assert str(root / "bounding_box_test" / "0003_c1s1_000151.jpg") in str(e.value)
    assert "does not follow the market1501 naming" in str(e.value)


def test_unparsable_first_train_file(tmp_path):
    root = make_root(tmp_path, train=["0001.jpg"] + TRAIN)
    with pytest.raises(DatasetError, match=r"bounding_box_train/0001\.jpg: file name follows "
                                           r"neither naming"):
        load_market(root)


def test_non_image_files(tmp_path):
    """The official zip has Thumbs.db files; dot files (macOS ._*) and sub-folders are ignored
    too. With skip_non_images=False each is an error naming it."""
    extra = ["0002_c1s1_000999_01.PNG", "0007_c1s1_000001_01.jpeg"]   # other image extensions
    root = make_root(tmp_path, train=TRAIN + extra)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "bounding_box_train" / "._0002_c1s1_000451_03.jpg").write_bytes(b"")
    (root / "query" / "notes").mkdir()
    ds = load_market(root)
    assert len(ds.train) == len(TRAIN) + 2 and len(ds.gallery) == len(GALLERY)
    assert len(ds.query) == len(QUERY)
    with pytest.raises(DatasetError, match=r"\._0002_c1s1_000451_03\.jpg: not an image file"):
        load_market(root, skip_non_images=False)
    (root / "bounding_box_train" / "._0002_c1s1_000451_03.jpg").unlink()
    with pytest.raises(DatasetError, match=r"query/notes: a folder"):
        load_market(root, skip_non_images=False)
    (root / "query" / "notes").rmdir()
    with pytest.raises(DatasetError, match=r"bounding_box_test/Thumbs\.db: not an image file"):
        load_market(root, skip_non_images=False)


@pytest.mark.parametrize("split", ["train", "query", "gallery"])
def test_empty_split(tmp_path, split):
    kw = {split: ["Thumbs.db"]} if split != "train" else {"train": []}
    root = make_root(tmp_path, **kw)
    with pytest.raises(DatasetError, match="no images") as e:
        load_market(root)
    assert str(root / SPLITS[split]) in str(e.value)


@pytest.mark.parametrize("split,name,what", [
    ("train", "-1_c1s1_000401_03.jpg", "junk"),
    ("train", "0000_c1s1_000151_01.jpg", "distractor"),
    ("query", "0000_c2s1_000151_01.jpg", "distractor"),
    ("query", "-1_c2s1_000151_01.jpg", "junk"),
])
def test_junk_and_distractors_only_in_the_gallery(tmp_path, split, name, what):
    kw = {"train": TRAIN + [name]} if split == "train" else {"query": QUERY + [name]}
    root = make_root(tmp_path, **kw)
    with pytest.raises(DatasetError, match=what) as e:
        load_market(root)
    assert str(root / SPLITS[split] / name) in str(e.value)


def test_load_split_alone(tmp_path):
    root = make_root(tmp_path)
    records, layout = load_split(root / "query")
    assert layout == "market1501" and [r.pid for r in records] == [3, 3, 1501]
    with pytest.raises(DatasetError, match="not a folder"):
        load_split(root / "nope")


def test_parses_a_generated_dataset(tmp_path):
    cfg = SyntheticConfig(train_ids=5, test_ids=4, images_per_id=3, queries_per_id=2,
                          junk=3, distractors=2, seed=3)
    generate(tmp_path / "syn", cfg)
    ds = load_market(tmp_path / "syn")
    meta = json.loads((tmp_path / "syn" / "synthetic.json").read_text())
    assert ds.layout == "market1501"
    assert {s: len(ds.split(s)) for s in SPLITS} == meta["counts"] == \
        {"train": 15, "query": 8, "gallery": 17}
    assert list(ds.train_pids) == meta["train_pids"]
    assert ds.train_labels().tolist() == [i for i in range(5) for _ in range(3)]
    gallery_pids = [r.pid for r in ds.gallery]
    assert gallery_pids.count(-1) == 3 and gallery_pids.count(0) == 2
    assert sorted({p for p in gallery_pids if p > 0}) == meta["test_pids"]
    assert all(r.path.is_file() and r.path.parent.name in SPLITS.values() for r in ds.gallery)
