/*
 * Level-1 dispatcher: the C API shared by the HLS top (hls/dispatcher_top.cpp),
 * the C-sim testbench and the emulator (through cffi). Same cdef-friendly
 * subset as vfpga_isa.h: fixed-width fields, typedef'd structs, integer
 * #defines. Array sizes use board macros from overlay/config.py
 * (VF_DISP_TENANTS, VF_CNN_CORES, VF_RNN_CORES, VF_DISP_INFLIGHT): a cffi builder prepends them to the cdef as
 * "#define VF_DISP_TENANTS 16" lines (cffi folds integer #defines into array
 * lengths). All multi-byte values are little-endian, in registers and in DDR.
 *
 * ---- What it does -------------------------------------------------------------
 * One dispatcher drives the pool of VF_CNN_CORES CNN cores and VF_RNN_CORES
 * RNN cores (pool indices CNN first, then RNN) for VF_DISP_TENANTS tenant
 * contexts; a tenant holds cores of one kind. Each tenant owns a DDR segment; its driver posts requests
 * into a request ring inside that segment and rings a doorbell register. For
 * each request the dispatcher walks the request's dispatch program (an array
 * of vf_dispatch_t, vfpga_isa.h), sends FRAME entries to the physical cores of
 * the tenant's core mask, holds BARRIER entries until the tenant has no frame
 * in flight, and at END writes a completion record into the segment and raises
 * the tenant's interrupt bit.
 *
 * ---- Device memory -------------------------------------------------------------
 * Device memory is one window: int8_t *mem, mem_bytes long (the board's DDR
 * banks at their physical offsets from ddr.base_address; on the board the
 * top's m_axi port `mem` is set to that base). Registers hold physical
 * addresses: the window's physical base is the global register mem_base, a
 * tenant's segment is [seg_base, seg_base + seg_limit) physical, i.e.
 * mem[seg_base - mem_base, ... + seg_limit). Everything a tenant names (ring,
 * records, dispatch programs, frames, tensors) is a segment offset.
 *
 * ---- Register file (s_axilite, offsets from the board config) -----------------
 * vf_disp_regs_t is the register file byte for byte: the global block at 0,
 * tenant t at VF_DREG_TENANT_BASE + t * VF_DREG_TENANT_STRIDE. dispatcher.cpp
 * checks every field offset against the config's VF_DREG_G_* / VF_DREG_T_*
 * macros at compile time. "host" fields are written by the driver and only
 * read by the dispatcher; "ro" fields are written by the dispatcher only. 64-bit
 * registers are two 32-bit words, low word first.
 *
 * ---- Request ring and completion records --------------------------------------
 * ring_size (a power of two, 1..VF_DISP_RING_MAX) entries of vf_disp_request_t
 * (16 bytes, ring_offset 16-aligned) and as many vf_disp_completion_t records
 * (64 bytes, cpl_offset 64-aligned), both inside the segment. Requests carry
 * free-running 32-bit sequence numbers: request s lives in entry
 * s & (ring_size - 1) and its record goes to record s & (ring_size - 1).
 *   ring_tail (host)  doorbell: one past the last request posted;
 *   ring_head (ro)    one past the last request whose record is written;
 *   cpl_ack   (host)  one past the last record the driver has consumed.
 * The driver keeps ring_tail - cpl_ack <= ring_size (it reuses an entry only
 * after consuming the record of the request that used it); a doorbell that
 * breaks this (or cpl_ack outside [ring_head - ring_size, ring_head]) faults
 * the tenant with VF_DFAULT_DOORBELL. Enabling a context starts the ring at
 * the sequence number in cpl_ack: ring_head := cpl_ack; the driver writes
 * cpl_ack = S and ring_tail = S + n (n requests already placed) before setting
 * enable. Every request posted to a context whose ring is valid gets exactly
 * one completion record: OK, FAULT (this request hit the fault) or ABORTED
 * (the tenant stopped before or while running it), written before ring_head
 * passes it.
 *
 * ---- Tenant life cycle (status) ------------------------------------------------
 *   DISABLED  -- control.enable 1 --> latch seg/ring registers, check them
 *                (VF_DFAULT_WINDOW/OVERLAP/RING), clear fault and counters,
 *                ring_head := cpl_ack, apply core_mask --> IDLE (or FAULTED)
 *   IDLE/RUNNING  walking requests (RUNNING while one is posted or in flight)
 *   FAULTED   a fault stopped the tenant: its cores are released at once
 *             (frames in flight finish first), the faulting request's record
 *             says FAULT once its frames in flight have retired, every other
 *             posted request (also ones posted later) is ABORTED with the
 *             fault code. Stays FAULTED until the driver clears enable.
 *   DRAINING  enable cleared: cores released, frames in flight finish, the
 *             request in progress and all posted ones are ABORTED
 *             (fault VF_DFAULT_DISABLED unless a fault came first) --> DISABLED.
 * Segment, ring and completion registers are latched at enable; writes to them
 * while enabled take effect at the next enable. Enable with the same segment
 * as another live (not DISABLED) tenant is refused: VF_DFAULT_OVERLAP.
 *
 * ---- Core masks ---------------------------------------------------------------
 * Virtual slot s of a tenant holding k cores runs on the (s mod k)-th set bit
 * of its active mask (slot i = i-th set bit when the program was made for k
 * slots; a program made for more slots folds onto fewer cores, one made for
 * fewer leaves cores idle). The driver writes core_mask, then increments
 * mask_seq; the dispatcher handles each new mask_seq once (mask_done :=
 * mask_seq) while the tenant is IDLE/RUNNING (or at enable):
 *   VF_MASK_REJECT_RANGE     a bit names no core (mask_conflict = those bits)
 *   VF_MASK_REJECT_KIND      the mask mixes CNN and RNN cores (mask_conflict =
 *                            its RNN cores)
 *   VF_MASK_REJECT_CONFLICT  a core is in another tenant's active mask
 *                            (mask_conflict = those cores); nothing changes
 *   VF_MASK_APPLIED          active_mask := core_mask at once.
 * The change takes effect per core at a frame boundary: a frame in flight is
 * never moved or cancelled, it finishes on its core and retires to its tenant;
 * a core runs one frame at a time, so a core a tenant gains while it still
 * finishes someone else's frame receives new work only after that frame
 * retires. The tenant's walk position is one cursor over its program, so no
 * frame is issued twice or skipped by a change. Cores may be handed over only
 * release-then-acquire (shrink one tenant, then grow the other).
 *
 * ---- Walking (one cursor per active request, in order) -------------------------
 * A tenant holds up to M = max_inflight (latched at enable, 1..VF_DISP_INFLIGHT)
 * requests active: ring_head .. ring_head + M - 1. The driver gives each
 * request in flight its own activation slot (its program's frames address
 * that slot; seq mod M when every request is one ring entry), so two active
 * requests never share activations. Each active request has its own cursor,
 * frames-in-flight count and counters:
 *  FRAME    validated (n_insns >= 1, the frame's instructions inside the
 *           segment; every slot value is valid, it folds mod k); issued when
 *           its slot's core is idle, else the request waits (in-order issue
 *           within a request, a core gets at most one frame per step); with
 *           k = 0 (empty mask) the tenant waits for a mask;
 *  BARRIER  passes when the request has no frame in flight;
 *  END      (or the end of the program) completes the request once it has
 *           no frame in flight and every older request is recorded: record,
 *           ring_head + 1, interrupt (records stay in submission order).
 * Active requests are walked oldest first, each until it waits; then the
 * next posted request is started if fewer than M are active. So a younger
 * request's frames take the cores an older one leaves idle at its barriers.
 * With M = 1 this is the single cursor of one request at a time.
 * A tenant reads at most VF_DISP_WALK_BUDGET entries/records per step.
 * Tenants are visited round-robin, starting one further every step.
 * A fault fails the request that hit it and every request behind it: the
 * requests older than it keep running and are recorded as usual, then the
 * tenant stops (FAULTED, cores released); the faulting request is recorded
 * FAULT, the ones behind it ABORTED, with the fault, in sequence order. (A
 * fault of the oldest request, or one not tied to a request, stops the
 * tenant at once, as with one request in flight.)
 *
 * ---- On-chip buffers between tenants ---------------------------------------------
 * A frame issued to a core whose buffers may hold another tenant's data (the
 * last frame on it was of another tenant, or of an earlier enable of the same
 * context) carries scrub = 1: the core's IBUF/WBUF/ACC/OBUF/PARAM are zeroed
 * before it runs. No data crosses tenants through a core.
 *
 * ---- Stepping (C-simulation of the free-running dispatcher) --------------------
 * The dispatcher and its cores are free-running processes (vfpga_pool.h
 * states the machine): each dispatcher iteration retires one ended frame
 * (vf_dispatch_retire), then advances (vf_dispatch_advance: register
 * handling, walking, records, issue to idle cores); each core runs the frame
 * it is sent (vf_dispatch_run_frame: vf_cnn_core_step on the frame's
 * instructions until END or a fault). These parts are exported so that the
 * emulator and the simulator run the same machine with the cycle model's
 * schedule, several frames in flight across calls. vf_dispatch_step() is the
 * testbench's round-based reference: an advance, then every frame it issued
 * runs and retires.
 * All state is in vf_disp_regs_t and vf_disp_state_t; all-zero is the reset
 * state (vf_dispatch_reset() zeroes both).
 */
#ifndef VFPGA_DISPATCHER_H
#define VFPGA_DISPATCHER_H

#include <stdint.h>
#include "vfpga_isa.h"
#include "vfpga_cnn_core.h"
#include "vfpga_rnn_core.h"

#if !defined(VF_DISP_TENANTS) || !defined(VF_CNN_CORES) || !defined(VF_RNN_CORES) || !defined(VF_DISP_INFLIGHT)
#error "board macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif

/* The pool: cores 0 .. VF_CNN_CORES-1 are CNN cores, the next VF_RNN_CORES
 * are RNN cores. Masks, slots and per-core arrays cover the whole pool. */
#define VF_POOL_CORES (VF_CNN_CORES + VF_RNN_CORES)

/* The tenant interface in DDR (request ring entries, completion records) and
 * the status, fault and mask codes are in vfpga_isa.h, next to vf_dispatch_t. */

/* ---- Register file ------------------------------------------------------- */

typedef struct {
    uint32_t id;            /* ro VF_DISP_ID */
    uint32_t version;       /* ro VF_DISP_VERSION */
    uint32_t tenants;       /* ro VF_DISP_TENANTS */
    uint32_t cores;         /* ro VF_CNN_CORES (pool cores 0 .. cores-1) */
    uint32_t irq_enable;    /* host bit 0: global interrupt enable */
    uint32_t irq_mask;      /* host: enables of the irq_status bits */
    uint32_t irq_status;    /* ro, see VF_IRQ_FAULT_SHIFT */
    uint32_t irq;           /* ro: irq_enable && (irq_status & irq_mask) != 0 (the interrupt line) */
    uint64_t mem_base;      /* host: physical address of mem[0] */
    uint64_t steps;         /* ro: advance calls */
    uint64_t frames;        /* ro: frames issued */
    uint32_t busy_cores;    /* ro: cores with a frame in flight */
    uint32_t owned_cores;   /* ro: union of the active masks */
    uint64_t cycles;        /* ro: the dispatcher's clock (regs->g.cycles is set by the caller of a step:
                               the top from its free-running counter input, the emulator from the
                               modeled time) */
    uint32_t rnn_cores;     /* ro VF_RNN_CORES (pool cores cores .. cores+rnn_cores-1) */
    uint32_t reserved[45];
} vf_disp_global_regs_t;

typedef struct {
    uint32_t control;       /* host VF_TENANT_ENABLE | VF_TENANT_STRIPED (latched at enable) */
    uint32_t seg_limit;     /* host: segment bytes (latched at enable) */
    uint64_t seg_base;      /* host: physical segment base (latched at enable) */
    uint32_t ring_offset;   /* host (latched) */
    uint32_t ring_size;     /* host (latched) */
    uint32_t cpl_offset;    /* host (latched) */
    uint32_t ring_tail;     /* host: doorbell */
    uint32_t cpl_ack;       /* host: records consumed */
    uint32_t core_mask;     /* host: requested mask */
    uint32_t mask_seq;      /* host: increment to request core_mask */
    uint32_t max_inflight;  /* host: requests of the tenant in flight at once (latched; 0 or 1: one,
                               above VF_DISP_INFLIGHT: VF_DISP_INFLIGHT) */
    uint32_t status;        /* ro VF_TENANT_* */
    uint32_t ring_head;     /* ro */
    uint32_t active_mask;   /* ro: cores the tenant holds */
    uint32_t mask_done;     /* ro: last mask_seq handled */
    uint32_t mask_result;   /* ro VF_MASK_* */
    uint32_t mask_conflict; /* ro: cores that made the last request fail */
    uint32_t fault;         /* ro: first fault since enable (VF_FAULT_* / VF_DFAULT_*) */
    uint32_t fault_core;    /* ro */
    uint32_t fault_addr;    /* ro */
    uint32_t fault_insn;    /* ro */
    uint32_t fault_entry;   /* ro */
    uint32_t fault_seq;     /* ro: request sequence number */
    uint32_t fault_opcode;  /* ro */
    uint32_t inflight;      /* ro: frames in flight */
    uint64_t requests;      /* ro: requests completed OK since enable */
    uint64_t failed;        /* ro: requests completed FAULT or ABORTED */
    uint64_t frames;        /* ro: frames issued */
    uint64_t barriers;      /* ro: barriers passed */
    uint64_t insns;         /* ro: instructions retired by its frames */
    uint64_t load_iters;    /* ro */
    uint64_t compute_iters; /* ro */
    uint64_t save_iters;    /* ro */
    uint64_t core_cycles;   /* ro: sum over its retired frames of (retire - issue) clock cycles */
    uint64_t request_cycles; /* ro: sum of the `cycles` of its OK records */
    uint32_t reserved1[18];
} vf_disp_tenant_regs_t;

typedef struct {
    vf_disp_global_regs_t g;
    vf_disp_tenant_regs_t tenant[VF_DISP_TENANTS];
} vf_disp_regs_t;

/* ---- Internal state (registers and BRAM of the dispatcher) ---------------- */

/* One active request of a tenant (request seq lives in req[seq % VF_DISP_INFLIGHT]). */
typedef struct {
    uint32_t request_id;
    uint32_t prog_offset;
    uint32_t prog_entries;
    uint32_t pc;            /* next dispatch entry */
    uint32_t inflight;      /* its frames issued, not retired */
    uint32_t frames;
    uint32_t barriers;
    uint32_t failed;        /* it hit the tenant's fault */
    uint32_t done;          /* passed END, waits for the older requests to be recorded */
    uint32_t reserved;
    uint64_t start;         /* clock when it was started */
    uint64_t insns;
    uint64_t load_iters;
    uint64_t compute_iters;
    uint64_t save_iters;
} vf_disp_req_state_t;

typedef struct {
    uint64_t seg_win;       /* latched: segment offset in the window */
    uint32_t seg_limit;     /* latched */
    uint32_t ring_offset;   /* latched */
    uint32_t ring_size;     /* latched */
    uint32_t cpl_offset;    /* latched */
    uint32_t seg_ok;        /* the latched segment lies in the window */
    uint32_t ring_ok;       /* ring and record areas valid: records can be written */
    uint32_t phase;         /* VF_TENANT_* */
    uint32_t gen;           /* enable count (tells contexts' buffer contents apart) */
    uint32_t head;          /* sequence number of the oldest active request / the next one */
    uint32_t active_mask;
    uint32_t mask_done;
    uint32_t fault;
    uint32_t max_inflight;  /* latched, 1..VF_DISP_INFLIGHT */
    uint32_t nreq;          /* active requests: head .. head + nreq - 1 */
    uint32_t inflight;      /* frames issued, not retired (all its requests) */
    uint32_t stopping;      /* a fault hit request stop_seq while older ones were active: they finish first */
    uint32_t stop_seq;
    uint32_t striped;       /* latched: the segment is striped (VF_TENANT_STRIPED, VF_SEG_PARTS > 1) */
    vf_disp_req_state_t req[VF_DISP_INFLIGHT];
} vf_disp_tenant_state_t;

typedef struct {
    uint32_t busy;          /* a frame is in flight */
    uint32_t tenant;        /* its tenant */
    uint32_t gen;           /* its tenant's generation */
    uint32_t entry;         /* its dispatch entry index */
    uint32_t seq;           /* its request's sequence number */
    uint32_t reserved;
    uint32_t last_owner;    /* 1 + tenant of the last frame issued here, 0: none since reset */
    uint32_t last_gen;
    uint64_t issued_at;     /* clock when the frame in flight was issued */
} vf_disp_core_state_t;

typedef struct {
    vf_disp_tenant_state_t tenant[VF_DISP_TENANTS];
    vf_disp_core_state_t core[VF_POOL_CORES];
    uint32_t rr;            /* first tenant visited by the next advance */
    uint32_t reserved;
} vf_disp_state_t;

/* A frame issued to a core. */
typedef struct {
    uint64_t seg_win;       /* segment offset in the window */
    uint32_t seg_limit;
    uint32_t frame_offset;  /* segment offset of the frame's first instruction */
    uint32_t n_insns;
    uint32_t tenant;
    uint32_t core;
    uint32_t seq;           /* request sequence number */
    uint32_t entry;         /* dispatch entry index */
    uint32_t scrub;         /* zero the core's buffers before running it */
    uint32_t striped;       /* the segment is striped over the core's bank ports (vfpga_ddr.h) */
} vf_disp_frame_t;

/* What one call did. vf_dispatch_step() overwrites it; vf_dispatch_advance()
 * and vf_dispatch_retire() add to it (the caller zeroes it). */
typedef struct {
    uint32_t progress;         /* actions taken; 0: nothing to do until registers change */
    uint32_t issued_cores;     /* cores that received a frame */
    uint32_t frames_issued;
    uint32_t frames_retired;
    uint32_t barriers;
    uint32_t requests_started;
    uint32_t requests_ok;
    uint32_t requests_failed;  /* FAULT records */
    uint32_t requests_aborted; /* ABORTED records */
    uint32_t faults;
    uint32_t masks_applied;
    uint32_t masks_rejected;
    uint32_t entries;          /* dispatch entries read (also re-reads of a waiting entry) */
    uint32_t ring_reads;       /* request ring entries read */
    uint32_t scrubs;           /* frames issued with scrub */
    uint32_t core_tenant[VF_POOL_CORES];  /* tenant of each core's last retired frame */
    vf_core_counters_t core[VF_POOL_CORES]; /* counters of the frames retired, per core */
} vf_disp_report_t;

/* Build-time numbers, from the board config macros. */
typedef struct {
    uint32_t tenants;
    uint32_t cores;            /* CNN cores */
    uint32_t ring_max;
    uint32_t walk_budget;
    uint32_t regs_bytes;       /* sizeof(vf_disp_regs_t) */
    uint32_t tenant_base;
    uint32_t tenant_stride;
    uint32_t request_bytes;
    uint32_t record_bytes;
    uint32_t rnn_cores;        /* RNN cores, after the CNN cores in the pool */
    uint32_t inflight;         /* VF_DISP_INFLIGHT: requests of a tenant in flight at most */
} vf_disp_geometry_t;

void vf_dispatch_geometry(vf_disp_geometry_t *geometry);

/* Power-on reset: zeroes regs and state (then the read-only identification
 * registers are set). */
void vf_dispatch_reset(vf_disp_regs_t *regs, vf_disp_state_t *state);

/* Register handling, request walking, records, issue. Fills issued[c] for
 * every core c that receives a frame and returns that set of cores as a bit
 * mask. issued holds VF_POOL_CORES entries (with issued == 0 nothing is
 * issued). With mem == 0 the window is empty: no tenant can be enabled. */
uint32_t vf_dispatch_advance(vf_disp_regs_t *regs, vf_disp_state_t *state, int8_t *mem, uint64_t mem_bytes,
                             vf_disp_frame_t *issued, vf_disp_report_t *report);

/* Runs an issued frame on a CNN core: scrubs its buffers if asked, then
 * vf_cnn_core_step() on [frame_offset, n_insns) of the segment until END or a
 * fault. result and counters are this frame's (zeroed first); iters
 * (optional, n_insns entries) gets each instruction's iterations. */
void vf_dispatch_run_frame(int8_t *mem, uint64_t mem_bytes, const vf_disp_frame_t *frame,
                           vf_cnn_buffers_t *buffers, vf_core_state_t *result, vf_core_counters_t *counters,
                           uint32_t *iters);

/* The same on an RNN core (frame->core >= VF_CNN_CORES): vf_rnn_core_step(). */
void vf_dispatch_run_rnn_frame(int8_t *mem, uint64_t mem_bytes, const vf_disp_frame_t *frame,
                               vf_rnn_buffers_t *buffers, vf_core_state_t *result, vf_core_counters_t *counters,
                               uint32_t *iters);

/* A core finished its frame: result/counters as vf_dispatch_run_frame gave
 * them. A core that is not busy is ignored. */
void vf_dispatch_retire(vf_disp_regs_t *regs, vf_disp_state_t *state, uint32_t core,
                        const vf_core_state_t *result, const vf_core_counters_t *counters,
                        vf_disp_report_t *report);

/* Copies n bytes between buf and segment offset `offset` of a segment at
 * window offset seg_win (striped: VF_TENANT_STRIPED's layout), through the
 * mapping the cores and the dispatcher use (vfpga_ddr.h): to_window 1
 * writes the segment, 0 reads it. The caller keeps the bytes inside the
 * window (the emulator's and the timing simulator's host side). */
void vf_dispatch_segment_copy(int8_t *mem, uint64_t mem_bytes, uint64_t seg_win, uint32_t striped, uint64_t offset,
                              int8_t *buf, uint64_t n, uint32_t to_window);

/* A round (the testbench's reference schedule): advance, run every issued
 * frame on its core's buffers (cores: VF_CNN_CORES entries, rnn_cores:
 * VF_RNN_CORES), retire them. Returns report->progress. */
uint32_t vf_dispatch_step(vf_disp_regs_t *regs, vf_disp_state_t *state, int8_t *mem, uint64_t mem_bytes,
                          vf_cnn_buffers_t *cores, vf_rnn_buffers_t *rnn_cores, vf_disp_report_t *report);

#endif /* VFPGA_DISPATCHER_H */
