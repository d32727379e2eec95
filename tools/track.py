#!/usr/bin/env python3
"""Track people in camera videos with RMNet descriptors, one identity across cameras.

The command line is commands/track.py, also installed as the console script `rmnet-track`.
"""
from commands.track import main

if __name__ == "__main__":
    raise SystemExit(main())
