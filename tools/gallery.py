#!/usr/bin/env python3
"""Build, grow and search a persistent gallery of person descriptors (FAISS + SQLite).

The command line is commands/gallery.py, also installed as the console script `rmnet-gallery`.
"""
from commands.gallery import main

if __name__ == "__main__":
    raise SystemExit(main())
