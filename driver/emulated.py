"""An emulated ``pynq.Device``: the vfpga hardware without a board.

It plugs in at PYNQ's lowest layer, so everything above (``pynq.MMIO``,
``pynq.allocate``/``PynqBuffer``, ``DefaultIP`` drivers, vfpga's driver and
runtime) runs the code it runs on a board:

* registers: the device declares the ``REGISTER_RW`` capability, so
  ``pynq.MMIO`` routes every 32-bit access to :meth:`EmulatedDevice.read_registers`
  / :meth:`EmulatedDevice.write_registers`, which implement each CNN core's
  AXI-Lite slave (Vitis HLS ap_ctrl_hs protocol, argument and result registers
  at the board config's offsets);
* device memory: one region per DDR bank at the config's physical addresses,
  all inside one contiguous window of lazily committed anonymous memory (the
  dispatcher's ``mem`` port spans every bank), with a real allocator per bank.
  ``PynqBuffer`` host memory is separate from device memory, and
  ``sync_to_device`` / ``sync_from_device`` really copy (so a missing sync is a
  bug here as it is on a board);
* execution: ap_start runs the core's HLS C++ (``vf_cnn_core_step``, compiled
  for the host into ``vfpga.driver._emu_<board>[_<level>]``, see
  :mod:`vfpga.driver.host_isa`) on the tenant segment
  [seg, seg + seg_limit). A segment that is not inside one emulated bank the
  core is wired to ends the run with VF_FAULT_SEGMENT before any instruction
  (fault_addr: 0 if its start is unreachable, else its first offset past the
  bank's end), where a board would see an AXI decode error.

* the level-1 dispatcher (its AXI-Lite slave at ``dispatcher.base_address``)
  runs the dispatcher's and the core pool's HLS C++ free-running in a host
  thread under the cycle model (vfpga.driver.emulated_dispatcher); its
  interrupt line is :meth:`EmulatedDevice.irq_line`.

A standalone core (its own ap_ctrl_hs slave, as the single-core kernel is
built) executes synchronously: the register write that sets ap_start returns only
when the program has ended, so ap_done is already set when a driver first
polls. Different cores can still run concurrently from different threads
(cffi releases the GIL during the C call).

Timing is not modelled here; :meth:`EmulatedDevice.last_run` exposes the
iteration counts the cycle model needs (emulation-only introspection: drivers
must not depend on it).
"""

from __future__ import annotations

import bisect
import dataclasses
import mmap
import os
import sys
import threading
import time

import numpy as np
from pynq.buffer import PynqBuffer
from pynq.pl_server.device import Device

from vfpga import overlay
from vfpga.driver import host_isa, isa
from vfpga.driver.cnn_core import (
    AP_DONE,
    AP_IDLE,
    AP_READY,
    AP_START,
    ARGUMENTS,
    AUTO_RESTART,
    CONTROL_REGISTERS,
    IRQ_DONE,
    IRQ_READY,
)
from vfpga.driver.emulated_dispatcher import EmulatedDispatcher

ALIGN = 4096  # allocation alignment (bytes): a page, as XRT/CMA buffers are
# Reserve address space without committing memory (Linux value where Python lacks the name).
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
DEFAULT_BANK_CAPACITY = 1 << 30  # emulated bytes per bank unless asked otherwise

_FAULT_SEGMENT = isa.FAULTS["SEGMENT"]
_NO_OPCODE = 0xFFFFFFFF  # fault_opcode when no instruction is involved (as for FETCH)


class EmulationError(RuntimeError):
    """Something the emulation cannot do (it never signals a hardware fault)."""


# ---------------------------------------------------------------------------
# Register layout: offsets from the board config, widths from the C header.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Reg:
    name: str
    offset: int
    bits: int
    kind: str  # "control" | "argument" | "state" | "counter"


_DESCRIPTIONS = {
    "ctrl": "Control signals: bit 0 ap_start, bit 1 ap_done (clear on read), bit 2 ap_idle, "
            "bit 3 ap_ready (clear on read), bit 7 auto_restart",
    "gie": "Global interrupt enable: bit 0",
    "ier": "IP interrupt enable: bit 0 ap_done, bit 1 ap_ready",
    "isr": "IP interrupt status: bit 0 ap_done, bit 1 ap_ready (toggle on write)",
}


def _register_layout(cfg: dict, ffi, lib) -> dict[str, _Reg]:
    """Every register of a core. Results are the fields of vf_cnn_state_t /
    vf_cnn_counters_t with the register's name; arguments are the leading
    parameters of vf_cnn_core_step (a pointer is a 64-bit AXI address, as
    Vitis HLS makes an m_axi offset register)."""
    state = {n: f.type for n, f in ffi.typeof("vf_cnn_state_t").fields}
    counters = {n: f.type for n, f in ffi.typeof("vf_cnn_counters_t").fields}
    step_args = ffi.typeof(ffi.addressof(lib, "vf_cnn_core_step")).args
    arg_bits = {name: 64 if t.kind == "pointer" else 8 * ffi.sizeof(t)
                for name, t in zip(ARGUMENTS, step_args)}
    layout = {}
    for name, offset in cfg["cnn_core"]["registers"].items():
        if name in CONTROL_REGISTERS:
            layout[name] = _Reg(name, offset, 32, "control")
        elif name in arg_bits:
            layout[name] = _Reg(name, offset, arg_bits[name], "argument")
        elif name in state:
            layout[name] = _Reg(name, offset, 8 * ffi.sizeof(state[name]), "state")
        elif name in counters:
            layout[name] = _Reg(name, offset, 8 * ffi.sizeof(counters[name]), "counter")
        else:
            raise EmulationError(f"board config register {name!r} is neither a control register, "
                                 "an argument of vf_cnn_core_step nor a state/counter field")
    missing = set(CONTROL_REGISTERS + ARGUMENTS) - set(layout)
    if missing:
        raise EmulationError(f"board config lacks CNN core registers {sorted(missing)}")
    return layout


def _hwh_registers(layout: dict[str, _Reg]) -> dict:
    """The register map in the form PYNQ's .hwh parser gives it."""
    access = {"control": "read-write", "argument": "write-only", "state": "read-only",
              "counter": "read-only"}
    return {
        r.name: {
            "address_offset": r.offset,
            "size": r.bits,
            "access": access[r.kind],
            "description": _DESCRIPTIONS.get(r.name, f"Data signal of {r.name}"),
            "fields": {},
        }
        for r in sorted(layout.values(), key=lambda r: r.offset)
    }


# ---------------------------------------------------------------------------
# Device memory
# ---------------------------------------------------------------------------
class _Block:
    """One allocation: the ``bo`` and ``pointer`` of the PynqBuffer(s) over it."""

    __slots__ = ("memory", "offset", "size", "host", "live", "host_pointer", "device_pointer")

    def __init__(self, memory, offset, size):
        self.memory = memory
        self.offset = offset  # inside the bank
        self.size = size  # aligned size reserved in the bank
        self.host = None  # the buffer's host copy (uint8)
        self.live = True
        # where the host copy and the emulated DDR start (cffi pointers: a sync is one ffi.memmove between
        # them, half the call cost of ctypes.memmove on the per-request syncs of ring entries and records)
        self.host_pointer = None
        self.device_pointer = memory.cdata + offset


class EmulatedMemory:
    """One DDR bank: the counterpart of XrtMemory (``pynq.allocate(...,
    target=memory)`` allocates here). Addresses are the config's physical ones;
    first-fit allocation with coalescing of neighbouring free blocks."""

    def __init__(self, device, idx: int, base_address: int, size: int, hw_size: int):
        self.device = device
        self.idx = idx
        self.base_address = base_address
        self.size = size  # emulated capacity
        self.hw_size = hw_size  # the board's bank size
        self.tag = f"bank{idx}"
        start = base_address - device.window_base
        self.array = device.window[start:start + size]
        self.cdata = device.window_cdata + start
        self._lock = threading.Lock()
        self._free = [(0, size)]  # sorted, disjoint, never adjacent: (start, end)

    # -- allocator --
    def _reserve(self, nbytes: int) -> _Block:
        size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        with self._lock:
            for i, (start, end) in enumerate(self._free):
                if end - start >= size:
                    if end - start == size:
                        del self._free[i]
                    else:
                        self._free[i] = (start + size, end)
                    return _Block(self, start, size)
            free, largest = self._free_stats()
        raise MemoryError(
            f"emulated DDR bank {self.idx} ({self.size} bytes): cannot allocate {nbytes} bytes "
            f"({size} aligned to {ALIGN}); {free} bytes free, largest free block {largest} bytes")

    def return_pointer(self, block: _Block) -> None:
        """Frees a block (PynqBuffer.freebuffer calls this through ``return_to``)."""
        with self._lock:
            if not block.live:
                return
            block.live = False
            start, end = block.offset, block.offset + block.size
            i = bisect.bisect_left(self._free, (start, end))
            if i < len(self._free) and self._free[i][0] < end or i > 0 and self._free[i - 1][1] > start:
                raise EmulationError(f"bank {self.idx}: double free of [{start:#x}, {end:#x})")
            if i < len(self._free) and self._free[i][0] == end:
                end = self._free.pop(i)[1]
            if i > 0 and self._free[i - 1][1] == start:
                start = self._free.pop(i - 1)[0]
                i -= 1
            self._free.insert(i, (start, end))

    def _free_stats(self):
        sizes = [end - start for start, end in self._free]
        return sum(sizes), max(sizes, default=0)

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return self._free_stats()[0]

    @property
    def largest_free(self) -> int:
        with self._lock:
            return self._free_stats()[1]

    @property
    def mem_used(self) -> int:
        return self.size - self.free_bytes

    def allocate(self, shape, dtype="u4", cacheable=True, **kwargs) -> PynqBuffer:
        """A PynqBuffer in this bank; ``cacheable`` is accepted for PYNQ
        compatibility (buffers are never coherent: syncs are explicit)."""
        if kwargs:
            raise TypeError(f"unexpected allocate arguments: {', '.join(kwargs)}")
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape) if np.iterable(shape) else (int(shape),)
        if any(s < 0 for s in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        block = self._reserve(nbytes)
        host = np.zeros(nbytes, dtype=np.uint8)  # calloc: lazily committed too
        block.host, block.host_pointer = host, self.device.ffi.from_buffer("int8_t[]", host)
        buf = PynqBuffer(shape, dtype, buffer=host, device=self.device,
                         device_address=self.base_address + block.offset, bo=block, coherent=False)
        buf.memory = self
        buf.pointer = block
        buf.return_to = self
        # PynqBuffer.freebuffer returns ``pointer`` to ``return_to`` once, then
        # (pointer = 0) would munmap the host memory unless ``freed`` is set:
        # there is no mapping to unmap here, and __del__ after an explicit
        # freebuffer() must be a no-op.
        buf.freed = True
        return buf

    def __repr__(self):
        return (f"EmulatedMemory(bank={self.idx}, base={self.base_address:#x}, size={self.size}, "
                f"free={self.free_bytes})")


# ---------------------------------------------------------------------------
# Cores
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One core run as the emulator saw it (emulation-only introspection)."""

    core: int
    ended: bool  # True: END or end of stream; False: stopped by a fault
    fault: int
    fault_name: str
    fault_insn: int
    fault_addr: int
    fault_opcode: int
    counters: dict  # every vf_cnn_counters_t field
    iters: np.ndarray | None  # uint32 per instruction; None when the program cannot fit its segment
    steps: int  # vf_cnn_core_step calls
    host_seconds: float
    bank: int | None  # where the segment was found (None: not in reachable memory)
    seg_offset: int | None  # segment start inside that bank
    seg_limit: int
    insn_offset: int
    insn_count: int


class _Core:
    """The AXI-Lite slave and on-chip state of one emulated CNN core."""

    def __init__(self, index, bank, phys_addr, addr_range, layout):
        self.index = index
        self.bank = bank
        self.phys_addr = phys_addr
        self.addr_range = addr_range
        self.layout = layout
        self.words = {}  # offset in the window -> (register, word index)
        for reg in layout.values():
            for w in range(-(-reg.bits // 32)):
                self.words[reg.offset + 4 * w] = (reg, w)
        self.values = {name: 0 for name in layout if layout[name].kind != "control"}
        self.start = self.done = self.ready = False
        self.idle = True
        self.gie = self.ier = self.isr = 0
        self.buffers = None  # on-chip memories, allocated at the first start
        self.last = None
        self.lock = threading.RLock()

    def ctrl(self) -> int:
        return (AP_START * self.start | AP_DONE * self.done | AP_IDLE * self.idle
                | AP_READY * self.ready)


class EmulatedDevice(Device):
    """The vfpga hardware of board config ``board``, emulated.

    ``bank_capacity`` caps the emulated bytes per DDR bank (the board's bank
    may be larger than a host wants to reserve address space for).
    ``cross_bank``: by default a core reaches only the bank it is wired to
    (config ``cnn_core.banks``, one m_axi port per core as the board build
    connects it); True lets a core address every bank.
    ``compute=False`` makes it the timing-only board: the dispatcher issues,
    times (cycle model) and retires every frame as usual, but no frame runs,
    so no arithmetic is done and outputs in device memory are never written.
    """

    _probe_priority_ = 900  # after every real PYNQ device (they use 40..200)

    @classmethod
    def _probe_(cls):
        # On a host without a board this makes pynq.Device.devices non-empty.
        return [cls(os.environ.get("VFPGA_BOARD", "u200"))]

    def __init__(self, board: str = "u200", bank_capacity: int = DEFAULT_BANK_CAPACITY,
                 cross_bank: bool = False, compute: bool = True):
        if board not in overlay.available():
            raise overlay.BoardConfigError(
                f"unknown board {board!r}; known boards: {', '.join(overlay.available())}")
        super().__init__(f"emulated_{board}")
        self.board = board
        self.name = f"vfpga emulated {board}"
        self.config = overlay.load(board)
        module = host_isa.emulation_module(board)
        self.ffi, self.lib = module.ffi, module.lib
        self.build = host_isa.build_name(module)  # "portable" or the host's ISA level
        self.capabilities = {"REGISTER_RW": True}
        self.cross_bank = cross_bank
        self.compute = compute

        ddr, core_cfg = self.config["ddr"], self.config["cnn_core"]
        capacity = min(ddr["bank_bytes"], int(bank_capacity)) // ALIGN * ALIGN
        if capacity <= 0:
            raise ValueError(f"bank_capacity must be at least {ALIGN} bytes")
        # One window from the first bank's base to the last bank's emulated end.
        # Private anonymous memory: pages are committed only when touched.
        self.window_base = ddr["base_address"]
        window_bytes = (ddr["banks"] - 1) * ddr["bank_stride"] + capacity
        self._mmap = mmap.mmap(-1, window_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
        self.window = np.frombuffer(self._mmap, dtype=np.uint8)
        self.window_cdata = self.ffi.from_buffer("int8_t[]", self._mmap)
        self.banks = [EmulatedMemory(self, b, ddr["base_address"] + b * ddr["bank_stride"],
                                     capacity, ddr["bank_bytes"]) for b in range(ddr["banks"])]
        self.mem_dict = {
            m.tag: {"tag": m.tag, "idx": m.idx, "base_address": m.base_address, "size": m.size,
                    "used": 1, "streaming": False, "type": "DDR"}
            for m in self.banks
        }

        layout = _register_layout(self.config, self.ffi, self.lib)
        self._cores = [
            _Core(i, bank, core_cfg["base_address"] + i * core_cfg["address_stride"],
                  core_cfg["address_range"], layout)
            for i, bank in enumerate(core_cfg["banks"])
        ]
        self.dispatcher = EmulatedDispatcher(self)
        disp = self.config["dispatcher"]
        slaves = [(c.phys_addr, c.addr_range, c) for c in self._cores]
        slaves.append((disp["base_address"], disp["address_range"], self.dispatcher))
        self._windows = sorted(slaves, key=lambda s: s[0])
        self._window_starts = [w for w, _, _ in self._windows]
        registers = _hwh_registers(layout)
        self.ip_dict = {
            f"cnn_core_{c.index}": {
                "fullpath": f"cnn_core_{c.index}",
                "type": core_cfg["vlnv"],
                "bdtype": None,
                "state": None,
                "phys_addr": c.phys_addr,
                "addr_range": c.addr_range,
                "mem_id": "s_axi_control",
                "memtype": "REGISTER",
                "gpio": {},
                "interrupts": {},
                "parameters": {},
                "registers": {k: dict(v) for k, v in registers.items()},
                "device": self,
                "bank": c.bank,
            }
            for c in self._cores
        }
        self.ip_dict["dispatcher"] = {
            "fullpath": "dispatcher",
            "type": disp["vlnv"],
            "bdtype": None,
            "state": None,
            "phys_addr": disp["base_address"],
            "addr_range": disp["address_range"],
            "mem_id": "s_axi_control",
            "memtype": "REGISTER",
            "gpio": {},
            "interrupts": {},
            "parameters": {},
            "registers": {name: {"address_offset": off,
                                 "size": 64 if name in ("mem_bytes", *overlay.config.bank_port_registers(self.config))
                                 else 32,
                                 "access": "read-write", "description": _DESCRIPTIONS.get(name, name),
                                 "fields": {}}
                          for name, off in disp["registers"].items() if name != "file"},
            "device": self,
        }
        self.gpio_dict, self.interrupt_controllers, self.interrupt_pins = {}, {}, {}
        self.hierarchy_dict = {}

    def __repr__(self):
        return f"EmulatedDevice({self.board!r}, banks={len(self.banks)}, cnn_cores={len(self._cores)})"

    # ---- memory ----------------------------------------------------------------
    @property
    def default_memory(self) -> EmulatedMemory:
        return self.banks[0]

    def get_memory(self, desc: dict) -> EmulatedMemory:
        return self.banks[desc["idx"]]

    def get_memory_by_idx(self, idx: int) -> EmulatedMemory:
        if not 0 <= idx < len(self.banks):
            raise RuntimeError(f"{self.name} has no memory bank {idx} (banks 0..{len(self.banks) - 1})")
        return self.banks[idx]

    def get_memory_by_name(self, name: str) -> EmulatedMemory:
        return self.get_memory(self.mem_dict[name])

    def allocate(self, shape, dtype="u4", target=None, bank=None, **kwargs) -> PynqBuffer:
        """A PynqBuffer in bank ``bank`` (an index), or in ``target`` (a bank
        index or an EmulatedMemory); bank 0 by default."""
        if target is not None and bank is not None:
            raise TypeError("give target or bank, not both")
        where = target if target is not None else bank
        if where is None:
            memory = self.default_memory
        elif isinstance(where, EmulatedMemory):
            if where.device is not self:
                raise ValueError(f"{where!r} belongs to another device")
            memory = where
        else:
            memory = self.get_memory_by_idx(int(where))
        return memory.allocate(shape, dtype, **kwargs)

    def _host_range(self, bo, offset, ptr, size):
        if not isinstance(bo, _Block) or bo.memory.device is not self:
            raise EmulationError(f"{self.name}: buffer was not allocated on this device")
        if not bo.live:
            raise EmulationError(f"{self.name}: sync of a freed buffer (bank {bo.memory.idx}, "
                                 f"offset {bo.offset:#x})")
        if offset < 0 or size < 0 or offset + size > len(bo.host):
            # PynqBuffer derives offset from the view's address, so this is
            # typically a .copy() of a buffer: it keeps the original's bo.
            raise EmulationError(f"{self.name}: sync range [{offset}, {offset + size}) is outside the "
                                 f"buffer's {len(bo.host)} bytes (a copy of a PynqBuffer cannot be synced)")
        return bo.host_pointer + offset, bo.device_pointer + offset

    def flush(self, bo, offset, ptr, size):
        """Host -> device copy (PynqBuffer.sync_to_device)."""
        host, dev = self._host_range(bo, offset, ptr, size)
        self.ffi.memmove(dev, host, size)

    def invalidate(self, bo, offset, ptr, size):
        """Device -> host copy (PynqBuffer.sync_from_device)."""
        host, dev = self._host_range(bo, offset, ptr, size)
        self.ffi.memmove(host, dev, size)

    # emulation-only views of device memory (tests, debugging)
    def bank_array(self, bank: int) -> np.ndarray:
        """The emulated DDR of ``bank`` as a writable uint8 array."""
        return self.get_memory_by_idx(bank).array

    def ddr_view(self, address: int, nbytes: int) -> np.ndarray:
        """Device memory [address, address + nbytes) as a uint8 view."""
        found = self._find_bank(address, nbytes)
        if found is None:
            raise ValueError(f"[{address:#x}, {address + nbytes:#x}) is not inside one emulated bank")
        mem, off = found
        return mem.array[off:off + nbytes]

    def _find_bank(self, address: int, nbytes: int):
        for mem in self.banks:
            off = address - mem.base_address
            if 0 <= off and off + nbytes <= mem.size:
                return mem, off
        return None

    # ---- registers ---------------------------------------------------------------
    def _core_at(self, address: int, length: int):
        i = bisect.bisect_right(self._window_starts, address) - 1
        if i >= 0:
            base, size, slave = self._windows[i]
            if address + length <= base + size:
                return slave, address - base
        raise EmulationError(f"{self.name}: no emulated register at [{address:#x}, {address + length:#x})")

    def read_registers(self, address: int, length: int) -> bytes:
        """``length`` bytes (whole 32-bit words) from ``address`` (pynq.MMIO's hook)."""
        if address % 4 or length % 4 or length <= 0:
            raise EmulationError(f"{self.name}: register reads are whole aligned words "
                                 f"(address {address:#x}, length {length})")
        core, off = self._core_at(address, length)
        if core is self.dispatcher:
            if length == 4:  # (one word, without the join: the ring head and irq status, per request)
                return core.read_word(off).to_bytes(4, "little")
            return b"".join(core.read_word(off + 4 * i).to_bytes(4, "little") for i in range(length // 4))
        with core.lock:
            return b"".join(self._read_word(core, off + 4 * i).to_bytes(4, "little")
                            for i in range(length // 4))

    def write_registers(self, address: int, data) -> None:
        """Writes ``data`` (bytes, whole 32-bit words) at ``address`` (pynq.MMIO's hook)."""
        data = bytes(data)
        if address % 4 or len(data) % 4 or not data:
            raise EmulationError(f"{self.name}: register writes are whole aligned words "
                                 f"(address {address:#x}, {len(data)} bytes)")
        core, off = self._core_at(address, len(data))
        if core is self.dispatcher:
            if len(data) == 4:  # (one word: the doorbell and the acknowledgement, per request)
                core.write_word(off, int.from_bytes(data, "little"))
                return
            for i in range(len(data) // 4):
                core.write_word(off + 4 * i, int.from_bytes(data[4 * i:4 * i + 4], "little"))
            return
        with core.lock:
            for i in range(len(data) // 4):
                self._write_word(core, off + 4 * i, int.from_bytes(data[4 * i:4 * i + 4], "little"))

    def _read_word(self, core: _Core, off: int) -> int:
        reg, w = core.words.get(off, (None, 0))
        if reg is None:
            return 0  # unassigned offsets read as 0
        if reg.kind != "control":
            return (core.values[reg.name] >> (32 * w)) & 0xFFFFFFFF
        if reg.name == "ctrl":
            value = core.ctrl()
            core.done = core.ready = False  # clear on read
            return value
        return getattr(core, reg.name)

    def _write_word(self, core: _Core, off: int, value: int) -> None:
        reg, w = core.words.get(off, (None, 0))
        if reg is None or reg.kind in ("state", "counter"):
            return  # writes to results and unassigned offsets are ignored, as on the AXI-Lite slave
        if reg.kind == "argument":
            shift = 32 * w
            core.values[reg.name] = (core.values[reg.name] & ~(0xFFFFFFFF << shift)) | (value << shift)
        elif reg.name == "ctrl":
            if value & AUTO_RESTART:
                raise EmulationError(f"{self.name}: auto_restart is not emulated (execution is "
                                     "synchronous; a free-running core would never return)")
            if value & AP_START and core.idle:
                self._start(core)
        elif reg.name == "gie":
            core.gie = value & 1
        elif reg.name == "ier":
            core.ier = value & (IRQ_DONE | IRQ_READY)
        elif reg.name == "isr":
            core.isr ^= value & (IRQ_DONE | IRQ_READY)  # toggle on write

    def interrupt_pending(self, core_index: int) -> bool:
        """The level of the core's interrupt line (GIE and any ISR bit)."""
        core = self._cores[core_index]
        return bool(core.gie and core.isr)

    # ---- execution ----------------------------------------------------------------
    def last_run(self, core_index: int) -> RunRecord | None:
        """The record of the core's last run (None before its first start)."""
        if not 0 <= core_index < len(self._cores):
            raise IndexError(f"{self.name} has CNN cores 0..{len(self._cores) - 1}, not {core_index}")
        return self._cores[core_index].last

    def _start(self, core: _Core) -> None:
        core.start, core.idle = True, False
        try:
            record = self._execute(core)
        finally:
            core.start, core.idle = False, True
        core.last = record
        core.values.update(fault=record.fault, fault_insn=record.fault_insn, fault_addr=record.fault_addr)
        for name, reg in core.layout.items():
            if reg.kind == "counter":
                core.values[name] = record.counters[name]
        core.ready = core.done = True
        core.isr |= core.ier & (IRQ_DONE | IRQ_READY)

    def new_core_buffers(self):
        """One core's on-chip memories: (vf_cnn_buffers_t *, the arrays it points to)."""
        ffi = self.ffi
        geo = ffi.new("vf_cnn_geometry_t *")
        self.lib.vf_cnn_core_geometry(geo)
        keep = {
            "ibuf": ffi.new("int8_t[]", geo.ibuf_bytes),
            "wbuf": ffi.new("int8_t[]", geo.wbuf_bytes),
            "acc": ffi.new("int32_t[]", geo.acc_words),
            "obuf": ffi.new("int8_t[]", geo.obuf_bytes),
            "param": ffi.new("int32_t[]", geo.param_entries * isa.PARAM_ENTRY_WORDS),
        }
        return ffi.new("vf_cnn_buffers_t *", keep), keep

    def new_rnn_core_buffers(self):
        """One RNN core's on-chip memories: (vf_rnn_buffers_t *, the arrays it points to)."""
        ffi = self.ffi
        geo = ffi.new("vf_rnn_geometry_t *")
        self.lib.vf_rnn_core_geometry(geo)
        keep = {
            "wbuf": ffi.new("int8_t[]", geo.wbuf_bytes),
            "vbuf": ffi.new("int8_t[]", geo.vbuf_bytes),
            "acc": ffi.new("int32_t[]", geo.acc_words),
            "param": ffi.new("int32_t[]", geo.param_entries * isa.PARAM_ENTRY_WORDS),
            "state": ffi.new("int32_t[]", geo.state_words),
            "act": ffi.new("int32_t[]", geo.act_buffer_words),  # a table copy per gate lane
        }
        return ffi.new("vf_rnn_buffers_t *", keep), keep

    def _buffers(self, core: _Core):
        if core.buffers is None:
            # BRAM contents persist between runs, so the arrays live with the core.
            core.buffers = self.new_core_buffers()
        return core.buffers[0]

    def window_pointer(self, address: int, nbytes: int):
        """(int8_t * at physical ``address``, bytes reachable from it, at most
        ``nbytes``): the dispatcher's m_axi window. (NULL, 0) outside memory."""
        start = address - self.window_base
        if nbytes <= 0 or not 0 <= start < len(self.window):
            return self.ffi.NULL, 0
        return self.window_cdata + start, min(int(nbytes), len(self.window) - start)

    def irq_line(self, name: str = "dispatcher"):
        """The interrupt line of IP ``name`` (only the dispatcher has one):
        an object whose ``wait(seen, timeout)`` returns a new event count once
        the line was raised after ``seen``."""
        if name != "dispatcher":
            raise EmulationError(f"{self.name}: no emulated interrupt line for {name!r}")
        return self.dispatcher.irq_line

    def close(self):
        """Stops the emulated dispatcher's thread."""
        self.dispatcher.shutdown()

    def _execute(self, core: _Core) -> RunRecord:
        v = core.values
        seg, seg_limit, insn_offset, insn_count = (v[name] for name in ARGUMENTS)
        t0 = time.perf_counter()
        counters = self.ffi.new("vf_cnn_counters_t *")
        common = dict(core=core.index, seg_limit=seg_limit, insn_offset=insn_offset,
                      insn_count=insn_count)

        mem_off = self._find_bank(seg, 0)
        mem, off = mem_off if mem_off is not None else (None, None)
        fault_addr = None
        if mem is None or (not self.cross_bank and mem.idx != core.bank):
            fault_addr = 0  # the segment's first byte is not reachable from this core
        elif off + seg_limit > mem.size:
            fault_addr = mem.size - off  # first segment offset past the bank's end
        if fault_addr is not None:
            return RunRecord(ended=False, fault=_FAULT_SEGMENT, fault_name=isa.FAULT_NAMES[_FAULT_SEGMENT],
                             fault_insn=0, fault_addr=fault_addr, fault_opcode=_NO_OPCODE,
                             counters=self._counters(counters), iters=None, steps=0,
                             host_seconds=time.perf_counter() - t0,
                             bank=None if mem is None else mem.idx, seg_offset=off, **common)

        # iters must hold insn_count entries; a program that cannot fit its
        # segment faults on fetch anyway, and gets no per-instruction record
        # (so a huge insn_count register value cannot exhaust host memory).
        fits = insn_offset <= seg_limit and insn_count <= (seg_limit - insn_offset) // isa.INSN_BYTES
        iters = np.zeros(insn_count, dtype=np.uint32) if fits else None
        iters_c = self.ffi.from_buffer("uint32_t[]", iters) if fits else self.ffi.NULL
        state = self.ffi.new("vf_cnn_state_t *", {"running": 1})  # as the HLS top starts
        buffers = self._buffers(core)
        seg_ptr = mem.cdata + off
        step = self.lib.vf_cnn_core_step
        end, fault = self.lib.VF_STEP_END, self.lib.VF_STEP_FAULT
        steps = 0
        while True:
            status = step(seg_ptr, seg_limit, insn_offset, insn_count, buffers, state, counters, iters_c)
            steps += 1
            if status in (end, fault):
                break
            if steps > insn_count + 1:  # every step retires an instruction
                raise EmulationError(f"core {core.index}: vf_cnn_core_step did not terminate")
        return RunRecord(ended=status == end, fault=state.fault,
                         fault_name=isa.FAULT_NAMES.get(state.fault, f"UNKNOWN({state.fault})"),
                         fault_insn=state.fault_insn, fault_addr=state.fault_addr,
                         fault_opcode=state.fault_opcode, counters=self._counters(counters),
                         iters=iters, steps=steps, host_seconds=time.perf_counter() - t0,
                         bank=mem.idx, seg_offset=off, **common)

    def _counters(self, counters) -> dict:
        return {name: int(getattr(counters, name)) for name, _ in self.ffi.typeof("vf_cnn_counters_t").fields}


# pynq.Device.devices is computed once; if it was looked at before this module
# registered the emulated device and found nothing, let the next look re-probe.
if Device.__dict__.get("_devices", None) == []:
    del Device._devices
