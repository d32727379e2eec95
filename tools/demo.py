#!/usr/bin/env python3
"""The project's main job (`make demo`): train the light RMNet with the paper's losses and mining

The command line is commands/demo.py, also installed as the console script `rmnet-demo`.
"""
from commands.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
