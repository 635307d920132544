/*
 * The pool's two kinds of core under one C++ name, so that code driving a
 * core -- the dispatcher's frame runner (hls/dispatcher.cpp) and the
 * stand-alone core tops (cnn_core_top.cpp, rnn_core_top.cpp) -- is written
 * once for both: vf_core_step() and vf_core_scrub() are overloaded on the
 * kind's buffers, vf_core_run_program() is the tops' body.
 * C++ only (the C API is vfpga_cnn_core.h / vfpga_rnn_core.h); needs the
 * board macros.
 */
#ifndef VFPGA_CORE_KINDS_H
#define VFPGA_CORE_KINDS_H

#include <stdint.h>

#include "vfpga_cnn_core.h"
#include "vfpga_rnn_core.h"
#include "vfpga_ddr.h"
#include "vfpga_hls.h"

/* vf_cnn_core_step() / vf_rnn_core_step() on a segment reached through the
 * bank ports (hls/cnn_core.cpp, hls/rnn_core.cpp). */
uint32_t vf_cnn_core_step_ddr(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t seg_limit, uint32_t insn_offset,
                              uint32_t insn_count, vf_cnn_buffers_t *buffers, vf_cnn_state_t *state,
                              vf_cnn_counters_t *counters, uint32_t *iters);
uint32_t vf_rnn_core_step_ddr(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t seg_limit, uint32_t insn_offset,
                              uint32_t insn_count, vf_rnn_buffers_t *buffers, vf_rnn_state_t *state,
                              vf_rnn_counters_t *counters, uint32_t *iters);

static inline uint32_t vf_core_step(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t seg_limit, uint32_t insn_offset,
                                    uint32_t insn_count, vf_cnn_buffers_t *buffers, vf_core_state_t *state,
                                    vf_core_counters_t *counters, uint32_t *iters)
{
    return vf_cnn_core_step_ddr(ddr, seg_win, seg_limit, insn_offset, insn_count, buffers, state, counters, iters);
}

static inline uint32_t vf_core_step(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t seg_limit, uint32_t insn_offset,
                                    uint32_t insn_count, vf_rnn_buffers_t *buffers, vf_core_state_t *state,
                                    vf_core_counters_t *counters, uint32_t *iters)
{
    return vf_rnn_core_step_ddr(ddr, seg_win, seg_limit, insn_offset, insn_count, buffers, state, counters, iters);
}

/* Zeroes one on-chip memory of n elements (nothing when it is absent):
 * VF_DISP_SCRUB_BYTES_PER_CYCLE bytes a beat, the rate the timeline charges
 * (W writes a beat spread over the memory's cyclic banks, two ports each). */
template <class T>
static inline void vf_scrub_memory(T *p, uint32_t n)
{
    enum { W = VF_DISP_SCRUB_BYTES_PER_CYCLE / sizeof(T) > 0 ? VF_DISP_SCRUB_BYTES_PER_CYCLE / sizeof(T) : 1 };
    if (p == 0)
        return;
SCRUB:
    for (uint32_t i = 0; i < n; i += W) {
#pragma HLS PIPELINE II=1
    SCRUB_LANE:
        for (uint32_t j = 0; j < W; ++j) {
#pragma HLS UNROLL
            if (i + j < n)
                p[i + j] = 0;
        }
    }
}

/* A weight buffer reshaped into WORD-byte words (VF_CNN_PARTITIONS,
 * VF_RNN_PARTITIONS): the same beats as vf_scrub_memory, but each word is
 * written whole, once, on the beat that completes it (a beat's share of a
 * wide word would be a read-modify-write). */
template <uint32_t WORD>
static inline void vf_scrub_words(int8_t *p, uint32_t n)
{
    enum { B = VF_DISP_SCRUB_BYTES_PER_CYCLE };
    static_assert(WORD % B == 0, "a scrub beat lies inside one weight word");
    if (p == 0)
        return;
SCRUB_WORDS:
    for (uint32_t i = 0; i < n; i += B) {
#pragma HLS PIPELINE II=1
        const uint32_t end = i + B; /* n is whole words */
        if (end % WORD == 0) {
        SCRUB_WORD:
            for (uint32_t j = 0; j < WORD; ++j) {
#pragma HLS UNROLL
                p[end - WORD + j] = 0;
            }
        }
    }
}

/* Zeroes every on-chip memory of a core: no data crosses tenants through it. */
static inline void vf_core_scrub(vf_cnn_buffers_t *b)
{
    static_assert(VF_WBUF_BYTES % VF_CONV_WORD == 0, "WBUF holds whole words");
    vf_scrub_memory(b->ibuf, VF_IBUF_BYTES);
    vf_scrub_words<VF_CONV_WORD>(b->wbuf, VF_WBUF_BYTES);
    vf_scrub_memory(b->acc, VF_ACC_WORDS);
    vf_scrub_memory(b->obuf, VF_OBUF_BYTES);
    vf_scrub_memory(b->param, VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS);
}

static inline void vf_core_scrub(vf_rnn_buffers_t *b)
{
    vf_scrub_words<VF_RNN_TILE_BYTES>(b->wbuf, VF_RNN_WBUF_BYTES);
    vf_scrub_memory(b->vbuf, VF_RNN_VBUF_BYTES);
    vf_scrub_memory(b->acc, VF_RNN_ACC_WORDS);
    vf_scrub_memory(b->param, VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS);
    vf_scrub_memory(b->state, VF_RNN_STATE_WORDS);
    vf_scrub_memory(b->act, VF_RNN_ACT_BUFFER_WORDS); /* every lane's copy */
}

/* A stand-alone core top's invocation: its program from instruction 0 until
 * END, the end of the stream or a fault -- the core's free-running loop, one
 * frame per step; every step retires at least one instruction, so it ends
 * after at most insn_count steps -- then its result registers. */
template <class Buffers>
static inline void vf_core_run_program(int8_t *seg, uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count,
                                       Buffers *buffers, uint32_t *fault, uint32_t *fault_insn, uint32_t *fault_addr,
                                       uint64_t *insns, uint64_t *load_iters, uint64_t *compute_iters,
                                       uint64_t *save_iters)
{
    vf_core_state_t state = {0, 1, VF_FAULT_NONE, 0, 0, 0};
    vf_core_counters_t counters = {0, 0, 0, 0, 0, 0, 0, 0};
    const vf_ddr_t ddr = vf_ddr_window(seg, seg_limit); /* every port is seg */
RUN:
    for (;;) {
        const uint32_t r = vf_core_step(ddr, 0, seg_limit, insn_offset, insn_count, buffers, &state, &counters, 0);
        if (r != VF_STEP_FRAME)
            break;
    }
    *fault = state.fault;
    *fault_insn = state.fault_insn;
    *fault_addr = state.fault_addr;
    *insns = counters.insns;
    *load_iters = counters.load_iters;
    *compute_iters = counters.compute_iters;
    *save_iters = counters.save_iters;
}

#endif /* VFPGA_CORE_KINDS_H */
