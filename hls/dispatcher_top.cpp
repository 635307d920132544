/*
 * vfpga level-1 dispatcher: the synthesizable top (Vitis HLS kernel
 * vf_dispatcher_top).
 *
 * The kernel is the pool: the dispatcher, its VF_CNN_CORES CNN cores and VF_RNN_CORES RNN cores, whose
 * on-chip buffers are static arrays here (they keep their contents between
 * invocations, like the BRAM/URAM they become; one instance per core). One
 * invocation is one scheduling round, vf_dispatch_step() -- the same code the
 * emulator and the testbench call: register handling, walking, issue, the
 * issued frames run on their cores concurrently (the unrolled RUN loop of the
 * step), retire.
 *
 * Control: ap_ctrl_hs, started once with auto-restart. The driver writes
 * ctrl = ap_start | auto_restart (0x81) at VF_DREG_CTRL and the kernel then
 * restarts itself after every step, forever: the free-running dispatcher. The
 * Vitis ap_done interrupt (gie/ier/isr at 0x04..0x0c) stays disabled; tenant
 * interrupts come out of the `irq` port (ap_none, level: irq_enable &&
 * (irq_status & irq_mask)), wired to the interrupt controller. `clock`
 * (ap_none) is a free-running 64-bit cycle counter of the kernel clock from
 * the overlay; the step stamps requests and frames with it (the record's
 * `cycles`, the tenants' core_cycles / request_cycles registers).
 *
 * Interfaces (offsets from the board config, checked or pinned here):
 *  - mem: the device memory window, an m_axi master (bundle gmem) whose base
 *    address register is VF_DREG_MEM (the driver writes ddr.base_address, the
 *    same value as the file's mem_base register); mem_bytes (VF_DREG_MEM_BYTES)
 *    is the window's size. Segments outside [0, mem_bytes) are refused.
 *  - file: the register file (vfpga_dispatcher.h, vf_disp_regs_t), an
 *    s_axilite array at VF_DREG_FILE. Each step reads the driver-written
 *    ("host") words at its start and writes the dispatcher's ("ro") words at
 *    its end, so neither side ever overwrites the other's words.
 *  - the internal state (vf_disp_state_t) is a static: all-zero is reset.
 *
 * Linking: `mem` is one m_axi port over the whole window; on a multi-bank
 * board it is connected to every bank (v++ --connectivity.sp
 * vf_dispatcher_top.m_axi_gmem:DDR[0:3] on u200). One port per bank (cores
 * wired to their bank, as cnn_core.banks describes) is a later refinement;
 * the cycle model accounts bank bandwidth either way.
 *
 * Compiles unchanged with g++ (HLS pragmas are unknown pragmas there) and is
 * exercised by tb/tb_dispatcher.cpp through the register words alone. It has
 * not been through Vitis HLS synthesis yet (no tool on the build hosts): the
 * pragmas state the intended structure (one core instance per pool core, the
 * RUN loop of vf_dispatch_step unrolled over them).
 */
#include <stdint.h>

#include "vfpga_dispatcher.h"
#include "vfpga_hls.h"

#if !defined(VF_DREG_CTRL) || !defined(VF_DREG_MEM) || !defined(VF_DREG_MEM_BYTES) || !defined(VF_DREG_FILE)
#error "dispatcher register macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif

static_assert(VF_DREG_CTRL == 0x00 && VF_DREG_GIE == 0x04 && VF_DREG_IER == 0x08 && VF_DREG_ISR == 0x0c,
              "board config: ap_ctrl_hs registers are fixed by Vitis HLS at 0x00/0x04/0x08/0x0c");

#define VF_DREG_FILE_BYTES (VF_DREG_TENANT_BASE + VF_DISP_TENANTS * VF_DREG_TENANT_STRIDE)
#define VF_DREG_FILE_WORDS (VF_DREG_FILE_BYTES / 4)
static_assert(sizeof(vf_disp_regs_t) == VF_DREG_FILE_BYTES, "register file size");
/* Vitis HLS places an s_axilite array in an address window of the next power
 * of two >= its size, aligned to that size, after the scalar registers. */
static constexpr uint32_t vf_pow2_at_least(uint32_t n)
{
    uint32_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}
static_assert(VF_DREG_FILE % vf_pow2_at_least(VF_DREG_FILE_BYTES) == 0,
              "board config: dispatcher.registers.file must be aligned to the register file's window");
static_assert(VF_DREG_MEM_BYTES + 8 <= VF_DREG_FILE, "scalar registers overlap the register file");

/* ---- register words ------------------------------------------------------- */

#define VF_TREG(t, off) (VF_DREG_TENANT_BASE + (t) * VF_DREG_TENANT_STRIDE + (off))

static inline uint32_t vf_rd32(const uint32_t *file, uint32_t off) { return file[off / 4]; }
static inline uint64_t vf_rd64(const uint32_t *file, uint32_t off)
{
    return (uint64_t)file[off / 4] | (uint64_t)file[off / 4 + 1] << 32;
}
static inline void vf_wr32(uint32_t *file, uint32_t off, uint32_t v) { file[off / 4] = v; }
static inline void vf_wr64(uint32_t *file, uint32_t off, uint64_t v)
{
    file[off / 4] = (uint32_t)v;
    file[off / 4 + 1] = (uint32_t)(v >> 32);
}

/* the driver's words -> the step's register struct */
static void vf_load_host(const uint32_t *file, vf_disp_regs_t *r)
{
    r->g.irq_enable = vf_rd32(file, VF_DREG_G_IRQ_ENABLE);
    r->g.irq_mask = vf_rd32(file, VF_DREG_G_IRQ_MASK);
    r->g.mem_base = vf_rd64(file, VF_DREG_G_MEM_BASE);
LOAD_TENANTS:
    for (uint32_t t = 0; t < VF_DISP_TENANTS; ++t) {
        vf_disp_tenant_regs_t &x = r->tenant[t];
        x.control = vf_rd32(file, VF_TREG(t, VF_DREG_T_CONTROL));
        x.seg_limit = vf_rd32(file, VF_TREG(t, VF_DREG_T_SEG_LIMIT));
        x.seg_base = vf_rd64(file, VF_TREG(t, VF_DREG_T_SEG_BASE));
        x.ring_offset = vf_rd32(file, VF_TREG(t, VF_DREG_T_RING_OFFSET));
        x.ring_size = vf_rd32(file, VF_TREG(t, VF_DREG_T_RING_SIZE));
        x.cpl_offset = vf_rd32(file, VF_TREG(t, VF_DREG_T_CPL_OFFSET));
        x.ring_tail = vf_rd32(file, VF_TREG(t, VF_DREG_T_RING_TAIL));
        x.cpl_ack = vf_rd32(file, VF_TREG(t, VF_DREG_T_CPL_ACK));
        x.core_mask = vf_rd32(file, VF_TREG(t, VF_DREG_T_CORE_MASK));
        x.mask_seq = vf_rd32(file, VF_TREG(t, VF_DREG_T_MASK_SEQ));
    }
}

/* the step's results -> the dispatcher's words */
static void vf_store_status(const vf_disp_regs_t *r, uint32_t *file)
{
    vf_wr32(file, VF_DREG_G_ID, r->g.id);
    vf_wr32(file, VF_DREG_G_VERSION, r->g.version);
    vf_wr32(file, VF_DREG_G_TENANTS, r->g.tenants);
    vf_wr32(file, VF_DREG_G_CORES, r->g.cores);
    vf_wr32(file, VF_DREG_G_IRQ_STATUS, r->g.irq_status);
    vf_wr32(file, VF_DREG_G_IRQ, r->g.irq);
    vf_wr64(file, VF_DREG_G_STEPS, r->g.steps);
    vf_wr64(file, VF_DREG_G_FRAMES, r->g.frames);
    vf_wr32(file, VF_DREG_G_BUSY_CORES, r->g.busy_cores);
    vf_wr32(file, VF_DREG_G_OWNED_CORES, r->g.owned_cores);
    vf_wr64(file, VF_DREG_G_CYCLES, r->g.cycles);
    vf_wr32(file, VF_DREG_G_RNN_CORES, r->g.rnn_cores);
STORE_TENANTS:
    for (uint32_t t = 0; t < VF_DISP_TENANTS; ++t) {
        const vf_disp_tenant_regs_t &x = r->tenant[t];
        vf_wr32(file, VF_TREG(t, VF_DREG_T_STATUS), x.status);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_RING_HEAD), x.ring_head);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_ACTIVE_MASK), x.active_mask);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_MASK_DONE), x.mask_done);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_MASK_RESULT), x.mask_result);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_MASK_CONFLICT), x.mask_conflict);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_FAULT), x.fault);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_FAULT_CORE), x.fault_core);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_FAULT_ADDR), x.fault_addr);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_FAULT_INSN), x.fault_insn);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_FAULT_ENTRY), x.fault_entry);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_FAULT_SEQ), x.fault_seq);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_FAULT_OPCODE), x.fault_opcode);
        vf_wr32(file, VF_TREG(t, VF_DREG_T_INFLIGHT), x.inflight);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_REQUESTS), x.requests);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_FAILED), x.failed);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_FRAMES), x.frames);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_BARRIERS), x.barriers);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_INSNS), x.insns);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_LOAD_ITERS), x.load_iters);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_COMPUTE_ITERS), x.compute_iters);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_SAVE_ITERS), x.save_iters);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_CORE_CYCLES), x.core_cycles);
        vf_wr64(file, VF_TREG(t, VF_DREG_T_REQUEST_CYCLES), x.request_cycles);
    }
}

/* ---- the kernel ------------------------------------------------------------- */

void vf_dispatcher_top(int8_t *mem, uint64_t mem_bytes, uint32_t file[VF_DREG_FILE_WORDS], uint8_t *irq,
                       uint64_t clock)
{
    VF_PRAGMA(HLS INTERFACE m_axi port=mem offset=slave bundle=gmem)
    VF_AXILITE(mem, VF_DREG_MEM)
    VF_AXILITE(mem_bytes, VF_DREG_MEM_BYTES)
    VF_AXILITE(file, VF_DREG_FILE)
    VF_PRAGMA(HLS INTERFACE ap_none port=irq)
    VF_PRAGMA(HLS INTERFACE ap_none port=clock)
    VF_PRAGMA(HLS INTERFACE s_axilite port=return bundle=control)

    /* dispatcher registers and state: all-zero is the reset state */
    static vf_disp_regs_t regs;
    static vf_disp_state_t state;

    /* the cores' on-chip memories, one set per core; the CNN cores' are
     * partitioned for their lanes as in cnn_core_top.cpp (the RNN cores' are
     * not yet, unlike rnn_core_top.cpp's: VF_RNN_PARTITIONS(2, ...)) */
    static int8_t ibuf[VF_CNN_CORES][VF_IBUF_BYTES];
    static int8_t wbuf[VF_CNN_CORES][VF_WBUF_BYTES];
    static int32_t acc[VF_CNN_CORES][VF_ACC_WORDS];
    static int8_t obuf[VF_CNN_CORES][VF_OBUF_BYTES];
    static int32_t param[VF_CNN_CORES][VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS];
    VF_PER_CORE(ibuf)
    VF_PER_CORE(wbuf)
    VF_PER_CORE(acc)
    VF_PER_CORE(obuf)
    VF_PER_CORE(param)
    VF_CNN_PARTITIONS(2, ibuf, obuf, acc)

    static int8_t rnn_wbuf[VF_RNN_CORES][VF_RNN_WBUF_BYTES];
    static int8_t rnn_vbuf[VF_RNN_CORES][VF_RNN_VBUF_BYTES];
    static int32_t rnn_acc[VF_RNN_CORES][VF_RNN_ACC_WORDS];
    static int32_t rnn_param[VF_RNN_CORES][VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS];
    static int32_t rnn_state[VF_RNN_CORES][VF_RNN_STATE_WORDS];
    static int32_t rnn_act[VF_RNN_CORES][VF_RNN_ACT_WORDS];
    VF_PER_CORE(rnn_wbuf)
    VF_PER_CORE(rnn_vbuf)
    VF_PER_CORE(rnn_acc)
    VF_PER_CORE(rnn_param)
    VF_PER_CORE(rnn_state)
    VF_PER_CORE(rnn_act)

    vf_cnn_buffers_t cores[VF_CNN_CORES];
    vf_rnn_buffers_t rnn_cores[VF_RNN_CORES];
RNN_BUFFERS:
    for (uint32_t c = 0; c < VF_RNN_CORES; ++c) {
#pragma HLS UNROLL
        const vf_rnn_buffers_t b = {rnn_wbuf[c], rnn_vbuf[c], rnn_acc[c], rnn_param[c], rnn_state[c], rnn_act[c]};
        rnn_cores[c] = b;
    }
BUFFERS:
    for (uint32_t c = 0; c < VF_CNN_CORES; ++c) {
#pragma HLS UNROLL
        const vf_cnn_buffers_t b = {ibuf[c], wbuf[c], acc[c], obuf[c], param[c]};
        cores[c] = b;
    }

    vf_load_host(file, &regs);
    regs.g.cycles = clock;
    vf_disp_report_t report;
    vf_dispatch_step(&regs, &state, mem, mem_bytes, cores, rnn_cores, &report);
    vf_store_status(&regs, file);
    *irq = (uint8_t)regs.g.irq;
}
