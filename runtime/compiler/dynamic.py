"""Dynamic stage: re-target a compiled model to the k cores a tenant holds.

The static stage left, per layer, a few tiling variants (more, smaller
frames for more cores) with each frame's modeled cycles alone and its DDR
bytes. Given k, this stage picks for each layer
the variant whose estimated time on k cores is smallest, assigns its frames
to slots longest-processing-time first, and emits the level-1 dispatch
program (vf_dispatch_t entries, see vfpga_isa.h). The estimate follows the
pool timeline's rules (:mod:`vfpga.runtime.hw.frame_timing`): frames in
flight together share the tenant's DDR bank, the dispatcher issues frames
and passes barriers at its own cost. It reads only the frame index -- never
the frames -- so it runs at deploy and at every re-allocation in well under
a millisecond.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.compiler.static import CompiledModel
from vfpga.runtime.hw import frame_timing

FRAME, BARRIER, END = (isa.DISPATCH_OPS[k] for k in ("FRAME", "BARRIER", "END"))


@dataclass
class _Variant:
    offsets: np.ndarray  # frame offsets, longest frame first
    n_insns: np.ndarray
    cycles: np.ndarray  # alone, descending
    uniform: bool
    total: int  # sum of cycles
    ddr_bytes: int  # sum over the frames


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
                _Variant(f["offset"][g].copy(), f["n_insns"][g].copy(), c.copy(),
                         bool(c[0] == c[-1]), int(c.sum()), int(f["ddr_bytes"][g].sum())))
        self.parts = [[by_layer[i] for i in layers] for layers in part_layers]
        self.config = overlay.load(compiled.board)
        # per part, [layers, variants] arrays for choosing variants without a Python loop:
        # longest frame and total cycles alone, frames, DDR bytes, uniformity
        self.stats = []
        for layers in self.parts:
            width = max((len(vs) for vs in layers), default=1)
            big = np.iinfo(np.int64).max // 64
            c0 = np.full((len(layers), width), big, np.int64)
            total = np.full((len(layers), width), big, np.int64)
            n, nbytes = np.ones((len(layers), width), np.int64), np.zeros((len(layers), width), np.int64)
            uniform = np.zeros((len(layers), width), bool)
            for i, vs in enumerate(layers):
                for j, v in enumerate(vs):
                    c0[i, j], total[i, j] = v.cycles[0], v.total
                    n[i, j], nbytes[i, j], uniform[i, j] = len(v.cycles), v.ddr_bytes, v.uniform
            self.stats.append((c0, total, n, nbytes, uniform))


def _lpt(cycles: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Slots of the frames (given longest first; each to the least-loaded
    slot) and the busiest slot's cycles."""
    n = len(cycles)
    if k == 1:
        return np.zeros(n, np.int64), int(cycles.sum())
    if n <= k:
        return np.arange(n), int(cycles.max(initial=0))
    heap = [(0, s) for s in range(k)]
    slots = np.empty(n, np.int64)
    for i, c in enumerate(cycles.tolist()):
        load, s = heap[0]
        slots[i] = s
        heapq.heapreplace(heap, (load + c, s))
    return slots, int(max(load for load, _ in heap))


@dataclass
class DispatchPlan:
    k: int
    programs: list[np.ndarray]  # one vf_dispatch_t array per accelerator part
    variants: list[list[int]]  # chosen variant per layer, per part
    modeled_cycles: int  # sum over layers of the busiest slot (frame estimates)


def plan(compiled: CompiledModel | DispatchTable, k: int, variant: int | None = None) -> DispatchPlan:
    """The dispatch program(s) of ``compiled`` on k cores.

    Per layer the variant with the smallest estimate is taken: its frames'
    cycles with min(frames, k) of them in flight sharing the bank (each
    stretched by their summed demand when it exceeds the bank), then exact
    for variants whose frames are all equal (ceil(n/k) frames on the busiest
    slot), the lower bound max(longest frame, total/k) otherwise; plus the
    dispatcher's issue and barrier cycles. The chosen variant's frames are
    placed by LPT, whose makespan (with the same costs, and each part's
    completion record) is what ``modeled_cycles`` adds up.
    ``variant`` forces that variant (or a layer's last) everywhere, to
    compare or test variants."""
    table = compiled if isinstance(compiled, DispatchTable) else DispatchTable(compiled)
    if k < 1 or k > 255:
        raise ValueError(f"a tenant holds 1..255 cores, not {k}")
    cfg = table.config
    programs, chosen, total = [], [], 0
    for layers, (c0, tot, n, nbytes, uniform) in zip(table.parts, table.stats):
        loads = frame_timing.group_loads(nbytes, tot, np.minimum(n, k), cfg)
        c0_at, tot_at = frame_timing.stretched(c0, loads), frame_timing.stretched(tot, loads)
        span = np.where(uniform, -(-n // k) * c0_at, np.maximum(c0_at, tot_at / k))
        est = span + frame_timing.dispatch_overhead(n, k, cfg)
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
        spans = est[rows, pick].astype(np.float64)
        # one core runs a layer's frames back to back: its span is their sum, no slots to balance
        for i in np.flatnonzero(~uniform[rows, pick] & (sizes > k)).tolist() if k > 1 else ():
            v = picked[i]
            s_i, spans[i] = _lpt(frame_timing.stretched(v.cycles, loads[i, pick[i]]), k)
            spans[i] += frame_timing.dispatch_overhead(sizes[i], k, cfg)
            first = int(sizes[:i].sum())
            slots[first:first + len(s_i)] = s_i
        total += int(np.ceil(spans).sum()) + int(cfg["dispatcher"]["completion_cycles"])
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
