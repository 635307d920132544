"""The RNN dynamic stage: for k cores, the fastest variant per layer by
the frames' modeled cycles (the pool timeline's rules, see
:mod:`vfpga.runtime.hw.frame_timing`) and the level-1 dispatch program."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfpga.driver import isa
from vfpga.runtime.hw import frame_timing

from .model import CompiledRnn, RnnCompileError

FRAME_OP, BARRIER_OP, END_OP = (isa.DISPATCH_OPS[k] for k in ("FRAME", "BARRIER", "END"))


@dataclass
class RnnPlan:
    """A dispatch program of a CompiledRnn on k RNN cores.

    ``resident``: some layer keeps weights in its cores between frames, so a
    slot must stay on one physical core from the layer's preload frame to its
    last timestep (re-mapping mid-request needs the preload replayed)."""

    k: int
    program: np.ndarray  # isa.DISPATCH
    variants: list  # chosen slice count per (layer, direction), in phase order
    modeled_cycles: int  # estimate of one request alone: phases by the timeline's rules, and the record
    resident: bool

    @property
    def programs(self) -> list[np.ndarray]:
        """One program per accelerator part, as CNN plans have (an RNN model is one part)."""
        return [self.program]


def _phase_cycles(fr: np.ndarray, rows: np.ndarray, k: int, cfg: dict) -> int:
    """Estimate of one phase (its frames, frame i on slot i mod k) on k
    cores, by the pool timeline's rules (vfpga.runtime.hw.frame_timing):
    frames in flight together share the DDR bank, the dispatcher issues
    them and passes the barrier after them."""
    if not len(rows):
        return 0
    load = frame_timing.group_loads(fr["ddr_bytes"][rows].sum(), fr["cycles"][rows].sum(), min(k, len(rows)), cfg)
    cycles = frame_timing.stretched(fr["cycles"][rows], load)
    if len(rows) <= k:
        span = cycles.max()
    else:
        slots = np.zeros(k)
        np.add.at(slots, np.arange(len(rows)) % k, cycles)
        span = slots.max()
    return int(np.ceil(span)) + int(frame_timing.dispatch_overhead(len(rows), k, cfg))


def plan_rnn(compiled: CompiledRnn, k: int, variant: int | None = None) -> RnnPlan:
    """The level-1 dispatch program on k cores: per layer-direction the
    variant with the smallest modeled time (sum over its phases of the
    busiest slot, frame i of a phase on slot i mod k), frames then a BARRIER
    per phase, END last. ``variant`` forces a slice count (must exist)."""
    if k < 1 or k > 255:
        raise ValueError(f"a tenant holds 1..255 RNN cores, not {k}")
    if variant is not None and variant not in compiled.variants:
        raise ValueError(f"variant {variant} not compiled; have {compiled.variants}")
    fr = compiled.frames
    groups: dict = {}
    for ph in compiled.phases:
        groups.setdefault((ph.layer, ph.direction), []).append(ph)
    cfg = compiled.config
    entries, chosen, resident = [], [], False
    total = int(cfg["dispatcher"]["completion_cycles"])
    for key, phs in groups.items():
        cands = [variant] if variant is not None else compiled.variants
        # a resident variant keeps one slice's weights per core: never fold it
        cands = [v for v in cands if v <= k or not compiled.tilings[key[0]][v].resident]
        if not cands:
            raise ValueError(f"variant {variant} keeps its weights resident in {variant} cores; it cannot fold onto "
                             f"{k}")
        best = None
        for v in cands:
            cost = sum(_phase_cycles(fr, ph.frames[v], k, cfg) for ph in phs if v in ph.frames)
            if best is None or cost < best[0]:
                best = (cost, v)
        cost, v = best
        chosen.append(v)
        total += cost
        resident |= compiled.tilings[key[0]][v].resident
        for ph in phs:
            rows = ph.frames.get(v)
            if rows is None:
                continue
            for i, r in enumerate(rows.tolist()):
                entries.append((int(fr["offset"][r]), int(fr["n_insns"][r]), i % k, FRAME_OP))
            entries.append((0, 0, 0, BARRIER_OP))
    entries.append((0, 0, 0, END_OP))
    prog = np.zeros(len(entries), isa.DISPATCH)
    arr = np.array(entries, dtype=np.int64)
    if (arr[:, 1] > np.iinfo(np.uint16).max).any():
        raise RnnCompileError("a frame has more than 65535 instructions")
    prog["frame_offset"], prog["n_insns"], prog["slot"], prog["op"] = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
    return RnnPlan(k, prog, chosen, total, resident)
