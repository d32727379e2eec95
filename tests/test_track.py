"""Tracking with RMNet descriptors across cameras (rmnet/track, tools/track.py): MOT files,
video errors, the generated two-camera scene, deep_sort_realtime's real update loop fed RMNet
descriptors, identities linked across cameras through the persistent gallery, the scores."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rmnet.track.mot import MOTFormatError, check_fits, read_mot, write_mot
from rmnet.track.scene import SceneConfig, make_scene, render_camera, write_scene
from rmnet.track.tracker import Describer, TrackConfig, TrackerUnavailable, deep_sort_class
from rmnet.track.video import CodecError, VideoError, VideoReader, VideoWriter

REPO = Path(__file__).resolve().parent.parent
LIGHT = REPO / "prototxt" / "light" / "deploy.prototxt"
HAVE_DEEPSORT = importlib.util.find_spec("deep_sort_realtime") is not None
HAVE_MOTMETRICS = importlib.util.find_spec("motmetrics") is not None
needs_deepsort = pytest.mark.skipif(
    not HAVE_DEEPSORT, reason="deep_sort_realtime is not installed (optional: pip install "
                              "--no-deps -r requirements-track.txt)")
needs_motmetrics = pytest.mark.skipif(
    not HAVE_MOTMETRICS, reason="motmetrics is not installed (optional: pip install --no-deps "
                                "-r requirements-track.txt)")

# Small and fast: 6 people, each through both 320x180 views.
SMALL = SceneConfig(people=6, frames=260, width=320, height=180, seed=4)
EXACT = SceneConfig(people=6, frames=260, width=320, height=180, seed=4, jitter=0.0,
                    miss_rate=0.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    return write_scene(SMALL, tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def exact_scene(tmp_path_factory) -> dict:
    return write_scene(EXACT, tmp_path_factory.mktemp("exact"))


# --- files --------------------------------------------------------------------------------------

def test_mot_roundtrip_and_errors(tmp_path):
    rows = np.array([[2, 5, 10.5, 20, 30, 60, 0.9, -1, -1, -1],
                     [1, 3, 0, 0, 8, 16, 1, -1, -1, -1]])
    p = write_mot(tmp_path / "r.txt", rows)
    back = read_mot(p)
    assert back.frames.tolist() == [1, 2] and back.rows[1, 2] == 10.5
    assert list(back.by_frame()) == [1, 2]
    (tmp_path / "six.txt").write_text("1,-1,1,2,3,4\n")          # no confidence column
    assert read_mot(tmp_path / "six.txt").rows[0, 6] == 1.0
    for text, what in (("1,-1,1,2\n", "4 fields"), ("1,-1,a,2,3,4,1\n", "not numbers"),
                       ("0,-1,1,2,3,4,1\n", "frame 0"), ("1,-1,1,2,-3,4,1\n", "width -3")):
        (tmp_path / "bad.txt").write_text("1,-1,1,2,3,4,1\n" + text)
        with pytest.raises(MOTFormatError, match=rf"bad.txt:2: .*{what}"):
            read_mot(tmp_path / "bad.txt")
    with pytest.raises(MOTFormatError, match="no such file"):
        read_mot(tmp_path / "missing.txt")
    mot = read_mot(p)
    with pytest.raises(MOTFormatError, match="up to frame 2, but v.mp4 has 1 frames"):
        check_fits(mot, 1, 100, 100, "v.mp4")
    with pytest.raises(MOTFormatError, match="wholly outside v.mp4's 5x5 frame"):
        check_fits(mot, 5, 5, 5, "v.mp4")


def test_video_errors(tmp_path):
    (tmp_path / "notvideo.mp4").write_text("hello")
    with pytest.raises(VideoError, match="notvideo.mp4: OpenCV cannot decode it"):
        VideoReader(tmp_path / "notvideo.mp4")
    with pytest.raises(VideoError, match="no such video file"):
        VideoReader(tmp_path / "missing.mp4")
    with pytest.raises(CodecError, match="cannot write codec 'ZZZZ'"):
        VideoWriter(tmp_path / "x.mp4", 25, (64, 48), codec="ZZZZ")
    with pytest.raises(CodecError, match="unknown video container .xyz"):
        VideoWriter(tmp_path / "x.xyz", 25, (64, 48))
    assert not list(tmp_path.glob("*partial*"))
    with VideoWriter(tmp_path / "ok.mp4", 25, (64, 48)) as w:
        for i in range(5):
            w.write(np.full((48, 64, 3), 40 * i, np.uint8))
    r = VideoReader(tmp_path / "ok.mp4")
    assert r.size == (64, 48) and r.count_frames() == 5


def test_scene_is_seeded_and_truthful(scene):
    again = make_scene(SMALL)
    frames = {f: t for f, _, t in render_camera(again, 0)}
    gt = read_mot(scene["gt"][0])
    rows = np.concatenate(list(frames.values()))
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]          # as written: frame, then id
    assert np.allclose(rows[:, :6], gt.rows[:, :6], atol=0.01)
    vis = gt.rows[:, 8]
    assert vis.min() >= 0 and vis.max() <= 1 and (vis < 0.99).any()   # people do occlude
    ids = [set(read_mot(g).rows[:, 1].astype(int)) for g in scene["gt"]]
    assert len(ids[0] & ids[1]) >= 4                        # most walk through both views
    det = read_mot(scene["det"][0])
    assert 0.6 * len(gt.rows) < len(det.rows) < len(gt.rows)
    assert VideoReader(scene["video"][0]).count_frames() == SMALL.frames


def test_missing_tracker_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deep_sort_realtime", None)
    monkeypatch.setitem(sys.modules, "deep_sort_realtime.deepsort_tracker", None)
    with pytest.raises(TrackerUnavailable, match="requirements-track.txt"):
        deep_sort_class()


# --- the tracker ------------------------------------------------------------------------------

class OracleDescriber(Describer):
    """The true identity as a one-hot descriptor (from the exact detections' boxes): what a
    perfect re-id model would give, to test the linking apart from any model's quality."""
    reid = True

    def __init__(self, gts: list[Path], dim: int = 32):
        self.who = {}
        for g in gts:
            for r in read_mot(g).rows:
                self.who[tuple(np.round(r[2:6], 2))] = int(r[1])
        self.dim = dim

    def describe(self, frame, ltwh):
        out = np.zeros((len(ltwh), self.dim), np.float32)
        for i, box in enumerate(np.asarray(ltwh)):
            out[i, self.who[tuple(np.round(box, 2))] % self.dim] = 1
        return out


def _scores(paths: dict, result) -> tuple:
    from rmnet.track.metrics import score

    return score([read_mot(g) for g in paths["gt"]], [read_mot(p) for p in result.results],
                 ["cam1", "cam2"], [SMALL.frames] * 2)


@needs_deepsort
@needs_motmetrics
def test_linking_across_cameras_through_the_gallery(exact_scene, tmp_path):
    from rmnet.track.run import track_videos
    from rmnet.track.tracker import IdentityLinker, NoReid, SeparateIdentities

    p = exact_scene
    cfg = TrackConfig()
    base = track_videos(p["video"], p["det"], NoReid(), SeparateIdentities(), tmp_path / "none",
                        write_videos=False)
    oracle = OracleDescriber(p["gt"])
    linker = IdentityLinker.open(tmp_path / "gallery", oracle.dim, "oracle", cfg)
    res = track_videos(p["video"], p["det"], oracle, linker, tmp_path / "oracle", cfg=cfg,
                       write_videos=False)
    linker.save()
    both = set(read_mot(p["gt"][0]).rows[:, 1]) & set(read_mot(p["gt"][1]).rows[:, 1])
    assert base.cross_camera == 0 and res.cross_camera >= len(both) - 1
    (_, j0), (_, j1) = _scores(p, base), _scores(p, res)
    assert j1.values["idf1"] > j0.values["idf1"] + 0.2, (j0.line(), j1.line())
    assert j1.values["idf1"] > 0.8
    # the gallery persists: a second run over the same cameras takes the stored identities
    again = IdentityLinker.open(tmp_path / "gallery", oracle.dim, "oracle", cfg)
    assert len(again.gallery) == len(linker.gallery)
    res2 = track_videos(p["video"], p["det"], oracle, again, tmp_path / "again", cfg=cfg,
                        write_videos=False)
    assert res2.linked >= res2.identities - 1 and again.next_id == linker.next_id
    first = {tuple(r[[0, 2, 3]]): r[1] for r in res.rows[1]}
    same = [first.get(tuple(r[[0, 2, 3]])) == r[1] for r in res2.rows[1]]
    assert np.mean(same) > 0.9
    # with no time to walk between the views, nobody can be linked across them
    short = TrackConfig(max_transit=0.04)
    none = IdentityLinker.open(tmp_path / "g2", oracle.dim, "oracle", short)
    res3 = track_videos(p["video"], p["det"], oracle, none, tmp_path / "short", cfg=short,
                        write_videos=False)
    assert res3.cross_camera == 0 and res3.identities > res.identities
    from rmnet.gallery import GalleryError
    with pytest.raises(GalleryError, match="another model"):
        IdentityLinker.open(tmp_path / "gallery", oracle.dim, "other-model", cfg)


@needs_deepsort
def test_deep_sort_update_loop_with_rmnet_descriptors(scene, tmp_path, caffe):
    """deep_sort_realtime's own update_tracks, per frame, fed RMNet descriptors (a random-weight
    light net exported to OpenVINO): tracks, MOT results, annotated videos, the gallery."""
    from rmnet.deploy.embedder import Embedder
    from rmnet.deploy.export import random_caffemodel
    from rmnet.track.run import track_videos
    from rmnet.track.tracker import IdentityLinker, ReidDescriber

    w = random_caffemodel(LIGHT, tmp_path / "light.caffemodel", seed=1)
    emb = Embedder.load([LIGHT, w], runtime="openvino", cache_dir=tmp_path / "cache",
                        max_aspect_change=0)
    linker = IdentityLinker.open(tmp_path / "gallery", emb.dim, emb.model_sha256)
    res = track_videos(scene["video"], scene["det"], ReidDescriber(emb), linker,
                       tmp_path / "out")
    assert res.frames == 2 * SMALL.frames and res.reid_seconds > 0
    assert all(n >= 3 for n in res.per_camera_tracks)
    assert len(linker.gallery) >= res.identities
    for path, rows in zip(res.results, res.rows):
        back = read_mot(path)
        assert len(back.rows) == len(rows) > 100 and (back.rows[:, 1] >= 1).all()
    for v in res.videos:
        assert VideoReader(v).count_frames() == SMALL.frames
    if HAVE_MOTMETRICS:
        per, _ = _scores(scene, res)
        assert all(s.values["mota"] > 0.5 for s in per), [s.line() for s in per]


# --- the command line ---------------------------------------------------------------------------

@needs_deepsort
@needs_motmetrics
def test_track_command(scene, tmp_path, capsys):
    from commands.track import main

    v, d, g = scene["video"], scene["det"], scene["gt"]
    args = ["--video", str(v[0]), "--video", str(v[1]), "--detections", str(d[0]),
            "--detections", str(d[1]), "--out", str(tmp_path / "out"), "--no-reid",
            "--no-video", "--gt", str(g[0]), "--gt", str(g[1])]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "all cameras (global ids) IDF1" in out and (tmp_path / "out" / "cam1.txt").is_file()
    # detections that do not fit: frames past the end, another resolution, a count mismatch
    late = tmp_path / "late.txt"
    late.write_text(f"{SMALL.frames + 5},-1,10,10,20,40,1\n")
    assert main(["--video", str(v[0]), "--detections", str(late), "--out",
                 str(tmp_path / "o2"), "--no-reid"]) == 2
    assert f"late.txt: has boxes up to frame {SMALL.frames + 5}" in capsys.readouterr().err
    far = tmp_path / "far.txt"
    far.write_text("1,-1,1000,900,20,40,1\n")
    assert main(["--video", str(v[0]), "--detections", str(far), "--out",
                 str(tmp_path / "o3"), "--no-reid"]) == 2
    assert "wholly outside" in capsys.readouterr().err
    assert main(["--video", str(v[0]), "--video", str(v[1]), "--detections", str(d[0]),
                 "--out", str(tmp_path / "o4"), "--no-reid"]) == 2
    assert "2 videos but 1 detection files" in capsys.readouterr().err
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 100)
    assert main(["--video", str(bad), "--detections", str(d[0]), "--out",
                 str(tmp_path / "o5"), "--no-reid"]) == 2
    assert "bad.mp4: OpenCV cannot decode it" in capsys.readouterr().err
    assert main(["--video", str(v[0]), "--detections", str(d[0]), "--out",
                 str(tmp_path / "o6"), "--no-reid", "--codec", "ZZZZ"]) == 2
    assert "cannot write codec 'ZZZZ'" in capsys.readouterr().err
    assert not [p.name for p in (tmp_path / "o6").iterdir() if p.suffix == ".mp4"]


def _detector_ir(path: Path, layout: str, boxes: np.ndarray) -> Path:
    """A generated IR in a person detector's output layout whose boxes are ``boxes`` (k, 5)
    ``x0, y0, x1, y1, conf`` in 0..1 for any image: real OpenVINO files and inference, to test
    reading, scaling and the tracking loop (no person detector ships with the project)."""
    import openvino as ov
    from openvino import opset13 as ops

    image = ops.parameter([1, 3, 96, 160], np.float32, name="image")
    zero = ops.multiply(ops.reduce_mean(image, [0, 1, 2, 3], keep_dims=False),
                        np.float32(0))               # depends on the input, adds nothing
    k = len(boxes)
    if layout == "ssd":
        rows = np.zeros((1, 1, k + 1, 7), np.float32)
        rows[0, 0, :k, 1] = 1
        rows[0, 0, :k, 2] = boxes[:, 4]
        rows[0, 0, :k, 3:7] = boxes[:, :4]
        rows[0, 0, k, 0] = -1                        # the end marker, then padding
        out = [ops.add(ops.constant(rows), zero, name="detection_out")]
    else:
        b = boxes.copy()
        b[:, [0, 2]] *= 160
        b[:, [1, 3]] *= 96
        out = [ops.add(ops.constant(b.astype(np.float32)), zero),
               ops.constant(np.array([0, 1] + [0] * (k - 2), np.int64))]
        out[0].output(0).get_tensor().set_names({"boxes"})
        out[1].output(0).get_tensor().set_names({"labels"})
    model = ov.Model([o.output(0) for o in out], [image], "detector")
    if layout == "ssd":
        model.outputs[0].get_tensor().set_names({"detection_out"})
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


@needs_deepsort
def test_detector_ir_feeds_the_tracker(scene, tmp_path, capsys):
    from commands.track import main
    from rmnet.track.detector import DetectorError, PersonDetector

    boxes = np.array([[0.1, 0.2, 0.3, 0.9, 0.9], [0.6, 0.1, 0.7, 0.8, 0.8],
                      [0.4, 0.4, 0.5, 0.5, 0.2]])
    frame = np.zeros((180, 320, 3), np.uint8)
    for layout in ("ssd", "boxes"):
        det = PersonDetector(_detector_ir(tmp_path / f"{layout}.xml", layout, boxes), 0.5,
                             label=0 if layout == "boxes" else None)
        rows = det.detect(frame)
        want = 2 if layout == "ssd" else 1       # conf 0.2 dropped; label 1 dropped with label=0
        assert len(rows) == want, layout
        assert np.allclose(rows[0, 2:7], [32, 36, 64, 126, 0.9], atol=1e-3), layout
    v = scene["video"][0]
    assert main(["--video", str(v), "--detector", str(tmp_path / "ssd.xml"), "--out",
                 str(tmp_path / "out"), "--no-reid", "--no-video"]) == 0
    assert f"{2 * SMALL.frames} detections (from" in capsys.readouterr().out
    written = read_mot(tmp_path / "out" / "cam1-det.txt")
    assert written.last_frame == SMALL.frames and len(written.rows) == 2 * SMALL.frames
    assert len(np.unique(read_mot(tmp_path / "out" / "cam1.txt").rows[:, 1])) == 2
    (tmp_path / "bad.xml").write_text("<net>")
    with pytest.raises(DetectorError, match="bad.xml: OpenVINO cannot read it"):
        PersonDetector(tmp_path / "bad.xml")
    assert main(["--video", str(v), "--detector", str(tmp_path / "missing.xml"), "--out",
                 str(tmp_path / "o2"), "--no-reid"]) == 2
    assert "missing.xml: no such detector IR" in capsys.readouterr().err
