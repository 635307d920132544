"""The board path, register by register: vfpga.runtime.tenants driven through a
recording pynq.Device (vfpga.driver.recording) in front of the emulated
board. Checks that start, deploy, run, re-allocate and fault recovery issue
exactly the register writes the HLS interfaces define (names decoded from the
board config's offsets), that every doorbell follows the flush of what it
announces, and that completion records and outputs are invalidated before
they are read. What a board would add is only the silicon underneath.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vfpga import overlay
from vfpga.driver import isa
from vfpga.driver.recording import RecordingDevice, RegisterMap
from vfpga.runtime import tenants
from vfpga.runtime.compiler import static
from vfpga.runtime.errors import TenantFault
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small

SMALL_BANK = 16 << 20

# Registers the host may write (everything else in the file is the dispatcher's)
HOST_WRITES = {"ctrl", "mem_bytes.lo", "mem_bytes.hi", "file.irq_enable", "file.irq_mask", "file.mem_base.lo",
               "file.mem_base.hi", *(f"{p}.{h}" for p in ("mem", "mem1", "mem2", "mem3") for h in ("lo", "hi"))}
TENANT_HOST_WRITES = {"control", "seg_limit", "seg_base.lo", "seg_base.hi", "ring_offset", "ring_size", "cpl_offset",
                      "ring_tail", "cpl_ack", "core_mask", "mask_seq", "max_inflight"}
ENABLE_ORDER = ["seg_base.lo", "seg_base.hi", "seg_limit", "ring_offset", "ring_size", "cpl_offset", "cpl_ack",
                "ring_tail", "core_mask", "max_inflight", "control"]


def tiny_graph(seed: int):
    """conv 3x3 + ReLU -> conv 1x1, random int8 parameters."""
    return small.conv_graph(seed, pool=False)


def x_for(graph, seed):
    return np.random.default_rng(seed).integers(-128, 128, size=graph.tensors["x"].shape, dtype=np.int8)


@pytest.fixture
def board():
    """(accelerator, recorder) on a recording zcu104 (4 cores, one bank)."""
    rec = RecordingDevice("zcu104", bank_capacity=SMALL_BANK)
    accel = tenants.Accelerator("zcu104", device=rec)
    yield accel, rec
    accel.close()
    rec.close()  # the Accelerator closes only devices it opened itself


def tenant_writes(events, ctx: int):
    prefix = f"tenant[{ctx}]."
    return [dataclasses.replace(e, register=e.register[len(prefix):]) for e in events
            if e.kind == "write" and e.register and e.register.startswith(prefix)]


def covers(e, address: int, size: int) -> bool:
    return e.address <= address and address + size <= e.address + e.size


def mask_of(cores) -> int:
    return sum(1 << c for c in cores)


def assert_only_defined_writes(rec: RecordingDevice):
    """Every write names a register of the config, and only one the host owns."""
    for e in rec.writes():
        assert e.register is not None, f"write to {e.address:#x}: no register of the {rec.board} config there"
        name = e.register.split(".", 1)[1] if e.register.startswith("tenant[") else e.register
        allowed = TENANT_HOST_WRITES if e.register.startswith("tenant[") else HOST_WRITES
        assert e.ip == "dispatcher" and name in allowed, f"host wrote the dispatcher's register {e.register}"


# ---------------------------------------------------------------- start


@pytest.mark.parametrize("board_name", overlay.available())
def test_start_points_the_kernel_at_the_ddr_window_then_starts_it(board_name):
    rec = RecordingDevice(board_name, bank_capacity=1 << 20, record_reads=False)
    accel = tenants.Accelerator(board_name, device=rec)
    try:
        cfg = overlay.load(board_name)
        ddr = cfg["ddr"]
        window = (ddr["banks"] - 1) * ddr["bank_stride"] + ddr["bank_bytes"]
        w = [(e.register, e.value) for e in rec.writes()]
        base = cfg["dispatcher"]["base_address"]
        ports = overlay.config.bank_port_registers(cfg)  # one m_axi port per bank, each at the window's base
        assert ports == ["mem"] + [f"mem{b}" for b in range(1, ddr["banks"])]
        regs = cfg["dispatcher"]["registers"]
        assert [e.address - base for e in rec.writes()][:2 * len(ports) + 2] == [
            regs[p] + i for p in ports + ["mem_bytes"] for i in (0, 4)]
        assert w == [
            *((f"{p}.{h}", v) for p in ports for h, v in (("lo", ddr["base_address"] & 0xFFFFFFFF),
                                                          ("hi", ddr["base_address"] >> 32))),
            ("mem_bytes.lo", window & 0xFFFFFFFF), ("mem_bytes.hi", window >> 32),
            ("file.mem_base.lo", ddr["base_address"] & 0xFFFFFFFF), ("file.mem_base.hi", ddr["base_address"] >> 32),
            ("file.irq_mask", 0xFFFFFFFF), ("file.irq_enable", 1),
            ("ctrl", 0x81),  # ap_start | auto_restart: the free-running dispatcher, started last
        ]
        assert accel.mode == "board"  # the recorder is not the emulated device: the board code path
    finally:
        accel.close()
        rec.close()
    assert rec.writes()[-1].register == "ctrl" and rec.writes()[-1].value == 0  # close clears auto-restart


def test_register_map_decodes_the_config_offsets():
    cfg = overlay.load("u200")
    m = RegisterMap(cfg)
    d = cfg["dispatcher"]
    at = d["base_address"] + d["registers"]["file"] + d["tenant_base"] + 5 * d["tenant_stride"]
    assert m.name(at + d["tenant_registers"]["ring_tail"]) == ("dispatcher", "tenant[5].ring_tail")
    assert m.name(at + d["tenant_registers"]["seg_base"] + 4) == ("dispatcher", "tenant[5].seg_base.hi")
    assert m.name(d["base_address"] + 0x1000) == (None, None)


# ---------------------------------------------------------------- deploy and run


def test_deploy_flushes_the_segment_then_enables_the_context(board):
    accel, rec = board
    rec.clear()
    t = accel.deploy(tiny_graph(1), cores=2, name="a")
    ctx, seg = t.context.index, t.segment
    w = tenant_writes(rec.events, ctx)
    assert [e.register for e in w] == ENABLE_ORDER
    values = {e.register: e.value for e in w}
    assert values["seg_base.lo"] | values["seg_base.hi"] << 32 == seg.physical_address
    assert seg.physical_address % 4096 == 0
    assert values["seg_limit"] == seg.size
    assert (values["ring_offset"], values["cpl_offset"], values["ring_size"]) == (t.ring_offset, t.cpl_offset,
                                                                                  t.context.ring_size)
    assert values["core_mask"] == mask_of(t.cores) and bin(values["core_mask"]).count("1") == 2
    assert (values["ring_tail"], values["cpl_ack"], values["control"]) == (0, 0, 1)
    # the whole segment (program, weights, scrubbed rest) reached DDR before enable
    enable = w[-1].seq
    assert any(e.kind == "flush" and e.seq < enable and covers(e, seg.physical_address, seg.size)
               for e in rec.events)
    # and the dispatch programs of the active half, after the image
    first = t.program_halves[0]
    assert any(e.kind == "flush" and e.seq < enable and e.address == seg.physical_address + first for e in rec.events)
    assert_only_defined_writes(rec)


def test_run_flushes_before_every_doorbell_and_invalidates_before_every_read(board):
    accel, rec = board
    t = accel.deploy(tiny_graph(2), cores=2, name="a")
    ctx, seg = t.context.index, t.segment
    x = x_for(t.graph, 0)
    rec.clear()
    (y,), info = t.run_quantized(x)
    np.testing.assert_array_equal(y, golden.run_graph(t.graph, x)["y"])
    events = rec.snapshot()
    base = seg.physical_address
    doorbells = [e for e in tenant_writes(events, ctx) if e.register == "ring_tail"]
    assert doorbells, "no doorbell rung"
    inp = t.compiled.tensors["x"]
    last = -1
    for db in doorbells:
        n = db.value
        entry = base + t.ring_offset + (n - 1) % t.context.ring_size * isa.REQUEST.itemsize
        between = [e for e in events if last < e.seq < db.seq]
        assert any(e.kind == "flush" and covers(e, entry, isa.REQUEST.itemsize) for e in between), (
            f"doorbell {n}: ring entry at {entry:#x} not flushed since the previous doorbell")
        # what the dispatcher will read: the entry in device memory names a program inside the segment
        raw = rec.ddr_view(entry, isa.REQUEST.itemsize).copy().view(isa.REQUEST)[0]
        lo, hi = t.program_halves[0], t.program_halves[1] + (t.program_halves[1] - t.program_halves[0])
        assert lo <= int(raw["prog_offset"]) < hi and int(raw["prog_entries"]) >= 1
        last = db.seq
    first = doorbells[0].seq
    assert any(e.kind == "flush" and e.seq < first and covers(e, base + inp.addr, int(np.prod(inp.shape)))
               for e in events), "the input was not flushed before the first doorbell"
    # records: invalidated after the previous acknowledgement, before their own
    acks = [e for e in tenant_writes(events, ctx) if e.register == "cpl_ack"]
    assert acks and acks[-1].value == doorbells[-1].value
    prev_seq, prev_val = -1, doorbells[0].value - 1
    for ack in acks:
        for s in range(prev_val, ack.value):
            rec_at = base + t.cpl_offset + s % t.context.ring_size * isa.COMPLETION.itemsize
            assert any(e.kind == "invalidate" and prev_seq < e.seq < ack.seq and covers(e, rec_at, isa.COMPLETION.itemsize)
                       for e in events), f"record {s} read without an invalidate"
        prev_seq, prev_val = ack.seq, ack.value
    out = t.compiled.tensors["y"]
    last_rec = base + t.cpl_offset + (acks[-1].value - 1) % t.context.ring_size * isa.COMPLETION.itemsize
    read_last = max(e.seq for e in events if e.kind == "invalidate" and covers(e, last_rec, isa.COMPLETION.itemsize))
    assert any(e.kind == "invalidate" and e.seq > read_last and covers(e, base + out.addr, int(np.prod(out.shape)))
               for e in events), "the output was read without an invalidate after the last record"
    # nothing but doorbells and acknowledgements while running
    assert {e.register for e in tenant_writes(events, ctx)} <= {"ring_tail", "cpl_ack"}
    assert_only_defined_writes(rec)


def test_dispatcher_figures_are_measured_on_the_board_path(board):
    accel, rec = board
    t = accel.deploy(tiny_graph(3), name="a")
    t.run_quantized(x_for(t.graph, 1))
    s = accel.stats()["a"]
    assert s.source == "measured" and s.requests == 1 and s.ddr_slowdown is None


# ---------------------------------------------------------------- re-allocation


def test_reallocate_releases_before_acquiring_with_config_masks(board):
    accel, rec = board
    a = accel.deploy(tiny_graph(4), cores=2, name="a")
    b = accel.deploy(tiny_graph(5), cores=2, name="b")
    before_a, before_b = list(a.cores), list(b.cores)
    rec.clear()
    r = accel.reallocate({"a": 1, "b": 3})
    events = rec.snapshot()
    wa = [e for e in tenant_writes(events, a.context.index) if e.register in ("core_mask", "mask_seq")]
    wb = [e for e in tenant_writes(events, b.context.index) if e.register in ("core_mask", "mask_seq")]
    # a mask change is core_mask then a new mask_seq (the request), once per tenant here
    assert [e.register for e in wa] == ["core_mask", "mask_seq"] and [e.register for e in wb] == ["core_mask",
                                                                                                   "mask_seq"]
    assert wa[0].value == mask_of(r.after["a"]) and set(r.after["a"]) < set(before_a)
    assert wb[0].value == mask_of(r.after["b"]) and set(before_b) < set(r.after["b"])
    assert wa[1].seq < wb[0].seq, "b acquired a core before a released it"
    # the new dispatch programs were in DDR before any mask changed
    for t in (a, b):
        half = t.program_halves[t._active_half]
        assert any(e.kind == "flush" and e.seq < wa[0].seq and e.address == t.segment.physical_address + half
                   for e in events), f"{t.name}: new dispatch programs not flushed before the mask change"
    # the releasing side waited for the dispatcher to report the mask applied
    assert any(e.kind == "read" and e.register == f"tenant[{a.context.index}].mask_done" and wa[1].seq < e.seq < wb[0].seq
               for e in events)
    for t, seed in ((a, 6), (b, 7)):
        x = x_for(t.graph, seed)
        np.testing.assert_array_equal(t.run_quantized(x)[0][0], golden.run_graph(t.graph, x)["y"])
    assert_only_defined_writes(rec)


# ---------------------------------------------------------------- fault recovery


def out_of_segment(compiled: static.CompiledModel, limit: int) -> static.CompiledModel:
    """Every SAVE (of every tiling variant) moved to the segment's end."""
    program = compiled.program.copy()
    for i in np.flatnonzero(isa.opcodes_of(program) == isa.OPCODES["SAVE"]):
        fields = isa.decode(program[i * isa.INSN_BYTES:(i + 1) * isa.INSN_BYTES])
        fields["dram_addr"] = limit
        head = {k: fields.pop(k) for k in ("deps", "flags", "tag")}
        program[i * isa.INSN_BYTES:(i + 1) * isa.INSN_BYTES] = np.frombuffer(
            isa.encode(fields.pop("opcode"), **head, **fields), dtype=np.uint8)
    return dataclasses.replace(compiled, program=program)


def test_fault_then_reset_disables_and_re_enables_the_same_context(board):
    from vfpga.runtime.compiler.segment import segment_layout

    accel, rec = board
    good = static.compile_graph(tiny_graph(6), "zcu104")
    bad = accel.deploy(out_of_segment(good, segment_layout(good).size), cores=1, name="bad")
    ctx, seg = bad.context.index, bad.segment
    with pytest.raises(TenantFault, match="SEGMENT"):
        bad.run_quantized(x_for(bad.graph, 0))
    events = rec.snapshot()
    # the driver learnt the fault from the dispatcher's registers and the record
    assert any(e.kind == "read" and e.register == f"tenant[{ctx}].fault" for e in events)
    rec.clear()
    bad.reset()
    w = tenant_writes(rec.events, ctx)
    names = [e.register for e in w]
    assert names[0] == "control" and w[0].value == 0, "reset must first disable the context"
    # ... wait for DISABLED (reads of status), then the full enable sequence on the same segment and cores
    disabled_at = w[1].seq
    assert any(e.kind == "read" and e.register == f"tenant[{ctx}].status" and w[0].seq < e.seq < disabled_at
               for e in rec.events)
    enable = [e for e in w[1:] if e.register != "cpl_ack" or e.seq > w[1].seq]
    assert [e.register for e in enable][-len(ENABLE_ORDER):] == ENABLE_ORDER
    v = {e.register: e.value for e in enable}
    assert v["seg_base.lo"] | v["seg_base.hi"] << 32 == seg.physical_address and v["seg_limit"] == seg.size
    assert v["core_mask"] == mask_of(bad.cores) and v["control"] == 1
    assert v["ring_tail"] == v["cpl_ack"] == bad.context._tail  # the ring restarts where the host is
    assert bad.context.status == "IDLE"
    assert_only_defined_writes(rec)


def test_interrupt_line_or_polling_both_complete(board):
    """With the line routed (route_irq) the driver sleeps on it; without, it
    polls the ``irq`` register as on a board whose overlay lacks the line."""
    accel, rec = board
    t = accel.deploy(tiny_graph(7), name="a")
    rec.clear()
    t.run_quantized(x_for(t.graph, 2))
    assert any(e.kind == "read" and e.register == "file.irq" for e in rec.events)
    rec2 = RecordingDevice("zcu104", bank_capacity=SMALL_BANK, route_irq=True)
    try:
        with tenants.Accelerator("zcu104", device=rec2) as accel2:
            t2 = accel2.deploy(tiny_graph(7), name="a")
            x = x_for(t2.graph, 2)
            np.testing.assert_array_equal(t2.run_quantized(x)[0][0], golden.run_graph(t2.graph, x)["y"])
    finally:
        rec2.close()
