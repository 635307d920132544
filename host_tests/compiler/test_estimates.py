"""The dynamic stage's figures are the hardware model's figures.

Every frame estimate the static stage stores is recomputed here from the
frame's own instructions with the cycle model (every layer, every tiling
variant, zoo models, several boards), and the dynamic stage's estimate of
one request alone must agree with the simulator's modeled latency (the pool
timeline: DDR bank sharing, dispatcher costs) at every core count."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from harness import MEMORY_HEAVY_MODELS, one_at_a_time_on_this_host

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.compiler import cache, dynamic, rnn
from vfpga.runtime.hw import cycle_model, frame_timing, rnn_cycle_model
from vfpga.runtime.models import small, zoo
from vfpga.runtime.sim.simulator import Simulator

AGREEMENT = 0.05  # estimate within 5% of the simulator, one request alone


def _compiled(name: str, board: str):
    model = zoo.load(name)
    heavy = one_at_a_time_on_this_host("quantize-" + name) if name in MEMORY_HEAVY_MODELS else contextlib.nullcontext()
    with heavy:
        return cache.compile_with_cache(model, board, zoo.random_inputs(model, 2, seed=1), progress=False).compiled


@pytest.fixture(scope="module")
def squeezenet():
    return {b: _compiled("squeezenet", b) for b in ("u200", "pynq_z2", "u200_bigcore")}


def _check_profiles(c, cfg):
    f = c.frames
    insns = c.program.reshape(-1, isa.INSN_BYTES)
    first = (f["offset"] - c.program_offset) // isa.INSN_BYTES
    assert len(f) and set(np.unique(f["variant"])) == set(range(max(len(li.variants) for li in c.layers)))
    for row, a in zip(f, first.tolist()):
        frame = insns[a:a + int(row["n_insns"])]
        assert isa.decode(frame[0].tobytes())["opcode"] == "FRAME"
        assert row["cycles"] == cycle_model.schedule(frame, cfg).total_cycles
        assert row["ddr_bytes"] == cycle_model.ddr_bytes(frame, cfg)


@pytest.mark.parametrize("board", ["u200", "pynq_z2", "u200_bigcore"])
def test_every_frame_estimate_is_the_cycle_model_of_its_own_instructions(squeezenet, board):
    _check_profiles(squeezenet[board], overlay.load(board))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "inception_v1", "vgg19"])
@pytest.mark.parametrize("board", ["u200", "zcu104"])
def test_every_frame_estimate_of_the_big_zoo_models(name, board):
    _check_profiles(_compiled(name, board), overlay.load(board))


def _simulated(compiled, board: str, k: int, kind: str) -> int:
    sim = Simulator(board)
    sim.deploy("t", compiled, sim.pool(kind)[:k])
    return sim.run({"t": [0]})["t"][0].latency


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_cnn_estimate_agrees_with_the_simulator(squeezenet, k):
    c = squeezenet["u200"]
    est = dynamic.plan(c, k).modeled_cycles
    got = _simulated(c, "u200", k, "cnn")
    assert abs(est - got) <= AGREEMENT * got, (k, est, got)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "vgg19"])
def test_cnn_estimate_agrees_with_the_simulator_on_the_big_models(name):
    c = _compiled(name, "u200")
    for k in (1, 2, 4, 8, 16):
        est, got = dynamic.plan(c, k).modeled_cycles, _simulated(c, "u200", k, "cnn")
        assert abs(est - got) <= AGREEMENT * got, (name, k, est, got)


@pytest.fixture(scope="module")
def rnns():
    out = {}
    for cell, hidden, steps in (("LSTM", 256, 6), ("GRU", 512, 4)):
        model = small.random_rnn_model(cell, hidden, hidden, steps, seed=hidden)
        rng = np.random.default_rng(1)
        calib = [{"X": rng.uniform(-1, 1, (steps, 1, hidden)).astype(np.float32)} for _ in range(2)]
        out[cell] = rnn.compile_rnn(model, "u200", calibration=calib)
    return out


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_rnn_frame_estimates_are_the_rnn_cycle_model(rnns, cell):
    c = rnns[cell]
    cfg = overlay.load("u200")
    f = c.frames
    offsets = f["offset"] - c.program_offset
    assert list(f["cycles"]) == list(rnn_cycle_model.frames_cycles(c.program, offsets, f["n_insns"], cfg))
    insns = c.program.reshape(-1, isa.INSN_BYTES)
    for row, off in zip(f, offsets.tolist()):
        frame = insns[off // isa.INSN_BYTES:off // isa.INSN_BYTES + int(row["n_insns"])]
        assert row["cycles"] == rnn_cycle_model.frame_cycles(frame, cfg)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_rnn_estimate_agrees_with_the_simulator(rnns, cell, k):
    c = rnns[cell]
    est = rnn.plan_rnn(c, k).modeled_cycles
    got = _simulated(c, "u200", k, "rnn")
    assert abs(est - got) <= AGREEMENT * got, (cell, k, est, got)


def test_bank_shares_are_max_min_fair_and_add_up_to_the_bank():
    assert frame_timing.bank_stretches([0.3, 0.5]) == [1.0, 1.0]  # the bank is not the bottleneck
    assert frame_timing.bank_stretches([0.5] * 4) == [2.0] * 4  # equal demands: equal shares
    # a small demand gets all it asks; the others split the rest equally
    s = frame_timing.bank_stretches([0.1, 0.9, 0.9])
    assert s[0] == 1.0 and s[1] == s[2] == pytest.approx(0.9 / 0.45)
    assert frame_timing.bank_stretches([1.5]) == [1.5]  # one frame alone can ask for more than the bank
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = rng.uniform(0, 2, rng.integers(1, 20))
        got = np.array(frame_timing.bank_stretches(d))
        assert (got >= 1).all()
        assert sum(d / got) <= 1 + 1e-9 or (got == 1).all()  # never more than the bank
        if d.sum() > 1:
            assert sum(d / got) == pytest.approx(1.0)  # and all of it when it is the bottleneck
    assert list(frame_timing.stretched([100, 200], 0.5)) == [100, 200]
    assert list(frame_timing.stretched([100, 200], 2.5)) == [250, 500]


@pytest.mark.parametrize("k", [4, 16])
def test_a_bank_never_moves_more_than_its_bandwidth(squeezenet, k):
    """The simulated tenant's DDR bytes over its modeled time stay within its
    banks' bytes per cycle (u200 stripes the segment over four), however many
    cores it runs on."""
    c = squeezenet["u200"]
    cfg = overlay.load("u200")
    got = _simulated(c, "u200", k, "cnn")
    plan = dynamic.plan(c, k)
    table = dynamic.DispatchTable(c)
    moved = sum(vs[vi].ddr_bytes for part, vis in zip(table.parts, plan.variants) for vs, vi in zip(part, vis))
    assert moved / got <= overlay.config.segment_bytes_per_cycle(cfg)
