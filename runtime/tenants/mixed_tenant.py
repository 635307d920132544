"""A model with convolutions before its LSTM/GRU layers, deployed as two
linked tenants: its front end on CNN cores (``<name>.cnn``, a
:class:`Tenant`) and its recurrent part on RNN cores (``<name>.rnn``, an
:class:`RnnTenant`), the layout glue between them on the host. Each part
has its own dispatcher context, segment, cores, queue and fault state, so
``reallocate``, ``stats`` and faults cover both under their names; this
object runs requests through both in order, like onnxruntime on the whole
model.

With ``max_inflight`` > 1 the two parts form a pipeline: up to that many
requests are between submit and result at once, at most half of them
(rounded up) in the front end, so the front end takes the next requests
while earlier ones are in the recurrent part (the front end holds its share
in flight on its cores; the RNN part batches when deployed with
``max_batch``). Results come in submission order either way.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from vfpga.runtime.compiler import mixed, placement
from vfpga.runtime.errors import TenantRemoved
from vfpga.runtime.tenants.tenant import LATENCY_WINDOW


def front_slots(max_inflight: int) -> int:
    """Requests a mixed tenant's front end holds at once: half its pipeline, rounded up."""
    return -(-max_inflight // 2)


class MixedTenant:
    """The user's handle on a CNN + RNN model (see the module docstring)."""

    kind = "mixed"

    def __init__(self, accel, name: str, compiled: mixed.CompiledMixed, front, recurrent, max_inflight: int = 1):
        self.accel, self.name, self.compiled = accel, name, compiled
        self.front, self.recurrent = front, recurrent
        self.max_inflight = max_inflight
        self._pre = compiled.host_pre()
        self._glue = compiled.host_glue()
        # the host steps (input preparation, the glue between the parts), one at a time in request order
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vfpga-mixed-{name}")
        self._lock = threading.Lock()
        self._waiting: collections.deque = collections.deque()  # (feeds, future) not started yet
        # a request is in the pipeline from its start to its answer, and in the front end until the
        # front end's result is taken: at most max_inflight and ceil(max_inflight / 2) of them, so the
        # front end takes new requests while earlier ones are in the RNN part
        self.front_limit = front_slots(max_inflight)
        self._in_pipe = self._in_front = 0
        self.inflight_peak = 0  # the most requests that were in the pipeline at once
        self.removed = False
        # per request (the last LATENCY_WINDOW): glue and both parts' host work, measured
        self.host_cpu_seconds: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.requests = 0

    @property
    def parts(self) -> list:
        return [self.front, self.recurrent]

    @property
    def cores(self) -> dict[str, list[int]]:
        return {"cnn": list(self.front.cores), "rnn": list(self.recurrent.cores)}

    def _feeds(self, x) -> dict:
        s = self.compiled.split
        feeds = dict(x) if isinstance(x, dict) else {s.main_input: x}
        if s.main_input not in feeds:
            raise ValueError(f"tenant {self.name!r}: missing input {s.main_input!r}")
        return feeds

    # ---- the pipeline: front end, glue, recurrent part --------------------------------------------------
    def _start(self, feeds: dict, result: Future) -> None:
        """Host step 1 (on the pool): the input to the front end."""
        s = self.compiled.split
        t0 = time.perf_counter()
        try:
            front = self.front.submit_float_with_info(self._pre(feeds[s.main_input]))
        except BaseException as e:  # noqa: BLE001 - the request's error, through its future
            self._leave_front()
            self._finish(result, error=e)
            return
        host = time.perf_counter() - t0
        front.add_done_callback(lambda f: self._later(self._glue_step, feeds, f, result, host))

    def _glue_step(self, feeds: dict, front: Future, result: Future, host: float) -> None:
        """Host step 2 (on the pool, in front-end completion order = submission order): the recurrent feeds."""
        s = self.compiled.split
        self._leave_front()
        try:
            f, info = front.result()
            t1 = time.perf_counter()
            f = mixed.rows_out(f) if s.rows else f
            rec = {k: v for k, v in feeds.items() if k != s.main_input}
            rec[s.x_name] = self._glue(np.asarray(f, np.float32))
            host += time.perf_counter() - t1
            recurrent = self.recurrent.submit_with_info(rec)
        except BaseException as e:  # noqa: BLE001
            self._finish(result, error=e)
            return
        recurrent.add_done_callback(lambda r: self._done(r, result, host + info.host_cpu_seconds))

    def _done(self, recurrent: Future, result: Future, host: float) -> None:
        try:
            outs, rinfo = recurrent.result()
        except BaseException as e:  # noqa: BLE001
            self._finish(result, error=e)
            return
        with self._lock:
            self.requests += 1
            self.host_cpu_seconds.append(host + rinfo.host_cpu_seconds)
        self._finish(result, value=outs[0] if len(outs) == 1 else outs)

    def _admitted(self) -> list:
        """Waiting requests the limits now let start (call with the lock held)."""
        out = []
        while self._waiting and self._in_front < self.front_limit and self._in_pipe < self.max_inflight:
            self._in_front += 1
            self._in_pipe += 1
            self.inflight_peak = max(self.inflight_peak, self._in_pipe)
            out.append(self._waiting.popleft())
        return out

    def _leave_front(self) -> None:
        with self._lock:
            self._in_front -= 1
            start = self._admitted()
        for job in start:
            self._later(self._start, *job)

    def _finish(self, result: Future, value=None, error: BaseException | None = None) -> None:
        """Answers a request and starts the next waiting ones."""
        with self._lock:
            self._in_pipe -= 1
            start = self._admitted()
        for job in start:
            self._later(self._start, *job)
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(value)

    def submit(self, x) -> Future:
        """The model's input (array, or a dict of ONNX feeds with initial
        states) -> a Future of its float output(s), like onnxruntime."""
        feeds, result = self._feeds(x), Future()
        result.set_running_or_notify_cancel()
        with self._lock:
            if self.removed:
                raise TenantRemoved(f"tenant {self.name!r} has been removed")
            self._waiting.append((feeds, result))
            start = self._admitted()
        for job in start:
            self._pool.submit(self._start, *job)
        return result

    def run(self, x):
        return self.submit(x).result()

    def mac_share(self) -> placement.MacShare:
        a, b = self.front.mac_share(), self.recurrent.mac_share()
        return placement.MacShare(a.accel_macs + b.accel_macs, a.cpu_macs + b.cpu_macs, {**a.reasons, **b.reasons})

    def reset(self) -> None:
        for p in self.parts:
            if p.fault is not None:
                p.reset()

    def _later(self, step, *args) -> None:
        """A host step on the pool; inline once the tenant is being removed
        (its parts then answer with TenantRemoved, which the step hands on)."""
        try:
            self._pool.submit(step, *args)
        except RuntimeError:  # the pool is shut down
            step(*args)

    def _shutdown(self) -> None:
        """Requests not started fail with TenantRemoved; those in the pipeline
        finish or fail with their parts' removal."""
        with self._lock:
            self.removed = True
            waiting, self._waiting = self._waiting, collections.deque()
        gone = TenantRemoved(f"tenant {self.name!r} was removed before this request ran")
        for _, result in waiting:
            result.set_exception(gone)
        self._pool.shutdown(wait=True)
