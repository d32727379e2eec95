#!/usr/bin/env python3
"""The same tracker without re-id, with RMNet and RMNet INT8 on a generated two-camera scene.

The command line is commands/bench_track.py, also installed as the console script `rmnet-bench-track`.
"""
from commands.bench_track import main

if __name__ == "__main__":
    raise SystemExit(main())
