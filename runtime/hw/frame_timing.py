"""What the dynamic stages know of a frame's time, and how they turn it into
the estimate of a layer (or an RNN phase) on k cores.

The pool timeline (:mod:`vfpga.runtime.hw.timeline`) is the modeled clock:
each frame has its time alone (the cycle model's schedule of its
instructions) and its *demand*, the share of its DDR bank's bandwidth it
uses alone (its DDR bytes / the bank's bytes per cycle / its cycles alone).
While the frames in flight on a bank demand more than the bank gives, the
bank is the bottleneck and is shared max-min fairly (:func:`bank_stretches`):
a frame progresses at 1 / stretch of its rate alone, so no bank ever moves
more than its bytes per cycle; the stretches are revised whenever a frame
on the bank starts or ends. Each frame issued costs the dispatcher
``issue_cycles``, each barrier passed ``barrier_cycles``, each record
``completion_cycles``. The static stages therefore profile every frame's
cycles alone and its DDR bytes, and the dynamic stages estimate with the
same rules:

* a layer of n frames on k cores runs c = min(n, k) of them at once; their
  bank load is c times the layer's mean demand (DDR bytes per cycle over the
  bank's bytes per cycle, at most 2 per frame: a core's load and save units
  stream one bus word per cycle each);
* at load L > 1 frames of equal demand share the bank equally, so each takes
  L times its time alone (:func:`stretched`): the bank moves exactly its
  bandwidth;
* the dispatcher issues the first wave of c frames at once (c issue costs
  before any starts), then one frame each time a core frees; a barrier
  follows each layer.

HLS constructs
--------------
The timeline's (:mod:`.timeline`; host_tests/hw/test_model_constructs.py checks them):

* A layer's frames share their segment's bank, no more than its bandwidth
  between them: one m_axi port per bank, its bursts taken in turn
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

import numpy as np

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.hw import cycle_model

MAX_DEMAND = 2.0  # a core's load and save units move one bus word per cycle each, in its own ports' bandwidth


def _banks(config: dict, striped: bool = True) -> tuple[float, float]:
    """(bytes per cycle of the banks a segment lies on: a striped one's, else
    one bank's; the most of them one frame can use: two words per cycle of
    the core's own ports)."""
    banks = overlay.config.segment_bytes_per_cycle(config, striped)
    return banks, MAX_DEMAND * overlay.config.core_bytes_per_cycle(config) / banks


def demand(ddr_bytes, cycles, config: dict, striped: bool = True):
    """Share of its segment's banks' bandwidth a frame uses when it runs alone
    (the timeline's rule): one bank's, or all of a striped segment's banks'
    (its words go to them in turn, :func:`vfpga.overlay.config.segment_banks`).
    ``striped``: the segment is striped where the board stripes segments
    (the runtime's default), else contiguous in one bank."""
    banks, cap = _banks(config, striped)
    cycles = np.maximum(np.asarray(cycles, np.float64), 1.0)
    return np.minimum(cap, np.asarray(ddr_bytes, np.float64) / banks / cycles)


def bank_stretches(demands) -> list[float]:
    """How much slower than alone each frame in flight on one bank runs,
    given their demands: max-min fair shares of the bank (round-robin
    arbitration between the ports' bursts), by water-filling. A frame that
    asks for less than an equal share of what is left gets all it asks
    (stretch 1); the others split the rest equally, each stretched by its
    demand over that share. Their bandwidths then add up to the bank's."""
    demands = [float(d) for d in demands]
    if sum(demands) <= 1.0:
        return [1.0] * len(demands)
    left, share = 1.0, 0.0
    ranked = sorted(demands)
    for i, d in enumerate(ranked):
        share = left / (len(ranked) - i)
        if d > share:
            break
        left -= d
    return [max(1.0, d / share) for d in demands]


def stretched(cycles1, load) -> np.ndarray:
    """Cycles of frames of equal demand (alone: ``cycles1``) in flight
    together at bank load ``load`` (their summed demand): each gets an equal
    share of the bank, i.e. ``load`` times its time alone when the bank is
    the bottleneck (:func:`bank_stretches` of equal demands)."""
    return np.asarray(cycles1, np.float64) * np.maximum(np.asarray(load, np.float64), 1.0)


def group_loads(ddr_bytes, cycles1, concurrent, config: dict) -> np.ndarray:
    """Bank loads of groups of frames (a layer's variant, an RNN phase) with
    ``concurrent`` of them in flight at once: their count times the group's
    mean demand (total bytes over total cycles). Arrays over groups."""
    banks, cap = _banks(config)
    cycles1 = np.maximum(np.asarray(cycles1, np.float64), 1.0)
    mean = np.minimum(cap, np.asarray(ddr_bytes, np.float64) / banks / cycles1)
    return np.asarray(concurrent, np.float64) * mean


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


def frame_profile(frame, config, cache: dict | None = None) -> tuple[int, int]:
    """(cycles of the frame alone, its DDR bytes): what the dynamic stage
    knows of a frame. ``cache`` (a dict) shares the work between frames that
    differ only in addresses."""
    key = timing_key(frame)
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        hit = (int(cycle_model.schedule(frame, config).total_cycles), cycle_model.ddr_bytes(frame, config))
        if cache is not None:
            cache[key] = hit
    return hit
