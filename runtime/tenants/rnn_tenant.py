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
"""

from __future__ import annotations

import time

import numpy as np

from vfpga.runtime.compiler import rnn
from vfpga.runtime.compiler.segment import rnn_segment_layout
from vfpga.runtime.tenants.tenant import RunInfo, Tenant


class RnnTenant(Tenant):
    """An LSTM/GRU model on ``cores`` (pool indices of RNN cores)."""

    kind = "rnn"

    # ---- the model's kind ------------------------------------------------------------------------
    def _prepare(self) -> int:
        layout = rnn_segment_layout(self.compiled, int(self.accel.config["rnn_core"]["count"]))
        self.plan = rnn.plan_rnn(self.compiled, len(self.cores))
        self.ring_offset, self.cpl_offset = layout.ring_offset, layout.cpl_offset
        self.part_entries, self.program_halves = layout.part_entries, layout.program_halves
        return layout.size

    def _after_deploy(self) -> None:
        self.schedules = []

    def _new_plan(self, k: int, variant: int | None = None):
        return rnn.plan_rnn(self.compiled, k, variant)

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
        return self._enqueue(self._feeds(x), True, t0)

    def submit_quantized(self, x):
        raise TypeError(f"tenant {self.name!r} is an RNN tenant: submit(feeds) takes float inputs")

    def run(self, x):
        return self.submit(x).result()

    def submit_with_info(self, x):
        """A Future of (float outputs, RunInfo): what the request did too."""
        t0 = time.perf_counter()
        return self._enqueue(self._feeds(x), False, t0)

    def run_with_info(self, x) -> tuple[list[np.ndarray], RunInfo]:
        """Float outputs and what the request did."""
        return self.submit_with_info(x).result()

    def _execute(self, feeds: dict):
        t0 = time.perf_counter()
        c: rnn.CompiledRnn = self.compiled
        for at, data in rnn.request_image(c, feeds).items():
            self.segment.write(at, np.frombuffer(data, np.uint8))
            self.segment.sync_to_device(at, len(data))
        done = self._run_part(0)
        self.segment.sync_from_device(0, c.segment_size)
        t_cpu = time.perf_counter()
        outs = rnn.read_outputs(c, self.segment.read(0, c.segment_size))  # the host head runs here
        return outs, RunInfo([done], time.perf_counter() - t0, done.cycles,
                             done.cycles / (float(self.accel.config["clock_mhz"]) * 1e6), self.k,
                             time.perf_counter() - t_cpu)

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
