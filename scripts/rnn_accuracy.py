#!/usr/bin/env python3
"""RNN accuracy: the RNN cores (C-simulated) against onnxruntime's float LSTM/GRU.

For LSTM and GRU (linear_before_reset 0; --lbr1 adds GRU with 1) with
random weights U(-1/sqrt(H), 1/sqrt(H)), input size = hidden, batch 1 and
inputs U(-1, 1), prints max |error| and cosine of Y (every timestep) and of
Y_h against onnxruntime on the same float model. Calibration uses the
measured input itself (one run). The hardware path: int8 per-row weights,
int8 x and h for the products, Q.15 state, table sigmoid/tanh.

    python scripts/rnn_accuracy.py [--hidden 256 512 1024] [--seq 25 50 100] [--cores 4] [--lbr1]
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--seq", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--cores", type=int, default=4, help="RNN cores the plan uses")
    p.add_argument("--board", default="u200")
    p.add_argument("--lbr1", action="store_true", help="also GRU with linear_before_reset=1")
    a = p.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    from vfpga.runtime.compiler import rnn as rc
    from vfpga.runtime.hw import rnn_golden as rg
    from vfpga.runtime.models import small

    sim = rc.RnnCoreSim(a.board)
    cells = [("LSTM", 0), ("GRU", 0)] + ([("GRU", 1)] if a.lbr1 else [])
    print(f"RNN cores ({a.board}, plan on {a.cores} cores, C-simulation) vs onnxruntime {ort.__version__} float")
    print(f"{'cell':<8} {'hidden':>6} {'seq':>4} {'Y max|err|':>11} {'Y cosine':>9} {'Y_h max|err|':>13} "
          f"{'Y_h cosine':>10} {'emu s':>6}")
    worst = 1.0
    for op, lbr in cells:
        for hidden in a.hidden:
            for seq in a.seq:
                m = small.random_rnn_model(op, hidden, hidden, seq, 1, lbr, seed=hidden * 1000 + seq)
                x = np.random.default_rng(seq).uniform(-1, 1, (seq, 1, hidden)).astype(np.float32)
                feeds = {"X": x}
                ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
                c = rc.compile_rnn(m, a.board, calibration=[feeds])
                t0 = time.perf_counter()
                got = sim.run(c, rc.plan_rnn(c, a.cores), feeds)
                dt = time.perf_counter() - t0
                y, yh = rg.compare(ref[0], got[0]), rg.compare(ref[1], got[1])
                worst = min(worst, y["cosine"], yh["cosine"])
                name = op if op == "LSTM" else f"GRU lbr{lbr}"
                print(f"{name:<8} {hidden:>6} {seq:>4} {y['max_abs']:>11.4g} {y['cosine']:>9.6f} "
                      f"{yh['max_abs']:>13.4g} {yh['cosine']:>10.6f} {dt:>6.2f}")
    print(f"lowest cosine {worst:.6f} (target >= 0.999)")
    return 0 if worst >= 0.999 else 1


if __name__ == "__main__":
    raise SystemExit(main())
