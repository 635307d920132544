#!/usr/bin/env python3
"""Many boards, one service: scaling, placement and failover of a cluster of
timing-only boards (Ray actors on a local Ray started here, on 127.0.0.1).

* **Scaling**: one tenant (ResNet-50 by default) with one 16-core replica on
  each of N boards, N = 1, 2, 4, 8, 16; a closed loop keeps 32 requests
  outstanding per replica through the controller (least outstanding first,
  batched calls), so no board ever waits for work. Per board, its modeled
  rate: the requests it served over its modeled clock's advance (a
  timing-only board's clock moves only while it works). Per run, the CPU
  time of this process (the controller, its routing, Ray's client side and
  the load generator) less its idle background (health checks, the GCS
  watch: measured per second before the run) gives the routing CPU per
  request, and so the requests per second one core of controller can route.
  Modeled aggregate throughput = min(sum of the boards' modeled rates, that
  controller capacity). Scaling efficiency = throughput(N) / (N x
  throughput(1)). How many requests each board got is printed too: it
  follows the boards' host speed (the simulation's), not their modeled one.
* **Placement** against the number of tenants: T tenants fill the boards
  (16 boards: 256 // T cores each); per deploy, the controller's placement
  decision and the whole deploy (decision, object-store shipping, the
  board's dynamic stage and segment); then the placement function alone on
  up to 1024 synthetic boards.
* **Failover**: tenants on the boards, every one streaming; a board with
  tenants is killed (ray.kill, Ray restarts it); per tenant that had its
  only replica there, the time from the kill to its first answer from
  another board (host time), p50 and p99 over all kills; every request is
  counted (answered once, with a result or an error) and the killed board
  must rejoin before the next kill.

    python scripts/bench_cluster.py                      # resnet50, N up to 16, 20 kills (a few minutes)
    python scripts/bench_cluster.py --model squeezenet --boards 1,2,4 --kills 5 --per-board 60

Device figures are modeled (the cycle model behind the emulated
dispatcher); controller and failover figures are host-measured on this
machine, where the boards' simulation shares the same two cores. Nothing
here is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time

import numpy as np

from vfpga.runtime.cluster import BoardView, Cluster, NotComputed, place
from vfpga.runtime.compiler import cache as compile_cache
from vfpga.runtime.models import zoo


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def compiled_zoo(name: str):
    model = zoo.load(name)
    return compile_cache.compile_with_cache(model, "u200", zoo.random_inputs(model, 2, seed=1),
                                            progress=False).compiled


def closed_loop(tenants: list, inputs: dict, total: int | None, depth: int, on_answer=None, stop=None,
                futures=None) -> list:
    """Submits ``total`` requests (or until ``stop`` is set) round-robin over
    ``tenants``, ``depth`` outstanding at a time; returns the futures."""
    slots = threading.Semaphore(depth)
    futures = [] if futures is None else futures
    i = 0
    while (total is None or i < total) and not (stop is not None and stop.is_set()):
        t = tenants[i % len(tenants)]
        i += 1
        if not slots.acquire(timeout=0.1):
            i -= 1
            continue
        f = t.submit_quantized(inputs[t.name])
        f.add_done_callback(lambda f: slots.release())
        if on_answer is not None:
            f.add_done_callback(lambda f, name=t.name: on_answer(name, f))
        futures.append(f)
    return futures


def board_clocks(cl: Cluster) -> dict[int, float]:
    return {b.index: b.clock_s for b in cl.boards() if b.up}


def scaling(cl: Cluster, compiled, counts, per_board: int, depth: int, idle_s: float = 3.0) -> list[dict]:
    x = np.zeros(compiled.input.shape, np.int8)
    rows = []
    for n in counts:
        t = cl.deploy(compiled, cores=16, replicas=n, name=f"scale{n}")
        boards = sorted(p["board"] for p in t.placement)
        for f in closed_loop([t], {t.name: x}, 2 * n, 2 * n):  # warm-up: frame timings cached on each board
            f.result()
        cpu0 = time.process_time()
        time.sleep(idle_s)  # the controller's own background (health checks, the GCS watch), per second
        idle_rate = (time.process_time() - cpu0) / idle_s
        before, served0 = board_clocks(cl), {b.index: b.requests for b in cl.boards()}
        calls0 = cl.controller.calls
        total = per_board * n
        wall0, cpu0 = time.perf_counter(), time.process_time()
        answers = [f.result() for f in closed_loop([t], {t.name: x}, total, depth * n)]
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        after, served = board_clocks(cl), {b.index: b.requests - served0[b.index] for b in cl.boards()}
        cl.remove(t)
        assert all(isinstance(a[0], NotComputed) for a in answers) and sum(served.values()) == total
        device = {i: after[i] - before[i] for i in boards}
        per_request = max(0.0, cpu - idle_rate * wall) / total  # routing CPU per request, background left out
        capacity = (1 - idle_rate) / per_request  # requests/s one core of controller can route
        device_rate = sum(served[i] / device[i] for i in boards)  # each board busy at its modeled rate
        thr = min(device_rate, capacity)
        rows.append({"boards": n, "requests": total, "per_board": [served[i] for i in boards],
                     "device_s": {str(i): device[i] for i in boards}, "device_rps": device_rate,
                     "makespan_rps": total / max(device.values()), "controller_cpu_s": cpu,
                     "controller_idle_cpu_per_s": idle_rate, "controller_us_per_request": per_request * 1e6,
                     "controller_capacity_rps": capacity, "requests_per_call": total / max(1, cl.controller.calls - calls0),
                     "throughput_rps": thr, "host_wall_s": wall, "latency_ms": answers[-1][1].modeled_seconds * 1e3})
        r = rows[-1]
        print(f"  {n:2d} boards: {total:5d} requests, modeled {thr:7.1f} req/s (boards {device_rate:.1f}, controller "
              f"capacity {capacity:.0f} at {r['controller_us_per_request']:.0f} us CPU/request, "
              f"{r['requests_per_call']:.1f} requests/call, background {idle_rate * 100:.1f}% CPU), "
              f"per board {min(r['per_board'])}..{max(r['per_board'])}, host {wall:.1f} s", flush=True)
    base = rows[0]["throughput_rps"] / rows[0]["boards"]
    for r in rows:
        r["efficiency"] = r["throughput_rps"] / (r["boards"] * base)
    return rows


def placement(cl: Cluster, compiled, counts) -> list[dict]:
    rows = []
    room = sum(b.cores["cnn"] for b in cl.boards())
    for n in counts:
        cores = room // n
        if cores < 1:
            print(f"  {n} tenants: more than the {room} cores of the cluster, skipped")
            continue
        decisions, deploys = [], []
        for i in range(n):
            k = len(cl.controller.placement_seconds)
            t0 = time.perf_counter()
            cl.deploy(compiled, cores=cores, name=f"p{i}")
            deploys.append(time.perf_counter() - t0)
            decisions += list(cl.controller.placement_seconds)[k:]
        used = sum(b.cores["cnn"] - b.free["cnn"] for b in cl.boards())
        for name in list(cl.tenants):
            cl.remove(name)
        rows.append({"tenants": n, "cores_each": cores, "cores_used": used,
                     "decision_us": {"mean": statistics.fmean(decisions) * 1e6, "p99": pct(decisions, 0.99) * 1e6,
                                     "max": max(decisions) * 1e6},
                     "deploy_ms": {"mean": statistics.fmean(deploys) * 1e3, "p50": pct(deploys, 0.5) * 1e3,
                                   "p99": pct(deploys, 0.99) * 1e3}, "total_s": sum(deploys)})
        r = rows[-1]
        print(f"  {n:4d} tenants x {cores:2d} cores: decision mean {r['decision_us']['mean']:.0f} us (p99 "
              f"{r['decision_us']['p99']:.0f}), deploy p50 {r['deploy_ms']['p50']:.1f} ms p99 {r['deploy_ms']['p99']:.1f} "
              f"ms, all {r['total_s']:.1f} s", flush=True)
    return rows


def placement_alone(sizes) -> list[dict]:
    """The placement function on synthetic boards: 16 one-core tenants per board, one after another."""
    rows = []
    for n_boards in sizes:
        views = [BoardView(i, "u200", True, {"cnn": 16}, {"cnn": 16}, 16) for i in range(n_boards)]
        times = []
        for _ in range(16 * n_boards):
            t0 = time.perf_counter()
            (i,) = place(views, "u200", "cnn", 1, 1)
            times.append(time.perf_counter() - t0)
            v = views[i]
            views[i] = BoardView(i, "u200", True, v.total, {"cnn": v.free["cnn"] - 1}, v.free_contexts - 1)
        rows.append({"boards": n_boards, "tenants": 16 * n_boards, "mean_us": statistics.fmean(times) * 1e6,
                     "p99_us": pct(times, 0.99) * 1e6})
        print(f"  placement alone, {n_boards:4d} boards, {16 * n_boards:5d} tenants: mean "
              f"{rows[-1]['mean_us']:.0f} us, p99 {rows[-1]['p99_us']:.0f} us", flush=True)
    return rows


def failover(cl: Cluster, compiled, kills: int, n_tenants: int, cores: int, seed: int = 0) -> dict:
    import ray

    rng = random.Random(seed)
    x = np.zeros(compiled.input.shape, np.int8)
    tenants = [cl.deploy(compiled, cores=cores, name=f"f{i}") for i in range(n_tenants)]
    inputs = {t.name: x for t in tenants}
    times, detect, placed, errors, answered, submitted, rejoin = [], [], [], [], 0, 0, []
    for k in range(kills):
        holding = sorted({p["board"] for t in tenants for p in t.placement})
        victim = rng.choice(holding)
        alone = [t.name for t in tenants if [p["board"] for p in t.placement] == [victim]]
        first: dict[str, float] = {}
        killed = {}
        lock = threading.Lock()

        def on_answer(name, f, victim=victim, first=first, killed=killed, lock=lock):
            if f.exception() is None and "t" in killed and name not in first:
                outs, _ = f.result()
                if outs.board != victim:
                    with lock:
                        first.setdefault(name, time.monotonic())

        stop = threading.Event()
        futures: list = []
        th = threading.Thread(target=closed_loop, args=(tenants, inputs, None, 2 * len(tenants), on_answer, stop,
                                                        futures), daemon=True)
        th.start()
        time.sleep(0.3)
        killed["t"] = time.monotonic()
        ray.kill(cl.board_handle(victim), no_restart=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(n in first for n in alone):
            time.sleep(0.005)
        stop.set()
        th.join()
        for f in futures:
            try:
                f.result(timeout=120)
            except Exception as e:  # noqa: BLE001 - counted: every request gets one answer
                errors.append(repr(e))
        answered += sum(f.done() for f in futures)
        submitted += len(futures)
        for n in alone:
            times.append(first[n] - killed["t"] if n in first else float("inf"))
        rec = [f for f in cl.failovers if f.board == victim][-1]
        detect.append(rec.detected - killed["t"])
        placed += [rec.tenants[n] - killed["t"] if isinstance(rec.tenants.get(n), float) else float("inf")
                   for n in alone]
        t_up = time.monotonic()
        while not cl.boards()[victim].up and time.monotonic() < t_up + 120:
            time.sleep(0.05)
        rejoin.append(time.monotonic() - killed["t"])
        moved = ", ".join(f"{(first[n] - killed['t']) * 1e3:.0f}" if n in first else "never" for n in alone)
        print(f"  kill {k + 1:2d}: board {victim:2d}, {len(alone)} tenant(s) moved: detected after "
              f"{detect[-1] * 1e3:.0f} ms, re-placed after {max(placed[-len(alone):]) * 1e3:.0f} ms, first answers "
              f"after {moved} ms; board back in {rejoin[-1]:.1f} s", flush=True)
    for t in tenants:
        cl.remove(t)
    return {"kills": kills, "tenants": n_tenants, "cores_each": cores, "samples": len(times),
            "serving_again_ms": {"p50": pct(placed, 0.5) * 1e3, "p99": pct(placed, 0.99) * 1e3,
                                 "max": max(placed) * 1e3},
            "first_answer_ms": {"p50": pct(times, 0.5) * 1e3, "p99": pct(times, 0.99) * 1e3,
                                "max": max(times) * 1e3},
            "detected_ms": {"p50": pct(detect, 0.5) * 1e3, "p99": pct(detect, 0.99) * 1e3},
            "rejoin_s": {"p50": pct(rejoin, 0.5), "max": max(rejoin)}, "requests": submitted,
            "answered_once": answered, "errors": len(errors), "duplicates": cl.controller.duplicates}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50", help=f"zoo model ({', '.join(zoo.NAMES)})")
    ap.add_argument("--boards", default="1,2,4,8,16", help="board counts of the scaling run")
    ap.add_argument("--per-board", type=int, default=120, help="requests per board in the scaling run")
    ap.add_argument("--depth", type=int, default=32, help="requests outstanding per replica")
    ap.add_argument("--tenants", default="16,64,128,256", help="tenant counts of the placement run")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--failover-tenants", type=int, default=8)
    ap.add_argument("--failover-model", default=None, help="zoo model of the failover run (default: --model)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    counts = [int(n) for n in args.boards.split(",")]
    n_boards = max(counts + [4])
    print(f"compiling {args.model} for u200 (compile cache)", flush=True)
    compiled = compiled_zoo(args.model)
    t0 = time.perf_counter()
    cl = Cluster({"u200": n_boards}, mode="timing", object_store_mb=1024, log_to_driver=False)
    print(f"{n_boards} timing-only u200 boards up in {time.perf_counter() - t0:.1f} s (Ray started here)", flush=True)
    report = {"model": args.model, "boards": n_boards}
    try:
        print(f"scaling: one {args.model} replica of 16 cores per board, {args.depth} requests outstanding each")
        report["scaling"] = scaling(cl, compiled, counts, args.per_board, args.depth)
        if args.tenants:
            print("placement:")
            report["placement"] = placement(cl, compiled_zoo("squeezenet"), [int(n) for n in args.tenants.split(",")])
            report["placement_alone"] = placement_alone([16, 64, 256, 1024])
        if args.kills:
            fmodel = args.failover_model or args.model
            print(f"failover: {args.failover_tenants} {fmodel} tenants of 4 cores, streaming; {args.kills} kills")
            report["failover"] = failover(cl, compiled if fmodel == args.model else compiled_zoo(fmodel), args.kills,
                                          args.failover_tenants, 4)
            report["failover"]["model"] = fmodel
    finally:
        cl.close()
    print("\nboards  modeled req/s  efficiency  controller: us CPU/request  capacity req/s")
    for r in report["scaling"]:
        print(f"{r['boards']:6d}  {r['throughput_rps']:13.1f}  {r['efficiency'] * 100:9.1f}%  "
              f"{r['controller_us_per_request']:25.0f}  {r['controller_capacity_rps']:14.0f}")
    f = report.get("failover")
    if f:
        print(f"failover ({f['model']}), kill to re-placed and routed: p50 {f['serving_again_ms']['p50']:.0f} ms, "
              f"p99 {f['serving_again_ms']['p99']:.0f} ms; to the first answer from the new board: p50 "
              f"{f['first_answer_ms']['p50']:.0f} ms, p99 {f['first_answer_ms']['p99']:.0f} ms ({f['samples']} tenant "
              f"moves); {f['requests']} requests, {f['answered_once']} answered once, {f['errors']} errors, "
              f"{f['duplicates']} answered twice")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
