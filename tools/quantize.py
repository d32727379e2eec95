#!/usr/bin/env python3
"""INT8 post-training quantization (OpenVINO NNCF): speed-up and accuracy change side by side.

The command line is commands/quantize.py, also installed as the console script `rmnet-quantize`.
"""
from commands.quantize import main

if __name__ == "__main__":
    raise SystemExit(main())
