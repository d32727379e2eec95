#!/usr/bin/env python3
"""Benchmark: the RMNet training step on stock Caffe and on the project's patched Caffe.

The command line is commands/bench_train.py, also installed as the console script `rmnet-bench-train`.
"""
from commands.bench_train import main

if __name__ == "__main__":
    raise SystemExit(main())
