#!/usr/bin/env python3
"""Re-estimate a trained model's BatchNorm statistics on training images; the weights stay.

The command line is commands/bn_stats.py, also installed as the console script `rmnet-bn-stats`.
"""
from commands.bn_stats import main

if __name__ == "__main__":
    raise SystemExit(main())
