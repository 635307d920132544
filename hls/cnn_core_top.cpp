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
 *    the config's values are checked against them (VF_CORE_TOP_CHECK).
 *  - the on-chip buffers are static arrays sized by the board macros: they
 *    keep their contents between invocations, like the BRAM/URAM they become.
 *
 * Compiles unchanged with g++ (the HLS pragmas are unknown pragmas there) and
 * is exercised by the C-sim testbench.
 */
#include <stdint.h>

#include "vfpga_cnn_core.h"
#include "vfpga_core_kinds.h"
#include "vfpga_hls.h"

VF_CORE_TOP_CHECK(VF_REG_);

void vf_cnn_core_top(int8_t *seg, uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count, uint32_t *fault,
                     uint32_t *fault_insn, uint32_t *fault_addr, uint64_t *insns, uint64_t *load_iters,
                     uint64_t *compute_iters, uint64_t *save_iters)
{
    VF_CORE_TOP_PORTS(VF_REG_)

    static int8_t ibuf[VF_IBUF_BYTES];
    static int8_t wbuf[VF_WBUF_BYTES];
    static int32_t acc[VF_ACC_WORDS];
    static int8_t obuf[VF_OBUF_BYTES];
    static int32_t param[VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS];
    VF_CNN_PARTITIONS(1, ibuf, wbuf, obuf, acc)

    vf_cnn_buffers_t buffers = {ibuf, wbuf, acc, obuf, param};
    vf_core_run_program(seg, seg_limit, insn_offset, insn_count, &buffers, fault, fault_insn, fault_addr, insns,
                        load_iters, compute_iters, save_iters);
}
