"""The dispatcher driver's two register paths: through the device's
read_registers / write_registers on a REGISTER_RW device (an Alveo card,
the emulated device), through pynq.MMIO's ints on a memory-mapped one (a
Zynq board, here a /dev/mem-like window over the same emulated slave)."""

import numpy as np
import pytest
from pynq.pl_server.device import Device

from vfpga.driver.dispatcher import Dispatcher
from vfpga.driver.emulated import EmulatedDevice

BOARD = "u200"


class _Window:
    """32-bit words at ``base``, as pynq.MMIO indexes a mapped range; each
    access is a register access of ``device``, counted."""

    def __init__(self, device, base: int):
        self.device, self.base, self.accesses = device, base, 0

    def __getitem__(self, idx: int):
        self.accesses += 1
        return np.uint32(int.from_bytes(self.device.read_registers(self.base + 4 * idx, 4), "little"))

    def __setitem__(self, idx: int, value) -> None:
        self.accesses += 1
        self.device.write_registers(self.base + 4 * idx, int(value).to_bytes(4, "little"))


class _MappedDevice(Device):
    """A device offering MEMORY_MAPPED only, over an emulated device's registers."""

    def __init__(self, inner: EmulatedDevice):
        super().__init__("mapped_" + inner.name)
        self.capabilities = {"MEMORY_MAPPED": True}
        self.inner, self.windows = inner, []

    def mmap(self, base_addr: int, length: int):
        self.windows.append(_Window(self.inner, base_addr))
        return self.windows[-1]


@pytest.fixture
def both():
    dev = EmulatedDevice(BOARD, bank_capacity=16 << 20)
    mapped = _MappedDevice(dev)
    try:
        rw = Dispatcher(dev.ip_dict["dispatcher"], config=dev.config)
        mm = Dispatcher({**dev.ip_dict["dispatcher"], "device": mapped}, config=dev.config)
        yield rw, mm, mapped
    finally:
        dev.close()


def test_each_device_gets_its_path(both):
    rw, mm, mapped = both
    assert rw._register_rw and not mm._register_rw
    before = mapped.windows[0].accesses
    mm.tenant_write(2, "ring_size", 8)
    mm.tenant_read(2, "ring_size")
    assert mapped.windows[0].accesses == before + 2  # through pynq.MMIO's mapped array


@pytest.mark.parametrize("writer", ["rw", "mm"])
def test_the_paths_read_what_the_other_wrote(both, writer):
    rw, mm, _ = both
    w, r = (rw, mm) if writer == "rw" else (mm, rw)
    w.tenant_write(5, "seg_base", 0x0000_0123_4567_8000)  # 64 bits: two words, the low one first
    w.tenant_write(5, "seg_limit", 0x00FF_F000)
    w.write("irq_mask", 0x0000_00A5)
    assert r.tenant_read(5, "seg_base") == 0x0000_0123_4567_8000
    assert r.tenant_read(5, "seg_limit") == 0x00FF_F000
    assert r.read("irq_mask") == 0xA5
    assert r.tenant_registers(5) == w.tenant_registers(5)
    assert r.read("cores") == w.read("cores") > 0  # (a register the dispatcher writes)


@pytest.mark.parametrize("which", ["rw", "mm"])
def test_values_that_do_not_fit_are_refused_on_both_paths(both, which):
    d = both[0] if which == "rw" else both[1]
    with pytest.raises(ValueError, match="does not fit"):
        d.tenant_write(0, "ring_size", 1 << 32)
    with pytest.raises(ValueError, match="does not fit"):
        d.tenant_write(0, "seg_base", -1)
    assert d.tenant_read(0, "ring_size") == 0
