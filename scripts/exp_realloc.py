#!/usr/bin/env python3
"""The realloc experiment of `vfpga bench` alone: writes realloc.md, realloc.json and realloc.png.

    python scripts/exp_realloc.py [--quick] [--out DIR]
"""

from vfpga.runtime.experiments.report import experiment_main

if __name__ == "__main__":
    raise SystemExit(experiment_main("realloc"))
