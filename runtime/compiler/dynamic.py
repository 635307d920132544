"""Dynamic stage: re-target a compiled model to the k cores a tenant holds.

The static stage left, per layer, a few tiling variants (more, smaller
frames for more cores) with a modeled cycle estimate per frame. Given k,
this stage picks for each layer the variant whose frames balance best over k
slots, assigns the frames to slots longest-processing-time first, and emits
the level-1 dispatch program (vf_dispatch_t entries, see vfpga_isa.h). It
reads only the frame index -- never the frames -- so it runs at deploy and at
every re-allocation in well under a millisecond.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from vfpga.driver import isa
from vfpga.runtime.compiler.static import CompiledModel

FRAME, BARRIER, END = (isa.DISPATCH_OPS[k] for k in ("FRAME", "BARRIER", "END"))


@dataclass
class _Variant:
    offsets: np.ndarray  # frame offsets, longest frame first
    n_insns: np.ndarray
    cycles: np.ndarray  # descending
    uniform: bool
    total: int  # sum of cycles


class DispatchTable:
    """What the dynamic stage needs of a compiled model, extracted once:
    per accelerator part its layers, per layer its variants' frames sorted
    longest first."""

    def __init__(self, compiled: CompiledModel):
        f = compiled.frames
        # accelerator layers with frames, grouped by part (parts split at CPU layers)
        part_layers: list[list[int]] = [[]]
        for li in compiled.layers:
            if li.kind == "cpu":
                if part_layers[-1]:
                    part_layers.append([])
            elif li.frames:
                part_layers[-1].append(li.index)
        if not part_layers[-1]:
            part_layers.pop()
        n_accel = sum(p.kind == "accel" for p in compiled.parts)
        if len(part_layers) != n_accel:
            raise ValueError(f"frame index has {len(part_layers)} accelerator parts, the model {n_accel}")
        order = np.lexsort((-f["cycles"], f["variant"], f["layer"]))
        f = f[order]
        bounds = np.flatnonzero(np.diff(f["layer"].astype(np.int64) * 1024 + f["variant"])) + 1
        groups = np.split(np.arange(len(f)), bounds)
        by_layer: dict[int, list[_Variant]] = {}
        for g in groups:
            if not len(g):
                continue
            c = f["cycles"][g]
            by_layer.setdefault(int(f["layer"][g[0]]), []).append(
                _Variant(f["offset"][g].copy(), f["n_insns"][g].copy(), c.copy(), bool(c[0] == c[-1]),
                         int(c.sum())))
        self.parts = [[by_layer[i] for i in layers] for layers in part_layers]
        # per part: [layers, variants] arrays for choosing variants without a Python loop
        self.stats = []
        for layers in self.parts:
            width = max((len(vs) for vs in layers), default=1)
            c0 = np.full((len(layers), width), np.iinfo(np.int64).max // 4, np.int64)
            total, n = np.zeros_like(c0), np.ones_like(c0)
            uniform = np.zeros(c0.shape, bool)
            for i, vs in enumerate(layers):
                for j, v in enumerate(vs):
                    c0[i, j], total[i, j], n[i, j], uniform[i, j] = v.cycles[0], v.total, len(v.cycles), v.uniform
            self.stats.append((c0, total, n, uniform))


def _lpt(v: _Variant, k: int) -> tuple[np.ndarray, int]:
    """Slots of the frames (longest first, each to the least-loaded slot)
    and the busiest slot's cycles."""
    n = len(v.cycles)
    if k == 1:
        return np.zeros(n, np.int64), v.total
    if n <= k:
        return np.arange(n), int(v.cycles[0])
    if v.uniform:
        return np.arange(n) % k, int(-(-n // k) * v.cycles[0])
    heap = [(0, s) for s in range(k)]
    slots = np.empty(n, np.int64)
    for i, c in enumerate(v.cycles.tolist()):
        load, s = heap[0]
        slots[i] = s
        heapq.heapreplace(heap, (load + c, s))
    return slots, max(load for load, _ in heap)


@dataclass
class DispatchPlan:
    k: int
    programs: list[np.ndarray]  # one vf_dispatch_t array per accelerator part
    variants: list[list[int]]  # chosen variant per layer, per part
    modeled_cycles: int  # sum over layers of the busiest slot (frame estimates)


def plan(compiled: CompiledModel | DispatchTable, k: int, variant: int | None = None) -> DispatchPlan:
    """The dispatch program(s) of ``compiled`` on k cores.

    Per layer the variant with the smallest makespan estimate is taken:
    exact for variants whose frames are all equal (ceil(n/k) frames on the
    busiest slot), the lower bound max(longest frame, total/k) otherwise;
    the chosen variant's frames are then placed by LPT, whose makespan is
    what ``modeled_cycles`` adds up.
    ``variant`` forces that variant (or a layer's last) everywhere, to
    compare or test variants."""
    table = compiled if isinstance(compiled, DispatchTable) else DispatchTable(compiled)
    if k < 1 or k > 255:
        raise ValueError(f"a tenant holds 1..255 cores, not {k}")
    programs, chosen, total = [], [], 0
    for layers, (c0, tot, n, uniform) in zip(table.parts, table.stats):
        est = np.where(uniform, np.where(n <= k, c0, -(-n // k) * c0), np.maximum(c0, -(-tot // k)))
        if variant is None:
            pick = est.argmin(axis=1)
        else:
            pick = np.minimum(variant, np.array([len(vs) - 1 for vs in layers], np.int64))
        picked = [layers[i][j] for i, j in enumerate(pick.tolist())]
        sizes = np.array([len(v.cycles) for v in picked], np.int64)
        n_frames = int(sizes.sum())
        # round-robin slots for every frame; LPT where a layer's frames differ
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        slots = (np.arange(n_frames) - starts) % k
        rows = np.arange(len(picked))
        spans = est[rows, pick]
        for i in np.flatnonzero(~uniform[rows, pick] & (sizes > k)).tolist():
            s_i, spans[i] = _lpt(picked[i], k)
            first = int(sizes[:i].sum())
            slots[first:first + len(s_i)] = s_i
        total += int(spans.sum())
        prog = np.zeros(n_frames + len(picked) + 1, isa.DISPATCH)
        # frame entries, each layer followed by its barrier, END last
        barrier_at = np.cumsum(sizes + 1) - 1
        is_frame = np.ones(len(prog), bool)
        is_frame[barrier_at] = False
        is_frame[-1] = False
        if n_frames:
            prog["frame_offset"][is_frame] = np.concatenate([v.offsets for v in picked])
            prog["n_insns"][is_frame] = np.concatenate([v.n_insns for v in picked])
            prog["slot"][is_frame] = slots
        prog["op"][is_frame] = FRAME
        prog["op"][barrier_at] = BARRIER
        prog["op"][-1] = END
        programs.append(prog)
        chosen.append(pick.tolist())
    return DispatchPlan(k, programs, chosen, total)
