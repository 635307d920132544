"""A recording ``pynq.Device``: the board path's register traffic, checked
without a board.

On a board, everything vfpga does to the hardware is one of three things:
32-bit register accesses through ``pynq.MMIO``, cache flushes and
invalidates of ``PynqBuffer`` ranges, and the device addresses written into
registers. PYNQ tests its drivers with mock devices that record exactly
these; :class:`RecordingDevice` does the same in front of another device
(an :class:`~vfpga.driver.emulated.EmulatedDevice` by default, which gives
the behaviour), so tests can assert that deploy, run, re-allocate and fault
recovery issue the writes, flushes and invalidates the HLS interfaces need:
offsets from the board config, the entry in DDR before the doorbell, the
records invalidated before they are read.

Every access is decoded against the board config alone (not against the
driver's tables), so a driver that computed an offset wrongly shows up as a
wrong register name here.
"""

from __future__ import annotations

import dataclasses
import threading

from pynq.pl_server.device import Device

from vfpga import overlay
from vfpga.driver.emulated import EmulatedDevice


@dataclasses.dataclass(frozen=True)
class Event:
    """One access. ``kind``: "write" | "read" (registers: ``ip``, ``register``
    as named by the board config, ``value``) or "flush" | "invalidate"
    (device memory: ``address`` and ``size`` in bytes, ``bank``)."""

    seq: int
    kind: str
    address: int
    size: int = 4
    value: int | None = None
    ip: str | None = None
    register: str | None = None
    bank: int | None = None
    thread: str = ""


class RegisterMap:
    """Names of the 32-bit words of the dispatcher's and the cores' AXI-Lite
    slaves, from the board config: ``dispatcher.mem.lo``,
    ``dispatcher.file.irq_enable``, ``dispatcher.tenant[3].ring_tail``,
    ``cnn_core[2].seg.hi``..."""

    def __init__(self, cfg: dict):
        self.names: dict[int, tuple[str, str]] = {}
        disp = cfg["dispatcher"]
        base = disp["base_address"]
        wide = {*overlay.config.bank_port_registers(cfg), "mem_bytes", "mem_base", "steps", "frames", "cycles",
                "seg_base", "requests", "failed", "barriers", "insns", "load_iters", "compute_iters", "save_iters",
                "core_cycles", "request_cycles"}

        def add(address, ip, name, prefix=""):
            if name in wide:
                self.names[address] = (ip, prefix + name + ".lo")
                self.names[address + 4] = (ip, prefix + name + ".hi")
            else:
                self.names[address] = (ip, prefix + name)

        for name, off in disp["registers"].items():
            if name != "file":
                add(base + off, "dispatcher", name)
        file = base + disp["registers"]["file"]
        for name, off in disp["file_registers"].items():
            add(file + off, "dispatcher", name, "file.")
        for t in range(disp["tenants"]):
            for name, off in disp["tenant_registers"].items():
                add(file + disp["tenant_base"] + t * disp["tenant_stride"] + off, "dispatcher", name,
                    f"tenant[{t}].")
        core = cfg["cnn_core"]
        for i in range(core["count"]):
            for name, off in core["registers"].items():
                at = core["base_address"] + i * core["address_stride"] + off
                self.names[at] = (f"cnn_core[{i}]", name)
                if name in ("seg", "insns", "load_iters", "compute_iters", "save_iters"):
                    self.names[at] = (f"cnn_core[{i}]", name + ".lo")
                    self.names[at + 4] = (f"cnn_core[{i}]", name + ".hi")

    def name(self, address: int) -> tuple[str | None, str | None]:
        return self.names.get(address, (None, None))


class _RecordingMemory:
    """A bank of the inner device whose buffers sync through the recorder."""

    def __init__(self, recorder: RecordingDevice, inner):
        self._recorder, self._inner = recorder, inner

    def allocate(self, shape, dtype="u4", **kwargs):
        buf = self._inner.allocate(shape, dtype, **kwargs)
        buf.device = self._recorder  # PynqBuffer.flush/invalidate call buf.device (views inherit it)
        return buf

    def __getattr__(self, name):  # base_address, free_bytes, idx, ...
        return getattr(self._inner, name)


class RecordingDevice(Device):
    """Records every register access and buffer sync on its way to ``inner``
    (an EmulatedDevice of ``board`` unless given). ``events`` is the log;
    :meth:`clear` empties it; ``record_reads=False`` keeps polling reads out
    of it; ``route_irq`` hands the inner device's interrupt line to the
    driver instead of letting it poll."""

    def __init__(self, board: str = "u200", inner=None, record_reads: bool = True, route_irq: bool = False,
                 **emulated_kwargs):
        self.inner = inner if inner is not None else EmulatedDevice(board, **emulated_kwargs)
        super().__init__(f"recording_{self.inner.name}")
        self.name = f"recording {self.inner.name}"
        self.config = self.inner.config
        self.board = self.config["name"]
        self.capabilities = {"REGISTER_RW": True}
        self.map = RegisterMap(self.config)
        self.record_reads = record_reads
        self.route_irq = route_irq
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._seq = 0
        # what drivers see: the inner device's IP and memory, routed through here
        self.ip_dict = {k: {**v, "device": self} for k, v in self.inner.ip_dict.items()}
        self.mem_dict = self.inner.mem_dict
        self.gpio_dict, self.interrupt_controllers, self.interrupt_pins = {}, {}, {}
        self.hierarchy_dict = {}
        self.banks = [_RecordingMemory(self, m) for m in self.inner.banks]

    def __repr__(self):
        return f"RecordingDevice({self.inner!r}, {len(self.events)} events)"

    # ---- the log ----------------------------------------------------------------------------
    def _log(self, **kw) -> None:
        with self._lock:
            self.events.append(Event(seq=self._seq, thread=threading.current_thread().name, **kw))
            self._seq += 1

    def clear(self) -> None:
        with self._lock:
            self.events = []

    def writes(self, ip: str | None = None) -> list[Event]:
        return [e for e in self.events if e.kind == "write" and (ip is None or e.ip == ip)]

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    # ---- registers (pynq.MMIO's REGISTER_RW hooks) ------------------------------------------------------
    def read_registers(self, address: int, length: int) -> bytes:
        data = self.inner.read_registers(address, length)
        if self.record_reads:
            for i in range(length // 4):
                ip, reg = self.map.name(address + 4 * i)
                self._log(kind="read", address=address + 4 * i, value=int.from_bytes(data[4 * i:4 * i + 4], "little"),
                          ip=ip, register=reg)
        return data

    def write_registers(self, address: int, data) -> None:
        data = bytes(data)
        for i in range(len(data) // 4):
            ip, reg = self.map.name(address + 4 * i)
            self._log(kind="write", address=address + 4 * i, value=int.from_bytes(data[4 * i:4 * i + 4], "little"),
                      ip=ip, register=reg)
        self.inner.write_registers(address, data)

    # ---- device memory -------------------------------------------------------------------------
    def _where(self, bo, offset):
        memory = getattr(bo, "memory", None)
        base = memory.base_address + bo.offset if memory is not None else 0
        return base + offset, getattr(memory, "idx", None)

    def flush(self, bo, offset, ptr, size):
        address, bank = self._where(bo, offset)
        self._log(kind="flush", address=address, size=size, bank=bank)
        self.inner.flush(bo, offset, ptr, size)

    def invalidate(self, bo, offset, ptr, size):
        address, bank = self._where(bo, offset)
        self._log(kind="invalidate", address=address, size=size, bank=bank)
        self.inner.invalidate(bo, offset, ptr, size)

    @property
    def default_memory(self):
        return self.banks[0]

    def get_memory_by_idx(self, idx: int):
        self.inner.get_memory_by_idx(idx)  # its range check and message
        return self.banks[idx]

    def get_memory(self, desc: dict):
        return self.banks[desc["idx"]]

    def allocate(self, shape, dtype="u4", target=None, **kwargs):
        memory = target if isinstance(target, _RecordingMemory) else self.banks[0 if target is None else int(target)]
        return memory.allocate(shape, dtype, **kwargs)

    # ---- pass-through -----------------------------------------------------------------------------
    @property
    def irq_line(self):
        """The inner device's interrupt line when ``route_irq``; None otherwise,
        so the dispatcher driver polls its ``irq`` register as on a board
        whose overlay does not route the line to the host."""
        return self.inner.irq_line if self.route_irq else None

    def close(self):
        if hasattr(self.inner, "close"):
            self.inner.close()

    def __getattr__(self, name):  # emulation-only introspection (bank_array, dispatcher, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
