#!/usr/bin/env python3
"""Evaluate a person re-identification model on Market-1501 (or any root in its layout).

The command line is commands/eval_market.py, also installed as the console script `rmnet-eval-market`.
"""
from commands.eval_market import main

if __name__ == "__main__":
    raise SystemExit(main())
