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
    rows = [r for r in report["batching"] if r["tenant"] != "solo"]
    assert {(r["batch"], r["model"], r["cores"]) for r in rows} == {
        (b, m, k) for b in (1, 2, 4, 8) for m, k in (("lstm1024", 4), ("gru1024", 4), ("lstm1024+gru1024", 8))}
    for r in rows:
        assert KEYS <= set(r)
        assert abs(r["vs_bigcore"] - r["gops"] / r["bigcore_gops"]) < 1e-9
    assert set(report["headline"]["rnn_batching_vs_bigcore"]) == {"1", "2", "4", "8"}


def test_the_committed_report_has_the_inflight_rows():
    """ResNet-50 alone on 16 u200 cores with 1, 2 and 4 requests in flight,
    then batched by 2 and 4 (one batch in flight)."""
    with open(os.path.join(REPO_ROOT, "scripts", "results", "report.json")) as f:
        report = json.load(f)
    rows = [r for r in report["batching"] if r["tenant"] == "solo"]
    assert [(r["model"], r["cores"], r["batch"], r["inflight"]) for r in rows] == [
        ("resnet50", 16, 1, m) for m in (1, 2, 4)] + [("resnet50", 16, b, 1) for b in (2, 4)]
    assert set(report["headline"]["cnn_batch_vs_one"]) == {"2", "4"}
    for r in rows:
        assert KEYS <= set(r)
        assert r["vs_one"] == pytest.approx(r["gops"] / rows[0]["gops"])
        assert r["vs_bigcore"] == pytest.approx(r["gops"] / r["bigcore_gops"])
    # one at a time is the model alone on 16 cores (the runs table)
    alone = [r for r in report["runs"] if (r["model"], r["board"], r["cores"]) == ("resnet50", "u200", 16)]
    assert rows[0]["mac_utilization"] == pytest.approx(alone[0]["mac_utilization"], rel=1e-6)
    assert rows[0]["vs_one"] < rows[1]["vs_one"] < rows[2]["vs_one"]
    assert rows[0]["cores_busy"] < rows[1]["cores_busy"] < rows[2]["cores_busy"] <= 1
    assert 1 < rows[3]["vs_one"] < rows[4]["vs_one"]  # batches share weight loads
    assert set(report["headline"]["cnn_inflight_vs_one"]) == {"1", "2", "4"}


def test_inflight_rows_on_a_small_model():
    import numpy as np

    from vfpga.runtime.compiler import ir, static
    from vfpga.runtime.hw import fixed_point

    rng = np.random.default_rng(7)
    t = {f"t{i}": ir.Tensor(f"t{i}", (16, 16, 32), 0.05, 0) for i in range(4)}
    mult, shift = fixed_point.quantize_multipliers(np.full(32, 0.002))
    convs = [ir.Conv(f"c{i}", f"t{i}", f"t{i + 1}", rng.integers(-100, 100, (32, 32, 3, 3), dtype=np.int8),
                     rng.integers(-500, 500, 32).astype(np.int32), mult, shift, pads=(1, 1, 1, 1)) for i in range(3)]
    g = ir.Graph(t, convs, ["t0"], ["t3"], name="convs7")
    models = E.Models({("small", b): static.compile_graph(g, b) for b in (E.POOL, E.BIG)})
    rows = E.inflight(models, "small", cores=16, levels=(1, 2), horizon_requests=4, batches=(2,))["rows"]
    assert [(r["batch"], r["inflight"]) for r in rows] == [(1, 1), (1, 2), (2, 1)]
    for r in rows:
        assert KEYS <= set(r) and r["gops"] > 0 and r["p99_ms"] > 0 and 0 < r["mac_utilization"] <= 1
        assert r["mac_utilization"] < r["cores_busy"] <= 1 and r["frame_stretch"] >= 1
    assert rows[0]["vs_one"] == 1.0 and rows[1]["vs_one"] > 1.0
    # a batch of 2 counts both requests' work: its GOP/s are of 2 requests per run
    assert rows[2]["req_per_s"] == pytest.approx(rows[2]["gops"] / (2 * metrics.model_macs(models["small", E.POOL])
                                                                     / 1e9))
