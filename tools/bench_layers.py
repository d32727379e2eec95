#!/usr/bin/env python3
"""Benchmark: forward+backward time of the loss layers against RMNet's own, in one run.

The command line is commands/bench_layers.py, also installed as the console script `rmnet-bench-layers`.
"""
from commands.bench_layers import main

if __name__ == "__main__":
    raise SystemExit(main())
