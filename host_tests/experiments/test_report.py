"""The README's figures are the committed report.json's, rendered by the
same tables as `vfpga bench`'s report, and that report carries every key the
README documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import REPO_ROOT

from vfpga.runtime.experiments import tables

REPORT = os.path.join(REPO_ROOT, "scripts", "results", "report.json")


def test_the_readme_figures_are_the_committed_report():
    with open(REPORT) as f:
        block = tables.readme_block(json.load(f))
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    assert block in readme, "README.md is stale: run python scripts/readme_figures.py"
    r = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "readme_figures.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_committed_report_has_every_documented_key():
    with open(REPORT) as f:
        report = json.load(f)
    assert not report["quick"] and report["modeled"]
    assert {"runs", "splits", "rnn_splits", "headline"} <= set(report)
    for row in report["runs"]:
        assert {"model", "board", "cores", "gmac", "estimate_cycles", "modeled_cycles", "clock_mhz",
                "peak_macs_per_cycle", "mac_utilization"} <= set(row)
        assert abs(row["estimate_cycles"] - row["modeled_cycles"]) <= 0.05 * row["modeled_cycles"]
        # utilisation recomputed from the row's own figures
        assert abs(row["gmac"] * 1e9 / (row["modeled_cycles"] * row["peak_macs_per_cycle"])
                   - row["mac_utilization"]) < 1e-9
    assert {r["split"] for r in report["splits"]} == {"4x25%", "50/25/25", "75/25", "100%"}
    for row in report["splits"] + report["rnn_splits"]:
        for mode in ("vfpga", "bigcore", "multicore"):
            sys_ = row[mode]
            assert {"gops", "mac_utilization", "stp", "antt", "fairness", "tenants"} <= set(sys_)
            assert abs(sum(t["gops"] for t in sys_["tenants"]) - sys_["gops"]) < 1e-6 * sys_["gops"]
            assert all({"req_per_s", "p99_ms"} <= set(t) for t in sys_["tenants"])
        assert abs(row["vs_bigcore"] - row["vfpga"]["gops"] / row["bigcore"]["gops"]) < 1e-9


def test_replacing_the_block_needs_both_markers():
    import pytest

    with pytest.raises(ValueError, match="markers"):
        tables.replace_readme_block("no figures here", "x")
    text = f"a\n{tables.README_BEGIN}\nold\n{tables.README_END}\nb"
    assert tables.replace_readme_block(text, "NEW") == "a\nNEW\nb"


def test_the_big_core_baselines_have_the_pools_memory():
    """Every baseline gets the same memory system: the static big CNN and RNN
    cores hold at least the on-chip memory of the pool they are compared
    with (each buffer, summed over the pool's cores), and reach the same
    DDR banks."""
    from vfpga import overlay
    from vfpga.runtime.experiments import scenarios as E

    pool, big = overlay.load(E.POOL), overlay.load(E.BIG)
    for kind, keys in (("cnn_core", ("ibuf_bytes", "wbuf_bytes", "acc_words", "obuf_bytes", "param_entries")),
                       ("rnn_core", ("wbuf_bytes", "vbuf_bytes", "acc_words", "param_entries", "state_words"))):
        p, b = pool[kind], big[kind]
        for key in keys:
            assert b[key] * b["count"] >= p[key] * p["count"], (kind, key)
        # the activation tables: one copy per gate lane on both sides
        if kind == "rnn_core":
            assert b["act_words"] * b["lanes"] * b["count"] >= p["act_words"] * p["lanes"] * p["count"]
    assert big["ddr"]["banks"] == pool["ddr"]["banks"] == big["ddr"]["core_ports"]
