"""CnnCore (the board driver) and Segment running hand-encoded programs on the
emulated device, which executes the HLS C++ of the core."""

import threading

import numpy as np
import pytest

from vfpga import overlay
from vfpga.driver import isa
from vfpga.driver.cnn_core import VLNV, CnnCore, cores
from vfpga.driver.segment import Segment, SegmentBoundsError

H, W, C = 4, 4, 16  # the test tensor: HWC int8
SEG_BYTES = 64 << 10
# segment layout (offsets)
INSNS, INPUT, WEIGHTS, PARAMS, OUTPUT = 0x0, 0x1000, 0x2000, 0x3000, 0x4000
DEP = isa.DEP
GEO = overlay.load("u200")["cnn_core"]  # the emulated_device fixture's board
WEIGHT_BYTES = isa.conv_weight_bytes(1, C, C, 1, 1, GEO["icp"], GEO["ocp"])  # beat-major words


def _tile(opcode, dram_addr, **extra):
    return isa.encode(opcode, dram_addr=dram_addr, buf_addr=0, height=H, width=W, pixel_stride=C,
                      channels=C, y0=0, x0=0, tile_h=H, tile_w=W, **extra)


def conv1x1_program(save_addr=OUTPUT, extra_save=None, wgt_addr=0):
    """LOAD weights/params/input, a 1x1 CONV, SAVE, END."""
    prog = [
        isa.encode("LOAD_LINEAR", dram_addr=WEIGHTS, buf_addr=0, nbytes=WEIGHT_BYTES, buffer=isa.BUF_WGT),
        isa.encode("LOAD_LINEAR", dram_addr=PARAMS, buf_addr=0, nbytes=C * 4 * isa.PARAM_ENTRY_WORDS,
                   buffer=isa.BUF_PARAM),
        _tile("LOAD_TILE", INPUT, deps=DEP["PUSH_NEXT"]),
        isa.encode("CONV", deps=DEP["POP_PREV"] | DEP["PUSH_NEXT"],
                   flags=isa.CONV_ACC_INIT | isa.CONV_ACC_FINAL,
                   in_addr=0, wgt_addr=wgt_addr, out_addr=0, acc_addr=0, param_addr=0, in_h=H, in_w=W,
                   out_h=H, out_w=W, groups=1, cin_g=C, cout_g=C, kh=1, kw=1, sh=1, sw=1,
                   out_zp=0, clip_lo=-128, clip_hi=127),
        _tile("SAVE", save_addr, deps=DEP["POP_PREV"]),
    ]
    if extra_save is not None:
        prog.append(_tile("SAVE", extra_save))
    prog.append(isa.encode("END"))
    return b"".join(prog)


def load_conv1x1(seg, seed):
    """Writes a 1x1-conv problem into ``seg``: output channel o is input
    channel (o + 1) % C plus bias o (a permutation, so channel order is checked)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-100, 100, size=(H, W, C), dtype=np.int8)
    wgt = np.zeros((C, C), dtype=np.int8)  # [o][i] (kh = kw = 1)
    wgt[np.arange(C), (np.arange(C) + 1) % C] = 1
    params = np.zeros((C, isa.PARAM_ENTRY_WORDS), dtype="<i4")
    params[:, 0] = np.arange(C)  # bias
    params[:, 1] = 1  # mult
    params[:, 2] = 0  # shift
    seg.write(INPUT, x)
    seg.write(WEIGHTS, isa.pack_conv_weights(wgt.reshape(C, 1, 1, C), 1, GEO["icp"], GEO["ocp"]))
    seg.write(PARAMS, params)
    return np.clip(x[:, :, (np.arange(C) + 1) % C].astype(int) + np.arange(C), -128, 127).astype(np.int8)


def prepare(dev, bank, seed, **program):
    seg = Segment(SEG_BYTES, bank=bank, device=dev)
    prog = conv1x1_program(**program)
    seg.write(INSNS, prog)
    expect = load_conv1x1(seg, seed)
    seg.sync_to_device()
    return seg, len(prog) // isa.INSN_BYTES, expect


def output_of(seg):
    seg.sync_from_device(OUTPUT, H * W * C)
    return seg.read(OUTPUT, H * W * C).view(np.int8).reshape(H, W, C)


# ---- binding ------------------------------------------------------------------------
def test_vlnv_is_the_configs_and_cores_bind_through_pynq(emulated_device):
    assert {overlay.load(b)["cnn_core"]["vlnv"] for b in overlay.available()} == {VLNV}
    found = cores(emulated_device)
    assert len(found) == emulated_device.config["cnn_core"]["count"]
    assert all(type(c) is CnnCore for c in found)
    assert [c.mmio.base_addr for c in found] == sorted(c.mmio.base_addr for c in found)
    assert [c.bank for c in found] == emulated_device.config["cnn_core"]["banks"]
    assert found[0].idle


def test_hwh_style_register_names_are_accepted(emulated_device):
    """A Vitis HLS .hwh spells the block registers CTRL/GIER/IP_IER/IP_ISR and
    splits 64-bit arguments into <name>_1/<name>_2."""
    desc = dict(emulated_device.ip_dict["cnn_core_0"])
    regs = {}
    for name, reg in desc["registers"].items():
        alias = {"ctrl": "CTRL", "gie": "GIER", "ier": "IP_IER", "isr": "IP_ISR"}.get(name)
        if alias:
            regs[alias] = reg
        elif reg["size"] == 64:
            regs[f"{name}_1"] = {**reg, "size": 32}
            regs[f"{name}_2"] = {**reg, "size": 32, "address_offset": reg["address_offset"] + 4}
        else:
            regs[name] = reg
    core = CnnCore({**desc, "registers": regs})
    with Segment(4096, bank=0, device=emulated_device) as seg:
        seg.write(INSNS, isa.encode("END"))
        seg.sync_to_device(INSNS, isa.INSN_BYTES)
        res = core.run(seg.physical_address, seg.size, INSNS, 1)
    assert res.ok and res.insns == 1


# ---- programs ---------------------------------------------------------------------
def test_conv1x1_program_computes_in_ddr(emulated_device):
    dev = emulated_device
    core = cores(dev)[0]
    seg, n, expect = prepare(dev, core.bank, seed=0)
    with seg:
        res = core.run(seg.physical_address, seg.size, INSNS, n)
        assert res.ok and res.fault_name == "NONE"
        assert res.insns == n
        # the bytes in device memory, read directly
        ddr = dev.ddr_view(seg.physical_address + OUTPUT, H * W * C).view(np.int8).reshape(H, W, C)
        np.testing.assert_array_equal(ddr, expect)
        np.testing.assert_array_equal(output_of(seg), expect)
        # the emulator's run record agrees with the registers
        rec = dev.last_run(0)
        assert rec.ended and rec.steps >= 1
        for name in ("insns", "load_iters", "compute_iters", "save_iters"):
            assert rec.counters[name] == getattr(res, name)
        ops = isa.opcodes_of(np.frombuffer(conv1x1_program(), np.uint8))
        loads = np.isin(ops, [isa.OPCODES["LOAD_TILE"], isa.OPCODES["LOAD_LINEAR"]])
        assert rec.iters.sum(where=loads) == res.load_iters > 0
        assert rec.iters[ops == isa.OPCODES["CONV"]].sum() == res.compute_iters > 0
        assert rec.iters[ops == isa.OPCODES["SAVE"]].sum() == res.save_iters > 0


@pytest.mark.parametrize("wgt_addr", [GEO["icp"] * GEO["ocp"] // 2, 1, 0xFFFFFFFF])
def test_conv_weights_off_their_word_fault_on_the_field(emulated_device, wgt_addr):
    """CONV weights start on a beat word (ICP x OCP bytes): anything else is
    VF_FAULT_FIELD naming wgt_addr (even where the range is also outside
    WBUF), and the CONV writes nothing."""
    dev = emulated_device
    core = cores(dev)[0]
    seg, n, _ = prepare(dev, core.bank, seed=4, wgt_addr=wgt_addr)
    seg.write(OUTPUT, np.full(H * W * C, 0x5A, np.uint8))
    seg.sync_to_device()
    with seg:
        res = core.run(seg.physical_address, seg.size, INSNS, n)
        assert res.fault_name == "FIELD"
        assert isa.decode(conv1x1_program()[res.fault_insn * isa.INSN_BYTES:][:isa.INSN_BYTES])["opcode"] == "CONV"
        assert res.fault_addr == isa.FORMATS["conv"].fields["wgt_addr"][1]
        seg.sync_from_device(OUTPUT, H * W * C)
        assert (seg.read(OUTPUT, H * W * C) == 0x5A).all()


@pytest.mark.parametrize("where", ["straddles_limit", "far_outside"])
def test_save_outside_segment_faults_and_touches_nothing_outside(emulated_device, where):
    dev = emulated_device
    core = cores(dev)[0]
    bank = dev.bank_array(core.bank)
    filler = dev.allocate((3 * SEG_BYTES,), np.uint8, bank=core.bank)  # memory before the segment
    bad = SEG_BYTES - 128 if where == "straddles_limit" else 0xFFFF0000
    seg, n, expect = prepare(dev, core.bank, seed=2, extra_save=bad)
    with seg:
        # random bank contents around the segment make any stray write visible
        rng = np.random.default_rng(3)
        lo = seg.physical_address - dev.banks[core.bank].base_address
        hi = lo + seg.size
        bank[:lo] = rng.integers(0, 256, lo, dtype=np.uint8)
        bank[hi:] = rng.integers(0, 256, bank.size - hi, dtype=np.uint8)
        before = bank.copy()
        others = [dev.bank_array(b).copy() for b in range(len(dev.banks)) if b != core.bank]

        res = core.run(seg.physical_address, seg.size, INSNS, n)

        assert res.fault == isa.FAULTS["SEGMENT"] and res.fault_name == "SEGMENT"
        assert res.fault_insn == n - 2  # the extra SAVE, right before END
        assert res.fault_addr == (SEG_BYTES if where == "straddles_limit" else bad)
        np.testing.assert_array_equal(bank[:lo], before[:lo])
        np.testing.assert_array_equal(bank[hi:], before[hi:])
        assert all((dev.bank_array(b) == o).all()
                   for b, o in zip((b for b in range(len(dev.banks)) if b != core.bank), others))
        # the in-segment SAVE before the fault did complete
        np.testing.assert_array_equal(output_of(seg), expect)
        rec = dev.last_run(0)
        assert not rec.ended and rec.fault_addr == res.fault_addr
    filler.freebuffer()


def test_two_cores_on_different_banks_run_independently(emulated_device):
    dev = emulated_device
    all_cores = cores(dev)
    a = all_cores[0]
    b = next(c for c in all_cores if c.bank != a.bank)
    seg_a, n_a, expect_a = prepare(dev, a.bank, seed=10)
    seg_b, n_b, expect_b = prepare(dev, b.bank, seed=11, extra_save=0xFFFF0000)  # b faults
    results = {}

    def go(core, seg, n):
        results[core.name] = core.run(seg.physical_address, seg.size, INSNS, n)

    threads = [threading.Thread(target=go, args=args) for args in ((a, seg_a, n_a), (b, seg_b, n_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[a.name].ok
    assert results[b.name].fault_name == "SEGMENT"
    np.testing.assert_array_equal(output_of(seg_a), expect_a)
    np.testing.assert_array_equal(output_of(seg_b), expect_b)  # its good SAVE ran
    assert a.idle and b.idle
    seg_a.free()
    seg_b.free()


def test_core_cannot_use_a_segment_in_another_bank(emulated_device):
    all_cores = cores(emulated_device)
    a = all_cores[0]
    other = next(c.bank for c in all_cores if c.bank != a.bank)
    seg, n, _ = prepare(emulated_device, other, seed=4)
    with seg:
        res = a.run(seg.physical_address, seg.size, INSNS, n)
    assert res.fault_name == "SEGMENT" and res.insns == 0


def test_wait_times_out_with_a_clear_error(emulated_device):
    core = cores(emulated_device)[1]
    with pytest.raises(TimeoutError, match="cnn_core_1: no ap_done"):
        core.wait(timeout_s=0.01)  # never started


def test_start_rejects_values_that_do_not_fit(emulated_device):
    core = cores(emulated_device)[0]
    with pytest.raises(ValueError, match="seg_limit"):
        core.start(0, 1 << 32, 0, 1)


# ---- Segment ----------------------------------------------------------------------------
def test_segment_syncs_only_the_given_range(emulated_device):
    dev = emulated_device
    with Segment(8192, bank=2, device=dev) as seg:
        assert seg.physical_address % 4096 == 0
        assert seg.physical_address == dev.banks[2].base_address
        ddr = dev.ddr_view(seg.physical_address, seg.size)
        seg.write(100, b"\x01\x02\x03\x04")
        seg.write(200, np.array([7, 8], dtype="<u2"))
        assert not ddr.any()
        seg.sync_to_device(100, 4)
        assert list(ddr[100:104]) == [1, 2, 3, 4] and not ddr[200:204].any()
        seg.sync_to_device()
        assert list(ddr[200:204]) == [7, 0, 8, 0]
        ddr[300:302] = 9
        assert list(seg.read(300, 2)) == [0, 0]
        seg.sync_from_device(301, 1)
        assert list(seg.read(300, 2)) == [0, 9]
    assert seg.freed and dev.banks[2].free_bytes == dev.banks[2].size


def test_segment_sync_is_the_pynq_buffer_slice_sync(emulated_device, monkeypatch):
    """Segment syncs a range by calling the device's flush / invalidate with what
    PynqBuffer.sync_to_device / sync_from_device of that slice pass (the board path)."""
    calls = []
    for op in ("flush", "invalidate"):
        monkeypatch.setattr(emulated_device, op, lambda *a, op=op: calls.append((op, *a)))
    with Segment(8192, bank=1, device=emulated_device) as seg:
        for offset, n in ((0, 8192), (100, 4), (4095, 2), (8000, 192)):
            seg.sync_to_device(offset, n)
            seg._buf[offset:offset + n].sync_to_device()
            seg.sync_from_device(offset, n)
            seg._buf[offset:offset + n].sync_from_device()
            ours_to, pynq_to, ours_from, pynq_from = calls[-4:]
            assert ours_to == pynq_to and ours_to[0] == "flush" and ours_to[-1] == n
            assert ours_from == pynq_from and ours_from[0] == "invalidate"


def test_segment_bounds_and_lifetime(emulated_device):
    seg = Segment(4096, device=emulated_device)
    with pytest.raises(SegmentBoundsError, match=r"\[4095, 4097\)"):
        seg.write(4095, b"ab")
    with pytest.raises(SegmentBoundsError):
        seg.read(-1, 1)
    with pytest.raises(SegmentBoundsError):
        seg.sync_to_device(4097)
    with pytest.raises(SegmentBoundsError):
        seg.sync_from_device(0, 4097)
    seg.sync_to_device(4096)  # empty range at the end: nothing to do
    with pytest.raises(ValueError):
        Segment(0, device=emulated_device)
    seg.free()
    seg.free()
    with pytest.raises(RuntimeError, match="freed"):
        seg.read(0, 1)
