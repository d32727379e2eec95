"""Where the repository is, for the defaults that name its folders (``prototxt/``, ``runs/``)."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
