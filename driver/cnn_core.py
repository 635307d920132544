"""PYNQ driver of the vfpga CNN core (the Vitis HLS kernel ``vf_cnn_core_top``).

The core uses the ap_ctrl_hs block protocol: the host writes the scalar
arguments, sets ap_start, and polls ap_done. This is the code that runs on a
board; on a host without one the same code runs against the emulated
``pynq.Device`` (vfpga.driver.emulated), which sits below ``pynq.MMIO``. There
is deliberately no emulation-specific branch here.

Register offsets are taken from the IP description's ``"registers"`` entry, as
PYNQ's .hwh parser produces it. The board configs name the registers
(``ctrl``, ``seg``, ...); a Vitis HLS .hwh names the block-level ones ``CTRL``,
``GIER``, ``IP_IER``, ``IP_ISR`` and splits a 64-bit argument into ``<name>_1``
(bits 31:0) and ``<name>_2`` (bits 63:32). Both spellings are accepted so the
driver binds to either description.
"""

from __future__ import annotations

import dataclasses
import time

from pynq import DefaultIP, Device
from pynq.overlay import _ip_drivers

from vfpga import overlay
from vfpga.driver import isa

# ap_ctrl_hs control register bits (fixed by Vitis HLS, not by a board).
AP_START = 1 << 0
AP_DONE = 1 << 1  # clear on read
AP_IDLE = 1 << 2
AP_READY = 1 << 3  # clear on read
AUTO_RESTART = 1 << 7
# IER / ISR bits.
IRQ_DONE = 1 << 0
IRQ_READY = 1 << 1

ARGUMENTS = ("seg", "seg_limit", "insn_offset", "insn_count")
FAULT_REGISTERS = ("fault", "fault_insn", "fault_addr")
COUNTERS = ("insns", "load_iters", "compute_iters", "save_iters")
CONTROL_REGISTERS = ("ctrl", "gie", "ier", "isr")

_HWH_NAMES = {"ctrl": "CTRL", "gie": "GIER", "ier": "IP_IER", "isr": "IP_ISR"}


def _config_vlnv() -> str:
    """The core's VLNV, read from the board configs (one IP for every board)."""
    vlnvs = {overlay.load(board)["cnn_core"]["vlnv"] for board in overlay.available()}
    if len(vlnvs) != 1:
        raise RuntimeError(f"board configs disagree on the CNN core VLNV: {sorted(vlnvs)}")
    return vlnvs.pop()


VLNV = _config_vlnv()


def _locate(registers: dict, name: str) -> tuple[int, int]:
    """(byte offset, number of 32-bit words) of register ``name``."""
    for key in (name, _HWH_NAMES.get(name)):
        if key and key in registers:
            reg = registers[key]
            return reg["address_offset"], max(1, -(-int(reg.get("size", 32)) // 32))
    lo, hi = registers.get(f"{name}_1"), registers.get(f"{name}_2")
    if lo is not None and hi is not None and hi["address_offset"] == lo["address_offset"] + 4:
        return lo["address_offset"], 2
    raise KeyError(f"CNN core register {name!r} not in the IP's register map "
                   f"(has: {', '.join(sorted(registers))})")


@dataclasses.dataclass(frozen=True)
class CoreResult:
    """What a finished run reports through the core's output registers."""

    fault: int
    fault_name: str
    fault_insn: int
    fault_addr: int
    insns: int
    load_iters: int
    compute_iters: int
    save_iters: int

    @property
    def ok(self) -> bool:
        return self.fault == isa.FAULTS["NONE"]


class CnnCore(DefaultIP):
    """One CNN core. ``start`` / ``wait`` / ``run`` a program that lives in a
    tenant segment [seg_phys, seg_phys + seg_limit) of device memory."""

    bindto = [VLNV]

    def __init__(self, description):
        super().__init__(description)
        registers = description.get("registers")
        if not registers:
            raise ValueError(f"{description.get('fullpath', 'CNN core')}: the IP description has no "
                             "register map (PYNQ takes it from the .hwh)")
        self.name = description.get("fullpath", "cnn_core")
        # The DDR bank the core is wired to, when the description names it.
        self.bank = description.get("bank")
        self._regs = {n: _locate(registers, n)
                      for n in CONTROL_REGISTERS + ARGUMENTS + FAULT_REGISTERS + COUNTERS}
        # ap_done is clear-on-read: a status read (``idle``) that sees it must
        # not make a later ``wait`` miss it, so it is latched here.
        self._done_latched = False

    # ---- raw register access -------------------------------------------------
    def _read(self, name: str) -> int:
        offset, words = self._regs[name]
        value = 0
        for w in range(words):
            value |= self.mmio.read(offset + 4 * w) << (32 * w)
        return value

    def _write(self, name: str, value: int) -> None:
        offset, words = self._regs[name]
        if not 0 <= value < 1 << (32 * words):
            raise ValueError(f"{self.name}: {name} = {value:#x} does not fit {32 * words} bits")
        for w in range(words):
            self.mmio.write(offset + 4 * w, (value >> (32 * w)) & 0xFFFFFFFF)

    def _read_ctrl(self) -> int:
        ctrl = self._read("ctrl")
        if ctrl & AP_DONE:
            self._done_latched = True
        return ctrl

    # ---- control -----------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """True when the core can accept a start."""
        return bool(self._read_ctrl() & AP_IDLE)

    def start(self, seg_phys: int, seg_limit: int, insn_offset: int, insn_count: int) -> None:
        """Starts the program of ``insn_count`` instructions at segment offset
        ``insn_offset``; the segment is [seg_phys, seg_phys + seg_limit)."""
        if not self.idle:
            raise RuntimeError(f"{self.name} is busy: wait for the running program first")
        self._done_latched = False
        for name, value in zip(ARGUMENTS, (seg_phys, seg_limit, insn_offset, insn_count)):
            self._write(name, int(value))
        self._write("ctrl", AP_START)

    def wait(self, timeout_s: float = 10.0) -> None:
        """Polls ap_done; raises TimeoutError after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        polls = 0
        while True:
            ctrl = self._read_ctrl()
            if self._done_latched:
                self._done_latched = False
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no ap_done within {timeout_s} s "
                                   f"(ctrl = {ctrl:#x}, idle = {bool(ctrl & AP_IDLE)})")
            polls += 1
            if polls > 1000:  # spin briefly (runs are short), then stop hogging a CPU
                time.sleep(1e-4)

    def result(self) -> CoreResult:
        """The output registers of the last finished run."""
        fault = self._read("fault")
        return CoreResult(
            fault=fault,
            fault_name=isa.FAULT_NAMES.get(fault, f"UNKNOWN({fault})"),
            fault_insn=self._read("fault_insn"),
            fault_addr=self._read("fault_addr"),
            **{name: self._read(name) for name in COUNTERS},
        )

    def run(self, seg_phys: int, seg_limit: int, insn_offset: int, insn_count: int,
            timeout_s: float = 10.0) -> CoreResult:
        """start + wait, then the run's fault state and counters."""
        self.start(seg_phys, seg_limit, insn_offset, insn_count)
        self.wait(timeout_s)
        return self.result()

    def __repr__(self):
        return f"CnnCore({self.name!r}, phys_addr={self.mmio.base_addr:#x}, bank={self.bank})"


def cores(device=None) -> list[CnnCore]:
    """A driver for every CNN core in ``device.ip_dict``, ordered by address
    (which is the config's core order). Cores are recognised through PYNQ's
    own driver registry, i.e. by the VLNV ``CnnCore.bindto`` registers."""
    if device is None:
        device = Device.active_device
    found = []
    for name, desc in device.ip_dict.items():
        driver = _ip_drivers.get(desc.get("type"))
        if isinstance(driver, type) and issubclass(driver, CnnCore):
            found.append((desc["phys_addr"], name, driver, desc))
    found.sort(key=lambda f: (f[0], f[1]))
    return [driver({**desc, "device": device}) for _, _, driver, desc in found]
