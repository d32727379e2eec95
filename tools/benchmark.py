#!/usr/bin/env python3
"""Table 3 on this machine: images/s of RMNet light/strong and a ResNet-50 baseline per runtime.

The command line is commands/benchmark.py, also installed as the console script `rmnet-benchmark`.
"""
from commands.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
