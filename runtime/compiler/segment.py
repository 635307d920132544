"""A tenant segment's whole layout: the static stage's image (constants,
activations, I/O, frames), the extra activation slots of a tenant with
several requests in flight (:mod:`vfpga.runtime.compiler.slots`), then the
areas the driver needs -- the request ring, the completion records and two
halves for dispatch programs (re-allocation writes the half no request in
flight is walking; each half holds every slot's programs).

Every figure here is a segment offset; the tenant's cores check each
address against the segment's limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from vfpga.driver import isa
from vfpga.driver.tenant_context import ring_bytes
from vfpga.runtime.compiler import cnn_batch, dynamic, rnn, slots, static

RING_SIZE = 16  # ring entries per tenant: a request posts its accelerator parts one at a time
PAGE = static.PAGE
_align = static.align


@dataclass(frozen=True)
class SegmentLayout:
    """Where a tenant's driver areas go, after the compiled model's bytes."""

    ring_offset: int
    cpl_offset: int
    part_entries: list[int]  # dispatch entries reserved per accelerator part (the largest variant mix)
    program_halves: tuple[int, int]
    size: int  # whole pages


def driver_areas(model_bytes: int, part_entries: list[int], copies: int = 1) -> SegmentLayout:
    """Ring, records and two program halves (``part_entries`` dispatch
    entries per accelerator part, ``copies`` times: one per slot) after
    ``model_bytes`` of compiled model."""
    ring, records = ring_bytes(RING_SIZE)
    ring_offset = _align(model_bytes)
    cpl_offset = _align(ring_offset + ring)
    half = _align(copies * sum(part_entries) * isa.DISPATCH.itemsize)
    first = _align(cpl_offset + records)
    size = _align(first + 2 * half, PAGE)  # DMA buffers are whole pages
    return SegmentLayout(ring_offset, cpl_offset, list(part_entries), (first, first + half), size)


def _part_entries(table: dynamic.DispatchTable) -> list[int]:
    return [sum(max(len(v.cycles) for v in layer) for layer in part) + len(part) + 1 for part in table.parts]


def segment_layout(compiled: static.CompiledModel, table: dynamic.DispatchTable | None = None,
                   max_inflight: int = 1) -> SegmentLayout:
    """A CNN tenant's segment: per part, room for the largest variant mix;
    with ``max_inflight`` > 1 that many activation slots."""
    table = table or dynamic.DispatchTable(compiled)
    return driver_areas(slots.slots(compiled, max_inflight).end, _part_entries(table), max_inflight)


def check_fits(compiled: static.CompiledModel, limit: int, max_inflight: int,
               table: dynamic.DispatchTable | None = None) -> None:
    """Raises MemoryError when ``max_inflight`` slots do not fit in a
    segment of ``limit`` bytes, saying how many would."""
    table = table or dynamic.DispatchTable(compiled)
    if segment_layout(compiled, table, max_inflight).size <= limit:
        return
    fit = 0
    while fit < max_inflight and segment_layout(compiled, table, fit + 1).size <= limit:
        fit += 1
    raise MemoryError(f"max_inflight {max_inflight} needs a segment of "
                      f"{segment_layout(compiled, table, max_inflight).size} bytes, {limit} are available: "
                      + (f"{fit} slot{'s' if fit > 1 else ''} would fit" if fit else "not even one slot fits"))


def rnn_segment_layout(compiled: rnn.CompiledRnn, n_rnn: int) -> SegmentLayout:
    """The RNN tenant's segment: the compiled bytes, the ring, the records and
    two halves holding the longest dispatch program over 1..n_rnn cores."""
    longest = max(len(rnn.plan_rnn(compiled, k).program) for k in range(1, n_rnn + 1))
    return driver_areas(compiled.segment_size, [longest])


def rnn_batch_layout(batched: rnn.BatchedRnn, n_rnn: int) -> SegmentLayout:
    """A batching RNN tenant's segment: every variant's bytes (see
    :mod:`vfpga.runtime.compiler.rnn.batch`), the ring, the records and two
    halves holding, per batch size, its longest dispatch program over 1..n_rnn cores."""
    longest = [max(len(rnn.plan_rnn(v, k).program) for k in range(1, n_rnn + 1))
               for v in (batched.variants[b] for b in batched.sizes)]
    return driver_areas(batched.segment_size, longest)


def cnn_batch_layout(batched: cnn_batch.BatchedCnn, tables: dict | None = None) -> SegmentLayout:
    """A batching CNN tenant's segment: the model, the items' arenas and
    every batch size's program (see :mod:`vfpga.runtime.compiler.cnn_batch`),
    then the ring, the records and two halves holding, per batch size, room
    for its largest variant mix of each part (sizes in order)."""
    tables = tables or {b: dynamic.DispatchTable(batched.variants[b]) for b in batched.sizes}
    return driver_areas(batched.end, [e for b in batched.sizes for e in _part_entries(tables[b])])
