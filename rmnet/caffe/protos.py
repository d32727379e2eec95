"""Caffe's net and solver prototxts read with Caffe's own schema (``caffe_pb2``), without
instantiating a net: the one place that parses them, so every reader gives the same errors.

Caffe itself aborts the whole process (glog CHECK) on a prototxt it cannot parse; here a file
that is missing, unreadable or not valid text format raises ``ProtoError`` naming the file and
the parser's line and column.
"""
from __future__ import annotations

import os
from pathlib import Path


class ProtoError(ValueError):
    """A prototxt that cannot be read or parsed; the message names the file."""


def caffe_pb2():
    """pycaffe's ``caffe_pb2`` module (importing it loads pycaffe: glog is quieted first)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        from caffe.proto import caffe_pb2 as pb2
    except ImportError as e:   # pragma: no cover - the venv always has pycaffe
        raise ProtoError(f"reading Caffe files needs pycaffe's caffe.proto ({e}); run "
                         f"`make setup`") from None
    return pb2


def parse_net(text: str, where: str = "<text>"):
    """A ``NetParameter`` from prototxt text; ``where`` names its origin in errors."""
    return _parse(text, caffe_pb2().NetParameter(), where, "Caffe net prototxt")


def parse_solver(text: str, where: str = "<text>"):
    """A ``SolverParameter`` from solver prototxt text."""
    return _parse(text, caffe_pb2().SolverParameter(), where, "Caffe solver prototxt")


def read_net(path: str | os.PathLike):
    """The net prototxt at ``path`` as a ``NetParameter``."""
    return parse_net(_read(path, "net prototxt"), str(path))


def read_solver(path: str | os.PathLike):
    """The solver prototxt at ``path`` as a ``SolverParameter``."""
    return parse_solver(_read(path, "solver prototxt"), str(path))


def net_text(net) -> str:
    """A ``NetParameter`` as prototxt text (what ``caffe.Net`` reads from a file)."""
    from google.protobuf import text_format

    return text_format.MessageToString(net)


def _read(path: str | os.PathLike, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise ProtoError(f"{path}: no such {what}" + (" (a folder)" if path.is_dir() else ""))
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ProtoError(f"{path}: cannot read the {what}: {getattr(e, 'strerror', None) or e}"
                         ) from None


def _parse(text: str, message, where: str, what: str):
    from google.protobuf import text_format

    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ProtoError(f"{where}: not a valid {what}: {e}") from None
    return message
