"""The analytic cycle model: iteration formulas on hand-made instructions,
the token schedule on small programs, and (once the emulation library is
built) the iteration counts against the C-simulation's own counters."""

from __future__ import annotations

import importlib
import types

import numpy as np
import pytest

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.hw import cycle_model as cm
from vfpga.runtime.hw import parameters

U200 = overlay.load("u200")
LAT = parameters.Latencies.of(U200)
Z2 = overlay.load("pynq_z2")
DEP = isa.DEP
PN, PP, SN, SP = DEP["POP_NEXT"], DEP["POP_PREV"], DEP["PUSH_NEXT"], DEP["PUSH_PREV"]


def enc(op, **kw) -> bytes:
    return isa.encode(op, **kw)


def prog(*insns) -> np.ndarray:
    return np.frombuffer(b"".join(insns), np.uint8).reshape(-1, isa.INSN_BYTES)


def mem(op, deps=0, tag=0, h=8, w=8, ch=16, ps=None, y0=0, x0=0, th=4, tw=4, addr=0):
    return enc(op, deps=deps, tag=tag, dram_addr=addr, buf_addr=0, height=h, width=w,
               pixel_stride=ch if ps is None else ps, channels=ch, y0=y0, x0=x0, tile_h=th, tile_w=tw)


def linear(nbytes, deps=0, tag=0):
    return enc("LOAD_LINEAR", deps=deps, tag=tag, dram_addr=0, buf_addr=0, nbytes=nbytes, buffer=isa.BUF_WGT)


def conv(deps=0, tag=0, groups=1, cin_g=16, cout_g=16, oh=4, ow=4, kh=3, kw=3, sh=1, sw=1):
    return enc("CONV", deps=deps, tag=tag, flags=isa.CONV_ACC_INIT | isa.CONV_ACC_FINAL, groups=groups,
               cin_g=cin_g, cout_g=cout_g, out_h=oh, out_w=ow, kh=kh, kw=kw, sh=sh, sw=sw,
               in_h=(oh - 1) * sh + kh, in_w=(ow - 1) * sw + kw, clip_lo=-128, clip_hi=127)


def pool(channels=16, oh=2, ow=3, kh=3, kw=3):
    return enc("POOL", channels=channels, out_h=oh, out_w=ow, kh=kh, kw=kw, sh=1, sw=1, in_h=oh + kh - 1,
               in_w=ow + kw - 1, valid_y1=oh + kh - 1, valid_x1=ow + kw - 1, mult=1 << 30, shift=30,
               clip_lo=-128, clip_hi=127)


def add(length, deps=0, tag=0):
    return enc("ADD", deps=deps, tag=tag, length=length, a_mult=1, b_mult=1, clip_lo=-128, clip_hi=127)


def frame(fid=0, tag=0):
    return enc("FRAME", tag=tag, frame_id=fid, layer=tag)


def marker(op, tag=0):
    return enc(op, tag=tag)


def iters(raw, cfg=U200):
    return cm.insn_iters(isa.decode(raw), cfg)


# ---------------------------------------------------------------- iteration formulas


def test_mem_iterations_dense_and_strided():
    # u200: 64-byte beats
    assert iters(mem("LOAD_TILE", ch=20, th=3, tw=5)) == 3 * 2  # 100 dense bytes per row -> 2 beats
    assert iters(mem("LOAD_TILE", ch=20, ps=40, th=3, tw=5)) == 3 * 5 * 1  # one beat per pixel
    assert iters(mem("SAVE", ch=130, ps=256, th=3, tw=5)) == 3 * 5 * 3
    assert iters(mem("SAVE", ch=64, th=2, tw=7)) == 2 * 7
    # padding pixels count: a tile entirely outside the view still runs its beats
    assert iters(mem("LOAD_TILE", ch=16, y0=-20, x0=-20, th=2, tw=8)) == 2 * 2
    # pynq_z2: 8-byte beats
    assert iters(mem("LOAD_TILE", ch=20, th=3, tw=5), Z2) == 3 * 13
    assert iters(mem("LOAD_TILE", ch=20, ps=24, th=3, tw=5), Z2) == 3 * 5 * 3


def test_linear_add_pool_iterations():
    assert iters(linear(1000)) == 16
    assert iters(linear(64)) == 1
    assert iters(linear(65)) == 2
    assert iters(add(100)) == 7
    assert iters(add(16)) == 1
    assert iters(pool(channels=33)) == 2 * 3 * 9 * 3
    assert iters(pool(channels=16, kh=1, kw=1)) == 2 * 3
    assert iters(add(100), Z2) == 7  # ocp 16


def test_conv_iterations():
    # channel-lane path (cin_g == 1): lanes span all groups' output channels
    assert iters(conv(groups=40, cin_g=1, cout_g=1, oh=4, ow=5)) == 20 * 9 * 3
    assert iters(conv(groups=8, cin_g=1, cout_g=2, oh=4, ow=5)) == 20 * 9 * 1
    assert iters(conv(groups=1, cin_g=1, cout_g=33, oh=1, ow=1, kh=7, kw=7)) == 49 * 3
    # dense path: groups * pixels * taps * ceil(cin_g / icp) * ceil(cout_g / ocp)
    assert iters(conv(groups=2, cin_g=20, cout_g=17, oh=3, ow=3, kh=1, kw=1)) == 2 * 9 * 2 * 2
    assert iters(conv(groups=1, cin_g=64, cout_g=64, oh=7, ow=7, kh=3, kw=3)) == 49 * 9 * 4 * 4
    assert iters(conv(groups=1, cin_g=3, cout_g=64, oh=2, ow=2, kh=11, kw=11, sh=4, sw=4)) == 4 * 121 * 1 * 4
    assert iters(conv(groups=1, cin_g=20, cout_g=9, oh=2, ow=2), Z2) == 4 * 9 * 3 * 1  # icp 8, ocp 16


def test_markers_and_nop_have_no_iterations():
    for op in ("NOP", "FRAME", "BARRIER", "END"):
        assert iters(marker(op)) == 0
    with pytest.raises(ValueError):
        cm.insn_iters({"opcode": "<invalid 77>"}, U200)


def test_geometry_forms_agree():
    raw = conv(groups=1, cin_g=20, cout_g=9, oh=2, ow=2)
    d = isa.decode(raw)
    want = cm.insn_iters(d, U200)
    assert cm.insn_iters(d, {"icp": 16, "ocp": 16, "axi_bytes": 64}) == want
    assert cm.insn_iters(d, types.SimpleNamespace(icp=16, ocp=16, axi_bytes=64)) == want  # e.g. cffi geometry


def random_program(rng, n):
    """Random field values (not necessarily executable) of every opcode."""
    out = []
    for _ in range(n):
        op = int(rng.integers(0, isa.lib.VF_OP_COUNT))
        dt = isa.FORMATS[isa.FORMAT_OF[op]]
        rec = np.zeros((), dt)
        for name in dt.names:
            if name in ("head", "reserved"):
                continue
            info = np.iinfo(dt.fields[name][0])
            rec[name] = rng.integers(max(info.min, -300), min(info.max, 300) + 1)
        rec["head"]["opcode"] = op
        if op in (isa.OPCODES["LOAD_TILE"], isa.OPCODES["SAVE"]) and rng.random() < 0.5:
            rec["pixel_stride"] = rec["channels"]  # exercise the dense branch
        if op == isa.OPCODES["CONV"] and rng.random() < 0.3:
            rec["cin_g"] = 1
        out.append(rec.tobytes())
    return prog(*out)


@pytest.mark.parametrize("cfg", [U200, Z2], ids=["u200", "pynq_z2"])
def test_vectorised_iterations_equal_scalar(cfg):
    p = random_program(np.random.default_rng(11), 600)
    got = cm.program_iters(p, cfg)
    want = [cm.insn_iters(isa.decode(row.tobytes()), cfg) for row in p]
    assert got.tolist() == want


# ---------------------------------------------------------------- per-instruction cycles


def test_compute_cycles_are_iterations_plus_pipeline():
    for raw, depth in ((add(100), LAT.add_depth), (pool(channels=33), LAT.pool_depth),
                       (conv(cin_g=20), LAT.conv_depth(16, False)),
                       (conv(groups=16, cin_g=1, cout_g=1), LAT.conv_depth(16, True))):
        d = isa.decode(raw)
        assert cm.insn_cycles(d, U200) == LAT.unit_issue_cycles + cm.insn_iters(d, U200) + depth - 1
    assert LAT.conv_depth(16, False) == LAT.conv_depth(16, True) + 4  # 4-level adder tree over icp = 16
    assert LAT.conv_depth(8, False) == LAT.conv_depth(8, True) + 3
    for op in ("NOP", "FRAME", "BARRIER", "END"):
        assert cm.insn_cycles(isa.decode(marker(op)), U200) == 0


def with_timing(cfg: dict, **changes) -> dict:
    return {**cfg, "name": cfg["name"] + "+" + ",".join(f"{k}={v}" for k, v in sorted(changes.items())),
            "timing": {**cfg["timing"], **changes}}


def test_the_model_takes_its_latencies_from_the_board_config():
    """Every latency comes from the config's timing section: change one there
    and exactly the instructions whose pipelines hold it change, by that much."""
    p = prog(add(100), pool(channels=33), conv(cin_g=20), linear(6400), mem("SAVE", ch=16))
    base = cycles_of(p)
    assert cycles_of(p, with_timing(U200, div64_latency=LAT.div64_latency + 10)) == [
        base[0], base[1] + 10, base[2], base[3], base[4]]
    assert cycles_of(p, with_timing(U200, unit_issue_cycles=LAT.unit_issue_cycles + 3)) == [c + 3 for c in base]
    assert cycles_of(p, with_timing(U200, dsp_mac_latency=LAT.dsp_mac_latency + 2)) == [
        base[0] + 2, base[1], base[2] + 2, base[3], base[4]]
    assert cycles_of(p, with_timing(U200, axi_register_latency=LAT.axi_register_latency + 1)) == [
        base[0], base[1], base[2], base[3] + 1, base[4] + 1]
    one = prog(frame(), linear(6400), marker("END"))
    slower = with_timing(U200, marker_cycles=LAT.marker_cycles + 5, decode_latency=LAT.decode_latency + 7)
    assert cm.schedule(one, slower).total_cycles == cm.schedule(one, U200).total_cycles + 2 * 5 + 7


def test_memory_cycles_latency_bandwidth_and_bursts():
    lat = U200["ddr"]["burst_latency_cycles"]
    fixed = LAT.unit_issue_cycles + LAT.load_depth - 1
    d = isa.decode(linear(64 * 100))
    assert cm.insn_cycles(d, U200) == fixed + lat + 100  # 19.2 GB/s at 300 MHz = 64 B/cycle = the bus
    # a slower bank than the bus: bandwidth bound
    slow = {**U200, "ddr": {**U200["ddr"], "bank_gbytes_per_s": 9.6}}
    assert cm.insn_cycles(d, slow) == fixed + lat + 200
    # pynq_z2: 8-byte bus under a 42 B/cycle port: beats bound
    lat_z2 = Z2["ddr"]["burst_latency_cycles"]
    assert cm.insn_cycles(isa.decode(linear(800)), Z2) == fixed + lat_z2 + 100
    # one short burst per pixel: at most 16 in flight, each waiting lat cycles
    strided = isa.decode(mem("LOAD_TILE", ch=16, ps=64, th=4, tw=8))
    assert cm.insn_iters(strided, U200) == 32
    assert cm.insn_cycles(strided, U200) == fixed + lat + (-(-32 * lat // LAT.axi_outstanding) - lat)
    # a tile entirely in the padding never touches DDR: beats only, no latency
    pad = isa.decode(mem("LOAD_TILE", ch=64, y0=-9, th=2, tw=3))
    assert cm.insn_cycles(pad, U200) == fixed + 6
    save = isa.decode(mem("SAVE", ch=64, th=2, tw=3))
    assert cm.insn_cycles(save, U200) == LAT.unit_issue_cycles + LAT.save_depth - 1 + lat + 6


def test_program_cycles_match_insn_cycles():
    p = random_program(np.random.default_rng(12), 300)
    slow = {**U200, "ddr": {**U200["ddr"], "bank_gbytes_per_s": 9.6}}  # the bandwidth term binds too
    for cfg in (U200, slow):
        got = cm.program_cycles(p, cfg)
        want = [cm.insn_cycles(isa.decode(row.tobytes()), cfg) for row in p]
        assert got.tolist() == want


def test_seconds():
    assert cm.seconds(300_000_000, U200) == pytest.approx(1.0)
    assert cm.seconds(100, Z2) == pytest.approx(1e-6)


# ---------------------------------------------------------------- schedule


def cycles_of(p, cfg=U200):
    return cm.program_cycles(p, cfg).tolist()


def test_double_buffered_loads_overlap_compute():
    # chunk k+1 loads into the other half while chunk k computes (lower.py's pattern)
    p = prog(
        frame(),
        linear(64 * 300, deps=SN),  # 1: chunk 0
        linear(64 * 300, deps=SN),  # 2: chunk 1
        conv(deps=PP | SP, cin_g=64, cout_g=64, oh=8, ow=8),  # 3: chunk 0, frees half 0
        linear(64 * 300, deps=PN | SN),  # 4: chunk 2 waits for half 0
        conv(deps=PP | SP, cin_g=64, cout_g=64, oh=8, ow=8),  # 5
        conv(deps=PP | SN, cin_g=64, cout_g=64, oh=8, ow=8),  # 6: last chunk hands OBUF to save
        mem("SAVE", deps=PP, ch=64, th=8, tw=8),  # 7
        marker("END"),
    )
    s = cm.schedule(p, U200)
    c = cycles_of(p)
    tok = LAT.token_latency
    t0 = cm.fetch_cycles(9, U200) + LAT.marker_cycles
    e1 = t0 + c[1]
    e2 = e1 + c[2]
    s3 = e1 + tok
    e3 = s3 + c[3]
    s4 = max(e2, e3 + tok)
    e4 = s4 + c[4]
    s5 = max(e3, e2 + tok)
    e5 = s5 + c[5]
    s6 = max(e5, e4 + tok)
    e6 = s6 + c[6]
    e7 = e6 + tok + c[7]
    assert s.start[1:8].tolist() == [t0, e1, s3, s4, s5, s6, e6 + tok]
    assert s.end[1:8].tolist() == [e1, e2, e3, e4, e5, e6, e7]
    assert s.total_cycles == e7 + LAT.marker_cycles
    assert s.start[2] < s.end[3] and s.start[3] < s.end[2]  # load 1 runs during conv 0
    assert s.total_cycles < t0 + sum(c) + LAT.marker_cycles
    assert s.busy == {"load": c[1] + c[2] + c[4], "compute": c[3] + c[5] + c[6], "save": c[7]}


def test_strict_token_chain_does_not_overlap():
    # every instruction waits for the one before it, across all three units
    p = prog(
        frame(),
        linear(6400, deps=SN),  # 1
        conv(deps=PP | SN),  # 2: after 1
        mem("SAVE", deps=PP | SP, ch=16),  # 3: after 2
        conv(deps=PN | SP),  # 4: after 3 (OBUF free)
        linear(6400, deps=PN | SN),  # 5: after 4 (buffer free)
        conv(deps=PP | SN),  # 6: after 5
        mem("SAVE", deps=PP, ch=16),  # 7: after 6
        marker("END"),
    )
    s = cm.schedule(p, U200)
    c = cycles_of(p)
    t0 = cm.fetch_cycles(9, U200) + LAT.marker_cycles
    assert s.start[1] == t0
    for k in range(2, 8):
        assert s.start[k] == s.end[k - 1] + LAT.token_latency
    assert s.total_cycles == t0 + sum(c) + 6 * LAT.token_latency + LAT.marker_cycles


def test_units_without_tokens_run_concurrently():
    body = [linear(64 * 500), linear(64 * 100), conv(), add(1600), mem("SAVE", ch=16)]
    p = prog(frame(), *body, marker("END"))
    s = cm.schedule(p, U200)
    c = cycles_of(p)
    t0 = cm.fetch_cycles(7, U200) + LAT.marker_cycles
    assert s.total_cycles == t0 + max(c[1] + c[2], c[3] + c[4], c[5]) + LAT.marker_cycles
    assert s.start[3] == s.start[1] == s.start[5] == t0


def test_barrier_and_frame_drain_all_units():
    body = [linear(64 * 2000), conv(cin_g=16, cout_g=16, oh=2, ow=2)]
    together = cm.schedule(prog(frame(), *body, *body, marker("END")), U200)
    c = cycles_of(prog(*body))
    for sep in (marker("BARRIER"), frame(1)):
        p = prog(frame(), *body, sep, *body, marker("END"))
        s = cm.schedule(p, U200)
        # nothing after the separator starts before everything before it finished
        assert s.start[4:6].min() >= s.end[1:3].max() + cm.fetch_cycles(3, U200)
        assert s.total_cycles > together.total_cycles
        assert s.busy["load"] == 2 * c[0]
    # the compute of the second half waits for the first load only inside one step
    assert together.start[4] < together.end[3]


def test_frame_resets_token_queues():
    # the token pushed in frame 0 is gone in frame 1: the core deadlocks there
    p = prog(frame(0), linear(64, deps=SN), frame(1), conv(deps=PP), marker("END"))
    with pytest.raises(cm.DeadlockError) as e:
        cm.schedule(p, U200)
    assert e.value.insn == 3


def test_deadlock_names_the_lowest_blocked_instruction():
    p = prog(frame(), conv(deps=PP, tag=5), marker("END"))
    with pytest.raises(cm.DeadlockError, match=r"instruction 1 \(CONV, tag 5\)") as e:
        cm.schedule(p, U200)
    assert e.value.insn == 1
    # a cycle: load waits for compute, compute for load
    p = prog(frame(), add(16), linear(64, deps=PN | SN), conv(deps=PP | SP), marker("END"))
    with pytest.raises(cm.DeadlockError, match="instruction 2 \\(LOAD_LINEAR") as e:
        cm.schedule(p, U200)
    assert e.value.insn == 2


def test_bad_programs_are_reported():
    with pytest.raises(cm.ScheduleError, match="deps"):
        cm.schedule(prog(linear(64, deps=PP), marker("END")), U200)  # load has no prev
    with pytest.raises(cm.ScheduleError, match="deps"):
        cm.schedule(prog(mem("SAVE", deps=SN), marker("END")), U200)  # save has no next
    bad = bytearray(marker("NOP"))
    bad[0] = 42
    with pytest.raises(cm.ScheduleError, match="unknown opcode"):
        cm.schedule(prog(frame(), bytes(bad)), U200)
    # ...but nothing after END is looked at, and markers ignore their deps
    s = cm.schedule(prog(enc("FRAME", deps=0xFF), linear(64), marker("END"), bytes(bad)), U200)
    assert s.start[3] == -1 and s.end[3] == -1


def test_stream_without_end_and_nops():
    p = prog(linear(640), marker("NOP"), add(16))
    s = cm.schedule(p, U200)
    c = cycles_of(p)
    t0 = cm.fetch_cycles(3, U200)
    assert s.start[1] == s.end[1] == t0
    assert s.total_cycles == t0 + max(c[0], c[2])
    assert len(s.steps) == 1 and not s.steps["frame"][0]
    assert cm.schedule(np.zeros((0, 64), np.uint8), U200).total_cycles == 0


def test_per_frame_and_per_layer_cycles():
    frames = []
    for layer, n in ((3, 2), (7, 3)):
        for f in range(n):
            frames.append(prog(frame(f, layer), linear(64 * 40 * (f + 1), deps=SN, tag=layer),
                               add(256, deps=PP | SN, tag=layer), mem("SAVE", deps=PP, tag=layer, ch=16)))
        frames.append(prog(marker("BARRIER", tag=layer)))
    p = np.concatenate(frames + [prog(marker("END", tag=7))])
    s = cm.schedule(p, U200)
    assert s.frame_cycles.size == 5
    assert s.steps["frame_id"][s.steps["frame"]].tolist() == [0, 1, 0, 1, 2]
    assert s.steps["cycles"].sum() == s.total_cycles
    assert s.layer_cycles.keys() == {3, 7}
    assert sum(s.layer_cycles.values()) == s.total_cycles
    assert s.frame_cycles[1] > s.frame_cycles[0]  # bigger load
    assert (np.diff(s.steps["start"]) == s.steps["cycles"][:-1]).all()
    assert 0 < s.utilisation()["load"] < 1


def test_schedule_of_a_large_program():
    # 10^5 instructions, the size of a real model's program (a tight loop: a fraction of a second)
    unit = [frame(), linear(640, deps=SN), linear(640, deps=SN), conv(deps=PP | SP),
            linear(640, deps=PN | SN), conv(deps=PP | SN), mem("SAVE", deps=PP, ch=16)]
    p = prog(*(unit * (100_000 // len(unit))), marker("END"))
    s = cm.schedule(p, U200)
    assert len(s.steps) == 100_000 // len(unit)


# ---------------------------------------------------------------- against the C-simulation

EMU_BOARDS = ["u200", "pynq_z2"]


def emu_module(board):
    try:
        return importlib.import_module(f"vfpga.driver._emu_{board}")
    except ImportError as e:  # the cffi module is built by `pip install -e .` from hls/cnn_core.cpp
        pytest.skip(f"emulation library vfpga.driver._emu_{board} is not built ({e})")


class Core:
    """One C-simulated CNN core with its own on-chip buffers."""

    def __init__(self, board):
        self.mod = emu_module(board)
        ffi, lib = self.mod.ffi, self.mod.lib
        self.ffi, self.lib = ffi, lib
        self.geo = ffi.new("vf_cnn_geometry_t *")
        lib.vf_cnn_core_geometry(self.geo)
        g = self.geo
        self._keep = [ffi.new("int8_t[]", g.ibuf_bytes), ffi.new("int8_t[]", g.wbuf_bytes),
                      ffi.new("int32_t[]", g.acc_words), ffi.new("int8_t[]", g.obuf_bytes),
                      ffi.new("int32_t[]", g.param_entries * isa.PARAM_ENTRY_WORDS)]
        self.bufs = ffi.new("vf_cnn_buffers_t *")
        self.bufs.ibuf, self.bufs.wbuf, self.bufs.acc, self.bufs.obuf, self.bufs.param = self._keep

    def run(self, seg: np.ndarray, n_insns: int):
        ffi, lib = self.ffi, self.lib
        state = ffi.new("vf_cnn_state_t *")
        counters = ffi.new("vf_cnn_counters_t *")
        iters = ffi.new("uint32_t[]", max(n_insns, 1))
        segp = ffi.from_buffer("int8_t[]", seg)
        for _ in range(n_insns + 2):
            r = lib.vf_cnn_core_step(segp, seg.size, 0, n_insns, self.bufs, state, counters, iters)
            if r != lib.VF_STEP_FRAME:
                break
        got = np.frombuffer(ffi.buffer(iters), np.uint32)[:n_insns].astype(np.int64)
        return r, state, counters, got


def executable_program(rng, geo, n, data_off, data_len, param_off, param_entries):
    """A random program of every instruction type that executes without a fault
    on a core of geometry geo (segment data at [data_off, data_off + data_len),
    valid PARAM entries at param_off)."""
    ib, wb, ob, acc_w, pe = geo.ibuf_bytes, geo.wbuf_bytes, geo.obuf_bytes, geo.acc_words, geo.param_entries
    word = isa.conv_word_bytes(geo.icp, geo.ocp)  # CONV weights start on a beat word
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    kinds = ["LOAD_TILE", "LOAD_TILE_DENSE", "SAVE", "SAVE_DENSE", "SAVE_STEP", "SAVE_DENSE_STEP", "LOAD_LINEAR",
             "LOAD_PARAM", "CONV", "CONV_DW", "POOL", "ADD", "LUT", "LUT_OBUF", "MUL", "MUL_BCAST", "NOP", "FRAME",
             "BARRIER"]
    insns = []
    for i in range(n - 1):
        kind = kinds[i % len(kinds)] if i < len(kinds) else kinds[r(0, len(kinds) - 1)]
        if kind.startswith(("LOAD_TILE", "SAVE")):
            save = kind.startswith("SAVE")
            ch = r(1, 150)
            ps = ch if "DENSE" in kind else ch + r(1, 40)
            h, w = r(1, 16), r(1, 16)
            sy, sx = (r(0, 3), r(2, 3)) if kind.endswith("STEP") else (0, 0)
            if save:
                th, tw = r(1, (h - 1) // max(sy, 1) + 1), r(1, (w - 1) // max(sx, 1) + 1)
                y0, x0 = r(0, h - 1 - (th - 1) * max(sy, 1)), r(0, w - 1 - (tw - 1) * max(sx, 1))
            else:
                th, tw = r(1, 12), r(1, 12)
                y0, x0 = r(-4, h), r(-4, w)
            buf = ob if save else ib
            while th * tw * ch > buf:
                th = max(1, th // 2)
                tw = max(1, tw // 2)
            addr = data_off + r(0, data_len - h * w * ps)
            insns.append(isa.encode("SAVE" if save else "LOAD_TILE", dram_addr=addr,
                                    buf_addr=r(0, buf - th * tw * ch), height=h, width=w, pixel_stride=ps,
                                    channels=ch, y0=y0, x0=x0, tile_h=th, tile_w=tw, step_y=sy, step_x=sx,
                                    **({} if save else {"pad_value": r(-128, 127)})))
        elif kind == "LOAD_LINEAR":
            nb = r(1, min(wb, 5000))
            axi = geo.axi_bytes  # a WBUF run starts on a bus word (hls/include/vfpga_isa.h, LOAD_LINEAR)
            insns.append(isa.encode("LOAD_LINEAR", dram_addr=data_off + r(0, data_len - nb),
                                    buf_addr=axi * r(0, (wb - nb) // axi), nbytes=nb, buffer=isa.BUF_WGT))
        elif kind == "LOAD_PARAM":
            k = r(1, min(pe, param_entries))
            insns.append(isa.encode("LOAD_LINEAR", dram_addr=param_off, buf_addr=4 * 3 * r(0, pe - k),
                                    nbytes=k * 12, buffer=isa.BUF_PARAM))
        elif kind.startswith("CONV"):
            while True:
                groups = r(1, 40) if kind == "CONV_DW" else r(1, 3)
                cin_g = 1 if kind == "CONV_DW" else r(2, 40)
                cout_g = r(1, 3) if kind == "CONV_DW" else r(1, 40)
                kh, kw, sh, sw = r(1, 11), r(1, 5), r(1, 4), r(1, 3)
                oh, ow = r(1, 6), r(1, 6)
                ih, iw = (oh - 1) * sh + kh + r(0, 2), (ow - 1) * sw + kw + r(0, 2)
                ict, oct_ = groups * cin_g, groups * cout_g
                in_len, out_len = ih * iw * ict, oh * ow * oct_
                w_len = isa.conv_weight_bytes(groups, cin_g, cout_g, kh, kw, geo.icp, geo.ocp)
                if in_len <= ib and w_len <= wb and out_len <= min(ob, acc_w) and oct_ <= pe:
                    break
            insns.append(isa.encode(
                "CONV", flags=r(0, 3), in_addr=r(0, ib - in_len), wgt_addr=word * r(0, (wb - w_len) // word),
                out_addr=r(0, ob - out_len), acc_addr=r(0, acc_w - out_len), param_addr=r(0, pe - oct_),
                in_h=ih, in_w=iw, out_h=oh, out_w=ow, groups=groups, cin_g=cin_g, cout_g=cout_g, kh=kh, kw=kw,
                sh=sh, sw=sw, out_zp=r(-128, 127), clip_lo=-128, clip_hi=127))
        elif kind == "POOL":
            c = r(1, 70)
            kh, kw, sh, sw = r(1, 7), r(1, 7), r(1, 3), r(1, 3)
            oh, ow = r(1, 5), r(1, 5)
            ih, iw = (oh - 1) * sh + kh, (ow - 1) * sw + kw
            y0, x0 = r(0, ih), r(0, iw)
            insns.append(isa.encode(
                "POOL", flags=r(0, 3), in_addr=r(0, ib - ih * iw * c), out_addr=r(0, ob - oh * ow * c),
                mult=r(-(1 << 31), (1 << 31) - 1), in_h=ih, in_w=iw, out_h=oh, out_w=ow, channels=c, kh=kh,
                kw=kw, sh=sh, sw=sw, valid_y0=y0, valid_y1=r(y0, ih), valid_x0=x0, valid_x1=r(x0, iw),
                shift=r(0, 30), in_zp=r(-128, 127), out_zp=r(-128, 127), clip_lo=-128, clip_hi=127))
        elif kind == "ADD":
            n_el = r(1, 3000)
            insns.append(isa.encode(
                "ADD", a_addr=r(0, ib - n_el), b_addr=r(0, ib - n_el), out_addr=r(0, ob - n_el), length=n_el,
                a_mult=r(-(1 << 31), (1 << 31) - 1), b_mult=r(-(1 << 31), (1 << 31) - 1), shift=r(0, 62),
                a_zp=r(-128, 127), b_zp=r(-128, 127), out_zp=r(-128, 127), clip_lo=-128, clip_hi=127))
        elif kind.startswith("LUT"):
            n_el = r(1, 3000)
            src = ob if kind == "LUT_OBUF" else ib
            at = r(0, ob - n_el)
            insns.append(isa.encode(
                "LUT", flags=isa.LUT_SRC_OBUF if kind == "LUT_OBUF" else 0,
                in_addr=at if kind == "LUT_OBUF" else r(0, src - n_el), out_addr=at,
                table_addr=r(0, wb - isa.LUT_ENTRIES), length=n_el))
        elif kind.startswith("MUL"):
            c, px = r(1, 300), r(1, 40)
            bc = kind == "MUL_BCAST"
            insns.append(isa.encode(
                "MUL", flags=isa.MUL_BCAST if bc else 0, a_addr=r(0, ib - px * c),
                b_addr=r(0, ib - (c if bc else px * c)), out_addr=r(0, ob - px * c), pixels=px, channels=c,
                mult=r(-(1 << 31), (1 << 31) - 1), shift=r(0, 62), a_zp=r(-128, 127), b_zp=r(-128, 127),
                out_zp=r(-128, 127), clip_lo=-128, clip_hi=127))
        elif kind == "FRAME":
            insns.append(isa.encode("FRAME", frame_id=i, layer=r(0, 9)))
        else:
            insns.append(isa.encode(kind))
    insns.append(isa.encode("END"))
    return b"".join(insns)


@pytest.mark.parametrize("board", EMU_BOARDS)
def test_iterations_match_the_c_simulation(board):
    core = Core(board)
    geo = core.geo
    rng = np.random.default_rng(13)
    n = 400
    param_entries = 256
    data_off = n * isa.INSN_BYTES
    param_off = data_off
    data_len = 1 << 16
    seg = rng.integers(-128, 128, size=data_off + param_entries * 12 + data_len, dtype=np.int64).astype(np.int8)
    params = np.stack([rng.integers(-(1 << 31), 1 << 31, param_entries), rng.integers(-(1 << 31), 1 << 31,
                       param_entries), rng.integers(0, 63, param_entries)], axis=1).astype("<i4")
    seg[param_off:param_off + params.nbytes] = params.view(np.int8).ravel()
    raw = executable_program(rng, geo, n, data_off + params.nbytes, data_len, param_off, param_entries)
    seg[:data_off] = np.frombuffer(raw, np.int8)

    r, state, counters, got = core.run(seg, n)
    assert state.fault == 0, (f"C-sim fault {isa.FAULT_NAMES.get(state.fault)} at instruction {state.fault_insn} "
                              f"({isa.decode(raw[64 * state.fault_insn:64 * state.fault_insn + 64])}), "
                              f"fault_addr {state.fault_addr}")
    assert r == core.lib.VF_STEP_END
    p = np.frombuffer(raw, np.uint8).reshape(n, isa.INSN_BYTES)
    opnames = {isa.OPCODE_NAMES[o] for o in p[:, 0]}
    assert opnames == set(isa.OPCODES), f"program misses {set(isa.OPCODES) - opnames}"
    model = cm.program_iters(p, geo)  # the library's own geometry
    assert (model == cm.program_iters(p, overlay.load(board))).all()
    mismatch = np.flatnonzero(np.minimum(model, 0xFFFFFFFF) != got)
    assert mismatch.size == 0, [(int(i), isa.decode(p[i].tobytes())["opcode"], int(model[i]), int(got[i]))
                                for i in mismatch[:5]]
    assert counters.insns == n
    # per-unit sums and DDR traffic agree with the C-sim's counters too
    dec = cm._decode(p, cm._geometry(geo))
    unit = cm._UNIT_OF[p[:, 0]]
    assert counters.load_iters == model[unit == cm.LOAD].sum()
    assert counters.compute_iters == model[unit == cm.COMPUTE].sum()
    assert counters.save_iters == model[unit == cm.SAVE].sum()
    assert counters.load_bytes == dec.ddr_bytes[unit == cm.LOAD].sum()
    assert counters.save_bytes == dec.ddr_bytes[unit == cm.SAVE].sum()


@pytest.mark.parametrize("program, blocked", [
    ([frame(), conv(deps=PP), marker("END")], 1),
    ([frame(), add(16), linear(64, deps=PN | SN), conv(deps=PP | SP), marker("END")], 2),
    ([frame(0), linear(64, deps=SN), frame(1), conv(deps=PP), marker("END")], 3),
])
def test_deadlocks_match_the_c_simulation(program, blocked):
    core = Core("u200")
    with pytest.raises(cm.DeadlockError) as e:
        cm.schedule(prog(*program), U200)
    assert e.value.insn == blocked
    raw = b"".join(program)
    seg = np.zeros(len(raw) + 4096, np.int8)
    seg[:len(raw)] = np.frombuffer(raw, np.int8)
    _, state, _, _ = core.run(seg, len(program))
    assert state.fault == isa.FAULTS["DEADLOCK"] and state.fault_insn == blocked
