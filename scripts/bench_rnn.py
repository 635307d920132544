#!/usr/bin/env python3
"""RNN speed: modeled latency/throughput on 1, 2, 4 RNN cores next to the
static big-core baseline, and functional emulation time vs onnxruntime.

For LSTM and GRU (linear_before_reset 0), hidden 512 and 1024 (input =
hidden), sequence 25 and 50, batch 1, random weights:
  * modeled (runtime/rnn_cycle_model.py, emulation timing -- not a board
    measurement): one request's latency in ms on k cores of the board
    (default u200: 8 RNN cores of 16x32 int8 MACs, 1 MB WBUF each), the
    throughput in sequences/s and effective GOP/s (2 * MACs / latency) of
    one tenant, and the same model compiled for the static baseline
    (u200_bigcore: one RNN core of 64x64 MACs, 8 MB WBUF) on its one core;
    "res" marks plans whose weights stay resident in the cores' WBUF;
  * measured on this machine: functional emulation of one request (the C
    RNN core through cffi, k = 4 plan) against onnxruntime's float run of the
    same ONNX model (warm session), median of --runs, as a ratio.

    python scripts/bench_rnn.py [--board u200] [--baseline u200_bigcore] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--board", default="u200")
    p.add_argument("--baseline", default="u200_bigcore")
    p.add_argument("--cores", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--seq", type=int, nargs="+", default=[25, 50])
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args(argv)

    import numpy as np
    import onnxruntime as ort

    from vfpga import overlay
    from vfpga.runtime.compiler import rnn as rc
    from vfpga.runtime.hw import rnn_cycle_model as rcm
    from vfpga.runtime.models import small

    base_cfg = overlay.load(a.baseline)
    big = base_cfg.get("rnn_core") or {}
    if not big.get("count"):
        print(f"GAP: board config {a.baseline!r} has no RNN core; no static baseline column")
    else:
        print(f"baseline {a.baseline}: {big['count']} RNN core of {big['rows']}x{big['cols']} MACs, "
              f"WBUF {big['wbuf_bytes'] >> 20} MB")
    cfg = overlay.load(a.board)
    r = cfg["rnn_core"]
    print(f"{a.board}: {r['count']} RNN cores of {r['rows']}x{r['cols']} MACs, WBUF {r['wbuf_bytes'] >> 20} MB each; "
          f"{cfg['clock_mhz']} MHz, segment in one DDR bank of {cfg['ddr']['bank_gbytes_per_s']} GB/s")
    print("modeled latency ms / sequences per s / GOP/s (res = weights resident on chip)")
    sim = rc.RnnCoreSim(a.board)
    head = f"{'cell':<5} {'H':>5} {'T':>3} " + " ".join(f"{f'{k} core' + ('s' if k > 1 else ''):>22}" for k in a.cores)
    print(head + f" {'big core':>22} {'emu ms':>8} {'ort ms':>7} {'emu/ort':>7}")
    for op in ("LSTM", "GRU"):
        for hidden in a.hidden:
            for seq in a.seq:
                m = small.random_rnn_model(op, hidden, hidden, seq, seed=hidden + seq)
                feeds = {"X": np.random.default_rng(seq).uniform(-1, 1, (seq, 1, hidden)).astype(np.float32)}
                c = rc.compile_rnn(m, a.board, calibration=[feeds])
                g = 4 if op == "LSTM" else 3
                macs = seq * g * hidden * 2 * hidden
                cols = []
                for k in a.cores:
                    plan = rc.plan_rnn(c, k)
                    t = rcm.plan_timing(c, plan)
                    res = "res" if plan.resident else "   "
                    cols.append(f"{t.seconds * 1e3:7.3f} {1 / t.seconds:6.0f} {2 * macs / t.seconds / 1e9:5.1f}{res}")
                if big.get("count"):
                    cb = rc.compile_rnn(m, base_cfg, calibration=[feeds])
                    pb = rc.plan_rnn(cb, 1)
                    tb = rcm.plan_timing(cb, pb)
                    res = "res" if pb.resident else "   "
                    cols.append(f"{tb.seconds * 1e3:7.3f} {1 / tb.seconds:6.0f} {2 * macs / tb.seconds / 1e9:5.1f}{res}")
                else:
                    cols.append(f"{'n/a':>22}")
                plan = rc.plan_rnn(c, 4)
                sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                sess.run(None, feeds)
                emu, ref = [], []
                for _ in range(a.runs):
                    t0 = time.perf_counter()
                    sim.run(c, plan, feeds)
                    emu.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    sess.run(None, feeds)
                    ref.append(time.perf_counter() - t0)
                e, o = statistics.median(emu), statistics.median(ref)
                print(f"{op:<5} {hidden:>5} {seq:>3} " + " ".join(f"{x:>22}" for x in cols)
                      + f" {e * 1e3:8.2f} {o * 1e3:7.2f} {e / o:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
