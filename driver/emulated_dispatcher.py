"""The level-1 dispatcher and its CNN core pool, emulated.

This is the hardware behind the dispatcher's AXI-Lite slave on an
:class:`~vfpga.driver.emulated.EmulatedDevice`. Functionally it is the HLS
C++ itself (hls/dispatcher.cpp and hls/cnn_core.cpp through cffi):
``vf_dispatch_advance`` walks the tenants' rings and issues frames,
``vf_dispatch_run_frame`` runs a frame on a core's on-chip buffers,
``vf_dispatch_retire`` accounts it. Time comes from the cycle model: the
free-running dispatcher is a host thread that advances a modeled clock.

The timeline (discrete events, one clock for the whole pool):

* an advance costs the dispatcher's own latencies (board config,
  ``dispatcher``): ``issue_cycles`` per frame issued, ``barrier_cycles`` per
  barrier passed, ``completion_cycles`` per record written;
* a frame issued at time t on core c ends at t + its modeled cycles:
  :func:`vfpga.runtime.cycle_model.schedule` of the frame's instructions,
  with ``bank_cores`` = the frames in flight on the DDR bank holding the
  tenant's segment when it is issued (they share the bank's bandwidth), plus
  the buffer scrub when the core changes hands (``scrub_bytes_per_cycle``);
* frames retire one at a time in order of their end; every retirement is
  followed by an advance (a freed core may take the next frame).

Frames are executed functionally when they are issued (frames in flight at
the same time are independent: a tenant's frames between two barriers, or
different tenants' disjoint segments), several at once on a host thread pool
(cffi releases the GIL). The clock the C++ stamps requests with
(``regs.g.cycles``) is the modeled time, so completion records, the
tenants' core_cycles / request_cycles registers and everything the driver
derives from them are modeled figures.

When nothing is in flight and an advance makes no progress, the thread
sleeps until the host writes a register, as the hardware would spin idle.
"""

from __future__ import annotations

import heapq
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vfpga.driver import isa
from vfpga.driver.cnn_core import AP_IDLE, AP_START, AUTO_RESTART

# Register-file words the driver writes (the step reads them; every other word
# is the dispatcher's). The same list as vf_load_host() in hls/dispatcher_top.cpp.
HOST_GLOBAL_REGISTERS = ("irq_enable", "irq_mask", "mem_base")
HOST_TENANT_REGISTERS = ("control", "seg_limit", "seg_base", "ring_offset", "ring_size", "cpl_offset",
                         "ring_tail", "cpl_ack", "core_mask", "mask_seq")
_CACHE_LIMIT = 1 << 16  # frame timings kept (a deployment's frames repeat every request)


class IrqLine:
    """The dispatcher's interrupt line as the emulator raises it: ``wait``
    returns once the line has been asserted with news (a record written or a
    tenant faulted) after the event count ``seen``."""

    def __init__(self, cond: threading.Condition):
        self._cond = cond
        self.events = 0

    def raise_(self) -> None:  # called with the condition's lock held
        self.events += 1
        self._cond.notify_all()

    def wait(self, seen: int, timeout: float | None = None) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.events != seen, timeout)
            return self.events


class EmulatedDispatcher:
    """Registers, state and core buffers of the dispatcher kernel of ``device``."""

    def __init__(self, device):
        self.device = device
        self.config = device.config
        self.ffi, self.lib = ffi, lib = device.ffi, device.lib
        disp = self.config["dispatcher"]
        self.regs = ffi.new("vf_disp_regs_t *")
        self.state = ffi.new("vf_disp_state_t *")
        lib.vf_dispatch_reset(self.regs, self.state)
        self.file = np.frombuffer(ffi.buffer(self.regs), dtype=np.uint32)
        self.file_offset = disp["registers"]["file"]
        self.file_bytes = ffi.sizeof("vf_disp_regs_t")
        self.host_words = self._host_words(disp)
        self.n_cores = int(self.config["cnn_core"]["count"])
        self.issue_cycles = int(disp["issue_cycles"])
        self.barrier_cycles = int(disp["barrier_cycles"])
        self.completion_cycles = int(disp["completion_cycles"])
        self.scrub_cycles = -(-self._buffer_bytes() // int(disp["scrub_bytes_per_cycle"]))
        ddr = self.config["ddr"]
        self.bank_stride = int(ddr["bank_stride"])
        self.n_banks = int(ddr["banks"])

        # AXI-Lite scalars of the kernel (ap_ctrl_hs, mem, mem_bytes)
        self.scalars = {"mem": 0, "mem_bytes": 0}
        self.gie = self.ier = self.isr = 0
        self.running = False

        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)
        self.irq_line = IrqLine(self._wake)
        self._dirty = False  # a register write since the thread last looked
        self._stop = False
        self.error: BaseException | None = None  # set if the hardware thread died
        self._thread = None
        self._buffers = [None] * self.n_cores
        self._pool = ThreadPoolExecutor(max(1, min(self.n_cores, os.cpu_count() or 1)),
                                        thread_name_prefix="vfpga-core")
        self._timing_cache: dict = {}

        # the modeled timeline
        self.now = 0  # dispatcher clock, cycles
        self._inflight: list = []  # heap of (end, order, core, result, counters)
        self._order = 0
        self.core_busy_cycles = np.zeros(self.n_cores, np.int64)  # modeled, per core
        self.frames_run = 0
        # per tenant: modeled frame cycles as run and as they would be with the bank to themselves
        n_tenants = int(disp["tenants"])
        self.tenant_frame_cycles = np.zeros(n_tenants, np.int64)
        self.tenant_solo_cycles = np.zeros(n_tenants, np.int64)

    # ---- registers ------------------------------------------------------------------
    def _host_words(self, disp) -> set[int]:
        words = set()
        regs = self.ffi.typeof("vf_disp_global_regs_t").fields
        sizes = {name: self.ffi.sizeof(f.type) for name, f in regs}
        for name in HOST_GLOBAL_REGISTERS:
            off = int(disp["file_registers"][name])
            words.update(range(off // 4, (off + sizes[name]) // 4))
        tsizes = {name: self.ffi.sizeof(f.type) for name, f in self.ffi.typeof("vf_disp_tenant_regs_t").fields}
        base, stride = int(disp["tenant_base"]), int(disp["tenant_stride"])
        for t in range(int(disp["tenants"])):
            for name in HOST_TENANT_REGISTERS:
                off = base + t * stride + int(disp["tenant_registers"][name])
                words.update(range(off // 4, (off + tsizes[name]) // 4))
        return words

    def _check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the emulated dispatcher stopped on an internal error: {self.error!r}") \
                from self.error

    def read_word(self, off: int) -> int:
        """The 32-bit register at byte offset ``off`` of the kernel's slave."""
        regs = self.config["dispatcher"]["registers"]
        self._check()
        with self.lock:
            if self.file_offset <= off < self.file_offset + self.file_bytes:
                return int(self.file[(off - self.file_offset) // 4])
            if off == regs["ctrl"]:
                value = (AP_START | AUTO_RESTART) * self.running | (AP_IDLE * (not self.running))
                return value
            if off == regs["gie"]:
                return self.gie
            if off == regs["ier"]:
                return self.ier
            if off == regs["isr"]:
                return self.isr
            for name in ("mem", "mem_bytes"):
                base = regs[name]
                if off in (base, base + 4):
                    return (self.scalars[name] >> (8 * (off - base))) & 0xFFFFFFFF
        return 0  # unassigned offsets read as 0

    def write_word(self, off: int, value: int) -> None:
        regs = self.config["dispatcher"]["registers"]
        self._check()
        with self.lock:
            if self.file_offset <= off < self.file_offset + self.file_bytes:
                word = (off - self.file_offset) // 4
                if word in self.host_words:  # the dispatcher's words ignore host writes
                    self.file[word] = value
                    self._poke()
                return
            if off == regs["ctrl"]:
                self._control(value)
            elif off == regs["gie"]:
                self.gie = value & 1
            elif off == regs["ier"]:
                self.ier = value & 3
            elif off == regs["isr"]:
                self.isr ^= value & 3
            else:
                for name in ("mem", "mem_bytes"):
                    base = regs[name]
                    if off in (base, base + 4):
                        shift = 8 * (off - base)
                        self.scalars[name] = (self.scalars[name] & ~(0xFFFFFFFF << shift)) | (value << shift)
                        self._poke()

    def _poke(self) -> None:
        self._dirty = True
        self._wake.notify_all()

    def _control(self, value: int) -> None:
        """ctrl: ap_start with auto_restart runs the dispatcher forever;
        writing it without auto_restart stops it after the step in progress."""
        if value & AP_START and value & AUTO_RESTART:
            self.running = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="vfpga-dispatcher", daemon=True)
                self._thread.start()
        elif value & AP_START:
            raise RuntimeError("the dispatcher is free-running: start it with ap_start | auto_restart (0x81)")
        else:
            self.running = False
        self._poke()

    def shutdown(self) -> None:
        """Stops the thread (device close)."""
        with self.lock:
            self._stop = True
            self.running = False
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=True)

    # ---- the hardware thread ------------------------------------------------------------
    def _window(self):
        """(mem pointer, bytes) of the window the mem/mem_bytes registers name."""
        return self.device.window_pointer(self.scalars["mem"], self.scalars["mem_bytes"])

    def _buffers_of(self, core: int):
        if self._buffers[core] is None:
            self._buffers[core] = self.device.new_core_buffers()
        return self._buffers[core][0]

    def _buffer_bytes(self) -> int:
        c = self.config["cnn_core"]
        return (c["ibuf_bytes"] + c["wbuf_bytes"] + 4 * c["acc_words"] + c["obuf_bytes"]
                + 4 * c["param_entries"] * isa.PARAM_ENTRY_WORDS)

    def _loop(self) -> None:
        try:
            self._events()
        except BaseException as e:  # an emulator bug: make every later register access say so
            with self.lock:
                self.error = e
                self.running = False
                self.irq_line.raise_()
            raise

    def _events(self) -> None:
        ffi, lib = self.ffi, self.lib
        report = ffi.new("vf_disp_report_t *")
        zero = bytes(ffi.sizeof("vf_disp_report_t"))
        issued = ffi.new("vf_disp_frame_t[]", self.n_cores)
        while True:
            with self.lock:
                while not self._stop and not self.running:
                    self._wake.wait()
                if self._stop:
                    return
                self._dirty = False
                mem, mem_bytes = self._window()
                ffi.buffer(report)[:] = zero
                self.regs.g.cycles = self.now
                mask = lib.vf_dispatch_advance(self.regs, self.state, mem, mem_bytes, issued, report)
                records = report.requests_ok + report.requests_failed + report.requests_aborted
                self.now += (self.issue_cycles * report.frames_issued + self.barrier_cycles * report.barriers
                             + self.completion_cycles * records)
                frames = [(c, ffi.new("vf_disp_frame_t *", issued[c])) for c in range(self.n_cores)
                          if mask >> c & 1]
                progress = report.progress
                if records or report.faults:
                    self.regs.g.cycles = self.now
                    self.irq_line.raise_()
            if frames:
                self._issue(frames, mem, mem_bytes)
            with self.lock:
                if self._inflight:
                    end, _, core, result, counters, _ = heapq.heappop(self._inflight)
                    self.now = max(self.now, end)
                    self.regs.g.cycles = self.now
                    lib.vf_dispatch_retire(self.regs, self.state, core, result, counters, ffi.NULL)
                    continue
                if progress == 0 and not frames:
                    if self.regs.g.irq:
                        self.irq_line.raise_()
                    while not self._dirty and not self._stop and self.running:
                        self._wake.wait()

    def _issue(self, frames, mem, mem_bytes) -> None:
        """Runs the issued frames (concurrently) and schedules their ends."""
        ffi, lib = self.ffi, self.lib

        def run(item):
            core, frame = item
            result = ffi.new("vf_cnn_state_t *")
            counters = ffi.new("vf_cnn_counters_t *")
            lib.vf_dispatch_run_frame(mem, mem_bytes, frame, self._buffers_of(core), result, counters, ffi.NULL)
            return result, counters

        outcomes = list(self._pool.map(run, frames)) if len(frames) > 1 else [run(frames[0])]
        with self.lock:
            start = self.now
            for (core, frame), (result, counters) in zip(frames, outcomes):
                bank = self._bank_of(frame.seg_win)
                sharing = 1 + sum(1 for e in self._inflight if e[5] == bank)
                cycles = self._frame_cycles(mem, mem_bytes, frame, result, counters, sharing)
                solo = cycles if sharing == 1 else self._frame_cycles(mem, mem_bytes, frame, result, counters, 1)
                if frame.scrub:
                    cycles += self.scrub_cycles
                    solo += self.scrub_cycles
                self.core_busy_cycles[core] += cycles
                self.tenant_frame_cycles[frame.tenant] += cycles
                self.tenant_solo_cycles[frame.tenant] += solo
                self.frames_run += 1
                self._order += 1
                heapq.heappush(self._inflight, _Flight(start + cycles, self._order, core, result, counters, bank))

    def _bank_of(self, seg_win: int) -> int:
        return min(int(seg_win) // self.bank_stride, self.n_banks - 1)

    def _frame_cycles(self, mem, mem_bytes, frame, result, counters, sharing: int) -> int:
        """Modeled cycles of a frame: the cycle model's schedule of its
        instructions, bank shared ``sharing`` ways. A faulting frame is charged
        what the core's counters say it did, nothing overlapped: its units run
        out of program order, so the instructions before the fault need not
        have run, nor been validated (scheduling their unchecked fields could
        cost ~2**62 cycles and overflow the clock)."""
        from vfpga.runtime import cycle_model  # the timing model lives with the compiler that also uses it

        n = int(frame.n_insns)
        if result.fault:
            fetched = max(1, min(n, int(result.fault_insn) + 1))
            return (cycle_model.fetch_cycles(fetched, self.config, sharing)
                    + int(counters.insns) * cycle_model.UNIT_ISSUE_CYCLES
                    + int(counters.load_iters) + int(counters.compute_iters) + int(counters.save_iters))
        start = int(frame.seg_win) + int(frame.frame_offset)
        if n <= 0 or start + n * isa.INSN_BYTES > mem_bytes:
            return cycle_model.fetch_cycles(max(n, 1), self.config, sharing)
        raw = bytes(self.ffi.buffer(mem + start, n * isa.INSN_BYTES))
        key = (raw, sharing)
        cycles = self._timing_cache.get(key)
        if cycles is None:
            try:
                cycles = int(cycle_model.schedule(raw, self.config, sharing).total_cycles)
            except cycle_model.ScheduleError:
                # a program the model cannot schedule (the core faulted on it):
                # the fetch and each instruction's issue, nothing overlapped
                cycles = cycle_model.fetch_cycles(n, self.config, sharing) + n * cycle_model.UNIT_ISSUE_CYCLES
            if len(self._timing_cache) >= _CACHE_LIMIT:
                self._timing_cache.clear()
            self._timing_cache[key] = cycles
        return cycles


class _Flight(tuple):
    """(end, order, core, result, counters, bank): a frame in flight, ordered by end."""

    __slots__ = ()

    def __new__(cls, end, order, core, result, counters, bank):
        return super().__new__(cls, (end, order, core, result, counters, bank))

    def __lt__(self, other):  # cffi objects are not comparable: order by (end, order) only
        return (self[0], self[1]) < (other[0], other[1])
