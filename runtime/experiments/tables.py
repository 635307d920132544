"""The experiments' tables in markdown, from their data alone -- the data
``vfpga bench`` writes to report.json -- so the report and the README are
rendered by the same functions from the same figures."""

from __future__ import annotations

PRIVATE_LABELS = {"fixed": "vfpga, fixed equal split", "adaptive": "vfpga, load-adaptive",
                  "bigcore": "static big core (TDM)", "multicore": "static 16 cores (TDM)"}


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def runs(rows: list) -> str:
    """Models alone on k cores: work, the dynamic stage's estimate against the model, MAC utilisation."""
    cells = [[r["model"], r["board"], r["cores"], f"{r['gmac']:.2f}", r["estimate_cycles"], r["modeled_cycles"],
              f"{r['estimate_cycles'] / r['modeled_cycles']:.3f}",
              f"{r['modeled_cycles'] / r['clock_mhz'] / 1e3:.2f}", f"{r['mac_utilization']:.1%}"] for r in rows]
    return md_table(["model", "board", "cores", "GMAC", "estimate cycles", "modeled cycles", "estimate / model",
                     "ms", "MAC utilisation"], cells)


def splits(rows_in: list, first: str, big: str, pool: str) -> str:
    """The table of a fixed-split comparison (public cloud, RNN): per system
    GOP/s and MAC utilisation, STP / ANTT / fairness, and vfpga's ratios."""
    rows = []
    for r in rows_in:
        v, b, m = r["vfpga"], r["bigcore"], r["multicore"]
        rows.append([r["split"], ", ".join(f"{t['tenant']} ({t['model']}, {t['cores']})" for t in r["tenants"]),
                     f"{v['gops']:.0f} ({v['mac_utilization']:.0%})", f"{b['gops']:.0f} ({b['mac_utilization']:.0%})",
                     f"{m['gops']:.0f} ({m['mac_utilization']:.0%})",
                     f"{v['stp']:.2f} / {v['antt']:.2f} / {v['fairness']:.2f}",
                     f"{b['stp']:.2f} / {b['antt']:.2f} / {b['fairness']:.2f}",
                     f"{r['vs_bigcore']:.2f}x", f"{r['vs_multicore']:.2f}x"])
    return md_table([first, "tenants (model, cores)", "vfpga GOP/s (MAC util)", f"{big} TDM GOP/s",
                      f"{pool} TDM GOP/s", "vfpga STP / ANTT / fairness", f"{big} TDM STP / ANTT / fairness",
                      "vs big core", f"vs {pool}"], rows)


def tenants(rows_in: list) -> str:
    """Per tenant of every split: requests per second and p99 turnaround, per system."""
    rows = []
    for r in rows_in:
        for i, t in enumerate(r["vfpga"]["tenants"]):
            cells = [r["split"], f"{t['tenant']} ({t['model']})"]
            for mode in ("vfpga", "bigcore", "multicore"):
                x = r[mode]["tenants"][i]
                cells.append(f"{x['req_per_s']:.1f} / {x['p99_ms']:.2f}")
            rows.append(cells)
    return md_table(["split", "tenant", "vfpga req/s / p99 ms", "big core TDM", "pool TDM"], rows)


def batching(rows_in: list) -> str:
    """Dynamic batching: per batch size and tenant (and all tenants), vfpga
    against the big core time-multiplexed with the same batches."""
    rows = []
    for r in rows_in:
        if r["tenant"] == "solo":  # requests in flight: their own table
            continue
        reads = (f"{_reads(r['weight_reads'], r['batch_group'])} / "
                 f"{_reads(r['bigcore_weight_reads'], r['bigcore_batch_group'])}" if "weight_reads" in r else "")
        rows.append([r["batch"], f"{r['tenant']} ({r['model']})", r["cores"], r["inflight"], f"{r['gops']:.0f}",
                     f"{r['p99_ms']:.2f}", f"{r['bigcore_gops']:.0f}", f"{r['bigcore_p99_ms']:.2f}",
                     f"{r['vs_bigcore']:.2f}x", reads])
    return md_table(["batch", "tenant (model)", "cores", "in flight", "vfpga GOP/s", "vfpga p99 ms",
                     "big RNN core TDM GOP/s", "big core p99 ms", "vs big core",
                     "weights from DDR per step (batch group): pool / big core"], rows)


def inflight(rows_in: list) -> str:
    """Requests in flight and batched: one CNN tenant alone, against one at a time."""
    rows = [[r["batch"], r["inflight"], f"{r['model']}", r["cores"], f"{r['gops']:.0f}", f"{r['vs_one']:.2f}x",
             f"{r['mac_utilization']:.0%}", f"{r['cores_busy']:.0%}", f"{r['frame_stretch']:.2f}x",
             f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['vs_bigcore']:.2f}x"]
            for r in rows_in if r["tenant"] == "solo"]
    return md_table(["batch", "in flight", "model", "cores", "GOP/s", "vs one at a time", "MAC utilization", "cores busy",
                     "frame time vs alone", "p50 ms", "p99 ms", "vs big core (same in flight, same batch)"], rows)


def _reads(n: int, bg: int) -> str:
    return f"{n}x (bg {bg})" if n else f"resident (bg {bg})"


def private_cloud(d: dict) -> str:
    rows = [[PRIVATE_LABELS[r["policy"]], r["requests"], f"{r['gops']:.0f}",
             ", ".join(f"{n} {v:.1f}" for n, v in r["req_per_s"].items()), f"{r['mean_ms']:.2f}", f"{r['p99_ms']:.2f}"]
            for r in d["rows"]]
    return md_table(["policy", "requests", "GOP/s", "req/s per tenant", "mean ms", "p99 ms"], rows)


def isolation(d: dict) -> str:
    modes = [m for m in ("vfpga", "vfpga_own_banks", "multicore") if m in d["rows"][0]]
    label = {"vfpga": "vfpga", "vfpga_own_banks": "vfpga, own banks", "multicore": "TDM"}
    rows = [[f"{r['b_load']:.0%}"] + [f"{r[m][q]:.2f}" for m in modes for q in ("p50_ms", "p99_ms")]
            for r in d["rows"]]
    return md_table(["tenant B load"] + [f"A {q} ms ({label[m]})" for m in modes for q in ("p50", "p99")], rows)


def realloc(d: dict) -> str:
    rows = [[r["model"], r["k"], f"{r['dynamic_stage_ms']:.3f}", r["program_bytes"], f"{r['drain_max_us']:.1f}"]
            for r in d["rows"]]
    return md_table(["model", "cores", "dynamic stage ms (host)", "program bytes", "drain max us (modeled)"], rows)


def serving(d: dict) -> str:
    rows = []
    for policy, p in d["policies"].items():
        for name, t in p["tenants"].items():
            if not t["requests"]:
                rows.append([policy, name, 0, "-", "-", f"{t['slo_ms']:.2f}", "-"])
                continue
            rows.append([policy, name, t["requests"], f"{t['p50_ms']:.2f}", f"{t['p99_ms']:.2f}", f"{t['slo_ms']:.2f}",
                         f"{t['slo_attainment']:.0%}"])
        rows.append([policy, "**all**", "", "", "", "", f"{p['slo_attainment']:.0%} (STP {p['stp']:.2f}, "
                     f"ANTT {p['antt']:.2f})"])
    return md_table(["policy", "tenant", "requests", "p50 ms", "p99 ms", "SLO ms", "SLO met"], rows)


def headline(figures: dict) -> str:
    """The headline table (markdown) from :func:`headline_figures`."""
    pub = figures["published"]
    rows = []

    def rng(key, fmt="{:.2f}x"):
        lo, hi = figures[key]
        return (fmt + "-" + fmt).format(lo, hi)

    if "cnn_gops_vs_bigcore" in figures:
        rows += [["CNN throughput (GOP/s, work-weighted) vs static big core, every split", rng("cnn_gops_vs_bigcore"),
                  "{:.2f}-{:.2f}x (requests/s)".format(*pub["cnn_vs_single_core"])],
                 ["CNN throughput (GOP/s) vs static 16-core pool, every split", rng("cnn_gops_vs_multicore"),
                  "{:.2f}-{:.2f}x (requests/s)".format(*pub["cnn_vs_multi_core"])],
                 ["MAC utilisation of the pool under the mixed splits", rng("cnn_mix_mac_utilization", "{:.0%}"),
                  "-"]]
    if "estimate_vs_model" in figures:
        rows.append(["dynamic-stage estimate / modeled latency, models alone", rng("estimate_vs_model", "{:.3f}"),
                     "-"])
    if "dynamic_stage_ms" in figures:
        rows.append(["re-targeting (dynamic stage)", rng("dynamic_stage_ms", "{:.2f}") + " ms (host)",
                     f"about {pub['recompile_ms']:.0f} ms"])
    if "rnn_gops_vs_bigcore" in figures:
        r = figures["rnn_gops_vs_bigcore"]
        rows.append(["RNN throughput (GOP/s) vs static big RNN core",
                     ", ".join(f"{v:.2f}x ({k})" for k, v in r.items()), f"up to {pub['rnn_vs_static']}x"])
    return md_table(["", "vfpga (modeled)", "published (Zeng et al.)"], rows)


README_BEGIN = "<!-- figures from scripts/results/report.json: python scripts/readme_figures.py -->"
README_END = "<!-- end of figures -->"


def readme_block(report: dict) -> str:
    """The README's experiment figures, rendered from a report.json."""
    models = ", ".join(f"{k} = {v}" for k, v in report["models"].items())
    parts = [README_BEGIN, "",
             f"All device figures are modeled (`vfpga bench{' --quick' if report['quick'] else ''}`; models: "
             f"{models}, ONNX zoo architectures with random weights). GOP/s counts 2 operations per MAC of each "
             f"model's work; MAC utilisation is achieved MACs over the peak of the cores in use; STP and ANTT "
             f"normalise each tenant to it alone on the whole device of the same system; fairness is min/max of "
             f"the tenants' normalised progress; requests per second are per tenant only.", "",
             headline(report["headline"]), ""]
    if "runs" in report:
        parts += ["**Models alone** (one request; the estimate is the dynamic stage's, the model the simulator's):",
                  "", runs(report["runs"]), ""]
    if "splits" in report:
        parts += ["**Public cloud, fixed splits** (closed loop; GOP/s with MAC utilisation; "
                  "TDM = time-multiplexed, one request on the whole device at a time):", "",
                  splits(report["splits"], "split", "big core", "16 cores"), "", tenants(report["splits"]), ""]
    if "rnn_splits" in report:
        parts += ["**RNN tenants** (LSTM/GRU, sequence 25, batch 1):", "",
                  splits(report["rnn_splits"], "RNN cores", "big RNN core", "8 RNN cores"), ""]
    if "batching" in report:
        parts += ["**Dynamic batching of RNN tenants** (hidden 1024, sequence 25; one simulated request is a batch "
                  "of B requests: GOP/s count all B, p99 is the closed-loop turnaround of a batch; the big RNN core "
                  "serves both tenants time-multiplexed with the same batches):", "", batching(report["batching"]),
                  ""]
        if any(r["tenant"] == "solo" for r in report["batching"]):
            parts += ["**Requests in flight** (one CNN tenant alone, closed loop; each request on its own "
                      "activation slot; p50/p99 from a request's post to its result):", "",
                      inflight(report["batching"]), ""]
    if "private_cloud" in report:
        parts += ["**Private cloud** (the hot tenant changes over time):", "", private_cloud(report["private_cloud"]),
                  ""]
    if "isolation" in report:
        d = report["isolation"]
        parts += [f"**Isolation**: tenant A ({d['a_model']}) while B ({d['b_model']}) ramps:", "", isolation(d), ""]
    if "serving" in report:
        parts += ["**Serving** (Poisson arrivals, three policies):", "", serving(report["serving"]), ""]
    if "realloc" in report:
        parts += ["**Re-allocation cost**:", "", realloc(report["realloc"]), ""]
    parts.append(README_END)
    return "\n".join(parts)


def replace_readme_block(readme: str, block: str) -> str:
    """``readme`` with its figures block replaced by ``block``."""
    if README_BEGIN not in readme or README_END not in readme:
        raise ValueError("the README has no figures block (its begin and end markers)")
    head, rest = readme.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    return head + block + tail
