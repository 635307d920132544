"""The batching experiment: its rows carry the documented figures, batched
variants do the work of B requests per run, and the committed report has
the hidden-1024 rows the README shows."""

from __future__ import annotations

import json
import os

import pytest
from harness import REPO_ROOT

from vfpga.runtime.compiler import rnn
from vfpga.runtime.experiments import metrics
from vfpga.runtime.experiments import scenarios as E

KEYS = {"model", "cores", "batch", "inflight", "gops", "p99_ms", "vs_bigcore"}


def test_small_tenants_batched(monkeypatch):
    monkeypatch.setitem(E.RNN_MODELS, "tiny-lstm", ("LSTM", 64, 4))
    monkeypatch.setitem(E.RNN_MODELS, "tiny-gru", ("GRU", 64, 4))
    tenants = [("a", "tiny-lstm", 2), ("b", "tiny-gru", 2)]
    models = E.load_rnn_models(["tiny-lstm", "tiny-gru"])
    per_batch = E.batched_rnn_models(models, ["tiny-lstm", "tiny-gru"], (1, 2, 4))
    for b, ms in per_batch.items():
        for key, c in ms.compiled.items():
            assert c.batch == b and metrics.model_macs(c) == b * metrics.model_macs(models[key])
            assert rnn.scales_of(c) == rnn.scales_of(models[key])  # the batch-1 program's quantization
    rows = E.batching(per_batch, tenants, horizon_requests=2)["rows"]
    assert [(r["batch"], r["tenant"]) for r in rows] == [(b, t) for b in (1, 2, 4) for t in ("a", "b", "all")]
    for r in rows:
        assert KEYS <= set(r) and r["inflight"] == 1 and r["gops"] > 0 and r["p99_ms"] > 0
        assert r["vs_bigcore"] == pytest.approx(r["gops"] / r["bigcore_gops"])
    for b in (1, 2, 4):
        per = [r for r in rows if r["batch"] == b and r["tenant"] != "all"]
        (total,) = [r for r in rows if r["batch"] == b and r["tenant"] == "all"]
        assert total["gops"] == pytest.approx(sum(r["gops"] for r in per))
    with pytest.raises(ValueError, match="only"):
        E.batched_rnn_models(models, ["tiny-lstm"], (1, 3, 4))  # 4 compiles 1, 2, 4


def test_the_committed_report_has_the_batching_rows():
    with open(os.path.join(REPO_ROOT, "scripts", "results", "report.json")) as f:
        report = json.load(f)
    rows = report["batching"]
    assert {(r["batch"], r["model"], r["cores"]) for r in rows} == {
        (b, m, k) for b in (1, 2, 4, 8) for m, k in (("lstm1024", 4), ("gru1024", 4), ("lstm1024+gru1024", 8))}
    for r in rows:
        assert KEYS <= set(r)
        assert abs(r["vs_bigcore"] - r["gops"] / r["bigcore_gops"]) < 1e-9
    assert set(report["headline"]["rnn_batching_vs_bigcore"]) == {"1", "2", "4", "8"}
