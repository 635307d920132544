"""Analytic cycle model of the RNN core and of RNN plans (emulation timing).

Why a separate model: the RNN core has its own four instructions and loop
nests (hls/rnn_core.cpp), so its per-instruction iteration counts and
pipeline depths differ from the CNN core's; the timing conventions are the
CNN model's (runtime/cycle_model.py), whose constants (AXI burst limits,
DSP/BRAM/requantization latencies, unit issue, token, marker and fetch
costs) are reused here rather than restated.

Three levels:

* :func:`program_iters` -- pipelined-loop iterations per instruction, the
  exact formulas the C-simulation counts (contract at the top of
  hls/rnn_core.cpp; host_tests/test_rnn_compiler.py compares them with the
  C-sim's ``iters``):
      RNN_LOAD, RNN_SAVE   planes * rows * ceil(row_bytes / axi_bytes)
      RNN_MATVEC           ceil(rows / ROWS) * ceil(cols / COLS)
      RNN_GATES            ceil(n / LANES)
* :func:`program_cycles` -- iterations plus fixed latencies (issue + DDR
  latency + transfer + pipeline depth - 1 for loads and saves, issue +
  iterations + depth - 1 for MATVEC and GATES). Pipeline depths (latencies
  from the board config's ``timing`` section, :class:`parameters.Latencies`):
      MATVEC  BRAM read (2) + DSP MAC (3) + adder tree ceil(log2(COLS))
              + accumulator add (1) + ACC write (1)
      GATES   ACC/PARAM read (2) + requantization (7) + sum/clamp (1)
              + table activation (BRAM 2 + DSP interpolation 3 + round 1
              + clamp 1 = 7) + cell arithmetic (DSP 3 + round 1 + clamp 1)
              + second activation (7) + output product (DSP 3 + round 1)
              + q8 requantization (7) + VBUF write (1) = 44, the LSTM chain,
              used for every cell (GRU's is one DSP stage shorter).
  A transfer takes at least its bus beats, its bytes at the bank bandwidth
  and its bursts over the outstanding limit.
* :func:`frame_cycles` / :func:`frames_cycles` -- one frame on one core:
  instruction fetch, then the load / compute / save units in order within a
  unit and ordered between units by the dependency tokens, as the core
  steps; and :func:`plan_timing` -- a plan on k cores: per phase (the frames
  between two barriers) the busiest slot, each frame paying the
  dispatcher's issue cost, plus the barrier; frames of a phase share the
  segment's DDR bank by the pool timeline's rule (vfpga.runtime.hw.frame_timing).

The RNN classes are not calibrated (``vfpga calibrate`` fits the CNN
model); they use the board config's numbers.

HLS constructs
--------------
As in :mod:`.cycle_model` (host_tests/hw/test_model_constructs.py checks them):

* Iterations are the C-sim's counts, one beat loop pipelined at II=1 per
  instruction [hls rnn_core.cpp MEM_BEAT pipelined] [hls rnn_core.cpp MV_CB pipelined]
  [hls include/vfpga_unit_scheduler.h LANE_BEAT pipelined] (GATES: vf_lane_loop) with its lanes in one beat
  [hls rnn_core.cpp MEM_LANE unrolled] [hls rnn_core.cpp MV_ROW unrolled]
  [hls rnn_core.cpp MV_COL unrolled] [hls include/vfpga_unit_scheduler.h LANE_BODY unrolled];
  two rows' products from one DSP48E2 multiply
  [hls rnn_core.cpp "vf_mul2(v[cb * VF_RNN_COLS + c], tile[(r + 1) * VF_RNN_COLS + c]"]
* The array's accumulators start and end around the beat loop, once per
  row block [hls rnn_core.cpp MV_INIT unrolled] [hls rnn_core.cpp MV_STORE unrolled]
* A beat reads a COLS-wide block of VBUF, and the gate lanes' ACC and STATE
  words: partitions in both tops
  [hls rnn_core_top.cpp "VF_RNN_PARTITIONS(1, wbuf, vbuf, acc, state_words, act)"]
  [hls dispatcher_top.cpp "VF_RNN_PARTITIONS(2, rnn_wbuf, rnn_vbuf, rnn_acc, rnn_state, rnn_act)"];
  its ROWS x COLS weights are one WBUF word: the compiler packs them
  beat-major (runtime/compiler/rnn/frames.py pack_tiles), the beat reads
  the tile at wgt_addr (tile aligned) + (rb * wgt_stride + cb) words
  [hls rnn_core.cpp "const int8_t *tile = w + (rb * ws + cb) * VR_TILE;"]
  [hls rnn_core.cpp "return VF_FIELD(vf_insn_rnn_matvec_t, wgt_addr);"]
  from a WBUF reshaped by the tile, one memory of tile words
  [hls include/vfpga_hls.h "ARRAY_RESHAPE variable=wbuf dim=D cyclic factor=VF_RNN_TILE_BYTES"],
  which RNN_LOAD writes a whole tile at a time [hls rnn_core.cpp MEM_TILE unrolled]
* The gate chain's depth: the LSTM/GRU cell of one lane
  [hls rnn_core.cpp vr_gate_unit], its tables read by every lane at once:
  ACT is held once per lane, [VF_RNN_LANES][act_words] with the lane
  dimension partitioned completely
  [hls include/vfpga_hls.h "variable=act dim=D complete"]
  [hls rnn_core_top.cpp "static int32_t act[VF_RNN_LANES][VF_RNN_ACT_WORDS];"],
  lane l looking up copy l
  [hls rnn_core.cpp "const uint64_t copy = (j % VF_RNN_LANES) * (uint64_t)VF_RNN_ACT_WORDS;"]
  and RNN_LOAD writing every copy in the same beat [hls rnn_core.cpp MEM_ACT_COPY unrolled]
  (on-chip cost: lanes x act_words x 4 bytes per core, e.g. u200 16 x 4098
  words = 256 KiB, u200_bigcore 128 x 4098 = 2 MiB, in UltraRAM)
* RNN_LOAD / RNN_SAVE move one bus word per beat, the int32 buffers whole
  words [hls rnn_core.cpp MEM_WORD unrolled]
  through the bank ports of the CNN model's DDR numbers
  [hls include/vfpga_hls.h "latency=VF_DDR_LATENCY"]
  [hls include/vfpga_hls.h "num_read_outstanding=VF_AXI_OUTSTANDING"]
* The units overlap through their tokens, the fetch is one transfer
  [hls include/vfpga_unit_scheduler.h vf_tokens_ready]
  [hls include/vfpga_unit_scheduler.h "VF_PRAGMA(HLS DATAFLOW)"]
  [hls include/vfpga_unit_scheduler.h FETCH pipelined] (the CNN model's fetch
  and token plan, cycle_model.fetch_cycles)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.hw import cycle_model as cm
from vfpga.runtime.hw import frame_timing, parameters

L = isa.lib


def matvec_depth(lat: parameters.Latencies, cols: int) -> int:
    """MATVEC pipeline: BRAM read, DSP MAC, adder tree over COLS, accumulator add, ACC write."""
    return (lat.bram_read_latency + lat.dsp_mac_latency + lat.alu_latency + lat.buf_write_latency
            + max(1, math.ceil(math.log2(cols))))


def gates_depth(lat: parameters.Latencies) -> int:
    """The LSTM gate chain (GRU's is one DSP stage shorter; the longer one is used for both)."""
    act = lat.bram_read_latency + lat.dsp_mac_latency + lat.round_shift_latency + lat.clamp_latency
    return (lat.bram_read_latency + lat.requant + lat.alu_latency + act + lat.dsp_mac_latency
            + lat.round_shift_latency + lat.clamp_latency + act + lat.dsp_mac_latency + lat.round_shift_latency
            + lat.requant + lat.buf_write_latency)


_MEM = isa.RNN_FORMATS["mem"]
_MV = isa.RNN_FORMATS["matvec"]
_GATES = isa.RNN_FORMATS["gates"]
LOAD, COMPUTE, SAVE = 0, 1, 2


@dataclass(frozen=True)
class Timing:
    rows: int
    cols: int
    lanes: int
    axi: int
    latency: int
    bytes_per_cycle: float
    clock_hz: float
    issue: int  # dispatcher cycles per frame
    barrier: int
    lat: parameters.Latencies

    @classmethod
    def of(cls, cfg: dict) -> Timing:
        r, ddr = cfg["rnn_core"], cfg["ddr"]
        clock = float(cfg["clock_mhz"]) * 1e6
        disp = cfg.get("dispatcher", {})
        return cls(r["rows"], r["cols"], r["lanes"], overlay.config.core_bus_bytes(cfg), int(ddr["burst_latency_cycles"]),
                   overlay.config.core_bytes_per_cycle(cfg), clock, int(disp.get("issue_cycles", 0)),
                   int(disp.get("barrier_cycles", 0)), parameters.Latencies.of(cfg))


def _cdiv(a, b):
    return -(-a // b)


def _rows(program) -> np.ndarray:
    p = np.asarray(program, np.uint8)
    return p.reshape(-1, isa.INSN_BYTES)


def program_iters(program, cfg: dict) -> np.ndarray:
    """Pipelined-loop iterations of every instruction (int64 [n])."""
    tm = Timing.of(cfg)
    p = _rows(program)
    op = p[:, 0].astype(np.int64)
    mem, mv, ga = p.view(_MEM).reshape(-1), p.view(_MV).reshape(-1), p.view(_GATES).reshape(-1)
    it = np.zeros(len(p), np.int64)
    m = (op == L.VF_RNN_OP_LOAD) | (op == L.VF_RNN_OP_SAVE)
    it[m] = (mem["planes"][m].astype(np.int64) * mem["rows"][m] * _cdiv(mem["row_bytes"][m].astype(np.int64), tm.axi))
    m = op == L.VF_RNN_OP_MATVEC
    it[m] = _cdiv(mv["rows"][m].astype(np.int64), tm.rows) * _cdiv(mv["cols"][m].astype(np.int64), tm.cols)
    m = op == L.VF_RNN_OP_GATES
    it[m] = _cdiv(ga["n"][m].astype(np.int64), tm.lanes)
    return it


def _cycles(p: np.ndarray, it: np.ndarray, tm: Timing) -> np.ndarray:
    op = p[:, 0].astype(np.int64)
    mem = p.view(_MEM).reshape(-1)
    cyc = np.zeros(len(p), np.int64)
    m = (op == L.VF_RNN_OP_LOAD) | (op == L.VF_RNN_OP_SAVE)
    if m.any():
        nbytes = mem["planes"].astype(np.int64) * mem["rows"] * mem["row_bytes"]
        bursts = mem["planes"].astype(np.int64) * mem["rows"] * _cdiv(_cdiv(mem["row_bytes"].astype(np.int64),
                                                                            tm.axi), tm.lat.axi_max_burst_beats)
        bw = np.ceil(nbytes / tm.bytes_per_cycle).astype(np.int64)
        lat = np.maximum(_cdiv(bursts * tm.latency, tm.lat.axi_outstanding) - tm.latency, 0)
        xfer = np.maximum(np.maximum(it, bw), lat)
        depth = np.where(op == L.VF_RNN_OP_LOAD, tm.lat.load_depth, tm.lat.save_depth)
        cyc = np.where(m, tm.lat.unit_issue_cycles + tm.latency + xfer + depth - 1, cyc)
    mv_depth = matvec_depth(tm.lat, tm.cols)
    cyc = np.where(op == L.VF_RNN_OP_MATVEC, tm.lat.unit_issue_cycles + it + mv_depth - 1, cyc)
    cyc = np.where(op == L.VF_RNN_OP_GATES, tm.lat.unit_issue_cycles + it + gates_depth(tm.lat) - 1, cyc)
    return cyc


def program_cycles(program, cfg: dict) -> np.ndarray:
    """Cycles each instruction occupies its unit (0 for markers)."""
    p = _rows(program)
    return _cycles(p, program_iters(p, cfg), Timing.of(cfg))


def _unit(op: int) -> int:
    if op == L.VF_RNN_OP_LOAD:
        return LOAD
    if op in (L.VF_RNN_OP_MATVEC, L.VF_RNN_OP_GATES):
        return COMPUTE
    if op == L.VF_RNN_OP_SAVE:
        return SAVE
    return -1


# token queues: load->compute, compute->load, compute->save, save->compute
_L2C, _C2L, _C2S, _S2C = range(4)
_POP = ((-1, _C2L), (_L2C, _S2C), (_C2S, -1))  # [unit] -> (prev queue, next queue)
_PUSH = ((-1, _L2C), (_C2L, _C2S), (_S2C, -1))


def _frame(ops, deps, cyc, fetch: int, lat: parameters.Latencies) -> int:
    """One frame (FRAME marker + body, no inner markers) on one core."""
    t0 = fetch + lat.marker_cycles
    pend = ([], [], [])
    for j in range(1, len(ops)):
        u = _unit(ops[j])
        if u >= 0:
            pend[u].append(j)
    ptr, free = [0, 0, 0], [t0, t0, t0]
    pushes: list = [[], [], [], []]
    popped = [0, 0, 0, 0]
    left = sum(map(len, pend))
    while left:
        progress = False
        for u in (SAVE, COMPUTE, LOAD):
            lst, p, fu = pend[u], ptr[u], free[u]
            while p < len(lst):
                j = lst[p]
                d = deps[j]
                ready = fu
                qs = []
                if d & isa.DEP["POP_PREV"]:
                    qs.append(_POP[u][0])
                if d & isa.DEP["POP_NEXT"]:
                    qs.append(_POP[u][1])
                if any(popped[q] >= len(pushes[q]) for q in qs):
                    break
                for q in qs:
                    ready = max(ready, pushes[q][popped[q]] + lat.token_latency)
                    popped[q] += 1
                fu = ready + cyc[j]
                if d & isa.DEP["PUSH_PREV"]:
                    pushes[_PUSH[u][0]].append(fu)
                if d & isa.DEP["PUSH_NEXT"]:
                    pushes[_PUSH[u][1]].append(fu)
                p += 1
            if p != ptr[u]:
                progress = True
                left -= p - ptr[u]
                ptr[u], free[u] = p, fu
        if left and not progress:
            raise cm.DeadlockError("deadlock: a unit waits for a token nobody pushes in its frame", -1)
    return max(t0, *free)


def frames_cycles(program, offsets, n_insns, cfg: dict) -> np.ndarray:
    """Modeled cycles of each frame alone on its bank: ``offsets`` are byte
    offsets of the frames inside ``program`` (uint8 [n, 64]), ``n_insns``
    their lengths."""
    p = _rows(program)
    tm = Timing.of(cfg)
    cyc = _cycles(p, program_iters(p, cfg), tm).tolist()
    ops = p[:, 0].astype(np.int64).tolist()
    deps = p[:, 1].astype(np.int64).tolist()
    out = np.zeros(len(offsets), np.int64)
    fetch_cache: dict = {}
    memo: dict = {}
    for i, (off, n) in enumerate(zip(np.asarray(offsets).tolist(), np.asarray(n_insns).tolist())):
        a = off // isa.INSN_BYTES
        f = fetch_cache.get(n)
        if f is None:
            f = fetch_cache[n] = cm.fetch_cycles(n, cfg)
        key = (tuple(ops[a:a + n]), tuple(deps[a:a + n]), tuple(cyc[a:a + n]))
        r = memo.get(key)
        if r is None:
            r = memo[key] = _frame(ops[a:a + n], deps[a:a + n], cyc[a:a + n], f, tm.lat)
        out[i] = r
    return out


def frames_ddr_bytes(program, offsets, n_insns, cfg: dict) -> np.ndarray:
    """DDR bytes each frame moves up to its END: its loads' and saves' bus
    beats and the fetch of its instructions."""
    p = _rows(program)
    it = program_iters(p, cfg)
    op = p[:, 0].astype(np.int64)
    moved = np.where((op == L.VF_RNN_OP_LOAD) | (op == L.VF_RNN_OP_SAVE), it, 0) * overlay.config.core_bus_bytes(cfg)
    out = np.zeros(len(offsets), np.int64)
    for i, (off, n) in enumerate(zip(np.asarray(offsets).tolist(), np.asarray(n_insns).tolist())):
        a = off // isa.INSN_BYTES
        ends = np.flatnonzero(op[a:a + n] == isa.OPCODES["END"])
        run = int(ends[0]) + 1 if ends.size else n  # the core stops at END
        out[i] = int(moved[a:a + run].sum()) + run * isa.INSN_BYTES
    return out


def frames_profile(program, offsets, n_insns, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """What the dynamic stage knows of each frame: (cycles alone [n], DDR bytes [n])."""
    return frames_cycles(program, offsets, n_insns, cfg), frames_ddr_bytes(program, offsets, n_insns, cfg)


def frame_cycles(frame, cfg: dict) -> int:
    """Modeled cycles of one frame (uint8 [n, 64], FRAME marker first)."""
    p = _rows(frame)
    return int(frames_cycles(p, [0], [len(p)], cfg)[0])


@dataclass
class PlanTiming:
    cycles: int
    seconds: float
    phase_cycles: np.ndarray
    per_step_cycles: float  # mean over timestep phases of one layer-direction step (all of its phases)


def plan_timing(compiled, plan, cfg: dict | None = None) -> PlanTiming:
    """Modeled latency of one request of ``plan`` (a RnnPlan) on its k cores."""
    cfg = cfg or compiled.config
    tm = Timing.of(cfg)
    prog = plan.program
    off0 = compiled.program_offset
    phases, cur = [], []
    for e in prog.tolist():
        off, n, slot, op = e
        if op == isa.DISPATCH_OPS["FRAME"]:
            cur.append((off - off0, n, slot))
        elif cur:
            phases.append(cur)
            cur = []
    cache: dict = {}
    out = []
    for ph in phases:
        key = tuple(x[:2] for x in ph)
        if key not in cache:
            offs, lens = [x[0] for x in ph], [x[1] for x in ph]
            c = frames_cycles(compiled.program, offs, lens, cfg)
            bank = frame_timing.group_loads(frames_ddr_bytes(compiled.program, offs, lens, cfg).sum(), c.sum(),
                                            min(plan.k, len(ph)), cfg)
            load = np.zeros(plan.k, np.int64)
            for (_, _, slot), ci in zip(ph, np.ceil(frame_timing.stretched(c, bank)).astype(np.int64).tolist()):
                load[slot] += ci + tm.issue
            cache[key] = int(load.max()) + tm.barrier
        out.append(cache[key])
    arr = np.array(out, np.int64)
    total = int(arr.sum())
    steps = [p for p in compiled.phases if p.step >= 0]
    per_step = total / max(1, len({(p.layer, p.direction, p.step) for p in steps}))
    return PlanTiming(total, total / tm.clock_hz, arr, per_step)
