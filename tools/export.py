#!/usr/bin/env python3
"""Export a Caffe deploy net + caffemodel to ONNX (and OpenVINO IR), checked against pycaffe.

The command line is commands/export.py, also installed as the console script `rmnet-export`.
"""
from commands.export import main

if __name__ == "__main__":
    raise SystemExit(main())
