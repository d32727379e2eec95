#!/usr/bin/env python3
"""Figure 4 of the paper: per convolution layer, the ratio |w|max / |w|min of filter magnitudes.

The command line is commands/plot_weight_ratio.py, also installed as the console script `rmnet-plot-weight-ratio`.
"""
from commands.plot_weight_ratio import main

if __name__ == "__main__":
    raise SystemExit(main())
