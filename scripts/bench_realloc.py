#!/usr/bin/env python3
"""Live re-allocation cost: dynamic stage + release + drain + acquire.

A tenant streams requests (one host thread submitting back to back) while
its cores are re-allocated again and again: changes of core count (the
dynamic stage runs, new dispatch programs are uploaded) and moves to other
cores of the same count (only masks change). For each kind the script
prints the host-side time of every step (median and max over the
re-allocations) and the drain measured on the dispatcher's clock, which is
the cycle model in emulation. Every request's result is checked against the
first one for the same input, so a lost or wrong request fails the run.

    python scripts/bench_realloc.py                       # small_cnn and resnet50 on u200
    python scripts/bench_realloc.py --models small_cnn --repeats 40
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

from vfpga.runtime import tenants
from vfpga.runtime.compiler import frontend
from vfpga.runtime.models import small, zoo


def _model(name: str):
    if name == "small_cnn":
        return small.small_cnn(0), small.calibration_inputs(16, 1), small.calibration_inputs(2, 5)
    m = zoo.load(name)
    return m, zoo.random_inputs(m, 4, seed=1), zoo.random_inputs(m, 2, seed=5)


def _stream(tenant, xs, stop: threading.Event, results: list, errors: list) -> None:
    i = 0
    while not stop.is_set():
        try:
            (y,), _ = tenant.run_quantized(xs[i % len(xs)])
            results.append((i % len(xs), y))
        except Exception as e:  # noqa: BLE001 - reported as a failure of the run
            errors.append(e)
            return
        i += 1


def bench(name: str, board: str, repeats: int) -> bool:
    model, calib, inputs = _model(name)
    t0 = time.perf_counter()
    ov = tenants.open(board, emulate=True)
    n = ov.n_cores
    tenant = ov.deploy(ov.compile(model, calibration=calib, progress=False), cores=n // 2, name=name)
    graph = tenant.graph
    print(f"{name} on the {ov.mode} {board}: {len(tenant.compiled.layers)} accelerator layers, "
          f"{len(tenant.compiled.frames)} frames in the package, deployed in {time.perf_counter() - t0:.1f} s")
    xs = [frontend.quantize_input(x, graph.tensors[graph.inputs[0]]) for x in inputs]
    want = [tenant.run_quantized(x)[0][0] for x in xs]

    stop, results, errors = threading.Event(), [], []
    th = threading.Thread(target=_stream, args=(tenant, xs, stop, results, errors), daemon=True)
    th.start()
    counts = [1, 2, 4, 8, n // 2, n]
    kinds: dict[str, list[tenants.Reallocation]] = {"count": [], "move": []}
    hz = ov.config["clock_mhz"] * 1e6
    try:
        for r in range(repeats):
            while len(results) < r + 1 and th.is_alive():  # requests keep flowing between re-allocations
                time.sleep(1e-3)
            if r % 2 == 0:  # a new core count: dynamic stage
                k = counts[(r // 2) % len(counts)]
                if k == len(tenant.cores):
                    k = counts[(r // 2 + 1) % len(counts)]
                kinds["count"].append(ov.reallocate({name: k}))
            else:  # the same count on other cores
                k = len(tenant.cores)
                start = (tenant.cores[0] + k) % n if k < n else 0
                target = sorted((start + i) % n for i in range(k))
                kinds["move"].append(ov.reallocate({name: target}))
    finally:
        stop.set()
        th.join(timeout=600)
    wrong = sum(not np.array_equal(y, want[i]) for i, y in results)
    ok = not errors and wrong == 0
    print(f"  {len(results)} requests streamed during {repeats} re-allocations: {wrong} wrong, "
          f"{len(errors)} failed {errors[:1]}")
    print(f"  {'kind':<6} {'n':>3} {'total':>17} {'dynamic stage':>17} {'release':>15} {'drain':>15} "
          f"{'acquire':>15} {'drain (model)':>16}")
    for kind, rs in kinds.items():
        if not rs:
            continue

        def fmt(values):
            return f"{statistics.median(values) * 1e3:6.2f} / {max(values) * 1e3:6.2f}"

        drain_us = [r.drain_cycles / hz * 1e6 for r in rs]
        print(f"  {kind:<6} {len(rs):>3} {fmt([r.total_s for r in rs]):>17} {fmt([r.dynamic_stage_s for r in rs]):>17}"
              f" {fmt([r.release_s for r in rs]):>15} {fmt([r.drain_s for r in rs]):>15}"
              f" {fmt([r.acquire_s for r in rs]):>15} {statistics.median(drain_us):7.1f} / {max(drain_us):5.1f} us")
    print("  (host ms, median / max; 'drain (model)' is the dispatcher clock from release to the released cores "
          f"going idle, {rs[0].source}; the published re-compilation is about 1 ms)")
    ov.close()
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="small_cnn,resnet50")
    p.add_argument("--board", default="u200")
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args()
    ok = True
    for name in a.models.split(","):
        ok &= bench(name.strip(), a.board, a.repeats)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
