"""`vfpga bench`: every experiment of :mod:`vfpga.runtime.experiments`, one report.

Each experiment writes ``<name>.md`` (its table), ``<name>.json`` (the
numbers) and ``<name>.png`` (a plot) into the output directory; ``report.md``
collects the tables and plots under the headline table, which sets our
modeled ratios next to the published ones. ``--quick`` runs small versions
(fewer requests, smaller models) for a smoke check.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from vfpga import overlay
from vfpga.runtime.compiler import cache as compile_cache
from vfpga.runtime.compiler.progress import Progress
from vfpga.runtime.experiments import scenarios as E
from vfpga.runtime.experiments import tables as T


@dataclass
class Config:
    names: dict  # role -> zoo model
    requests: int  # horizon of the saturated runs, in longest requests
    isolation_levels: tuple
    isolation_requests: int
    serving_s: float
    realloc_models: tuple
    runs_models: tuple  # models measured alone on 1, 4 and 16 cores


FULL = Config({"vgg": "vgg19", "res": "resnet50"}, 6, (0.0, 0.25, 0.5, 0.75, 1.0), 16, 1.0,
              ("resnet50", "vgg19"), ("resnet50", "vgg19"))
QUICK = Config({"vgg": "squeezenet", "res": "resnet50"}, 2, (0.0, 0.5, 1.0), 6, 0.3, ("resnet50",),
               ("resnet50",))


@dataclass
class Section:
    name: str
    title: str
    table: str
    data: dict
    png: str | None = None
    notes: list[str] = field(default_factory=list)


def _plot(path: str, draw) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.path.basename(path)


def _split_plot(path: str, d: dict, big: str, pool: str, title: str, log: bool = False) -> str | None:
    """Grouped bars: work-weighted throughput per split, vfpga and the two baselines."""

    def draw(ax):
        import numpy as np

        x = np.arange(len(d["rows"]))
        for i, (mode, label) in enumerate((("vfpga", "vfpga"), ("bigcore", f"static {big} (TDM)"),
                                            ("multicore", f"static {pool} (TDM)"))):
            ax.bar(x + (i - 1) * 0.27, [r[mode]["gops"] for r in d["rows"]], 0.27, label=label)
        ax.set_xticks(x, [r["split"] for r in d["rows"]])
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("throughput (GOP/s, modeled)")
        ax.set_title(title)
        ax.legend()

    return _plot(path, draw)


def runs_section(models, cfg: Config, out: str, progress) -> Section:
    if progress:
        progress("models alone")
    d = E.runs(models, cfg.runs_models)
    table = T.runs(d["rows"])
    return Section("runs", "Models alone: MAC utilisation and the dynamic stage's estimate", table, d)


def public_cloud_section(models, cfg: Config, out: str, progress) -> Section:
    d = E.public_cloud(models, cfg.names, cfg.requests, progress)
    table = T.splits(d["rows"], "split", "big core", "16 cores") + "\n\n" + T.tenants(d["rows"])
    png = _split_plot(os.path.join(out, "public_cloud.png"), d, "big core", "16 cores", "Public cloud: fixed core splits")
    return Section("public_cloud", "Public cloud: fixed splits", table, d, png)


def private_cloud_section(models, cfg: Config, out: str, progress) -> Section:
    d = E.private_cloud(models, cfg.names, cfg.serving_s, progress=progress)
    label = T.PRIVATE_LABELS
    table = T.private_cloud(d)

    def draw(ax):
        ax.bar([label[r["policy"]].replace(", ", "\n") for r in d["rows"]], [r["gops"] for r in d["rows"]])
        ax.set_ylabel("throughput (GOP/s, modeled)")
        ax.set_title("Private cloud: the hot tenant changes over time")

    return Section("private_cloud", "Private cloud: load-adaptive re-allocation on a shifting mix", table, d,
                   _plot(os.path.join(out, "private_cloud.png"), draw))


def isolation_section(models, cfg: Config, out: str, progress) -> Section:
    d = E.isolation(models, cfg.names, cfg.isolation_levels, cfg.isolation_requests, progress=progress)
    table = T.isolation(d)

    def draw(ax):
        lv = [r["b_load"] * 100 for r in d["rows"]]
        for mode, label in (("vfpga", "vfpga (8 + 8 cores, striped segments)"),
                            ("vfpga_own_banks", "vfpga (8 + 8 cores, own banks)"),
                            ("multicore", "time-division multiplexing")):
            ax.plot(lv, [r[mode]["p99_ms"] for r in d["rows"]], marker="o", label=f"{label}, p99")
            ax.plot(lv, [r[mode]["p50_ms"] for r in d["rows"]], marker=".", ls="--", label=f"{label}, p50")
        ax.set_xlabel("tenant B offered load (% of its capacity)")
        ax.set_ylabel(f"tenant A ({d['a_model']}) latency (ms, modeled)")
        ax.set_title("Isolation")
        ax.legend()

    return Section("isolation", f"Isolation: tenant A ({d['a_model']}) while B ({d['b_model']}) ramps", table, d,
                   _plot(os.path.join(out, "isolation.png"), draw))


def realloc_section(models, cfg: Config, out: str, progress) -> Section:
    if progress:
        progress("re-allocation cost")
    d = E.realloc_cost(models, cfg.realloc_models)
    table = T.realloc(d)

    def draw(ax):
        for m in cfg.realloc_models:
            rs = [r for r in d["rows"] if r["model"] == m]
            ax.plot([r["k"] for r in rs], [r["dynamic_stage_ms"] for r in rs], marker="o", label=m)
        ax.axhline(E.PUBLISHED["recompile_ms"], color="gray", ls=":", label="published (~1 ms)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("cores")
        ax.set_ylabel("dynamic stage (ms, host)")
        ax.set_title("Re-allocation: dynamic stage")
        ax.legend()

    return Section("realloc", "Re-allocation cost", table, d, _plot(os.path.join(out, "realloc.png"), draw))


def serving_section(models, cfg: Config, out: str, progress) -> Section:
    res, vgg = cfg.names["res"], cfg.names["vgg"]
    hz = overlay.load(E.POOL)["clock_mhz"] * 1e6
    alone_s = {m: E.alone_latency(models, m) / hz for m in (res, vgg)}  # one request on all 16 cores

    def rate(model: str, share: float) -> float:
        """Requests per second that keep ``share`` of the whole device busy with ``model``."""
        return share / alone_s[model]

    # (name, model, share of the device offered, SLO in multiples of the alone latency, priority)
    tenants = [E.ServingTenant("vision", res, rate(res, 0.3), 6e3 * alone_s[res], 2),
               E.ServingTenant("batch", vgg, rate(vgg, 0.3), 20e3 * alone_s[vgg], 0),
               E.ServingTenant("search", res, rate(res, 0.2), 10e3 * alone_s[res], 1)]
    d = E.serving(models, tenants, cfg.serving_s, progress=progress)
    table = T.serving(d)

    def draw(ax):
        import numpy as np

        pols = list(d["policies"])
        names = [t.name for t in tenants]
        x = np.arange(len(names))
        for i, pol in enumerate(pols):
            ax.bar(x + (i - 1) * 0.27, [d["policies"][pol]["tenants"][n]["p99_ms"] or 0 for n in names], 0.27,
                   label=pol)
        ax.set_xticks(x, names)
        ax.set_ylabel("p99 latency (ms, modeled)")
        ax.set_title("Serving under Poisson arrivals")
        ax.legend()

    return Section("serving", "Serving under Poisson arrivals: three policies", table, d,
                   _plot(os.path.join(out, "serving.png"), draw))


def rnn_section(models, cfg: Config, out: str, progress) -> Section:
    rnn_models = E.load_rnn_models(list(E.RNN_MODELS), progress=progress)
    d = E.rnn_throughput(rnn_models, max(2, cfg.requests), progress)
    table = T.splits(d["rows"], "RNN cores", "big RNN core", "8 RNN cores") + "\n\n" + T.tenants(d["rows"])
    png = _split_plot(os.path.join(out, "rnn.png"), d, "big RNN core", "8 RNN cores", "RNN tenants (seq 25, batch 1)",
                      log=True)
    placed = sorted({(m, k) for tenants in E.RNN_SPLITS.values() for _, m, k in tenants})
    streamed = [f"{m} on {k}" for m, k in placed if E._weight_reads(rnn_models[m, E.POOL], k)[1]]
    wbuf = overlay.load(E.POOL)["rnn_core"]["wbuf_bytes"] >> 20
    notes = [f"Weight buffers of {wbuf} MB per RNN core: "
             + (f"{', '.join(streamed)} cores stream their weights from DDR every timestep (they do not fit)"
                if streamed else "every tenant's weights stay on chip")
             + "; the big core (the pool's total) keeps them on chip."]
    return Section("rnn", "RNN: LSTM/GRU tenants against the static RNN designs", table + "\n\n" + notes[0], d,
                   png, notes)


def batching_section(models, cfg: Config, out: str, progress) -> Section:
    names = sorted({m for _, m, _ in E.BATCH_TENANTS})
    rnn_models = E.load_rnn_models(names, progress=progress)
    d = E.batching(E.batched_rnn_models(rnn_models, names), horizon_requests=max(4, cfg.requests), progress=progress)
    cnn = models
    if ("resnet50", E.POOL) not in models.compiled or ("resnet50", E.BIG) not in models.compiled:
        cnn = E.load_models(["resnet50"], progress=progress)  # --only batching loads no CNN model
    d["rows"] += E.inflight(cnn, progress=progress)["rows"]
    table = T.batching(d["rows"]) + "\n\nRequests in flight and batched (ResNet-50 alone on 16 cores):\n\n" + T.inflight(d["rows"])
    total = [r for r in d["rows"] if r["tenant"] == "all"]

    def draw(ax):
        ax.plot([r["batch"] for r in total], [r["gops"] for r in total], marker="o", label="vfpga, 2 x 4 RNN cores")
        ax.plot([r["batch"] for r in total], [r["bigcore_gops"] for r in total], marker="o",
                label="big RNN core (TDM)")
        ax.set_xscale("log", base=2)
        ax.set_xticks([r["batch"] for r in total], [str(r["batch"]) for r in total])
        ax.set_xlabel("batch size")
        ax.set_ylabel("throughput (GOP/s, modeled)")
        ax.set_title("Dynamic batching: hidden-1024 LSTM + GRU tenants")
        ax.legend()

    pool, big = overlay.load(E.POOL)["rnn_core"], overlay.load(E.BIG)["rnn_core"]
    notes = [f"RNN weights: a hidden-1024 layer (8 MB LSTM, 6 MB GRU) on 4 cores of {pool['wbuf_bytes'] >> 20} MB "
             "weight buffers each; where they do not fit they stream from DDR every timestep, once per batch group "
             f"(the last column). The big RNN core has {big['wbuf_bytes'] >> 20} MB, the pool's total, and is "
             "time-multiplexed between the tenants with the same batches.",
             "Requests in flight: each on its own activation slot; the dispatcher walks them oldest first, so a "
             "younger request's frames take the cores an older one leaves idle at its barriers. They gain only as "
             "much as the cores are idle one request at a time (the cores busy column); the frame time column is "
             "the frames' time over their time alone (DDR sharing). Batches read each shared "
             "convolution's weights once for all items (frames chunked over input channels only where the items' "
             "accumulators fit side by side), which is what lowers the bytes per request. p99 is from a request's "
             "post to its result (batched: the batch's)."]
    return Section("batching", "Dynamic batching: RNN tenants against the big RNN core, same batches",
                   table + "\n\n" + "\n\n".join(notes), d, _plot(os.path.join(out, "batching.png"), draw), notes)


def headline_figures(sections: dict) -> dict:
    """The headline as numbers (report.json's ``headline``)."""
    out = {}
    if "public_cloud" in sections:
        rows = sections["public_cloud"].data["rows"]
        mixes = [r for r in rows if len(r["tenants"]) > 1]
        out["cnn_gops_vs_bigcore"] = [min(r["vs_bigcore"] for r in rows), max(r["vs_bigcore"] for r in rows)]
        out["cnn_gops_vs_multicore"] = [min(r["vs_multicore"] for r in rows), max(r["vs_multicore"] for r in rows)]
        out["cnn_mix_mac_utilization"] = [min(r["vfpga"]["mac_utilization"] for r in mixes),
                                          max(r["vfpga"]["mac_utilization"] for r in mixes)]
        out["cnn_splits"] = {r["split"]: {"vs_bigcore": r["vs_bigcore"], "vs_multicore": r["vs_multicore"],
                                          "mac_utilization": r["vfpga"]["mac_utilization"]} for r in rows}
    if "runs" in sections:
        ratios = [r["estimate_cycles"] / r["modeled_cycles"] for r in sections["runs"].data["rows"]]
        out["estimate_vs_model"] = [min(ratios), max(ratios)]
    if "realloc" in sections:
        ds = [r["dynamic_stage_ms"] for r in sections["realloc"].data["rows"]]
        out["dynamic_stage_ms"] = [min(ds), max(ds)]
    if "rnn" in sections:
        rows = sections["rnn"].data["rows"]
        out["rnn_gops_vs_bigcore"] = {r["split"]: r["vs_bigcore"] for r in rows}
    if "batching" in sections:
        out["rnn_batching_vs_bigcore"] = {r["batch"]: r["vs_bigcore"] for r in sections["batching"].data["rows"]
                                          if r["tenant"] == "all"}
        solo = [r for r in sections["batching"].data["rows"] if r["tenant"] == "solo"]
        out["cnn_inflight_vs_one"] = {r["inflight"]: r["vs_one"] for r in solo if r["batch"] == 1}
        out["cnn_batch_vs_one"] = {r["batch"]: r["vs_one"] for r in solo if r["batch"] > 1}
    out["published"] = dict(E.PUBLISHED)
    return out


def report_json(sections: dict, quick: bool, names: dict) -> dict:
    """Every figure of every table, machine-readable (the README's tables come from it)."""
    data = {k: v.data for k, v in sections.items()}
    out = {"quick": quick, "models": names, "modeled": True,
           "headline": headline_figures(sections)}
    if "runs" in data:
        out["runs"] = data["runs"]["rows"]
    if "public_cloud" in data:
        out["splits"] = data["public_cloud"]["rows"]
    if "rnn" in data:
        out["rnn_splits"] = data["rnn"]["rows"]
    if "batching" in data:
        out["batching"] = data["batching"]["rows"]
    for key in ("private_cloud", "isolation", "realloc", "serving"):
        if key in data:
            out[key] = data[key]
    return out


SECTIONS = {"runs": runs_section, "public_cloud": public_cloud_section, "private_cloud": private_cloud_section,
            "isolation": isolation_section, "realloc": realloc_section, "rnn": rnn_section,
            "batching": batching_section, "serving": serving_section}


RNN_SECTIONS = {"rnn", "batching"}


def run_bench(out: str, quick: bool = False, echo=print, only: list[str] | None = None) -> dict:
    """Runs the experiments (``only``: a subset of SECTIONS) and writes the report."""
    cfg = QUICK if quick else FULL
    unknown = set(only or ()) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown experiments {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    with Progress("vfpga bench", enabled=None) as bar:
        progress = bar.stage

        rnn_only = bool(only) and set(only) <= RNN_SECTIONS  # they compile their own models
        models = E.Models({}) if rnn_only else E.load_models(
            sorted(set(cfg.names.values()) | set(cfg.realloc_models) | set(cfg.runs_models)), progress=progress)
        sections = {}
        for name, make in SECTIONS.items():
            if only and name not in only:
                continue
            s = make(models, cfg, out, progress)
            sections[s.name] = s
            with open(os.path.join(out, f"{s.name}.md"), "w") as f:
                f.write(f"## {s.title}\n\n{s.table}\n")
            with open(os.path.join(out, f"{s.name}.json"), "w") as f:
                json.dump(s.data, f, indent=1, default=float)
    report = report_json(sections, quick, cfg.names)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    head = T.headline(report["headline"])
    if only:
        for sec in sections.values():
            echo(f"## {sec.title}\n\n{sec.table}\n")
        return report
    parts = [f"# vfpga bench{' (quick)' if quick else ''}\n",
             "All device figures are **modeled**: the real level-1 dispatcher and dispatch programs with the "
             "cycle model's frame times (see vfpga.runtime.experiments and vfpga.runtime.hw.timeline); host "
             "figures are measured on this machine. Models: " + ", ".join(f"{k} = {v}" for k, v in cfg.names.items())
             + " (ONNX zoo architectures, random weights). Every figure is also in report.json.\n", head, ""]
    for s in sections.values():
        parts += [f"## {s.title}\n", s.table, ""]
        if s.png:
            parts += [f"![{s.name}]({s.png})", ""]
    parts.append(f"_{time.perf_counter() - t0:.0f} s on this machine._")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(parts) + "\n")
    echo(head)
    echo(f"report: {os.path.join(out, 'report.md')}, {os.path.join(out, 'report.json')}")
    return report


def experiment_main(name: str, argv=None) -> int:
    """Command line of one experiment's script in scripts/."""
    import argparse

    p = argparse.ArgumentParser(description=f"the {name.replace('_', ' ')} experiment of vfpga bench (modeled)")
    p.add_argument("--quick", action="store_true", help="the small version")
    p.add_argument("--out", default="vfpga-bench", help="output directory (default ./vfpga-bench)")
    a = p.parse_args(argv)
    run_bench(a.out, quick=a.quick, only=[name])
    return 0


def quick_headline() -> str:
    """The headline table from the quick public-cloud, re-allocation and RNN runs alone."""
    models = E.load_models(sorted(set(QUICK.names.values())))
    out = os.path.join(compile_cache.default_dir(), "demo-bench")  # the plots land beside the compile cache
    os.makedirs(out, exist_ok=True)
    sections = {s.name: s for s in (public_cloud_section(models, QUICK, out, None),
                                    realloc_section(models, QUICK, out, None), rnn_section(models, QUICK, out, None))}
    return T.headline(headline_figures(sections))
