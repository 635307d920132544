/*
 * The unit scheduler of a vfpga core (Vitis HLS C++14), written once for the
 * CNN core (hls/cnn_core.cpp) and the RNN core (hls/rnn_core.cpp): the
 * decoder (level-2 dispatch), the LOAD / COMPUTE / SAVE queues and their
 * dependency tokens, fault recording and the counters. A core instantiates
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
 * VF_STEP_FRAME" always terminates. The token queues live inside one step
 * (vf_core_state_t has no room for them): they are empty when a step starts
 * and whatever is left in them when it ends is discarded, so tokens never
 * cross a FRAME (nor a BARRIER). Markers and NOP ignore their deps/flags and
 * are retired by the decoder with 0 iterations.
 * A state with fault != 0 returns VF_STEP_FAULT at once. A state with
 * running == 0 and pc != 0 (stopped at END or at the end of the stream)
 * returns VF_STEP_END at once; running == 0 with pc == 0 (a zeroed, fresh
 * state) starts the program. Missing buffers are VF_FAULT_BUFFER at pc.
 *
 * ---- Decode, dispatch and the unit schedule ---------------------------------
 * The decoder first fetches the heads of the whole step (pc .. the ending
 * marker), checking each fetch against seg_limit (VF_FAULT_FETCH), the opcode
 * (the kind's opcode_ok, else VF_FAULT_OPCODE) and the deps bits the opcode's
 * unit may use (load: only *_NEXT, save: only *_PREV, compute: all four;
 * otherwise VF_FAULT_FIELD). A decode fault stops the core before any
 * instruction of the step runs. The body is then dispatched in program order
 * to the three units' queues (the kind's unit_of), which run as the
 * concurrent hardware units do: in-order within a unit, ordered between units
 * only by the dependency tokens (queues load->compute, compute->load,
 * compute->save, save->compute; counters, not data).
 * An instruction pops its tokens (waiting while one is missing), executes,
 * then pushes its tokens. The C-simulation runs rounds over the units in the
 * order SAVE, COMPUTE, LOAD (consumers first); in its turn a unit runs
 * instructions until it blocks on a token or its queue is empty. A round in
 * which no unit makes progress while work is left is VF_FAULT_DEADLOCK. This
 * schedule is adversarial on purpose: a consumer that does not wait for its
 * producer's token runs before the producer, and a producer that does not wait
 * for its consumer's "buffer free" token runs ahead, so a wrong token program
 * produces a wrong result in C-simulation as it could on the board.
 * Units read their instruction again from the segment when they execute it;
 * an instruction stream that overwrites its own not-yet-executed instructions
 * within a step is deterministic here but its effect is unspecified.
 *
 * ---- Faults recorded here -----------------------------------------------------
 * VF_FAULT_FETCH reports fault_addr = first instruction byte outside the
 * segment and fault_opcode = 0xffffffff; VF_FAULT_OPCODE reports the opcode;
 * VF_FAULT_DEADLOCK reports the lowest-indexed blocked instruction with
 * fault_addr = 1 (the deps field); a unit's fault (FIELD, BUFFER, SEGMENT:
 * the core's rules) reports the unit's address. fault_addr saturates at
 * 0xffffffff. On a fault: running = 0, pc = fault_insn, nothing of the
 * faulting instruction is written, VF_STEP_FAULT is returned.
 *
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

#if !defined(VF_AXI_BYTES)
#error "board macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif
static_assert(VF_AXI_BYTES >= 1 && VF_AXI_BYTES <= 4096, "VF_AXI_BYTES out of range");

#define VF_FETCH_NO_OPCODE 0xffffffffu

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

/* Token queues of one step. */
typedef struct {
    uint32_t l2c, c2l, c2s, s2c;
} vf_tokens_t;

/* The queue a unit pops for POP_PREV / POP_NEXT (NULL: none). */
static inline uint32_t *vf_pop_queue(vf_tokens_t *t, uint32_t unit, bool prev)
{
    if (unit == VF_UNIT_LOAD)
        return prev ? NULL : &t->c2l;
    if (unit == VF_UNIT_SAVE)
        return prev ? &t->c2s : NULL;
    return prev ? &t->l2c : &t->s2c;
}

static inline uint32_t *vf_push_queue(vf_tokens_t *t, uint32_t unit, bool prev)
{
    if (unit == VF_UNIT_LOAD)
        return prev ? NULL : &t->l2c;
    if (unit == VF_UNIT_SAVE)
        return prev ? &t->s2c : NULL;
    return prev ? &t->c2l : &t->c2s;
}

static inline bool vf_tokens_ready(vf_tokens_t *t, uint32_t unit, uint32_t deps)
{
    if ((deps & VF_DEP_POP_PREV) && *vf_pop_queue(t, unit, true) == 0)
        return false;
    if ((deps & VF_DEP_POP_NEXT) && *vf_pop_queue(t, unit, false) == 0)
        return false;
    return true;
}

/* Instruction idx lies inside the segment (else *first = first byte outside). */
static inline bool vf_fetch_ok(uint64_t seg_limit, uint32_t insn_offset, uint32_t idx, uint64_t *first)
{
    const uint64_t at = (uint64_t)insn_offset + (uint64_t)idx * VF_INSN_BYTES;
    if (vf_fits(at, VF_INSN_BYTES, seg_limit))
        return true;
    *first = vf_first_out(at, seg_limit);
    return false;
}

/* The segment (window offset seg_win) is reached through the bank ports:
 * every access decodes its bank (vf_ddr_read / vf_ddr_write). */
template <class Insn>
static inline void vf_fetch(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t insn_offset, uint32_t idx, Insn *insn)
{
    vf_ddr_read(ddr, seg_win + insn_offset + (uint64_t)idx * VF_INSN_BYTES, insn->raw, VF_INSN_BYTES);
}

static inline uint32_t vf_fetch_opcode(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t insn_offset, uint32_t idx)
{
    uint8_t op = 0;
    vf_ddr_read(ddr, seg_win + insn_offset + (uint64_t)idx * VF_INSN_BYTES, &op, 1);
    return op;
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

/* One step of a core of kind K (the step rule above); no window
 * (ddr.bytes == 0) is an empty segment. */
template <class K>
static uint32_t vf_unit_step(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t seg_limit, uint32_t insn_offset,
                             uint32_t insn_count, typename K::buffers_t *buffers, vf_core_state_t *state,
                             vf_core_counters_t *counters, uint32_t *iters)
{
    static_assert(sizeof(typename K::insn_t) == VF_INSN_BYTES, "instruction size");
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

    uint32_t idx = state->pc;
    if (idx >= insn_count) {
        state->running = 0;
        return VF_STEP_END;
    }

    /* ---- decode: the frame head, then the body up to the ending marker ---- */
    uint64_t first = 0;
    if (!vf_fetch_ok(limit, insn_offset, idx, &first))
        return vf_stop(state, VF_FAULT_FETCH, idx, VF_FETCH_NO_OPCODE, first);
    if (vf_fetch_opcode(ddr, seg_win, insn_offset, idx) == VF_OP_FRAME) {
        cnt->frames += 1; /* token queues start empty in every step */
        vf_retire(cnt, iters, idx, 0);
        ++idx;
    }
    const uint32_t body = idx;
    uint32_t end_op = VF_OP_COUNT; /* VF_OP_COUNT: stream exhausted */
DECODE:
    for (; idx < insn_count; ++idx) {
        if (!vf_fetch_ok(limit, insn_offset, idx, &first))
            return vf_stop(state, VF_FAULT_FETCH, idx, VF_FETCH_NO_OPCODE, first);
        vf_insn_head_t h;
        vf_ddr_read(ddr, seg_win + insn_offset + (uint64_t)idx * VF_INSN_BYTES, &h, sizeof h);
        if (!K::opcode_ok(h.opcode))
            return vf_stop(state, VF_FAULT_OPCODE, idx, h.opcode, h.opcode);
        if (vf_is_marker(h.opcode)) {
            end_op = h.opcode;
            break;
        }
        const uint32_t unit = K::unit_of(h.opcode);
        if (unit != VF_UNIT_NONE && (h.deps & ~vf_deps_allowed(unit)) != 0)
            return vf_stop(state, VF_FAULT_FIELD, idx, h.opcode, VF_DEPS_OFFSET);
    }
    const uint32_t stop = idx;

    /* NOPs are retired by the decoder */
    for (uint32_t i = body; i < stop; ++i)
        if (vf_fetch_opcode(ddr, seg_win, insn_offset, i) == VF_OP_NOP)
            vf_retire(cnt, iters, i, 0);

    /* ---- the three units, scheduled by their tokens ---- */
    vf_tokens_t tok = {0, 0, 0, 0};
    uint32_t cursor[3] = {body, body, body};
    static const uint32_t order[3] = {VF_UNIT_SAVE, VF_UNIT_COMPUTE, VF_UNIT_LOAD};
SCHEDULE:
    for (;;) {
        bool progress = false;
        bool work = false;
        uint32_t blocked = stop; /* lowest blocked instruction */
        for (uint32_t u = 0; u < 3; ++u) {
            const uint32_t unit = order[u];
            uint32_t &pc = cursor[unit];
            for (;;) {
                while (pc < stop && K::unit_of(vf_fetch_opcode(ddr, seg_win, insn_offset, pc)) != unit)
                    ++pc;
                if (pc >= stop)
                    break;
                typename K::insn_t insn;
                vf_fetch(ddr, seg_win, insn_offset, pc, &insn);
                const uint32_t deps = insn.head.deps;
                if ((deps & ~vf_deps_allowed(unit)) != 0)
                    return vf_stop(state, VF_FAULT_FIELD, pc, insn.head.opcode, VF_DEPS_OFFSET);
                if (!vf_tokens_ready(&tok, unit, deps)) {
                    work = true;
                    blocked = pc < blocked ? pc : blocked;
                    break;
                }
                if (deps & VF_DEP_POP_PREV)
                    *vf_pop_queue(&tok, unit, true) -= 1;
                if (deps & VF_DEP_POP_NEXT)
                    *vf_pop_queue(&tok, unit, false) -= 1;
                const vf_exec_t r = K::execute(unit, ddr, seg_win, limit, insn, buffers);
                if (r.fault != VF_FAULT_NONE)
                    return vf_stop(state, r.fault, pc, insn.head.opcode, r.addr);
                if (deps & VF_DEP_PUSH_PREV)
                    *vf_push_queue(&tok, unit, true) += 1;
                if (deps & VF_DEP_PUSH_NEXT)
                    *vf_push_queue(&tok, unit, false) += 1;
                vf_retire(cnt, iters, pc, r.iters);
                vf_count(cnt, unit, r);
                progress = true;
                ++pc;
            }
        }
        if (!work)
            break;
        if (!progress)
            return vf_stop(state, VF_FAULT_DEADLOCK, blocked, vf_fetch_opcode(ddr, seg_win, insn_offset, blocked),
                           VF_DEPS_OFFSET);
    }

    /* ---- the ending marker ---- */
    if (end_op == VF_OP_FRAME) {
        state->pc = stop; /* starts the next step */
        return VF_STEP_FRAME;
    }
    if (end_op == VF_OP_COUNT) {
        state->pc = stop;
        state->running = 0;
        return VF_STEP_END;
    }
    vf_retire(cnt, iters, stop, 0);
    state->pc = stop + 1;
    if (end_op == VF_OP_END || state->pc >= insn_count) {
        state->running = 0;
        return VF_STEP_END;
    }
    return VF_STEP_FRAME;
}

#endif /* VFPGA_UNIT_SCHEDULER_H */
