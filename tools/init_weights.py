#!/usr/bin/env python3
"""Write the initial caffemodel for training (paper V.ii), for `caffe train -weights`.

The command line is rmnet/cli/init_weights.py, also installed as the console script `rmnet-init-weights`.
"""
from rmnet.cli.init_weights import main

if __name__ == "__main__":
    raise SystemExit(main())
