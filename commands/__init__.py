"""The command lines behind tools/*.py and the console entry points in setup.py."""
