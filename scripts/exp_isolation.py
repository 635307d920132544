#!/usr/bin/env python3
"""The isolation experiment of `vfpga bench` alone: writes isolation.md, isolation.json and isolation.png.

    python scripts/exp_isolation.py [--quick] [--out DIR]
"""

from vfpga.runtime.experiments.report import experiment_main

if __name__ == "__main__":
    raise SystemExit(experiment_main("isolation"))
