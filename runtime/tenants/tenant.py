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

The direct path (runtime/tenants/direct.py) answers a request to an idle
tenant without its request thread.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from vfpga.driver import isa
from vfpga.driver.segment import Segment
from vfpga.driver.tenant_context import Completion, QueueFull, TenantContext
from vfpga.runtime.compiler import dynamic, frontend, ir, slots, static
from vfpga.runtime.compiler.frontend.marshal import from_onnx_layout, to_onnx_layout
from vfpga.runtime.compiler.frontend.reference import OrtReference
from vfpga.runtime.compiler.segment import RING_SIZE, segment_layout
from vfpga.runtime.errors import DeployError, TenantFault, TenantRemoved
from vfpga.runtime.hw import cycle_model
from vfpga.runtime.tenants import request
from vfpga.runtime.tenants.direct import DirectPath
from vfpga.runtime.tenants.request import (
    DirectRequest,
    Job,
    PerRequest,
    RunInfo,
    ThreadWaiter,
    float_outputs,
    per_request,
    quantized_input,
)
from vfpga.runtime.tenants.throughput import check_throughput_options

LATENCY_WINDOW = 4096  # requests whose latencies stats() summarises (the most recent)


class Tenant(DirectPath):
    """A model deployed on ``cores`` (physical core indices) of an accelerator."""

    kind = "cnn"  # the cores it runs on
    direct = True  # whether its requests may take the direct path (see the module's doc); False: batching kinds
    max_inflight = 1
    slots = None  # slots.Slots with max_inflight > 1
    _host = per_request("host")
    _doorbell_at = per_request("doorbell_at")
    _completed_at = per_request("completed_at")
    _cpu_s = per_request("cpu_s")
    _cpu_at_bell = per_request("cpu_at_bell")
    _cpu_at_done = per_request("cpu_at_done")
    _stop = per_request("stop")

    def __init__(self, accel, name: str, compiled, context_index: int, cores: list[int],
                 bank: int, max_pending: int = 64, max_inflight: int = 1):
        self.accel = accel
        self.name = name
        self.compiled = compiled
        self.cores = sorted(cores)
        # (core_cycles, request_cycles) counters when the core count last changed: utilisation counts from there
        self.util_base = (0, 0)
        self.max_pending = max_pending
        self._req = PerRequest()
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
            # (a Lock, not an RLock: on the direct path the completion thread releases it)
            self._exec_locks = [threading.Lock() for _ in range(self.max_inflight)]
            self._exec_lock = self._exec_locks[0]
            self._fold_writers = [None] * self.max_inflight  # per slot: the folded input's writer (input_fold)
            self._active_half = 0
            self._half_users = [0, 0]  # requests posted on each program half, not recorded yet
            self._retargets_waiting = 0  # retarget() calls waiting for a half without users
            self._write_programs(0, self.plan)
            self.context = TenantContext(accel.dispatcher, context_index, self.segment, self.ring_offset,
                                         self.cpl_offset, RING_SIZE, on_completion=self._on_completion,
                                         max_inflight=self.max_inflight, on_tick=self._expire_direct)
            accel.completions.attach(self.context)
            self.context.enable(_mask(self.cores))
        except BaseException:
            self.segment.free()
            raise
        self._after_deploy()
        self._direct = self._direct_possible()
        self._waiting: dict[int, ThreadWaiter | DirectRequest] = {}  # request id -> who takes its record
        self._ids = itertools.count(1)
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # requests queued for the request threads
        self._outstanding = 0  # requests submitted and not yet answered (queued, running or direct)
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
        # (submit -> doorbell, completion -> result, input marshalling) seconds: see overheads()
        self.host_overheads: collections.deque[tuple] = collections.deque(maxlen=LATENCY_WINDOW)
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
        self._host_kept = self._kept_on_host()

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

    def overheads(self) -> list[tuple[float, float, float]]:
        """(submit -> doorbell, completion -> result, input marshalling) host
        seconds of the recent requests: RunInfo's figures (the input's
        marshalling is part of the first; NaN for a RunInfo without it)."""
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

    def _program(self, part_index: int, slot: int) -> tuple[int, int]:
        """(segment offset, entries) of accelerator part ``part_index`` of ``slot`` in the active half."""
        first = slot * sum(self.part_entries) + sum(self.part_entries[:part_index])
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
            self._retargets_waiting += 1
            try:
                self._halves_free.wait_for(lambda: 0 in self._half_users)
            finally:
                self._retargets_waiting -= 1
            half = 1 - self._active_half if self._half_users[1 - self._active_half] == 0 else self._active_half
            self._write_programs(half, plan)
            self._active_half, self.plan = half, plan
        return time.perf_counter() - t0

    # ---- requests -----------------------------------------------------------------------------------
    def _check_input(self, x_q: np.ndarray) -> np.ndarray:
        return quantized_input(self.compiled, x_q, self.name)

    def _enqueue(self, x_q: np.ndarray, float_io: bool, submitted: float | None = None,
                 quantize_s: float = 0.0) -> Future:
        job = Job(x_q, Future(), float_io, submitted or time.perf_counter(), quantize_s)
        with self._state_lock:
            if self.removed:
                raise TenantRemoved(f"tenant {self.name!r} has been removed")
            if self.fault is not None:
                raise TenantFault(self.name, f"stopped by an earlier fault ({self._stop_reason()}); call reset()",
                                  self.fault.fault)
            slot = self._free_slot() if self._direct and self._outstanding == 0 else None
            if slot is None:
                if self._pending >= self.max_pending:
                    raise QueueFull(f"tenant {self.name!r} has {self._pending} requests pending "
                                    f"(max_pending={self.max_pending}); wait for results or raise max_pending")
                self._pending += 1
                self._queue.put(job)
            self._outstanding += 1
        if slot is not None:
            self._start_direct(job, slot)
        return job.future

    def submit_quantized(self, x_q: np.ndarray) -> Future:
        """int8 HWC input -> a Future of (int8 HWC outputs, RunInfo)."""
        t0 = time.perf_counter()
        return self._enqueue(self._check_input(x_q), False, t0)

    def submit(self, x: np.ndarray) -> Future:
        """Float input in the model's own layout -> a Future of the float
        output(s), like onnxruntime's run."""
        t0 = time.perf_counter()
        # (quantize_input checks x and gives the graph input's int8 HWC shape: nothing left to check)
        x_q = frontend.quantize_input(x, self.graph.tensors[self.graph.inputs[0]])
        return self._enqueue(x_q, True, t0, time.perf_counter() - t0)

    def submit_float_with_info(self, x: np.ndarray) -> Future:
        """As submit, the Future giving (float output(s), RunInfo)."""
        t0 = time.perf_counter()
        x_q = frontend.quantize_input(x, self.graph.tensors[self.graph.inputs[0]])
        return self._enqueue(x_q, "info", t0, time.perf_counter() - t0)

    def run_quantized(self, x_q: np.ndarray) -> tuple[list[np.ndarray], RunInfo]:
        """int8 HWC input -> int8 HWC outputs, as the accelerator computes them."""
        return self.submit_quantized(x_q).result()

    def run(self, x: np.ndarray) -> list[np.ndarray] | np.ndarray:
        """Float input in the model's own layout -> float output(s), like onnxruntime."""
        return self.submit(x).result()

    # ---- the request thread -------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        """The next requests to run together (one here; batching tenants take
        several, :meth:`_take_batch`), None to stop."""
        job = self._queue.get()
        return None if job is None else [job]

    def _take_batch(self, max_batch: int, max_delay_us: float) -> list[Job] | None:
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

    def _execute_jobs(self, jobs: list[Job]) -> list[tuple]:
        """(outputs, RunInfo) of each of ``jobs``, run on the device."""
        results = []
        for job in jobs:
            self._doorbell_at, self._cpu_s = None, 0.0
            outs, info = self._execute(job.x_q)
            info.input_marshal_s += job.quantize_s
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
            with self._state_lock:
                self._pending -= len(jobs)
            failure = None
            # the slot may be busy with a direct request; whether a job still runs is decided once it is free
            with self._exec_locks[slot]:
                live = self._admit(jobs)
                try:
                    results = self._execute_jobs(live) if live else []
                except BaseException as e:  # noqa: BLE001 - handed to the callers through the futures
                    failure = e
            if failure is not None:
                self._fail(live, failure)
                continue
            for job, (outs, info) in zip(live, results):
                try:
                    result = self._result(outs, info, job.float_io)
                except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                    self._fail([job], e)
                    continue
                if info.collected_at is not None:
                    info.completion_to_result_s = time.perf_counter() - info.collected_at
                self._succeed(job, result, info)

    def _admit(self, jobs: list[Job]) -> list[Job]:
        """The jobs that run now: the others are refused (the tenant was
        removed or stopped by a fault) or were cancelled while they waited."""
        live = []
        for job in jobs:
            with self._state_lock:
                reason = self._refusal()
                running = reason is None and job.future.set_running_or_notify_cancel()
                if not running:
                    self._outstanding -= 1
            if running:
                live.append(job)
            elif reason is not None:
                job.future.set_exception(reason)
        return live

    def _succeed(self, job: Job, result, info: RunInfo) -> None:
        """Counts a request that ran and answers it."""
        with self._state_lock:
            self.requests += 1
            self.host_latencies.append(info.host_seconds)
            self.host_cpu_seconds.append(info.host_cpu_seconds)
            self.modeled_latencies.append(info.modeled_cycles)
            self.run_batches.append(info.batch)
            if info.submit_to_doorbell_s is not None:
                marshal_s = info.input_marshal_s if info.input_marshal_s is not None else float("nan")
                self.host_overheads.append((info.submit_to_doorbell_s, info.completion_to_result_s, marshal_s))
            self._outstanding -= 1
        job.future.set_result(result)

    def _fail(self, jobs: list[Job], e: BaseException, slot: int | None = None) -> None:
        """Fails requests with ``e``; a fault stops the tenant (a batch fails
        as a whole). ``slot``: the lock a direct request held, released once
        a fault is recorded (a request waiting for the slot is then refused)."""
        with self._state_lock:
            if isinstance(e, TenantFault):
                self.fault = e
            self.failed += len(jobs)
            self._outstanding -= len(jobs)
        if slot is not None:
            self._exec_locks[slot].release()
        for job in jobs:
            job.future.set_exception(e)

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
            return TenantFault(self.name, f"not run: the tenant stopped on an earlier fault ({self._stop_reason()})",
                               self.fault.fault)
        return None

    def _execute(self, x_q: np.ndarray) -> tuple[list[np.ndarray], RunInfo]:
        t0 = time.perf_counter()
        write_s = self._write_input(x_q)
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
        outs = self._outputs(self._req.slot, self._host)
        cycles = sum(c.cycles for c in completions)
        return outs, RunInfo(completions, time.perf_counter() - t0, cycles,
                             cycle_model.seconds(cycles, self.accel.config), self.k, cpu_s, input_marshal_s=write_s)

    def _post(self, index: int, slot: int, waiter: ThreadWaiter | DirectRequest) -> int:
        """Posts accelerator part ``index`` of ``slot``'s programs for
        ``waiter``; returns the program half it walks (counted as used until
        :meth:`_release_half`)."""
        rid = next(self._ids) & 0xFFFFFFFF
        self._waiting[rid] = waiter  # before the doorbell: the record may come at once
        try:
            with self._prog_lock:
                half = self._active_half
                offset, entries = self._program(index, slot)
                if isinstance(waiter, DirectRequest):
                    waiter.half = half  # read by the completion thread only after this lock is left
                self.context.post(offset, entries, rid)
                self._half_users[half] += 1
        except BaseException:
            self._waiting.pop(rid, None)
            raise
        return half

    def _release_half(self, half: int) -> None:
        with self._halves_free:
            self._half_users[half] -= 1
            if self._retargets_waiting and self._half_users[half] == 0:  # (on every request's path: notify rarely)
                self._halves_free.notify_all()

    def _run_part(self, index: int) -> Completion:
        waiter = ThreadWaiter()
        half = self._post(index, self._req.slot, waiter)
        try:
            if self._doorbell_at is None:
                self._doorbell_at, self._cpu_at_bell = time.perf_counter(), self._cpu_s
            if not waiter.done.wait(request.REQUEST_TIMEOUT_S):
                raise self._no_record()
        finally:
            if waiter.record is None:
                self._forget(waiter)
            self._release_half(half)
        c = waiter.record
        self._completed_at, self._cpu_at_done = c.collected_at, self._cpu_s
        if not c.ok:
            raise TenantFault(self.name, c.describe(), self.context.fault(), c)
        return c

    def _forget(self, waiter) -> bool:
        """Drops a waiter whose record did not come; False if it came meanwhile."""
        for rid, w in list(self._waiting.items()):
            if w is waiter:
                return self._waiting.pop(rid, None) is not None
        return False

    def _on_completion(self, c: Completion) -> None:
        """Called by the completion thread for each record of this tenant."""
        waiter = self._waiting.pop(c.request_id, None)
        if waiter is not None:
            waiter.deliver(c)

    def _stop_reason(self) -> str:
        """What stopped the tenant: the fault the hardware reported, else a missing record."""
        return str(self.fault.fault) if self.fault.fault is not None else "no completion record in time"

    def _no_record(self) -> TenantFault:
        """A request whose record did not come in time. The dispatcher or the
        context is stuck and the request may still run later on its slot's
        memory, so the tenant stops, as on a fault, until reset() drains it."""
        return TenantFault(self.name, f"no completion record after {request.REQUEST_TIMEOUT_S} s (context status "
                           f"{self.context.status}); stopped until reset()", self.context.fault())

    # ---- device memory ------------------------------------------------------------------------------
    def _arena(self, slot: int | None = None) -> int:
        """Where activation slot ``slot`` (default: this request thread's) starts (0: slot 0)."""
        if self.slots is None:
            return 0
        return self.slots.arena(self._req.slot if slot is None else slot)

    def _read(self, p: static.Placement, slot: int | None = None) -> np.ndarray:
        """A tensor's int8 HWC value from device memory (slices of a wider
        concat tensor included), in ``slot`` (default: this request thread's)."""
        h, w, c = p.shape
        addr = p.addr + self._arena(slot)
        span = (h * w - 1) * p.pixel_stride + c
        self.segment.sync_from_device(addr, span)
        if p.pixel_stride == c:  # a dense tensor: the segment's copy is the value
            return self.segment.read(addr, span).view(np.int8).reshape(h, w, c)
        raw = np.zeros(h * w * p.pixel_stride, np.uint8)
        raw[:span] = self.segment.read(addr, span)
        return raw.view(np.int8).reshape(h, w, p.pixel_stride)[:, :, :c].copy()

    def _write(self, p: static.Placement, value: np.ndarray, slot: int | None = None) -> None:
        """Writes a tensor's int8 HWC value into device memory (as a channel
        slice of a wider tensor where it is one), in ``slot`` (default: this request thread's)."""
        h, w, c = p.shape
        addr = p.addr + self._arena(slot)
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

    def _write_input(self, x_q: np.ndarray, slot: int | None = None) -> float:
        """Writes a request's int8 HWC input into device memory (``slot``;
        default: this request thread's); a folded input (input_fold) is folded
        straight into the segment's host copy, then that range alone is
        synced (a striped segment's: folded straight into its parts).
        Returns the seconds it took."""
        t0 = time.perf_counter()
        c = self.compiled
        p = c.input
        h, w, ch = p.shape
        slot = self._req.slot if slot is None else slot
        if c.input_fold is None or p.pixel_stride != ch:
            self._write(p, c.device_input(x_q), slot)
            return time.perf_counter() - t0
        writer = self._fold_writers[slot]  # used under the slot's lock only
        if writer is None:
            writer = self._fold_writers[slot] = c.input_fold.writer(p.zero_point)
        addr, n = p.addr + self._arena(slot), h * w * ch
        if self.segment.striped:  # straight into the parts: the folded bytes are written once
            writer.write_parts(x_q, self.segment.stripe_target(addr, n), addr)
            self.segment.sync_parts_to_device(addr, n)
        else:
            writer.write(x_q, self.segment.view(addr, n))
            self.segment.sync_to_device(addr, n)
        return time.perf_counter() - t0

    def _outputs(self, slot: int, host: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A request's outputs: from the host parts' float results, else from device memory."""
        return [host.pop(p.name) if p.name in host else self._read(p, slot) for p in self.compiled.outputs]

    def _run_cpu(self, index: int, slot: int | None = None, host: dict | None = None) -> None:
        """Runs host layer ``index`` on ``slot``'s tensors (default: this
        request thread's); its float outputs, and the int8 outputs no later
        part reads (a tail's: :meth:`_kept_on_host`), go into ``host``
        (default: the request thread's), the others into device memory."""
        host = self._host if host is None else host
        layer = self.graph.layers[index]
        tensors = self.graph.tensors
        session = self._cpu[index].session
        shapes = {i.name: i.shape for i in session.get_inputs()}
        feeds = {}
        for n in layer.inputs:
            # the subgraph's own input shape says how the HWC tensor is laid out for it
            shape = shapes.get(n)
            static = shape is not None and all(isinstance(d, int) for d in shape)
            feeds[n] = to_onnx_layout(self._read(self.compiled.tensors[n], slot),
                                      tuple(shape) if static else tensors[n].onnx_shape)
        values = session.run(list(layer.outputs), feeds)
        for n, v in zip(layer.outputs, values):
            p = self.compiled.tensors[n]
            if tensors[n].dtype != "int8":  # a float graph output: it never goes back to the device
                host[n] = from_onnx_layout(v, p.shape).astype(np.float32)
            elif n in self._host_kept[index]:  # the result takes it from here: not written, synced and read back
                host[n] = from_onnx_layout(v, p.shape).astype(np.int8)
            else:
                self._write(p, from_onnx_layout(v, p.shape).astype(np.int8), slot)

    def _kept_on_host(self) -> dict[int, frozenset[str]]:
        """Per host part (its layer): the int8 graph outputs it makes that no
        later part reads from device memory, since no accelerator part comes
        after it and no later host part takes them (a classifier's quantized
        softmax). The request's result takes them from the host."""
        parts, outputs = self.compiled.parts, {p.name for p in self.compiled.outputs}
        kept = {}
        for i, part in enumerate(parts):
            if part.kind != "cpu":
                continue
            later = parts[i + 1:]
            read_later = {n for q in later if q.kind == "cpu" for n in self.graph.layers[q.layer].inputs}
            kept[part.layer] = frozenset() if any(q.kind != "cpu" for q in later) else frozenset(
                n for n in self.graph.layers[part.layer].outputs if n in outputs and n not in read_later)
        return kept

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
        # direct requests in flight finish before the context is drained (the completion thread reads their
        # outputs from the segment freed below)
        deadline = time.monotonic() + timeout
        for lock in self._exec_locks:
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                lock.release()
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


def _mask(cores) -> int:
    m = 0
    for c in cores:
        m |= 1 << c
    return m
