"""Code shared by the Caffe layers (layers/) and the tools (tools/).

One importable place for what both need: Market-1501 parsing, image loading, metrics,
caffemodel reading, training and export helpers (README.md, "Layout", lists the modules).
"""
