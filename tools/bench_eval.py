#!/usr/bin/env python3
"""Speed and memory of the evaluation at Market-1501 size, with random features.

The command line is commands/bench_eval.py, also installed as the console script `rmnet-bench-eval`.
"""
from commands.bench_eval import main

if __name__ == "__main__":
    raise SystemExit(main())
