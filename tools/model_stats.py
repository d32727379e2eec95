#!/usr/bin/env python3
"""Size and cost of each variant's deploy net: parameters, convolution MACs, feature-map sizes.

The command line is commands/model_stats.py, also installed as the console script `rmnet-model-stats`.
"""
from commands.model_stats import main

if __name__ == "__main__":
    raise SystemExit(main())
