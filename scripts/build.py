#!/usr/bin/env python
"""Build a relighting-pairs dataset; see ``python scripts/build.py --help``."""

from relight_datasets.cli import console_main

if __name__ == "__main__":
    console_main()
