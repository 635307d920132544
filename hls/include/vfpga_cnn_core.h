/*
 * CNN core: C entry points shared by the HLS top (hls/cnn_core.cpp) and the
 * emulator (loaded through cffi). Same cdef-friendly subset as vfpga_isa.h.
 *
 * The board's free-running core is C-simulated as a bounded step: one call
 * runs one frame -- a FRAME marker at pc, then the instructions up to the
 * next marker: a following FRAME is left for the next step, a BARRIER or END
 * is consumed once every unit has drained -- and keeps all state (the on-chip
 * buffers and the program counter) in memory passed by pointer. Token queues
 * live inside one step, so tokens cross neither FRAME nor BARRIER. The HLS
 * top wraps the same step in its hardware loop.
 *
 * Buffer sizes come from the board config as macros (VF_IBUF_BYTES, ...);
 * vf_cnn_core_geometry() reports the values this library was built with.
 */
#ifndef VFPGA_CNN_CORE_H
#define VFPGA_CNN_CORE_H

#include <stdint.h>
#include "vfpga_isa.h"
#include "vfpga_core.h"

/* On-chip memories of one core (BRAM/URAM on the board). */
typedef struct {
    int8_t *ibuf;    /* VF_IBUF_BYTES */
    int8_t *wbuf;    /* VF_WBUF_BYTES */
    int32_t *acc;    /* VF_ACC_WORDS */
    int8_t *obuf;    /* VF_OBUF_BYTES */
    int32_t *param;  /* VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS */
} vf_cnn_buffers_t;

/* State and counters (vfpga_core.h): load = LOAD_TILE/LOAD_LINEAR bus beats,
 * compute = CONV/POOL/ADD pipelined iterations, save = SAVE bus beats, macs =
 * useful CONV MACs. */
typedef vf_core_state_t vf_cnn_state_t;
typedef vf_core_counters_t vf_cnn_counters_t;

/* Build-time geometry, from the board config macros. */
typedef struct {
    uint32_t icp;             /* input channels per cycle */
    uint32_t ocp;             /* output channels per cycle (also vector lanes) */
    uint32_t axi_bytes;       /* DDR bus width in bytes per beat */
    uint32_t ibuf_bytes;
    uint32_t wbuf_bytes;
    uint32_t acc_words;
    uint32_t obuf_bytes;
    uint32_t param_entries;
} vf_cnn_geometry_t;

void vf_cnn_core_geometry(vf_cnn_geometry_t *geometry);

/* Runs one frame of the program at seg[insn_offset], insn_count instructions
 * long. seg/seg_limit is the tenant segment: every DDR access, instruction
 * fetches included, must fall inside [0, seg_limit). iters (optional, length
 * insn_count) receives each retired instruction's pipelined-loop iteration
 * count. Returns VF_STEP_*. */
uint32_t vf_cnn_core_step(int8_t *seg, uint32_t seg_limit,
                          uint32_t insn_offset, uint32_t insn_count,
                          vf_cnn_buffers_t *buffers, vf_cnn_state_t *state,
                          vf_cnn_counters_t *counters, uint32_t *iters);

/* The same on a segment at window offset seg_win of the DDR window mem (all
 * bank ports one pointer, as in the C-simulation), striped over
 * VF_SEG_PARTS banks when `striped` (VF_TENANT_STRIPED's layout,
 * vfpga_ddr.h), else contiguous: what a frame of the dispatcher runs. */
uint32_t vf_cnn_core_step_window(int8_t *mem, uint64_t mem_bytes, uint64_t seg_win, uint32_t striped,
                                 uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count,
                                 vf_cnn_buffers_t *buffers, vf_cnn_state_t *state,
                                 vf_cnn_counters_t *counters, uint32_t *iters);

#endif /* VFPGA_CNN_CORE_H */
