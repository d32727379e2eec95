#!/usr/bin/env python3
"""Import an OpenVINO IR of RMNet (Intel's published models) as a caffemodel, checked.

The command line is rmnet/cli/import_openvino.py, also installed as the console script `rmnet-import-openvino`.
"""
from rmnet.cli.import_openvino import main

if __name__ == "__main__":
    raise SystemExit(main())
