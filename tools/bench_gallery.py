#!/usr/bin/env python3
"""Gallery search at scale: FAISS indexes against exact search on synthetic descriptors.

The command line is commands/bench_gallery.py, also installed as the console script `rmnet-bench-gallery`.
"""
from commands.bench_gallery import main

if __name__ == "__main__":
    raise SystemExit(main())
