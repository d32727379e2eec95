"""Multi-object tracking with RMNet descriptors, across cameras.

``rmnet.track.mot``: MOT-format detection, ground-truth and result files; ``rmnet.track.video``:
reading and writing videos with clear errors; ``rmnet.track.tracker``: one tracker per camera
(deep_sort_realtime, an optional dependency) fed RMNet descriptors, and the cross-camera
identities kept in a persistent gallery (``rmnet.gallery``); ``rmnet.track.scene``: a generated
multi-camera sequence of synthetic people with its ground truth; ``rmnet.track.metrics``: MOTA,
IDF1 and ID switches with ``motmetrics`` (optional).
"""
