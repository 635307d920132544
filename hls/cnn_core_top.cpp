/*
 * vfpga CNN core: the synthesizable top (Vitis HLS kernel vf_cnn_core_top).
 *
 * One invocation runs one program (a tenant's request on this core): it
 * steps vf_cnn_core_step() -- the same code the emulator calls -- from
 * instruction 0 until END, the end of the stream, or a fault, and reports the
 * fault state and the iteration counters through AXI-Lite registers.
 *
 * Interfaces:
 *  - seg: the tenant segment, an m_axi master (bundle gmem) whose base address
 *    is the s_axilite register VF_REG_SEG; every access is checked against
 *    seg_limit inside the core.
 *  - all scalars and results: s_axilite (bundle control) at the register
 *    offsets of the board config (VF_REG_*), so the driver and the kernel
 *    share one source of truth. The block-level control registers
 *    (ap_ctrl_hs: ctrl/gie/ier/isr at 0x00..0x0c) are placed by Vitis HLS;
 *    the config's values are checked against them below.
 *  - the on-chip buffers are static arrays sized by the board macros: they
 *    keep their contents between invocations, like the BRAM/URAM they become.
 *
 * Compiles unchanged with g++ (the HLS pragmas are unknown pragmas there) and
 * is exercised by the C-sim testbench.
 */
#include <stdint.h>

#include "vfpga_cnn_core.h"

/* Loop labels name the HLS loops; g++ would call them unused. (HLS pragmas
 * are unknown to g++: host builds pass -Wno-unknown-pragmas.) */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__SYNTHESIS__)
#pragma GCC diagnostic ignored "-Wunused-label"
#endif

#if !defined(VF_REG_SEG) || !defined(VF_REG_SEG_LIMIT) || !defined(VF_REG_INSN_OFFSET) ||                   \
    !defined(VF_REG_INSN_COUNT) || !defined(VF_REG_FAULT) || !defined(VF_REG_FAULT_INSN) ||                 \
    !defined(VF_REG_FAULT_ADDR) || !defined(VF_REG_INSNS) || !defined(VF_REG_LOAD_ITERS) ||                 \
    !defined(VF_REG_COMPUTE_ITERS) || !defined(VF_REG_SAVE_ITERS) || !defined(VF_REG_CTRL) ||               \
    !defined(VF_REG_GIE) || !defined(VF_REG_IER) || !defined(VF_REG_ISR)
#error "board register macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif

static_assert(VF_REG_CTRL == 0x00 && VF_REG_GIE == 0x04 && VF_REG_IER == 0x08 && VF_REG_ISR == 0x0c,
              "board config: ap_ctrl_hs registers are fixed by Vitis HLS at 0x00/0x04/0x08/0x0c");

/* _Pragma with macro arguments expanded first, so that register offsets and
 * sizes come from the board macros. */
#define VF_PRAGMA_STR(x) _Pragma(#x)
#define VF_PRAGMA(x) VF_PRAGMA_STR(x)
#define VF_AXILITE(p, off) VF_PRAGMA(HLS INTERFACE s_axilite port=p offset=off bundle=control)

void vf_cnn_core_top(int8_t *seg, uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count, uint32_t *fault,
                     uint32_t *fault_insn, uint32_t *fault_addr, uint64_t *insns, uint64_t *load_iters,
                     uint64_t *compute_iters, uint64_t *save_iters)
{
    VF_PRAGMA(HLS INTERFACE m_axi port=seg offset=slave bundle=gmem)
    VF_AXILITE(seg, VF_REG_SEG)
    VF_AXILITE(seg_limit, VF_REG_SEG_LIMIT)
    VF_AXILITE(insn_offset, VF_REG_INSN_OFFSET)
    VF_AXILITE(insn_count, VF_REG_INSN_COUNT)
    VF_AXILITE(fault, VF_REG_FAULT)
    VF_AXILITE(fault_insn, VF_REG_FAULT_INSN)
    VF_AXILITE(fault_addr, VF_REG_FAULT_ADDR)
    VF_AXILITE(insns, VF_REG_INSNS)
    VF_AXILITE(load_iters, VF_REG_LOAD_ITERS)
    VF_AXILITE(compute_iters, VF_REG_COMPUTE_ITERS)
    VF_AXILITE(save_iters, VF_REG_SAVE_ITERS)
    VF_PRAGMA(HLS INTERFACE s_axilite port=return bundle=control)

    static int8_t ibuf[VF_IBUF_BYTES];
    static int8_t wbuf[VF_WBUF_BYTES];
    static int32_t acc[VF_ACC_WORDS];
    static int8_t obuf[VF_OBUF_BYTES];
    static int32_t param[VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS];
    VF_PRAGMA(HLS ARRAY_PARTITION variable=ibuf cyclic factor=VF_ICP)
    VF_PRAGMA(HLS ARRAY_PARTITION variable=obuf cyclic factor=VF_OCP)
    VF_PRAGMA(HLS ARRAY_PARTITION variable=acc cyclic factor=VF_OCP)

    vf_cnn_buffers_t buffers = {ibuf, wbuf, acc, obuf, param};
    vf_cnn_state_t state = {0, 1, VF_FAULT_NONE, 0, 0, 0};
    vf_cnn_counters_t counters = {0, 0, 0, 0, 0, 0, 0, 0};

    /* the core's free-running loop, one frame per step; every step retires at
     * least one instruction, so this ends after at most insn_count steps */
RUN:
    for (;;) {
        const uint32_t r = vf_cnn_core_step(seg, seg_limit, insn_offset, insn_count, &buffers, &state, &counters, 0);
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
