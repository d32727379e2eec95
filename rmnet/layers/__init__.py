"""Deprecated module names: prototxts written by earlier versions name their Python layers
``rmnet.layers.<module>``; the layers now live in the top-level package ``layers``.

Each module here makes ``rmnet.layers.<module>`` the very module ``layers.<module>`` (so a run
folder rendered before the move still trains and resumes) and says once, on stderr, that the
prototxt should be re-rendered. Nothing in the project imports these names.
"""
from __future__ import annotations

import importlib
import sys

NOTICED: set[str] = set()


def forward(old_name: str) -> None:
    """Make ``sys.modules[old_name]`` the module ``layers.<last part>`` and print the notice."""
    new_name = "layers." + old_name.rsplit(".", 1)[1]
    module = importlib.import_module(new_name)
    sys.modules[old_name] = module
    if old_name not in NOTICED:
        NOTICED.add(old_name)
        print(f"rmnet: deprecated Python layer module {old_name!r} in a prototxt: it is "
              f"{new_name!r} now (re-render the nets to silence this)", file=sys.stderr)
