"""A person detector given as an OpenVINO IR, for ``tools/track.py --detector``.

Two output layouts of Open Model Zoo's person detectors are read (the model is the user's; none
ships with the project):

- SSD ``DetectionOutput``: one output ``[1, 1, N, 7]``, rows ``image_id, label, conf, x_min,
  y_min, x_max, y_max`` with coordinates in 0..1 of the input (person-detection-retail-0013,
  pedestrian-detection-adas-0002); rows after an ``image_id`` of -1 are padding.
- boxes + labels: ``boxes [N, 5]`` (``x_min, y_min, x_max, y_max, conf`` in pixels of the
  network input) and ``labels [N]`` (person-detection-0200 .. 0203).

The frame is resized to the network's input (BGR 0..255, as those models take), boxes are
scaled back to the frame, clipped to it, and kept when their confidence is at least
``threshold`` (and, with labels, when the label is ``label``). ``detect(frame)`` returns MOT
detection rows without the frame number set (column 0 is 0), like a line of a detections file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class DetectorError(ValueError):
    """A detector IR this reader cannot use (names the file and why)."""


class PersonDetector:
    def __init__(self, xml: str | os.PathLike, threshold: float = 0.5, label: int | None = None):
        import openvino as ov

        self.path = Path(xml)
        if not self.path.is_file():
            raise DetectorError(f"{self.path}: no such detector IR")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as e:
            raise DetectorError(f"{self.path}: OpenVINO cannot read it ({str(e).splitlines()[0]})"
                                ) from None
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.get_length() != 4 or shape[1].get_length() != 3 or shape[2].is_dynamic:
            raise DetectorError(f"{self.path}: input {shape}, expected [1, 3, H, W] (BGR image)")
        self.input_hw = (shape[2].get_length(), shape[3].get_length())
        outs = {}
        for i, o in enumerate(model.outputs):
            names = sorted(o.get_names())
            for name in names or [f"output{i}"]:
                outs[name] = o
        kinds = [tuple(o.get_partial_shape()) for o in model.outputs]
        if len(model.outputs) == 1 and len(kinds[0]) == 4 and kinds[0][3].get_length() == 7:
            self.layout = "ssd"
        elif "boxes" in outs and "labels" in outs:
            self.layout = "boxes"
        else:
            raise DetectorError(f"{self.path}: outputs {', '.join(outs)} "
                                f"{[str(k) for k in kinds]}: neither one [1, 1, N, 7] SSD "
                                f"output nor 'boxes' [N, 5] + 'labels' [N]")
        self.threshold, self.label = float(threshold), label
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.outputs = outs

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """(k, 10) MOT detection rows (frame 0, id -1, left, top, w, h, conf, -1, -1, -1)."""
        import cv2

        h, w = frame.shape[:2]
        ih, iw = self.input_hw
        blob = cv2.resize(frame, (iw, ih)).transpose(2, 0, 1)[None].astype(np.float32)
        res = self.compiled(blob)
        if self.layout == "ssd":
            rows = np.asarray(res[0]).reshape(-1, 7)
            end = np.flatnonzero(rows[:, 0] < 0)
            rows = rows[:end[0]] if len(end) else rows
            labels, conf = rows[:, 1], rows[:, 2]
            box = rows[:, 3:7] * np.array([w, h, w, h])
        else:
            b = np.asarray(res["boxes"]).reshape(-1, 5)
            labels = np.asarray(res["labels"]).reshape(-1)
            conf = b[:, 4]
            box = b[:, :4] * np.array([w / iw, h / ih, w / iw, h / ih])
        keep = conf >= self.threshold
        if self.label is not None:
            keep &= labels == self.label
        box = np.clip(box[keep], 0, [w, h, w, h])
        conf = conf[keep]
        wh = box[:, 2:] - box[:, :2]
        ok = (wh > 1).all(axis=1)
        out = np.full((int(ok.sum()), 10), -1.0)
        out[:, 0] = 0
        out[:, 2:4] = box[ok, :2]
        out[:, 4:6] = wh[ok]
        out[:, 6] = conf[ok]
        return out
