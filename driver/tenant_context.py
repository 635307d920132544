"""Tenant contexts of the level-1 dispatcher: request rings, doorbells,
completion records, core masks and faults, as the driver sees them.

A :class:`TenantContext` binds dispatcher context ``index`` to a tenant
segment. Inside the segment sit the request ring (``ring_size`` entries of
vf_disp_request_t) and as many completion records (vf_disp_completion_t);
the driver writes ring entries into its host copy, flushes them to device
memory and then rings the doorbell (ring_tail); the dispatcher writes a
record per request and raises the interrupt; the driver invalidates and
reads the records, hands them on, then acknowledges them (cpl_ack). All
hardware numbers (offsets, formats, codes) come from the board config and
the ISA header.

One :class:`CompletionHandler` thread per dispatcher services the
interrupt for all contexts and hands each record to its context's
callback. Every method is safe to call from several threads.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import threading
import time

from vfpga.driver import isa
from vfpga.driver.dispatcher import Dispatcher
from vfpga.driver.segment import Segment

_STATUS = {name: value for value, name in isa.TENANT_STATUS.items()}
_MASK = {name: value for value, name in isa.MASK_RESULTS.items()}
_CPL = {name: value for value, name in isa.RECORD_STATUS.items()}
_CPL_FIELDS = isa.COMPLETION.names
# the record's fields a Completion keeps as they are, and where status and fault_core (decoded) sit in it
_CPL_COPIED = ("request_id", "fault", "fault_addr", "fault_insn", "fault_entry", "fault_opcode", "cycles", "frames",
               "barriers", "insns")
_cpl_copied = operator.itemgetter(*(_CPL_FIELDS.index(n) for n in _CPL_COPIED))
_CPL_STATUS, _CPL_CORE = _CPL_FIELDS.index("status"), _CPL_FIELDS.index("fault_core")
_PROG_OFFSET, _PROG_ENTRIES, _REQUEST_ID = (isa.REQUEST.names.index(n) for n in ("prog_offset", "prog_entries",
                                                                             "request_id"))
NO_CORE = 0xFFFFFFFF
log = logging.getLogger("vfpga.driver")


class QueueFull(RuntimeError):
    """The tenant's request ring has no free entry."""


class MaskRejected(RuntimeError):
    """The dispatcher refused a core mask (a core out of range or held by another tenant)."""

    def __init__(self, context: int, mask: int, result: str, conflict: int):
        self.mask, self.result, self.conflict = mask, result, conflict
        what = "names no core" if result == "REJECT_RANGE" else "is held by another tenant"
        super().__init__(f"tenant context {context}: core mask {mask:#x} rejected ({result}): "
                         f"cores {_bits(conflict)} {what}")


class ContextError(RuntimeError):
    """A context that would not enable, disable or answer in time."""


def _bits(mask: int) -> list[int]:
    return [i for i in range(32) if mask >> i & 1]


def fault_name(code: int) -> str:
    return isa.FAULT_NAMES.get(code, f"UNKNOWN({code})")


@dataclasses.dataclass(frozen=True)
class Completion:
    """One completion record, decoded."""

    seq: int
    request_id: int
    status: str  # OK | FAULT | ABORTED
    fault: int
    fault_core: int | None
    fault_addr: int
    fault_insn: int
    fault_entry: int
    fault_opcode: int
    cycles: int  # request start to record, dispatcher clock (modeled in emulation)
    frames: int
    barriers: int
    insns: int
    collected_at: float = dataclasses.field(default=0.0, compare=False)  # host perf_counter when read
    # host perf_counter when its doorbell was rung (None: posted before this driver's context object)
    posted_at: float | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def decode(cls, raw: tuple, seq: int, collected_at: float, posted_at: float | None) -> Completion:
        """The record whose vf_disp_completion_t fields are ``raw``, in order.
        Built through the instance's __dict__: the generated __init__ of a
        frozen dataclass sets each field with object.__setattr__, which costs
        2 us on a path every request takes."""
        c = object.__new__(cls)
        fields = c.__dict__
        fields.update(zip(_CPL_COPIED, _cpl_copied(raw)))
        status, core = raw[_CPL_STATUS], raw[_CPL_CORE]
        fields.update(seq=seq, status=isa.RECORD_STATUS.get(status, f"UNKNOWN({status})"),
                      fault_core=None if core == NO_CORE else core, collected_at=collected_at, posted_at=posted_at)
        return c

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def fault_name(self) -> str:
        return fault_name(self.fault)

    def describe(self) -> str:
        if self.ok:
            return f"request {self.request_id} OK"
        where = f" on core {self.fault_core}" if self.fault_core is not None else ""
        return (f"request {self.request_id} {self.status}: {self.fault_name}{where}, address {self.fault_addr:#x}, "
                f"instruction {self.fault_insn} of dispatch entry {self.fault_entry}")


@dataclasses.dataclass(frozen=True)
class FaultInfo:
    """The context's fault registers (the first fault since enable)."""

    code: int
    core: int | None
    addr: int
    insn: int
    entry: int
    seq: int
    opcode: int

    @property
    def name(self) -> str:
        return fault_name(self.code)

    def __str__(self):
        where = f" on core {self.core}" if self.core is not None else ""
        return (f"{self.name}{where} at segment offset {self.addr:#x} (instruction {self.insn}, dispatch entry "
                f"{self.entry}, request seq {self.seq})")


def ring_bytes(ring_size: int) -> tuple[int, int]:
    """(request ring bytes, completion record bytes) of a ring of ``ring_size`` entries."""
    return ring_size * isa.REQUEST.itemsize, ring_size * isa.COMPLETION.itemsize


class TenantContext:
    """Dispatcher context ``index`` over ``segment`` with its ring at
    ``ring_offset`` and records at ``cpl_offset`` (segment offsets)."""

    def __init__(self, dispatcher: Dispatcher, index: int, segment: Segment, ring_offset: int, cpl_offset: int,
                 ring_size: int, on_completion=None, max_inflight: int = 1, on_tick=None):
        if ring_size < 1 or ring_size & (ring_size - 1):
            raise ValueError(f"ring_size must be a power of two, not {ring_size}")
        self.max_inflight = max_inflight  # requests the dispatcher holds in flight (each on its own slot)
        self.disp = dispatcher
        self.index = index
        self.segment = segment
        self.ring_offset, self.cpl_offset, self.ring_size = ring_offset, cpl_offset, ring_size
        self.on_completion = on_completion
        # called with perf_counter() at every wake-up of the completion thread (records or not): the owner's
        # watchdog for requests whose record never comes
        self.on_tick = on_tick
        self._lock = threading.RLock()
        self._tail = 0  # next sequence number to post
        self._entry = [0] * len(isa.REQUEST.names)  # the ring entry being posted, by field (under _lock)
        self._acked = 0  # records consumed
        self._ack_written = 0  # the cpl_ack the dispatcher has been told (trails _acked while callbacks run)
        self._posted_at: dict[int, float] = {}  # sequence number -> when its doorbell was rung (until its record)
        self._mask_seq = 0

    # ---- registers ---------------------------------------------------------------------
    def _r(self, name: str) -> int:
        return self.disp.tenant_read(self.index, name)

    def _w(self, name: str, value: int) -> None:
        self.disp.tenant_write(self.index, name, value)

    @property
    def status(self) -> str:
        return isa.TENANT_STATUS.get(self._r("status"), "UNKNOWN")

    @property
    def active_mask(self) -> int:
        return self._r("active_mask")

    def fault(self) -> FaultInfo | None:
        code = self._r("fault")
        if code == isa.FAULTS["NONE"]:
            return None
        core = self._r("fault_core")
        return FaultInfo(code, None if core == NO_CORE else core, self._r("fault_addr"), self._r("fault_insn"),
                         self._r("fault_entry"), self._r("fault_seq"), self._r("fault_opcode"))

    def counters(self) -> dict[str, int]:
        names = ("requests", "failed", "frames", "barriers", "insns", "core_cycles", "request_cycles", "inflight")
        return {n: self._r(n) for n in names}

    def _wait(self, what: str, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pause = 20e-6
        while not done():
            if time.monotonic() > deadline:
                raise ContextError(f"tenant context {self.index}: timed out after {timeout} s waiting for {what} "
                                   f"(status {self.status})")
            time.sleep(pause)
            pause = min(2 * pause, 2e-3)

    # ---- life cycle ------------------------------------------------------------------------
    def enable(self, mask: int, timeout: float = 10.0) -> None:
        """Latches segment and ring, starts the ring at the host's sequence
        number and applies ``mask``. Raises MaskRejected or ContextError
        (with the fault) if the dispatcher refuses."""
        with self._lock:
            if self.status != "DISABLED":
                raise ContextError(f"tenant context {self.index} is {self.status}, not DISABLED")
            self._w("seg_base", self.segment.physical_address)
            self._w("seg_limit", self.segment.size)
            self._w("ring_offset", self.ring_offset)
            self._w("ring_size", self.ring_size)
            self._w("cpl_offset", self.cpl_offset)
            self._w("cpl_ack", self._acked & 0xFFFFFFFF)
            self._ack_written = self._acked
            self._w("ring_tail", self._tail & 0xFFFFFFFF)
            self._w("core_mask", mask)
            # always written: the register keeps what an earlier tenant of this context set
            self._w("max_inflight", self.max_inflight)
            # a striped segment (one part per bank of a multi-port core) says so at enable
            striped = getattr(self.segment, "striped", False)
            self._w("control", isa.TENANT_CONTROL["ENABLE"] | (isa.TENANT_CONTROL["STRIPED"] if striped else 0))
            self._wait("enable", lambda: self.status != "DISABLED", timeout)
            if self.status == "FAULTED":
                raise ContextError(f"tenant context {self.index} faulted at enable: {self.fault()}")
            result = isa.MASK_RESULTS.get(self._r("mask_result"), "NONE")
            if result != "APPLIED":
                raise MaskRejected(self.index, mask, result, self._r("mask_conflict"))

    def disable(self, timeout: float = 60.0) -> None:
        """Clears enable and waits until the context is DISABLED: frames in
        flight finish, every posted request gets its record (ABORTED if it
        had not finished)."""
        with self._lock:
            self._w("control", 0)
            self._wait("the context to drain", lambda: self.status == "DISABLED", timeout)

    # ---- requests ------------------------------------------------------------------------------
    @property
    def free_entries(self) -> int:
        # against the acknowledgement the dispatcher has: its doorbell check counts from cpl_ack
        return self.ring_size - (self._tail - self._ack_written)

    def post(self, prog_offset: int, prog_entries: int, request_id: int) -> int:
        """Places a request in the ring and rings the doorbell; returns its
        sequence number. Raises QueueFull when every entry awaits its record."""
        with self._lock:
            if self.free_entries <= 0:
                raise QueueFull(f"tenant context {self.index}: request ring full ({self.ring_size} requests "
                                "awaiting completion)")
            entry = self._entry
            entry[_PROG_OFFSET], entry[_PROG_ENTRIES], entry[_REQUEST_ID] = prog_offset, prog_entries, request_id
            at = self.ring_offset + (self._tail % self.ring_size) * isa.REQUEST.itemsize
            self.segment.pack_into(isa.REQUEST_STRUCT, at, *entry)
            self.segment.sync_to_device(at, isa.REQUEST.itemsize)  # the entry is in DDR before the doorbell
            seq = self._tail
            self._tail += 1
            self._w("ring_tail", self._tail & 0xFFFFFFFF)
            self._posted_at[seq] = time.perf_counter()  # under the lock: collect() cannot read the record first
            return seq

    def collect(self) -> list[Completion]:
        """Reads the records the dispatcher has written since the last call,
        acknowledges them and passes each to ``on_completion``."""
        with self._lock:
            head = self._r("ring_head")
            n = (head - self._acked) & 0xFFFFFFFF
            if n == 0 or n > self.ring_size:
                return []
            now = time.perf_counter()
            out = []
            for s in range(self._acked, self._acked + n):
                at = self.cpl_offset + (s % self.ring_size) * isa.COMPLETION.itemsize
                self.segment.sync_from_device(at, isa.COMPLETION.itemsize)
                raw = self.segment.unpack_from(isa.COMPLETION_STRUCT, at)
                out.append(Completion.decode(raw, s, now, self._posted_at.pop(s, None)))
            self._acked += n
        if self.on_completion is not None:
            for c in out:  # one failing callback must not strand the records after it
                try:
                    self.on_completion(c)
                except Exception:  # noqa: BLE001 - logged; the thread goes on
                    log.exception("tenant context %d: completion callback failed for request %d", self.index,
                                  c.request_id)
        # acknowledged after the callbacks: their waiters go on first, and the ring holds a record per
        # request the host has posted, so a late acknowledgement stalls no record
        with self._lock:
            if self._ack_written != self._acked:
                self._w("cpl_ack", self._acked & 0xFFFFFFFF)
                self._ack_written = self._acked
        return out

    @property
    def pending(self) -> int:
        """Requests posted whose records have not been collected."""
        return self._tail - self._acked

    # ---- cores ---------------------------------------------------------------------------------
    def set_mask(self, mask: int, timeout: float = 10.0) -> None:
        """Asks for core mask ``mask``; returns once the dispatcher applied it
        (frames in flight on released cores may still be finishing: see
        :meth:`Dispatcher.read` ``busy_cores``). Raises MaskRejected."""
        with self._lock:
            if self.status not in ("IDLE", "RUNNING"):
                raise ContextError(f"tenant context {self.index} is {self.status}: masks change only while it runs")
            self._mask_seq = (self._r("mask_done") + 1) & 0xFFFFFFFF
            self._w("core_mask", mask)
            self._w("mask_seq", self._mask_seq)
            self._wait("the mask change", lambda: self._r("mask_done") == self._mask_seq
                       or self.status not in ("IDLE", "RUNNING"), timeout)
            result = isa.MASK_RESULTS.get(self._r("mask_result"), "NONE")
            if result != "APPLIED":
                raise MaskRejected(self.index, mask, result, self._r("mask_conflict"))


class CompletionHandler:
    """The interrupt service thread: on every assertion of the dispatcher's
    line it collects the records of each context with news."""

    def __init__(self, dispatcher: Dispatcher, poll_interval: float = 0.05, idle_interval: float = 1.0):
        self.disp = dispatcher
        self.contexts: dict[int, TenantContext] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poll, self._idle = poll_interval, idle_interval
        self._thread = threading.Thread(target=self._run, name="vfpga-completions", daemon=True)
        self._thread.start()

    def attach(self, ctx: TenantContext) -> None:
        with self._lock:
            self.contexts[ctx.index] = ctx

    def detach(self, ctx: TenantContext) -> None:
        with self._lock:
            self.contexts.pop(ctx.index, None)

    def service(self) -> None:
        """Collects every context's new records (also called on a timeout, so
        a lost edge never strands a request)."""
        with self._lock:
            contexts = list(self.contexts.values())
        try:
            status = self.disp.read("irq_status")
        except Exception:  # noqa: BLE001 - a dead dispatcher: the contexts' watchdogs still tick
            self._tick(contexts)
            raise
        for ctx in contexts:
            if status >> ctx.index & 1 or ctx.pending:
                try:
                    ctx.collect()
                except Exception:  # noqa: BLE001 - one context's trouble must not starve the others
                    log.exception("tenant context %d: collecting completion records failed", ctx.index)
        self._tick(contexts)

    @staticmethod
    def _tick(contexts) -> None:
        now = time.perf_counter()
        for ctx in contexts:
            if ctx.on_tick is not None:
                try:
                    ctx.on_tick(now)
                except Exception:  # noqa: BLE001 - as a completion callback's
                    log.exception("tenant context %d: tick callback failed", ctx.index)

    def _run(self) -> None:
        seen = 0
        while not self._stop.is_set():
            try:
                with self._lock:
                    busy = any(ctx.pending for ctx in self.contexts.values())
                seen = self.disp.irq_line.wait(seen, self._poll if busy else self._idle)
                if self._stop.is_set():
                    return
                self.service()
            except Exception:  # noqa: BLE001 - the thread serves every tenant: it must survive
                log.exception("completion thread: servicing the interrupt failed; retrying")
                self._stop.wait(self._poll)

    def stop(self) -> None:
        """The thread ends at its next wake-up (at most the idle interval)."""
        self._stop.set()
