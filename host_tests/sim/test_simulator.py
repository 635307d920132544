"""The timing-only simulation and the experiments built on it.

The simulator must give the emulated device's modeled cycles for the same
requests (same dispatcher, same frame timeline), keep the time-multiplexed
baselines serial, keep tenants on different DDR banks from slowing each
other, and re-allocate without losing requests.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from vfpga import overlay
from vfpga.runtime import tenants
from vfpga.runtime.compiler import ir, static
from vfpga.runtime.experiments import metrics, scenarios
from vfpga.runtime.hw import fixed_point, timeline
from vfpga.runtime.sim import simulator


def conv_graph(seed: int, hw: int = 24, c: int = 32, layers: int = 3) -> ir.Graph:
    """A stack of 3x3 convolutions: enough frames to spread over many cores."""
    rng = np.random.default_rng(seed)
    t = {f"t{i}": ir.Tensor(f"t{i}", (hw, hw, c), 0.05, 0) for i in range(layers + 1)}
    convs = []
    for i in range(layers):
        w = rng.integers(-100, 100, (c, c, 3, 3), dtype=np.int8)
        mult, shift = fixed_point.quantize_multipliers(np.full(c, 0.002))
        convs.append(ir.Conv(f"c{i}", f"t{i}", f"t{i + 1}", w, rng.integers(-500, 500, c).astype(np.int32), mult,
                             shift, pads=(1, 1, 1, 1)))
    return ir.Graph(t, convs, ["t0"], [f"t{layers}"], name=f"convs{seed}")


@pytest.fixture(scope="module")
def compiled():
    g = conv_graph(1)
    return {board: static.compile_graph(g, board) for board in ("u200", "u200_bigcore")}


@pytest.mark.parametrize("k", [1, 3, 8])
def test_simulator_gives_the_emulated_devices_cycles(compiled, k):
    c = compiled["u200"]
    ov = tenants.open("u200", emulate=True)
    try:
        t = ov.deploy(c, cores=k, name="a")
        _, info = t.run_quantized(np.zeros(c.input_shape, np.int8))
    finally:
        ov.close()
    sim = simulator.Simulator("u200")
    sim.deploy("a", c, list(range(k)))
    (r,) = sim.run({"a": [0]})["a"]
    assert r.device_cycles == info.modeled_cycles > 0


def test_frames_retire_one_at_a_time_the_earliest_issued_first():
    """The free-running dispatcher's rule (hls/include/vfpga_pool.h): one
    ended frame retires per iteration; of frames ending at the same cycle,
    the one issued first (issue order: issue cycle, then pool order)."""
    t = simulator.Simulator("u200").timeline
    for order, (end, core) in enumerate([(50, 7), (30, 9), (30, 2), (30, 5), (40, 1)]):
        # issued at cycle 0, each taking ``end`` cycles, no DDR demand
        t._inflight.append(timeline._Flight(0, order, core, None, None, 0, 0.0, 0, end))
    got = []
    while t.busy:
        got.append((t.pop()[0], t.now))
    assert got == [(9, 30), (2, 30), (5, 30), (1, 40), (7, 50)]


def test_frames_on_one_bank_share_it_and_their_ends_move():
    """Two frames that each use the whole bank alone (demand 1, 100 cycles):
    the second, issued at cycle 50, halves the first's rate until the first
    ends; then it runs alone. The bank moves exactly its bandwidth all along:
    both frames' work (2 x 100 cycles of a full bank) ends at cycle 200. A
    frame on another bank is not touched."""
    t = simulator.Simulator("u200").timeline
    t._inflight.append(timeline._Flight(0, 1, 0, None, None, 0, 1.0, 0, 100))
    t._inflight.append(timeline._Flight(0, 2, 5, None, None, 1, 1.0, 0, 80))  # bank 1
    t._share(0)
    assert [f.end for f in t._inflight] == [100, 80]
    t.now = 50
    t._inflight.append(timeline._Flight(50, 3, 1, None, None, 0, 1.0, 0, 100))
    t._share(0)
    assert [f.end for f in t._inflight] == [150, 80, 250]
    got = []
    while t.busy:
        got.append((t.pop()[0], t.now))
    assert got == [(5, 80), (0, 150), (1, 200)]
    assert list(t.core_busy_cycles[[0, 1, 5]]) == [150, 150, 80]


def test_more_cores_are_faster_and_serial_mode_never_overlaps(compiled):
    c = compiled["u200"]
    lat = {}
    for k in (1, 4, 16):
        sim = simulator.Simulator("u200")
        sim.deploy("a", c, list(range(k)))
        lat[k] = sim.run({"a": [0]})["a"][0].latency
    assert lat[1] > lat[4] > lat[16]
    sim = simulator.Simulator("u200")
    sim.deploy("a", c, [])
    sim.deploy("b", c, [])
    done = sim.run({"a": [0, 0, 0], "b": [0, 0, 0]}, serial=True)
    spans = sorted((r.start, r.end, name) for name, rs in done.items() for r in rs)
    assert len(spans) == 6 and [n for _, _, n in spans] == ["a"] * 3 + ["b"] * 3
    assert all(nxt[0] >= prev[1] for prev, nxt in zip(spans, spans[1:]))
    # each request had the whole device: the 16-core latency (a time-multiplexed
    # baseline switches tenants without the buffer scrub a hand-over costs vfpga)
    assert [e - s for s, e, _ in spans] == [lat[16]] * 6


def _contiguous_u200() -> dict:
    """u200 with each segment in one bank (``ddr.segment_banks`` 1): a what-if
    of the timing model, run on u200's dispatcher (it takes either layout)."""
    cfg = copy.deepcopy(overlay.load("u200"))
    cfg["ddr"]["segment_banks"] = 1
    return cfg


def _a_latencies(config, c, b_requests: int, b_bank: int):
    sim = simulator.Simulator(config)
    sim.deploy("a", c, list(range(8)), bank=0)
    sim.deploy("b", c, list(range(8, 16)), bank=b_bank)
    done = sim.run({"a": [0] * 4, "b": [0] * b_requests})
    return [r.latency - (r.start - r.arrival) for r in done["a"]], sim


def test_tenants_on_other_banks_do_not_slow_each_other(compiled):
    c, cfg = compiled["u200"], _contiguous_u200()
    alone, sim = _a_latencies(cfg, c, 0, 1)
    assert sim.stripe is None and {t.seg_win // sim.bank_stride for t in sim.tenants.values()} == {0, 1}
    apart, sim = _a_latencies(cfg, c, 8, 1)
    assert sim.timeline.tenant_frame_cycles[0] == sim.timeline.tenant_solo_cycles[0]  # no DDR slowdown
    # different banks, disjoint cores: the only coupling left is the one dispatcher issuing
    # both tenants' frames (issue_cycles each), well under 1% here
    assert alone[0] > 0 and all(abs(p - a) <= 0.01 * a for p, a in zip(apart, alone))
    # one bank: 16 cores' traffic exceeds it, A slows down and the accounting shows why
    together, sim = _a_latencies(cfg, c, 8, 0)
    assert sum(together) > sum(apart)
    assert sim.timeline.tenant_frame_cycles[0] > sim.timeline.tenant_solo_cycles[0]


def test_striped_segments_share_all_four_banks(compiled):
    """u200 as configured: every segment striped over the four banks, so two
    tenants' 16 cores share four banks' bandwidth -- A slows less than when
    both segments are in one bank, and never below its time alone."""
    c = compiled["u200"]
    alone, sim = _a_latencies("u200", c, 0, 1)
    assert sim.stripe is not None and all(t.seg_win < sim.bank_stride for t in sim.tenants.values())
    shared, sim = _a_latencies("u200", c, 8, 1)
    assert sim.timeline.tenant_frame_cycles[0] >= sim.timeline.tenant_solo_cycles[0]
    one_bank, _ = _a_latencies(_contiguous_u200(), c, 8, 0)
    assert sum(alone) <= sum(shared) < sum(one_bank)


@pytest.mark.parametrize("board", ["u200", "zcu104"])
def test_segment_bytes_land_where_the_mapping_says(board):
    """write_segment / read_segment: whole rows by part views, ragged ends by
    words; every byte where segment_runs places it, and read back the same."""
    sim = simulator.Simulator(board, bank_bytes=1 << 20)
    rng = np.random.default_rng(5)
    seg_win = 3 * 4096
    for offset, n in [(0, 1), (0, 256), (63, 2), (255, 258), (5, 3000), (4096, 64 * 4 * 7)] + [
            (int(rng.integers(0, 9000)), int(rng.integers(1, 5000))) for _ in range(20)]:
        data = rng.integers(0, 256, n, dtype=np.uint8)
        sim.write_segment(seg_win, offset, data)
        for at, a, m in overlay.config.segment_runs(sim.stripe, seg_win, offset, n):
            np.testing.assert_array_equal(sim.window[at:at + m], data[a - offset:a - offset + m])
        np.testing.assert_array_equal(sim.read_segment(seg_win, offset, n), data)


def test_reallocation_mid_run_loses_nothing(compiled):
    c = compiled["u200"]
    sim = simulator.Simulator("u200")
    sim.deploy("a", c, [0, 1, 2, 3])
    sim.deploy("b", c, [4, 5, 6, 7])
    step = [0]

    def shuffle(s):
        step[0] += 1
        if step[0] % 2:
            s.set_cores({"a": [0, 1], "b": [2, 3, 4, 5, 6, 7, 8, 9]})
        else:
            s.set_cores({"b": [10, 11], "a": [0, 1, 2, 3, 4, 5]})

    done = sim.run({"a": [0] * 10, "b": [0] * 10}, epoch=2000, on_epoch=shuffle)
    assert step[0] >= 4
    assert [len(done[n]) for n in ("a", "b")] == [10, 10]
    assert all(r.end >= r.start >= r.arrival for rs in done.values() for r in rs)


def test_a_tenant_without_cores_is_named_when_it_stalls(compiled):
    sim = simulator.Simulator("u200")
    sim.deploy("idle", compiled["u200"], [])
    with pytest.raises(RuntimeError, match="stalled"):
        sim.run({"idle": [0]})


def test_experiments_on_small_models(compiled):
    models = scenarios.Models({("m", "u200"): compiled["u200"], ("m", "u200_bigcore"): compiled["u200_bigcore"]})
    macs = metrics.model_macs(compiled["u200"])
    assert macs == sum(int(np.prod(layer.weight.shape)) * 24 * 24 for layer in compiled["u200"].graph.layers)
    hz = 300e6
    two = [("a", "m", 8), ("b", "m", 8)]
    res = {mode: scenarios.saturated(models, two, mode, 3) for mode in scenarios.MODES}
    for mode, r in res.items():
        rates = [t["req_per_s"] for t in r["tenants"]]
        # the work-weighted figures, recomputed from the per-tenant rates and the model's MACs
        assert r["gops"] == pytest.approx(sum(2 * macs * x for x in rates) / 1e9)
        assert r["device_mac_utilization"] == pytest.approx(sum(rates) * macs / (16 * 256 * hz))
        alone = scenarios.alone_latency(models, "m", scenarios.BIG if mode == "bigcore" else scenarios.POOL)
        nps = [x * alone / hz for x in rates]
        assert r["stp"] == pytest.approx(sum(nps)) and r["fairness"] == pytest.approx(min(nps) / max(nps))
        assert r["antt"] == pytest.approx(np.mean([1 / x for x in nps]))
    # time-multiplexed: the two equal tenants take turns on the whole device, half its rate each
    for mode in ("bigcore", "multicore"):
        alone = scenarios.alone_latency(models, "m", scenarios.BIG if mode == "bigcore" else scenarios.POOL)
        for t in res[mode]["tenants"]:
            assert t["req_per_s"] == pytest.approx(hz / alone / 2, rel=0.05)
    # spatial: each tenant on its own 8 cores and bank runs as it does alone on 8 cores
    solo8 = scenarios._solo(models, "m", 8)
    for t in res["vfpga"]["tenants"]:
        assert t["req_per_s"] == pytest.approx(hz / solo8, rel=0.01) and t["p99_ms"] > 0
    # one tenant on all 16 cores is the same machine in both pool modes
    one = [("a", "m", 16)]
    assert scenarios.saturated(models, one, "vfpga", 2)["gops"] == pytest.approx(
        scenarios.saturated(models, one, "multicore", 2)["gops"], rel=1e-3)
    cost = scenarios.realloc_cost(models, ["m"], counts=(1, 4), repeats=2)["rows"]
    assert [r["k"] for r in cost] == [1, 4] and all(r["dynamic_stage_ms"] > 0 and r["drain_max_us"] > 0
                                                    for r in cost)
    run = scenarios.runs(models, ["m"], counts=(1, 4))["rows"]
    for r in run:
        assert r["mac_utilization"] == pytest.approx(macs / (r["modeled_cycles"] * r["peak_macs_per_cycle"]))
        assert abs(r["estimate_cycles"] - r["modeled_cycles"]) <= 0.05 * r["modeled_cycles"]


@pytest.mark.slow
def test_bench_quick_writes_the_report(tmp_path):
    from vfpga.runtime.experiments.report import run_bench

    lines = []
    out = run_bench(str(tmp_path), quick=True, echo=lines.append)
    for name in ("public_cloud", "isolation", "realloc", "serving"):
        for ext in ("md", "json", "png"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
    text = (tmp_path / "report.md").read_text()
    assert "modeled" in text and "published" in text and "GOP/s" in text
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(out, default=float))
    assert {r["split"] for r in report["splits"]} == {"4x25%", "50/25/25", "75/25", "100%"}
    for row in report["runs"]:
        assert {"model", "board", "cores", "gmac", "estimate_cycles", "modeled_cycles", "clock_mhz",
                "peak_macs_per_cycle", "mac_utilization"} <= set(row)
    for row in report["splits"] + report["rnn_splits"]:
        for mode in ("vfpga", "bigcore", "multicore"):
            assert {"gops", "mac_utilization", "stp", "antt", "fairness"} <= set(row[mode])
            assert all({"req_per_s", "p99_ms"} <= set(t) for t in row[mode]["tenants"])
