"""Persistent, searchable galleries of person descriptors (FAISS index + SQLite metadata).

``rmnet.gallery.index``: which FAISS index, built how; ``rmnet.gallery.store``: the metadata;
``rmnet.gallery.gallery``: the ``Gallery`` that ties them to a folder and a model;
``rmnet.gallery.evaluate``: CMC/mAP through an index.
"""
from rmnet.gallery.gallery import Gallery, GalleryError, Hit, entry_from_path
from rmnet.gallery.store import Entry, Record

__all__ = ["Gallery", "GalleryError", "Hit", "Entry", "Record", "entry_from_path"]
