"""A deployed model: its segment, its dispatcher context, its dispatch
programs and the thread that runs its requests.

Segment layout (offsets; the compiled model's part first, untouched):

    [ compiled segment | request ring | completion records | programs A | programs B ]

The dispatch programs (the dynamic stage's output for the k cores the
tenant holds) are double-buffered: a re-allocation writes the half no
request in flight is walking, then new requests use it. A request in
flight keeps walking its program; the dispatcher folds its slots onto
whatever mask the tenant holds (slot mod k), so nothing is re-issued or lost.

Requests run one at a time per tenant (its activations have one place in
the segment; an RNN tenant deployed with ``max_batch`` runs the requests
that arrive together as one batch), or, for a CNN tenant deployed with
``max_inflight`` M > 1, up to M at a time: each request thread owns an
activation slot (runtime/compiler/slots.py) and posts that slot's programs,
the dispatcher walks the requests in flight oldest first and records them
in submission order. submit() queues them on the host, bounded by
``max_pending``.
Different tenants run concurrently on their own cores.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from vfpga.driver import isa
from vfpga.driver.segment import Segment
from vfpga.driver.tenant_context import Completion, ContextError, QueueFull, TenantContext
from vfpga.runtime.compiler import dynamic, frontend, ir, slots, static
from vfpga.runtime.compiler.frontend.marshal import from_onnx_layout, to_onnx_layout
from vfpga.runtime.compiler.frontend.reference import OrtReference
from vfpga.runtime.compiler.segment import RING_SIZE, segment_layout
from vfpga.runtime.errors import DeployError, TenantFault, TenantRemoved
from vfpga.runtime.hw import cycle_model

REQUEST_TIMEOUT_S = 600.0  # a request that gets no record in this long means the dispatcher died
LATENCY_WINDOW = 4096  # requests whose latencies stats() summarises (the most recent)


def check_throughput_options(kind: str, config: dict, max_batch, max_delay_us, max_inflight) -> None:
    """Refuses deploy options a tenant of ``kind`` ("cnn", "rnn", "mixed") on
    a board of ``config`` cannot have: dynamic batching (max_batch,
    max_delay_us) is built for RNN and CNN tenants and a mixed tenant's RNN
    part, requests in flight (max_inflight, up to the dispatcher's
    inflight_max) for CNN tenants and mixed tenants (a pipeline through both
    parts); a CNN tenant has one or the other. One check for a board's
    deploy and a cluster's."""
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise DeployError(f"max_batch must be a positive integer, not {max_batch!r}")
    if not isinstance(max_delay_us, (int, float)) or isinstance(max_delay_us, bool) or max_delay_us < 0:
        raise DeployError(f"max_delay_us must be a number >= 0, not {max_delay_us!r}")
    if max_batch > 1 and max_inflight != 1 and kind == "cnn":
        raise DeployError("a CNN tenant batches (max_batch) or keeps requests in flight (max_inflight), not "
                          "both: one batch is in flight at a time")
    if max_inflight != 1:
        limit = int(config["dispatcher"]["inflight_max"])
        if kind == "rnn":
            raise DeployError("max_inflight is implemented for CNN tenants and CNN + RNN models only (RNN "
                              "tenants batch: max_batch)")
        if not isinstance(max_inflight, int) or isinstance(max_inflight, bool) or not 1 <= max_inflight <= limit:
            raise DeployError(f"max_inflight must be 1..{limit} on {config['name']} for a CNN or CNN + RNN "
                              f"tenant, not {max_inflight!r}")

@dataclass
class SizedPlans:
    """A batching tenant's dispatch plans on k cores: one per batch size."""

    plans: dict  # batch size -> the kind's plan
    sizes: list

    @property
    def modeled_cycles(self) -> int:
        """One request alone (batch 1)."""
        return self.plans[1].modeled_cycles

    @property
    def k(self) -> int:
        return self.plans[1].k


@dataclass
class RunInfo:
    """What one request did."""

    completions: list[Completion]
    host_seconds: float  # measured on the host: input write to output read
    modeled_cycles: int  # the accelerator parts' record cycles (dispatcher clock)
    modeled_seconds: float
    cores: int  # cores the tenant held when the request finished
    host_cpu_seconds: float = 0.0  # measured: the CPU parts (onnxruntime on the host, glue included)
    # measured host overhead (the driver's path, as on a board): submit() to the first doorbell, and the
    # last completion record read by the driver to the result handed to the future; the model's CPU
    # parts (host_cpu_seconds) in between are not counted
    submit_to_doorbell_s: float | None = None
    completion_to_result_s: float | None = None
    # perf_counter at the last completion record's read, less the CPU parts after it (the second half's start)
    collected_at: float | None = field(default=None, repr=False)
    batch: int = 1  # requests that ran together in this run (dynamic batching; RNN tenants)
    batch_size: int = 1  # the compiled batch size they ran on (the rest padding)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.completions)


@dataclass
class _Job:
    x_q: np.ndarray
    future: Future
    float_io: bool
    submitted: float = field(default_factory=time.perf_counter)  # host clock when submit() was called


class _PerRequest(threading.local):
    """What a request thread keeps about the request it runs."""

    def __init__(self):
        self.slot = 0  # its activation slot
        self.host: dict[str, np.ndarray] = {}  # float CPU results of the current request
        self.doorbell_at: float | None = None  # its first doorbell
        self.completed_at = 0.0  # its last completion record, read by the driver
        self.cpu_s = self.cpu_at_bell = self.cpu_at_done = 0.0  # its CPU parts' seconds: so far, at those
        self.stop = False  # the removal sentinel was met after some requests (RnnTenant._take)
        self.fold_writer = None  # the folded input's writer (input_fold.FoldWriter), made at its first request


def _per_request(name: str) -> property:
    return property(lambda self: getattr(self._req, name), lambda self, v: setattr(self._req, name, v))


class Tenant:
    """A model deployed on ``cores`` (physical core indices) of an accelerator."""

    kind = "cnn"  # the cores it runs on
    max_inflight = 1
    slots = None  # slots.Slots with max_inflight > 1
    _host = _per_request("host")
    _doorbell_at = _per_request("doorbell_at")
    _completed_at = _per_request("completed_at")
    _cpu_s = _per_request("cpu_s")
    _cpu_at_bell = _per_request("cpu_at_bell")
    _cpu_at_done = _per_request("cpu_at_done")
    _stop = _per_request("stop")

    def __init__(self, accel, name: str, compiled, context_index: int, cores: list[int],
                 bank: int, max_pending: int = 64, max_inflight: int = 1):
        self.accel = accel
        self.name = name
        self.compiled = compiled
        self.cores = sorted(cores)
        # (core_cycles, request_cycles) counters when the core count last changed: utilisation counts from there
        self.util_base = (0, 0)
        self.max_pending = max_pending
        self._req = _PerRequest()
        check_throughput_options(self.kind, accel.config, 1, 0.0, max_inflight)
        self.max_inflight = max_inflight
        size = self._prepare()
        try:
            self.segment = Segment(size, bank=bank, device=accel.device, stripe=accel.stripe)
        except MemoryError as e:
            raise DeployError(f"tenant {name!r} needs a {size}-byte segment in DDR bank {bank}, which cannot "
                              f"hold it: {e}" + self._slots_that_fit(bank)) from e
        try:
            for offset, data in self._segment_image().items():
                self.segment.write(offset, np.frombuffer(data, dtype=np.uint8))
            # The whole segment goes down once, so no earlier tenant's bytes remain in it.
            self.segment.sync_to_device()
            self._prog_lock = threading.Lock()
            self._halves_free = threading.Condition(self._prog_lock)
            # one per request thread, held while it runs a request (see hold())
            self._exec_locks = [threading.Lock() for _ in range(self.max_inflight)]
            self._exec_lock = self._exec_locks[0]
            self._active_half = 0
            self._half_users = [0, 0]  # requests posted on each program half, not recorded yet
            self._write_programs(0, self.plan)
            self.context = TenantContext(accel.dispatcher, context_index, self.segment, self.ring_offset,
                                         self.cpl_offset, RING_SIZE, on_completion=self._on_completion,
                                         max_inflight=self.max_inflight)
            accel.completions.attach(self.context)
            self.context.enable(_mask(self.cores))
        except BaseException:
            self.segment.free()
            raise
        self._after_deploy()
        self._waiting: dict[int, tuple[threading.Event, list]] = {}
        self._ids = itertools.count(1)
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._state_lock = threading.Lock()
        self.fault: TenantFault | None = None
        self.removed = False
        # host-side figures
        self.requests = 0
        self.failed = 0
        # the last LATENCY_WINDOW requests' latencies (bounded however long the tenant serves)
        self.host_latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.host_cpu_seconds: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)  # CPU parts
        self.modeled_latencies: collections.deque[int] = collections.deque(maxlen=LATENCY_WINDOW)
        # (submit -> doorbell, completion -> result) seconds: perf_counter stamps of the request thread
        self.host_overheads: collections.deque[tuple[float, float]] = collections.deque(maxlen=LATENCY_WINDOW)
        self.run_batches: collections.deque[int] = collections.deque(maxlen=LATENCY_WINDOW)  # requests per run
        # one request thread per slot
        self._workers = [threading.Thread(target=self._serve, args=(s,), name=f"vfpga-tenant-{name}-{s}",
                                          daemon=True) for s in range(self.max_inflight)]
        self._worker = self._workers[0]
        for w in self._workers:
            w.start()

    # ---- the model's kind (overridden by RnnTenant) -------------------------------------------
    def _prepare(self) -> int:
        """Dynamic stage for the cores held and the segment layout; returns the segment size."""
        self.table = dynamic.DispatchTable(self.compiled)
        self.plan = dynamic.plan(self.table, len(self.cores))
        layout = segment_layout(self.compiled, self.table, self.max_inflight)
        self.slots = slots.slots(self.compiled, self.max_inflight) if self.max_inflight > 1 else None
        self.ring_offset, self.cpl_offset = layout.ring_offset, layout.cpl_offset
        self.part_entries, self.program_halves = layout.part_entries, layout.program_halves
        return layout.size

    def _segment_image(self) -> dict[int, bytes]:
        """The bytes uploaded once at deploy: {segment offset: bytes}."""
        image = self.compiled.segment_image()
        if self.slots is not None:
            image.update(slots.slot_image(self.compiled, self.slots))
        return image

    def _first_that_fits(self, options, size_of, bank: int):
        """(option, segment bytes) of the first of ``options`` whose segment
        (``size_of(option)`` bytes, laid out as this accelerator lays
        segments) memory could hold now, tried by allocating it; None if none."""
        for option in options:
            size = size_of(option)
            try:
                Segment(size, bank=bank, device=self.accel.device, stripe=self.accel.stripe).free()
            except MemoryError:
                continue
            return option, size
        return None

    def _slots_that_fit(self, bank: int) -> str:
        """How many activation slots a segment in ``bank`` could hold now."""
        if self.max_inflight == 1:
            return ""
        fit = self._first_that_fits(range(self.max_inflight - 1, 0, -1),
                                    lambda m: segment_layout(self.compiled, self.table, m).size, bank)
        return f"; max_inflight {fit[0]} would fit" if fit else "; not even max_inflight 1 fits"

    def _batch_that_fits(self, bank: int, size_of) -> str:
        """Which smaller max_batch (of ``self.batched.sizes``) would fit now, its segment ``size_of(b)`` bytes."""
        fit = self._first_that_fits(reversed(self.batched.sizes[:-1]), size_of, bank)
        return f"max_batch={fit[0]} would fit ({fit[1]} bytes)" if fit else "not even max_batch=1 fits"

    def _after_deploy(self) -> None:
        self.schedules = static.schedule_parts(self.compiled, self.accel.config)
        self._cpu = {p.layer: OrtReference.for_model(self.compiled.graph.layers[p.layer].model)
                     for p in self.compiled.parts if p.kind == "cpu"}

    def _new_plan(self, k: int, variant: int | None = None):
        return dynamic.plan(self.table, k, variant=variant)

    @property
    def needs_hold(self) -> bool:
        """Whether a change of cores must wait for the request in flight (a
        plan whose cores keep state between frames)."""
        return False

    def hold(self):
        """Context manager: no request runs while it is held."""
        if len(self._exec_locks) == 1:
            return self._exec_lock
        return _AllLocks(self._exec_locks)

    # ---- properties -------------------------------------------------------------------------
    @property
    def graph(self) -> ir.Graph:
        return self.compiled.graph

    @property
    def k(self) -> int:
        return len(self.cores)

    def latencies(self) -> tuple[list[float], list[int]]:
        """(host seconds, modeled cycles) of the recent requests, copied while no request adds one."""
        with self._state_lock:
            return list(self.host_latencies), list(self.modeled_latencies)

    def overheads(self) -> list[tuple[float, float]]:
        """(submit -> doorbell, completion -> result) host seconds of the recent requests."""
        with self._state_lock:
            return list(self.host_overheads)

    def device_cycles_per_request(self) -> float | None:
        """Mean modeled (or measured) device cycles per recent request: a
        run's cycles shared by the requests batched in it."""
        with self._state_lock:
            runs = list(zip(self.modeled_latencies, self.run_batches))
        return sum(c / n for c, n in runs) / len(runs) if runs else None

    @property
    def pending(self) -> int:
        """Requests waiting in the host queue (not yet running)."""
        return self._pending

    @property
    def modeled_cycles(self) -> int:
        """One request's modeled cycles on one core (cycle model, no sharing)."""
        return sum(s.total_cycles for s in self.schedules)

    def mac_share(self):
        """The model's MACs on the accelerator and on the host (placement.MacShare)."""
        from vfpga.runtime.compiler import placement

        return placement.mac_share(self.compiled)

    def layer_cycles(self) -> dict[int, int]:
        """Modeled cycles per layer index on one core (accelerator layers)."""
        out: dict[int, int] = {}
        for s in self.schedules:
            for k, v in s.layer_cycles.items():
                out[k] = out.get(k, 0) + v
        return out

    # ---- dispatch programs ------------------------------------------------------------------------
    def _write_programs(self, half: int, plan: dynamic.DispatchPlan) -> None:
        at = self.program_halves[half]
        for s in range(self.max_inflight):  # every slot's programs, slot 0 first
            programs = plan.programs if self.slots is None else slots.slot_programs(plan.programs, self.slots, s)
            for prog, cap in zip(programs, self.part_entries):
                if len(prog) > cap:
                    raise AssertionError(f"dispatch program of {len(prog)} entries exceeds its {cap}-entry area")
                self.segment.write(at, prog.view(np.uint8))
                at += cap * isa.DISPATCH.itemsize
        start = self.program_halves[half]
        self.segment.sync_to_device(start, at - start)

    def _program(self, part_index: int) -> tuple[int, int]:
        """(segment offset, entries) of accelerator part ``part_index`` in the active half."""
        first = self._req.slot * sum(self.part_entries) + sum(self.part_entries[:part_index])
        at = self.program_halves[self._active_half] + first * isa.DISPATCH.itemsize
        return at, len(self.plan.programs[part_index])

    def retarget(self, k: int, variant: int | None = None) -> float:
        """Dynamic stage for k cores: new dispatch programs into the free
        half; requests posted from now on use them. Returns host seconds.
        ``variant`` forces a tiling variant (see :func:`dynamic.plan`)."""
        t0 = time.perf_counter()
        plan = self._new_plan(k, variant)
        with self._halves_free:
            # a half no posted request walks: the other one, or (several in
            # flight) once the requests on it have their records
            self._halves_free.wait_for(lambda: 0 in self._half_users)
            half = 1 - self._active_half if self._half_users[1 - self._active_half] == 0 else self._active_half
            self._write_programs(half, plan)
            self._active_half, self.plan = half, plan
        return time.perf_counter() - t0

    # ---- requests -----------------------------------------------------------------------------------
    def _check_input(self, x_q: np.ndarray) -> np.ndarray:
        return quantized_input(self.compiled, x_q, self.name)

    def _enqueue(self, x_q: np.ndarray, float_io: bool, submitted: float | None = None) -> Future:
        with self._state_lock:
            if self.removed:
                raise TenantRemoved(f"tenant {self.name!r} has been removed")
            if self.fault is not None:
                raise TenantFault(self.name, f"stopped by an earlier fault ({self.fault.fault}); call reset()",
                                  self.fault.fault)
            if self._pending >= self.max_pending:
                raise QueueFull(f"tenant {self.name!r} has {self._pending} requests pending "
                                f"(max_pending={self.max_pending}); wait for results or raise max_pending")
            self._pending += 1
            fut: Future = Future()
            self._queue.put(_Job(x_q, fut, float_io, submitted or time.perf_counter()))
        return fut

    def submit_quantized(self, x_q: np.ndarray) -> Future:
        """int8 HWC input -> a Future of (int8 HWC outputs, RunInfo)."""
        t0 = time.perf_counter()
        return self._enqueue(self._check_input(x_q), False, t0)

    def submit(self, x: np.ndarray) -> Future:
        """Float input in the model's own layout -> a Future of the float
        output(s), like onnxruntime's run."""
        t0 = time.perf_counter()
        x_q = frontend.quantize_input(x, self.graph.tensors[self.graph.inputs[0]])
        return self._enqueue(self._check_input(x_q), True, t0)

    def submit_float_with_info(self, x: np.ndarray) -> Future:
        """As submit, the Future giving (float output(s), RunInfo)."""
        t0 = time.perf_counter()
        x_q = frontend.quantize_input(x, self.graph.tensors[self.graph.inputs[0]])
        return self._enqueue(self._check_input(x_q), "info", t0)

    def run_quantized(self, x_q: np.ndarray) -> tuple[list[np.ndarray], RunInfo]:
        """int8 HWC input -> int8 HWC outputs, as the accelerator computes them."""
        return self.submit_quantized(x_q).result()

    def run(self, x: np.ndarray) -> list[np.ndarray] | np.ndarray:
        """Float input in the model's own layout -> float output(s), like onnxruntime."""
        return self.submit(x).result()

    # ---- the request thread -------------------------------------------------------------------------
    def _take(self) -> list[_Job] | None:
        """The next requests to run together (one here; batching tenants take
        several, :meth:`_take_batch`), None to stop."""
        job = self._queue.get()
        return None if job is None else [job]

    def _take_batch(self, max_batch: int, max_delay_us: float) -> list[_Job] | None:
        """The first request waiting, then those that arrive within
        ``max_delay_us`` of taking it, up to ``max_batch``; None to stop."""
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.monotonic() + max_delay_us * 1e-6
        while len(jobs) < max_batch:
            wait = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:  # removal: run what was taken, then stop
                self._stop = True
                break
            jobs.append(job)
        return jobs

    def _execute_jobs(self, jobs: list[_Job]) -> list[tuple]:
        """(outputs, RunInfo) of each of ``jobs``, run on the device."""
        results = []
        for job in jobs:
            self._doorbell_at, self._cpu_s = None, 0.0
            outs, info = self._execute(job.x_q)
            self._mark_overhead(info, job.submitted)
            results.append((outs, info))
        return results

    def _mark_overhead(self, info: RunInfo, since: float) -> None:
        """The host overhead's first half (``since`` -> the first doorbell) and
        the start of its second; the model's CPU parts in between are left out."""
        if self._doorbell_at is not None:
            info.submit_to_doorbell_s = self._doorbell_at - since - self._cpu_at_bell
            info.collected_at = self._completed_at + (info.host_cpu_seconds - self._cpu_at_done)

    def _serve(self, slot: int = 0) -> None:
        self._req.slot = slot
        while not self._stop:
            jobs = self._take()
            if jobs is None:
                return
            live = []
            for job in jobs:
                with self._state_lock:
                    self._pending -= 1
                    reason = self._refusal()
                if reason is not None:
                    job.future.set_exception(reason)
                elif job.future.set_running_or_notify_cancel():
                    live.append(job)
            if not live:
                continue
            try:
                with self._exec_locks[slot]:
                    results = self._execute_jobs(live)
            except BaseException as e:  # noqa: BLE001 - handed to the callers through the futures
                with self._state_lock:  # a fault fails the whole batch and stops the tenant
                    if isinstance(e, TenantFault):
                        self.fault = e
                    self.failed += len(live)
                for job in live:
                    job.future.set_exception(e)
                continue
            for job, (outs, info) in zip(live, results):
                try:
                    result = self._result(outs, info, job.float_io)
                except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                    with self._state_lock:
                        self.failed += 1
                    job.future.set_exception(e)
                    continue
                if info.collected_at is not None:
                    info.completion_to_result_s = time.perf_counter() - info.collected_at
                with self._state_lock:
                    self.requests += 1
                    self.host_latencies.append(info.host_seconds)
                    self.host_cpu_seconds.append(info.host_cpu_seconds)
                    self.modeled_latencies.append(info.modeled_cycles)
                    self.run_batches.append(info.batch)
                    if info.submit_to_doorbell_s is not None:
                        self.host_overheads.append((info.submit_to_doorbell_s, info.completion_to_result_s))
                job.future.set_result(result)

    def _result(self, outs, info: RunInfo, float_io):
        """What the future of a request gives: float outputs like
        onnxruntime, or (int8 outputs, RunInfo); float_io "info": (float outputs, RunInfo)."""
        if not float_io:
            return outs, info
        y = float_outputs(self.graph, outs)
        return (y, info) if float_io == "info" else y

    def _refusal(self):
        if self.removed:
            return TenantRemoved(f"tenant {self.name!r} was removed before this request ran")
        if self.fault is not None:
            return TenantFault(self.name, f"not run: the tenant stopped on an earlier fault ({self.fault.fault})",
                               self.fault.fault)
        return None

    def _execute(self, x_q: np.ndarray) -> tuple[list[np.ndarray], RunInfo]:
        t0 = time.perf_counter()
        self._write_input(x_q)
        completions = []
        accel_index = 0
        cpu_s = 0.0
        for part in self.compiled.parts:
            if part.kind == "cpu":
                t_cpu = time.perf_counter()
                self._run_cpu(part.layer)
                cpu_s += time.perf_counter() - t_cpu
                self._cpu_s = cpu_s
                continue
            completions.append(self._run_part(accel_index))
            accel_index += 1
        outs = [self._host.pop(p.name) if p.name in self._host else self._read(p) for p in self.compiled.outputs]
        cycles = sum(c.cycles for c in completions)
        return outs, RunInfo(completions, time.perf_counter() - t0, cycles,
                             cycle_model.seconds(cycles, self.accel.config), self.k, cpu_s)

    def _run_part(self, index: int) -> Completion:
        rid = next(self._ids) & 0xFFFFFFFF
        done, box = threading.Event(), []
        half = None
        self._waiting[rid] = (done, box)
        try:
            with self._prog_lock:
                offset, entries = self._program(index)
                self.context.post(offset, entries, rid)
                half = self._active_half
                self._half_users[half] += 1
            if self._doorbell_at is None:
                self._doorbell_at, self._cpu_at_bell = time.perf_counter(), self._cpu_s
            if not done.wait(REQUEST_TIMEOUT_S):
                raise ContextError(f"tenant {self.name!r}: no completion record after {REQUEST_TIMEOUT_S} s "
                                   f"(context status {self.context.status})")
        finally:
            self._waiting.pop(rid, None)
            with self._halves_free:
                if half is not None:
                    self._half_users[half] -= 1
                    self._halves_free.notify_all()
        c = box[0]
        self._completed_at, self._cpu_at_done = c.collected_at, self._cpu_s
        if not c.ok:
            raise TenantFault(self.name, c.describe(), self.context.fault(), c)
        return c

    def _on_completion(self, c: Completion) -> None:
        """Called by the completion thread for each record of this tenant."""
        waiter = self._waiting.get(c.request_id)
        if waiter is not None:
            waiter[1].append(c)
            waiter[0].set()

    # ---- device memory ------------------------------------------------------------------------------
    def _arena(self) -> int:
        """Where this request thread's activation slot starts (0: slot 0)."""
        return 0 if self.slots is None else self.slots.arena(self._req.slot)

    def _read(self, p: static.Placement) -> np.ndarray:
        """A tensor's int8 HWC value from device memory (slices of a wider
        concat tensor included)."""
        h, w, c = p.shape
        addr = p.addr + self._arena()
        span = (h * w - 1) * p.pixel_stride + c
        self.segment.sync_from_device(addr, span)
        if p.pixel_stride == c:  # a dense tensor: the segment's copy is the value
            return self.segment.read(addr, span).view(np.int8).reshape(h, w, c)
        raw = np.zeros(h * w * p.pixel_stride, np.uint8)
        raw[:span] = self.segment.read(addr, span)
        return raw.view(np.int8).reshape(h, w, p.pixel_stride)[:, :, :c].copy()

    def _write(self, p: static.Placement, value: np.ndarray) -> None:
        """Writes a tensor's int8 HWC value into device memory (as a channel
        slice of a wider tensor where it is one)."""
        h, w, c = p.shape
        addr = p.addr + self._arena()
        if p.pixel_stride == c:
            self.segment.write(addr, value)
            self.segment.sync_to_device(addr, value.nbytes)
            return
        span = (h * w - 1) * p.pixel_stride + c
        self.segment.sync_from_device(addr, span)
        raw = np.zeros(h * w * p.pixel_stride, np.uint8)
        raw[:span] = self.segment.read(addr, span)
        raw.view(np.int8).reshape(h, w, p.pixel_stride)[:, :, :c] = value
        self.segment.write(addr, raw[:span])
        self.segment.sync_to_device(addr, span)

    def _write_input(self, x_q: np.ndarray) -> None:
        """Writes a request's int8 HWC input into device memory; a folded input
        (input_fold) is folded straight into the segment's host copy, then that
        range alone is synced."""
        c = self.compiled
        p = c.input
        h, w, ch = p.shape
        if c.input_fold is None or p.pixel_stride != ch:
            self._write(p, c.device_input(x_q))
            return
        writer = self._req.fold_writer
        if writer is None:
            writer = self._req.fold_writer = c.input_fold.writer(p.zero_point)
        addr = p.addr + self._arena()
        writer.write(x_q, self.segment.view(addr, h * w * ch))
        self.segment.sync_to_device(addr, h * w * ch)

    def _run_cpu(self, index: int) -> None:
        layer = self.graph.layers[index]
        tensors = self.graph.tensors
        session = self._cpu[index].session
        shapes = {i.name: i.shape for i in session.get_inputs()}
        feeds = {}
        for n in layer.inputs:
            # the subgraph's own input shape says how the HWC tensor is laid out for it
            shape = shapes.get(n)
            static = shape is not None and all(isinstance(d, int) for d in shape)
            feeds[n] = to_onnx_layout(self._read(self.compiled.tensors[n]),
                                      tuple(shape) if static else tensors[n].onnx_shape)
        values = session.run(list(layer.outputs), feeds)
        for n, v in zip(layer.outputs, values):
            p = self.compiled.tensors[n]
            if tensors[n].dtype != "int8":  # a float graph output: it never goes back to the device
                self._host[n] = from_onnx_layout(v, p.shape).astype(np.float32)
            else:
                self._write(p, from_onnx_layout(v, p.shape).astype(np.int8))

    # ---- life cycle ------------------------------------------------------------------------------------
    def reset(self, timeout: float = 60.0) -> None:
        """Re-enables a faulted context on the cores it held: its fault
        registers clear and new requests run again."""
        with self._state_lock:
            if self.removed:
                raise TenantRemoved(f"tenant {self.name!r} has been removed")
        self.context.disable(timeout)
        self.context.collect()
        self.context.enable(_mask(self.cores))
        with self._state_lock:
            self.fault = None

    def _shutdown(self, timeout: float = 60.0) -> None:
        """Stops taking requests, fails the queued ones, lets the one in
        flight finish, disables the context and frees the segment."""
        with self._state_lock:
            self.removed = True
        for _ in self._workers:
            self._queue.put(None)
        for w in self._workers:
            w.join(timeout)
        while True:  # anything still queued behind the sentinel
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.set_exception(TenantRemoved(f"tenant {self.name!r} was removed before this request ran"))
        try:
            self.context.disable(timeout)
            self.context.collect()
        finally:
            self.accel.completions.detach(self.context)
            self.segment.free()


class _AllLocks:
    """Holds every lock of a list (in order) while entered."""

    def __init__(self, locks):
        self.locks = locks

    def __enter__(self):
        for lk in self.locks:
            lk.acquire()

    def __exit__(self, *exc):
        for lk in reversed(self.locks):
            lk.release()


def quantized_input(compiled: static.CompiledModel, x_q, name: str) -> np.ndarray:
    """``x_q`` checked as tenant ``name``'s int8 HWC input (ValueError otherwise)."""
    shape = compiled.input_shape
    x_q = np.asarray(x_q)
    if x_q.dtype != np.int8 or x_q.shape != shape:
        raise ValueError(f"tenant {name!r} expects an int8 HWC input of shape {shape}, got {x_q.dtype} {x_q.shape}")
    return x_q


def float_outputs(graph: ir.Graph, outs: list[np.ndarray]):
    """A request's int8 HWC outputs -> the float output(s) in the ONNX layout, as
    ``run`` gives them (one array, or a list for several outputs)."""
    ys = [frontend.dequantize_output(q, graph.tensors[n]) for q, n in zip(outs, graph.outputs)]
    return ys[0] if len(ys) == 1 else ys


def _mask(cores) -> int:
    m = 0
    for c in cores:
        m |= 1 << c
    return m
