/*
 * The free-running pool: the processes of the dispatcher top and the one
 * dispatch semantics they implement (C++ only; the C API the emulator and
 * the simulator call through cffi is vfpga_dispatcher.h).
 *
 * ---- The machine ---------------------------------------------------------------
 * Processes connected by FIFO streams (vf_stream, vfpga_stream.h), one
 * issue stream and one done stream per pool core:
 *  - the dispatcher process; each iteration (vf_dispatcher_iteration):
 *      1. retires one frame whose core has reported its end: of several,
 *         the one issued first (earliest issue cycle, then the lowest core:
 *         the order the dispatcher issued them in) (vf_dispatch_retire);
 *      2. advances (vf_dispatch_advance: register handling, the walk,
 *         records, issue to idle cores);
 *      3. sends each issued frame to its core's issue stream;
 *    (the top wraps it with reading the driver's register words first and
 *    writing the dispatcher's words last, and the clock);
 *  - a core process per pool core; each iteration (vf_core_iteration): a
 *    frame waiting on its issue stream is run to its end (scrub, then
 *    vf_core_step until END or a fault: vf_dispatch_run_frame) and its
 *    result and counters go to its done stream.
 * Cores progress independently: a core whose frame ends is given its next
 * frame by the dispatcher's next iteration, whatever the other cores are
 * running. The dispatcher's state says which cores are busy, so it never
 * sends a core a second frame: depth-1 streams never block.
 *
 * ---- One machine in three places -------------------------------------------
 *  - the top (hls/dispatcher_top.cpp), in hardware: every process loops
 *    forever (VF_HARDWARE_LOOP) in a DATAFLOW region.
 *  - the top in C-simulation: one call runs one iteration of every process,
 *    the dispatcher first, then the cores in pool order. A frame issued in
 *    one call ends in that call and retires in a later one: the schedule in
 *    which every frame ends within one dispatcher iteration. The testbench
 *    also runs these iterations under other schedules (cores held busy for
 *    many iterations while others go on).
 *  - the emulator and the timing simulator (vfpga.runtime.hw.timeline): the
 *    same functions through cffi, scheduled by the cycle model. The
 *    dispatcher iterates until an iteration does nothing (on the board it
 *    loops far faster than a frame runs); then the modeled clock moves to
 *    the earliest frame end, that frame retires (of frames ending at the
 *    same cycle, the one issued first) and the dispatcher iterates again.
 * vf_dispatch_step() (vfpga_dispatcher.h) is the testbench's round-based
 * reference: an advance, then every frame it issued runs and retires, with
 * no advance in between. Its results equal the machine's under any
 * schedule (what the testbench checks); its rounds are not the top's.
 */
#ifndef VFPGA_POOL_H
#define VFPGA_POOL_H

#include <stdint.h>
#include <string.h>

#include "vfpga_dispatcher.h"
#include "vfpga_ddr.h"
#include "vfpga_hls.h"
#include "vfpga_stream.h"

/* ---- the dispatcher's C++ entry points over the bank ports ----------------- */

/* vf_dispatch_advance() with the dispatcher's accesses on the bank ports. */
uint32_t vf_dispatch_advance_ddr(vf_disp_regs_t *regs, vf_disp_state_t *state, const vf_ddr_t &ddr,
                                 vf_disp_frame_t *issued, vf_disp_report_t *report);

/* vf_dispatch_run_frame() / vf_dispatch_run_rnn_frame(): the frame's
 * segment through the port of its bank. */
void vf_dispatch_run_frame_ddr(const vf_ddr_t &ddr, const vf_disp_frame_t *frame, vf_cnn_buffers_t *buffers,
                               vf_core_state_t *result, vf_core_counters_t *counters, uint32_t *iters);
void vf_dispatch_run_frame_ddr(const vf_ddr_t &ddr, const vf_disp_frame_t *frame, vf_rnn_buffers_t *buffers,
                               vf_core_state_t *result, vf_core_counters_t *counters, uint32_t *iters);

/* ---- the processes' channels ------------------------------------------------ */

/* A core's end of frame: what vf_dispatch_retire takes. */
typedef struct {
    vf_core_state_t result;
    vf_core_counters_t counters;
} vf_disp_done_t;

typedef vf_stream<vf_disp_frame_t, 1> vf_issue_stream_t;
typedef vf_stream<vf_disp_done_t, 1> vf_done_stream_t;

/* ---- one iteration of each process ------------------------------------------- */

/* The dispatcher process (regs->g.cycles set by the caller). Returns the
 * iteration's progress (report->progress added to; report may be 0). */
static inline uint32_t vf_dispatcher_iteration(vf_disp_regs_t *regs, vf_disp_state_t *state, const vf_ddr_t &ddr,
                                               vf_issue_stream_t issue[VF_POOL_CORES],
                                               vf_done_stream_t done[VF_POOL_CORES], vf_disp_report_t *report)
{
    vf_disp_report_t scratch;
    vf_disp_report_t *rep = report;
    if (rep == 0) {
        memset(&scratch, 0, sizeof scratch);
        rep = &scratch;
    }
    const uint32_t before = rep->progress;
    /* the ended frame issued first: earliest issue cycle, then lowest core */
    uint32_t pick = VF_POOL_CORES;
RETIRE_ENDED:
    for (uint32_t c = 0; c < VF_POOL_CORES; ++c)
        if (!done[c].empty() &&
            (pick == VF_POOL_CORES || state->core[c].issued_at < state->core[pick].issued_at))
            pick = c;
    if (pick < VF_POOL_CORES) {
        vf_disp_done_t d = done[pick].read();
        vf_dispatch_retire(regs, state, pick, &d.result, &d.counters, rep);
    }
    vf_disp_frame_t issued[VF_POOL_CORES];
    const uint32_t mask = vf_dispatch_advance_ddr(regs, state, ddr, issued, rep);
ISSUE:
    for (uint32_t c = 0; c < VF_POOL_CORES; ++c)
        if ((mask >> c) & 1u)
            issue[c].write(issued[c]);
    return rep->progress - before;
}

/* A core process: runs the frame waiting on its issue stream, if any, and
 * reports its end. Returns whether it ran one. */
template <class Buffers>
static inline bool vf_core_iteration(const vf_ddr_t &ddr, vf_issue_stream_t &issue, vf_done_stream_t &done,
                                     Buffers *buffers)
{
    vf_disp_frame_t frame;
    if (!issue.read_nb(frame))
        return false;
    vf_disp_done_t d;
    vf_dispatch_run_frame_ddr(ddr, &frame, buffers, &d.result, &d.counters, 0);
    done.write(d);
    return true;
}

/* ---- the top (hls/dispatcher_top.cpp) ------------------------------------------ */

/* The register file's words (an s_axilite array of the top). */
#define VF_DREG_FILE_BYTES (VF_DREG_TENANT_BASE + VF_DISP_TENANTS * VF_DREG_TENANT_STRIDE)
#define VF_DREG_FILE_WORDS (VF_DREG_FILE_BYTES / 4)

/* Its ports: one m_axi pointer per DDR bank, then the window size, the
 * register file and, in the Vivado IP variant, the interrupt line and the
 * cycle counter input. */
#if VF_DDR_BANKS == 1
#define VF_DDR_PORT_PARAMS int8_t *mem
#elif VF_DDR_BANKS == 2
#define VF_DDR_PORT_PARAMS int8_t *mem, int8_t *mem1
#elif VF_DDR_BANKS == 3
#define VF_DDR_PORT_PARAMS int8_t *mem, int8_t *mem1, int8_t *mem2
#else
#define VF_DDR_PORT_PARAMS int8_t *mem, int8_t *mem1, int8_t *mem2, int8_t *mem3
#endif
#ifdef VF_VITIS_KERNEL
#define VF_DISPATCHER_TOP_PARAMS VF_DDR_PORT_PARAMS, uint64_t mem_bytes, uint32_t file[VF_DREG_FILE_WORDS]
#else
#define VF_DISPATCHER_TOP_PARAMS                                                                             \
    VF_DDR_PORT_PARAMS, uint64_t mem_bytes, uint32_t file[VF_DREG_FILE_WORDS], volatile uint8_t *irq,         \
        volatile uint64_t *clock
#endif

void vf_dispatcher_top(VF_DISPATCHER_TOP_PARAMS);

#endif /* VFPGA_POOL_H */
