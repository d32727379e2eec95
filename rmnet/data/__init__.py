"""Datasets on disk: Market-1501-style layouts, image decoding, the synthetic set."""
