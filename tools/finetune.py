#!/usr/bin/env python3
"""Fine-tune a trained re-id model on a dataset's training identities, scored before and after.

The command line is commands/finetune.py, also installed as the console script `rmnet-finetune`.
"""
from commands.finetune import main

if __name__ == "__main__":
    raise SystemExit(main())
