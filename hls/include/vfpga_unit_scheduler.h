/*
 * The unit scheduler of a vfpga core (Vitis HLS C++14), written once for the
 * CNN core (hls/cnn_core.cpp) and the RNN core (hls/rnn_core.cpp): the
 * decoder (level-2 dispatch), the LOAD / COMPUTE / SAVE processes, their
 * instruction queues and dependency-token streams, fault recording and the
 * counters. A core instantiates
 * vf_unit_step<Kind>() with its kind (below); its units stay in its own file.
 * Also the helpers both cores' units share: an instruction's outcome, bounds
 * and saturating arithmetic, the int8 dot-product lanes of the C-sim bodies.
 * C++ only (the C entry points are in vfpga_cnn_core.h / vfpga_rnn_core.h).
 *
 * ---- Step rule --------------------------------------------------------------
 * A step executes instructions starting at state->pc:
 *  - if the instruction at pc is a FRAME marker it starts the frame: it is
 *    retired, counters->frames is incremented and the token queues are empty;
 *  - the following non-marker instructions form the step's body;
 *  - the body ends at the next marker or at insn_count:
 *      FRAME    : not consumed (it starts the next step); returns VF_STEP_FRAME
 *      BARRIER  : consumed after every unit has drained; returns VF_STEP_FRAME,
 *                 or VF_STEP_END when it was the last instruction of the stream
 *      END      : consumed; running = 0; returns VF_STEP_END
 *      no marker: the stream is exhausted; running = 0; returns VF_STEP_END.
 * Every step retires at least one instruction, so the loop "step until not
 * VF_STEP_FRAME" always terminates. The token streams live inside one step
 * (vf_core_state_t has no room for them): they are empty when a step starts
 * and whatever is left in them when it ends is drained, so tokens never
 * cross a FRAME (nor a BARRIER). Markers and NOP ignore their deps/flags and
 * are retired by the decoder with 0 iterations.
 * A state with fault != 0 returns VF_STEP_FAULT at once. A state with
 * running == 0 and pc != 0 (stopped at END or at the end of the stream)
 * returns VF_STEP_END at once; running == 0 with pc == 0 (a zeroed, fresh
 * state) starts the program. Missing buffers are VF_FAULT_BUFFER at pc.
 *
 * ---- Decode, dispatch and the unit processes -------------------------------
 * A step is a DATAFLOW region (vf_step_region) of four processes joined only
 * by streams: the decoder and the LOAD, COMPUTE and SAVE units.
 * The decoder (vf_decode_process) reads the step's instructions once, each
 * whole and at consecutive addresses (one m_axi burst: its FETCH loop), from
 * pc to the ending marker, checking each as it arrives: the fetch against
 * seg_limit (VF_FAULT_FETCH), the opcode (the kind's opcode_ok, else
 * VF_FAULT_OPCODE), the body's length against the core's instruction queues
 * (Kind::FRAME_INSNS, the board config's frame_insns: a body of more
 * instructions is VF_FAULT_FRAME_SIZE at the first one that does not fit)
 * and the deps bits the opcode's unit may use (load: only *_NEXT, save:
 * only *_PREV, compute: all four; otherwise VF_FAULT_FIELD). It writes each
 * body instruction into the step's instruction store (one per core,
 * FRAME_INSNS instructions, slot = position in the body) and queues its
 * slot for its unit (the kind's unit_of) in program order; a unit reads
 * the instruction from the store when it takes the slot. A
 * decode fault stops the core before any instruction of the step runs.
 * The decoder then plans the tokens (its PLAN loop): it replays the units'
 * token exchange on the deps bits alone -- tokens are counters, not data,
 * and in-order units that wait only for counters end in the same state
 * whatever their schedule -- and tells each unit how many of its queued
 * instructions will get their tokens and how many leftover tokens to drain.
 * A token program that cannot finish is VF_FAULT_DEADLOCK at the lowest
 * blocked instruction, after the units ran everything before it; no unit
 * waits forever.
 * The units (vf_unit_process) run their queues as the concurrent hardware
 * units do: in order within a unit, ordered between units only by the token
 * streams (load->compute, compute->load, compute->save, save->compute). An
 * instruction pops its tokens (waiting while one is missing), executes, then
 * pushes its tokens. The queues and token streams hold FRAME_INSNS entries,
 * so no write ever waits.
 * The C-simulation runs the decoder, then rounds over the units in the order
 * SAVE, COMPUTE, LOAD (consumers first); in its turn a unit runs until it
 * would wait for a token or its queue is done. This schedule is adversarial
 * on purpose: a consumer that does not wait for its producer's token runs
 * before the producer, and a producer that does not wait for its consumer's
 * "buffer free" token runs ahead, so a wrong token program produces a wrong
 * result in C-simulation as it could on the board. The first unit fault
 * stops the C-simulation at once; on the board the other units finish the
 * step's plan (inside the segment) and the faulting unit executes nothing
 * more but passes its tokens, so the region ends with every stream empty.
 * The units run the instructions as the decoder fetched them: an instruction
 * stream that overwrites instructions of its own step (a SAVE over the
 * program) changes nothing in that step; the new bytes run when a later step
 * fetches them.

 * ---- Counters -----------------------------------------------------------------
 * iters[idx] (optional) receives each retired instruction's pipelined-loop
 * iterations (saturated to 0xffffffff); counters->load_iters / compute_iters
 * / save_iters accumulate them per unit, load_bytes / save_bytes the DDR
 * bytes the LOAD / SAVE units moved, macs the COMPUTE unit's useful MACs;
 * insns counts retired instructions, markers and NOPs included; frames counts
 * FRAME markers.
 *
 * ---- A core kind --------------------------------------------------------------
 *   struct Kind {
 *       typedef ... buffers_t;  // its on-chip memories
 *       typedef ... insn_t;     // its instruction union: head, raw[VF_INSN_BYTES]
 *       enum { FRAME_INSNS = ... };  // a step body's most instructions (board config)
 *       static bool buffers_ok(const buffers_t *b);   // every memory present
 *       static bool opcode_ok(uint32_t opcode);       // decodable (NOP, markers included)
 *       static uint32_t unit_of(uint32_t opcode);     // VF_UNIT_*
 *       static vf_exec_t execute(uint32_t unit, const vf_ddr_t &ddr, uint64_t seg_win,
 *                                uint64_t seg_limit, const insn_t &insn,
 *                                buffers_t *b);  // validate, run, count
 *   };
 */
#ifndef VFPGA_UNIT_SCHEDULER_H
#define VFPGA_UNIT_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vfpga_isa.h"
#include "vfpga_core.h"
#include "vfpga_ddr.h"
#include "vfpga_hls.h"
#include "vfpga_stream.h"

#if !defined(VF_AXI_BYTES)
#error "board macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif
static_assert(VF_AXI_BYTES >= 1 && VF_AXI_BYTES <= 4096, "VF_AXI_BYTES out of range");

#define VF_FETCH_NO_OPCODE 0xffffffffu

/* The including core names its kind's UltraRAM flag for the step's
 * instruction store (VF_URAM_STEP_STORE, VF_URAM_RNN_STEP_STORE). */
#ifndef VF_STEP_STORE_URAM
#define VF_STEP_STORE_URAM 0
#endif

/* ========================================================================== */
/* Helpers of the units                                                        */
/* ========================================================================== */

/* Outcome of one instruction in a unit. */
typedef struct {
    uint32_t fault; /* VF_FAULT_* */
    uint32_t addr;  /* fault_addr */
    uint64_t iters; /* pipelined-loop iterations */
    uint64_t bytes; /* DDR bytes moved */
    uint64_t macs;  /* useful MACs */
} vf_exec_t;

static inline uint32_t vf_sat32(uint64_t v) { return v > 0xffffffffull ? 0xffffffffu : (uint32_t)v; }

static inline vf_exec_t vf_done(uint64_t iters, uint64_t bytes, uint64_t macs)
{
    vf_exec_t r = {VF_FAULT_NONE, 0, iters, bytes, macs};
    return r;
}

static inline vf_exec_t vf_fail(uint32_t fault, uint64_t addr)
{
    vf_exec_t r = {fault, vf_sat32(addr), 0, 0, 0};
    return r;
}

#define VF_FIELD(type, member) vf_fail(VF_FAULT_FIELD, offsetof(type, member))
#define VF_FLAGS_OFFSET (offsetof(vf_insn_head_t, flags))
#define VF_DEPS_OFFSET (offsetof(vf_insn_head_t, deps))

static inline uint64_t vf_min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t vf_max64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static inline uint64_t vf_ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

/* Products of untrusted fields saturate here: any saturated extent exceeds
 * every buffer and segment, and start + extent cannot wrap. */
#define VF_SAT_LIMIT (1ull << 56)
static inline uint64_t vf_mul_sat(uint64_t a, uint64_t b)
{
    if (a == 0 || b == 0)
        return 0;
    if (a > VF_SAT_LIMIT / b)
        return VF_SAT_LIMIT;
    const uint64_t p = a * b;
    return p > VF_SAT_LIMIT ? VF_SAT_LIMIT : p;
}

/* [start, start + len) inside [0, size)? */
static inline bool vf_fits(uint64_t start, uint64_t len, uint64_t size)
{
    return start <= size && len <= size - start;
}

/* First offset of [start, ...) that lies outside [0, size). */
static inline uint64_t vf_first_out(uint64_t start, uint64_t size) { return vf_max64(start, size); }

/* Two's-complement reinterpretation without implementation-defined casts. */
static inline int32_t vf_i32(uint32_t v)
{
    return v < 0x80000000u ? (int32_t)v : (int32_t)(v - 0x80000000u) + INT32_MIN;
}

/* An instruction slot read as one of its formats (a copy, as the decode of
 * the 64 bytes is; the union's members are not read across). */
template <class Format, class Insn>
static inline Format vf_format(const Insn &insn)
{
    Format f;
    memcpy(&f, insn.raw, sizeof f);
    return f;
}

/* Little-endian int32 word from 4 DDR bytes. */
static inline int32_t vf_word(const int8_t *p)
{
    const uint8_t *s = (const uint8_t *)p;
    return vf_i32((uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24);
}

/* rshift_round(v, s) = s == 0 ? v : (v + (1 << (s - 1))) >> s, an arithmetic
 * shift (floor). Callers keep |v| <= 2^62 and s <= 62, so the addition cannot
 * overflow. The right shift of a negative value is arithmetic on g++, clang
 * and Vitis HLS (implementation-defined before C++20, not undefined). */
static inline int64_t vf_rshift_round(int64_t v, uint32_t s)
{
    return s == 0 ? v : (v + (int64_t)(1ull << (s - 1))) >> s;
}

/* An element-wise pipelined loop: body(i) for every i < n, LANES lanes per
 * II=1 beat. Returns the beats: counted as the literal HLS nest runs them,
 * ceil(n / LANES) in the vectorised C-sim build (the same number). */
template <uint32_t LANES, class Body>
static inline uint64_t vf_lane_loop(uint64_t n, Body body)
{
#ifdef VF_HLS_LITERAL
    uint64_t beats = 0;
LANE_BEAT:
    for (uint64_t i0 = 0; i0 < n; i0 += LANES) {
#pragma HLS PIPELINE II=1
        ++beats;
    LANE_BODY:
        for (uint32_t o = 0; o < LANES; ++o) {
#pragma HLS UNROLL
            if (i0 + o < n)
                body(i0 + o);
        }
    }
    return beats;
#else
    for (uint64_t i = 0; i < n; ++i)
        body(i);
    return vf_ceil_div(n, LANES);
#endif
}

#ifndef VF_HLS_LITERAL
/* lane[o] += sum_{i < n} x[i] * w[o * wst + i] for o < nl, wrapping (a CNN
 * core's output channels, an RNN core's matrix rows). Partial sums stay exact
 * in int32 for runs of at most 65536 products (|x * w| <= 2^14); runs are
 * combined with wrapping uint32 additions. Four lanes share each input load. */
static inline void vf_dot_lanes(uint32_t *lane, uint64_t nl, const int8_t *x, const int8_t *w, uint64_t wst,
                                uint64_t n)
{
    for (uint64_t i0 = 0; i0 < n; i0 += 65536) {
        const uint32_t m = (uint32_t)vf_min64(n - i0, 65536);
        const int8_t *xs = x + i0;
        uint64_t o = 0;
        for (; o + 4 <= nl; o += 4) {
            const int8_t *w0 = w + o * wst + i0;
            const int8_t *w1 = w0 + wst;
            const int8_t *w2 = w1 + wst;
            const int8_t *w3 = w2 + wst;
            int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (uint32_t i = 0; i < m; ++i) {
                const int32_t xi = xs[i];
                s0 += xi * w0[i];
                s1 += xi * w1[i];
                s2 += xi * w2[i];
                s3 += xi * w3[i];
            }
            lane[o] += (uint32_t)s0;
            lane[o + 1] += (uint32_t)s1;
            lane[o + 2] += (uint32_t)s2;
            lane[o + 3] += (uint32_t)s3;
        }
        for (; o < nl; ++o) {
            const int8_t *w0 = w + o * wst + i0;
            int32_t s = 0;
            for (uint32_t i = 0; i < m; ++i)
                s += (int32_t)xs[i] * w0[i];
            lane[o] += (uint32_t)s;
        }
    }
}
#endif

/* ========================================================================== */
/* Decoder and unit scheduler                                                  */
/* ========================================================================== */

enum { VF_UNIT_LOAD = 0, VF_UNIT_COMPUTE = 1, VF_UNIT_SAVE = 2, VF_UNIT_NONE = 3 };

static inline bool vf_is_marker(uint32_t opcode)
{
    return opcode == VF_OP_FRAME || opcode == VF_OP_BARRIER || opcode == VF_OP_END;
}

/* deps bits each unit may use */
static inline uint32_t vf_deps_allowed(uint32_t unit)
{
    switch (unit) {
    case VF_UNIT_LOAD:
        return VF_DEP_POP_NEXT | VF_DEP_PUSH_NEXT;
    case VF_UNIT_SAVE:
        return VF_DEP_POP_PREV | VF_DEP_PUSH_PREV;
    case VF_UNIT_COMPUTE:
        return VF_DEP_POP_PREV | VF_DEP_POP_NEXT | VF_DEP_PUSH_PREV | VF_DEP_PUSH_NEXT;
    default:
        return 0;
    }
}

/* Records a fault and stops the core at instruction idx. */
static inline uint32_t vf_stop(vf_core_state_t *state, uint32_t fault, uint32_t idx, uint32_t opcode, uint64_t addr)
{
    state->fault = fault;
    state->fault_insn = idx;
    state->fault_opcode = opcode;
    state->fault_addr = vf_sat32(addr);
    state->running = 0;
    state->pc = idx;
    return VF_STEP_FAULT;
}

static inline void vf_retire(vf_core_counters_t *cnt, uint32_t *iters, uint32_t idx, uint64_t n)
{
    cnt->insns += 1;
    if (iters)
        iters[idx] = vf_sat32(n);
}

/* A unit's executed instruction, in its unit's counters. */
static inline void vf_count(vf_core_counters_t *cnt, uint32_t unit, const vf_exec_t &r)
{
    if (unit == VF_UNIT_LOAD) {
        cnt->load_iters += r.iters;
        cnt->load_bytes += r.bytes;
    } else if (unit == VF_UNIT_COMPUTE) {
        cnt->compute_iters += r.iters;
        cnt->macs += r.macs;
    } else {
        cnt->save_iters += r.iters;
        cnt->save_bytes += r.bytes;
    }
}

/* ---- the streams of one step ------------------------------------------------ */

/* The instruction a unit runs: its 64 bytes as fetched, its index. */
template <class Insn>
struct vf_queued_t {
    Insn insn;
    uint32_t idx;
};

/* What the decoder tells a unit once the step is decoded: it dequeues
 * `queued` instructions, executes the first `run` of them (the token plan:
 * those its tokens will let run; all of them unless the step deadlocks or
 * failed to decode) and drops the rest, then drains the tokens the plan
 * leaves in its input streams (the token queues are empty in every step). */
typedef struct {
    uint32_t queued, run;
    uint32_t left_prev, left_next;
    uint32_t first; /* index of the body's first instruction (store slot 0) */
} vf_unit_plan_t;

/* One step's channels: the decoder's queue of store slots and plan word for
 * each unit, and the four dependency-token streams between neighbouring units
 * (load->compute, compute->load, compute->save, save->compute). The
 * instructions themselves wait in the step's instruction store (one per
 * core, vf_step_region), slot = position in the body, so a queue entry is
 * 16 bits, not an instruction. A step holds at most FRAME_INSNS
 * instructions, so no queue or token stream ever fills: a write never
 * waits, as the unbounded counters of the C model never did. */
template <class K>
struct vf_step_streams_t {
    vf_stream<uint16_t, K::FRAME_INSNS> queue[3];
    vf_stream<vf_unit_plan_t, 1> plan[3];
    vf_stream<uint8_t, K::FRAME_INSNS> l2c, c2l, c2s, s2c;
#ifndef __SYNTHESIS__
    void clear()
    {
        for (int u = 0; u < 3; ++u) {
            queue[u].clear();
            plan[u].clear();
        }
        l2c.clear();
        c2l.clear();
        c2s.clear();
        s2c.clear();
    }
#endif
};

/* The token stream a unit pops for POP_PREV / POP_NEXT, pushes for
 * PUSH_PREV / PUSH_NEXT (NULL: none; the decoder rejects such deps bits). */
template <class K>
static inline vf_stream<uint8_t, K::FRAME_INSNS> *vf_token_in(vf_step_streams_t<K> &s, uint32_t unit, bool prev)
{
    if (unit == VF_UNIT_LOAD)
        return prev ? NULL : &s.c2l;
    if (unit == VF_UNIT_SAVE)
        return prev ? &s.c2s : NULL;
    return prev ? &s.l2c : &s.s2c;
}

template <class K>
static inline vf_stream<uint8_t, K::FRAME_INSNS> *vf_token_out(vf_step_streams_t<K> &s, uint32_t unit, bool prev)
{
    if (unit == VF_UNIT_LOAD)
        return prev ? NULL : &s.l2c;
    if (unit == VF_UNIT_SAVE)
        return prev ? &s.s2c : NULL;
    return prev ? &s.c2l : &s.c2s;
}

/* Every token an instruction pops is there. */
template <class K>
static inline bool vf_tokens_ready(vf_step_streams_t<K> &s, uint32_t unit, uint32_t deps)
{
    if ((deps & VF_DEP_POP_PREV) && vf_token_in(s, unit, true)->empty())
        return false;
    if ((deps & VF_DEP_POP_NEXT) && vf_token_in(s, unit, false)->empty())
        return false;
    return true;
}

/* ---- the decoder ---------------------------------------------------------------- */

/* Instruction idx lies inside the segment (else *first = first byte outside). */
static inline bool vf_fetch_ok(uint64_t seg_limit, uint32_t insn_offset, uint32_t idx, uint64_t *first)
{
    const uint64_t at = (uint64_t)insn_offset + (uint64_t)idx * VF_INSN_BYTES;
    if (vf_fits(at, VF_INSN_BYTES, seg_limit))
        return true;
    *first = vf_first_out(at, seg_limit);
    return false;
}

/* The decoder's outcome: where the step stopped and how, its fault (the
 * first it met, or the plan's deadlock) and what it retired itself. */
typedef struct {
    uint32_t stop;   /* index of the ending marker (insn_count: none) */
    uint32_t end_op; /* FRAME, BARRIER, END, or VF_OP_COUNT: stream exhausted */
    uint32_t fault, fault_insn, fault_opcode;
    uint64_t fault_addr;
    uint64_t insns, frames;
} vf_decode_t;

/* Fetch and decode: reads the step's instructions once, each whole, at
 * consecutive addresses (the m_axi burst), from state pc up to the ending
 * marker; checks each as it arrives (fetch, opcode, size, deps) and queues it
 * for its unit. Then the token plan: the units' token exchange replayed on
 * the deps bits alone (tokens are counters, not data, and in-order units
 * that only wait for counters reach the same final state in any schedule),
 * which tells each unit how many of its instructions will get their tokens
 * -- a deadlocked token program runs what it can and faults at the lowest
 * blocked instruction, no unit waits forever -- and how many tokens are left
 * over to drain. One PLAN iteration tries each unit once, so it takes at
 * most one iteration per body instruction, plus one. */
template <class K>
static void vf_decode_process(const vf_ddr_t &ddr, uint64_t seg_win, uint64_t limit, uint32_t insn_offset,
                              uint32_t insn_count, uint32_t pc, vf_step_streams_t<K> &s,
                              typename K::insn_t store[K::FRAME_INSNS], vf_decode_t *d, uint32_t *iters)
{
    /* each unit's instructions for the plan: deps, index, opcode; the NOPs */
    uint8_t pdeps[3][K::FRAME_INSNS];
    uint32_t pidx[3][K::FRAME_INSNS];
    uint8_t pop[3][K::FRAME_INSNS];
    uint32_t nops[K::FRAME_INSNS];
    uint32_t queued[3] = {0, 0, 0};
    uint32_t n = 0, n_nops = 0; /* body instructions, NOPs among them */
    d->end_op = VF_OP_COUNT;
    d->fault = VF_FAULT_NONE;
    d->insns = 0;
    d->frames = 0;
    uint32_t idx = pc;
    uint32_t body = pc; /* the body's first instruction (after a FRAME at pc): store slot 0 */
FETCH:
    for (; idx < insn_count; ++idx) {
#pragma HLS PIPELINE II=1
        uint64_t first = 0;
        if (!vf_fetch_ok(limit, insn_offset, idx, &first)) {
            d->fault = VF_FAULT_FETCH, d->fault_opcode = VF_FETCH_NO_OPCODE, d->fault_addr = first;
            break;
        }
        typename K::insn_t insn;
        vf_seg_read(ddr, seg_win, insn_offset + (uint64_t)idx * VF_INSN_BYTES, insn.raw, VF_INSN_BYTES);
        const uint32_t op = insn.head.opcode, deps = insn.head.deps;
        if (idx == pc && op == VF_OP_FRAME) {
            body = pc + 1;
            d->frames += 1; /* retired: the token streams start empty in every step */
            d->insns += 1;
            if (iters)
                iters[idx] = 0;
            continue;
        }
        if (!K::opcode_ok(op)) {
            d->fault = VF_FAULT_OPCODE, d->fault_opcode = op, d->fault_addr = op;
            break;
        }
        if (vf_is_marker(op)) {
            d->end_op = op;
            break;
        }
        if (n >= (uint32_t)K::FRAME_INSNS) {
            d->fault = VF_FAULT_FRAME_SIZE, d->fault_opcode = op, d->fault_addr = K::FRAME_INSNS;
            break;
        }
        const uint32_t unit = K::unit_of(op);
        if (unit != VF_UNIT_NONE && (deps & ~vf_deps_allowed(unit)) != 0) {
            d->fault = VF_FAULT_FIELD, d->fault_opcode = op, d->fault_addr = VF_DEPS_OFFSET;
            break;
        }
        const uint16_t slot = (uint16_t)n++; /* idx - body */
        if (unit != VF_UNIT_NONE) {
            const uint32_t k = queued[unit]++;
            pdeps[unit][k] = (uint8_t)deps;
            pidx[unit][k] = idx;
            pop[unit][k] = (uint8_t)op;
            store[slot] = insn;
            s.queue[unit].write(slot);
        } else if (op == VF_OP_NOP) {
            nops[n_nops++] = idx;
        }
    }
    d->stop = idx;
    d->fault_insn = idx;

    uint32_t cur[3] = {0, 0, 0};    /* instructions of each unit that get their tokens */
    uint32_t tok[4] = {0, 0, 0, 0}; /* l2c, c2l, c2s, s2c */
    if (d->fault == VF_FAULT_NONE) {
        /* NOPs are retired by the decoder */
    RETIRE_NOP:
        for (uint32_t i = 0; i < n_nops; ++i) {
            d->insns += 1;
            if (iters)
                iters[nops[i]] = 0;
        }
        static const uint32_t order[3] = {VF_UNIT_SAVE, VF_UNIT_COMPUTE, VF_UNIT_LOAD};
        /* the tok[] a unit pops for PREV / NEXT and pushes for PREV / NEXT
         * (the decoder rejected the deps bits of the missing ones) */
        static const uint8_t in_prev[3] = {0, 0, 2}, in_next[3] = {1, 3, 0};
        static const uint8_t out_prev[3] = {0, 1, 3}, out_next[3] = {0, 2, 0};
    PLAN:
        for (;;) {
#pragma HLS PIPELINE II=1
            bool progress = false;
        PLAN_UNIT:
            for (uint32_t k = 0; k < 3; ++k) {
#pragma HLS UNROLL
                const uint32_t u = order[k];
                if (cur[u] >= queued[u])
                    continue;
                const uint32_t deps = pdeps[u][cur[u]];
                if (((deps & VF_DEP_POP_PREV) && tok[in_prev[u]] == 0) ||
                    ((deps & VF_DEP_POP_NEXT) && tok[in_next[u]] == 0))
                    continue;
                if (deps & VF_DEP_POP_PREV)
                    --tok[in_prev[u]];
                if (deps & VF_DEP_POP_NEXT)
                    --tok[in_next[u]];
                if (deps & VF_DEP_PUSH_PREV)
                    ++tok[out_prev[u]];
                if (deps & VF_DEP_PUSH_NEXT)
                    ++tok[out_next[u]];
                ++cur[u];
                progress = true;
            }
            if (!progress)
                break;
        }
        uint32_t blocked = insn_count;
        for (uint32_t u = 0; u < 3; ++u)
            if (cur[u] < queued[u] && pidx[u][cur[u]] < blocked) {
                blocked = pidx[u][cur[u]];
                d->fault_opcode = pop[u][cur[u]];
            }
        if (blocked != insn_count)
            d->fault = VF_FAULT_DEADLOCK, d->fault_insn = blocked, d->fault_addr = VF_DEPS_OFFSET;
    }
    /* after a decode fault nothing runs: the units drop what was queued */
    const bool decoded = d->fault == VF_FAULT_NONE || d->fault == VF_FAULT_DEADLOCK;
    for (uint32_t u = 0; u < 3; ++u) {
        vf_unit_plan_t p = {queued[u], decoded ? cur[u] : 0, 0, 0, body};
        if (decoded) {
            p.left_prev = u == VF_UNIT_COMPUTE ? tok[0] : u == VF_UNIT_SAVE ? tok[2] : 0;
            p.left_next = u == VF_UNIT_LOAD ? tok[1] : u == VF_UNIT_COMPUTE ? tok[3] : 0;
        }
        s.plan[u].write(p);
    }
}

/* ---- the units --------------------------------------------------------------- */

/* A unit process's registers: its plan, where it is in its queue, its fault
 * and its counters (the caller keeps them between the C-simulation's calls
 * and sums the counters after the step). */
template <class Insn>
struct vf_unit_ctx_t {
    bool started, have, finished;
    vf_unit_plan_t plan;
    uint32_t taken, drained_prev, drained_next;
    vf_queued_t<Insn> cur;
    uint32_t fault, fault_insn, fault_opcode, fault_addr;
    vf_core_counters_t cnt;
};

/* One unit, a process of the step's DATAFLOW region: it runs its queue in
 * order; an instruction pops its tokens (waiting for them), executes, then
 * pushes its tokens. In hardware it runs its whole queue, each blocking read
 * waiting for its producer. In the C-simulation one call runs it until it
 * would wait for a token (false: call again after the others) or to its end
 * (true); a faulting unit returns at once (the core stops). On the board a
 * faulting unit executes nothing more but still passes the tokens its plan
 * says, so its neighbours run the step to its end (their later writes stay
 * inside the segment) and every stream ends empty. */
template <class K>
static bool vf_unit_process(uint32_t UNIT, const vf_ddr_t &ddr, uint64_t seg_win, uint64_t limit,
                            vf_step_streams_t<K> &s, const typename K::insn_t store[K::FRAME_INSNS],
                            typename K::buffers_t *b, vf_unit_ctx_t<typename K::insn_t> &c, uint32_t *iters)
{
    if (c.finished)
        return true;
    if (!c.started) {
        c.plan = s.plan[UNIT].read();
        c.started = true;
    }
UNIT_QUEUE:
    while (c.taken < c.plan.queued) {
        if (!c.have) {
            /* the next slot, then its instruction from the store (the units share its read port: each
             * takes at most one instruction per UNIT_ISSUE_CYCLES >= 3 cycles) */
            const uint16_t slot = s.queue[UNIT].read();
            c.cur.insn = store[slot];
            c.cur.idx = c.plan.first + slot;
            c.have = true;
        }
        if (c.taken < c.plan.run) {
            const uint32_t deps = c.cur.insn.head.deps;
#ifndef __SYNTHESIS__
            if (!vf_tokens_ready(s, UNIT, deps))
                return false; /* the other units run first */
#endif
            if (deps & VF_DEP_POP_PREV)
                (void)vf_token_in(s, UNIT, true)->read();
            if (deps & VF_DEP_POP_NEXT)
                (void)vf_token_in(s, UNIT, false)->read();
            if (c.fault == VF_FAULT_NONE) {
                /* a local copy: the units' byte stores may alias the context, a local they cannot
                 * (the C-sim's loops then keep the fields in registers and vectorise) */
                const typename K::insn_t insn = c.cur.insn;
                const vf_exec_t r = K::execute(UNIT, ddr, seg_win, limit, insn, b);
                if (r.fault != VF_FAULT_NONE) {
                    c.fault = r.fault;
                    c.fault_insn = c.cur.idx;
                    c.fault_opcode = c.cur.insn.head.opcode;
                    c.fault_addr = r.addr;
#ifndef __SYNTHESIS__
                    c.finished = true;
                    return true;
#endif
                } else {
                    vf_retire(&c.cnt, iters, c.cur.idx, r.iters);
                    vf_count(&c.cnt, UNIT, r);
                }
            }
            if (deps & VF_DEP_PUSH_PREV)
                vf_token_out(s, UNIT, true)->write(1);
            if (deps & VF_DEP_PUSH_NEXT)
                vf_token_out(s, UNIT, false)->write(1);
        }
        c.have = false;
        ++c.taken;
    }
    /* the tokens the plan leaves behind: every stream ends the step empty */
UNIT_DRAIN:
    while (c.drained_prev < c.plan.left_prev || c.drained_next < c.plan.left_next) {
        const bool prev = c.drained_prev < c.plan.left_prev;
        vf_stream<uint8_t, K::FRAME_INSNS> *t = vf_token_in(s, UNIT, prev);
#ifndef __SYNTHESIS__
        if (t->empty())
            return false;
#endif
        (void)t->read();
        ++(prev ? c.drained_prev : c.drained_next);
    }
    c.finished = true;
    return true;
}

template <class Insn>
static inline uint64_t vf_unit_progress(const vf_unit_ctx_t<Insn> &c)
{
    return (uint64_t)c.taken + c.drained_prev + c.drained_next + c.finished;
}

/* The step's DATAFLOW region: the decoder and the three units, connected
 * only by the streams of s. In hardware the four processes run concurrently.
 * The C-simulation runs the decoder, then rounds over the units in the order
 * SAVE, COMPUTE, LOAD (consumers first), each until it would wait for a token
 * -- adversarial on purpose: a consumer that does not wait for its
 * producer's token runs before the producer, a producer that does not wait
 * for its consumer's "buffer free" token runs ahead, so a wrong token program
 * gives a wrong result here as it could on the board -- and stops at the
 * first unit fault. */
template <class K>
static void vf_step_region(const vf_ddr_t &ddr, uint64_t seg_win, uint64_t limit, uint32_t insn_offset,
                           uint32_t insn_count, uint32_t pc, typename K::buffers_t *b, vf_decode_t *d,
                           vf_unit_ctx_t<typename K::insn_t> *ctx, uint32_t *iters)
{
    VF_PRAGMA(HLS DATAFLOW)
#ifdef __SYNTHESIS__
    vf_step_streams_t<K> s;
    typename K::insn_t store[K::FRAME_INSNS];
#else
    /* the C-simulation reuses one set per thread: a step's streams and store
     * (FRAME_INSNS instructions) would cost a fresh stack frame each */
    static thread_local vf_step_streams_t<K> s;
    static thread_local typename K::insn_t store[K::FRAME_INSNS];
    s.clear();
#endif
    /* the step's instruction store: one per core, FRAME_INSNS x 512 bits, in UltraRAM where the board
     * config says so (storage.uram: step_store, rnn_step_store) */
    VF_URAM_IF(VF_STEP_STORE_URAM, store)
    vf_decode_process<K>(ddr, seg_win, limit, insn_offset, insn_count, pc, s, store, d, iters);
#ifdef __SYNTHESIS__
    vf_unit_process<K>(VF_UNIT_SAVE, ddr, seg_win, limit, s, store, b, ctx[VF_UNIT_SAVE], iters);
    vf_unit_process<K>(VF_UNIT_COMPUTE, ddr, seg_win, limit, s, store, b, ctx[VF_UNIT_COMPUTE], iters);
    vf_unit_process<K>(VF_UNIT_LOAD, ddr, seg_win, limit, s, store, b, ctx[VF_UNIT_LOAD], iters);
#else
    if (d->fault != VF_FAULT_NONE && d->fault != VF_FAULT_DEADLOCK)
        return; /* nothing of a step that fails to decode runs */
SCHEDULE:
    for (;;) {
        const uint64_t before = vf_unit_progress(ctx[0]) + vf_unit_progress(ctx[1]) + vf_unit_progress(ctx[2]);
        bool done = vf_unit_process<K>(VF_UNIT_SAVE, ddr, seg_win, limit, s, store, b, ctx[VF_UNIT_SAVE], iters);
        if (ctx[VF_UNIT_SAVE].fault != VF_FAULT_NONE)
            return;
        done &= vf_unit_process<K>(VF_UNIT_COMPUTE, ddr, seg_win, limit, s, store, b, ctx[VF_UNIT_COMPUTE], iters);
        if (ctx[VF_UNIT_COMPUTE].fault != VF_FAULT_NONE)
            return;
        done &= vf_unit_process<K>(VF_UNIT_LOAD, ddr, seg_win, limit, s, store, b, ctx[VF_UNIT_LOAD], iters);
        if (ctx[VF_UNIT_LOAD].fault != VF_FAULT_NONE || done)
            return;
        if (vf_unit_progress(ctx[0]) + vf_unit_progress(ctx[1]) + vf_unit_progress(ctx[2]) == before) {
            /* cannot happen: the plan runs only what gets its tokens */
            fprintf(stderr, "vf_unit_step: the units stalled on the decoder's token plan\n");
            abort();
        }
    }
#endif
}

static inline void vf_add_counters(vf_core_counters_t *to, const vf_core_counters_t &c)
{
    to->insns += c.insns;
    to->frames += c.frames;
    to->load_iters += c.load_iters;
    to->compute_iters += c.compute_iters;
    to->save_iters += c.save_iters;
    to->load_bytes += c.load_bytes;
    to->save_bytes += c.save_bytes;
    to->macs += c.macs;
}

/* One step of a core of kind K (the step rule above); no window
 * (ddr.bytes == 0) is an empty segment. */
template <class K>
static uint32_t vf_unit_step(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t seg_limit, uint32_t insn_offset,
                             uint32_t insn_count, typename K::buffers_t *buffers, vf_core_state_t *state,
                             vf_core_counters_t *counters, uint32_t *iters)
{
    static_assert(sizeof(typename K::insn_t) == VF_INSN_BYTES, "instruction size");
    static_assert(K::FRAME_INSNS >= 1 && K::FRAME_INSNS <= 65536, "instruction queue size out of range");
    if (state == NULL)
        return VF_STEP_FAULT;
    if (state->fault != VF_FAULT_NONE)
        return VF_STEP_FAULT;
    if (!state->running && state->pc != 0)
        return VF_STEP_END;
    vf_core_counters_t scratch = {0, 0, 0, 0, 0, 0, 0, 0};
    vf_core_counters_t *cnt = counters ? counters : &scratch;
    if (buffers == NULL || !K::buffers_ok(buffers))
        return vf_stop(state, VF_FAULT_BUFFER, state->pc, VF_FETCH_NO_OPCODE, 0);
    const uint64_t limit = ddr.bytes != 0 ? seg_limit : 0;
    state->running = 1;

    if (state->pc >= insn_count) {
        state->running = 0;
        return VF_STEP_END;
    }

    vf_decode_t d;
    vf_unit_ctx_t<typename K::insn_t> ctx[3];
    memset(ctx, 0, sizeof ctx);
    vf_step_region<K>(ddr, seg_win, limit, insn_offset, insn_count, state->pc, buffers, &d, ctx, iters);

    cnt->insns += d.insns;
    cnt->frames += d.frames;
    const vf_unit_ctx_t<typename K::insn_t> *failed = NULL;
    for (uint32_t u = 0; u < 3; ++u) {
        vf_add_counters(cnt, ctx[u].cnt);
        if (ctx[u].fault != VF_FAULT_NONE && (failed == NULL || ctx[u].fault_insn < failed->fault_insn))
            failed = &ctx[u];
    }
    /* a unit's fault comes before the deadlock its step would reach */
    if (failed != NULL)
        return vf_stop(state, failed->fault, failed->fault_insn, failed->fault_opcode, failed->fault_addr);
    if (d.fault != VF_FAULT_NONE)
        return vf_stop(state, d.fault, d.fault_insn, d.fault_opcode, d.fault_addr);

    /* ---- the ending marker ---- */
    const uint32_t stop = d.stop;
    if (d.end_op == VF_OP_FRAME) {
        state->pc = stop; /* starts the next step */
        return VF_STEP_FRAME;
    }
    if (d.end_op == VF_OP_COUNT) {
        state->pc = stop;
        state->running = 0;
        return VF_STEP_END;
    }
    vf_retire(cnt, iters, stop, 0);
    state->pc = stop + 1;
    if (d.end_op == VF_OP_END || state->pc >= insn_count) {
        state->running = 0;
        return VF_STEP_END;
    }
    return VF_STEP_FRAME;
}

#endif /* VFPGA_UNIT_SCHEDULER_H */
