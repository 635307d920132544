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

/* On-chip memories of one RNN core (BRAM/URAM on the board). */
typedef struct {
    int8_t *wbuf;   /* VF_RNN_WBUF_BYTES */
    int8_t *vbuf;   /* VF_RNN_VBUF_BYTES */
    int32_t *acc;   /* VF_RNN_ACC_WORDS */
    int32_t *param; /* VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS */
    int32_t *state; /* VF_RNN_STATE_WORDS */
    int32_t *act;   /* VF_RNN_ACT_WORDS */
} vf_rnn_buffers_t;

/* Architectural state between steps (the vf_cnn_state_t layout). */
typedef struct {
    uint32_t pc;           /* next instruction index (relative to insn_offset) */
    uint32_t running;      /* 1 until END or a fault */
    uint32_t fault;        /* VF_FAULT_* */
    uint32_t fault_insn;   /* index of the faulting instruction */
    uint32_t fault_addr;   /* offending segment offset / buffer offset / field */
    uint32_t fault_opcode; /* 0xffffffff for VF_FAULT_FETCH */
} vf_rnn_state_t;

/* Pipelined-loop iteration counters, accumulated over steps (the
 * vf_cnn_counters_t layout; compute = RNN_MATVEC + RNN_GATES). */
typedef struct {
    uint64_t insns;         /* instructions retired */
    uint64_t frames;        /* FRAME markers seen */
    uint64_t load_iters;    /* RNN_LOAD bus beats */
    uint64_t compute_iters; /* RNN_MATVEC + RNN_GATES pipelined iterations */
    uint64_t save_iters;    /* RNN_SAVE bus beats */
    uint64_t load_bytes;    /* bytes read from DDR */
    uint64_t save_bytes;    /* bytes written to DDR */
    uint64_t macs;          /* useful multiply-accumulates (RNN_MATVEC) */
} vf_rnn_counters_t;

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
} vf_rnn_geometry_t;

/* vf_rnn_core_step() results (the values of VF_STEP_* in vfpga_cnn_core.h) */
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
