"""The emulated pynq.Device: memory, buffers, registers and the ap_ctrl_hs protocol,
exercised through PYNQ's own classes (pynq.allocate, PynqBuffer, pynq.MMIO)."""

import gc

import numpy as np
import pynq
import pytest
from pynq.pl_server.device import Device

from vfpga import overlay
from vfpga.driver import isa
from vfpga.driver.cnn_core import AP_DONE, AP_IDLE, AP_READY, AP_START
from vfpga.driver.emulated import ALIGN, EmulatedDevice, EmulatedMemory, EmulationError

MiB = 1 << 20


def _regs(dev):
    return dev.config["cnn_core"]["registers"]


def _mmio(dev, core=0):
    desc = dev.ip_dict[f"cnn_core_{core}"]
    return pynq.MMIO(desc["phys_addr"], desc["addr_range"], device=dev)


# ---- probing and description ------------------------------------------------------
def test_probe_yields_one_emulated_device(monkeypatch):
    saved = {k: Device.__dict__[k] for k in ("_devices", "_active_device") if k in Device.__dict__}
    monkeypatch.setenv("VFPGA_BOARD", "zcu104")
    try:
        for k in saved:
            delattr(Device, k)
        emulated = [d for d in pynq.Device.devices if isinstance(d, EmulatedDevice)]
        assert len(emulated) == 1 and emulated[0].board == "zcu104"
    finally:
        for k in ("_devices", "_active_device"):
            if k in Device.__dict__:
                delattr(Device, k)
        for k, v in saved.items():
            setattr(Device, k, v)


def test_unknown_board_is_a_clear_error():
    with pytest.raises(overlay.BoardConfigError, match="known boards"):
        EmulatedDevice("no_such_board")


@pytest.mark.parametrize("board", overlay.available())
def test_ip_dict_and_memories_follow_the_config(board, make_emulated_device):
    dev = make_emulated_device(board)
    cfg = overlay.load(board)
    core, ddr, disp = cfg["cnn_core"], cfg["ddr"], cfg["dispatcher"]
    assert len(dev.ip_dict) == core["count"] + 1
    d = dev.ip_dict["dispatcher"]
    assert (d["type"], d["phys_addr"], d["addr_range"]) == (disp["vlnv"], disp["base_address"], disp["address_range"])
    assert {n: r["address_offset"] for n, r in d["registers"].items()} == {
        n: off for n, off in disp["registers"].items() if n != "file"}
    for i in range(core["count"]):
        d = dev.ip_dict[f"cnn_core_{i}"]
        assert d["type"] == core["vlnv"]
        assert d["phys_addr"] == core["base_address"] + i * core["address_stride"]
        assert d["addr_range"] == core["address_range"]
        assert d["bank"] == core["banks"][i]
        assert d["device"] is dev
        assert {n: r["address_offset"] for n, r in d["registers"].items()} == core["registers"]
        for r in d["registers"].values():
            assert set(r) == {"address_offset", "size", "access", "description", "fields"}
    assert len(dev.banks) == ddr["banks"]
    for b, mem in enumerate(dev.banks):
        assert mem.base_address == ddr["base_address"] + b * ddr["bank_stride"]
        assert dev.mem_dict[mem.tag]["base_address"] == mem.base_address


def test_register_widths_come_from_the_header(emulated_device):
    regs = emulated_device.ip_dict["cnn_core_0"]["registers"]
    assert regs["seg"]["size"] == 64  # m_axi offset: a 64-bit address
    assert regs["seg_limit"]["size"] == 32
    assert regs["insns"]["size"] == 64  # uint64_t counters
    assert regs["fault"]["size"] == 32
    assert regs["fault"]["access"] == "read-only"


# ---- allocation ---------------------------------------------------------------------
def test_allocate_alignment_banks_and_pynq_allocate(emulated_device):
    dev = emulated_device
    a = pynq.allocate((100,), np.uint8, target=dev)
    b = dev.allocate((3, 5), np.int32, bank=2)
    c = pynq.allocate(7, "u4", target=dev.banks[1])
    for buf in (a, b, c):
        assert isinstance(buf, pynq.buffer.PynqBuffer)
        assert buf.physical_address % ALIGN == 0
        assert buf.device is dev
    assert a.physical_address == dev.banks[0].base_address
    assert b.physical_address == dev.banks[2].base_address and b.shape == (3, 5)
    assert c.physical_address == dev.banks[1].base_address and c.dtype == np.uint32
    # the next block starts on the next page
    d = dev.allocate((1,), np.uint8)
    assert d.physical_address == dev.banks[0].base_address + ALIGN


def test_plain_pynq_allocate_uses_the_active_device(emulated_device):
    saved = Device.__dict__.get("_active_device")
    pynq.Device.active_device = emulated_device
    try:
        buf = pynq.allocate((16,), np.uint16)
        assert buf.device is emulated_device
        assert buf.physical_address == emulated_device.banks[0].base_address
    finally:
        if saved is None:
            del Device._active_device
        else:
            Device._active_device = saved


def test_free_reuse_and_coalescing(emulated_device):
    mem = emulated_device.banks[0]
    total = mem.free_bytes
    a, b, c = (mem.allocate((ALIGN,), np.uint8) for _ in range(3))
    pa, pb = a.physical_address, b.physical_address
    assert pb == pa + ALIGN and c.physical_address == pb + ALIGN
    b.freebuffer()
    a.freebuffer()
    a.freebuffer()  # idempotent, as in PYNQ
    # the two freed neighbours coalesced into one block that fits 2 pages
    d = mem.allocate((2 * ALIGN,), np.uint8)
    assert d.physical_address == pa
    del c
    gc.collect()  # PynqBuffer.__del__ frees too
    d.freebuffer()
    assert mem.free_bytes == total and mem.largest_free == total


def test_full_bank_raises_a_clear_memory_error(emulated_device):
    mem = emulated_device.banks[3]
    big = mem.allocate((mem.size - ALIGN,), np.uint8)
    with pytest.raises(MemoryError, match=r"bank 3.*8193 bytes.*4096 bytes free"):
        mem.allocate((2 * ALIGN + 1,), np.uint8)
    small = mem.allocate((ALIGN,), np.uint8)  # the last page still fits
    assert mem.free_bytes == 0
    big.freebuffer()
    small.freebuffer()
    assert mem.free_bytes == mem.size


def test_allocation_cost_is_lazy(make_emulated_device):
    # a 1 GiB bank costs no host memory until touched
    dev = make_emulated_device("pynq_z2", bank_capacity=1 << 30)
    assert dev.banks[0].size == min(1 << 30, dev.config["ddr"]["bank_bytes"])


# ---- sync ---------------------------------------------------------------------------------
def test_sync_copies_only_the_synced_range(emulated_device):
    dev = emulated_device
    buf = dev.allocate((64,), np.uint8, bank=1)
    ddr = dev.ddr_view(buf.physical_address, 64)
    buf[:] = np.arange(64, dtype=np.uint8)
    assert not ddr.any()  # host and device memory are separate
    buf[10:20].sync_to_device()
    assert (ddr[10:20] == np.arange(10, 20)).all()
    assert not ddr[:10].any() and not ddr[20:].any()
    buf.sync_to_device()
    assert (ddr == np.arange(64)).all()

    ddr[:] = 200
    buf[40:42].sync_from_device()
    expect = np.arange(64, dtype=np.uint8)
    expect[40:42] = 200
    assert (buf == expect).all()
    buf.sync_from_device()
    assert (buf == 200).all()


def test_sync_of_views_with_other_dtypes(emulated_device):
    dev = emulated_device
    buf = dev.allocate((8,), np.uint32)
    buf[:] = np.arange(8) * 0x01010101
    buf[2:4].sync_to_device()
    words = dev.ddr_view(buf.physical_address, 32).view(np.uint32)
    assert list(words) == [0, 0, 0x02020202, 0x03030303, 0, 0, 0, 0]


def test_sync_after_free_and_of_copies_is_refused(emulated_device):
    buf = emulated_device.allocate((64,), np.uint8)
    with pytest.raises(EmulationError, match="copy"):
        buf.copy().sync_to_device()
    view = buf[8:16]
    buf.freebuffer()
    with pytest.raises(EmulationError, match="freed"):
        view.sync_to_device()


# ---- registers through pynq.MMIO -------------------------------------------------------
def test_mmio_reads_and_writes_registers(emulated_device):
    dev = emulated_device
    regs = _regs(dev)
    mmio = _mmio(dev, 3)
    mmio.write(regs["seg_limit"], 0x12345678)
    mmio.write(regs["seg"], 0x89ABCDEF)
    mmio.write(regs["seg"] + 4, 0x7)
    assert mmio.read(regs["seg_limit"]) == 0x12345678
    assert mmio.read(regs["seg"], 8) == 0x7_89ABCDEF
    mmio.write(regs["insn_count"], (5).to_bytes(4, "little"))  # bytes go through the same hook
    assert mmio.read(regs["insn_count"]) == 5
    # result registers are read-only: writes are ignored
    mmio.write(regs["fault"], 3)
    assert mmio.read(regs["fault"]) == 0
    # other cores are untouched
    assert _mmio(dev, 2).read(regs["seg_limit"]) == 0


def test_unmapped_register_address_is_an_error(emulated_device):
    dev = emulated_device
    last = max(dev.ip_dict.values(), key=lambda d: d["phys_addr"])
    with pytest.raises(EmulationError, match="no emulated register"):
        pynq.MMIO(last["phys_addr"] + last["addr_range"], 4, device=dev).read(0)


def test_ap_ctrl_protocol(emulated_device):
    dev = emulated_device
    regs = _regs(dev)
    mmio = _mmio(dev)
    assert mmio.read(regs["ctrl"]) == AP_IDLE  # idle at reset
    mmio.write(regs["gie"], 1)
    mmio.write(regs["ier"], 1)  # ap_done only
    # an empty program (insn_count 0) in a page of bank 0
    buf = dev.allocate((ALIGN,), np.uint8)
    mmio.write(regs["seg"], buf.physical_address & 0xFFFFFFFF)
    mmio.write(regs["seg"] + 4, buf.physical_address >> 32)
    mmio.write(regs["seg_limit"], ALIGN)
    mmio.write(regs["ctrl"], AP_START)  # runs synchronously
    assert mmio.read(regs["ctrl"]) == AP_DONE | AP_IDLE | AP_READY
    assert mmio.read(regs["ctrl"]) == AP_IDLE  # ap_done / ap_ready clear on read
    assert mmio.read(regs["isr"]) == 1 and dev.interrupt_pending(0)
    mmio.write(regs["isr"], 1)  # toggle on write: clears
    assert mmio.read(regs["isr"]) == 0 and not dev.interrupt_pending(0)
    mmio.write(regs["isr"], 1)  # ... and sets again
    assert mmio.read(regs["isr"]) == 1
    mmio.write(regs["isr"], 1)
    rec = dev.last_run(0)
    assert rec.ended and rec.fault == 0 and rec.counters["insns"] == 0
    assert dev.last_run(1) is None


def test_segment_outside_memory_or_bank_faults(emulated_device):
    dev = emulated_device
    regs = _regs(dev)
    mmio = _mmio(dev)
    seg_fault = isa.FAULTS["SEGMENT"]

    def run(seg, limit):
        mmio.write(regs["seg"], seg & 0xFFFFFFFF)
        mmio.write(regs["seg"] + 4, seg >> 32)
        mmio.write(regs["seg_limit"], limit)
        mmio.write(regs["insn_count"], 1)
        mmio.write(regs["ctrl"], AP_START)
        assert mmio.read(regs["ctrl"]) & AP_DONE
        return mmio.read(regs["fault"]), mmio.read(regs["fault_addr"])

    bank0 = dev.banks[0]
    assert run(0x1000, 4096) == (seg_fault, 0)  # not device memory
    # crosses the end of the (emulated) bank: first offset outside reported
    assert run(bank0.base_address + bank0.size - 64, 128) == (seg_fault, 64)
    # core 0 is wired to bank 0 only
    assert run(dev.banks[1].base_address, 4096) == (seg_fault, 0)
    # inside the bank, but the instruction fetch leaves the segment: the core's own fault
    assert run(bank0.base_address, 32)[0] == isa.FAULTS["FETCH"]


def test_auto_restart_is_refused(emulated_device):
    with pytest.raises(EmulationError, match="auto_restart"):
        _mmio(emulated_device).write(_regs(emulated_device)["ctrl"], 0x81)


def test_emulated_memory_is_a_pynq_target(emulated_device):
    mem = emulated_device.get_memory_by_idx(2)
    assert isinstance(mem, EmulatedMemory) and mem is emulated_device.get_memory_by_name("bank2")
    with pytest.raises(RuntimeError, match="no memory bank 9"):
        emulated_device.get_memory_by_idx(9)
