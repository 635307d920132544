/*
 * vfpga RNN core: the synthesizable top (Vitis HLS kernel vf_rnn_core_top).
 *
 * One invocation runs one program on this core: it steps vf_rnn_core_step()
 * -- the same code the emulator calls -- from instruction 0 until END, the
 * end of the stream, or a fault, and reports the fault state and the
 * iteration counters through AXI-Lite registers. (The level-1 dispatcher
 * drives the cores frame by frame; this top is the stand-alone form, as
 * cnn_core_top.cpp is for the CNN core.)
 *
 * Interfaces:
 *  - seg: the tenant segment, an m_axi master (bundle gmem) whose base address
 *    is the s_axilite register VF_RREG_SEG; every access is checked against
 *    seg_limit inside the core.
 *  - all scalars and results: s_axilite (bundle control) at the register
 *    offsets of the board config's rnn_core.registers (VF_RREG_*). The
 *    block-level control registers (ap_ctrl_hs at 0x00..0x0c) are placed by
 *    Vitis HLS; the config's values are checked against them below.
 *  - the on-chip buffers are static arrays sized by the board macros: they
 *    keep their contents between invocations (resident weights, activation
 *    tables, state), like the BRAM/URAM they become. WBUF is partitioned so
 *    that the VF_RNN_ROWS x VF_RNN_COLS array reads a column block of each
 *    row per cycle; ACC, PARAM and STATE by the gate unit's lanes.
 *
 * Compiles unchanged with g++ (the HLS pragmas are unknown pragmas there) and
 * is exercised by the C-sim testbench.
 */
#include <stdint.h>

#include "vfpga_rnn_core.h"

#if defined(__GNUC__) && !defined(__clang__) && !defined(__SYNTHESIS__)
#pragma GCC diagnostic ignored "-Wunused-label"
#endif

#if !defined(VF_RREG_SEG) || !defined(VF_RREG_SEG_LIMIT) || !defined(VF_RREG_INSN_OFFSET) ||                 \
    !defined(VF_RREG_INSN_COUNT) || !defined(VF_RREG_FAULT) || !defined(VF_RREG_FAULT_INSN) ||               \
    !defined(VF_RREG_FAULT_ADDR) || !defined(VF_RREG_INSNS) || !defined(VF_RREG_LOAD_ITERS) ||               \
    !defined(VF_RREG_COMPUTE_ITERS) || !defined(VF_RREG_SAVE_ITERS) || !defined(VF_RREG_CTRL) ||             \
    !defined(VF_RREG_GIE) || !defined(VF_RREG_IER) || !defined(VF_RREG_ISR)
#error "board register macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif

static_assert(VF_RREG_CTRL == 0x00 && VF_RREG_GIE == 0x04 && VF_RREG_IER == 0x08 && VF_RREG_ISR == 0x0c,
              "board config: ap_ctrl_hs registers are fixed by Vitis HLS at 0x00/0x04/0x08/0x0c");

#define VF_RNN_PRAGMA_STR(x) _Pragma(#x)
#define VF_RNN_PRAGMA(x) VF_RNN_PRAGMA_STR(x)
#define VF_RNN_AXILITE(p, off) VF_RNN_PRAGMA(HLS INTERFACE s_axilite port=p offset=off bundle=control)

void vf_rnn_core_top(int8_t *seg, uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count, uint32_t *fault,
                     uint32_t *fault_insn, uint32_t *fault_addr, uint64_t *insns, uint64_t *load_iters,
                     uint64_t *compute_iters, uint64_t *save_iters)
{
    VF_RNN_PRAGMA(HLS INTERFACE m_axi port=seg offset=slave bundle=gmem)
    VF_RNN_AXILITE(seg, VF_RREG_SEG)
    VF_RNN_AXILITE(seg_limit, VF_RREG_SEG_LIMIT)
    VF_RNN_AXILITE(insn_offset, VF_RREG_INSN_OFFSET)
    VF_RNN_AXILITE(insn_count, VF_RREG_INSN_COUNT)
    VF_RNN_AXILITE(fault, VF_RREG_FAULT)
    VF_RNN_AXILITE(fault_insn, VF_RREG_FAULT_INSN)
    VF_RNN_AXILITE(fault_addr, VF_RREG_FAULT_ADDR)
    VF_RNN_AXILITE(insns, VF_RREG_INSNS)
    VF_RNN_AXILITE(load_iters, VF_RREG_LOAD_ITERS)
    VF_RNN_AXILITE(compute_iters, VF_RREG_COMPUTE_ITERS)
    VF_RNN_AXILITE(save_iters, VF_RREG_SAVE_ITERS)
    VF_RNN_PRAGMA(HLS INTERFACE s_axilite port=return bundle=control)

    static int8_t wbuf[VF_RNN_WBUF_BYTES];
    static int8_t vbuf[VF_RNN_VBUF_BYTES];
    static int32_t acc[VF_RNN_ACC_WORDS];
    static int32_t param[VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS];
    static int32_t state_words[VF_RNN_STATE_WORDS];
    static int32_t act[VF_RNN_ACT_WORDS];
    VF_RNN_PRAGMA(HLS ARRAY_PARTITION variable=wbuf cyclic factor=VF_RNN_COLS)
    VF_RNN_PRAGMA(HLS ARRAY_PARTITION variable=vbuf cyclic factor=VF_RNN_COLS)
    VF_RNN_PRAGMA(HLS ARRAY_PARTITION variable=acc cyclic factor=VF_RNN_LANES)
    VF_RNN_PRAGMA(HLS ARRAY_PARTITION variable=state_words cyclic factor=VF_RNN_LANES)

    vf_rnn_buffers_t buffers = {wbuf, vbuf, acc, param, state_words, act};
    vf_rnn_state_t state = {0, 1, VF_FAULT_NONE, 0, 0, 0};
    vf_rnn_counters_t counters = {0, 0, 0, 0, 0, 0, 0, 0};

    /* the core's free-running loop, one frame per step; every step retires at
     * least one instruction, so this ends after at most insn_count steps */
RUN:
    for (;;) {
        const uint32_t r = vf_rnn_core_step(seg, seg_limit, insn_offset, insn_count, &buffers, &state, &counters, 0);
        if (r != VF_RNN_STEP_FRAME)
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
