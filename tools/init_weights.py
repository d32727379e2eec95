#!/usr/bin/env python3
"""Write the initial caffemodel for training (paper V.ii), for `caffe train -weights`.

The command line is commands/init_weights.py, also installed as the console script `rmnet-init-weights`.
"""
from commands.init_weights import main

if __name__ == "__main__":
    raise SystemExit(main())
