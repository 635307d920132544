#!/usr/bin/env python3
"""Dynamic batching of RNN tenants, modeled: the hidden-1024 LSTM and GRU
tenants on 2 x 4 RNN cores of u200 at batch 1, 2, 4 and 8, against the big
RNN core (u200_bigcore) serving both time-multiplexed with the same batches.

Each batch size is the model compiled at that batch with its batch-1
program's quantization scales (what ``deploy(..., max_batch=8)`` runs), and
timed by the simulator (real dispatcher, frame cycle estimates, shared DDR
banks). GOP/s count 2 operations per MAC of every request of a batch; p99 is
of the closed-loop turnaround of a batch. The table is what ``vfpga bench``
writes to report.json under ``batching``, followed by the requests-in-flight
rows (tenant ``solo``): ResNet-50 alone on 16 u200 cores, closed loop with
1, 2 and 4 requests in flight, each on its own activation slot.

    python scripts/bench_batching.py [--batches 1,2,4,8] [--requests 6] [--json OUT.json] [--into REPORT.json]
        [--inflight 1,2,4] [--skip-rnn]
    python scripts/bench_batching.py --what-if

``--what-if`` asks what the RNN core's buffers bound: the dynamic stage's
estimate (frame cycle estimates, one tenant alone on 4 cores, no simulator)
of the hidden-1024 LSTM at batch 8 with u200 as configured (2 MB weight
buffers: the layer stays resident in 4 cores), with the earlier 1 MB weight
buffers (weights streamed every timestep, once per batch group, alone and
with a vector buffer large enough for a group of 8) and with accumulator
and state buffers large enough for a group of 8 -- hypothetical configs for
this estimate only, not hardware vfpga builds.

``--into`` replaces the ``batching`` rows (and the headline's
``rnn_batching_vs_bigcore``) of an existing report.json, e.g.
scripts/results/report.json, then ``python scripts/readme_figures.py``
renders the README's table from it.
"""

from __future__ import annotations

import argparse
import json
import time


def what_if() -> None:
    import copy

    import numpy as np

    from vfpga import overlay
    from vfpga.runtime.compiler import rnn
    from vfpga.runtime.experiments import metrics
    from vfpga.runtime.experiments import scenarios as E
    from vfpga.runtime.experiments import tables as T
    from vfpga.runtime.models import small

    cell, hidden, steps = E.RNN_MODELS["lstm1024"]
    model = small.random_rnn_model(cell, hidden, hidden, steps, seed=len("lstm1024"))
    rng = np.random.default_rng(1)
    calib = [{"X": rng.uniform(-1, 1, (steps, 1, hidden)).astype(np.float32)} for _ in range(2)]
    rows = []
    big = overlay.load(E.BIG)
    cases = [("u200_bigcore (as configured)", big, 1, {})] + [
        (f"u200 {label}", overlay.load(E.POOL), 4, change) for label, change in (
            ("(as configured)", {}), ("wbuf_bytes 1 MB", {"wbuf_bytes": 1 << 20}),
            ("wbuf_bytes 1 MB, vbuf_bytes 64 KB", {"wbuf_bytes": 1 << 20, "vbuf_bytes": 64 << 10}),
            ("acc_words 32768, state_words 8192", {"acc_words": 32768, "state_words": 8192}))]
    for label, cfg, k, change in cases:
        cfg = copy.deepcopy(cfg)
        cfg["rnn_core"].update(change)
        hz = float(cfg["clock_mhz"]) * 1e6
        one = rnn.compile_rnn(model, cfg, calibration=calib)
        b8 = rnn.compile_batched(one, 8).compiled[8]
        plan = rnn.plan_rnn(b8, k)
        t = b8.tilings[0][plan.variants[0]]
        s8 = plan.modeled_cycles / hz
        rows.append([label, k, t.bg, 0 if t.resident else -(-8 // t.bg), "yes" if t.resident else "no",
                     f"{rnn.plan_rnn(one, k).modeled_cycles / hz * 1e3:.2f}", f"{s8 * 1e3:.2f}",
                     f"{2 * metrics.model_macs(b8) / s8 / 1e9:.0f}"])
    print(T.md_table(["lstm1024, batch 8", "cores", "batch group", "weights from DDR per step", "weights resident",
                      "batch 1 ms", "batch 8 ms", "GOP/s (one tenant alone)"], rows))
    print("\nestimates of the dynamic stage (modeled, one tenant alone); hypothetical configs, not built hardware")


def main(argv=None) -> int:
    from vfpga.runtime.experiments import scenarios as E
    from vfpga.runtime.experiments import tables as T

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--requests", type=int, default=6, help="horizon of each closed-loop run, in longest requests")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--into", default=None, help="put the rows into this report.json")
    p.add_argument("--what-if", action="store_true", help="estimates with larger RNN core buffers (see above)")
    p.add_argument("--inflight", default="1,2,4",
                   help="requests in flight of ResNet-50 alone on 16 cores ('' to skip)")
    p.add_argument("--skip-rnn", action="store_true", help="only the in-flight rows (--into keeps the RNN rows)")
    a = p.parse_args(argv)
    if a.what_if:
        what_if()
        return 0
    batches = tuple(int(b) for b in a.batches.split(","))
    t0 = time.perf_counter()
    rows = []
    if not a.skip_rnn:
        names = sorted({m for _, m, _ in E.BATCH_TENANTS})
        models = E.load_rnn_models(names)
        rows = E.batching(E.batched_rnn_models(models, names, batches), horizon_requests=a.requests)["rows"]
        print(T.batching(rows))
    if a.inflight:
        levels = tuple(int(m) for m in a.inflight.split(","))
        solo = E.inflight(E.load_models(["resnet50"]), levels=levels)["rows"]
        print("\nRequests in flight and batched, ResNet-50 alone on 16 u200 cores (closed loop):\n")
        print(T.inflight(solo))
        rows += solo
    print(f"\nmodeled (simulator); {time.perf_counter() - t0:.0f} s on this machine")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    if a.into:
        with open(a.into) as f:
            report = json.load(f)
        kept = [r for r in report.get("batching", [])
                if (r["tenant"] == "solo" and not a.inflight) or (r["tenant"] != "solo" and a.skip_rnn)]
        report["batching"] = rows = [r for r in kept if r["tenant"] != "solo"] + rows + \
            [r for r in kept if r["tenant"] == "solo"]
        report["headline"]["rnn_batching_vs_bigcore"] = {str(r["batch"]): r["vs_bigcore"] for r in rows
                                                         if r["tenant"] == "all"}
        solo = [r for r in rows if r["tenant"] == "solo"]
        report["headline"]["cnn_inflight_vs_one"] = {str(r["inflight"]): r["vs_one"] for r in solo if r["batch"] == 1}
        report["headline"]["cnn_batch_vs_one"] = {str(r["batch"]): r["vs_one"] for r in solo if r["batch"] > 1}
        with open(a.into, "w") as f:
            json.dump(report, f, indent=1, default=float)
        print("batching rows written into", a.into)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
