"""A CNN tenant that batches its requests (deploy with ``max_batch`` > 1).

The segment holds the model, an activation arena per batch item and a
program per batch size (:mod:`vfpga.runtime.compiler.cnn_batch`): each
convolution frame whose weights fit the core loads them once for the whole
batch. The request thread takes the first request waiting and those that
arrive within ``max_delay_us``, up to ``max_batch``, writes item b's input
into item b's arena and posts the smallest size that holds them (padding
items compute on whatever their arenas hold; their results are dropped).
Layers on the host (onnxruntime) run once per item between the accelerator
parts. One batch is in flight at a time; re-allocation re-plans every size.
"""

from __future__ import annotations

import time

import numpy as np

from vfpga.runtime.compiler import cnn_batch, dynamic
from vfpga.runtime.compiler.segment import cnn_batch_layout
from vfpga.runtime.errors import DeployError
from vfpga.runtime.tenants.tenant import RunInfo, Tenant
from vfpga.runtime.tenants.throughput import SizedPlans


class CnnBatchPlan(SizedPlans):
    """A batching CNN tenant's dispatch programs on k cores: per batch size,
    one per accelerator part (sizes in order, parts in order)."""

    @property
    def programs(self) -> list[np.ndarray]:
        return [p for b in self.sizes for p in self.plans[b].programs]

    @property
    def variants(self):
        return self.plans[1].variants


class CnnBatchTenant(Tenant):
    """A CNN model on ``cores`` that runs requests arriving together as one batch."""

    direct = False  # requests wait for the batch they join

    def __init__(self, accel, name: str, batched: cnn_batch.BatchedCnn, context_index: int, cores: list[int],
                 bank: int, max_pending: int = 64, max_delay_us: float = 0.0):
        self.batched = batched
        self.max_batch = batched.sizes[-1]
        self.max_delay_us = float(max_delay_us)
        self._item = 0  # the batch item whose arena the host reads and writes
        try:
            super().__init__(accel, name, batched.base, context_index, cores, bank, max_pending)
        except DeployError as e:
            if not isinstance(e.__cause__, MemoryError):
                raise
            raise DeployError(f"{e}; {self._batch_that_fits(bank, self._batch_bytes)}") from e

    def _batch_bytes(self, b: int) -> int:
        return cnn_batch_layout(cnn_batch.compile_batched(self.batched.base, b, self.accel.config)).size

    # ---- the segment and the plans ------------------------------------------------------------------
    def _prepare(self) -> int:
        self.tables = {b: dynamic.DispatchTable(self.batched.variants[b]) for b in self.batched.sizes}
        self.table = self.tables[1]
        self.plan = self._new_plan(len(self.cores))
        layout = cnn_batch_layout(self.batched, self.tables)
        self.ring_offset, self.cpl_offset = layout.ring_offset, layout.cpl_offset
        self.part_entries, self.program_halves = layout.part_entries, layout.program_halves
        return layout.size

    def _segment_image(self) -> dict[int, bytes]:
        return self.batched.segment_image()

    def _new_plan(self, k: int, variant: int | None = None):
        return CnnBatchPlan({b: dynamic.plan(self.tables[b], k, variant) for b in self.batched.sizes},
                            list(self.batched.sizes))

    def _arena(self, slot: int | None = None) -> int:
        return self.batched.arena(self._item)  # one slot: the batch item's place in it

    # ---- the request thread: batches -------------------------------------------------------------------
    def _take(self):
        return self._take_batch(self.max_batch, self.max_delay_us)

    def _execute_jobs(self, jobs) -> list[tuple]:
        if len(jobs) == 1:
            return super()._execute_jobs(jobs)
        t0 = time.perf_counter()
        self._doorbell_at, self._cpu_s = None, 0.0
        c = self.compiled
        n, b = len(jobs), self.batched.size_for(len(jobs))
        first = self.batched.sizes.index(b) * sum(p.kind == "accel" for p in c.parts)
        hosts: list[dict] = [{} for _ in range(n)]  # each item's float outputs of host layers
        write_s = 0.0  # (a batch's overhead counts from its forming: each input's quantization came before)
        for i, job in enumerate(jobs):
            self._item = i
            write_s += self._write_input(job.x_q)
        completions, cpu_s, accel_index = [], 0.0, 0
        try:
            for part in c.parts:
                if part.kind == "cpu":
                    t_cpu = time.perf_counter()
                    for i in range(n):
                        self._item, self._host = i, hosts[i]
                        self._run_cpu(part.layer)
                    cpu_s += time.perf_counter() - t_cpu
                    self._cpu_s = cpu_s
                    continue
                completions.append(self._run_part(first + accel_index))
                accel_index += 1
            outs = []
            for i in range(n):
                self._item = i
                outs.append([hosts[i].pop(p.name) if p.name in hosts[i] else self._read(p) for p in c.outputs])
        finally:
            self._item, self._host = 0, {}
        t1 = time.perf_counter()
        cycles = sum(x.cycles for x in completions)
        seconds = cycles / (float(self.accel.config["clock_mhz"]) * 1e6)
        results = [(o, RunInfo(completions, t1 - t0, cycles, seconds, self.k, cpu_s / n, batch=n, batch_size=b,
                               input_marshal_s=write_s)) for o in outs]
        for _, info in results:  # a batch's overhead counts from when it was formed, not the batching wait
            self._mark_overhead(info, t0)
        return results
