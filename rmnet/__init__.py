"""Code shared by the Caffe layers (layers/) and the tools (tools/).

One importable place for what both need: Market-1501 parsing, metrics, image loading, and the
location of the project's files.
"""
