"""Deprecated: ``layers.classify`` (see rmnet/layers/__init__.py)."""
from rmnet.layers import forward

forward(__name__)
