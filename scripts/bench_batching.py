#!/usr/bin/env python3
"""Dynamic batching of RNN tenants, modeled: the hidden-1024 LSTM and GRU
tenants on 2 x 4 RNN cores of u200 at batch 1, 2, 4 and 8, against the big
RNN core (u200_bigcore) serving both time-multiplexed with the same batches.

Each batch size is the model compiled at that batch with its batch-1
program's quantization scales (what ``deploy(..., max_batch=8)`` runs), and
timed by the simulator (real dispatcher, frame cycle estimates, shared DDR
banks). GOP/s count 2 operations per MAC of every request of a batch; p99 is
of the closed-loop turnaround of a batch. The table is what ``vfpga bench``
writes to report.json under ``batching``.

    python scripts/bench_batching.py [--batches 1,2,4,8] [--requests 6] [--json OUT.json] [--into REPORT.json]

``--into`` replaces the ``batching`` rows (and the headline's
``rnn_batching_vs_bigcore``) of an existing report.json, e.g.
scripts/results/report.json, then ``python scripts/readme_figures.py``
renders the README's table from it.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> int:
    from vfpga.runtime.experiments import scenarios as E
    from vfpga.runtime.experiments import tables as T

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--requests", type=int, default=6, help="horizon of each closed-loop run, in longest requests")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--into", default=None, help="put the rows into this report.json")
    a = p.parse_args(argv)
    batches = tuple(int(b) for b in a.batches.split(","))
    t0 = time.perf_counter()
    names = sorted({m for _, m, _ in E.BATCH_TENANTS})
    models = E.load_rnn_models(names)
    rows = E.batching(E.batched_rnn_models(models, names, batches), horizon_requests=a.requests)["rows"]
    print(T.batching(rows))
    print(f"\nmodeled (simulator); {time.perf_counter() - t0:.0f} s on this machine")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    if a.into:
        with open(a.into) as f:
            report = json.load(f)
        report["batching"] = rows
        report["headline"]["rnn_batching_vs_bigcore"] = {str(r["batch"]): r["vs_bigcore"] for r in rows
                                                         if r["tenant"] == "all"}
        with open(a.into, "w") as f:
            json.dump(report, f, indent=1, default=float)
        print("batching rows written into", a.into)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
