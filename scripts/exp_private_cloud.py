#!/usr/bin/env python3
"""The private cloud experiment of `vfpga bench` alone: writes private_cloud.md, private_cloud.json and private_cloud.png.

    python scripts/exp_private_cloud.py [--quick] [--out DIR]
"""

from vfpga.runtime.experiments.report import experiment_main

if __name__ == "__main__":
    raise SystemExit(experiment_main("private_cloud"))
