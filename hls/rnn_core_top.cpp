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
 *    Vitis HLS; the config's values are checked against them
 *    (VF_CORE_TOP_CHECK).
 *  - the on-chip buffers are static arrays sized by the board macros: they
 *    keep their contents between invocations (resident weights, activation
 *    tables, state), like the BRAM/URAM they become, partitioned for the
 *    array and the gate lanes, ACT a copy per lane (VF_RNN_PARTITIONS).
 *
 * Compiles unchanged with g++ (the HLS pragmas are unknown pragmas there) and
 * is exercised by the C-sim testbench.
 */
#include <stdint.h>

#include "vfpga_rnn_core.h"
#include "vfpga_core_kinds.h"
#include "vfpga_hls.h"

VF_CORE_TOP_CHECK(VF_RREG_);

void vf_rnn_core_top(int8_t *seg, uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count, uint32_t *fault,
                     uint32_t *fault_insn, uint32_t *fault_addr, uint64_t *insns, uint64_t *load_iters,
                     uint64_t *compute_iters, uint64_t *save_iters)
{
    VF_CORE_TOP_PORTS(VF_RREG_)

    static int8_t wbuf[VF_RNN_WBUF_BYTES];
    static int8_t vbuf[VF_RNN_VBUF_BYTES];
    static int32_t acc[VF_RNN_ACC_WORDS];
    static int32_t param[VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS];
    static int32_t state_words[VF_RNN_STATE_WORDS];
    static int32_t act[VF_RNN_LANES][VF_RNN_ACT_WORDS]; /* a copy per gate lane */
    VF_RNN_PARTITIONS(1, wbuf, vbuf, acc, state_words, act)

    vf_rnn_buffers_t buffers = {wbuf, vbuf, acc, param, state_words, &act[0][0]};
    vf_core_run_program(seg, seg_limit, insn_offset, insn_count, &buffers, fault, fault_insn, fault_addr, insns,
                        load_iters, compute_iters, save_iters);
}
