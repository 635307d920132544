"""A model with convolutions before its LSTM/GRU layers, deployed as two
linked tenants: its front end on CNN cores (``<name>.cnn``, a
:class:`Tenant`) and its recurrent part on RNN cores (``<name>.rnn``, an
:class:`RnnTenant`), the layout glue between them on the host. Each part
has its own dispatcher context, segment, cores, queue and fault state, so
``reallocate``, ``stats`` and faults cover both under their names; this
object runs requests through both in order, like onnxruntime on the whole
model.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from vfpga.runtime.compiler import mixed, placement
from vfpga.runtime.tenants.tenant import LATENCY_WINDOW


class MixedTenant:
    """The user's handle on a CNN + RNN model (see the module docstring)."""

    kind = "mixed"

    def __init__(self, accel, name: str, compiled: mixed.CompiledMixed, front, recurrent):
        self.accel, self.name, self.compiled = accel, name, compiled
        self.front, self.recurrent = front, recurrent
        self._pre = compiled.host_pre()
        self._glue = compiled.host_glue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vfpga-mixed-{name}")
        self._lock = threading.Lock()
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

    def _run(self, feeds: dict):
        s = self.compiled.split
        t0 = time.perf_counter()
        f_in = self._pre(feeds[s.main_input])
        host = time.perf_counter() - t0
        f, info = self.front.submit_float_with_info(f_in).result()
        t1 = time.perf_counter()
        f = mixed.rows_out(f) if s.rows else f
        xs = self._glue(np.asarray(f, np.float32))
        rec = {k: v for k, v in feeds.items() if k != s.main_input}
        rec[s.x_name] = xs
        host += time.perf_counter() - t1
        outs, rinfo = self.recurrent.run_with_info(rec)
        with self._lock:
            self.requests += 1
            self.host_cpu_seconds.append(host + info.host_cpu_seconds + rinfo.host_cpu_seconds)
        return outs[0] if len(outs) == 1 else outs

    def submit(self, x) -> Future:
        """The model's input (array, or a dict of ONNX feeds with initial
        states) -> a Future of its float output(s), like onnxruntime."""
        return self._pool.submit(self._run, self._feeds(x))

    def run(self, x):
        return self.submit(x).result()

    def mac_share(self) -> placement.MacShare:
        a, b = self.front.mac_share(), self.recurrent.mac_share()
        return placement.MacShare(a.accel_macs + b.accel_macs, a.cpu_macs + b.cpu_macs, {**a.reasons, **b.reasons})

    def reset(self) -> None:
        for p in self.parts:
            if p.fault is not None:
                p.reset()

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)
