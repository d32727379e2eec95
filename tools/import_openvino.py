#!/usr/bin/env python3
"""Import an OpenVINO IR of RMNet (Intel's published models) as a caffemodel, checked.

The command line is commands/import_openvino.py, also installed as the console script `rmnet-import-openvino`.
"""
from commands.import_openvino import main

if __name__ == "__main__":
    raise SystemExit(main())
