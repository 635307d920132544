"""Timing-only simulation of the shared board: many requests, modeled time.

The functional emulation answers "what does the hardware compute"; this
module answers "how long does it take" for workloads far too long to run
through the C-simulated cores (thousands of ResNet-50 requests). It keeps
everything that decides timing and drops only the arithmetic:

* the real level-1 dispatcher (hls/dispatcher.cpp through cffi) walks the
  real dispatch programs from the dynamic stage, with the tenants' rings,
  records, masks and barriers in a simulated DDR window;
* frames take the time :class:`vfpga.runtime.hw.timeline.PoolTimeline`
  gives them -- the same object the emulated device uses, so a request takes
  the same modeled cycles here as on the emulated device;
* the host side is ideal and instantaneous: a request is posted the cycle it
  arrives (or the cycle its tenant's previous request completes), the next
  part of a request the cycle the last one completes; CPU parts (fallback
  ops) take no device time and are reported as such.

Frames are not executed (their outputs are garbage), which is what makes it
fast; their duration depends only on their instructions.

Modes: spatial sharing (each tenant on its own cores, requests of different
tenants concurrent) or ``serial=True`` (time-division multiplexing: one
request on the whole device at a time, in arrival order, the tenant given
every core for it, no buffer scrub between tenants -- the static baselines).
"""

from __future__ import annotations

import collections
import mmap
import sys
from dataclasses import dataclass, field

import numpy as np

from vfpga import overlay
from vfpga.driver import host_isa, isa
from vfpga.runtime.compiler import dynamic, rnn, slots, static
from vfpga.runtime.compiler.segment import PAGE, RING_SIZE, check_fits, rnn_segment_layout, segment_layout
from vfpga.runtime.hw.timeline import PoolTimeline

_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)


@dataclass
class RequestTiming:
    tenant: str
    arrival: int  # cycle the request arrived
    start: int  # cycle its first part was posted
    end: int  # cycle its last record was written
    device_cycles: int  # sum of its parts' record cycles

    @property
    def latency(self) -> int:
        return self.end - self.arrival


@dataclass
class SimTenant:
    name: str
    index: int
    compiled: static.CompiledModel
    table: dynamic.DispatchTable
    seg_win: int
    size: int
    layout: object
    cores: list[int]
    accel_parts: int
    plans: dict = field(default_factory=dict)
    k: int = 0  # cores the active programs were made for
    half: int = 0
    new_cores: list = field(default_factory=list)
    kind: str = "cnn"
    # requests in progress: up to max_inflight, each on its own activation slot
    queue: collections.deque = field(default_factory=collections.deque)
    max_inflight: int = 1
    slots: object = None  # slots.Slots of a CNN tenant
    active: list = field(default_factory=list)  # [RequestTiming, part, slot]
    ring: collections.deque = field(default_factory=collections.deque)  # per posted entry: (its request, its half)
    posted: int = 0  # ring sequence numbers
    acked: int = 0
    done: list = field(default_factory=list)

    @property
    def current(self) -> RequestTiming | None:
        """The oldest request in progress."""
        return self.active[0][0] if self.active else None

    def half_in_use(self, half: int) -> bool:
        return any(h == half for _, h in self.ring)


class Simulator:
    """One board (config name or dict) with tenants deployed on it."""

    def __init__(self, board, bank_bytes: int = 1 << 30, stripe_segments: bool = True):
        self.config = overlay.load(board) if isinstance(board, str) else board
        name = self.config["name"]
        module = host_isa.emulation_module(name)
        self.ffi, self.lib = ffi, lib = module.ffi, module.lib
        ddr = self.config["ddr"]
        self.bank_stride, self.n_banks = int(ddr["bank_stride"]), int(ddr["banks"])
        self.bank_bytes = min(int(ddr["bank_bytes"]), bank_bytes)
        size = (self.n_banks - 1) * self.bank_stride + self.bank_bytes
        self._mmap = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _NORESERVE)
        self.window = np.frombuffer(self._mmap, np.uint8)
        self.mem = ffi.from_buffer("int8_t[]", self._mmap)
        self.mem_bytes = size
        self._cursor = [0] * self.n_banks
        # where the board stripes segments, every segment is striped unless asked not to (Accelerator's rule)
        self.stripe = overlay.config.segment_stripe(self.config) if stripe_segments else None
        self.regs = ffi.new("vf_disp_regs_t *")
        self.state = ffi.new("vf_disp_state_t *")
        lib.vf_dispatch_reset(self.regs, self.state)
        self.regs.g.mem_base = 0
        self.n_cores = int(self.config["cnn_core"]["count"])
        self.n_rnn = int(self.config["rnn_core"]["count"])
        self.n_contexts = int(self.config["dispatcher"]["tenants"])
        self.timeline = PoolTimeline(self.config, ffi, self.n_contexts)
        self.tenants: dict[str, SimTenant] = {}
        self._report = ffi.new("vf_disp_report_t *")
        self._zero = bytes(ffi.sizeof("vf_disp_report_t"))
        self._issued = ffi.new("vf_disp_frame_t[]", self.n_cores + self.n_rnn)

    @property
    def now(self) -> int:
        return self.timeline.now

    def pool(self, kind: str) -> list[int]:
        """The pool indices of the CNN or the RNN cores."""
        return list(range(self.n_cores)) if kind == "cnn" else list(range(self.n_cores, self.n_cores + self.n_rnn))

    # ---- deployment ------------------------------------------------------------------------
    def deploy(self, name: str, compiled: static.CompiledModel, cores: list[int], bank: int | None = None,
               max_inflight: int = 1) -> SimTenant:
        """Places the tenant's segment (compiled bytes, ring, records, two
        program halves) in ``bank`` (the emptiest by default) and enables its
        context on ``cores``. A CNN tenant with ``max_inflight`` > 1 gets
        that many activation slots and has as many requests in flight."""
        if name in self.tenants:
            raise ValueError(f"a tenant named {name!r} is already deployed")
        index = len(self.tenants)
        if index >= self.n_contexts:
            raise ValueError(f"all {self.n_contexts} dispatcher contexts are in use")
        is_rnn = isinstance(compiled, rnn.CompiledRnn)
        limit = int(self.config["dispatcher"]["inflight_max"])
        if not 1 <= max_inflight <= limit or (is_rnn and max_inflight != 1):
            raise ValueError(f"max_inflight {max_inflight}: 1..{limit} for a CNN tenant on {self.config['name']}, "
                             "1 for an RNN tenant")
        table = None if is_rnn else dynamic.DispatchTable(compiled)
        layout = (rnn_segment_layout(compiled, self.n_rnn) if is_rnn
                  else segment_layout(compiled, table, max_inflight=max_inflight))
        if bank is None:
            bank = min(range(self.n_banks), key=lambda b: (self._cursor[b], b))
        if self.stripe is not None:
            bank = 0  # a striped segment's parts are at one offset of banks 0 .. ports-1
        if max_inflight > 1:  # says how many slots would fit
            check_fits(compiled, self.bank_bytes - self._cursor[bank], max_inflight, table)
        span = layout.size if self.stripe is None else self.stripe.part_bytes(layout.size)  # bytes per bank
        if self._cursor[bank] + span > self.bank_bytes:
            raise MemoryError(f"bank {bank} cannot hold {span} more bytes")
        seg_win = bank * self.bank_stride + self._cursor[bank]
        self._cursor[bank] += static.align(span, PAGE)
        # only the instructions: timing never reads weights or activations
        prog = np.asarray(compiled.program, np.uint8).reshape(-1)
        self.write_segment(seg_win, compiled.program_offset, prog)
        lay = None if is_rnn else slots.slots(compiled, max_inflight)
        for off, raw in (slots.slot_image(compiled, lay) if lay else {}).items():
            self.write_segment(seg_win, off, np.frombuffer(raw, np.uint8))
        t = SimTenant(name, index, compiled, table, seg_win, layout.size,
                      layout, sorted(cores), 1 if is_rnn else sum(p.kind == "accel" for p in compiled.parts),
                      kind="rnn" if is_rnn else "cnn", max_inflight=max_inflight, slots=lay)
        self.tenants[name] = t
        self._write_plan(t, max(len(cores), 1))  # without cores: a one-slot program that waits for a mask
        r = self.regs.tenant[index]
        r.seg_base, r.seg_limit = seg_win, layout.size
        r.ring_offset, r.ring_size, r.cpl_offset = layout.ring_offset, RING_SIZE, layout.cpl_offset
        r.cpl_ack = r.ring_tail = 0
        r.max_inflight = max_inflight
        r.core_mask = _mask(t.cores)
        r.control = isa.TENANT_CONTROL["ENABLE"] | (isa.TENANT_CONTROL["STRIPED"] if self.stripe else 0)
        self._advance()
        if self.regs.tenant[index].status != 1:
            raise RuntimeError(f"tenant {name!r} did not enable: status {self.regs.tenant[index].status}, "
                               f"fault {isa.FAULT_NAMES.get(self.regs.tenant[index].fault)}")
        return t

    def _rows(self, seg_win: int, offset: int, nbytes: int):
        """A striped segment's bytes [offset, offset + nbytes) as (ragged head
        runs, whole rows (lo, hi) of one word per part, ragged tail runs),
        each run (window offset, segment offset, bytes)."""
        st, end = self.stripe, offset + nbytes
        row = st.word * st.ports
        lo, hi = min(-(-offset // row) * row, end), max(end // row * row, offset)
        hi = max(hi, lo)
        return (overlay.config.segment_runs(st, seg_win, offset, lo - offset), (lo, hi),
                overlay.config.segment_runs(st, seg_win, hi, end - hi))

    def _part_rows(self, seg_win: int, lo: int, hi: int, p: int) -> np.ndarray:
        """Part p's words of the segment's whole rows [lo, hi), as a (rows, word) view of the window."""
        st = self.stripe
        at = p * st.bank_stride + seg_win + lo // st.ports
        return self.window[at:at + (hi - lo) // st.ports].reshape(-1, st.word)

    def write_segment(self, seg_win: int, offset: int, data: np.ndarray) -> None:
        """Segment bytes at ``offset`` of the segment at ``seg_win`` (its layout's pieces)."""
        data = np.asarray(data, np.uint8).reshape(-1)
        if self.stripe is None:
            self.window[seg_win + offset:seg_win + offset + data.size] = data
            return
        head, (lo, hi), tail = self._rows(seg_win, offset, data.size)
        for at, a, m in head + tail:
            self.window[at:at + m] = data[a - offset:a - offset + m]
        rows = data[lo - offset:hi - offset].reshape(-1, self.stripe.ports, self.stripe.word)
        for p in range(self.stripe.ports):
            self._part_rows(seg_win, lo, hi, p)[:] = rows[:, p]

    def read_segment(self, seg_win: int, offset: int, nbytes: int) -> np.ndarray:
        if self.stripe is None:
            return self.window[seg_win + offset:seg_win + offset + nbytes].copy()
        out = np.empty(nbytes, np.uint8)
        head, (lo, hi), tail = self._rows(seg_win, offset, nbytes)
        for at, a, m in head + tail:
            out[a - offset:a - offset + m] = self.window[at:at + m]
        rows = out[lo - offset:hi - offset].reshape(-1, self.stripe.ports, self.stripe.word)
        for p in range(self.stripe.ports):
            rows[:, p] = self._part_rows(seg_win, lo, hi, p)
        return out

    def _plan(self, t: SimTenant, k: int) -> dynamic.DispatchPlan:
        if k not in t.plans:
            t.plans[k] = rnn.plan_rnn(t.compiled, k) if t.kind == "rnn" else dynamic.plan(t.table, k)
        return t.plans[k]

    def _write_plan(self, t: SimTenant, k: int) -> None:
        """The dynamic stage's programs for k cores (every slot's) into a half
        no request in flight walks (the other one than the last, if free)."""
        half = next((h for h in (1 - t.half, t.half) if not t.half_in_use(h)), None)
        if half is None:
            raise RuntimeError(f"tenant {t.name!r}: re-allocation while requests walk both program halves")
        at = t.layout.program_halves[half]
        programs = self._plan(t, k).programs
        for s in range(t.max_inflight):
            for prog, cap in zip(programs if t.slots is None else slots.slot_programs(programs, t.slots, s),
                                 t.layout.part_entries):
                self.write_segment(t.seg_win, at, prog.view(np.uint8))
                at += cap * isa.DISPATCH.itemsize
        t.half = half
        t.k = k

    def set_cores(self, assignment: dict[str, list[int]]) -> None:
        """Re-allocates live: new programs where k changes, then masks,
        release before acquire (both at the current cycle)."""
        for name, cores in assignment.items():
            t = self.tenants[name]
            cores = sorted(cores)
            if cores and len(cores) != len(t.cores):
                self._write_plan(t, len(cores))
            t.new_cores = cores
        for name in assignment:  # release
            t = self.tenants[name]
            keep = [c for c in t.cores if c in t.new_cores]
            if keep != t.cores:
                self._mask(t, keep)
        for name in assignment:  # acquire
            t = self.tenants[name]
            if t.new_cores != [c for c in t.cores if c in t.new_cores] or t.new_cores != t.cores:
                self._mask(t, t.new_cores)
            t.cores = t.new_cores

    def _mask(self, t: SimTenant, cores: list[int]) -> None:
        r = self.regs.tenant[t.index]
        r.core_mask = _mask(cores)
        r.mask_seq = (r.mask_seq + 1) & 0xFFFFFFFF
        self._advance()
        if r.mask_result != 1:
            raise RuntimeError(f"tenant {t.name!r}: mask {cores} rejected ({isa.MASK_RESULTS.get(r.mask_result)})")

    # ---- requests ------------------------------------------------------------------------------
    def _post(self, t: SimTenant, item: list) -> None:
        """Posts the next part of the request in progress ``item`` ([timing, part, slot])."""
        off, entries = self._program(t, item[1], item[2])
        at = t.layout.ring_offset + (t.posted % RING_SIZE) * isa.REQUEST.itemsize
        entry = np.zeros((), isa.REQUEST)
        entry["prog_offset"], entry["prog_entries"], entry["request_id"] = off, entries, t.posted
        self.write_segment(t.seg_win, at, np.frombuffer(entry.tobytes(), np.uint8))
        t.posted += 1
        t.ring.append((item, t.half))
        self.regs.tenant[t.index].ring_tail = t.posted & 0xFFFFFFFF

    def _program(self, t: SimTenant, part: int, slot: int = 0) -> tuple[int, int]:
        first = slot * sum(t.layout.part_entries) + sum(t.layout.part_entries[:part])
        at = t.layout.program_halves[t.half] + first * isa.DISPATCH.itemsize
        return at, len(self._plan(t, t.k).programs[part])

    def _collect(self) -> bool:
        """Reads the records written since the last look; a finished part
        posts the next one, a finished request frees its tenant."""
        any_done = False
        for t in self.tenants.values():
            head = self.regs.tenant[t.index].ring_head
            while t.acked != head:
                at = t.layout.cpl_offset + (t.acked % RING_SIZE) * isa.COMPLETION.itemsize
                rec = self.read_segment(t.seg_win, at, isa.COMPLETION.itemsize).view(isa.COMPLETION)[0]
                if rec["status"] != 1:
                    raise RuntimeError(f"tenant {t.name!r}: request failed in the simulation "
                                       f"({isa.FAULT_NAMES.get(int(rec['fault']))})")
                t.acked += 1
                self.regs.tenant[t.index].cpl_ack = t.acked & 0xFFFFFFFF
                item, _ = t.ring.popleft()
                req = item[0]
                req.device_cycles += int(rec["cycles"])
                item[1] += 1
                any_done = True
                if item[1] < t.accel_parts:
                    self._post(t, item)
                else:
                    req.end = self.now
                    t.done.append(req)
                    t.active.remove(item)  # its slot is free again
        return any_done

    def _advance(self) -> int:
        ffi, lib = self.ffi, self.lib
        ffi.buffer(self._report)[:] = self._zero
        self.regs.g.cycles = self.now
        mask = lib.vf_dispatch_advance(self.regs, self.state, self.mem, self.mem_bytes, self._issued,
                                       self._report)
        self.timeline.after_advance(self._report)
        for c in range(self.n_cores + self.n_rnn):
            if mask >> c & 1:
                self.timeline.issue(c, self._issued[c], self.mem, self.mem_bytes, None, None)
        return self._report.progress

    def _retire(self) -> None:
        core, _, _ = self.timeline.pop()
        self.regs.g.cycles = self.now
        self.lib.vf_dispatch_retire(self.regs, self.state, core, self.ffi.NULL, self.ffi.NULL, self.ffi.NULL)

    def _start_requests(self, serial: bool, fifo: collections.deque) -> None:
        if serial:
            if any(t.current is not None for t in self.tenants.values()):
                return
            while fifo and fifo[0][0] <= self.now:
                arrival, name = fifo.popleft()
                t = self.tenants[name]
                pool = self.pool(t.kind)
                if t.cores != pool:  # the whole pool of its kind for this request
                    self.set_cores({**{n: [] for n, o in self.tenants.items()
                                       if o is not t and o.kind == t.kind and o.cores}, name: pool})
                self._begin(t, arrival)
                return
            return
        for t in self.tenants.values():
            while len(t.active) < t.max_inflight and t.queue and t.queue[0] <= self.now:
                self._begin(t, t.queue.popleft())

    def _begin(self, t: SimTenant, arrival: int) -> None:
        req = RequestTiming(t.name, arrival, self.now, -1, 0)
        if t.accel_parts == 0:
            req.end = self.now
            t.done.append(req)
            return
        used = {item[2] for item in t.active}
        item = [req, 0, next(s for s in range(t.max_inflight) if s not in used)]
        t.active.append(item)
        self._post(t, item)

    def run(self, arrivals: dict[str, list[int]], until: int | None = None, serial: bool = False,
            epoch: int | None = None, on_epoch=None) -> dict[str, list[RequestTiming]]:
        """Serves ``arrivals`` ({tenant: arrival cycles}) until every request
        has completed or the clock passes ``until``. ``on_epoch(sim)`` is
        called every ``epoch`` cycles (a scheduling policy may re-allocate
        there). Returns the completed requests per tenant."""
        fifo: collections.deque = collections.deque()
        for name, times in arrivals.items():
            t = self.tenants[name]
            t.queue.extend(sorted(int(a) for a in times))
            t.done = []
        # The time-multiplexed baselines are single-tenant designs the host
        # switches between requests: no buffer scrub when the cores change
        # hands (it would be charged to every switch), the benefit theirs.
        self.timeline.charge_scrubs = not serial
        if serial:
            fifo.extend(sorted((a, t.name) for t in self.tenants.values() for a in t.queue))
            for t in self.tenants.values():
                t.queue.clear()
        next_epoch = self.now + epoch if epoch else None
        while until is None or self.now < until:
            if next_epoch is not None and self.now >= next_epoch:
                on_epoch(self)
                next_epoch += epoch
            self._start_requests(serial, fifo)
            progress = self._advance()
            if self._collect() or progress:
                continue
            if self.timeline.busy:
                self._retire()
                continue
            waiting = [t.queue[0] for t in self.tenants.values() if t.queue and len(t.active) < t.max_inflight]
            if serial and fifo:
                waiting.append(fifo[0][0])
            if not waiting:
                if any(t.current is not None for t in self.tenants.values()):
                    raise RuntimeError("simulation stalled with requests in progress (a tenant without cores?)")
                break
            nxt = min(waiting)
            if next_epoch is not None:
                nxt = min(nxt, next_epoch)
            self.timeline.now = max(self.now, nxt)
        return {name: list(t.done) for name, t in self.tenants.items()}


def _mask(cores) -> int:
    m = 0
    for c in cores:
        m |= 1 << c
    return m
