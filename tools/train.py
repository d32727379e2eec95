#!/usr/bin/env python3
"""Train RMNet with the real `caffe train` command, after checking everything it will need.

The command line is commands/train.py, also installed as the console script `rmnet-train`.
"""
from commands.train import main

if __name__ == "__main__":
    raise SystemExit(main())
