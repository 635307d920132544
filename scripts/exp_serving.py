#!/usr/bin/env python3
"""The serving experiment of `vfpga bench` alone: writes serving.md, serving.json and serving.png.

    python scripts/exp_serving.py [--quick] [--out DIR]
"""

from vfpga.runtime.experiments.report import experiment_main

if __name__ == "__main__":
    raise SystemExit(experiment_main("serving"))
