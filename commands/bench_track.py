#!/usr/bin/env python3
"""The same tracker without re-id, with RMNet and with RMNet INT8 on a generated two-camera scene,
and the re-id cost per frame, in one run.

    .venv/bin/python tools/bench_track.py --prototxt prototxt/light/deploy.prototxt \\
        --weights model.caffemodel [--people 24 --frames 450 --seed 0] [--out results.txt]

1. The scene: ``--people`` synthetic people (rmnet/track/scene.py) walking through two
   ``--width`` x ``--height`` views, ``--frames`` frames each, with MOT ground truth and
   detections (the truth jittered, some dropped), written to a temporary folder (``--scene``
   keeps it).
2. The models: the caffemodel exported to an OpenVINO IR (FP32, checked against pycaffe), and that
   IR quantized to INT8 by NNCF (tools/quantize.py's ``quantize``: ``--calib`` synthetic training
   crops, preset performance, min-max ranges), both run by OpenVINO through the Embedder.
3. Tracking: deep_sort_realtime per camera (requirements-track.txt), its settings the same in
   every row: without re-id (a constant appearance: motion alone, every track its own identity),
   with RMNet FP32 and with RMNet INT8 descriptors (identities linked across cameras through a
   fresh gallery each). Per camera and over both cameras with global ids: IDF1, ID switches, MOTA
   (motmetrics); and how many people seen by both cameras kept one id in both.
4. Re-id cost per frame: cropping, resizing and inference of 10, 30 and 100 people (``--people-
   per-frame``) in one batch, milliseconds (median of ``--repeats``, interleaved), FP32 and INT8,
   beside the paper's claim (light RMNet, 923 images/s on an i7-6700K: "about 30 persons on each
   frame in real time").

Everything printed is also written to ``--out`` (atomically) with the command line.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GLOG_minloglevel", "2")

from rmnet.atomic import atomic_write_text, check_output  # noqa: E402
from commands.errors import command  # noqa: E402
from commands.track import add_tracker_options, tracker_config  # noqa: E402

PAPER_FPS = 923           # light RMNet images/s in the paper's Table 3 (i7-6700K, OpenVINO)
REAL_TIME_MS = 1000 / 30  # one frame of a 30 fps stream


@command('bench_track')
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prototxt", type=Path, required=True)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--people", type=int, default=24)
    ap.add_argument("--frames", type=int, default=450, help="frames per camera")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", type=int, default=300, help="INT8 calibration crops")
    ap.add_argument("--people-per-frame", default="10,30,100")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per timed repeat")
    ap.add_argument("--scene", type=Path, help="keep the generated scene in this folder")
    ap.add_argument("--out", type=Path, help="also write the report here")
    add_tracker_options(ap)
    args = ap.parse_args(argv)
    check_output(args.out, "--out")
    people = [int(v) for v in args.people_per_frame.split(",")]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    from tqdm import tqdm

    from rmnet.deploy.embedder import Embedder, model_sha256
    from rmnet.deploy.export import export, save_openvino, synthetic_crops
    from rmnet.data.images import resize_to, to_blob
    from rmnet.track.bench import compare, frame_cost
    from rmnet.track.scene import SceneConfig, write_scene
    from rmnet.track.tracker import NoReid, ReidDescriber, TrackerUnavailable, deep_sort_class
    from commands.quantize import quantize

    try:
        deep_sort_class()
        import motmetrics  # noqa: F401
    except (TrackerUnavailable, ImportError) as e:
        print(f"bench_track: {e}", file=sys.stderr)
        return 2
    cfg = tracker_config(args)
    scene_cfg = SceneConfig(people=args.people, frames=args.frames, width=args.width,
                            height=args.height, seed=args.seed)
    say(f"command: {' '.join(shlex.quote(a) for a in [sys.argv[0]] + list(argv or sys.argv[1:]))}")
    say(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.1f} (other jobs share the machine)")
    with tempfile.TemporaryDirectory(prefix="rmnet-bench-track-") as tmp:
        tmp = Path(tmp)
        scene_dir = args.scene or tmp / "scene"
        with tqdm(total=scene_cfg.frames * scene_cfg.cameras, desc="scene", unit="frame",
                  file=sys.stderr) as bar:
            paths = write_scene(scene_cfg, scene_dir, progress=bar.update)
        n_gt = sum(len(open(g).read().splitlines()) for g in paths["gt"])
        say(f"scene: {scene_cfg.people} people, 2 cameras of {scene_cfg.width}x"
            f"{scene_cfg.height}, {scene_cfg.frames} frames each, {n_gt} true boxes "
            f"({n_gt / (2 * scene_cfg.frames):.1f} people per frame), seed {scene_cfg.seed}")
        report = export(args.prototxt, args.weights, tmp / "fp32", name="rmnet", openvino=True)
        fp32 = Path(report.openvino_xml)
        from rmnet.caffe.caffemodel import sha256_file
        say(f"model: {args.prototxt} + {args.weights} (sha256 "
            f"{sha256_file(args.weights)[:16]}); FP32 IR checked against pycaffe (max abs "
            f"diff {max(report.max_abs_diff.values()):.2g})")
        h, w = report.input_hw
        calib = to_blob([resize_to(c, h, w) for c in synthetic_crops(args.calib, seed=7)])
        int8 = save_openvino(quantize(fp32, calib, "performance"), tmp / "int8" / "rmnet.xml")
        say(f"INT8: NNCF on {args.calib} synthetic training crops (preset performance, min-max "
            f"ranges)")
        embedders = {"RMNet FP32": Embedder.load(fp32, "openvino", batch_size=128,
                                                 max_aspect_change=0),
                     "RMNet INT8": Embedder.load(int8, "openvino", batch_size=128,
                                                 max_aspect_change=0)}
        describers = {"no re-id": NoReid(),
                      **{k: ReidDescriber(e) for k, e in embedders.items()}}
        shas = {k: model_sha256(p) for k, p in (("RMNet FP32", fp32), ("RMNet INT8", int8))}
        say(f"tracker: deep_sort_realtime, max_cosine_distance {cfg.max_cosine_distance}, "
            f"max_age {cfg.max_age}, n_init {cfg.n_init}; linking: cosine >= "
            f"{cfg.link_threshold} after {cfg.min_detections} descriptors")
        with tqdm(total=3 * 2 * scene_cfg.frames, desc="tracking", unit="frame",
                  file=sys.stderr) as bar:
            rows = compare(paths, describers, shas, cfg, [scene_cfg.frames] * 2,
                           progress=bar.update)
        say()
        for row in rows:
            say(f"{row.name}:")
            for s in row.per_camera + [row.joint]:
                say("  " + s.line())
            kept, multi = row.kept
            res = row.result
            say(f"  {res.identities} identities; {kept} of {multi} people seen by both cameras "
                f"kept one id in both; re-id {1000 * res.reid_seconds / res.frames:.1f} ms per "
                f"camera frame ({res.detections / res.frames:.1f} detections)")
        say()
        crops = synthetic_crops(64, seed=9)
        say(f"re-id cost per frame (crop + resize + one batch through OpenVINO, "
            f"{os.cpu_count()} CPUs, median of {args.repeats} interleaved repeats):")
        cost = frame_cost({k: ReidDescriber(e) for k, e in embedders.items()}, crops, people,
                          repeats=args.repeats, min_time=args.min_time,
                          log=lambda m: print(m, file=sys.stderr))
        for n in people:
            a, b = cost["RMNet FP32", n], cost["RMNet INT8", n]
            say(f"  {n:4d} people: FP32 {a['median_ms']:7.1f} ms ({a['q1_ms']:.1f}-"
                f"{a['q3_ms']:.1f}), INT8 {b['median_ms']:7.1f} ms ({b['q1_ms']:.1f}-"
                f"{b['q3_ms']:.1f}); INT8 / FP32 time {b['median_ms'] / a['median_ms']:.2f}; "
                f"{'within' if a['median_ms'] <= REAL_TIME_MS else 'over'} a 30 fps frame "
                f"({REAL_TIME_MS:.1f} ms) in FP32")
        say(f"  load average at the end {os.getloadavg()[0]:.1f}")
        say(f"  paper: light RMNet {PAPER_FPS} images/s on an i7-6700K, 30 people = "
            f"{1000 * 30 / PAPER_FPS:.1f} ms of inference per frame")
    if args.out:
        atomic_write_text(args.out, "\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
