"""The modeled clock of the CNN core pool: when each issued frame ends.

Shared by the emulated dispatcher (which also runs frames functionally) and
the timing-only simulator of the runtime (vfpga.runtime.sim.simulator), so both
give the same figures for the same frames. The emulated dispatcher's C++ loop
(hls/emu/emu_loop.cpp) applies the rules below itself, with every frame's
numbers from this class's cycle model methods (``_solo``, ``frame_cycles``,
``_faulted``); host_tests/driver/test_native_loop.py holds it to the Python
loop that calls :meth:`PoolTimeline.issue` and :meth:`PoolTimeline.pop`. The rules, with their sources in
the board config:

* an advance of the dispatcher costs ``dispatcher.issue_cycles`` per frame
  issued, ``barrier_cycles`` per barrier passed and ``completion_cycles`` per
  record written (our design estimates; the config says so);
* a frame issued at time t ends at t + the cycle model's schedule of its
  instructions (:func:`vfpga.runtime.hw.cycle_model.schedule`: per-instruction
  cycles from the HLS loop counts, load/compute/save overlap through the
  dependency tokens), plus a buffer scrub (buffer bytes /
  ``scrub_bytes_per_cycle``) when the core changes hands;
* DDR: a frame's *demand* is the share of its bank's bandwidth it uses when
  it runs alone (its DDR bytes / bank bytes per cycle / its cycles alone,
  scrub included). While the frames in flight on the bank that holds their
  tenants' segments demand more than the bank gives, they share it max-min
  fairly (:func:`vfpga.runtime.hw.frame_timing.bank_stretches`): each
  progresses at 1 / its stretch of its rate alone, so the bank never moves
  more than its bytes per cycle. Stretches are revised whenever a frame on
  the bank is issued or ends, and each frame's end moves with them (a
  frame's transfers are taken as spread evenly over its run);
* a faulting frame is charged what the core's counters say it did, nothing
  overlapped (fetch, issue per retired instruction, the units' iterations):
  its units run out of program order, so the instructions before the fault
  need not have run nor been validated, and their unchecked fields must not
  reach the schedule;
* RNN cores (pool indices from ``cnn_core.count`` on) are timed by
  :mod:`vfpga.runtime.hw.rnn_cycle_model` the same way;
* the dispatcher is free-running and its cores progress independently
  (hls/include/vfpga_pool.h): it advances until an advance does nothing;
  then the clock moves to the earliest frame end, that frame retires (of
  frames ending together, the one issued first) and the dispatcher advances
  again (:meth:`PoolTimeline.pop`).

Memory: every core reaches every bank, through one m_axi port per bank on
the dispatcher top, and a frame's traffic goes to its segment's banks. Where
the board config stripes segments (``ddr.segment_banks`` S > 1: u200, and
u200_bigcore through its ``core_ports``), every segment is S parts at one
offset of banks 0 .. S-1, word-interleaved (driver/segment.py), so each
frame's words go to the S banks in turn and the frames of every tenant share
the S banks' bandwidth: the timeline treats them as one bank of S banks'
bytes per cycle (:func:`vfpga.overlay.config.segment_bytes_per_cycle`). A
one-port core still moves one bus word per cycle each way (its demand is at
most 2 / S of that). Elsewhere a segment lies in one bank and its frames
load that bank, whichever core runs them (the config's ``cnn_core.banks``
wiring only guides which cores a deploy picks first).

HLS constructs
--------------
Each rule with the construct that makes it true (host_tests/hw/test_model_constructs.py):

* A segment lies in one bank: the dispatcher refuses one across a bank
  boundary at enable [hls dispatcher.cpp "vf_ddr_bank(s.seg_win + s.seg_limit - 1u) != bank"];
  a striped one has each part inside its own bank
  [hls include/vfpga_ddr.h vf_seg_first_out_striped]
* One m_axi bundle per bank, each linked to its bank alone, shared by every
  core: a bank's bandwidth divides among the frames in flight on it
  [hls dispatcher_top.cpp "VF_DDR_PORT(mem, 0, VF_DREG_MEM)"] [hls include/vfpga_hls.h "bundle=bank##b"];
  the dispatcher's own accesses on the port of their bank
  [hls include/vfpga_ddr.h vf_ddr_read] [hls include/vfpga_ddr.h vf_ddr_write];
  a frame's on its segment's bank port [hls include/vfpga_ddr.h "vf_ddr_read(d, seg_win + a, dst, n);"],
  decoded by each access of the core's units
  [hls include/vfpga_unit_scheduler.h "vf_seg_read(ddr, seg_win, insn_offset"] [hls cnn_core.cpp "vf_seg_write_beat(ddr, win, drow + bt * VF_AXI_BYTES"];
  a striped segment, one bus word per bank in turn [hls include/vfpga_ddr.h vf_seg_window]:
  a one-port core's beat on the port of its word's bank
  [hls include/vfpga_ddr.h SEG_READ_BEAT_WORD unrolled] [hls include/vfpga_ddr.h SEG_WRITE_BEAT_WORD unrolled],
  the big core's a word on every port at once [hls include/vfpga_ddr.h SEG_READ_PORT unrolled]
  [hls include/vfpga_ddr.h SEG_WRITE_PORT unrolled]
  [hls cnn_core.cpp "vf_seg_read_beat(ddr, win, run + (lo - left)"]
* At most two bus words per cycle per frame: an m_axi port's read and write
  channels are independent, one word each per beat
  [hls include/vfpga_hls.h "max_widen_bitwidth=VF_DDR_PORT_BITS"]
* Free-running, cores independent: the dispatcher and every core are
  processes looping forever in a DATAFLOW region, joined by streams
  [hls dispatcher_top.cpp "VF_PRAGMA(HLS DATAFLOW)"] [hls dispatcher_top.cpp DISPATCH_LOOP]
  [hls dispatcher_top.cpp CORE_LOOP] [hls include/vfpga_hls.h VF_HARDWARE_LOOP]
  [hls include/vfpga_pool.h vf_issue_stream_t]; each iteration retires one
  ended frame, the one issued first, before it advances
  [hls include/vfpga_pool.h RETIRE_ENDED]
* issue_cycles, barrier_cycles, completion_cycles: the walk's work per
  frame, barrier and record [hls dispatcher.cpp WALK], its DDR reads
  prefetched: ring and dispatch entries come a burst at a time into on-chip
  buffers [hls dispatcher.cpp VF_DISP_PREFETCH] [hls dispatcher.cpp VF_DISP_PREFETCH_REQUESTS]
  (one round trip per burst), records are posted writes
* Scrubs: every memory of the core zeroed when it changes hands
  [hls include/vfpga_core_kinds.h vf_core_scrub], scrub_bytes_per_cycle bytes
  a cycle [hls include/vfpga_core_kinds.h SCRUB pipelined]
  [hls include/vfpga_core_kinds.h "VF_DISP_SCRUB_BYTES_PER_CYCLE / sizeof(T)"],
  the weight buffers' wide words written whole on the beat that completes
  them [hls include/vfpga_core_kinds.h SCRUB_WORDS pipelined]
* A faulting frame is charged its counters: the units count iterations as
  they retire instructions [hls include/vfpga_unit_scheduler.h vf_count]
"""

from __future__ import annotations

import math

import numpy as np

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.hw import cycle_model, frame_timing, parameters, rnn_cycle_model

_CACHE_LIMIT = 1 << 16  # frame timings kept (a deployment's frames repeat every request)


class _Flight:
    """A frame in flight: its core and outcome, its bank and demand, and its
    progress (``left``: cycles of work alone still to do at cycle ``at``,
    done at 1 / ``stretch`` per cycle; ``end``: when it ends at the current
    stretch)."""

    __slots__ = ("end", "order", "core", "result", "counters", "bank", "demand", "tenant", "start", "solo", "left",
                 "at", "stretch")

    def __init__(self, now, order, core, result, counters, bank, demand, tenant, cycles):
        self.end, self.order, self.core, self.result, self.counters = now + cycles, order, core, result, counters
        self.bank, self.demand, self.tenant = bank, demand, tenant
        self.start = self.at = now
        self.solo, self.left, self.stretch = cycles, float(cycles), 1.0


class PoolTimeline:
    """Frames in flight on the pool and the clock that orders their ends."""

    def __init__(self, config: dict, ffi, n_tenants: int):
        self.config = config
        self.ffi = ffi
        self.stripe = overlay.config.segment_stripe(config)  # a striped frame's instructions are read through it
        disp, core = config["dispatcher"], config["cnn_core"]
        self.issue_cycles = int(disp["issue_cycles"])
        self.barrier_cycles = int(disp["barrier_cycles"])
        self.completion_cycles = int(disp["completion_cycles"])
        # a scrub zeroes every on-chip memory of the core (vf_core_scrub in
        # hls/include/vfpga_core_kinds.h), each kind its own
        rnn_core = config["rnn_core"]
        cnn_bytes = (core["ibuf_bytes"] + core["wbuf_bytes"] + 4 * core["acc_words"] + core["obuf_bytes"]
                     + 4 * core["param_entries"] * isa.PARAM_ENTRY_WORDS)
        rnn_bytes = (rnn_core["wbuf_bytes"] + rnn_core["vbuf_bytes"] + 4 * rnn_core["acc_words"]
                     + 4 * rnn_core["param_entries"] * isa.PARAM_ENTRY_WORDS + 4 * rnn_core["state_words"]
                     + 4 * rnn_core["act_words"])
        per_cycle = int(disp["scrub_bytes_per_cycle"])
        self.scrub_cycles = -(-cnn_bytes // per_cycle)  # a CNN core
        self.rnn_scrub_cycles = -(-rnn_bytes // per_cycle)
        self.latencies = parameters.Latencies.of(config)
        self.charge_scrubs = True  # False: hand-overs cost nothing (the time-multiplexed baselines)
        ddr = config["ddr"]
        self.bank_stride, self.n_banks = int(ddr["bank_stride"]), int(ddr["banks"])
        self.core_bytes_per_cycle = overlay.config.core_bytes_per_cycle(config)
        self.now = 0
        self._inflight: list[_Flight] = []
        self._order = 0
        self._cache: dict = {}
        self.n_cnn = int(core["count"])
        self.core_busy_cycles = np.zeros(self.n_cnn + int(config["rnn_core"]["count"]), np.int64)
        self.frames = 0
        # per tenant: frame cycles as run, and as they would be with the bank to themselves
        self.tenant_frame_cycles = np.zeros(n_tenants, np.int64)
        self.tenant_solo_cycles = np.zeros(n_tenants, np.int64)

    @property
    def busy(self) -> bool:
        return bool(self._inflight)

    @property
    def next_end(self) -> int | None:
        return min(f.end for f in self._inflight) if self._inflight else None

    def after_advance(self, report) -> None:
        """Charges an advance's dispatcher latencies (a vf_disp_report_t)."""
        records = report.requests_ok + report.requests_failed + report.requests_aborted
        self.now += (self.issue_cycles * report.frames_issued + self.barrier_cycles * report.barriers
                     + self.completion_cycles * records)

    def bank_of(self, frame) -> int:
        """The bank a frame's traffic loads: its segment's, or for a striped
        segment ``n_banks``, standing for the stripe's banks together (a
        runtime stripes every segment of a board or none, so the two never
        share a bank)."""
        if self.stripe is not None and getattr(frame, "striped", 0):
            return self.n_banks
        return min(int(frame.seg_win) // self.bank_stride, self.n_banks - 1)

    def issue(self, core: int, frame, mem, mem_bytes: int, result, counters) -> int:
        """Schedules the end of a frame issued now (vf_disp_frame_t) with the
        core's result; returns its modeled cycles as the bank is shared now
        (they change as frames on its bank start and end)."""
        bank = self.bank_of(frame)
        rnn = core >= self.n_cnn
        if result is not None and result.fault:
            solo, nbytes = self._faulted(frame, result, counters), 0
        else:
            raw = self._bytes(mem, mem_bytes, frame)
            solo, nbytes = self._solo(raw, frame, rnn)
        if frame.scrub and self.charge_scrubs:
            solo += self.rnn_scrub_cycles if rnn else self.scrub_cycles
        demand = self.demand(nbytes, solo, bank == self.n_banks)
        self.frames += 1
        self._order += 1
        flight = _Flight(self.now, self._order, core, result, counters, bank, demand, frame.tenant, solo)
        self._inflight.append(flight)
        if demand > 0:
            self._share(bank)
        return flight.end - self.now

    def demand(self, nbytes: int, cycles: int, striped: bool) -> float:
        """The bank share a frame of ``cycles`` alone moving ``nbytes`` asks
        for (0 for no time): of its segment's bank, or of a striped
        segment's banks together."""
        return float(frame_timing.demand(nbytes, cycles, self.config, striped)) if cycles > 0 else 0.0

    def _share(self, bank: int) -> None:
        """Brings the progress of the frames on ``bank`` up to now and gives
        them the stretches of the bank's current sharing."""
        on_bank = [f for f in self._inflight if f.bank == bank]
        stretches = frame_timing.bank_stretches([f.demand for f in on_bank])
        for f, s in zip(on_bank, stretches):
            f.left = max(0.0, f.left - (self.now - f.at) / f.stretch)
            f.at, f.stretch = self.now, s
            f.end = self.now + math.ceil(f.left * s - 1e-9)

    def _faulted(self, frame, result, counters) -> int:
        fetched = max(1, min(int(frame.n_insns), int(result.fault_insn) + 1))
        done = 0 if counters is None else (int(counters.insns) * self.latencies.unit_issue_cycles
                                           + int(counters.load_iters) + int(counters.compute_iters)
                                           + int(counters.save_iters))
        return cycle_model.fetch_cycles(fetched, self.config) + done

    def _solo(self, raw: bytes | None, frame, rnn: bool) -> tuple[int, int]:
        """(cycles alone, DDR bytes) of a frame with instructions ``raw``."""
        cycles = self.frame_cycles(raw, frame, rnn)
        if raw is None or cycles <= 0:
            return cycles, 0
        key = ("bytes", rnn, raw)
        nbytes = self._cache.get(key)
        if nbytes is None:
            nbytes = self._cache[key] = self._ddr_bytes(raw, rnn)
        return cycles, nbytes

    def _ddr_bytes(self, raw: bytes, rnn: bool) -> int:
        if not rnn:
            return cycle_model.ddr_bytes(raw, self.config)
        return int(rnn_cycle_model.frames_ddr_bytes(np.frombuffer(raw, np.uint8), [0],
                                                    [len(raw) // isa.INSN_BYTES], self.config)[0])

    def _bytes(self, mem, mem_bytes: int, frame) -> bytes | None:
        """The frame's instructions, or None when they are not all inside memory."""
        n = int(frame.n_insns)
        if n <= 0:
            return None
        stripe = self.stripe if getattr(frame, "striped", 0) else None
        runs = overlay.config.segment_runs(stripe, int(frame.seg_win), int(frame.frame_offset), n * isa.INSN_BYTES)
        if any(at + m > mem_bytes for at, _, m in runs):
            return None
        return b"".join(bytes(self.ffi.buffer(mem + at, m)) for at, _, m in runs)

    def pop(self):
        """The frame that ends first: (core, result, counters); the clock
        moves to its end, and the frames left on its bank share the bank
        anew. Of frames ending at the same cycle, the one issued first (issue
        cycle, then pool order within an advance) -- the dispatcher's pick
        among the cores that reported their end (hls/include/vfpga_pool.h)."""
        f = min(self._inflight, key=lambda x: (x.end, x.order))
        self._inflight.remove(f)
        self.now = max(self.now, f.end)
        self.core_busy_cycles[f.core] += f.end - f.start
        self.tenant_frame_cycles[f.tenant] += f.end - f.start
        self.tenant_solo_cycles[f.tenant] += f.solo
        if f.demand > 0:
            self._share(f.bank)
        return f.core, f.result, f.counters

    def frame_cycles(self, raw: bytes | None, frame, rnn: bool) -> int:
        """Modeled cycles of a frame that ran to its end: the cycle model's
        schedule of its instructions ``raw`` (None: not all inside memory),
        alone on its bank."""
        # the timing models live with the compiler that also uses them
        if raw is None:
            return cycle_model.fetch_cycles(max(int(frame.n_insns), 1), self.config)
        key = (rnn, raw)
        cycles = self._cache.get(key)
        if cycles is None:
            try:
                if rnn:
                    prog = np.frombuffer(raw, np.uint8).reshape(-1, isa.INSN_BYTES)
                    cycles = rnn_cycle_model.frame_cycles(prog, self.config)
                else:
                    cycles = int(cycle_model.schedule(raw, self.config).total_cycles)
            except cycle_model.ScheduleError:
                # a program the model cannot schedule (the core faulted on it):
                # the fetch and each instruction's issue, nothing overlapped
                n = len(raw) // isa.INSN_BYTES
                cycles = cycle_model.fetch_cycles(n, self.config) + n * self.latencies.unit_issue_cycles
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = cycles
        return cycles
