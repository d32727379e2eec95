#!/usr/bin/env python3
"""Track people in one or more camera videos with RMNet descriptors, one identity across cameras.

    .venv/bin/python tools/track.py --video cam1.mp4 --video cam2.mp4 \\
        --detections cam1-det.txt --detections cam2-det.txt \\
        --model prototxt/light/deploy.prototxt model.caffemodel --out tracked/ \\
        [--gallery galleries/site] [--gt cam1-gt.txt --gt cam2-gt.txt]
    (--detector person-detection.xml in place of the --detections files)

Detections are MOT Challenge text files (``frame, -1, left, top, width, height, conf, ...``),
one per video in the same order, or come from a person-detection OpenVINO IR the user has
(``--detector``: Open Model Zoo's SSD ``[1, 1, N, 7]`` layout, e.g. person-detection-retail-0013,
or ``boxes`` + ``labels``, e.g. person-detection-0200; rmnet/track/detector.py), kept at
``--det-threshold``; its detections are written to ``<out>/<video stem>-det.txt``. Each camera runs deep_sort_realtime's tracker (an optional
dependency: ``pip install --no-deps -r requirements-track.txt``) fed RMNet descriptors of its
detections (``--model``: a Caffe deploy prototxt + caffemodel, an exported ``.onnx`` or an
OpenVINO ``.xml``, on ``--runtime``); tracks are linked across cameras through a persistent gallery
(``--gallery``, default ``<out>/gallery``; reused by the next run, so identities persist)
(rmnet/track/tracker.py says how). ``--no-reid`` runs the same tracker on motion alone.

Writes ``<out>/<video stem>.txt`` (MOT results, global ids) and ``<out>/<video stem>-tracked.mp4``
(boxes and ids drawn; ``--no-video`` skips it, ``--codec`` picks the FourCC). With ``--gt``
(MOT ground truth, one per video) prints MOTA, IDF1 and ID switches per camera and over all
cameras with global ids (needs motmetrics, same requirements file).

Exit status: 0 done; 2 bad input (a video OpenCV cannot decode, a codec it cannot write,
detections that do not fit their video, a missing optional package), with a message naming it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from rmnet.atomic import check_output  # noqa: E402
from commands.errors import command  # noqa: E402
from rmnet.track.mot import MOTFormatError, read_mot  # noqa: E402
from rmnet.track.tracker import TrackConfig, TrackerUnavailable  # noqa: E402
from rmnet.track.video import VideoError  # noqa: E402


def add_tracker_options(ap: argparse.ArgumentParser) -> None:
    """The tracker's and the linker's settings (shared with tools/bench_track.py)."""
    d = TrackConfig()
    ap.add_argument("--max-cosine-distance", type=float, default=d.max_cosine_distance,
                    help="DeepSort's appearance gate (default %(default)s)")
    ap.add_argument("--max-age", type=int, default=d.max_age,
                    help="frames a lost track is kept (default %(default)s)")
    ap.add_argument("--link-threshold", type=float, default=d.link_threshold,
                    help="cosine similarity to take an identity from the gallery "
                         "(default %(default)s)")
    ap.add_argument("--max-transit", type=float,
                    help="seconds an identity stays linkable after it was last seen, in any "
                         "camera (default: no limit)")
    ap.add_argument("--min-detections", type=int, default=d.min_detections,
                    help="descriptors averaged before a track is linked (default %(default)s)")


def tracker_config(args) -> TrackConfig:
    return TrackConfig(max_age=args.max_age, max_cosine_distance=args.max_cosine_distance,
                       link_threshold=args.link_threshold, min_detections=args.min_detections,
                       max_transit=args.max_transit)


def load_embedder(model: list[Path], runtime: str):
    from rmnet.deploy.embedder import Embedder

    return Embedder.load(model, runtime=runtime, batch_size=64, max_aspect_change=0)


@command('track')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, action="append", required=True,
                    help="a camera's video (repeat for more cameras)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--detections", type=Path, action="append",
                     help="its MOT-format detections (one per --video, same order)")
    src.add_argument("--detector", type=Path,
                     help="a person-detection OpenVINO IR (.xml) run on every frame instead")
    ap.add_argument("--det-threshold", type=float, default=0.5,
                    help="with --detector: minimum confidence (default %(default)s)")
    ap.add_argument("--det-label", type=int,
                    help="with --detector: keep only this class label (default: all)")
    ap.add_argument("--model", type=Path, nargs="+",
                    help="RMNet: deploy .prototxt + .caffemodel, .onnx, or OpenVINO .xml")
    ap.add_argument("--runtime", default="auto",
                    help="auto, openvino, onnxruntime, opencv or pycaffe (default auto)")
    ap.add_argument("--no-reid", action="store_true",
                    help="no appearance: the same tracker on motion alone, no linking")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--gallery", type=Path,
                    help="persistent identity gallery (default <out>/gallery)")
    ap.add_argument("--gt", type=Path, action="append",
                    help="MOT ground truth per video, to print MOTA/IDF1/ID switches")
    ap.add_argument("--no-video", action="store_true", help="do not write annotated videos")
    ap.add_argument("--codec", help="FourCC of the annotated videos (default: mp4v for .mp4)")
    add_tracker_options(ap)
    args = ap.parse_args(argv)
    if args.no_reid == bool(args.model):
        ap.error("give --model (RMNet) or --no-reid")
    if args.gt and len(args.gt) != len(args.video):
        ap.error(f"{len(args.gt)} --gt files for {len(args.video)} videos")
    check_output(args.out, "--out", folder=True)
    from tqdm import tqdm

    from rmnet.deploy.backends import RuntimeUnavailable
    from rmnet.deploy.export import ExportCheckError
    from rmnet.deploy.graph import ExportError
    from rmnet.gallery import GalleryError
    from rmnet.track.detector import DetectorError, PersonDetector
    from rmnet.track.run import open_inputs, track_videos
    from rmnet.track.tracker import (IdentityLinker, NoReid, ReidDescriber,
                                     SeparateIdentities, deep_sort_class)

    cfg = tracker_config(args)
    try:
        deep_sort_class()                       # the optional package, before any work
        readers, _ = open_inputs(args.video, args.detections)   # every input checked first
        detector = (PersonDetector(args.detector, args.det_threshold, args.det_label)
                    if args.detector else None)
        if args.no_reid:
            describer, linker = NoReid(), SeparateIdentities()
        else:
            emb = load_embedder(args.model, args.runtime)
            describer = ReidDescriber(emb)
            linker = IdentityLinker.open(args.gallery or args.out / "gallery", emb.dim,
                                         emb.model_sha256, cfg, readers[0].fps)
            print(f"re-id: {', '.join(map(str, args.model))} on {emb.runtime}, gallery "
                  f"{linker.gallery.folder} ({len(linker.gallery)} entries)")
        total = sum(r.n_frames for r in readers)
        with tqdm(total=total, unit="frame", desc="tracking", file=sys.stderr) as bar:
            result = track_videos(args.video, args.detections, describer, linker, args.out,
                                  cfg=cfg, write_videos=not args.no_video, codec=args.codec,
                                  progress=bar.update, detector=detector)
        if not args.no_reid:
            linker.save()
    except (TrackerUnavailable, VideoError, MOTFormatError, GalleryError, RuntimeUnavailable,
            ExportError, ExportCheckError, DetectorError, ValueError) as e:
        print(f"track: {e}", file=sys.stderr)
        return 2
    per_frame = 1000 * result.reid_seconds / max(1, result.frames)
    print(f"{result.frames} camera frames, {result.detections} detections"
          f"{' (from ' + str(args.detector) + ')' if args.detector else ''}; re-id "
          f"{per_frame:.1f} ms per camera frame")
    print(f"{result.identities} identities, {result.cross_camera} seen by more than one camera "
          f"({result.linked} tracks took an identity from the gallery); tracks per camera "
          f"{result.per_camera_tracks}")
    for p in result.results + result.videos:
        print(f"wrote {p}")
    if args.gt:
        from rmnet.track.metrics import score

        try:
            per, joint = score([read_mot(g) for g in args.gt],
                               [read_mot(p) for p in result.results],
                               [v.stem for v in args.video], [r.n_frames for r in readers])
        except (MOTFormatError, ImportError) as e:
            print(f"track: {e}", file=sys.stderr)
            return 2
        for s in per + [joint]:
            print(s.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
