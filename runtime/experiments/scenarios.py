"""The published experiments, on the timing model of the shared board.

Every figure here is **modeled**: requests run through the real level-1
dispatcher and dispatch programs in :mod:`vfpga.runtime.sim.simulator`, frames
take the cycle model's time (per-instruction cycles from the HLS loop
counts, unit overlap, DDR banks shared by the frames in flight on them,
dispatcher latencies). Nothing is tuned to the published numbers.

Three ways to run the same tenants (same models, same cycle model):

* ``vfpga``     spatial sharing: each tenant on its own cores of the
                16-core ``u200`` pool, requests of different tenants at once;
* ``bigcore``   baseline (a): the ``u200_bigcore`` overlay, one core with the
                MACs of the pool (64x64), tenants time-multiplexed (one request
                at a time, in arrival order);
* ``multicore`` baseline (b): the 16-core pool serving one request at a
                time with all 16 cores, tenants time-multiplexed.

Figures are the field's (:mod:`vfpga.runtime.experiments.metrics`): work
counted in MACs per request, GOP/s and MAC utilisation summed over tenants,
STP / ANTT / fairness from each tenant's throughput normalised to it alone on
the whole device of the same system, closed-loop turnaround percentiles.
Requests per second are per tenant only. Every baseline is compiled by the
same compiler as the pool and has the pool's memory system (the big core
reaches the same four DDR banks through four ports, ``ddr.core_ports``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from vfpga import overlay
from vfpga.runtime.compiler import cache as compile_cache
from vfpga.runtime.compiler import dynamic, rnn
from vfpga.runtime.experiments import metrics
from vfpga.runtime.models import small, zoo
from vfpga.runtime.sim.simulator import Simulator

POOL, BIG = "u200", "u200_bigcore"
PUBLISHED = {  # Zeng et al., FCCM 2020 / TRETS 2022, as DESIGN.md quotes them
    "cnn_vs_single_core": (1.07, 1.69),
    "cnn_vs_multi_core": (1.88, 3.12),
    "rnn_vs_static": 6.18,
    "recompile_ms": 1.0,
}


# ---------------------------------------------------------------------------- models
@dataclass
class Models:
    """Compiled models per (name, board), from the ONNX zoo with random weights."""

    compiled: dict

    def __getitem__(self, key):
        return self.compiled[key]


def load_models(names, boards=(POOL, BIG), progress=None) -> Models:
    """Quantizes (onnxruntime, 2 random calibration inputs: timing does not
    depend on the scales) and compiles each zoo model for each board,
    through the compile cache."""
    out = {}
    for name in names:
        model = zoo.load(name)
        calib = zoo.random_inputs(model, 2, seed=1)
        for board in boards:
            if progress:
                progress(f"compiling {name} for {board}")
            out[name, board] = compile_cache.compile_with_cache(model, board, calib, progress=False).compiled
    return Models(out)


# ---------------------------------------------------------------------------- helpers
def _hz(sim: Simulator) -> float:
    return float(sim.config["clock_mhz"]) * 1e6


def alone_latency(models: Models, name: str, board: str = POOL) -> int:
    """Cycles of one request of ``name`` alone on the whole device (every
    core of its kind of ``board``)."""
    c = models[name, board]
    sim = Simulator(board)
    sim.deploy(name, c, sim.pool(_kind(c)))
    return sim.run({name: [0]})[name][0].latency


def _kind(compiled) -> str:
    return "rnn" if isinstance(compiled, rnn.CompiledRnn) else "cnn"


def _partition(n_cores: int, shares: list[int]) -> list[list[int]]:
    out, c = [], 0
    for k in shares:
        out.append(list(range(c, c + k)))
        c += k
    return out


MODES = ("vfpga", "bigcore", "multicore")


def saturated(models: Models, tenants: list[tuple[str, str, int]], mode: str, horizon_requests: int) -> dict:
    """Closed loop: every tenant always has its next request ready.
    ``tenants``: (tenant name, model name, cores in vfpga mode). ``vfpga``
    runs them on their own cores of the pool; ``bigcore`` and ``multicore``
    time-multiplex the whole big core or the whole pool, one request at a
    time, tenants in turn. The run lasts ``horizon_requests`` times the
    longest request of any tenant alone on its cores; each tenant's rate is
    its steady state over that run. Returns the system's figures
    (:func:`metrics.system_figures`)."""
    board = BIG if mode == "bigcore" else POOL
    cfg = overlay.load(board)
    hz = float(cfg["clock_mhz"]) * 1e6
    kind = _kind(models[tenants[0][1], board])
    sim = Simulator(board)
    pool = sim.pool(kind)
    alone = {m: alone_latency(models, m, board) for _, m, _ in tenants}
    if mode == "vfpga":
        parts = _partition(len(pool), [k for _, _, k in tenants])
        solo = {t: _solo(models, m, len(cores), board) for (t, m, _), cores in zip(tenants, parts)}
        horizon = horizon_requests * max(solo.values())
        for (tname, model, _), cores in zip(tenants, parts):
            sim.deploy(tname, models[model, board], [pool[c] for c in cores])
        n = {t: horizon // solo[t] + 2 for t, _, _ in tenants}
        done = sim.run({t: [0] * n[t] for t, _, _ in tenants}, until=horizon)
        peak_in_use = metrics.peak_macs_per_cycle(cfg, kind) * sum(k for _, _, k in tenants)
    else:  # time-multiplexed: tenants in turn, one request on the whole device at a time
        horizon = horizon_requests * len(tenants) * max(alone.values())
        for tname, model, _ in tenants:
            sim.deploy(tname, models[model, board], [])
        per_turn = max(2, horizon_requests + 2)
        arrivals = {t: [j * len(tenants) + i for j in range(per_turn)] for i, (t, _, _) in enumerate(tenants)}
        done = sim.run(arrivals, serial=True, until=horizon)
        peak_in_use = metrics.peak_macs_per_cycle(cfg, kind) * len(pool)
    figures = []
    for tname, model, k in tenants:
        ends = [r.end for r in done[tname]]
        rate = metrics.closed_loop_rate(ends, hz, horizon)
        gmac = metrics.model_macs(models[model, board]) / 1e9
        turn = metrics.turnarounds_ms(ends, hz)
        figures.append(metrics.TenantFigures(
            tname, model, k if mode == "vfpga" else 0, gmac, rate, 2 * gmac * rate,
            float(np.percentile(turn, 50)) if len(turn) else math.nan,
            float(np.percentile(turn, 99)) if len(turn) else math.nan,
            rate * alone[model] / hz))
    return metrics.system_figures(figures, peak_in_use, metrics.peak_macs_per_cycle(cfg, kind) * len(pool), hz)


# ---------------------------------------------------------------------------- experiments
SPLITS = {  # share of the 16 cores per tenant, with the model each tenant runs
    "4x25%": [("vgg-a", "vgg", 4), ("res-a", "res", 4), ("vgg-b", "vgg", 4), ("res-b", "res", 4)],
    "50/25/25": [("vgg-a", "vgg", 8), ("res-a", "res", 4), ("res-b", "res", 4)],
    "75/25": [("vgg-a", "vgg", 12), ("res-a", "res", 4)],
    "100%": [("res-a", "res", 16)],
}


def split_comparison(models: Models, splits: dict, horizon_requests: int, progress=None, label: str = "") -> dict:
    """Fixed core splits: every system's figures (vfpga and both
    time-multiplexed baselines) and vfpga's ratios to the baselines in
    work-weighted throughput (GOP/s)."""
    rows = []
    for split, tenants in splits.items():
        if progress:
            progress(f"{label}{split}")
        result = {mode: saturated(models, tenants, mode, horizon_requests) for mode in MODES}
        rows.append({"split": split, "tenants": [{"tenant": t, "model": m, "cores": k} for t, m, k in tenants],
                     **result,
                     "vs_bigcore": result["vfpga"]["gops"] / result["bigcore"]["gops"],
                     "vs_multicore": result["vfpga"]["gops"] / result["multicore"]["gops"]})
    return {"rows": rows}


def public_cloud(models: Models, names: dict, horizon_requests: int = 4, progress=None) -> dict:
    """Fixed core splits of the 16 CNN cores (``names`` maps the roles
    "vgg"/"res" to zoo models), the 100% split included."""
    splits = {split: [(t, names[role], k) for t, role, k in spec] for split, spec in SPLITS.items()}
    return split_comparison(models, splits, horizon_requests, progress, "public cloud ")


def runs(models: Models, names, counts=(1, 4, 16), boards=(POOL, BIG)) -> dict:
    """Each model alone on k cores of each board: the dynamic stage's
    estimate, the simulator's modeled cycles, MAC utilisation of the cores used."""
    rows = []
    for name in names:
        for board in boards:
            c = models[name, board]
            cfg = overlay.load(board)
            kind = _kind(c)
            for k in counts:
                if k > len(Simulator(board).pool(kind)):
                    continue
                est = (rnn.plan_rnn(c, k) if kind == "rnn" else dynamic.plan(c, k)).modeled_cycles
                cycles = _solo(models, name, k, board)
                peak = metrics.peak_macs_per_cycle(cfg, kind) * k
                macs = metrics.model_macs(c)
                rows.append({"model": name, "board": board, "cores": k, "gmac": macs / 1e9,
                             "estimate_cycles": int(est), "modeled_cycles": int(cycles),
                             "clock_mhz": float(cfg["clock_mhz"]), "peak_macs_per_cycle": peak,
                             "mac_utilization": macs / (cycles * peak)})
    return {"rows": rows}


def _poisson(rate_per_cycle: float, horizon: int, rng) -> list[int]:
    if rate_per_cycle <= 0:
        return []
    times, t = [], 0.0
    while True:
        t += rng.exponential(1 / rate_per_cycle)
        if t >= horizon:
            return times
        times.append(int(t))


def isolation(models: Models, names: dict, levels=(0.0, 0.25, 0.5, 0.75, 1.0), horizon_requests: int = 12,
              seed: int = 0, progress=None) -> dict:
    """Tenant A (res, 8 cores) at a steady load while tenant B's (vgg, 8
    cores) load ramps from idle to saturation: A's latency under vfpga (every
    segment striped over the four banks, the default: A and B share their
    bandwidth), under vfpga with each segment in its own bank
    (``stripe_segments=False``: A's bank is A's alone), and under
    time-multiplexing of the whole pool (multicore). B's load level is its
    offered rate as a fraction of what it completes alone on its 8 cores."""
    a, b = names["res"], names["vgg"]
    lat_a = _solo(models, a, 8)
    lat_b = _solo(models, b, 8)
    horizon = horizon_requests * lat_a * 2
    rng = np.random.default_rng(seed)
    arr_a = _poisson(0.5 / lat_a, horizon, rng)
    rows = []
    for level in levels:
        if progress:
            progress(f"isolation: B at {level:.0%}")
        arr_b = _poisson(level / lat_b, horizon, np.random.default_rng(seed + 1)) if level < 1 else [0] * max(
            1, int(horizon / lat_b) + 1)
        row = {"b_load": level}
        for mode in ("vfpga", "vfpga_own_banks", "multicore"):
            sim = Simulator(POOL, stripe_segments=mode != "vfpga_own_banks")
            if mode != "multicore":
                sim.deploy("A", models[a, POOL], list(range(8)), bank=0)
                sim.deploy("B", models[b, POOL], list(range(8, 16)), bank=1)
                done = sim.run({"A": arr_a, "B": arr_b})
            else:
                sim.deploy("A", models[a, POOL], [], bank=0)
                sim.deploy("B", models[b, POOL], [], bank=1)
                done = sim.run({"A": arr_a, "B": arr_b}, serial=True, until=4 * horizon)
            la = np.array([r.latency for r in done["A"]], float) / _hz(sim) * 1e3
            row[mode] = {"p50_ms": float(np.percentile(la, 50)), "p99_ms": float(np.percentile(la, 99)),
                         "completed": int(len(la)), "offered": len(arr_a)}
        rows.append(row)
    return {"rows": rows, "a_model": a, "b_model": b}


def _solo(models: Models, name: str, k: int, board: str = POOL) -> int:
    """Cycles of one request of ``name`` alone on the first k cores of its kind."""
    c = models[name, board]
    sim = Simulator(board)
    sim.deploy(name, c, sim.pool(_kind(c))[:k])
    return sim.run({name: [0]})[name][0].latency


def realloc_cost(models: Models, model_names, counts=(1, 2, 4, 8, 16), repeats: int = 20) -> dict:
    """Dynamic stage time (host, measured: dynamic.plan + program bytes) per
    model and core count, and the modeled drain: the longest time a frame in
    flight can still run on a released core (its longest frame at that k)."""
    rows = []
    for name in model_names:
        compiled = models[name, POOL]
        table = dynamic.DispatchTable(compiled)
        sim = Simulator(POOL)
        hz = _hz(sim)
        for k in counts:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                p = dynamic.plan(table, k)
                times.append(time.perf_counter() - t0)
            longest = max(int(compiled.frames["cycles"][np.isin(compiled.frames["offset"], prog["frame_offset"][
                prog["op"] == dynamic.FRAME])].max()) for prog in p.programs)
            rows.append({"model": name, "k": k, "dynamic_stage_ms": float(np.median(times) * 1e3),
                         "program_bytes": int(sum(prog.nbytes for prog in p.programs)),
                         "drain_max_us": longest / hz * 1e6})
    return {"rows": rows}


# ---------------------------------------------------------------------------- serving
@dataclass
class ServingTenant:
    name: str
    model: str
    rate: float  # requests per modeled second
    slo_ms: float
    priority: int  # higher first


def _work(models: Models, t: ServingTenant) -> int:
    """One request's cycles on one core (the frame estimates of the compiled model)."""
    return int(dynamic.plan(models[t.model, POOL], 1).modeled_cycles)


def _allocate(weights: dict[str, float], n: int) -> dict[str, int]:
    """Cores per tenant proportional to weight, at least one each, summing to n."""
    names = sorted(weights)
    total = sum(weights.values()) or 1.0
    raw = {t: max(1.0, n * weights[t] / total) for t in names}
    k = {t: max(1, int(raw[t])) for t in names}
    while sum(k.values()) > n:
        k[max(names, key=lambda t: (k[t], t))] -= 1
    while sum(k.values()) < n:
        k[max(names, key=lambda t: (raw[t] - k[t], t))] += 1
    return k


def _apply(sim: Simulator, counts: dict[str, int]) -> None:
    """Keeps as many of each tenant's cores as it can, hands out the rest."""
    current = {n: list(t.cores) for n, t in sim.tenants.items()}
    if all(len(current[n]) == k for n, k in counts.items()):
        return
    target = {n: current[n][:counts[n]] for n in counts}
    taken = {c for cs in target.values() for c in cs}
    free = [c for c in range(sim.n_cores) if c not in taken]
    for n in sorted(counts):
        while len(target[n]) < counts[n]:
            target[n].append(free.pop(0))
    sim.set_cores(target)


POLICIES = ("fixed", "adaptive", "slo")


def run_policy(models: Models, tenants: list[ServingTenant], arrivals: dict, policy: str,
               epoch_ms: float = 2.0) -> dict[str, list]:
    """Serves ``arrivals`` under one policy. On the vfpga pool:
    fixed       cores proportional to each tenant's offered work, never changed;
    adaptive    every epoch, cores proportional to the work waiting (backlog);
    slo         every epoch, cores proportional to work waiting weighted by
                priority and by how close the oldest waiting request is to its SLO.
    The baselines ``bigcore`` and ``multicore`` serve everything time-multiplexed."""
    board = BIG if policy == "bigcore" else POOL
    sim = Simulator(board)
    hz = _hz(sim)
    if policy in ("bigcore", "multicore"):
        for t in tenants:
            sim.deploy(t.name, models[t.model, board], [])
        return sim.run(arrivals, serial=True)
    work = {t.name: _work(models, t) for t in tenants}
    by_name = {t.name: t for t in tenants}
    counts = _allocate({t.name: t.rate * work[t.name] for t in tenants}, sim.n_cores)
    for t, cores in zip(tenants, _partition(sim.n_cores, [counts[t.name] for t in tenants])):
        sim.deploy(t.name, models[t.model, POOL], cores)

    def on_epoch(s: Simulator) -> None:
        weights = {}
        for name, st in s.tenants.items():
            waiting = len(st.queue) + (st.current is not None)
            w = waiting * work[name]
            if policy == "slo" and waiting:
                oldest = st.current.arrival if st.current is not None else st.queue[0]
                age_ms = (s.now - oldest) / hz * 1e3
                urgency = 1.0 + 4.0 * min(age_ms / by_name[name].slo_ms, 2.0)
                w *= urgency * (1 + by_name[name].priority)
            weights[name] = w
        if sum(weights.values()) > 0:
            _apply(s, _allocate({n: max(w, 1e-9) for n, w in weights.items()}, s.n_cores))

    adaptive = policy in ("adaptive", "slo")
    return sim.run(arrivals, epoch=int(epoch_ms * 1e-3 * hz) if adaptive else None,
                   on_epoch=on_epoch if adaptive else None)


def serving(models: Models, tenants: list[ServingTenant], horizon_s: float, epoch_ms: float = 2.0,
            seed: int = 0, progress=None) -> dict:
    """Poisson arrivals over ``horizon_s``, the three policies of
    :func:`run_policy`: latency percentiles, STP, ANTT, SLO attainment."""
    hz = float(Simulator(POOL).config["clock_mhz"]) * 1e6
    horizon = int(horizon_s * hz)
    rng = np.random.default_rng(seed)
    arrivals = {t.name: _poisson(t.rate / hz, horizon, rng) for t in tenants}
    alone = {t.name: alone_latency(models, t.model) for t in tenants}
    alone_tput = {t.name: hz / alone[t.name] for t in tenants}
    results = {}
    for policy in POLICIES:
        if progress:
            progress(f"serving: {policy}")
        done = run_policy(models, tenants, arrivals, policy, epoch_ms)
        end = max((r.end for rs in done.values() for r in rs), default=1)
        per, ntt, stp, met = {}, [], 0.0, []
        for t in tenants:
            lat = np.array([r.latency for r in done[t.name]], float)
            ms = lat / hz * 1e3
            ntt.extend(lat / alone[t.name])
            met.extend(ms <= t.slo_ms)
            tput = len(lat) / (end / hz)
            stp += tput / alone_tput[t.name]
            per[t.name] = {"requests": int(len(lat)), "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
                           "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
                           "slo_ms": t.slo_ms, "slo_attainment": float((ms <= t.slo_ms).mean()) if len(ms) else None}
        results[policy] = {"tenants": per, "stp": stp, "antt": float(np.mean(ntt)) if ntt else math.nan,
                           "slo_attainment": float(np.mean(met)) if met else math.nan}
    return {"policies": results, "tenants": [t.__dict__ for t in tenants], "horizon_s": horizon_s,
            "alone_ms": {n: a / hz * 1e3 for n, a in alone.items()}}


def private_cloud(models: Models, names: dict, horizon_s: float, seed: int = 0, progress=None) -> dict:
    """A mixed workload whose hot tenant changes over time (each of three
    tenants in turn offers as many requests as the whole device completes for
    its model one at a time, while the others offer 30% of that: more than
    the time-multiplexed device can serve): load-adaptive re-allocation against a fixed equal
    split and both time-multiplexed baselines. Throughput = work served (GOP)
    over the time until the last request completes; requests per second per tenant."""
    hz = float(Simulator(POOL).config["clock_mhz"]) * 1e6
    horizon = int(horizon_s * hz)
    roles = [("A", names["res"]), ("B", names["vgg"]), ("C", names["res"])]
    alone = {m: alone_latency(models, m) for _, m in roles}
    rng = np.random.default_rng(seed)
    arrivals: dict[str, list[int]] = {n: [] for n, _ in roles}
    phases = len(roles)
    for p in range(phases):
        lo, hi = p * horizon // phases, (p + 1) * horizon // phases
        for i, (n, m) in enumerate(roles):
            share = 1.0 if i == p else 0.3
            arrivals[n] += [lo + a for a in _poisson(share / alone[m], hi - lo, rng)]
    tenants = [ServingTenant(n, m, len(arrivals[n]) / horizon_s, 1e9, 0) for n, m in roles]
    rows = []
    for policy in ("fixed", "adaptive", "bigcore", "multicore"):
        if progress:
            progress(f"private cloud: {policy}")
        if policy == "fixed":  # an equal split, as an operator without load information would set it
            equal = [ServingTenant(t.name, t.model, 1.0 / _work(models, t), t.slo_ms, 0) for t in tenants]
            done = run_policy(models, equal, arrivals, "fixed")
        else:
            done = run_policy(models, tenants, arrivals, policy)
        b_hz = _hz(Simulator(BIG)) if policy == "bigcore" else hz
        board = BIG if policy == "bigcore" else POOL
        end = max(r.end for rs in done.values() for r in rs) / b_hz
        lat = np.array([r.latency for rs in done.values() for r in rs], float) / b_hz * 1e3
        per = {n: len(done[n]) / end for n, _ in roles}  # requests per second, per tenant
        gops = sum(2 * metrics.model_macs(models[m, board]) / 1e9 * per[n] for n, m in roles)
        rows.append({"policy": policy, "requests": int(len(lat)), "gops": gops, "req_per_s": per,
                     "mean_ms": float(lat.mean()), "p99_ms": float(np.percentile(lat, 99))})
    return {"rows": rows, "horizon_s": horizon_s, "tenants": {n: m for n, m in roles}}


# ---------------------------------------------------------------------------- RNN
RNN_MODELS = {  # name -> (cell, hidden, steps): DeepBench-like sizes
    "lstm512": ("LSTM", 512, 25), "gru512": ("GRU", 512, 25),
    "lstm1024": ("LSTM", 1024, 25), "gru1024": ("GRU", 1024, 25),
}


def load_rnn_models(names, boards=(POOL, BIG), progress=None) -> Models:
    """Random-weight single-layer LSTM/GRU models (input size = hidden, batch
    1) compiled for each board's RNN cores."""
    out = {}
    for name in names:
        cell, hidden, steps = RNN_MODELS[name]
        model = small.random_rnn_model(cell, hidden, hidden, steps, seed=len(name))
        rng = np.random.default_rng(1)
        calib = [{"X": rng.uniform(-1, 1, (steps, 1, hidden)).astype(np.float32)} for _ in range(2)]
        for board in boards:
            if progress:
                progress(f"compiling {name} for {board}")
            out[name, board] = rnn.compile_rnn(model, board, calibration=calib)
    return Models(out)


RNN_SPLITS = {  # the 8 RNN cores of u200
    "4 x 2 cores": [("lstm-a", "lstm512", 2), ("gru-a", "gru512", 2), ("lstm-b", "lstm512", 2),
                    ("gru-b", "gru512", 2)],
    "2 x 4 cores": [("lstm-a", "lstm1024", 4), ("gru-a", "gru1024", 4)],
    "8 cores": [("lstm-a", "lstm1024", 8)],
}


def rnn_throughput(models: Models, horizon_requests: int = 4, progress=None) -> dict:
    """LSTM/GRU tenants: the RNN core pool shared spatially against the static
    big RNN core (u200_bigcore) and the whole pool per request, both
    time-multiplexed."""
    return split_comparison(models, RNN_SPLITS, horizon_requests, progress, "RNN ")


# ---------------------------------------------------------------------------- dynamic batching
BATCH_TENANTS = [("lstm-a", "lstm1024", 4), ("gru-a", "gru1024", 4)]  # 2 x 4 of the 8 RNN cores
BATCHES = (1, 2, 4, 8)


def batched_rnn_models(models: Models, names, batches=BATCHES, boards=(POOL, BIG)) -> dict[int, Models]:
    """Per batch size B, each model compiled with batch B and its batch-1
    program's scales (what a tenant deployed with max_batch runs; the frames
    group batch items per weight tile as far as the core's buffers allow)."""
    sizes = rnn.batch_sizes(max(batches))
    if set(batches) - set(sizes):
        raise ValueError(f"batches {sorted(batches)}: only {sizes} are compiled for max_batch {max(batches)}")
    out: dict[int, dict] = {b: {} for b in batches}
    for name in names:
        for board in boards:
            variants = rnn.compile_batched(models[name, board], max(batches)).compiled
            for b in batches:
                out[b][name, board] = variants[b]
    return {b: Models(d) for b, d in out.items()}


def _weight_reads(compiled, k: int) -> tuple[int, int]:
    """(batch group, times a timestep reads the first layer's weights from
    DDR) in its plan on k cores: once per group when they stream, 0 when
    they stay resident in the cores."""
    v = rnn.plan_rnn(compiled, k).variants[0]
    t = compiled.tilings[0][v]
    return t.bg, 0 if t.resident else -(-compiled.batch // t.bg)


def batching(per_batch: dict[int, Models], tenants=BATCH_TENANTS, horizon_requests: int = 4,
             progress=None) -> dict:
    """RNN tenants batched B at a time on their pool cores against the big
    RNN core time-multiplexed with the same batches. One simulated request
    is one batch of B requests: GOP/s count the batch's MACs (B times a
    request's); p99 is of the closed-loop turnaround of a batch, which is
    every request's turnaround when B clients submit together. One batch in
    flight per tenant (in-flight slots are not built), hence ``inflight`` 1."""
    rows = []
    for b, models in sorted(per_batch.items()):
        if progress:
            progress(f"batching, batch {b}")
        res = {mode: saturated(models, tenants, mode, horizon_requests) for mode in ("vfpga", "bigcore")}
        v, big = res["vfpga"], res["bigcore"]
        for i, (tname, model, k) in enumerate(tenants):
            tv, tb = v["tenants"][i], big["tenants"][i]
            bg, reads = _weight_reads(models[model, POOL], k)
            big_bg, big_reads = _weight_reads(models[model, BIG], 1)
            rows.append({"model": model, "tenant": tname, "cores": k, "batch": b, "inflight": 1,
                         "gops": tv["gops"], "p99_ms": tv["p99_ms"], "req_per_s": b * tv["req_per_s"],
                         "bigcore_gops": tb["gops"], "bigcore_p99_ms": tb["p99_ms"],
                         "vs_bigcore": tv["gops"] / tb["gops"], "batch_group": bg, "weight_reads": reads,
                         "bigcore_batch_group": big_bg, "bigcore_weight_reads": big_reads})
        mine = rows[-len(tenants):]
        rows.append({"model": "+".join(m for _, m, _ in tenants), "tenant": "all",
                     "cores": sum(k for _, _, k in tenants), "batch": b, "inflight": 1, "gops": v["gops"],
                     "p99_ms": max(r["p99_ms"] for r in mine), "req_per_s": sum(r["req_per_s"] for r in mine),
                     "bigcore_gops": big["gops"], "bigcore_p99_ms": max(r["bigcore_p99_ms"] for r in mine),
                     "vs_bigcore": v["gops"] / big["gops"]})
    return {"rows": rows}


# ---------------------------------------------------------------------------- requests in flight
INFLIGHT = (1, 2, 4)
CNN_BATCHES = (2, 4)


def _inflight_run(models: Models, model: str, board: str, cores: int, m: int, horizon_requests: int,
                  items: int = 1) -> dict:
    """One CNN tenant alone on the first ``cores`` cores of ``board``, closed
    loop with ``m`` requests in flight, over ``horizon_requests`` times its
    request alone: GOP/s, turnarounds (ms) and how busy its cores were. A
    request of a batched model (:mod:`vfpga.runtime.compiler.cnn_batch`) is
    ``items`` requests of the model."""
    cfg = overlay.load(board)
    hz = float(cfg["clock_mhz"]) * 1e6
    compiled = models[model, board]
    horizon = horizon_requests * _solo(models, model, cores, board)
    sim = Simulator(board)
    held = sim.pool(_kind(compiled))[:cores]
    sim.deploy("solo", compiled, held, max_inflight=m)
    done = sim.run({"solo": [0] * (m * (horizon_requests + 2))}, until=horizon)["solo"]
    rate = metrics.closed_loop_rate([r.end for r in done], hz, horizon)
    gops = 2 * items * metrics.model_macs(compiled) / 1e9 * rate
    return {"gops": gops, "rate": items * rate, "turn_ms": np.array([(r.end - r.start) / hz * 1e3 for r in done]),
            "mac_utilization": gops / 2 * 1e9 / (metrics.peak_macs_per_cycle(cfg) * cores * hz),
            # share of the cores' time with a frame in flight; frames' time over their time alone (DDR sharing)
            "cores_busy": sum(sim.timeline.core_busy_cycles[c] for c in held) / (cores * sim.now),
            "frame_stretch": sim.timeline.tenant_frame_cycles[0] / sim.timeline.tenant_solo_cycles[0]}


def inflight(models: Models, model: str = "resnet50", cores: int = 16, levels=INFLIGHT, horizon_requests: int = 16,
             progress=None, batches=CNN_BATCHES) -> dict:
    """One CNN tenant alone on ``cores`` pool cores, closed loop with up to
    ``inflight`` requests in flight (each on its own activation slot), and
    batched ``batches`` at a time (one batch in flight), against one at a
    time and against the big core given the same number in flight or the
    same batches. p99 is of a request's turnaround from its post to its
    result (one at a time: the closed-loop turnaround; batched: the batch's).
    ``cores_busy``: share of the cores' time with a frame in flight;
    ``frame_stretch``: frames' modeled time over their time alone (shared
    DDR banks)."""
    from vfpga.runtime.compiler import cnn_batch

    runs = [(1, m, models) for m in levels]
    if batches:  # every size of a max_batch compile, as a tenant deployed with it has them
        if set(batches) - set(rnn.batch_sizes(max(batches))):
            raise ValueError(f"batches {sorted(batches)}: only {rnn.batch_sizes(max(batches))} are compiled for "
                             f"max_batch {max(batches)}")
        sets = {brd: cnn_batch.compile_batched(models[model, brd], max(batches)) for brd in (POOL, BIG)}
        runs += [(b, 1, Models({(model, brd): sets[brd].variants[b] for brd in (POOL, BIG)})) for b in batches]
    rows = []
    for b, m, ms in runs:
        if progress:
            progress(f"batch {b}, in flight {m}, {model} on {cores} cores and on the big core")
        v = _inflight_run(ms, model, POOL, cores, m, horizon_requests, b)
        big = _inflight_run(ms, model, BIG, 1, m, horizon_requests, b)
        turn = v["turn_ms"]
        rows.append({"model": model, "tenant": "solo", "cores": cores, "batch": b, "inflight": m, "gops": v["gops"],
                     "p99_ms": float(np.percentile(turn, 99)) if len(turn) else math.nan,
                     "p50_ms": float(np.percentile(turn, 50)) if len(turn) else math.nan, "req_per_s": v["rate"],
                     "mac_utilization": v["mac_utilization"], "cores_busy": v["cores_busy"],
                     "frame_stretch": v["frame_stretch"], "bigcore_gops": big["gops"],
                     "bigcore_p99_ms": float(np.percentile(big["turn_ms"], 99)) if len(big["turn_ms"]) else math.nan,
                     "vs_bigcore": v["gops"] / big["gops"]})
    for r in rows:
        r["vs_one"] = r["gops"] / rows[0]["gops"]
    return {"rows": rows}
