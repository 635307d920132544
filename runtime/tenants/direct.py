"""The direct path of a tenant (runtime/tenants/tenant.py): a CNN tenant
whose model is one accelerator part, then at most a small host tail (a
classifier's softmax: DIRECT_HOST_MACS, tensors and outputs of at most
DIRECT_OUTPUT_BYTES), skips its request thread when
nothing is queued or in flight and an activation slot is free. submit()
then writes the input and rings the doorbell on the caller's thread, and
the completion thread, which reads the record anyway, runs the tail, reads
the outputs and answers the future. Such a request takes no thread
hand-off between submit() and the doorbell, or between its record and its
result; each hand-off wakes a sleeping thread, which on a host of few cores
costs tens of microseconds. Requests that arrive while one is in flight
queue for the request threads as before, so the order stays the order of
submission.

The Tenant class takes these methods from :class:`DirectPath`; they use its
slots' locks, its posting (``_post``), its device memory reads and writes
and how it answers a request (``_succeed``, ``_fail``).
"""

from __future__ import annotations

import time

import numpy as np

from vfpga.driver.tenant_context import Completion
from vfpga.runtime.errors import TenantFault
from vfpga.runtime.hw import cycle_model
from vfpga.runtime.tenants.request import DirectRequest, Job, RunInfo

# what the completion thread does itself on the direct path (it serves every tenant, so a request with
# more goes through its request thread): outputs and host-tail tensors to copy, host-tail MACs to compute
DIRECT_OUTPUT_BYTES = 64 << 10
DIRECT_HOST_MACS = 1 << 16


class DirectPath:
    """A tenant's direct path (mixed into :class:`~vfpga.runtime.tenants.tenant.Tenant`)."""

    def _direct_possible(self) -> bool:
        """Whether requests may take the direct path: one accelerator part,
        first, then at most a small host tail (a classifier's softmax), and
        outputs the completion thread may read and compute."""
        from vfpga.runtime.compiler import placement

        c = self.compiled
        if not self.direct or not c.parts or c.parts[0].kind == "cpu" or any(p.kind != "cpu" for p in c.parts[1:]):
            return False
        tail_layers = [self.graph.layers[p.layer] for p in c.parts[1:]]
        tail = {n for layer in tail_layers for n in (*layer.inputs, *layer.outputs)}
        nbytes = sum((p.shape[0] * p.shape[1] - 1) * p.pixel_stride + p.shape[2]
                     for p in [*c.outputs, *(c.tensors[n] for n in tail)])
        return nbytes <= DIRECT_OUTPUT_BYTES and placement.mac_share(c).cpu_macs <= DIRECT_HOST_MACS

    def _free_slot(self) -> int | None:
        """A slot whose lock this call took (none: a re-allocation holds them)."""
        for s, lock in enumerate(self._exec_locks):
            if lock.acquire(blocking=False):
                return s
        return None

    def _start_direct(self, job: Job, slot: int) -> None:
        """The direct path's first half, on the submitting thread, which
        holds ``slot``'s lock: the input into device memory and the doorbell."""
        job.future.set_running_or_notify_cancel()
        d = DirectRequest(self._finish_direct, job, slot, time.perf_counter())
        try:
            d.input_write_s = self._write_input(job.x_q, slot)
            self._post(0, slot, d)
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            self._fail([job], e, slot)

    def _finish_direct(self, d: DirectRequest, c: Completion | None, error: BaseException | None = None) -> None:
        """The direct path's second half, on the completion thread: the
        outputs read, the slot's lock released, the future answered."""
        job = d.job
        try:
            self._release_half(d.half)
            if error is not None:
                raise error
            if not c.ok:
                raise TenantFault(self.name, c.describe(), self.context.fault(), c)
            host: dict[str, np.ndarray] = {}
            t_cpu = time.perf_counter()
            for part in self.compiled.parts[1:]:  # the host tail
                self._run_cpu(part.layer, d.slot, host)
            cpu_s = time.perf_counter() - t_cpu if len(self.compiled.parts) > 1 else 0.0
            outs = self._outputs(d.slot, host)
            info = RunInfo([c], time.perf_counter() - d.started, c.cycles,
                           cycle_model.seconds(c.cycles, self.accel.config), self.k, cpu_s,
                           input_marshal_s=job.quantize_s + d.input_write_s)
            if c.posted_at is not None:  # (the host tail is the model's, not overhead)
                info.submit_to_doorbell_s, info.collected_at = c.posted_at - job.submitted, c.collected_at + cpu_s
            result = self._result(outs, info, job.float_io)
            if info.collected_at is not None:
                info.completion_to_result_s = time.perf_counter() - info.collected_at
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            self._fail([job], e, d.slot)
            return
        self._exec_locks[d.slot].release()
        self._succeed(job, result, info)

    def _expire_direct(self, now: float) -> None:
        """The completion thread's tick: a direct request without a record
        after REQUEST_TIMEOUT_S fails, as a request thread's wait would."""
        for d in [w for w in list(self._waiting.values()) if isinstance(w, DirectRequest) and now > w.deadline]:
            if self._forget(d):
                self._finish_direct(d, None, self._no_record())

