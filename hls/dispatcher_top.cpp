/*
 * vfpga level-1 dispatcher: the synthesizable top (Vitis HLS kernel
 * vf_dispatcher_top).
 *
 * The kernel is the pool: the dispatcher, its VF_CNN_CORES CNN cores and
 * VF_RNN_CORES RNN cores, as free-running processes connected by streams
 * (include/vfpga_pool.h states the machine and how the emulator and the
 * simulator run the same one):
 *  - vf_dispatcher_process: reads the driver's register words, retires one
 *    frame whose core reported its end (the one issued first), advances
 *    (walk, records, issue), sends the issued frames to their cores, writes
 *    its status words;
 *  - vf_core_process, one per pool core: runs each frame it is sent on its
 *    own on-chip buffers and reports the end;
 *  - in the Vitis kernel variant, vf_ticker_process: the clock.
 * In hardware each process loops forever (VF_HARDWARE_LOOP) inside a
 * DATAFLOW region, so cores progress independently. In the C-simulation one
 * call of the top runs one iteration of every process, in that order.
 *
 * The cores' on-chip buffers are static arrays here (one instance per core,
 * VF_PER_CORE), partitioned for their lanes as in the stand-alone core tops
 * (VF_CNN_PARTITIONS, VF_RNN_PARTITIONS), in UltraRAM where the board
 * config's storage.uram says so (VF_URAM_IF), else in block RAM.
 *
 * Interfaces (offsets from the board config, checked or pinned here):
 *  - mem, mem1 .. mem<VF_DDR_BANKS-1>: one m_axi master per DDR bank
 *    (VF_DDR_PORT: bundle bank<b>, burst length, outstanding transactions,
 *    latency and width from the board config), each linked to its bank
 *    alone (overlay/board_build.py). Every port's base register holds the
 *    window's base (ddr.base_address, the same value as the file's mem_base
 *    register); mem_bytes is the window's size. Port b carries only bank
 *    b's addresses (include/vfpga_ddr.h): the dispatcher's ring, record and
 *    program accesses by address, a frame through its segment's bank; a
 *    striped segment (VF_TENANT_STRIPED, VF_SEG_PARTS > 1: u200, u200_bigcore)
 *    has a part in each of banks 0 .. VF_SEG_PARTS-1: a one-port core moves
 *    each word on its part's port, the big core one word on each port at once.
 *    Segments outside [0, mem_bytes) or across a bank boundary are refused.
 *    The driver writes them before starting the kernel.
 *  - file: the register file (vfpga_dispatcher.h, vf_disp_regs_t), an
 *    s_axilite array at VF_DREG_FILE. Each dispatcher iteration reads the
 *    driver-written ("host") words at its start and writes the dispatcher's
 *    ("ro") words at its end, so neither side ever overwrites the other's.
 *  - the internal state (vf_disp_state_t) is a static: all-zero is reset.
 *
 * Two variants of the control and clock:
 *  - Vivado IP (Zynq boards; default): ap_ctrl_hs, started once (the driver
 *    writes ctrl = ap_start | auto_restart = 0x81 at VF_DREG_CTRL; the
 *    processes never return). `irq` (ap_none, level: irq_enable &&
 *    (irq_status & irq_mask)) goes to the interrupt controller; `clock`
 *    (ap_none) is the overlay's free-running 64-bit cycle counter, read
 *    every iteration through a volatile pointer.
 *  - Vitis kernel (VF_VITIS_KERNEL, Alveo .xo): ap_ctrl_chain, no ap_none
 *    ports (v++ takes AXI interfaces only). The driver polls the file's
 *    irq / irq_status registers. The clock is an internal counter:
 *    vf_ticker_process counts the kernel clock in an II=1 loop and answers
 *    the dispatcher's request for the time, sent at the end of each
 *    iteration and read at the start of the next.
 * The stamps (records' `cycles`, core_cycles, request_cycles) count kernel
 * clock cycles in both; in the C-simulation they are what the testbench
 * passes (Vivado) or one per call (Vitis).
 *
 * Compiles unchanged with g++ (HLS pragmas are unknown pragmas there) and is
 * exercised by tb/tb_dispatcher.cpp through the register words alone. It has
 * not been through Vitis HLS synthesis yet (no tool on the build hosts): the
 * pragmas state the intended structure; README.md ("On a board") lists what
 * only the tools can confirm.
 */
#include <stdint.h>
#include <string.h>

#include "vfpga_dispatcher.h"
#include "vfpga_ddr.h"
#include "vfpga_hls.h"
#include "vfpga_pool.h"
#include "vfpga_stream.h"

#if !defined(VF_DREG_CTRL) || !defined(VF_DREG_MEM) || !defined(VF_DREG_MEM_BYTES) || !defined(VF_DREG_FILE)
#error "dispatcher register macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif

static_assert(VF_DREG_CTRL == 0x00 && VF_DREG_GIE == 0x04 && VF_DREG_IER == 0x08 && VF_DREG_ISR == 0x0c,
              "board config: ap_ctrl_hs registers are fixed by Vitis HLS at 0x00/0x04/0x08/0x0c");

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
#if VF_DDR_BANKS > 1
static_assert(VF_DREG_MEM1 + 8 <= VF_DREG_FILE, "bank port registers overlap the register file");
#endif
#if VF_DDR_BANKS > 2
static_assert(VF_DREG_MEM2 + 8 <= VF_DREG_FILE, "bank port registers overlap the register file");
#endif
#if VF_DDR_BANKS > 3
static_assert(VF_DREG_MEM3 + 8 <= VF_DREG_FILE, "bank port registers overlap the register file");
#endif

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

/* ---- the processes ----------------------------------------------------------- */

/* The clock request and answer between the dispatcher and the ticker. */
typedef vf_stream<uint8_t, 1> vf_ask_stream_t;
typedef vf_stream<uint64_t, 1> vf_time_stream_t;

#ifdef VF_VITIS_KERNEL
/* The kernel clock, counted (Vitis kernels have no clock input): every
 * cycle one count; a waiting request is answered with the count. */
static void vf_ticker_process(vf_ask_stream_t &ask, vf_time_stream_t &answer)
{
    static uint64_t t = 0;
TICK_LOOP:
    VF_HARDWARE_LOOP
    {
#pragma HLS PIPELINE II=1
        ++t;
        uint8_t q;
        if (ask.read_nb(q))
            answer.write_nb(t);
    }
}
#endif

static void vf_dispatcher_process(vf_ddr_t ddr, uint32_t *file,
#ifdef VF_VITIS_KERNEL
                                  vf_ask_stream_t &ask, vf_time_stream_t &answer,
#else
                                  volatile uint8_t *irq, volatile uint64_t *clock,
#endif
                                  vf_issue_stream_t issue[VF_POOL_CORES], vf_done_stream_t done[VF_POOL_CORES])
{
    /* dispatcher registers and state: all-zero is the reset state */
    static vf_disp_regs_t regs;
    static vf_disp_state_t state;
#ifdef VF_VITIS_KERNEL
    static uint64_t now = 0;
#endif
DISPATCH_LOOP:
    VF_HARDWARE_LOOP
    {
        vf_load_host(file, &regs);
#ifdef VF_VITIS_KERNEL
        uint64_t t;
        if (answer.read_nb(t))
            now = t;
        regs.g.cycles = now;
#else
        regs.g.cycles = *clock;
#endif
        vf_disp_report_t report;
        memset(&report, 0, sizeof report);
        vf_dispatcher_iteration(&regs, &state, ddr, issue, done, &report);
        vf_store_status(&regs, file);
#ifdef VF_VITIS_KERNEL
        ask.write_nb(1);
#else
        *irq = (uint8_t)regs.g.irq;
#endif
    }
}

/* A core of either kind on its own buffers. */
template <class Buffers>
static void vf_core_process(vf_ddr_t ddr, vf_issue_stream_t &issue, vf_done_stream_t &done, Buffers buffers)
{
CORE_LOOP:
    VF_HARDWARE_LOOP
    {
        vf_core_iteration(ddr, issue, done, &buffers);
    }
}

/* ---- the kernel ------------------------------------------------------------- */

void vf_dispatcher_top(VF_DISPATCHER_TOP_PARAMS)
{
    VF_DDR_PORT(mem, 0, VF_DREG_MEM)
#if VF_DDR_BANKS > 1
    VF_DDR_PORT(mem1, 1, VF_DREG_MEM1)
#endif
#if VF_DDR_BANKS > 2
    VF_DDR_PORT(mem2, 2, VF_DREG_MEM2)
#endif
#if VF_DDR_BANKS > 3
    VF_DDR_PORT(mem3, 3, VF_DREG_MEM3)
#endif
    VF_AXILITE(mem_bytes, VF_DREG_MEM_BYTES)
    VF_AXILITE(file, VF_DREG_FILE)
#ifdef VF_VITIS_KERNEL
    VF_PRAGMA(HLS INTERFACE ap_ctrl_chain port=return bundle=control)
#else
    VF_PRAGMA(HLS INTERFACE ap_none port=irq)
    VF_PRAGMA(HLS INTERFACE ap_none port=clock)
    VF_PRAGMA(HLS INTERFACE s_axilite port=return bundle=control)
#endif
    VF_PRAGMA(HLS DATAFLOW)

    /* the channels: one issue and one done stream per pool core */
    static vf_issue_stream_t issue[VF_POOL_CORES];
    static vf_done_stream_t done[VF_POOL_CORES];
#ifdef VF_VITIS_KERNEL
    static vf_ask_stream_t ask;
    static vf_time_stream_t answer;
#endif

    /* the cores' on-chip memories, one set per core, partitioned for their
     * lanes as in cnn_core_top.cpp and rnn_core_top.cpp */
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
    VF_CNN_PARTITIONS(2, ibuf, wbuf, obuf, acc)
    VF_URAM_IF(VF_URAM_IBUF, ibuf)
    VF_URAM_IF(VF_URAM_WBUF, wbuf)
    VF_URAM_IF(VF_URAM_ACC, acc)
    VF_URAM_IF(VF_URAM_OBUF, obuf)
    VF_URAM_IF(VF_URAM_PARAM, param)

    static int8_t rnn_wbuf[VF_RNN_CORES][VF_RNN_WBUF_BYTES];
    static int8_t rnn_vbuf[VF_RNN_CORES][VF_RNN_VBUF_BYTES];
    static int32_t rnn_acc[VF_RNN_CORES][VF_RNN_ACC_WORDS];
    static int32_t rnn_param[VF_RNN_CORES][VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS];
    static int32_t rnn_state[VF_RNN_CORES][VF_RNN_STATE_WORDS];
    static int32_t rnn_act[VF_RNN_CORES][VF_RNN_LANES][VF_RNN_ACT_WORDS]; /* a copy per gate lane */
    VF_PER_CORE(rnn_wbuf)
    VF_PER_CORE(rnn_vbuf)
    VF_PER_CORE(rnn_acc)
    VF_PER_CORE(rnn_param)
    VF_PER_CORE(rnn_state)
    VF_PER_CORE(rnn_act)
    VF_RNN_PARTITIONS(2, rnn_wbuf, rnn_vbuf, rnn_acc, rnn_state, rnn_act)
    VF_URAM_IF(VF_URAM_RNN_WBUF, rnn_wbuf)
    VF_URAM_IF(VF_URAM_RNN_VBUF, rnn_vbuf)
    VF_URAM_IF(VF_URAM_RNN_ACC, rnn_acc)
    VF_URAM_IF(VF_URAM_RNN_PARAM, rnn_param)
    VF_URAM_IF(VF_URAM_RNN_STATE, rnn_state)
    VF_URAM_IF(VF_URAM_RNN_ACT, rnn_act)

    vf_ddr_t ddr;
    ddr.port[0] = mem;
#if VF_DDR_BANKS > 1
    ddr.port[1] = mem1;
#endif
#if VF_DDR_BANKS > 2
    ddr.port[2] = mem2;
#endif
#if VF_DDR_BANKS > 3
    ddr.port[3] = mem3;
#endif
    ddr.bytes = mem_bytes;
    ddr.striped = 0; /* each tenant's segment says (VF_TENANT_STRIPED): vf_ddr_for */

#ifdef VF_VITIS_KERNEL
    vf_dispatcher_process(ddr, file, ask, answer, issue, done);
    vf_ticker_process(ask, answer);
#else
    vf_dispatcher_process(ddr, file, irq, clock, issue, done);
#endif
CNN_PROCESSES:
    for (uint32_t c = 0; c < VF_CNN_CORES; ++c) {
#pragma HLS UNROLL
        const vf_cnn_buffers_t b = {ibuf[c], wbuf[c], acc[c], obuf[c], param[c]};
        vf_core_process(ddr, issue[c], done[c], b);
    }
RNN_PROCESSES:
    for (uint32_t c = 0; c < VF_RNN_CORES; ++c) {
#pragma HLS UNROLL
        const vf_rnn_buffers_t b = {rnn_wbuf[c], rnn_vbuf[c], rnn_acc[c], rnn_param[c], rnn_state[c], &rnn_act[c][0][0]};
        vf_core_process(ddr, issue[VF_CNN_CORES + c], done[VF_CNN_CORES + c], b);
    }
}
