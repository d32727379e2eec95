#!/usr/bin/env python3
"""Plot a `caffe train` log: every loss term, the total loss, the learning rate, test outputs.

The command line is commands/plot_training.py, also installed as the console script `rmnet-plot-training`.
"""
from commands.plot_training import main

if __name__ == "__main__":
    raise SystemExit(main())
