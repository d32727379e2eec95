#!/usr/bin/env python3
"""Check Caffe's GPU build on a machine with a GPU: layers, gradients, training, NCCL, speed.

The command line is commands/gpu_check.py, also installed as the console script `rmnet-gpu-check`.
"""
from commands.gpu_check import main

if __name__ == "__main__":
    raise SystemExit(main())
