"""The level-1 dispatcher and its CNN core pool, emulated.

This is the hardware behind the dispatcher's AXI-Lite slave on an
:class:`~vfpga.driver.emulated.EmulatedDevice`. Functionally it is the HLS
C++ itself (hls/dispatcher.cpp and hls/cnn_core.cpp through cffi):
``vf_dispatch_advance`` walks the tenants' rings and issues frames,
``vf_dispatch_run_frame`` runs a frame on a core's on-chip buffers,
``vf_dispatch_retire`` accounts it. Time comes from the cycle model: the
free-running dispatcher is a host thread that advances a modeled clock.

Time is :class:`vfpga.runtime.hw.timeline.PoolTimeline` (the same object
the timing-only simulator uses): dispatcher latencies per advance, each
issued frame's cycles from the cycle model with DDR banks shared by demand.
The schedule is the free-running top's (hls/include/vfpga_pool.h), as the
simulator's: the dispatcher advances until an advance does nothing, then the
clock moves to the earliest frame end, that frame retires and the
dispatcher advances again (a freed core may take the next frame). The pool
is the board's CNN cores followed by its RNN cores.

Frames are executed functionally when they are issued (frames in flight at
the same time are independent: a tenant's frames between two barriers, or
different tenants' disjoint segments), several at once on a host thread pool
(cffi releases the GIL). The clock the C++ stamps requests with
(``regs.g.cycles``) is the modeled time, so completion records, the
tenants' core_cycles / request_cycles registers and everything the driver
derives from them are modeled figures. On the timing-only board (an
``EmulatedDevice`` made with ``compute=False``) frames are timed and retired
without running: the same modeled clock, no arithmetic.

When nothing is in flight and an advance makes no progress, the thread
sleeps until the host writes a register, as the hardware would spin idle.
The C++ loop first polls for such a write for VFPGA_EMU_POLL_US
microseconds (IDLE_POLL_US by default, 0: not at all): a doorbell written
while it polls wakes no thread, which on a host whose idle cores halt
costs the writer tens of microseconds.

The loop itself runs in C++ (``loop="native"``, the default:
hls/emu/emu_loop.cpp, in the emulation library only): advances, frame runs
on C++ threads, the timeline's rules, retires, the interrupt line and the
idle wait, with no Python per frame. The cycle model stays in Python, the
one source of the numbers: the C++ loop asks this thread for a frame timing
it has not seen (a frame's cycles alone and DDR demand, its cycles at a
bank load, a faulting frame's cycles) and keeps the answer per instruction
bytes, so a deployed program's frames are timed by Python once; the bank
sharing (frame_timing.bank_stretches, the frames' ends revised as frames
start and end) is done in C++ float for float. A frame the C++ loop has
seen run without a fault (the same instructions, segment and PARAM load
bytes) runs ahead: it is timed at issue, runs on a host thread while the
loop goes on and is waited for only when it retires (a frame issued after
the first wave of a layer no longer runs alone); one that faults anyway
is an internal error (``error``); VFPGA_EMU_AHEAD=0 turns running ahead
off (every frame waited for at issue, for comparison). The Python
loop (``loop="python"``, or the environment variable VFPGA_EMU_LOOP=python)
is the reference the C++ one is tested against
(host_tests/driver/test_native_loop.py): the same clock, records and
registers.
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vfpga import overlay
from vfpga.driver.cnn_core import AP_IDLE, AP_START, AUTO_RESTART
from vfpga.runtime.hw.timeline import PoolTimeline

# Register-file words the driver writes (the step reads them; every other word
# is the dispatcher's). The same list as vf_load_host() in hls/dispatcher_top.cpp.
HOST_GLOBAL_REGISTERS = ("irq_enable", "irq_mask", "mem_base")
HOST_TENANT_REGISTERS = ("control", "seg_limit", "seg_base", "ring_offset", "ring_size", "cpl_offset",
                         "ring_tail", "cpl_ack", "core_mask", "mask_seq", "max_inflight")


IDLE_POLL_US = 500  # the C++ loop's poll for a host write before it sleeps (VFPGA_EMU_POLL_US; 0: none)


def _idle_poll_us() -> int:
    value = os.environ.get("VFPGA_EMU_POLL_US", str(IDLE_POLL_US))
    try:
        us = int(value)
    except ValueError:
        raise ValueError(f"VFPGA_EMU_POLL_US must be a whole number of microseconds, not {value!r}") from None
    if not 0 <= us <= 1_000_000:
        raise ValueError(f"VFPGA_EMU_POLL_US must be 0..1000000 microseconds, not {us}")
    return us


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


class _NativeIrqLine:
    """IrqLine of the C++ loop: the line and its event count live in C++."""

    def __init__(self, lib, emu):
        self._lib, self._emu = lib, emu

    @property
    def events(self) -> int:
        return int(self._lib.vf_emu_irq_wait(self._emu, 0xFFFFFFFFFFFFFFFF, 0.0))

    def raise_(self) -> None:
        self._lib.vf_emu_irq_raise(self._emu)

    def wait(self, seen: int, timeout: float | None = None) -> int:
        return int(self._lib.vf_emu_irq_wait(self._emu, seen, -1.0 if timeout is None else timeout))


class _NativeTimeline(PoolTimeline):
    """The PoolTimeline of the C++ loop: its cycle model methods answer the
    loop's questions, its per-core and per-tenant arrays are updated by the
    loop in place, its clock and frame count are the loop's."""

    _lib = _emu = None

    def attach(self, lib, emu) -> None:
        self._lib, self._emu = lib, emu

    @property
    def now(self) -> int:
        return 0 if self._emu is None else int(self._lib.vf_emu_now(self._emu))

    @now.setter
    def now(self, value: int) -> None:
        if self._emu is not None or value:
            raise AttributeError("the native loop's clock is set by the loop")

    @property
    def frames(self) -> int:
        return 0 if self._emu is None else int(self._lib.vf_emu_frames(self._emu))

    @frames.setter
    def frames(self, value: int) -> None:
        if self._emu is not None or value:
            raise AttributeError("the native loop's frame count is kept by the loop")

    @property
    def busy(self) -> bool:
        raise AttributeError("the native loop's frames in flight are inside the loop")

    def __setattr__(self, name, value):
        # the loop took charge_scrubs at construction (vf_emu_config_t); a later change would not reach it
        if name == "charge_scrubs" and self._emu is not None:
            raise AttributeError("charge_scrubs of the native loop is fixed when the dispatcher is made")
        super().__setattr__(name, value)


LOOPS = ("native", "python")


class EmulatedDispatcher:
    """Registers, state and core buffers of the dispatcher kernel of
    ``device``; ``loop`` "native" (C++) or "python" (the reference), by
    default the environment's VFPGA_EMU_LOOP, else native."""

    def __init__(self, device, loop: str | None = None):
        self.loop = loop or os.environ.get("VFPGA_EMU_LOOP") or "native"
        if self.loop not in LOOPS:
            raise ValueError(f"emulated dispatcher loop {self.loop!r}: not one of {', '.join(LOOPS)}")
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
        self._file_words = self.file_bytes // 4
        self.host_words = self._host_words(disp)
        self.n_cnn = int(self.config["cnn_core"]["count"])
        self.n_cores = self.n_cnn + int(self.config["rnn_core"]["count"])  # the pool: CNN cores, then RNN

        # AXI-Lite scalars of the kernel: its bank ports' base registers (mem, mem1, ...) and mem_bytes
        self.scalars = {name: 0 for name in (*overlay.config.bank_port_registers(self.config), "mem_bytes")}
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
        self._emu = None
        self.questions: collections.Counter = collections.Counter()  # the native loop's calls into Python, by kind
        if self.loop == "python":
            self.timeline = PoolTimeline(self.config, ffi, int(disp["tenants"]))
        else:
            self.timeline = t = _NativeTimeline(self.config, ffi, int(disp["tenants"]))
            arrays = (t.core_busy_cycles, t.tenant_frame_cycles, t.tenant_solo_cycles)
            if any(a.dtype != np.int64 or not a.flags.c_contiguous for a in arrays):
                raise AssertionError("the timeline's counters must be contiguous int64 arrays")
            self._emu_config = ffi.new("vf_emu_config_t *", {
                "issue_cycles": t.issue_cycles, "barrier_cycles": t.barrier_cycles,
                "completion_cycles": t.completion_cycles, "scrub_cycles": t.scrub_cycles,
                "rnn_scrub_cycles": t.rnn_scrub_cycles, "charge_scrubs": int(t.charge_scrubs),
                "compute": int(bool(device.compute)), "bank_stride": t.bank_stride, "n_banks": t.n_banks,
                "threads": max(1, min(self.n_cores, os.cpu_count() or 1)),
                "run_ahead": int(os.environ.get("VFPGA_EMU_AHEAD", "1") != "0"),
                "idle_poll_us": _idle_poll_us(),
                **{name: ffi.cast("int64_t *", a.ctypes.data) for name, a in
                   zip(("core_busy_cycles", "tenant_frame_cycles", "tenant_solo_cycles"), arrays)}})
            self._emu = ffi.gc(lib.vf_emu_new(self._emu_config, self.regs, self.state), lib.vf_emu_free)
            t.attach(lib, self._emu)
            self.irq_line = _NativeIrqLine(lib, self._emu)

    @property
    def now(self) -> int:
        """The modeled clock (cycles)."""
        return self.timeline.now

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
        self._check()
        word = (off - self.file_offset) >> 2
        if self._emu is not None and 0 <= word < self._file_words:  # the C++ loop's lock guards the file
            return self.lib.vf_emu_read_word(self._emu, word)
        regs = self.config["dispatcher"]["registers"]
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
            for name in self.scalars:
                base = regs[name]
                if off in (base, base + 4):
                    return (self.scalars[name] >> (8 * (off - base))) & 0xFFFFFFFF
        return 0  # unassigned offsets read as 0

    def write_word(self, off: int, value: int) -> None:
        self._check()
        word = (off - self.file_offset) >> 2
        if self._emu is not None and 0 <= word < self._file_words:
            if word in self.host_words:  # the dispatcher's words ignore host writes
                self.lib.vf_emu_write_word(self._emu, word, value)
            return
        regs = self.config["dispatcher"]["registers"]
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
                for name in self.scalars:
                    base = regs[name]
                    if off in (base, base + 4):
                        shift = 8 * (off - base)
                        self.scalars[name] = (self.scalars[name] & ~(0xFFFFFFFF << shift)) | (value << shift)
                        if self._emu is not None:
                            self.lib.vf_emu_set_window(self._emu, *self._window())
                        self._poke()

    def _poke(self) -> None:
        self._dirty = True
        self._wake.notify_all()
        if self._emu is not None:
            self.lib.vf_emu_poke(self._emu)

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
        if self._emu is not None:
            self.lib.vf_emu_set_running(self._emu, int(self.running))
        self._poke()

    def shutdown(self) -> None:
        """Stops the thread (device close)."""
        with self.lock:
            self._stop = True
            self.running = False
            self._wake.notify_all()
            if self._emu is not None:
                self.lib.vf_emu_stop(self._emu)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=True)

    # ---- the hardware thread ------------------------------------------------------------
    def _window(self):
        """(mem pointer, bytes) of the window the mem/mem_bytes registers name.
        The bank ports are one window here (hls/include/vfpga_ddr.h): every
        port's base register must hold the same base, else the window is
        empty and no tenant can be enabled (on the board, a port pointed
        elsewhere would reach other memory)."""
        bases = {self.scalars[n] for n in self.scalars if n != "mem_bytes"}
        if len(bases) != 1:
            return self.device.window_pointer(self.scalars["mem"], 0)
        return self.device.window_pointer(self.scalars["mem"], self.scalars["mem_bytes"])

    def _buffers_of(self, core: int):
        if self._buffers[core] is None:
            rnn = core >= self.n_cnn
            self._buffers[core] = self.device.new_rnn_core_buffers() if rnn else self.device.new_core_buffers()
        return self._buffers[core][0]

    def _loop(self) -> None:
        try:
            self._events() if self._emu is None else self._native_events()
        except BaseException as e:  # an emulator bug: make every later register access say so
            with self.lock:
                self.error = e
                self.running = False
                self.irq_line.raise_()
            raise

    def _native_events(self) -> None:
        """The C++ loop, answering its questions with the cycle model (PoolTimeline's methods)."""
        ffi, lib, emu, t = self.ffi, self.lib, self._emu, self.timeline
        need = ffi.new("vf_emu_need_t *")
        names = {lib.VF_EMU_BUFFERS: "buffers", lib.VF_EMU_SOLO: "solo", lib.VF_EMU_UNTIMED: "untimed",
                 lib.VF_EMU_FAULTED: "faulted", lib.VF_EMU_ERROR: "error"}
        while True:
            kind = lib.vf_emu_run(emu, need)  # the GIL is released while it loops
            if kind == lib.VF_EMU_STOP:
                return
            self.questions[names.get(kind, kind)] += 1
            frame, rnn = need.frame, bool(need.rnn)
            if kind == lib.VF_EMU_BUFFERS:
                lib.vf_emu_set_buffers(emu, need.core, self._buffers_of(need.core))
            elif kind == lib.VF_EMU_SOLO:  # as PoolTimeline.issue: the demand over the time alone, scrub or not
                solo, nbytes = t._solo(t._bytes(need.mem, need.mem_bytes, frame), frame, rnn)
                scrubbed = solo + (t.rnn_scrub_cycles if rnn else t.scrub_cycles)
                striped = t.bank_of(frame) == t.n_banks
                lib.vf_emu_put_solo(emu, int(solo), t.demand(nbytes, solo, striped), t.demand(nbytes, scrubbed, striped))
            elif kind == lib.VF_EMU_UNTIMED:
                lib.vf_emu_put_cycles(emu, int(t.frame_cycles(None, frame, rnn)))
            elif kind == lib.VF_EMU_FAULTED:
                lib.vf_emu_put_cycles(emu, int(t._faulted(frame, need.result, need.counters)))
            elif kind == lib.VF_EMU_ERROR:  # the loop broke its own rule; it stays stopped
                raise RuntimeError(f"native dispatcher loop: {ffi.string(need.message).decode()}")
            else:
                raise AssertionError(f"the native loop asked for {kind}")

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
                self.timeline.after_advance(report)
                frames = [(c, ffi.new("vf_disp_frame_t *", issued[c])) for c in range(self.n_cores)
                          if mask >> c & 1]
                progress = report.progress
                if records or report.faults:
                    self.regs.g.cycles = self.now
                    self.irq_line.raise_()
            if frames:
                self._issue(frames, mem, mem_bytes)
            if progress or frames:
                continue  # the dispatcher iterates until an iteration does nothing
            with self.lock:
                if self.timeline.busy:  # the frame ending next retires, then the dispatcher advances
                    core, result, counters = self.timeline.pop()
                    self.regs.g.cycles = self.now
                    lib.vf_dispatch_retire(self.regs, self.state, core, ffi.NULL if result is None else result,
                                           ffi.NULL if counters is None else counters, ffi.NULL)
                    continue
                if self.regs.g.irq:
                    self.irq_line.raise_()
                while not self._dirty and not self._stop and self.running:
                    self._wake.wait()

    def _issue(self, frames, mem, mem_bytes) -> None:
        """Runs the issued frames (concurrently) and schedules their ends."""
        ffi, lib = self.ffi, self.lib
        if not self.device.compute:  # the timing-only board: frames are timed, never run
            with self.lock:
                for core, frame in frames:
                    self.timeline.issue(core, frame, mem, mem_bytes, None, None)
            return

        def run(item):
            core, frame = item
            result = ffi.new("vf_cnn_state_t *")
            counters = ffi.new("vf_cnn_counters_t *")
            go = lib.vf_dispatch_run_frame if core < self.n_cnn else lib.vf_dispatch_run_rnn_frame
            go(mem, mem_bytes, frame, self._buffers_of(core), result, counters, ffi.NULL)
            return result, counters

        outcomes = list(self._pool.map(run, frames)) if len(frames) > 1 else [run(frames[0])]
        with self.lock:
            for (core, frame), (result, counters) in zip(frames, outcomes):
                self.timeline.issue(core, frame, mem, mem_bytes, result, counters)
