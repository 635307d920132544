#!/usr/bin/env python3
"""The public cloud experiment of `vfpga bench` alone: writes public_cloud.md, public_cloud.json and public_cloud.png.

    python scripts/exp_public_cloud.py [--quick] [--out DIR]
"""

from vfpga.runtime.experiments.report import experiment_main

if __name__ == "__main__":
    raise SystemExit(experiment_main("public_cloud"))
