"""PYNQ driver of the level-1 dispatcher (the Vitis HLS kernel ``vf_dispatcher_top``).

The kernel is free-running (started once; its processes never return). Its
AXI-Lite slave holds the kernel scalars -- the base registers of its m_axi
ports, one per DDR bank (``mem``, ``mem1`` ..., each set to the DDR window's
base), and ``mem_bytes`` -- and the register file of hls/include/vfpga_dispatcher.h at ``registers.file``:
a global block and one block per tenant context. Offsets come from the board
config (``dispatcher`` section), which the C++ checks field by field at
compile time, so the driver and the hardware agree by construction.

Like the CNN core driver this is the board code; the emulated device sits
beneath ``pynq.MMIO``. Completion is signalled by the kernel's ``irq``
output: where the device offers the line (``device.irq_line``) the
completion thread sleeps on it, elsewhere (and always with the Vitis kernel,
which has no interrupt port) it polls the ``irq`` register.
"""

from __future__ import annotations

import threading
import time

from pynq import DefaultIP
from pynq.overlay import _ip_drivers

from vfpga import overlay
from vfpga.driver.cnn_core import AP_START, AUTO_RESTART


def _same_in_every_config(key: str):
    values = {repr(overlay.load(b)["dispatcher"][key]) for b in overlay.available()}
    if len(values) != 1:
        raise RuntimeError(f"board configs disagree on dispatcher.{key}")
    return overlay.load(overlay.available()[0])["dispatcher"][key]


VLNV = _same_in_every_config("vlnv")


class PolledIrq:
    """The interrupt line read through the ``irq`` register (boards whose
    overlay does not route the line to the host): ``wait`` polls with a
    backoff from 20 us to 1 ms."""

    def __init__(self, dispatcher: Dispatcher):
        self._disp = dispatcher
        self._events = 0

    def wait(self, seen: int, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 20e-6
        while not self._disp.read("irq"):
            if deadline is not None and time.monotonic() >= deadline:
                return self._events
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)
        self._events += 1
        return self._events


class Dispatcher(DefaultIP):
    """The level-1 dispatcher: global registers, tenant registers, start/stop."""

    bindto = [VLNV]

    def __init__(self, description, config: dict | None = None):
        super().__init__(description)
        device = description.get("device")
        self.config = config if config is not None else getattr(device, "config", None)
        if self.config is None:
            raise ValueError("Dispatcher needs the board config (pass config=overlay.load(board))")
        disp = self.config["dispatcher"]
        self._scalars = disp["registers"]
        self._file = int(disp["registers"]["file"])
        self._global = {k: int(v) for k, v in disp["file_registers"].items()}
        self._tenant = {k: int(v) for k, v in disp["tenant_registers"].items()}
        self._tenant_base, self._tenant_stride = int(disp["tenant_base"]), int(disp["tenant_stride"])
        self._wide = {"mem_base", "steps", "frames", "cycles", "seg_base", "requests", "failed", "barriers",
                      "insns", "load_iters", "compute_iters", "save_iters", "core_cycles", "request_cycles"}
        self.n_tenants = int(disp["tenants"])
        self.n_cores = int(self.config["cnn_core"]["count"])
        line = getattr(device, "irq_line", None)
        self.irq_line = line(description.get("fullpath", "dispatcher")) if line else PolledIrq(self)
        self._lock = threading.Lock()  # read-modify-write sequences (mask_seq increments)
        device, self._base = self.mmio.device, self.mmio.base_addr
        self._register_rw = not device.has_capability("MEMORY_MAPPED") and device.has_capability("REGISTER_RW")
        if self._register_rw:
            self._read_registers, self._write_registers = device.read_registers, device.write_registers

    # ---- raw access ----------------------------------------------------------------
    # On a REGISTER_RW device (an Alveo card through XRT, the emulated device) pynq.MMIO's accesses go
    # through a pure-Python array per word and end in the device's read_registers / write_registers;
    # the driver calls those two itself. The doorbell, the ring head, the interrupt status and the
    # acknowledgement are written and read on every request. A memory-mapped device keeps MMIO.
    def _get(self, offset: int, wide: bool) -> int:
        if self._register_rw:
            return int.from_bytes(self._read_registers(self._base + offset, 8 if wide else 4), "little")
        lo = self.mmio.read(offset)
        return lo | self.mmio.read(offset + 4) << 32 if wide else lo

    def _put(self, offset: int, value: int, wide: bool) -> None:
        if not 0 <= value < 1 << (64 if wide else 32):
            raise ValueError(f"register value {value:#x} does not fit")
        if self._register_rw:  # (the low word first, as two MMIO writes would go)
            self._write_registers(self._base + offset, value.to_bytes(8 if wide else 4, "little"))
            return
        self.mmio.write(offset, value & 0xFFFFFFFF)
        if wide:
            self.mmio.write(offset + 4, value >> 32)

    def read(self, name: str) -> int:
        """A global register of the file (``irq_status``, ``cycles``, ...)."""
        return self._get(self._file + self._global[name], name in self._wide)

    def write(self, name: str, value: int) -> None:
        self._put(self._file + self._global[name], value, name in self._wide)

    def tenant_offset(self, t: int, name: str) -> int:
        if not 0 <= t < self.n_tenants:
            raise IndexError(f"the dispatcher has tenant contexts 0..{self.n_tenants - 1}, not {t}")
        return self._file + self._tenant_base + t * self._tenant_stride + self._tenant[name]

    def tenant_read(self, t: int, name: str) -> int:
        return self._get(self.tenant_offset(t, name), name in self._wide)

    def tenant_write(self, t: int, name: str, value: int) -> None:
        self._put(self.tenant_offset(t, name), value, name in self._wide)

    def tenant_registers(self, t: int) -> dict[str, int]:
        return {name: self.tenant_read(t, name) for name in self._tenant}

    # ---- control -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self.mmio.read(self._scalars["ctrl"]) & AP_START)

    def start(self, mem_base: int, mem_bytes: int) -> None:
        """Points the kernel's bank ports at the DDR window [mem_base,
        mem_base + mem_bytes), enables the interrupt line for every tenant
        and starts it free-running."""
        for name in overlay.config.bank_port_registers(self.config):
            self._put(self._scalars[name], mem_base, True)
        self._put(self._scalars["mem_bytes"], mem_bytes, True)
        self.write("mem_base", mem_base)
        self.write("irq_mask", 0xFFFFFFFF)
        self.write("irq_enable", 1)
        self.mmio.write(self._scalars["ctrl"], AP_START | AUTO_RESTART)

    def stop(self) -> None:
        """Clears auto-restart: the kernel stops after its current step."""
        self.mmio.write(self._scalars["ctrl"], 0)

    def __repr__(self):
        return f"Dispatcher({self.n_tenants} tenant contexts, {self.n_cores} cores)"


# DefaultIP's metaclass registered the VLNV; keep one driver per VLNV.
assert _ip_drivers.get(VLNV) is Dispatcher
