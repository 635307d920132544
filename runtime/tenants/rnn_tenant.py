"""A deployed LSTM/GRU model: the RNN cores' counterpart of :class:`Tenant`.

The request machinery (context, ring, completion, queue, faults, removal)
is the CNN tenant's; what differs is the model: a
:class:`vfpga.runtime.compiler.rnn.CompiledRnn`, one dispatch program per
request (frames per timestep, barriers between them) from
:func:`plan_rnn`, requests given as ONNX feeds and answered with the
model's float outputs (heads after the last RNN layer run on the host).

Plans that keep weights resident in their cores between frames tie a slot to
a physical core for a whole request, so their cores change only between
requests (:meth:`needs_hold`; the accelerator waits for the request in
flight before it re-allocates such a tenant).

Dynamic batching (``max_batch`` > 1): the segment holds a variant of the
model per batch size (:mod:`vfpga.runtime.compiler.rnn.batch`), and each
size is one "part" of the dispatch programs, so re-allocation re-plans and
double-buffers them all as it does a CNN's parts. The request thread takes
the requests that arrive within ``max_delay_us`` of the first, up to
``max_batch``, runs them as one batch on the smallest size that holds them
and answers them in submission order. Requests in flight are still one run
(one batch) at a time.
"""

from __future__ import annotations

import time

import numpy as np

from vfpga.runtime.compiler import rnn
from vfpga.runtime.compiler.segment import rnn_batch_layout, rnn_segment_layout
from vfpga.runtime.errors import DeployError
from vfpga.runtime.tenants.tenant import RunInfo, Tenant
from vfpga.runtime.tenants.throughput import SizedPlans


class BatchPlan(SizedPlans):
    """A batching RNN tenant's dispatch programs on k cores: one per batch size."""

    @property
    def programs(self) -> list[np.ndarray]:
        return [self.plans[b].program for b in self.sizes]

    @property
    def resident(self) -> bool:
        return any(p.resident for p in self.plans.values())


class RnnTenant(Tenant):
    """An LSTM/GRU model on ``cores`` (pool indices of RNN cores)."""

    kind = "rnn"
    direct = False  # its requests run through its request thread (batches, recurrent state)

    def __init__(self, accel, name: str, compiled, context_index: int, cores: list[int], bank: int,
                 max_pending: int = 64, batched: rnn.BatchedRnn | None = None, max_delay_us: float = 0.0):
        """``batched``: the model's variants for dynamic batching
        (:func:`rnn.compile_batched`; None: one request per run)."""
        if max_delay_us < 0:
            raise DeployError(f"max_delay_us must be >= 0, not {max_delay_us!r}")
        self.batched = batched if batched is not None and batched.sizes[-1] > 1 else None
        self.max_batch = self.batched.sizes[-1] if self.batched else 1
        self.max_delay_us = float(max_delay_us)
        try:
            super().__init__(accel, name, self.batched.base if self.batched else compiled, context_index, cores,
                             bank, max_pending)
        except DeployError as e:
            if self.batched is None or not isinstance(e.__cause__, MemoryError):
                raise
            raise DeployError(f"{e}; {self._batch_that_fits(bank, self._batch_bytes)}") from e

    def _batch_bytes(self, b: int) -> int:
        return rnn_batch_layout(self.batched.upto(b), int(self.accel.config["rnn_core"]["count"])).size

    # ---- the model's kind ------------------------------------------------------------------------
    def _prepare(self) -> int:
        n = int(self.accel.config["rnn_core"]["count"])
        if self.batched is None:
            layout = rnn_segment_layout(self.compiled, n)
        else:
            layout = rnn_batch_layout(self.batched, n)
        self.plan = self._new_plan(len(self.cores))
        self.ring_offset, self.cpl_offset = layout.ring_offset, layout.cpl_offset
        self.part_entries, self.program_halves = layout.part_entries, layout.program_halves
        return layout.size

    def _segment_image(self) -> dict[int, bytes]:
        return self.batched.segment_image() if self.batched else self.compiled.segment_image()

    def _after_deploy(self) -> None:
        self.schedules = []

    def _new_plan(self, k: int, variant: int | None = None):
        if self.batched is None:
            return rnn.plan_rnn(self.compiled, k, variant)
        return BatchPlan({b: rnn.plan_rnn(self.batched.variants[b], k, variant) for b in self.batched.sizes},
                         list(self.batched.sizes))

    @property
    def needs_hold(self) -> bool:
        return bool(self.plan.resident)

    @property
    def graph(self):
        raise AttributeError("an RNN tenant has no CNN layer graph; see .compiled (CompiledRnn)")

    @property
    def modeled_cycles(self) -> int:
        """The plan's estimate on the cores held (frame estimates, no bank sharing)."""
        return int(self.plan.modeled_cycles)

    def layer_cycles(self) -> dict[int, int]:
        return {}

    def mac_share(self):
        """RNN MACs (every gate's input and recurrent products, per step) on
        the RNN cores; the host head's MACs on the host."""
        from vfpga.runtime.compiler import placement

        c: rnn.CompiledRnn = self.compiled
        accel = sum(lay.directions * lay.gates * lay.hidden * (lay.input_size + lay.hidden) for lay in c.layers)
        cpu = sum(placement.onnx_macs(c.post).values()) if c.post is not None else 0
        return placement.MacShare(accel * c.steps * c.batch, cpu)

    # ---- requests ----------------------------------------------------------------------------------
    def _feeds(self, x) -> dict:
        return rnn_feeds(self.compiled, x)

    def submit(self, x) -> object:
        """The model's input (array, or a dict of ONNX feeds with initial
        states) -> a Future of the model's float output(s), like onnxruntime."""
        t0 = time.perf_counter()
        feeds = self._feeds(x)
        return self._enqueue(feeds, True, t0, time.perf_counter() - t0)

    def submit_quantized(self, x):
        raise TypeError(f"tenant {self.name!r} is an RNN tenant: submit(feeds) takes float inputs")

    def run(self, x):
        return self.submit(x).result()

    def submit_with_info(self, x):
        """A Future of (float outputs, RunInfo): what the request did too."""
        t0 = time.perf_counter()
        feeds = self._feeds(x)
        return self._enqueue(feeds, False, t0, time.perf_counter() - t0)

    def run_with_info(self, x) -> tuple[list[np.ndarray], RunInfo]:
        """Float outputs and what the request did."""
        return self.submit_with_info(x).result()

    # ---- the request thread: batches -------------------------------------------------------------
    def _take(self):
        if self.batched is None:
            return super()._take()
        return self._take_batch(self.max_batch, self.max_delay_us)

    def _execute_jobs(self, jobs) -> list[tuple]:
        if self.batched is None:
            return super()._execute_jobs(jobs)
        t0 = time.perf_counter()
        self._doorbell_at, self._cpu_s = None, 0.0
        n, b = len(jobs), self.batched.size_for(len(jobs))
        v = self.batched.variants[b]
        # (a batch's overhead counts from its forming: each input's quantization came before)
        write_s = self._write_image(rnn.request_image(v, rnn.stack_feeds(self.compiled, [j.x_q for j in jobs], b)))
        done = self._run_part(self.batched.sizes.index(b))
        at, nbytes = rnn.output_span(v)  # the outputs only, not the weights
        self.segment.sync_from_device(at, nbytes)
        t_cpu = time.perf_counter()
        values = rnn.rnn_values(v, self.segment.read(at, nbytes), at)
        outs = [rnn.head_outputs(self.compiled, item) for item in rnn.split_values(v, values, n)]
        t1 = time.perf_counter()
        seconds = done.cycles / (float(self.accel.config["clock_mhz"]) * 1e6)
        results = [(o, RunInfo([done], t1 - t0, done.cycles, seconds, self.k, (t1 - t_cpu) / n, batch=n, batch_size=b,
                               input_marshal_s=write_s)) for o in outs]
        for _, info in results:  # a batch's overhead counts from when it was formed, not the batching wait
            self._mark_overhead(info, t0)
            if info.collected_at is not None:  # the host head ran once for the whole batch
                info.collected_at = self._completed_at + (t1 - t_cpu)
        return results

    def _execute(self, feeds: dict):
        t0 = time.perf_counter()
        c: rnn.CompiledRnn = self.compiled
        write_s = self._write_image(rnn.request_image(c, feeds))
        done = self._run_part(0)
        at, nbytes = rnn.output_span(c)  # the outputs only, not the weights
        self.segment.sync_from_device(at, nbytes)
        t_cpu = time.perf_counter()
        outs = rnn.read_outputs(c, self.segment.read(at, nbytes), at)  # the host head runs here
        return outs, RunInfo([done], time.perf_counter() - t0, done.cycles,
                             done.cycles / (float(self.accel.config["clock_mhz"]) * 1e6), self.k,
                             time.perf_counter() - t_cpu, input_marshal_s=write_s)

    def _write_image(self, image: dict[int, bytes]) -> float:
        """Writes a request's input image (segment offset -> bytes) into device memory; the seconds it took."""
        t0 = time.perf_counter()
        for at, data in image.items():
            self.segment.write(at, np.frombuffer(data, np.uint8))
            self.segment.sync_to_device(at, len(data))
        return time.perf_counter() - t0

    def _result(self, outs, info: RunInfo, float_io: bool):
        if not float_io:
            return outs, info
        return outs[0] if len(outs) == 1 else outs


def rnn_feeds(compiled: rnn.CompiledRnn, x) -> dict:
    """A request's input (array, or a dict of ONNX feeds) as feeds, its shapes
    and names checked now, in the caller's thread (ValueError otherwise)."""
    feeds = dict(x) if isinstance(x, dict) else {compiled.input_name: x}
    rnn.request_image(compiled, feeds)
    return feeds
