#!/usr/bin/env python
"""Build a relighting-pairs dataset; see ``python scripts/build.py --help``."""

import sys

from relight_datasets.cli import main

if __name__ == "__main__":
    sys.exit(main())
