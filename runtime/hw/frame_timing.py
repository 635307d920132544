"""What the dynamic stages know of a frame's time, and how they turn it into
the estimate of a layer (or an RNN phase) on k cores.

The pool timeline (:mod:`vfpga.runtime.hw.timeline`) is the modeled clock:
a frame issued while the frames in flight on its DDR bank, with it, demand
more than the bank gives (load L > 1) takes the cycle model's schedule of
its instructions at bank load L (rounded up to 1/8); each frame issued costs
the dispatcher ``issue_cycles``, each barrier passed ``barrier_cycles``,
each record ``completion_cycles``. The static stages therefore profile
every frame at the loads in :data:`SHARING` besides 1 (and count its DDR
bytes), and the dynamic stages estimate with the same rules:

* a layer of n frames on k cores runs c = min(n, k) of them at once; their
  bank load is c times the layer's mean demand (DDR bytes per cycle over the
  bank's bytes per cycle, at most 2 per frame: a core's load and save units
  stream one bus word per cycle each), rounded up to 1/8 as the timeline
  does;
* a frame's cycles at that load are interpolated between its profiled
  loads, linearly in log2(load) (beyond the last one, in proportion);
* the dispatcher issues the first wave of c frames at once (c issue costs
  before any starts), then one frame each time a core frees; a barrier
  follows each layer.

HLS constructs
--------------
The timeline's (:mod:`.timeline`; host_tests/hw/test_model_constructs.py checks them):

* A layer's frames share their segment's bank: one m_axi port per bank
  [hls dispatcher_top.cpp "VF_DDR_PORT(mem, 0, VF_DREG_MEM)"] [hls include/vfpga_ddr.h vf_seg_window]
  [hls include/vfpga_unit_scheduler.h "vf_seg_read(ddr, seg_win, insn_offset"] [hls cnn_core.cpp "vf_seg_write_beat(ddr, win, drow + bt * VF_AXI_BYTES"]
* The first wave: one advance issues a frame to every idle core of the
  tenant's mask, in order [hls dispatcher.cpp WALK] [hls dispatcher.cpp "if (core.busy)"];
  a core that frees gets the next frame in the dispatcher's next iteration
  [hls include/vfpga_pool.h RETIRE_ENDED]
* A barrier after each layer: BARRIER passes when the tenant has no frame
  in flight [hls dispatcher.cpp VF_DISPATCH_BARRIER]
* A frame streams at most two bus words per cycle (load and save units on
  an m_axi port's independent read and write channels)
  [hls include/vfpga_hls.h "max_widen_bitwidth=VF_DDR_PORT_BITS"]
"""

from __future__ import annotations

import math

import numpy as np

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.hw import cycle_model

SHARING = (2, 4, 8, 16)  # bank loads each frame is profiled at, besides 1
MAX_DEMAND = 2.0  # a core's load and save units move one bus word per cycle each


def demand(ddr_bytes, cycles, config: dict):
    """Share of a bank's bandwidth a frame uses when it runs alone (the timeline's rule)."""
    cycles = np.maximum(np.asarray(cycles, np.float64), 1.0)
    return np.minimum(MAX_DEMAND, np.asarray(ddr_bytes, np.float64) / overlay.config.core_bytes_per_cycle(config) / cycles)


def rounded_load(load: float) -> float:
    """The bank load the timeline schedules a frame at: 1 when the bank is
    not the bottleneck, else rounded up to 1/8."""
    return 1.0 if load <= 1.0 else math.ceil(load * 8) / 8


def cycles_at(cycles1, shared, load) -> np.ndarray:
    """Cycles of frames (alone: ``cycles1`` [n]; at the loads of SHARING:
    ``shared`` [n, len(SHARING)]) at bank load ``load`` (one for all, or one
    per frame)."""
    c1 = np.asarray(cycles1, np.float64)
    if np.all(np.asarray(load) <= 1.0):
        return c1  # the bank is not the bottleneck
    table = np.column_stack([c1, np.asarray(shared, np.float64).reshape(len(c1), len(SHARING))])
    levels = np.array((1,) + SHARING, np.float64)
    load = np.broadcast_to(np.maximum(np.asarray(load, np.float64), 1.0), c1.shape)
    x = np.log2(load)
    xs = np.log2(levels)
    j = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 2)
    w = np.clip((x - xs[j]) / (xs[j + 1] - xs[j]), 0.0, 1.0)
    rows = np.arange(len(c1))
    inside = table[rows, j] * (1 - w) + table[rows, j + 1] * w
    beyond = table[:, -1] * (load / levels[-1])  # past the last profiled load: in proportion
    return np.where(load > levels[-1], beyond, inside)


def rounded_loads(loads) -> np.ndarray:
    """:func:`rounded_load` of an array."""
    loads = np.asarray(loads, np.float64)
    return np.where(loads <= 1.0, 1.0, np.ceil(loads * 8) / 8)


def group_loads(ddr_bytes, cycles1, concurrent, config: dict) -> np.ndarray:
    """Rounded bank loads of groups of frames (a layer's variant, an RNN
    phase) with ``concurrent`` of them in flight at once: their count times
    the group's mean demand (total bytes over total cycles). Arrays over groups."""
    cycles1 = np.maximum(np.asarray(cycles1, np.float64), 1.0)
    mean = np.minimum(MAX_DEMAND, np.asarray(ddr_bytes, np.float64) / overlay.config.core_bytes_per_cycle(config) / cycles1)
    return rounded_loads(np.asarray(concurrent, np.float64) * mean)


def dispatch_overhead(n_frames, k: int, config: dict):
    """Dispatcher cycles a layer of ``n_frames`` on k cores adds to its busiest
    slot: the first wave issued together, one issue per later frame of the
    slot, and the barrier after it (arrays over layers, or one)."""
    disp = config["dispatcher"]
    n = np.asarray(n_frames, np.int64)
    later = np.maximum(0, -(-n // k) - 1)
    return int(disp["issue_cycles"]) * (np.minimum(n, k) + later) + int(disp["barrier_cycles"])


# ---------------------------------------------------------------- CNN frame profiles

_ADDRESS_FIELDS = {fmt: [n for n in dt.names if n.endswith("_addr")] for fmt, dt in isa.FORMATS.items()}


def timing_key(program) -> bytes:
    """A program's bytes with what its timing does not depend on zeroed
    (buffer and DDR addresses, tags, frame ids): frames that differ only
    there take the same cycles."""
    prog = cycle_model._as_program(program).copy()
    prog.view(cycle_model._HEAD_SLOT).reshape(-1)["head"]["tag"] = 0
    ops = prog[:, 0]
    for op, fmt in isa.FORMAT_OF.items():
        sel = ops == op
        if not sel.any():
            continue
        rows = prog.view(isa.FORMATS[fmt]).reshape(-1)
        for name in _ADDRESS_FIELDS[fmt] + (["frame_id", "layer"] if fmt == "marker" else []):
            rows[name][sel] = 0
    return prog.tobytes()


def frame_profile(frame, config, cache: dict | None = None) -> tuple[np.ndarray, int]:
    """(cycles of the frame alone and at each bank load of
    :data:`SHARING`, its DDR bytes): what the dynamic stage
    knows of a frame. ``cache`` (a dict) shares the work between frames that
    differ only in addresses."""
    key = timing_key(frame)
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        loads = (1,) + SHARING
        hit = (np.array([cycle_model.schedule(frame, config, load).total_cycles for load in loads], np.int64),
               cycle_model.ddr_bytes(frame, config))
        if cache is not None:
            cache[key] = hit
    return hit
