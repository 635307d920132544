"""Several requests of one CNN tenant in flight, each on its own activation
slot (runtime/compiler/slots.py, the dispatcher's max_inflight): results
bit-identical to one at a time, records in order, a slot layout that says
when it does not fit, and the modeled throughput gain.

The functional runs execute every frame on the C-simulated cores when the
timeline retires it (frames of different requests interleave as the
modeled schedule has them), through the simulator's real dispatcher."""

from __future__ import annotations

import numpy as np
import pytest
from harness import FrameExecutingSimulator
from test_simulator import conv_graph

from vfpga.driver import isa
from vfpga.runtime.compiler import segment, slots, static
from vfpga.runtime.sim import simulator


class Executing(FrameExecutingSimulator):
    """The frame-executing simulator (CNN cores only), with each request's
    input written into its slot and its output read back when the slot is
    next reused (or at the end)."""

    def __init__(self, board, compiled, inputs):
        super().__init__(board)
        self.compiled, self.inputs = compiled, list(inputs)
        self.outputs: dict[int, bytes] = {}
        self.slot_owner: dict[int, int] = {}
        self.started = 0
        self.records: list[tuple[int, int]] = []  # (seq, status) in the order they were read

    def _slot_addr(self, t, placement, slot):  # segment offset
        return placement.addr + t.slots.arena(slot)

    def _read_output(self, t, slot):
        out = self.compiled.tensors[self.compiled.graph.outputs[0]]
        at = self._slot_addr(t, out, slot)
        self.outputs[self.slot_owner.pop(slot)] = self.read_segment(t.seg_win, at, out.nbytes).tobytes()

    def _begin(self, t, arrival):
        before = list(t.active)
        super()._begin(t, arrival)
        (item,) = [i for i in t.active if i not in before]
        slot = item[2]
        if slot in self.slot_owner:  # its previous request completed: keep its result
            self._read_output(t, slot)
        x = self.compiled.input
        at = self._slot_addr(t, x, slot)
        data = self.inputs[self.started % len(self.inputs)]
        self.write_segment(t.seg_win, at, data.reshape(-1).view(np.uint8))
        self.slot_owner[slot] = self.started
        self.started += 1

    def finish(self, t):
        for slot in list(self.slot_owner):
            self._read_output(t, slot)


def _input_bytes(compiled, seed, n):
    rng = np.random.default_rng(seed)
    x = compiled.input
    return [rng.integers(-128, 128, x.nbytes, dtype=np.int16).astype(np.int8) for _ in range(n)]


@pytest.fixture(scope="module")
def model():
    return static.compile_graph(conv_graph(3, hw=16, c=32, layers=4), "u200")


def _run(compiled, m, n, cores=8, seed=5):
    sim = Executing("u200", compiled, _input_bytes(compiled, seed, n))
    t = sim.deploy("a", compiled, list(range(cores)), max_inflight=m)
    done = sim.run({"a": [0] * n})["a"]
    sim.finish(t)
    assert len(done) == n and sim.started == n
    r = sim.regs.tenant[t.index]
    assert (r.ring_head, r.requests, r.failed, r.status) == (n, n, 0, 1)
    return [sim.outputs[i] for i in range(n)], done


@pytest.mark.parametrize("m", [2, 3, 4])
def test_results_are_bit_identical_to_one_at_a_time(model, m):
    n = 2 * m + 1  # every slot used twice or more
    one, _ = _run(model, 1, n)
    many, done = _run(model, m, n)
    assert len(set(one)) == n  # distinct inputs, distinct results: a mix-up would show
    assert many == one
    # completions in submission order, and requests did overlap
    ends = [r.end for r in done]
    assert ends == sorted(ends)
    assert any(b.start < a.end for a, b in zip(done, done[1:]))


def test_relocation_moves_only_activation_addresses(model):
    lay = slots.slots(model, 3)
    prog = np.asarray(model.program, np.uint8).reshape(-1, isa.INSN_BYTES)
    moved = slots.relocate(model.program, lay.arena_bytes, lay.arena(2)).reshape(-1, isa.INSN_BYTES)
    changed = np.flatnonzero((prog != moved).any(axis=1))
    assert len(changed) > 0
    mem = isa.FORMATS["mem"]
    for i in changed:
        a = prog[i].view(mem)[0]["dram_addr"]
        b = moved[i].view(mem)[0]["dram_addr"]
        assert a < lay.arena_bytes and b == a + lay.arena(2)
        assert isa.opcodes_of(prog[i])[0] in (isa.OPCODES["LOAD_TILE"], isa.OPCODES["SAVE"],
                                               isa.OPCODES["LOAD_LINEAR"])
    # the last slot's copy ends inside the segment, before the driver's areas
    layout = segment.segment_layout(model, max_inflight=3)
    assert lay.program(2) + len(model.program) <= lay.end <= layout.ring_offset
    assert segment.segment_layout(model).size == segment.segment_layout(model, max_inflight=1).size


def test_a_deploy_that_does_not_fit_says_how_many_slots_would(model):
    two = segment.segment_layout(model, max_inflight=2).size
    segment.check_fits(model, two, 2)
    with pytest.raises(MemoryError, match="max_inflight 4 needs .* 2 slots would fit"):
        segment.check_fits(model, two, 4)
    with pytest.raises(MemoryError, match="not even one slot fits"):
        segment.check_fits(model, 4096, 2)
    sim = simulator.Simulator("u200", bank_bytes=two)
    with pytest.raises(MemoryError, match="2 slots would fit"):
        sim.deploy("a", model, [0, 1], bank=0, max_inflight=4)
    with pytest.raises(ValueError, match="max_inflight 5"):
        sim.deploy("b", model, [0, 1], max_inflight=5)


def test_requests_in_flight_raise_throughput_on_many_cores(model):
    def rate(m):
        sim = simulator.Simulator("u200")
        sim.deploy("a", model, list(range(16)), max_inflight=m)
        done = sim.run({"a": [0] * 12})["a"]
        return (len(done) - 1) / (done[-1].end - done[0].end)

    one, two = rate(1), rate(2)
    assert two > 1.05 * one
