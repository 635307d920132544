"""Analytic cycle model of one CNN core (emulation timing).

Three layers, each built on the one below:

* :func:`insn_iters` / :func:`program_iters` -- pipelined-loop iterations of
  an instruction, the exact formulas the C-simulation counts (the contract at
  the top of hls/cnn_core.cpp; tests compare them with the C-sim's ``iters``).
* :func:`insn_cycles` / :func:`program_cycles` -- iterations plus the fixed
  latencies around them, from the board config and the constants below.
* :func:`schedule` -- the load/compute/save overlap of a whole program,
  following the dependency tokens as the core does.

The schedule follows the core's step rule (hls/cnn_core.cpp): the decoder
fetches a step's instructions (a FRAME, its body, up to the next marker),
then the three units run the body concurrently -- in order within a unit,
ordered between units only by the token queues (an instruction pops its
tokens, runs, then pushes) -- and the step ends when every unit has drained.
FRAME therefore separates steps like BARRIER does: token queues start empty
and no unit starts the next frame before the last one finished. END (or the
end of the stream) stops the core.

One place for every assumption
------------------------------
Times are in core clock cycles (``clock_mhz`` of the board config).

From the board config:
  icp, ocp, axi_bytes         loop trip counts (the C-sim's macros)
  ddr.burst_latency_cycles    L: first data of a DDR read / write response of a
                              write, once per LOAD/SAVE/LOAD_LINEAR and once per
                              instruction fetch of a step
  ddr.bank_gbytes_per_s       bank bandwidth; per cycle B = GB/s / clock. A
                              transfer takes at least bytes / B cycles when
                              that is slower than its bus beats (the core
                              has the bank to itself; frames sharing a bank
                              are stretched by the pool's timeline, see
                              vfpga.runtime.hw.timeline)

From the board config's ``timing`` section (Vitis HLS / Xilinx primitive
numbers and our core-control choices; sources in brackets; the names are
the config keys in upper case):
  AXI_MAX_BURST_BEATS = 16    m_axi max_read/write_burst_length default [Vitis
                              HLS m_axi interface defaults, UG1399]
  AXI_OUTSTANDING = 16        m_axi num_read/write_outstanding default
                              [UG1399]: at most 16 bursts in flight, so a
                              transfer of many short bursts (a channel slice
                              with pixel_stride > channels) takes at least
                              bursts * L / 16 - L cycles after the first L
  BRAM_READ_LATENCY = 2       block RAM read with output register, as HLS
                              schedules it at 200-300 MHz [UG573]
  DSP_MAC_LATENCY = 3         DSP48E2 multiply-add with A/B, M and P
                              registers [UG579]
  ALU_LATENCY = 1             one 32-bit add, compare or select per cycle at
                              200-300 MHz; the CONV adder tree has
                              ceil(log2(icp)) such levels
  REQUANT_LATENCY = 7         acc * mult (32x32 -> 64 bit over 4 cascaded
                              DSP48E2: REQUANT_MULT_LATENCY = 5) + rounding
                              shift (ROUND_SHIFT_LATENCY = 1) + zero point and
                              clamp (CLAMP_LATENCY = 1)
  DIV64_LATENCY = 68          POOL's rdiv: HLS's pipelined 64-bit divider is
                              radix-2, one stage per quotient bit plus I/O
                              registers
  BUF_WRITE_LATENCY = 1       registered write into IBUF/WBUF/OBUF/ACC
  AXI_REGISTER_LATENCY = 1    register slice on the m_axi data channel

Per-unit pipeline depths (a pipelined loop of n iterations at II=1 takes
n + depth - 1 cycles), sums of the latencies above:
  load     AXI register, pad select (ALU), buffer write               = 3
  save     OBUF read, AXI register                                    = 3
  CONV     operand read, MAC, adder tree (dense path: ceil(log2(icp))
           levels; channel-lane path for cin_g == 1: none), ACC add,
           requantization, OBUF write               = 18 (icp 16) / 14
  POOL     operand read, max/add, divider, clamp, OBUF write         = 73
  ADD      operand read, two multiplies (parallel DSPs), sum,
           rounding shift, clamp, OBUF write                          = 9
  LUT      operand read, table read, OBUF write                       = 5
  MUL      operand read, zero-point subtract, product (DSP), times
           mult (requantization), rounding shift, clamp, OBUF write   = 14
  These assume the HLS tool flattens each loop nest into one II=1 pipeline
  (accumulator init/store as first/last-iteration predicates), so the fill is
  paid once per instruction. If the literal nest in cnn_core.cpp is not
  flattened, every (pixel, channel block) pays it again; the C-sim's beat
  counts cannot tell the two apart.

Core control (our design choices, no vendor source; also in ``timing``):
  UNIT_ISSUE_CYCLES = 4       per instruction in a unit: pop its queue (1),
                              validate fields (1), loop-bound products (1),
                              loop exit (1)
  TOKEN_LATENCY = 1           a pushed token is visible to the popping unit
                              the next cycle (registered FIFO)
  DECODE_LATENCY = 2          decoder: head check and dispatch of a step after
                              its last instruction arrived
  MARKER_CYCLES = 1           retiring FRAME (token reset), BARRIER or END
  instruction fetch           a step's instructions (FRAME .. ending marker)
                              are read once, in one transfer: L + its beats
                              (ceil(64 / axi_bytes) per instruction), bandwidth
                              bound like a load; then the decoder's token plan,
                              one cycle per fetched instruction (an upper
                              bound: one PLAN iteration per body instruction,
                              plus the last)

The fixed cost and the per-iteration cost of each instruction class, the
DDR latency L and the bank bandwidth B are the model's parameters
(:mod:`vfpga.runtime.hw.parameters`): the numbers above unless a calibration
file fitted to a board's counters (``vfpga calibrate``) replaces them.

HLS constructs
--------------
Each assumption with the construct of the HLS sources (hls/) that makes it
true. host_tests/hw/test_model_constructs.py checks that every "hls"
construct is there, and keeps every "hls-gap" -- an assumption the literal
loop nests do not make true yet -- as an expected failure.

* Iterations are the C-sim's counts: each instruction runs one beat loop
  pipelined at II=1 [hls cnn_core.cpp LOAD_BEAT_DENSE pipelined]
  [hls cnn_core.cpp LOAD_BEAT pipelined] [hls cnn_core.cpp LINEAR_BEAT pipelined]
  [hls cnn_core.cpp CONV_BEAT pipelined] [hls cnn_core.cpp DW_BEAT pipelined]
  [hls cnn_core.cpp POOL_BEAT pipelined]
  [hls include/vfpga_unit_scheduler.h LANE_BEAT pipelined] (ADD, LUT, MUL: vf_lane_loop)
  [hls cnn_core.cpp SAVE_BEAT_DENSE pipelined] [hls cnn_core.cpp SAVE_BEAT pipelined]
* ... whose lanes (axi_bytes bytes, ICP x OCP MACs, OCP channels) are all
  in one beat [hls cnn_core.cpp LOAD_LANE_DENSE unrolled] [hls cnn_core.cpp LOAD_LANE unrolled]
  [hls cnn_core.cpp LINEAR_LANE unrolled] [hls cnn_core.cpp CONV_OL unrolled]
  [hls cnn_core.cpp CONV_IL unrolled] [hls cnn_core.cpp DW_LANE unrolled]
  [hls cnn_core.cpp POOL_LANE unrolled] [hls include/vfpga_unit_scheduler.h LANE_BODY unrolled]
  [hls cnn_core.cpp SAVE_LANE_DENSE unrolled] [hls cnn_core.cpp SAVE_LANE unrolled]
* The beat reads ICP input bytes and writes OCP accumulators or outputs in
  one cycle: IBUF cyclic by ICP, ACC and OBUF by OCP, in both tops
  [hls include/vfpga_hls.h "ARRAY_PARTITION variable=ibuf dim=D cyclic factor=VF_ICP"]
  [hls dispatcher_top.cpp "VF_CNN_PARTITIONS(2, ibuf, wbuf, obuf, acc)"]; the
  ICP x OCP weights of a beat likewise: CONV weights are beat-major words of
  ICP x OCP bytes at word-aligned addresses, WBUF is reshaped by that word
  (one memory of beat-wide words)
  [hls include/vfpga_hls.h "ARRAY_RESHAPE variable=wbuf dim=D cyclic factor=VF_CONV_WORD"]
  [hls cnn_core_top.cpp "VF_CNN_PARTITIONS(1, ibuf, wbuf, obuf, acc)"],
  and a dense beat reads its word with constant bank offsets
  [hls cnn_core.cpp "const int8_t *wb = k.w + wi * VF_CONV_WORD;"]
  [hls cnn_core.cpp "vf_mul2(x[i], wb[(o + 1) * VF_ICP + i], wb[o * VF_ICP + i], &p1, &p0);"], a channel-lane
  beat its lane row of one word [hls cnn_core.cpp DW_PICK unrolled]
  [hls cnn_core.cpp "wl[b % VF_OCP] = ww[b];"]
* The adder tree's ceil(log2(icp)) levels: the unrolled sums of CONV_IL
  [hls cnn_core.cpp "s0 += o < nO ? p0 : 0;"]; two lanes' products come
  from one 27 x 8 multiply (one DSP48E2 for two MACs)
  [hls include/vfpga_mac.h vf_mul2] [hls cnn_core.cpp CONV_OL unrolled]; the
  split of its product into the two lanes is adder logic the model counts
  in neither DSP_MAC_LATENCY nor the tree (one more pipeline stage per
  instruction's fill at most); REQUANT_LATENCY:
  vf_requant [hls cnn_core.cpp vf_requant]; DIV64_LATENCY: POOL's vf_rdiv
  [hls cnn_core.cpp vf_rdiv]
* The pipeline fill is paid once per instruction (each nest one flattened
  pipeline, a block's lane loads and stores predicates of its first and last
  beat) [hls cnn_core.cpp CONV_STORE unrolled] [hls cnn_core.cpp DW_STORE unrolled]
  [hls cnn_core.cpp POOL_STORE unrolled]
* LOAD and SAVE move one bus word per beat in bursts, a dense row as one run
  [hls cnn_core.cpp "vf_seg_read_beat(ddr, win, run + (lo - left), word + (lo - k0)"]
  through m_axi ports whose burst length, outstanding transactions, latency
  and width are AXI_MAX_BURST_BEATS, AXI_OUTSTANDING, L and axi_bytes
  [hls include/vfpga_hls.h "max_read_burst_length=VF_AXI_MAX_BURST_BEATS"]
  [hls include/vfpga_hls.h "num_read_outstanding=VF_AXI_OUTSTANDING"]
  [hls include/vfpga_hls.h "latency=VF_DDR_LATENCY"]
  [hls include/vfpga_hls.h "max_widen_bitwidth=VF_DDR_PORT_BITS"]
* Every core of the config exists at once: its memories, as the top's
  pragmas shape them, and its MAC array, two int8 multiplies per DSP48
  [hls include/vfpga_mac.h "#define VF_MACS_PER_DSP 2"], fit the part
  (vfpga.overlay.resources; ``python -m vfpga.overlay.resources``): the
  weight buffers are one memory of beat-wide words each
  [hls include/vfpga_hls.h "ARRAY_RESHAPE variable=wbuf dim=D cyclic factor=VF_CONV_WORD"]
  [hls include/vfpga_hls.h "ARRAY_RESHAPE variable=wbuf dim=D cyclic factor=VF_RNN_TILE_BYTES"],
  which LOAD_LINEAR and RNN_LOAD write a whole word at a time (a beat lies
  inside one word; LOAD_LINEAR merges the run's first and last word, read
  once before its beats) [hls cnn_core.cpp LINEAR_WORD unrolled]
  [hls cnn_core.cpp LINEAR_MERGE unrolled] [hls rnn_core.cpp MEM_TILE unrolled];
  the big memories go to UltraRAM where the board config's storage.uram
  says [hls include/vfpga_hls.h "type=ram_t2p impl=uram"]
  [hls dispatcher_top.cpp "VF_URAM_IF(VF_URAM_RNN_WBUF, rnn_wbuf)"]
  [hls dispatcher_top.cpp "VF_URAM_IF(VF_URAM_RNN_ACT, rnn_act)"]; a core
  keeps one step instruction store, its units' queues carry 16-bit slots
  [hls include/vfpga_unit_scheduler.h "VF_URAM_IF(VF_STEP_STORE_URAM, store)"]
  [hls include/vfpga_unit_scheduler.h "vf_stream<uint16_t, K::FRAME_INSNS> queue[3];"]
* B is a bank's: one m_axi bundle per DDR bank on the dispatcher top
  [hls include/vfpga_hls.h "bundle=bank##b"] [hls dispatcher_top.cpp "VF_DDR_PORT(mem, 0, VF_DREG_MEM)"],
  a frame on the port of its segment's bank [hls include/vfpga_ddr.h "vf_ddr_read(d, seg_win + a, dst, n);"],
  each of the core's accesses decoding its bank
  [hls rnn_core.cpp "vf_seg_read_beat(ddr, win, d + bt * VF_AXI_BYTES, word, n)"] [hls include/vfpga_unit_scheduler.h "vf_seg_read(ddr, seg_win, insn_offset"] [hls cnn_core.cpp "vf_seg_write_beat(ddr, win, drow + bt * VF_AXI_BYTES"];
  ``ddr.core_ports`` ports of one core, word-interleaved: its tenants'
  segments striped one bus word per bank [hls include/vfpga_ddr.h vf_seg_window]
  [hls dispatcher.cpp "s.striped = VF_SEG_PARTS > 1 && (r.control & VF_TENANT_STRIPED) != 0;"],
  every beat of LOAD and SAVE a word on each port at once
  [hls include/vfpga_ddr.h SEG_READ_PORT unrolled] [hls include/vfpga_ddr.h SEG_WRITE_PORT unrolled]
  [hls include/vfpga_ddr.h "memcpy(dst + (lo - a), d.port[p] + vf_seg_window(d, seg_win, lo), hi - lo);"]
  [hls cnn_core.cpp "vf_seg_read_beat(ddr, win, l.dram_addr + b * VF_AXI_BYTES"]
  [hls rnn_core.cpp "vf_seg_write_beat(ddr, win, d + bt * VF_AXI_BYTES, word, n)"]
* The units overlap, ordered only by their tokens [hls include/vfpga_unit_scheduler.h vf_tokens_ready]
  as concurrent processes of the step's DATAFLOW region, joined by token
  streams [hls include/vfpga_unit_scheduler.h "VF_PRAGMA(HLS DATAFLOW)"]
  [hls include/vfpga_unit_scheduler.h "vf_stream<uint8_t, K::FRAME_INSNS> l2c, c2l, c2s, s2c;"]
* The instruction fetch is one transfer per step: the decoder reads each
  instruction once, whole, at consecutive addresses, and the units run from
  its queues [hls include/vfpga_unit_scheduler.h FETCH pipelined]
  [hls include/vfpga_unit_scheduler.h "vf_seg_read(ddr, seg_win, insn_offset + (uint64_t)idx * VF_INSN_BYTES, insn.raw, VF_INSN_BYTES);"]
  into the core's step instruction store, from which the units take what
  their slot queues name [hls include/vfpga_unit_scheduler.h "store[slot] = insn;"]
  [hls include/vfpga_unit_scheduler.h "c.cur.insn = store[slot];"];
  the token plan [hls include/vfpga_unit_scheduler.h PLAN pipelined];
  DECODE_LATENCY and UNIT_ISSUE_CYCLES: the decoder's dispatch and each
  unit's issue [hls include/vfpga_unit_scheduler.h vf_decode_process]
  [hls include/vfpga_unit_scheduler.h UNIT_QUEUE]
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.hw import parameters

UNITS = ("load", "compute", "save")
LOAD, COMPUTE, SAVE = 0, 1, 2

_OP = isa.OPCODES
_DEP = isa.DEP
_SAT = 1 << 62  # saturation bound of vectorised products (fields of a valid program stay far below)


class ScheduleError(ValueError):
    """A program the core would fault on (bad opcode or deps bits)."""

    def __init__(self, message: str, insn: int):
        super().__init__(message)
        self.insn = insn


class DeadlockError(ScheduleError):
    """A unit waits for a token nobody will push (the core's VF_FAULT_DEADLOCK)."""


# ---------------------------------------------------------------- geometry

@dataclass(frozen=True)
class _Geo:
    icp: int
    ocp: int
    axi_bytes: int


def _geometry(g) -> _Geo:
    """icp/ocp/axi_bytes from a board config, a mapping with those keys, or
    an object with those attributes (cffi vf_cnn_geometry_t, lower.Geometry)."""
    if isinstance(g, _Geo):
        return g
    if isinstance(g, dict):
        if "cnn_core" in g:
            return _Geo(int(g["cnn_core"]["icp"]), int(g["cnn_core"]["ocp"]), overlay.config.core_bus_bytes(g))
        return _Geo(int(g["icp"]), int(g["ocp"]), int(g["axi_bytes"]))
    return _Geo(int(g.icp), int(g.ocp), int(g.axi_bytes))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------- iterations

def insn_iters(insn: dict, geometry) -> int:
    """Pipelined-loop iterations of one decoded instruction (a dict from
    vfpga.driver.isa.decode), exactly as the C-sim counts them."""
    g = _geometry(geometry)
    op = insn["opcode"]
    if op in ("LOAD_TILE", "SAVE"):
        if insn["pixel_stride"] == insn["channels"] and insn.get("step_x", 0) <= 1:
            return insn["tile_h"] * _cdiv(insn["tile_w"] * insn["channels"], g.axi_bytes)
        return insn["tile_h"] * insn["tile_w"] * _cdiv(insn["channels"], g.axi_bytes)
    if op == "LOAD_LINEAR":
        return _cdiv(insn["nbytes"], g.axi_bytes)
    if op == "CONV":
        taps = insn["out_h"] * insn["out_w"] * insn["kh"] * insn["kw"]
        if insn["cin_g"] == 1:
            return taps * _cdiv(insn["groups"] * insn["cout_g"], g.ocp)
        return insn["groups"] * taps * _cdiv(insn["cin_g"], g.icp) * _cdiv(insn["cout_g"], g.ocp)
    if op == "POOL":
        return insn["out_h"] * insn["out_w"] * insn["kh"] * insn["kw"] * _cdiv(insn["channels"], g.ocp)
    if op in ("ADD", "LUT"):
        return _cdiv(insn["length"], g.ocp)
    if op == "MUL":
        return insn["pixels"] * _cdiv(insn["channels"], g.ocp)
    if op in ("NOP", "FRAME", "BARRIER", "END"):
        return 0
    raise ValueError(f"no iteration count for opcode {op!r}")


def _as_program(program) -> np.ndarray:
    if isinstance(program, (bytes, bytearray, memoryview)):
        program = np.frombuffer(program, dtype=np.uint8)
    prog = np.ascontiguousarray(program, dtype=np.uint8)
    if prog.size % isa.INSN_BYTES:
        raise ValueError(f"a program is a whole number of {isa.INSN_BYTES}-byte instructions, got {prog.size} bytes")
    return prog.reshape(-1, isa.INSN_BYTES)


def _fields(prog: np.ndarray, fmt: str) -> np.ndarray:
    return prog.view(isa.FORMATS[fmt]).reshape(-1)


def _i64(a) -> np.ndarray:
    return np.asarray(a).astype(np.int64)


def _smul(*xs) -> np.ndarray:
    """Product of non-negative int64 arrays, saturated at 2**62."""
    out = xs[0]
    with np.errstate(over="ignore"):
        for x in xs[1:]:
            big = (x != 0) & (out > _SAT // np.maximum(x, 1))
            out = np.where(big, _SAT, np.minimum(out * x, _SAT))
    return out


def _vcdiv(a, b):
    return -(-a // b)


@dataclass
class _Decoded:
    """Per-instruction quantities of a whole program, vectorised."""

    op: np.ndarray
    iters: np.ndarray
    ddr_bytes: np.ndarray  # DDR bytes moved (LOAD_TILE padding excluded)
    bursts: np.ndarray  # AXI bursts issued


def _decode(prog: np.ndarray, g: _Geo, burst_beats: int = 1) -> _Decoded:
    """``burst_beats``: the m_axi burst length (bursts only count for cycles)."""
    n = prog.shape[0]
    op = prog[:, 0].astype(np.int64)
    iters = np.zeros(n, np.int64)
    ddr = np.zeros(n, np.int64)
    bursts = np.zeros(n, np.int64)
    axi = g.axi_bytes

    sel = np.flatnonzero((op == _OP["LOAD_TILE"]) | (op == _OP["SAVE"]))
    if sel.size:
        m = _fields(prog, "mem")[sel]
        th, tw, ch = _i64(m["tile_h"]), _i64(m["tile_w"]), _i64(m["channels"])
        dense = (_i64(m["pixel_stride"]) == ch) & (_i64(m["step_x"]) <= 1)
        iters[sel] = np.where(dense, _smul(th, _vcdiv(tw * ch, axi)), _smul(th, tw, _vcdiv(ch, axi)))
        y0, x0 = _i64(m["y0"]), _i64(m["x0"])
        rows = np.clip(np.minimum(y0 + th, _i64(m["height"])) - np.maximum(y0, 0), 0, None)
        cols = np.clip(np.minimum(x0 + tw, _i64(m["width"])) - np.maximum(x0, 0), 0, None)
        ddr[sel] = rows * cols * ch
        row_bursts = _vcdiv(_vcdiv(cols * ch, axi), burst_beats)
        pix_bursts = cols * _vcdiv(_vcdiv(ch, axi), burst_beats)
        bursts[sel] = rows * np.where(dense, row_bursts, pix_bursts)

    sel = np.flatnonzero(op == _OP["LOAD_LINEAR"])
    if sel.size:
        nbytes = _i64(_fields(prog, "linear")[sel]["nbytes"])
        iters[sel] = _vcdiv(nbytes, axi)
        ddr[sel] = nbytes
        bursts[sel] = _vcdiv(iters[sel], burst_beats)

    sel = np.flatnonzero(op == _OP["CONV"])
    if sel.size:
        c = _fields(prog, "conv")[sel]
        taps = _smul(_i64(c["out_h"]), _i64(c["out_w"]), _i64(c["kh"]), _i64(c["kw"]))
        groups, cin_g, cout_g = _i64(c["groups"]), _i64(c["cin_g"]), _i64(c["cout_g"])
        lanes = _smul(taps, _vcdiv(groups * cout_g, g.ocp))
        dense = _smul(groups, taps, _vcdiv(cin_g, g.icp), _vcdiv(cout_g, g.ocp))
        iters[sel] = np.where(cin_g == 1, lanes, dense)

    sel = np.flatnonzero(op == _OP["POOL"])
    if sel.size:
        p = _fields(prog, "pool")[sel]
        iters[sel] = _smul(_i64(p["out_h"]), _i64(p["out_w"]), _i64(p["kh"]), _i64(p["kw"]),
                           _vcdiv(_i64(p["channels"]), g.ocp))

    sel = np.flatnonzero(op == _OP["ADD"])
    if sel.size:
        iters[sel] = _vcdiv(_i64(_fields(prog, "add")[sel]["length"]), g.ocp)

    sel = np.flatnonzero(op == _OP["LUT"])
    if sel.size:
        iters[sel] = _vcdiv(_i64(_fields(prog, "lut")[sel]["length"]), g.ocp)

    sel = np.flatnonzero(op == _OP["MUL"])
    if sel.size:
        u = _fields(prog, "mul")[sel]
        iters[sel] = _smul(_i64(u["pixels"]), _vcdiv(_i64(u["channels"]), g.ocp))
    return _Decoded(op, iters, ddr, bursts)


def ddr_bytes(program, geometry) -> int:
    """Bytes a program moves over DDR up to its END (the core stops there):
    its loads and saves (padding excluded) and the fetch of its instructions."""
    prog = _as_program(program)
    ends = np.flatnonzero(prog[:, 0] == _OP["END"])
    if ends.size:
        prog = prog[:int(ends[0]) + 1]
    return int(_decode(prog, _geometry(geometry)).ddr_bytes.sum()) + prog.shape[0] * isa.INSN_BYTES


def program_iters(program, geometry) -> np.ndarray:
    """insn_iters of every instruction of a program (uint8 [n, 64] or bytes),
    vectorised; int64 [n]. Unknown opcodes count 0 (the core faults on them)."""
    return _decode(_as_program(program), _geometry(geometry)).iters


# ---------------------------------------------------------------- cycles

@dataclass(frozen=True)
class _Timing:
    geo: _Geo
    clock_hz: float
    lat: parameters.Latencies
    par: parameters.Parameters  # per class fixed / per-iteration cycles, DDR latency and bandwidth

    @property
    def latency(self) -> float:  # DDR first-data latency, cycles
        return self.par.latency

    @property
    def bytes_per_cycle(self) -> float:  # the core's DDR banks
        return self.par.bytes_per_cycle


def default_parameters(config) -> parameters.Parameters:
    """The model's parameters from the board config alone: per class, fixed
    = unit_issue_cycles + pipeline depth - 1 and per_iter = 1; the DDR's
    burst latency and bandwidth."""
    lat = parameters.Latencies.of(config)
    return _default_parameters(lat, int(config["cnn_core"]["icp"]), float(config["ddr"]["burst_latency_cycles"]),
                               overlay.config.core_bytes_per_cycle(config))


@functools.lru_cache(maxsize=64)
def _default_parameters(lat: parameters.Latencies, icp: int, latency: float, bpc: float) -> parameters.Parameters:
    depth = {"LOAD": lat.load_depth, "SAVE": lat.save_depth, "CONV": lat.conv_depth(icp, False),
             "CONV_LANES": lat.conv_depth(icp, True), "POOL": lat.pool_depth, "ADD": lat.add_depth,
             "LUT": lat.lut_depth, "MUL": lat.mul_depth}
    fixed = tuple(float(lat.unit_issue_cycles + depth[c] - 1) for c in parameters.CLASSES)
    return parameters.Parameters(fixed, (1.0,) * len(parameters.CLASSES), latency, bpc)


def model_parameters(config) -> parameters.Parameters:
    """The parameters in force: a calibration file's (vfpga.runtime.hw.parameters), else the config's."""
    return parameters.load(config) or default_parameters(config)


def _timing(config, params: parameters.Parameters | None = None) -> _Timing:
    clock = float(config["clock_mhz"]) * 1e6
    return _Timing(_geometry(config), clock, parameters.Latencies.of(config),
                   params if params is not None else model_parameters(config))


def _transfer_cycles(beats, nbytes, bursts, tm: _Timing, per_beat=1.0, exact: bool = False):
    """Cycles of a DDR transfer after its first latency: bus beats, bank
    bandwidth or the outstanding-burst limit, whichever is slowest (each
    rounded up to whole cycles, unless ``exact``)."""
    bw = nbytes / tm.bytes_per_cycle
    # axi_outstanding bursts per latency; the first wave's latency is paid separately
    lat = np.maximum(bursts * tm.latency / tm.lat.axi_outstanding - tm.latency, 0.0)
    beat = per_beat * beats
    if not exact:
        bw, lat, beat = np.ceil(bw), np.ceil(lat), np.ceil(beat)
    return np.maximum(np.maximum(beat, bw), lat)


# instruction class of each opcode (parameters.CLASSES index; CONV: CONV_LANES when cin_g == 1)
_CLASS_OF = np.full(256, -1, np.int64)
for _name, _cls in (("LOAD_TILE", "LOAD"), ("LOAD_LINEAR", "LOAD"), ("SAVE", "SAVE"), ("CONV", "CONV"),
                    ("POOL", "POOL"), ("ADD", "ADD"), ("LUT", "LUT"), ("MUL", "MUL")):
    _CLASS_OF[_OP[_name]] = parameters.CLASSES.index(_cls)


def insn_classes(program) -> np.ndarray:
    """Class index (parameters.CLASSES) of every instruction, -1 for markers and NOP."""
    prog = _as_program(program)
    cls = _CLASS_OF[prog[:, 0]]
    lanes = (prog[:, 0] == _OP["CONV"]) & (_fields(prog, "conv")["cin_g"] == 1)
    return np.where(lanes, parameters.CLASSES.index("CONV_LANES"), cls)


def _exact_cycles(dec: _Decoded, prog: np.ndarray, tm: _Timing, exact: bool = True) -> np.ndarray:
    """Cycles each instruction occupies its unit, before rounding up (float;
    the transfer's terms rounded unless ``exact``)."""
    cls = insn_classes(prog)
    known = cls >= 0
    fixed = np.where(known, np.take(tm.par.fixed, np.maximum(cls, 0)), 0.0)
    per_iter = np.where(known, np.take(tm.par.per_iter, np.maximum(cls, 0)), 0.0)
    cyc = fixed + per_iter * dec.iters
    mem = (cls == parameters.CLASSES.index("LOAD")) | (cls == parameters.CLASSES.index("SAVE"))
    if mem.any():
        xfer = _transfer_cycles(dec.iters, dec.ddr_bytes, dec.bursts, tm, per_iter, exact)
        first = np.where(dec.ddr_bytes > 0, tm.latency, 0.0)  # an all-padding tile never touches DDR
        cyc = np.where(mem, fixed + first + xfer, cyc)
    return cyc


def _cycles(dec: _Decoded, prog: np.ndarray, tm: _Timing) -> np.ndarray:
    return np.ceil(_exact_cycles(dec, prog, tm, exact=False)).astype(np.int64)


def program_cycles(program, config, params: parameters.Parameters | None = None) -> np.ndarray:
    """Cycles each instruction occupies its unit (0 for markers and NOP,
    which the decoder retires), int64 [n]."""
    prog = _as_program(program)
    tm = _timing(config, params)
    return _cycles(_decode(prog, tm.geo, tm.lat.axi_max_burst_beats), prog, tm)


def program_cycles_exact(program, config, params: parameters.Parameters) -> np.ndarray:
    """:func:`program_cycles` before rounding up (float [n]): what the
    calibration fits, its parameters varying continuously."""
    prog = _as_program(program)
    tm = _timing(config, params)
    return _exact_cycles(_decode(prog, tm.geo, tm.lat.axi_max_burst_beats), prog, tm)


def insn_cycles(insn: dict, config) -> int:
    """Cycles one decoded instruction (isa.decode dict) occupies its unit."""
    f = {k: v for k, v in insn.items() if k not in ("opcode", "deps", "flags", "tag")}
    raw = isa.encode(insn["opcode"], deps=insn.get("deps", 0), flags=insn.get("flags", 0),
                     tag=insn.get("tag", 0), **f)
    return int(program_cycles(raw, config)[0])


def _fetch_exact(n_insns: int, tm: _Timing, exact: bool = True) -> float:
    beats = n_insns * _cdiv(isa.INSN_BYTES, tm.geo.axi_bytes)
    xfer = _transfer_cycles(np.int64(beats), np.int64(n_insns * isa.INSN_BYTES),
                            np.int64(_cdiv(beats, tm.lat.axi_max_burst_beats)), tm, exact=exact)
    # + the decoder's token PLAN: at most one iteration per fetched instruction
    return tm.latency + float(xfer) + n_insns + tm.lat.decode_latency


def _fetch(n_insns: int, tm: _Timing) -> int:
    return int(np.ceil(_fetch_exact(n_insns, tm, exact=False)))


def fetch_cycles(n_insns: int, config) -> int:
    """Decoder time to fetch and check the n instructions of one step."""
    return _fetch(n_insns, _timing(config))


def fetch_cycles_exact(n_insns: int, config, params: parameters.Parameters) -> float:
    """:func:`fetch_cycles` before rounding up, with ``params``."""
    return _fetch_exact(n_insns, _timing(config, params))


def seconds(cycles, config) -> float:
    """Cycles of the core clock in seconds."""
    return float(cycles) / (float(config["clock_mhz"]) * 1e6)


# ---------------------------------------------------------------- schedule

# Token queues, indexed as the core's vf_tokens_t: load->compute, compute->load,
# compute->save, save->compute.
_L2C, _C2L, _C2S, _S2C = 0, 1, 2, 3
# [unit][prev/next] -> queue it pops / pushes (-1: the unit has no such neighbour)
_POP = ((-1, _C2L), (_L2C, _S2C), (_C2S, -1))
_PUSH = ((-1, _L2C), (_C2L, _C2S), (_S2C, -1))
_UNIT_OF = np.full(256, -1, np.int64)
_UNIT_OF[[_OP["LOAD_TILE"], _OP["LOAD_LINEAR"]]] = LOAD
_UNIT_OF[[_OP["CONV"], _OP["POOL"], _OP["ADD"], _OP["LUT"], _OP["MUL"]]] = COMPUTE
_UNIT_OF[_OP["SAVE"]] = SAVE
_ALLOWED = {LOAD: _DEP["POP_NEXT"] | _DEP["PUSH_NEXT"], SAVE: _DEP["POP_PREV"] | _DEP["PUSH_PREV"],
            COMPUTE: _DEP["POP_PREV"] | _DEP["POP_NEXT"] | _DEP["PUSH_PREV"] | _DEP["PUSH_NEXT"]}
_MARKERS = (_OP["FRAME"], _OP["BARRIER"], _OP["END"])
# Head of every instruction slot (the head struct padded to one instruction).
_HEAD_SLOT = np.dtype({"names": ["head"], "formats": [isa.HEAD], "offsets": [0], "itemsize": isa.INSN_BYTES})


@dataclass
class Schedule:
    """Timing of one program on one core.

    total_cycles: from the first fetch to the retirement of END (or the last
    step). busy: cycles each unit spent executing instructions. start/end:
    per instruction (unit start and finish; markers retire at start == end;
    -1 for instructions after END). steps: one row per step -- first
    instruction, whether it began with FRAME, the FRAME's frame_id and the
    step's tag (head.tag of its first instruction, the layer for the
    compiler's frames), start cycle and duration. layer_cycles: step
    durations summed per tag."""

    total_cycles: int
    busy: dict[str, int]
    start: np.ndarray
    end: np.ndarray
    steps: np.ndarray
    layer_cycles: dict[int, int] = field(default_factory=dict)

    @property
    def frame_cycles(self) -> np.ndarray:
        """Duration of every frame (step begun by FRAME), in program order."""
        return self.steps["cycles"][self.steps["frame"]]

    def utilisation(self) -> dict[str, float]:
        t = max(self.total_cycles, 1)
        return {u: b / t for u, b in self.busy.items()}


STEP_DTYPE = np.dtype([("insn", np.int64), ("frame", np.bool_), ("frame_id", np.int64), ("tag", np.int64),
                       ("start", np.int64), ("cycles", np.int64)])


def _describe(op: int, idx: int, tag: int) -> str:
    return f"instruction {idx} ({isa.OPCODE_NAMES.get(op, f'opcode {op}')}, tag {tag})"


def schedule(program, config, params: parameters.Parameters | None = None) -> Schedule:
    """Overlap of the load, compute and save units of one core over a whole
    program (uint8 [n, 64] or bytes), following its dependency tokens.
    Raises DeadlockError (naming the lowest blocked instruction, as the core
    reports it) or ScheduleError for a bad opcode or deps bits."""
    prog = _as_program(program)
    tm = _timing(config, params)
    n = prog.shape[0]
    dec = _decode(prog, tm.geo, tm.lat.axi_max_burst_beats)
    op = dec.op
    heads = prog.view(_HEAD_SLOT).reshape(-1)["head"]
    deps = heads["deps"].astype(np.int64)
    tags = heads["tag"].astype(np.int64)

    # The core stops at END: nothing after it is fetched or checked.
    ends = np.flatnonzero(op == _OP["END"])
    n_run = int(ends[0]) + 1 if ends.size else n
    bad = np.flatnonzero(op[:n_run] >= isa.lib.VF_OP_COUNT)
    if bad.size:
        i = int(bad[0])
        raise ScheduleError(f"{_describe(int(op[i]), i, int(tags[i]))}: unknown opcode", i)
    unit = _UNIT_OF[op]
    allowed = np.zeros(n, np.int64)
    for u, mask in _ALLOWED.items():
        allowed[unit == u] = mask
    bad = np.flatnonzero(((deps & ~allowed) != 0)[:n_run] & (unit[:n_run] >= 0))
    if bad.size:
        i = int(bad[0])
        raise ScheduleError(f"{_describe(int(op[i]), i, int(tags[i]))}: deps bits {int(deps[i]):#x} "
                            f"not allowed for its unit", i)

    cyc = _cycles(dec, prog, tm)
    frame_ids = _fields(prog, "marker")["frame_id"].astype(np.int64)
    # per instruction: queue popped for PREV / NEXT, queue pushed for PREV / NEXT (-1: none)
    pop_p = np.full(n, -1, np.int64)
    pop_n = np.full(n, -1, np.int64)
    push_p = np.full(n, -1, np.int64)
    push_n = np.full(n, -1, np.int64)
    for u in (LOAD, COMPUTE, SAVE):
        su = unit == u
        pop_p[su & ((deps & _DEP["POP_PREV"]) != 0)] = _POP[u][0]
        pop_n[su & ((deps & _DEP["POP_NEXT"]) != 0)] = _POP[u][1]
        push_p[su & ((deps & _DEP["PUSH_PREV"]) != 0)] = _PUSH[u][0]
        push_n[su & ((deps & _DEP["PUSH_NEXT"]) != 0)] = _PUSH[u][1]

    op_l, unit_l, cyc_l = op.tolist(), unit.tolist(), cyc.tolist()
    pop_pl, pop_nl, push_pl, push_nl = pop_p.tolist(), pop_n.tolist(), push_p.tolist(), push_n.tolist()
    start = [-1] * n
    end = [-1] * n
    busy = [0, 0, 0]
    markers = np.flatnonzero(np.isin(op[:n_run], _MARKERS)).tolist() + [n_run]
    mk = 0
    steps = []
    frame_op = _OP["FRAME"]
    fetch_cache: dict[int, int] = {}
    token = tm.lat.token_latency

    t = 0
    i = 0
    while i < n_run:
        first, t_step = i, t
        is_frame = op_l[i] == frame_op
        if is_frame:
            start[i] = end[i] = t
            i += 1
        while markers[mk] < i:
            mk += 1
        stop = markers[mk]  # the ending marker (== n_run: stream exhausted)
        fetched = stop - first + (1 if stop < n_run else 0)
        f = fetch_cache.get(fetched)
        if f is None:
            f = fetch_cache[fetched] = _fetch(fetched, tm)
        t0 = t + f + (tm.lat.marker_cycles if is_frame else 0)

        # ---- the three units over the body [i, stop) ----
        pend = ([], [], [])
        for j in range(i, stop):
            u = unit_l[j]
            if u >= 0:
                pend[u].append(j)
            else:  # NOP: retired by the decoder
                start[j] = end[j] = t0
        ptr = [0, 0, 0]
        free = [t0, t0, t0]
        pushes = ([], [], [], [])
        popped = [0, 0, 0, 0]
        left = len(pend[0]) + len(pend[1]) + len(pend[2])
        while left:
            progress = False
            for u in (SAVE, COMPUTE, LOAD):  # the C-sim's round order; timing does not depend on it
                lst = pend[u]
                p = ptr[u]
                fu = free[u]
                while p < len(lst):
                    j = lst[p]
                    ready = fu
                    qa = pop_pl[j]
                    qb = pop_nl[j]
                    if qa >= 0:
                        k = popped[qa]
                        if k >= len(pushes[qa]):
                            break
                        tk = pushes[qa][k] + token
                        if tk > ready:
                            ready = tk
                    if qb >= 0:
                        k = popped[qb]
                        if k >= len(pushes[qb]):
                            break
                        tk = pushes[qb][k] + token
                        if tk > ready:
                            ready = tk
                    if qa >= 0:
                        popped[qa] += 1
                    if qb >= 0:
                        popped[qb] += 1
                    fu = ready + cyc_l[j]
                    start[j] = ready
                    end[j] = fu
                    busy[u] += cyc_l[j]
                    if push_pl[j] >= 0:
                        pushes[push_pl[j]].append(fu)
                    if push_nl[j] >= 0:
                        pushes[push_nl[j]].append(fu)
                    p += 1
                if p != ptr[u]:
                    progress = True
                    left -= p - ptr[u]
                    ptr[u] = p
                    free[u] = fu
            if left and not progress:
                j = min(pend[u][ptr[u]] for u in range(3) if ptr[u] < len(pend[u]))
                raise DeadlockError(f"deadlock: {_describe(op_l[j], j, int(tags[j]))} waits for a token "
                                    f"nobody pushes in its step", j)
        t = max(t0, free[0], free[1], free[2])

        # ---- the ending marker ----
        if stop < n_run and op_l[stop] != frame_op:  # BARRIER / END: consumed after the drain
            t += tm.lat.marker_cycles
            start[stop] = end[stop] = t
            i = stop + 1
        else:
            i = stop  # FRAME starts the next step; n_run: stream exhausted
        steps.append((first, is_frame, frame_ids[first] if is_frame else -1, tags[first], t_step, t - t_step))

    st = np.array(steps, dtype=STEP_DTYPE)
    layer_cycles: dict[int, int] = {}
    if st.size:
        uniq, inv = np.unique(st["tag"], return_inverse=True)
        sums = np.zeros(uniq.size, np.int64)
        np.add.at(sums, inv, st["cycles"])
        layer_cycles = {int(k): int(v) for k, v in zip(uniq, sums)}
    return Schedule(int(t), dict(zip(UNITS, busy)), np.array(start, np.int64), np.array(end, np.int64),
                    st, layer_cycles)
