#!/usr/bin/env python3
"""The RNN experiment of `vfpga bench` alone: writes rnn.md, rnn.json and rnn.png.

    python scripts/exp_rnn.py [--quick] [--out DIR]
"""

from vfpga.runtime.experiments.report import experiment_main

if __name__ == "__main__":
    raise SystemExit(experiment_main("rnn"))
