/*
 * RNN core: C entry points shared by the HLS top (hls/rnn_core_top.cpp) and
 * the emulator (loaded through cffi). Same cdef-friendly subset as
 * vfpga_isa.h, whose RNN section defines the instructions and the
 * fixed-point arithmetic.
 *
 * As for the CNN core, the board's free-running core is C-simulated as a
 * bounded step: one call runs one frame -- a FRAME marker at pc, then the
 * instructions up to the next marker: a following FRAME is left for the next
 * step, a BARRIER or END is consumed once every unit has drained -- and keeps
 * all state (the on-chip buffers and the program counter) in memory passed
 * by pointer. The step rule, the token schedule and the fault rules are
 * spelled out at the top of hls/rnn_core.cpp.
 *
 * Buffer sizes come from the board config as macros (VF_RNN_WBUF_BYTES, ...);
 * vf_rnn_core_geometry() reports the values this library was built with.
 */
#ifndef VFPGA_RNN_CORE_H
#define VFPGA_RNN_CORE_H

#include <stdint.h>
#include "vfpga_isa.h"
#include "vfpga_core.h"

/* On-chip memories of one RNN core (BRAM/URAM on the board). */
typedef struct {
    int8_t *wbuf;   /* VF_RNN_WBUF_BYTES */
    int8_t *vbuf;   /* VF_RNN_VBUF_BYTES */
    int32_t *acc;   /* VF_RNN_ACC_WORDS */
    int32_t *param; /* VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS */
    int32_t *state; /* VF_RNN_STATE_WORDS */
    int32_t *act;   /* VF_RNN_LANES copies of VF_RNN_ACT_WORDS (see below) */
} vf_rnn_buffers_t;

/* ACT is held once per gate lane: copy l (words l * VF_RNN_ACT_WORDS ..) is
 * the one lane l reads, so every lane has its own table read ports. RNN_LOAD
 * into ACT writes every copy, so they are always equal and the copies are
 * not observable; the buffer is VF_RNN_LANES * VF_RNN_ACT_WORDS words. */
#define VF_RNN_ACT_BUFFER_WORDS ((uint64_t)VF_RNN_LANES * VF_RNN_ACT_WORDS)

/* State and counters (vfpga_core.h): load = RNN_LOAD bus beats, compute =
 * RNN_MATVEC + RNN_GATES pipelined iterations, save = RNN_SAVE bus beats,
 * macs = useful RNN_MATVEC MACs. */
typedef vf_core_state_t vf_rnn_state_t;
typedef vf_core_counters_t vf_rnn_counters_t;

/* Build-time geometry, from the board config macros. */
typedef struct {
    uint32_t rows;          /* matrix-vector array: rows per cycle */
    uint32_t cols;          /* matrix-vector array: int8 columns per cycle */
    uint32_t lanes;         /* element-wise unit: hidden units per cycle */
    uint32_t axi_bytes;     /* DDR bus width in bytes per beat */
    uint32_t wbuf_bytes;
    uint32_t vbuf_bytes;
    uint32_t acc_words;
    uint32_t param_entries;
    uint32_t state_words;
    uint32_t act_words;
    uint32_t act_segments;  /* SEG: a table is act_segments + 1 words */
    uint32_t act_step_log2; /* STEP: knots 2^STEP Q.15 units apart */
    uint32_t act_buffer_words; /* the ACT array to allocate: lanes copies of act_words */
} vf_rnn_geometry_t;

/* vf_rnn_core_step() results: the VF_STEP_* of vfpga_core.h under RNN names */
#define VF_RNN_STEP_FRAME 0 /* a frame (or barrier) completed, more to run */
#define VF_RNN_STEP_END 1   /* END reached, or the stream is exhausted */
#define VF_RNN_STEP_FAULT 2 /* stopped with state->fault set */

void vf_rnn_core_geometry(vf_rnn_geometry_t *geometry);

/* Runs one frame of the program at seg[insn_offset], insn_count instructions
 * long. seg/seg_limit is the tenant segment: every DDR access, instruction
 * fetches included, must fall inside [0, seg_limit). iters (optional, length
 * insn_count) receives each retired instruction's pipelined-loop iteration
 * count. Returns VF_RNN_STEP_*. */
uint32_t vf_rnn_core_step(int8_t *seg, uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count,
                          vf_rnn_buffers_t *buffers, vf_rnn_state_t *state, vf_rnn_counters_t *counters,
                          uint32_t *iters);

/* The element-wise unit's table activation, the code RNN_GATES runs:
 * out[i] = act(table, clamp(pre[i], PRE_MIN, PRE_MAX)) for i < n, with table
 * VF_RNN_ACT_SEGMENTS + 1 words (vfpga_isa.h, RNN section). For tests and
 * table checks; does nothing when a pointer is NULL. */
void vf_rnn_activation(const int32_t *table, const int32_t *pre, int32_t *out, uint32_t n);

#endif /* VFPGA_RNN_CORE_H */
