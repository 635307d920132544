/*
 * vfpga level-1 dispatcher (Vitis HLS C++14).
 *
 * Implements include/vfpga_dispatcher.h: tenant contexts, request rings with
 * doorbells, the walk over each request's dispatch program (vf_dispatch_t of
 * vfpga_isa.h), the mapping of virtual slots onto the physical cores of a
 * tenant's mask, barriers, completion records and interrupt status, core-mask
 * changes at frame boundaries, and tenant faults. The header states the
 * contracts (formats, register map, life cycle, mask rule); this file adds how
 * a step runs.
 *
 * ---- One advance (vf_dispatch_advance) ----------------------------------------
 * Tenants are visited round-robin from st->rr. For tenant t:
 *  1. enable edge (DISABLED and control.enable): latch and check the segment
 *     and ring registers, ring_head := cpl_ack, apply core_mask.
 *     enable cleared while enabled: DRAINING, cores released.
 *  2. IDLE/RUNNING: a new mask_seq is handled (applied or rejected).
 *  3. doorbell check: ring_tail - cpl_ack <= ring_size and
 *     ring_head - cpl_ack <= ring_tail - cpl_ack, else VF_DFAULT_DOORBELL
 *     (the ring is then treated as invalid: no further records).
 *  4. the walk, at most VF_DISP_WALK_BUDGET entries/records:
 *       no request active: ring empty -> stop; tenant stopped (FAULTED or
 *         DRAINING) -> ABORTED record for request ring_head; else read the
 *         ring entry and start the request (pc = 0);
 *       request active and (tenant stopped or request failed): once no frame
 *         is in flight, its record (FAULT if it hit the fault, else ABORTED);
 *       else the entry at pc (pc == prog_entries counts as END):
 *         FRAME: core = (slot mod k)-th set bit of the active mask; issued if
 *                that core is idle, else the walk stops (in order);
 *         BARRIER / END: wait for no frame in flight, then pass / complete.
 *     With several requests active they are walked oldest first, each until
 *     it waits. A fault in a younger request leaves the tenant RUNNING
 *     ("stopping") until the older ones are recorded: the faulting request
 *     and those behind it neither issue nor start meanwhile.
 *  5. DRAINING with nothing in flight and every posted request recorded:
 *     DISABLED.
 * Then the global read-only registers (irq_status, irq, busy/owned cores) are
 * recomputed. vf_dispatch_retire() accounts a finished frame to its tenant and
 * turns a core fault into the tenant's fault.
 *
 * ---- Isolation ----------------------------------------------------------------
 * The dispatcher itself touches device memory only at: request ring entries
 * and completion records (areas checked inside the segment at enable, the
 * segment checked inside the window), and dispatch entries (each read checked
 * against seg_limit). Frames run on the core with the bank ports, the
 * segment's window offset and seg_limit; the core checks every access and
 * issues it on the port of its bank. The dispatcher's own accesses go through
 * the bank port of the address they touch (vf_seg_read / vf_seg_write at
 * segment offsets, striped segments word by word: vfpga_ddr.h). All offset arithmetic is 64-bit
 * on 32-bit fields, so nothing wraps. Out-of-range indices in the state
 * (a corrupted vf_disp_state_t) are ignored rather than followed.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vfpga_dispatcher.h"
#include "vfpga_core_kinds.h"
#include "vfpga_ddr.h"
#include "vfpga_hls.h"
#include "vfpga_pool.h"

#if !defined(VF_DISP_RING_MAX) || !defined(VF_DISP_WALK_BUDGET) || !defined(VF_DREG_TENANT_BASE) || \
    !defined(VF_DREG_TENANT_STRIDE)
#error "dispatcher macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif

static_assert(VF_DISP_TENANTS >= 8 && VF_DISP_TENANTS <= VF_IRQ_FAULT_SHIFT, "VF_DISP_TENANTS out of range");
static_assert(VF_CNN_CORES >= 1 && VF_RNN_CORES >= 0 && VF_POOL_CORES <= 32, "a core mask is one 32-bit register");
static_assert(VF_DISP_RING_MAX >= 1 && VF_DISP_RING_MAX <= (1 << 20) && (VF_DISP_RING_MAX & (VF_DISP_RING_MAX - 1)) == 0,
              "VF_DISP_RING_MAX must be a power of two <= 2^20");
static_assert(VF_DISP_WALK_BUDGET >= 1 && VF_DISP_WALK_BUDGET <= 65536, "VF_DISP_WALK_BUDGET out of range");
static_assert(VF_DISP_INFLIGHT >= 1 && VF_DISP_INFLIGHT <= 16, "VF_DISP_INFLIGHT out of range");

/* DDR formats */
static_assert(sizeof(vf_dispatch_t) == VF_DISP_ENTRY_BYTES, "dispatch entry size");
static_assert(sizeof(vf_disp_request_t) == VF_DISP_REQUEST_BYTES, "request entry size");
static_assert(sizeof(vf_disp_completion_t) == VF_DISP_RECORD_BYTES, "completion record size");

/* The register file is the board config's register map. */
static_assert(sizeof(vf_disp_global_regs_t) == VF_DREG_TENANT_BASE, "global block size != tenant_base");
static_assert(offsetof(vf_disp_regs_t, tenant) == VF_DREG_TENANT_BASE, "tenant_base");
static_assert(sizeof(vf_disp_tenant_regs_t) == VF_DREG_TENANT_STRIDE, "tenant_stride");
#define VF_CHECK_G(field, off) static_assert(offsetof(vf_disp_global_regs_t, field) == (off), "register " #field)
#define VF_CHECK_T(field, off) static_assert(offsetof(vf_disp_tenant_regs_t, field) == (off), "register " #field)
VF_CHECK_G(id, VF_DREG_G_ID);
VF_CHECK_G(version, VF_DREG_G_VERSION);
VF_CHECK_G(tenants, VF_DREG_G_TENANTS);
VF_CHECK_G(cores, VF_DREG_G_CORES);
VF_CHECK_G(irq_enable, VF_DREG_G_IRQ_ENABLE);
VF_CHECK_G(irq_mask, VF_DREG_G_IRQ_MASK);
VF_CHECK_G(irq_status, VF_DREG_G_IRQ_STATUS);
VF_CHECK_G(irq, VF_DREG_G_IRQ);
VF_CHECK_G(mem_base, VF_DREG_G_MEM_BASE);
VF_CHECK_G(steps, VF_DREG_G_STEPS);
VF_CHECK_G(frames, VF_DREG_G_FRAMES);
VF_CHECK_G(busy_cores, VF_DREG_G_BUSY_CORES);
VF_CHECK_G(owned_cores, VF_DREG_G_OWNED_CORES);
VF_CHECK_G(cycles, VF_DREG_G_CYCLES);
VF_CHECK_G(rnn_cores, VF_DREG_G_RNN_CORES);
VF_CHECK_T(control, VF_DREG_T_CONTROL);
VF_CHECK_T(seg_limit, VF_DREG_T_SEG_LIMIT);
VF_CHECK_T(seg_base, VF_DREG_T_SEG_BASE);
VF_CHECK_T(ring_offset, VF_DREG_T_RING_OFFSET);
VF_CHECK_T(ring_size, VF_DREG_T_RING_SIZE);
VF_CHECK_T(cpl_offset, VF_DREG_T_CPL_OFFSET);
VF_CHECK_T(ring_tail, VF_DREG_T_RING_TAIL);
VF_CHECK_T(cpl_ack, VF_DREG_T_CPL_ACK);
VF_CHECK_T(core_mask, VF_DREG_T_CORE_MASK);
VF_CHECK_T(mask_seq, VF_DREG_T_MASK_SEQ);
VF_CHECK_T(max_inflight, VF_DREG_T_MAX_INFLIGHT);
VF_CHECK_T(status, VF_DREG_T_STATUS);
VF_CHECK_T(ring_head, VF_DREG_T_RING_HEAD);
VF_CHECK_T(active_mask, VF_DREG_T_ACTIVE_MASK);
VF_CHECK_T(mask_done, VF_DREG_T_MASK_DONE);
VF_CHECK_T(mask_result, VF_DREG_T_MASK_RESULT);
VF_CHECK_T(mask_conflict, VF_DREG_T_MASK_CONFLICT);
VF_CHECK_T(fault, VF_DREG_T_FAULT);
VF_CHECK_T(fault_core, VF_DREG_T_FAULT_CORE);
VF_CHECK_T(fault_addr, VF_DREG_T_FAULT_ADDR);
VF_CHECK_T(fault_insn, VF_DREG_T_FAULT_INSN);
VF_CHECK_T(fault_entry, VF_DREG_T_FAULT_ENTRY);
VF_CHECK_T(fault_seq, VF_DREG_T_FAULT_SEQ);
VF_CHECK_T(fault_opcode, VF_DREG_T_FAULT_OPCODE);
VF_CHECK_T(inflight, VF_DREG_T_INFLIGHT);
VF_CHECK_T(requests, VF_DREG_T_REQUESTS);
VF_CHECK_T(failed, VF_DREG_T_FAILED);
VF_CHECK_T(frames, VF_DREG_T_FRAMES);
VF_CHECK_T(barriers, VF_DREG_T_BARRIERS);
VF_CHECK_T(insns, VF_DREG_T_INSNS);
VF_CHECK_T(load_iters, VF_DREG_T_LOAD_ITERS);
VF_CHECK_T(compute_iters, VF_DREG_T_COMPUTE_ITERS);
VF_CHECK_T(save_iters, VF_DREG_T_SAVE_ITERS);
VF_CHECK_T(core_cycles, VF_DREG_T_CORE_CYCLES);
VF_CHECK_T(request_cycles, VF_DREG_T_REQUEST_CYCLES);

/* Dispatch entries and request ring entries a walk reads in one burst
 * (32 x 8 and 16 x 16 bytes). */
#define VF_DISP_PREFETCH 32
#define VF_DISP_PREFETCH_REQUESTS 16

#define VF_ALL_CORES (VF_POOL_CORES == 32 ? 0xffffffffu : ((1u << (VF_POOL_CORES % 32)) - 1u))
#define VF_CNN_MASK (VF_CNN_CORES == 32 ? 0xffffffffu : ((1u << (VF_CNN_CORES % 32)) - 1u))
#define VF_RNN_MASK (VF_ALL_CORES & ~(uint32_t)VF_CNN_MASK)

/* ========================================================================== */
/* Helpers                                                                     */
/* ========================================================================== */

static inline uint32_t vf_sat32(uint64_t v) { return v > 0xffffffffull ? 0xffffffffu : (uint32_t)v; }

/* [start, start + len) inside [0, size)? */
static inline bool vf_fits(uint64_t start, uint64_t len, uint64_t size) { return start <= size && len <= size - start; }

static inline uint64_t vf_max64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static inline uint32_t vf_popcount(uint32_t m)
{
    uint32_t n = 0;
POPCOUNT:
    for (uint32_t c = 0; c < 32; ++c)
        n += (m >> c) & 1u;
    return n;
}

/* Index of the n-th set bit of m (n < popcount(m)), else VF_DISP_NO_CORE. */
static inline uint32_t vf_nth_core(uint32_t m, uint32_t n)
{
    uint32_t seen = 0;
NTH_CORE:
    for (uint32_t c = 0; c < VF_POOL_CORES; ++c) {
        if ((m >> c) & 1u) {
            if (seen == n)
                return c;
            ++seen;
        }
    }
    return VF_DISP_NO_CORE;
}

static inline bool vf_stopped(const vf_disp_tenant_state_t &s)
{
    return s.phase == VF_TENANT_FAULTED || s.phase == VF_TENANT_DRAINING;
}

static inline bool vf_enabled_phase(const vf_disp_tenant_state_t &s)
{
    return s.phase == VF_TENANT_IDLE || s.phase == VF_TENANT_RUNNING;
}

/* ========================================================================== */
/* Faults, records, masks                                                      */
/* ========================================================================== */

static inline vf_disp_req_state_t &vf_req(vf_disp_tenant_state_t &s, uint32_t seq)
{
    return s.req[seq % VF_DISP_INFLIGHT];
}

/* Is request seq active? */
static inline bool vf_req_active(const vf_disp_tenant_state_t &s, uint32_t seq) { return seq - s.head < s.nreq; }

/* The first fault since enable is kept; any fault fails request seq (when
 * it is active) and stops the tenant, releasing its cores. */
static void vf_tenant_fault(vf_disp_regs_t *regs, vf_disp_state_t *st, uint32_t t, uint32_t code, uint32_t core,
                            uint64_t addr, uint32_t insn, uint32_t entry, uint32_t opcode, uint32_t seq,
                            vf_disp_report_t *rep)
{
    vf_disp_tenant_state_t &s = st->tenant[t];
    vf_disp_tenant_regs_t &r = regs->tenant[t];
    if (s.fault == VF_FAULT_NONE) {
        s.fault = code;
        r.fault = code;
        r.fault_core = core;
        r.fault_addr = vf_sat32(addr);
        r.fault_insn = insn;
        r.fault_entry = entry;
        r.fault_seq = seq;
        r.fault_opcode = opcode;
    }
    rep->faults += 1;
    rep->progress += 1;
    const bool active = vf_req_active(s, seq);
    if (active)
        vf_req(s, seq).failed = 1;
    if (!vf_enabled_phase(s))
        return;
    if (active && seq != s.head) {
        /* older requests finish first; the tenant stops when it is the oldest */
        if (!s.stopping || seq - s.head < s.stop_seq - s.head)
            s.stop_seq = seq;
        s.stopping = 1;
        return;
    }
    s.phase = VF_TENANT_FAULTED;
    s.active_mask = 0;
    s.stopping = 0;
}

/* Requests at or behind a pending stop neither issue nor start. */
static inline bool vf_behind_stop(const vf_disp_tenant_state_t &s, uint32_t seq)
{
    /* a disable while stopping drains every request as usual */
    return s.stopping && vf_enabled_phase(s) && seq - s.head >= s.stop_seq - s.head;
}

/* Whether two latched segments share a byte: a contiguous segment is one
 * range, a striped one a range of vf_seg_span bytes in each of its banks. */
static bool vf_segs_overlap(const vf_disp_tenant_state_t &a, const vf_disp_tenant_state_t &b, const vf_ddr_t &ddr)
{
    const uint64_t sa = vf_seg_span(vf_ddr_for(ddr, a.striped), a.seg_limit);
    const uint64_t sb = vf_seg_span(vf_ddr_for(ddr, b.striped), b.seg_limit);
    bool hit = false;
OVERLAP_PARTS:
    for (uint32_t p = 0; p < VF_SEG_PARTS; ++p)
        for (uint32_t q = 0; q < VF_SEG_PARTS; ++q) {
            if ((p > 0 && !a.striped) || (q > 0 && !b.striped))
                continue;
            const uint64_t x = a.seg_win + (uint64_t)p * VF_DDR_BANK_STRIDE;
            const uint64_t y = b.seg_win + (uint64_t)q * VF_DDR_BANK_STRIDE;
            hit = hit || (x < y + sb && y < x + sa);
        }
    return hit;
}

/* segment offset of the ring entry of request seq */
static inline uint64_t vf_ring_addr(const vf_disp_tenant_state_t &s, uint32_t seq)
{
    return s.ring_offset + (uint64_t)(seq & (s.ring_size - 1u)) * VF_DISP_REQUEST_BYTES;
}

/* n ring entries from seq on (not past the ring's end). */
static void vf_read_requests(const vf_ddr_t &ddr, const vf_disp_tenant_state_t &s, uint32_t seq,
                             vf_disp_request_t *q, uint32_t n)
{
    vf_seg_read(vf_ddr_for(ddr, s.striped), s.seg_win, vf_ring_addr(s, seq), q, n * VF_DISP_REQUEST_BYTES);
}

/* The record of request s.head; s.ring_ok is required. status VF_CPL_*;
 * q: the request ran (its counters are reported), else 0. */
static void vf_write_record(const vf_ddr_t &ddr, const vf_disp_tenant_state_t &s, const vf_disp_tenant_regs_t &r,
                            uint32_t request_id, uint32_t status, const vf_disp_req_state_t *q, uint64_t now)
{
    vf_disp_completion_t c;
    memset(&c, 0, sizeof c);
    c.request_id = request_id;
    c.seq = s.head;
    c.status = status;
    c.fault_core = VF_DISP_NO_CORE;
    if (status != VF_CPL_OK) {
        if (s.fault != VF_FAULT_NONE) {
            c.fault = r.fault;
            c.fault_core = r.fault_core;
            c.fault_addr = r.fault_addr;
            c.fault_insn = r.fault_insn;
            c.fault_entry = r.fault_entry;
            c.fault_opcode = r.fault_opcode;
        } else {
            c.fault = VF_DFAULT_DISABLED;
        }
    }
    if (q != 0) {
        c.frames = q->frames;
        c.barriers = q->barriers;
        c.insns = vf_sat32(q->insns);
        c.load_iters = vf_sat32(q->load_iters);
        c.compute_iters = vf_sat32(q->compute_iters);
        c.save_iters = vf_sat32(q->save_iters);
        c.cycles = vf_sat32(now >= q->start ? now - q->start : 0);
    }
    const uint64_t at = s.cpl_offset + (uint64_t)(s.head & (s.ring_size - 1u)) * VF_DISP_RECORD_BYTES;
    vf_seg_write(vf_ddr_for(ddr, s.striped), s.seg_win, at, &c, sizeof c);
}

/* The oldest request (q, at s.head) ran to its END: its OK record and accounting. */
static void vf_record_ok(const vf_ddr_t &ddr, vf_disp_tenant_state_t &s, vf_disp_tenant_regs_t &r,
                         const vf_disp_req_state_t &q, uint64_t now, vf_disp_report_t *rep)
{
    vf_write_record(ddr, s, r, q.request_id, VF_CPL_OK, &q, now);
    r.request_cycles += now >= q.start ? now - q.start : 0;
    s.head += 1;
    s.nreq -= 1;
    r.requests += 1;
    rep->requests_ok += 1;
    rep->progress += 1;
}

/* core_mask -> active_mask, or a rejection. */
static void vf_apply_mask(vf_disp_regs_t *regs, vf_disp_state_t *st, uint32_t t, vf_disp_report_t *rep)
{
    vf_disp_tenant_regs_t &r = regs->tenant[t];
    const uint32_t m = r.core_mask;
    rep->progress += 1;
    const uint32_t range = m & ~(uint32_t)VF_ALL_CORES;
    if (range != 0) {
        r.mask_result = VF_MASK_REJECT_RANGE;
        r.mask_conflict = range;
        rep->masks_rejected += 1;
        return;
    }
    if ((m & VF_CNN_MASK) != 0 && (m & VF_RNN_MASK) != 0) {
        r.mask_result = VF_MASK_REJECT_KIND;
        r.mask_conflict = m & VF_RNN_MASK;
        rep->masks_rejected += 1;
        return;
    }
    uint32_t held = 0;
HELD:
    for (uint32_t u = 0; u < VF_DISP_TENANTS; ++u)
        if (u != t)
            held |= st->tenant[u].active_mask;
    if ((m & held) != 0) {
        r.mask_result = VF_MASK_REJECT_CONFLICT;
        r.mask_conflict = m & held;
        rep->masks_rejected += 1;
        return;
    }
    st->tenant[t].active_mask = m;
    r.mask_result = VF_MASK_APPLIED;
    r.mask_conflict = 0;
    rep->masks_applied += 1;
}

/* The enable edge: latch, check, start the ring at cpl_ack, apply the mask. */
static void vf_enable(vf_disp_regs_t *regs, vf_disp_state_t *st, uint32_t t, const vf_ddr_t &ddr,
                      vf_disp_report_t *rep)
{
    const uint64_t win_bytes = ddr.bytes;
    vf_disp_tenant_state_t &s = st->tenant[t];
    vf_disp_tenant_regs_t &r = regs->tenant[t];
    const uint32_t gen = s.gen + 1u;
    memset(&s, 0, sizeof s);
    s.gen = gen;
    s.phase = VF_TENANT_IDLE;
    s.head = r.cpl_ack;
    s.mask_done = r.mask_seq;
    s.seg_limit = r.seg_limit;
    s.ring_offset = r.ring_offset;
    s.ring_size = r.ring_size;
    s.cpl_offset = r.cpl_offset;
    s.max_inflight = r.max_inflight == 0 ? 1u : r.max_inflight > VF_DISP_INFLIGHT ? VF_DISP_INFLIGHT : r.max_inflight;
    r.fault = VF_FAULT_NONE;
    r.fault_core = VF_DISP_NO_CORE;
    r.fault_addr = 0;
    r.fault_insn = 0;
    r.fault_entry = 0;
    r.fault_seq = 0;
    r.fault_opcode = 0;
    r.mask_result = VF_MASK_NONE;
    r.mask_conflict = 0;
    r.requests = 0;
    r.failed = 0;
    r.frames = 0;
    r.barriers = 0;
    r.insns = 0;
    r.load_iters = 0;
    r.compute_iters = 0;
    r.save_iters = 0;
    r.core_cycles = 0;
    r.request_cycles = 0;
    rep->progress += 1;

    /* the segment inside the window */
    const uint64_t base = r.seg_base, mem_base = regs->g.mem_base;
    if (base < mem_base) {
        vf_tenant_fault(regs, st, t, VF_DFAULT_WINDOW, VF_DISP_NO_CORE, 0, 0, 0, 0, s.head, rep);
        return;
    }
    s.seg_win = base - mem_base;
    s.striped = VF_SEG_PARTS > 1 && (r.control & VF_TENANT_STRIPED) != 0;
    const vf_ddr_t sd = vf_ddr_for(ddr, s.striped);
    if (s.striped) {
        /* ... every part inside the window and its own bank */
        const uint64_t first = s.seg_limit == 0 ? 0 : vf_seg_first_out_striped(sd, s.seg_win, s.seg_limit);
        if (first < s.seg_limit || s.seg_limit == 0) {
            vf_tenant_fault(regs, st, t, VF_DFAULT_WINDOW, VF_DISP_NO_CORE, first, 0, 0, 0, s.head, rep);
            return;
        }
    } else if (s.seg_limit == 0 || !vf_fits(s.seg_win, s.seg_limit, win_bytes)) {
        const uint64_t first = s.seg_limit == 0 || s.seg_win >= win_bytes ? 0 : win_bytes - s.seg_win;
        vf_tenant_fault(regs, st, t, VF_DFAULT_WINDOW, VF_DISP_NO_CORE, first, 0, 0, 0, s.head, rep);
        return;
    }
    /* ... inside one bank: its frames reach it through that bank's port */
    const uint32_t bank = vf_ddr_bank(s.seg_win);
    if (!s.striped && vf_ddr_bank(s.seg_win + s.seg_limit - 1u) != bank) {
        const uint64_t next = (uint64_t)(bank + 1u) * (uint64_t)VF_DDR_BANK_STRIDE;
        vf_tenant_fault(regs, st, t, VF_DFAULT_WINDOW, VF_DISP_NO_CORE, next - s.seg_win, 0, 0, 0, s.head, rep);
        return;
    }
    /* ... and apart from every live tenant's segment */
OVERLAP:
    for (uint32_t u = 0; u < VF_DISP_TENANTS; ++u) {
        const vf_disp_tenant_state_t &o = st->tenant[u];
        if (u == t || o.phase == VF_TENANT_DISABLED || !o.seg_ok)
            continue;
        if (vf_segs_overlap(s, o, ddr)) {
            vf_tenant_fault(regs, st, t, VF_DFAULT_OVERLAP, VF_DISP_NO_CORE, 0, 0, u, 0, s.head, rep);
            return;
        }
    }
    s.seg_ok = 1;

    /* the ring and the records inside the segment */
    const uint64_t n = s.ring_size, limit = s.seg_limit;
    if (n == 0 || n > VF_DISP_RING_MAX || (n & (n - 1)) != 0) {
        vf_tenant_fault(regs, st, t, VF_DFAULT_RING, VF_DISP_NO_CORE, n, 0, 0, 0, s.head, rep);
        return;
    }
    if (s.ring_offset % VF_DISP_REQUEST_BYTES != 0) {
        vf_tenant_fault(regs, st, t, VF_DFAULT_RING, VF_DISP_NO_CORE, s.ring_offset, 0, 0, 0, s.head, rep);
        return;
    }
    if (!vf_fits(s.ring_offset, n * VF_DISP_REQUEST_BYTES, limit)) {
        vf_tenant_fault(regs, st, t, VF_DFAULT_RING, VF_DISP_NO_CORE, vf_max64(s.ring_offset, limit), 0, 0, 0,
                        s.head, rep);
        return;
    }
    if (s.cpl_offset % VF_DISP_RECORD_BYTES != 0) {
        vf_tenant_fault(regs, st, t, VF_DFAULT_RING, VF_DISP_NO_CORE, s.cpl_offset, 0, 0, 0, s.head, rep);
        return;
    }
    if (!vf_fits(s.cpl_offset, n * VF_DISP_RECORD_BYTES, limit)) {
        vf_tenant_fault(regs, st, t, VF_DFAULT_RING, VF_DISP_NO_CORE, vf_max64(s.cpl_offset, limit), 0, 0, 0,
                        s.head, rep);
        return;
    }
    s.ring_ok = 1;
    vf_apply_mask(regs, st, t, rep);
}

/* ========================================================================== */
/* The walk of one tenant                                                      */
/* ========================================================================== */

static void vf_mirror_tenant(vf_disp_regs_t *regs, vf_disp_state_t *st, uint32_t t)
{
    vf_disp_tenant_state_t &s = st->tenant[t];
    vf_disp_tenant_regs_t &r = regs->tenant[t];
    if (vf_enabled_phase(s)) {
        const bool busy = s.nreq != 0 || s.inflight != 0 || (s.ring_ok && s.head != r.ring_tail);
        s.phase = busy ? VF_TENANT_RUNNING : VF_TENANT_IDLE;
    }
    r.status = s.phase;
    r.ring_head = s.head;
    r.active_mask = s.active_mask;
    r.mask_done = s.mask_done;
    r.inflight = s.inflight;
}

static void vf_advance_tenant(vf_disp_regs_t *regs, vf_disp_state_t *st, uint32_t t, const vf_ddr_t &ddr,
                              vf_disp_frame_t *issued, uint32_t *issued_mask, vf_disp_report_t *rep)
{
    const uint64_t win_bytes = ddr.bytes;
    vf_disp_tenant_state_t &s = st->tenant[t];
    vf_disp_tenant_regs_t &r = regs->tenant[t];
    const bool enable = (r.control & VF_TENANT_ENABLE) != 0;

    /* 1. enable / disable */
    if (s.phase == VF_TENANT_DISABLED) {
        if (!enable) {
            vf_mirror_tenant(regs, st, t);
            return;
        }
        vf_enable(regs, st, t, ddr, rep);
    } else if (!enable && s.phase != VF_TENANT_DRAINING) {
        s.phase = VF_TENANT_DRAINING;
        s.active_mask = 0;
        rep->progress += 1;
    }

    /* the window may only shrink under a buggy caller: never follow a
     * latched segment out of it */
    const uint64_t reach = s.phase == VF_TENANT_DISABLED || !s.seg_ok ? s.seg_limit
                           : s.striped ? vf_seg_first_out_striped(vf_ddr_for(ddr, 1), s.seg_win, s.seg_limit)
                           : vf_fits(s.seg_win, s.seg_limit, win_bytes) ? s.seg_limit
                           : s.seg_win >= win_bytes ? 0 : win_bytes - s.seg_win;
    if (reach < s.seg_limit) {
        vf_tenant_fault(regs, st, t, VF_DFAULT_WINDOW, VF_DISP_NO_CORE, reach, 0, 0, 0, s.head, rep);
        s.seg_ok = 0;
        s.ring_ok = 0;
    }

    /* 2. a core-mask request */
    if (vf_enabled_phase(s) && r.mask_seq != s.mask_done) {
        s.mask_done = r.mask_seq;
        vf_apply_mask(regs, st, t, rep);
    }

    /* 3. the doorbell */
    if (s.ring_ok) {
        const uint32_t span_tail = r.ring_tail - r.cpl_ack, span_head = s.head - r.cpl_ack;
        if (span_tail > s.ring_size || span_head > span_tail) {
            vf_tenant_fault(regs, st, t, VF_DFAULT_DOORBELL, VF_DISP_NO_CORE, r.ring_tail, 0, r.cpl_ack, 0, s.head, rep);
            s.ring_ok = 0;
        }
    }

    /* 4. the walk: active requests oldest first (i indexes them from head),
     * each until it waits; then the next posted request, if there is room.
     * Its ring and dispatch entries come from on-chip buffers filled a burst
     * at a time, kept for this walk only and emptied by its own record
     * writes: a frame that rewrites its request's entries is seen from the
     * next walk on (C-sim runs no frame during a walk) */
    vf_dispatch_t pf[VF_DISP_PREFETCH];
    uint64_t pf_at = 0; /* segment offset of pf[0] */
    uint32_t pf_n = 0;  /* entries held */
    vf_disp_request_t pq[VF_DISP_PREFETCH_REQUESTS];
    uint32_t pq_seq = 0; /* ring sequence number of pq[0] */
    uint32_t pq_n = 0;   /* requests held */
    uint32_t budget = VF_DISP_WALK_BUDGET;
    uint32_t i = 0;
WALK:
    while (budget > 0) {
        if (s.stopping && s.head == s.stop_seq && vf_enabled_phase(s)) {
            /* every request older than the faulting one is recorded: stop */
            s.phase = VF_TENANT_FAULTED;
            s.active_mask = 0;
            s.stopping = 0;
            rep->progress += 1;
        }
        if (i >= s.nreq) {
            /* a stopped tenant with requests active records them first, in order */
            if (s.nreq >= s.max_inflight || ((vf_stopped(s) || s.stopping) && s.nreq != 0))
                break;
            const uint32_t seq = s.head + s.nreq;
            if (!s.ring_ok || seq == r.ring_tail)
                break;
            if (pq_n == 0 || seq - pq_seq >= pq_n) {
                /* one burst: the posted requests from seq up to the tail or the ring's end */
                const uint32_t posted = r.ring_tail - seq, to_end = s.ring_size - (seq & (s.ring_size - 1u));
                const uint32_t n = posted < to_end ? posted : to_end;
                pq_n = n < VF_DISP_PREFETCH_REQUESTS ? n : VF_DISP_PREFETCH_REQUESTS;
                pq_seq = seq;
                vf_read_requests(ddr, s, seq, pq, pq_n);
            }
            const vf_disp_request_t q = pq[seq - pq_seq];
            rep->ring_reads += 1;
            --budget;
            if (vf_stopped(s)) {
                /* the tenant is stopped: every posted request is reported */
                vf_write_record(ddr, s, r, q.request_id, VF_CPL_ABORTED, 0, regs->g.cycles);
                pf_n = 0;
                pq_n = 0;
                s.head += 1;
                r.failed += 1;
                rep->requests_aborted += 1;
                rep->progress += 1;
                continue;
            }
            vf_disp_req_state_t &n = vf_req(s, seq);
            memset(&n, 0, sizeof n);
            n.request_id = q.request_id;
            n.prog_offset = q.prog_offset;
            n.prog_entries = q.prog_entries;
            n.start = regs->g.cycles;
            s.nreq += 1;
            rep->requests_started += 1;
            rep->progress += 1;
            if (q.prog_offset % VF_DISP_ENTRY_BYTES != 0 || q.flags != 0)
                vf_tenant_fault(regs, st, t, VF_DFAULT_REQUEST, VF_DISP_NO_CORE, vf_ring_addr(s, seq),
                                0, 0, 0, seq, rep);
            continue;
        }

        const uint32_t seq = s.head + i;
        vf_disp_req_state_t &q = vf_req(s, seq);
        if (vf_behind_stop(s, seq))
            break; /* the older requests go on; this one and those behind it wait for the stop */
        if (vf_stopped(s) || q.failed) {
            /* records in order: the oldest ends once its frames in flight
             * have retired */
            if (i != 0 || q.inflight != 0)
                break;
            if (!s.ring_ok) {
                /* no record can be written: the active requests are dropped
                 * once nothing of the tenant is in flight */
                if (s.inflight != 0)
                    break;
                --budget;
                s.nreq = 0;
                rep->progress += 1;
                continue;
            }
            --budget;
            {
                const uint32_t status = q.failed ? VF_CPL_FAULT : VF_CPL_ABORTED;
                vf_write_record(ddr, s, r, q.request_id, status, &q, regs->g.cycles);
                pf_n = 0;
                pq_n = 0;
                s.head += 1;
                r.failed += 1;
                if (status == VF_CPL_FAULT)
                    rep->requests_failed += 1;
                else
                    rep->requests_aborted += 1;
            }
            s.nreq -= 1;
            rep->progress += 1;
            continue;
        }
        if (q.done) {
            /* passed END: recorded when it is the oldest */
            if (i != 0) {
                ++i;
                continue;
            }
            --budget;
            vf_record_ok(ddr, s, r, q, regs->g.cycles, rep);
            pf_n = 0;
            pq_n = 0;
            continue;
        }

        /* the next dispatch entry; past the end of the program means END */
        vf_dispatch_t e;
        e.frame_offset = 0;
        e.n_insns = 0;
        e.slot = 0;
        e.op = VF_DISPATCH_END;
        const uint64_t at = (uint64_t)q.prog_offset + (uint64_t)q.pc * VF_DISP_ENTRY_BYTES;
        --budget;
        if (q.pc < q.prog_entries) {
            if (!vf_fits(at, VF_DISP_ENTRY_BYTES, s.seg_limit)) {
                vf_tenant_fault(regs, st, t, VF_DFAULT_PROGRAM, VF_DISP_NO_CORE, vf_max64(at, s.seg_limit), 0, q.pc,
                                0, seq, rep);
                continue;
            }
            const bool held = pf_n != 0 && at >= pf_at && (at - pf_at) % VF_DISP_ENTRY_BYTES == 0 &&
                              (at - pf_at) / VF_DISP_ENTRY_BYTES < pf_n;
            if (!held) {
                /* one burst: this entry and the next ones of the program inside the segment */
                const uint64_t fit = (s.seg_limit - at) / VF_DISP_ENTRY_BYTES, left = q.prog_entries - q.pc;
                const uint64_t n = fit < left ? fit : left;
                pf_n = n < VF_DISP_PREFETCH ? (uint32_t)n : VF_DISP_PREFETCH;
                pf_at = at;
                vf_seg_read(vf_ddr_for(ddr, s.striped), s.seg_win, at, pf, pf_n * VF_DISP_ENTRY_BYTES);
            }
            e = pf[(at - pf_at) / VF_DISP_ENTRY_BYTES];
            rep->entries += 1;
        }

        if (e.op == VF_DISPATCH_FRAME) {
            if (e.n_insns == 0) {
                vf_tenant_fault(regs, st, t, VF_DFAULT_ENTRY, VF_DISP_NO_CORE, at, 0, q.pc, 0, seq, rep);
                continue;
            }
            if (!vf_fits(e.frame_offset, (uint64_t)e.n_insns * VF_INSN_BYTES, s.seg_limit)) {
                vf_tenant_fault(regs, st, t, VF_DFAULT_FRAME, VF_DISP_NO_CORE, vf_max64(e.frame_offset, s.seg_limit),
                                0, q.pc, 0, seq, rep);
                continue;
            }
            const uint32_t k = vf_popcount(s.active_mask);
            if (k == 0 || issued == 0)
                break; /* no core: wait for a mask */
            const uint32_t c = vf_nth_core(s.active_mask, (uint32_t)e.slot % k);
            if (c >= VF_POOL_CORES)
                break;
            vf_disp_core_state_t &core = st->core[c];
            if (core.busy) {
                ++i; /* in order: this request waits for the core, a younger one may go on */
                continue;
            }
            const bool scrub = core.last_owner != 0 && (core.last_owner != t + 1u || core.last_gen != s.gen);
            vf_disp_frame_t &f = issued[c];
            f.seg_win = s.seg_win;
            f.seg_limit = s.seg_limit;
            f.striped = s.striped;
            f.frame_offset = e.frame_offset;
            f.n_insns = e.n_insns;
            f.tenant = t;
            f.core = c;
            f.seq = seq;
            f.entry = q.pc;
            f.scrub = scrub ? 1u : 0u;
            core.busy = 1;
            core.tenant = t;
            core.gen = s.gen;
            core.entry = q.pc;
            core.seq = seq;
            core.last_owner = t + 1u;
            core.last_gen = s.gen;
            core.issued_at = regs->g.cycles;
            *issued_mask |= 1u << c;
            s.inflight += 1;
            q.inflight += 1;
            q.frames += 1;
            q.pc += 1;
            r.frames += 1;
            regs->g.frames += 1;
            rep->frames_issued += 1;
            rep->scrubs += scrub ? 1u : 0u;
            rep->progress += 1;
        } else if (e.op == VF_DISPATCH_BARRIER) {
            if (q.inflight != 0) {
                ++i;
                continue;
            }
            q.pc += 1;
            q.barriers += 1;
            r.barriers += 1;
            rep->barriers += 1;
            rep->progress += 1;
        } else if (e.op == VF_DISPATCH_END) {
            if (q.inflight != 0) {
                ++i;
                continue;
            }
            if (i != 0) {
                q.done = 1; /* a younger request finished first: it waits to be recorded */
                ++i;
                rep->progress += 1;
                continue;
            }
            vf_record_ok(ddr, s, r, q, regs->g.cycles, rep);
            pf_n = 0;
            pq_n = 0;
        } else {
            vf_tenant_fault(regs, st, t, VF_DFAULT_ENTRY, VF_DISP_NO_CORE, at, 0, q.pc, 0, seq, rep);
        }
    }

    /* 5. a disable completes */
    if (s.phase == VF_TENANT_DRAINING && s.inflight == 0 && s.nreq == 0 && (!s.ring_ok || s.head == r.ring_tail)) {
        s.phase = VF_TENANT_DISABLED;
        rep->progress += 1;
    }
    vf_mirror_tenant(regs, st, t);
}

/* Global read-only registers. */
static void vf_update_globals(vf_disp_regs_t *regs, const vf_disp_state_t *st)
{
    regs->g.id = VF_DISP_ID;
    regs->g.version = VF_DISP_VERSION;
    regs->g.tenants = VF_DISP_TENANTS;
    regs->g.cores = VF_CNN_CORES;
    regs->g.rnn_cores = VF_RNN_CORES;
    uint32_t isr = 0, owned = 0, busy = 0;
GLOBAL_TENANTS:
    for (uint32_t t = 0; t < VF_DISP_TENANTS; ++t) {
        const vf_disp_tenant_state_t &s = st->tenant[t];
        if (s.phase != VF_TENANT_DISABLED && s.head != regs->tenant[t].cpl_ack)
            isr |= 1u << t;
        if (s.phase == VF_TENANT_FAULTED)
            isr |= 1u << (VF_IRQ_FAULT_SHIFT + t);
        owned |= s.active_mask;
    }
    uint32_t bit = 1;
GLOBAL_CORES:
    for (uint32_t c = 0; c < VF_POOL_CORES; ++c, bit <<= 1)
        if (st->core[c].busy)
            busy |= bit;
    regs->g.irq_status = isr;
    regs->g.irq = ((regs->g.irq_enable & 1u) != 0 && (isr & regs->g.irq_mask) != 0) ? 1u : 0u;
    regs->g.busy_cores = busy;
    regs->g.owned_cores = owned;
}

/* ========================================================================== */
/* Entry points                                                                */
/* ========================================================================== */

void vf_dispatch_geometry(vf_disp_geometry_t *geometry)
{
    geometry->tenants = VF_DISP_TENANTS;
    geometry->cores = VF_CNN_CORES;
    geometry->rnn_cores = VF_RNN_CORES;
    geometry->ring_max = VF_DISP_RING_MAX;
    geometry->walk_budget = VF_DISP_WALK_BUDGET;
    geometry->regs_bytes = (uint32_t)sizeof(vf_disp_regs_t);
    geometry->tenant_base = VF_DREG_TENANT_BASE;
    geometry->tenant_stride = VF_DREG_TENANT_STRIDE;
    geometry->request_bytes = VF_DISP_REQUEST_BYTES;
    geometry->record_bytes = VF_DISP_RECORD_BYTES;
    geometry->inflight = VF_DISP_INFLIGHT;
}

void vf_dispatch_reset(vf_disp_regs_t *regs, vf_disp_state_t *state)
{
    if (regs == 0 || state == 0)
        return;
    memset(regs, 0, sizeof *regs);
    memset(state, 0, sizeof *state);
    vf_update_globals(regs, state);
}

uint32_t vf_dispatch_advance_ddr(vf_disp_regs_t *regs, vf_disp_state_t *state, const vf_ddr_t &ddr,
                                 vf_disp_frame_t *issued, vf_disp_report_t *report)
{
    if (regs == 0 || state == 0)
        return 0;
    vf_disp_report_t scratch;
    vf_disp_report_t *rep = report;
    if (rep == 0) {
        memset(&scratch, 0, sizeof scratch);
        rep = &scratch;
    }
    uint32_t issued_mask = 0;
    const uint32_t first = state->rr < VF_DISP_TENANTS ? state->rr : 0;
TENANTS:
    for (uint32_t i = 0; i < VF_DISP_TENANTS; ++i) {
        const uint32_t t = (first + i) % VF_DISP_TENANTS;
        vf_advance_tenant(regs, state, t, ddr, issued, &issued_mask, rep);
    }
    state->rr = (first + 1u) % VF_DISP_TENANTS;
    regs->g.steps += 1;
    vf_update_globals(regs, state);
    rep->issued_cores |= issued_mask;
    return issued_mask;
}

uint32_t vf_dispatch_advance(vf_disp_regs_t *regs, vf_disp_state_t *state, int8_t *mem, uint64_t mem_bytes,
                             vf_disp_frame_t *issued, vf_disp_report_t *report)
{
    return vf_dispatch_advance_ddr(regs, state, vf_ddr_window(mem, mem_bytes), issued, report);
}

/* Runs an issued frame on a core of either kind (the type of its buffers):
 * scrubs them if asked, then steps the frame's instructions until END or a
 * fault. */
template <class Buffers>
static void vf_run_frame(const vf_ddr_t &ddr, const vf_disp_frame_t *frame, Buffers *buffers,
                         vf_core_state_t *result, vf_core_counters_t *counters, uint32_t *iters)
{
    vf_core_state_t s = {0, 0, VF_FAULT_NONE, 0, 0, 0};
    vf_core_counters_t n = {0, 0, 0, 0, 0, 0, 0, 0};
    if (frame != 0) {
        /* a descriptor whose segment is not inside one bank of the window
         * (striped: every part inside its bank) gets an empty segment: the
         * core faults on its first fetch */
        const vf_ddr_t fd = vf_ddr_for(ddr, frame->striped);
        const bool inside =
            ddr.bytes != 0 && frame->seg_limit != 0 &&
            (fd.striped ? vf_seg_first_out_striped(fd, frame->seg_win, frame->seg_limit) >= frame->seg_limit
                        : vf_fits(frame->seg_win, frame->seg_limit, ddr.bytes) &&
                              vf_ddr_bank(frame->seg_win) == vf_ddr_bank(frame->seg_win + frame->seg_limit - 1u));
        const uint32_t limit = inside ? frame->seg_limit : 0;
        if (frame->scrub && buffers != 0)
            vf_core_scrub(buffers);
        /* every step retires at least one instruction */
    FRAME_STEPS:
        for (uint32_t k = 0; k <= frame->n_insns; ++k) {
            const uint32_t r =
                vf_core_step(fd, frame->seg_win, limit, frame->frame_offset, frame->n_insns, buffers, &s, &n, iters);
            if (r != VF_STEP_FRAME)
                break;
        }
    } else {
        s.fault = VF_FAULT_FETCH;
        s.fault_opcode = 0xffffffffu;
    }
    if (result != 0)
        *result = s;
    if (counters != 0)
        *counters = n;
}

void vf_dispatch_run_frame_ddr(const vf_ddr_t &ddr, const vf_disp_frame_t *frame, vf_cnn_buffers_t *buffers,
                               vf_core_state_t *result, vf_core_counters_t *counters, uint32_t *iters)
{
    vf_run_frame(ddr, frame, buffers, result, counters, iters);
}

void vf_dispatch_run_frame_ddr(const vf_ddr_t &ddr, const vf_disp_frame_t *frame, vf_rnn_buffers_t *buffers,
                               vf_core_state_t *result, vf_core_counters_t *counters, uint32_t *iters)
{
    vf_run_frame(ddr, frame, buffers, result, counters, iters);
}

void vf_dispatch_run_frame(int8_t *mem, uint64_t mem_bytes, const vf_disp_frame_t *frame, vf_cnn_buffers_t *buffers,
                           vf_core_state_t *result, vf_core_counters_t *counters, uint32_t *iters)
{
    vf_run_frame(vf_ddr_window(mem, mem_bytes), frame, buffers, result, counters, iters);
}

void vf_dispatch_run_rnn_frame(int8_t *mem, uint64_t mem_bytes, const vf_disp_frame_t *frame,
                               vf_rnn_buffers_t *buffers, vf_core_state_t *result, vf_core_counters_t *counters,
                               uint32_t *iters)
{
    vf_run_frame(vf_ddr_window(mem, mem_bytes), frame, buffers, result, counters, iters);
}
void vf_dispatch_retire(vf_disp_regs_t *regs, vf_disp_state_t *state, uint32_t core, const vf_core_state_t *result,
                        const vf_core_counters_t *counters, vf_disp_report_t *report)
{
    if (regs == 0 || state == 0 || core >= VF_POOL_CORES)
        return;
    vf_disp_report_t scratch;
    vf_disp_report_t *rep = report;
    if (rep == 0) {
        memset(&scratch, 0, sizeof scratch);
        rep = &scratch;
    }
    vf_disp_core_state_t &c = state->core[core];
    if (!c.busy)
        return;
    c.busy = 0;
    rep->frames_retired += 1;
    rep->progress += 1;
    const uint32_t t = c.tenant;
    if (t < VF_DISP_TENANTS) {
        vf_disp_tenant_state_t &s = state->tenant[t];
        vf_disp_tenant_regs_t &r = regs->tenant[t];
        if (c.gen == s.gen && s.inflight != 0) {
            s.inflight -= 1;
            /* its request (not active any more only after a ring fault dropped it) */
            vf_disp_req_state_t scratch_req;
            memset(&scratch_req, 0, sizeof scratch_req);
            vf_disp_req_state_t &q = vf_req_active(s, c.seq) ? vf_req(s, c.seq) : scratch_req;
            if (vf_req_active(s, c.seq) && q.inflight != 0)
                q.inflight -= 1;
            r.core_cycles += regs->g.cycles >= c.issued_at ? regs->g.cycles - c.issued_at : 0;
            if (counters != 0) {
                r.insns += counters->insns;
                r.load_iters += counters->load_iters;
                r.compute_iters += counters->compute_iters;
                r.save_iters += counters->save_iters;
                q.insns += counters->insns;
                q.load_iters += counters->load_iters;
                q.compute_iters += counters->compute_iters;
                q.save_iters += counters->save_iters;
                vf_core_counters_t &k = rep->core[core];
                k.insns += counters->insns;
                k.frames += counters->frames;
                k.load_iters += counters->load_iters;
                k.compute_iters += counters->compute_iters;
                k.save_iters += counters->save_iters;
                k.load_bytes += counters->load_bytes;
                k.save_bytes += counters->save_bytes;
                k.macs += counters->macs;
            }
            rep->core_tenant[core] = t;
            if (result != 0 && result->fault != VF_FAULT_NONE)
                vf_tenant_fault(regs, state, t, result->fault, core, result->fault_addr, result->fault_insn, c.entry,
                                result->fault_opcode, c.seq, rep);
        }
        vf_mirror_tenant(regs, state, t);
    }
    vf_update_globals(regs, state);
}

void vf_dispatch_segment_copy(int8_t *mem, uint64_t mem_bytes, uint64_t seg_win, uint32_t striped, uint64_t offset,
                              int8_t *buf, uint64_t n, uint32_t to_window)
{
    const vf_ddr_t d = vf_ddr_for(vf_ddr_window(mem, mem_bytes), striped);
    if (to_window)
        vf_seg_write(d, seg_win, offset, buf, n);
    else
        vf_seg_read(d, seg_win, offset, buf, n);
}

uint32_t vf_dispatch_step(vf_disp_regs_t *regs, vf_disp_state_t *state, int8_t *mem, uint64_t mem_bytes,
                          vf_cnn_buffers_t *cores, vf_rnn_buffers_t *rnn_cores, vf_disp_report_t *report)
{
    vf_disp_report_t scratch;
    vf_disp_report_t *rep = report != 0 ? report : &scratch;
    memset(rep, 0, sizeof *rep);
    const vf_ddr_t ddr = vf_ddr_window(mem, mem_bytes);
    vf_disp_frame_t issued[VF_POOL_CORES];
    memset(issued, 0, sizeof issued);
    const uint32_t mask = vf_dispatch_advance_ddr(regs, state, ddr, issued, rep);
    vf_core_state_t result[VF_POOL_CORES];
    vf_core_counters_t count[VF_POOL_CORES];
    /* the issued frames run, then retire in pool order (the testbench's
     * round-based reference; the top retires one ended frame per dispatcher
     * iteration, vfpga_pool.h) */
RUN:
    for (uint32_t c = 0; c < VF_POOL_CORES; ++c) {
        if (((mask >> c) & 1u) == 0)
            continue;
        if (c < VF_CNN_CORES)
            vf_run_frame(ddr, &issued[c], cores != 0 ? &cores[c] : 0, &result[c], &count[c], 0);
        else
            vf_run_frame(ddr, &issued[c], rnn_cores != 0 ? &rnn_cores[c - VF_CNN_CORES] : 0, &result[c],
                         &count[c], 0);
    }
RETIRE:
    for (uint32_t c = 0; c < VF_POOL_CORES; ++c)
        if ((mask >> c) & 1u)
            vf_dispatch_retire(regs, state, c, &result[c], &count[c], rep);
    return rep->progress;
}
