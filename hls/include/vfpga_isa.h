/*
 * vfpga instruction set: the single definition shared by the HLS cores and
 * the Python runtime. The runtime derives its encoder/decoder from this file
 * through cffi (which also checks the struct layouts against the C compiler),
 * so no field table exists anywhere else.
 *
 * This file must stay within what cffi's cdef parser accepts: fixed-width
 * integer fields, typedef'd structs/unions and integer #defines. Lines that
 * start with '#' and carry no integer value (guards, includes) are dropped
 * before it reaches cffi.
 *
 * Conventions
 *  - Every instruction is VF_INSN_BYTES long: an 8-byte head, then the
 *    opcode's payload, zero-filled to the end.
 *  - DDR addresses ("dram_addr") are byte offsets inside the tenant's
 *    segment. The core checks every access against the segment limit.
 *  - On-chip buffers: IBUF (int8 input tiles), WBUF (int8 weights), ACC
 *    (int32 partial sums, addressed in words), OBUF (int8 results waiting to
 *    be saved), PARAM (per-output-channel {bias, mult, shift}, addressed in
 *    entries of VF_PARAM_ENTRY_WORDS int32 words).
 *  - Tensors in DDR are HWC int8: pixel (y, x) of a view starts at
 *    dram_addr + (y * width + x) * pixel_stride; channels are contiguous.
 *    pixel_stride > channels places a tensor inside a wider one (Concat).
 *  - Tiles in IBUF/OBUF are dense [rows][cols][channels].
 *
 * Arithmetic (bit-exact contract with the golden model)
 *  - rshift_round(v, s) = s == 0 ? v : (v + (1 << (s - 1))) >> s, with v an
 *    int64 and an arithmetic shift (rounds half towards +infinity).
 *  - rdiv(n, d) = sign(n) * ((|n| + d / 2) / d), integer division
 *    (rounds half away from zero).
 *  - clamp(v, lo, hi) saturates into [lo, hi] (int8 bounds or tighter).
 *  - Convolution accumulators are int32 and wrap on overflow.
 */
#ifndef VFPGA_ISA_H
#define VFPGA_ISA_H

#include <stdint.h>

#define VF_ISA_VERSION 3
#define VF_INSN_BYTES 64

/* ---- opcodes ---------------------------------------------------------- */
#define VF_OP_NOP 0
#define VF_OP_LOAD_TILE 1   /* load unit:    DDR tensor view -> IBUF tile      */
#define VF_OP_LOAD_LINEAR 2 /* load unit:    DDR bytes -> WBUF or PARAM        */
#define VF_OP_CONV 3        /* compute unit: IBUF x WBUF -> ACC / OBUF         */
#define VF_OP_POOL 4        /* compute unit: IBUF -> OBUF (max / average)      */
#define VF_OP_ADD 5         /* compute unit: IBUF + IBUF -> OBUF (requantized) */
#define VF_OP_SAVE 6        /* save unit:    OBUF tile -> DDR tensor view      */
#define VF_OP_FRAME 7       /* marker: a frame (one output tile) begins        */
#define VF_OP_BARRIER 8     /* marker: all units drain before anything after   */
#define VF_OP_END 9         /* marker: the program (one request) is complete   */
#define VF_OP_LUT 10        /* compute unit: IBUF/OBUF -> OBUF through a table */
#define VF_OP_MUL 11        /* compute unit: IBUF x IBUF -> OBUF (requantized) */
#define VF_OP_COUNT 12

/* ---- dependency tokens (head.deps) -------------------------------------
 * The load, compute and save units run concurrently and hand over buffer
 * halves through token queues, as in VTA: load <-> compute <-> save.
 * "prev"/"next" are relative to the unit executing the instruction:
 * load has only next (compute), save has only prev (compute).
 * An instruction first pops the tokens it needs (waiting for them), runs,
 * then pushes the tokens it announces. Tokens do not cross frames. */
#define VF_DEP_POP_PREV 1
#define VF_DEP_POP_NEXT 2
#define VF_DEP_PUSH_PREV 4
#define VF_DEP_PUSH_NEXT 8

/* ---- opcode flags (head.flags) ---------------------------------------- */
#define VF_CONV_ACC_INIT 1  /* start from the bias, not from ACC              */
#define VF_CONV_ACC_FINAL 2 /* requantize into OBUF; else keep int32 in ACC    */
#define VF_POOL_AVG 1       /* average pooling (else max)                     */
#define VF_POOL_COUNT_PAD 2 /* average divides by kh*kw, padding included     */
#define VF_LUT_SRC_OBUF 1   /* LUT reads OBUF (after a CONV) instead of IBUF  */
#define VF_MUL_BCAST 1      /* MUL: b is one pixel, broadcast over all pixels */

/* LUT tables: one int8 output per int8 input code */
#define VF_LUT_ENTRIES 256

/* LOAD_LINEAR destinations */
#define VF_BUF_WGT 0
#define VF_BUF_PARAM 1

/* PARAM entry: {bias, mult, shift} as little-endian int32 words */
#define VF_PARAM_ENTRY_WORDS 3

/* ---- fault codes (core status) ---------------------------------------- */
#define VF_FAULT_NONE 0
#define VF_FAULT_SEGMENT 1  /* DDR access outside [0, seg_limit)             */
#define VF_FAULT_BUFFER 2   /* on-chip buffer access out of range             */
#define VF_FAULT_OPCODE 3   /* unknown opcode                                 */
#define VF_FAULT_FIELD 4    /* inconsistent fields (shapes, shifts, strides)  */
#define VF_FAULT_DEADLOCK 5 /* a unit waits for a token nobody will push      */
#define VF_FAULT_FETCH 6    /* instruction fetch outside the segment          */
#define VF_FAULT_FRAME_SIZE 7 /* a step longer than the core's instruction queue */

/* ---- instruction formats ---------------------------------------------- */
typedef struct {
    uint8_t opcode;
    uint8_t deps;   /* VF_DEP_* */
    uint16_t flags; /* opcode-specific VF_*_ flags */
    uint32_t tag;   /* compiler-chosen id (layer/frame), echoed in faults */
} vf_insn_head_t;

/* LOAD_TILE and SAVE: one tile of an HWC tensor view.
 * LOAD_TILE: for r < tile_h, c < tile_w: pixel (y0 + r, x0 + c) of the view
 *   is copied to IBUF[buf_addr + (r * tile_w + c) * channels ...]; pixels
 *   outside [0, height) x [0, width) are filled with pad_value.
 *   step_y and step_x must be 0 or 1.
 * SAVE: OBUF[buf_addr ...] tile is written to pixels
 *   (y0 + r * sy, x0 + c * sx), sy = max(step_y, 1), sx = max(step_x, 1),
 *   which must all lie inside the view (no padding on the way out). Steps
 *   above 1 interleave tiles: the phases of a nearest-neighbour upsampling
 *   or of a transposed convolution are saved into one output. */
typedef struct {
    vf_insn_head_t head;
    uint32_t dram_addr;     /* segment offset of pixel (0, 0) of the view */
    uint32_t buf_addr;      /* IBUF (load) / OBUF (save) byte offset */
    uint16_t height;        /* view extent in pixels */
    uint16_t width;
    uint16_t pixel_stride;  /* DDR bytes between horizontally adjacent pixels */
    uint16_t channels;      /* bytes moved per pixel, <= pixel_stride */
    int16_t y0;             /* tile origin in the view; may be negative (load) */
    int16_t x0;
    uint16_t tile_h;
    uint16_t tile_w;
    int8_t pad_value;       /* load only */
    uint8_t step_y;         /* save only: output rows between tile rows (0 = 1) */
    uint8_t step_x;         /* save only: output pixels between tile pixels (0 = 1) */
    uint8_t reserved;
} vf_insn_mem_t;

/* LOAD_LINEAR: nbytes contiguous bytes to WBUF or PARAM (byte offset,
 * multiple of 4 for PARAM, of the core's bus word VF_AXI_BYTES for WBUF:
 * WBUF is one memory of ICP * OCP-byte words, written a whole word at a
 * time; else VF_FAULT_FIELD on buf_addr). */
typedef struct {
    vf_insn_head_t head;
    uint32_t dram_addr;
    uint32_t buf_addr;
    uint32_t nbytes;
    uint8_t buffer;         /* VF_BUF_WGT or VF_BUF_PARAM */
    uint8_t reserved[3];
} vf_insn_linear_t;

/* CONV: grouped 2-D convolution of an IBUF tile that already holds its
 * padding. For g < groups, oy < out_h, ox < out_w, o < cout_g, with
 * oc = g * cout_g + o:
 *   acc = ACC_INIT ? PARAM[param_addr + oc].bias : ACC[acc_addr + (oy*out_w+ox)*oct + oc]
 *   acc += sum_{ky<kh, kx<kw, i<cin_g}
 *            IBUF[in_addr + ((oy*sh+ky)*in_w + ox*sw+kx)*ict + g*cin_g + i]
 *          * W(oc, ky, kx, i)
 *   ACC_FINAL: OBUF[out_addr + (oy*out_w+ox)*oct + oc] =
 *                clamp(out_zp + rshift_round(acc * mult, shift), clip_lo, clip_hi)
 *   else:      ACC[...] = acc
 * where ict = groups*cin_g, oct = groups*cout_g and mult/shift come from
 * PARAM[param_addr + oc]. Requires (out_h-1)*sh + kh <= in_h (same for w),
 * shift in [0, 62].
 * Weights are beat-major: WBUF holds one word of WORD = ICP * OCP bytes
 * (the board's VF_ICP, VF_OCP) per MAC beat, in the order the core visits
 * the beats, so a beat reads word wgt_addr / WORD + beat whole, each byte
 * from its own bank. wgt_addr must be a multiple of WORD (else
 * VF_FAULT_FIELD on wgt_addr). Blocks are ceil-divided; bytes of a partial
 * block are padding (the compiler writes 0, the core never uses them).
 *   cin_g > 1: per group g, per output block ob < ceil(cout_g / OCP), per
 *     (ky, kx), per input block ib < ceil(cin_g / ICP), one word [o][i]:
 *       W(oc, ky, kx, i) = WBUF[wgt_addr + WORD * (((g*nob + ob)*kh + ky)*kw
 *                          + kx)*nib + ib) + (o % OCP)*ICP + i % ICP]
 *     with ob = o / OCP, ib = i / ICP, nob/nib the block counts; a group
 *     owns its blocks (a beat never mixes groups). Length WORD * groups *
 *     nob * kh * kw * nib bytes.
 *   cin_g == 1 (depthwise style, lanes across groups): per block of OCP
 *     output channels cb < ceil(oct / OCP), per (ky, kx), one lane row of
 *     OCP bytes, ICP rows to a word:
 *       W(oc, ky, kx, 0) = WBUF[wgt_addr + OCP * ((cb*kh + ky)*kw + kx)
 *                          + oc % OCP],  cb = oc / OCP
 *     Length OCP * ceil(oct / OCP) * kh * kw bytes.
 * The input zero point never reaches the core: the compiler loads padding as
 * in_zp and folds -in_zp * sum(w) into the bias (mod 2^32), which equals
 * summing (x - in_zp) * w over a zero-padded input. */
typedef struct {
    vf_insn_head_t head;
    uint32_t in_addr;       /* IBUF byte offset */
    uint32_t wgt_addr;      /* WBUF byte offset, a multiple of ICP * OCP */
    uint32_t out_addr;      /* OBUF byte offset (ACC_FINAL) */
    uint32_t acc_addr;      /* ACC word offset */
    uint16_t param_addr;    /* PARAM entry of output channel 0 of the tile */
    uint16_t in_h;
    uint16_t in_w;
    uint16_t out_h;
    uint16_t out_w;
    uint16_t groups;
    uint16_t cin_g;
    uint16_t cout_g;
    uint8_t kh;
    uint8_t kw;
    uint8_t sh;
    uint8_t sw;
    int8_t out_zp;
    int8_t clip_lo;
    int8_t clip_hi;
    uint8_t reserved;
} vf_insn_conv_t;

/* POOL: for oy, ox, c the window rows iy = oy*sh + ky (ky < kh) and columns
 * ix = ox*sw + kx (kx < kw) are read; a position is valid when
 * valid_y0 <= iy < valid_y1 and valid_x0 <= ix < valid_x1 (the rest of the
 * tile is padding and is never read).
 *   max: v = max over valid (x - in_zp), count = 1 (v = 0 if none valid)
 *   avg: v = sum over valid (x - in_zp),
 *        count = COUNT_PAD ? kh*kw : number of valid positions
 *   y = clamp(out_zp + rdiv(v * mult, count << shift), clip_lo, clip_hi)
 *   (y = clamp(out_zp) when count is 0), in int64. Requires shift <= 30 and
 *   every window inside the tile: (out_h-1)*sh + kh <= in_h (same for w). */
typedef struct {
    vf_insn_head_t head;
    uint32_t in_addr;       /* IBUF [in_h][in_w][channels] */
    uint32_t out_addr;      /* OBUF [out_h][out_w][channels] */
    int32_t mult;
    uint16_t in_h;
    uint16_t in_w;
    uint16_t out_h;
    uint16_t out_w;
    uint16_t channels;
    uint16_t kh;
    uint16_t kw;
    uint8_t sh;
    uint8_t sw;
    uint16_t valid_y0;
    uint16_t valid_y1;
    uint16_t valid_x0;
    uint16_t valid_x1;
    uint8_t shift;
    int8_t in_zp;
    int8_t out_zp;
    int8_t clip_lo;
    int8_t clip_hi;
    uint8_t reserved[3];
} vf_insn_pool_t;

/* ADD: element-wise, per-input requantization. For i < length:
 *   OBUF[out_addr + i] = clamp(out_zp + rshift_round(
 *       (IBUF[a_addr+i] - a_zp) * a_mult + (IBUF[b_addr+i] - b_zp) * b_mult,
 *       shift), clip_lo, clip_hi).  Requires shift <= 62. */
typedef struct {
    vf_insn_head_t head;
    uint32_t a_addr;
    uint32_t b_addr;
    uint32_t out_addr;
    uint32_t length;
    int32_t a_mult;
    int32_t b_mult;
    uint8_t shift;
    int8_t a_zp;
    int8_t b_zp;
    int8_t out_zp;
    int8_t clip_lo;
    int8_t clip_hi;
    uint8_t reserved[2];
} vf_insn_add_t;

/* LUT: element-wise table lookup (activation functions). For i < length:
 *   OBUF[out_addr + i] = WBUF[table_addr + (uint8_t)(src[in_addr + i] + 128)]
 * src = OBUF with VF_LUT_SRC_OBUF (a CONV's result, before its SAVE), else
 * IBUF. The table (VF_LUT_ENTRIES bytes, entry k for input code k - 128) is
 * data: the compiler fills it with quantize(f(dequantize(q))) for any
 * element-wise f (hard-swish, HardSigmoid, Sigmoid, SiLU, Clip, ...), so the
 * core reproduces the quantized graph exactly. With VF_LUT_SRC_OBUF the
 * input and output ranges must be equal (in place) or disjoint. */
typedef struct {
    vf_insn_head_t head;
    uint32_t in_addr;       /* IBUF (or OBUF) byte offset */
    uint32_t out_addr;      /* OBUF byte offset */
    uint32_t table_addr;    /* WBUF byte offset of entry 0 */
    uint32_t length;        /* elements, >= 1 */
} vf_insn_lut_t;

/* MUL: element-wise product with requantization; with VF_MUL_BCAST, b holds
 * one value per channel (the squeeze-and-excitation scale). For p < pixels,
 * c < channels, i = p * channels + c, j = VF_MUL_BCAST ? c : i:
 *   OBUF[out_addr + i] = clamp(out_zp + rshift_round(
 *       (IBUF[a_addr + i] - a_zp) * (IBUF[b_addr + j] - b_zp) * mult, shift),
 *       clip_lo, clip_hi)
 * in int64 (|product * mult| < 2^47). Requires shift <= 62. */
typedef struct {
    vf_insn_head_t head;
    uint32_t a_addr;        /* IBUF [pixels][channels] */
    uint32_t b_addr;        /* IBUF [pixels][channels], or [channels] (BCAST) */
    uint32_t out_addr;      /* OBUF [pixels][channels] */
    uint32_t pixels;        /* >= 1 */
    int32_t mult;
    uint16_t channels;      /* >= 1 */
    uint8_t shift;
    int8_t a_zp;
    int8_t b_zp;
    int8_t out_zp;
    int8_t clip_lo;
    int8_t clip_hi;
} vf_insn_mul_t;

/* FRAME / BARRIER / END markers. FRAME starts a frame: token queues are
 * cleared. BARRIER waits until every unit is idle. END stops the core with
 * success. */
typedef struct {
    vf_insn_head_t head;
    uint32_t frame_id;
    uint32_t layer;
} vf_insn_marker_t;

typedef union {
    vf_insn_head_t head;
    vf_insn_mem_t mem;
    vf_insn_linear_t linear;
    vf_insn_conv_t conv;
    vf_insn_pool_t pool;
    vf_insn_add_t add;
    vf_insn_lut_t lut;
    vf_insn_mul_t mul;
    vf_insn_marker_t marker;
    uint8_t raw[64];
} vf_insn_t;

/* ---- level-1 dispatch program -----------------------------------------
 * Written by the runtime's dynamic stage for the k cores a tenant holds and
 * walked by the level-1 dispatcher, one entry at a time: FRAME entries send
 * a frame to virtual slot `slot` (mapped onto a physical core through the
 * tenant's core mask), BARRIER waits until every slot has drained (the next
 * layer depends on this one), END completes the request. Frames carry only
 * segment offsets, so the program never changes when cores are re-mapped;
 * only a change of k needs a new dispatch program. A slot is taken mod the
 * tenant's current k (a program made for more slots folds onto fewer cores),
 * and a program starts 8-byte aligned (the request's prog_offset). */
#define VF_DISPATCH_FRAME 1
#define VF_DISPATCH_BARRIER 2
#define VF_DISPATCH_END 3

typedef struct {
    uint32_t frame_offset;  /* segment offset of the frame's FRAME marker */
    uint16_t n_insns;       /* instructions in the frame, marker included */
    uint8_t slot;           /* virtual core slot, 0 .. k-1 */
    uint8_t op;             /* VF_DISPATCH_* */
} vf_dispatch_t;

/* ---- level-1 dispatcher: the tenant interface ---------------------------
 * Formats the driver and the dispatcher share through DDR and registers
 * (hls/include/vfpga_dispatcher.h has the register file and the contracts):
 * request ring entries, completion records, tenant status, mask results and
 * the dispatcher's own fault codes. */
#define VF_DISP_ID 0x56464431        /* "VFD1", global register id */
#define VF_DISP_VERSION 1
#define VF_DISP_REQUEST_BYTES 16
#define VF_DISP_RECORD_BYTES 64
#define VF_DISP_ENTRY_BYTES 8        /* sizeof(vf_dispatch_t) */
#define VF_DISP_NO_CORE 0xffffffff   /* fault_core when no core is involved */

/* tenant control register */
#define VF_TENANT_ENABLE 1
/* the segment is striped (latched at enable): on a board whose config
 * stripes segments over P = VF_SEG_PARTS > 1 banks, P equal parts at the
 * same offset in banks 0 .. P-1, seg_base the first part's address; segment
 * offset a is in part (a / W) % P at part offset (a / (W * P)) * W + a % W,
 * W = one bus word of a port (vfpga_ddr.h, vf_seg_window). Without it the
 * segment is one contiguous range in one bank. With P = 1 both are the same. */
#define VF_TENANT_STRIPED 2

/* tenant status */
#define VF_TENANT_DISABLED 0
#define VF_TENANT_IDLE 1
#define VF_TENANT_RUNNING 2
#define VF_TENANT_FAULTED 3
#define VF_TENANT_DRAINING 4

/* mask_result */
#define VF_MASK_NONE 0
#define VF_MASK_APPLIED 1
#define VF_MASK_REJECT_RANGE 2
#define VF_MASK_REJECT_CONFLICT 3
#define VF_MASK_REJECT_KIND 4

/* completion record status */
#define VF_CPL_OK 1
#define VF_CPL_FAULT 2
#define VF_CPL_ABORTED 3

/* irq_status: bit t = tenant t has records not yet acknowledged
 * (ring_head != cpl_ack); bit VF_IRQ_FAULT_SHIFT + t = tenant t is FAULTED. */
#define VF_IRQ_FAULT_SHIFT 16

/* Fault codes. Values below 16 are the core's VF_FAULT_* (vfpga_isa.h),
 * copied with the core's fault_insn/fault_addr/fault_opcode; fault_core is the
 * physical core. The dispatcher's own faults (fault_core = VF_DISP_NO_CORE): */
#define VF_DFAULT_WINDOW 16    /* segment empty or not inside the device window; fault_addr = 1st byte
                                  outside, as a segment offset (0: seg_base below mem_base) */
#define VF_DFAULT_OVERLAP 17   /* segment overlaps live tenant fault_entry's segment */
#define VF_DFAULT_RING 18      /* ring_size not a power of two in 1..VF_DISP_RING_MAX, or ring/record area
                                  misaligned or outside the segment; fault_addr = offending segment offset
                                  (first byte outside, or the misaligned offset; ring_size when bad) */
#define VF_DFAULT_DOORBELL 19  /* ring_tail/cpl_ack out of range; fault_addr = ring_tail,
                                  fault_entry = cpl_ack */
#define VF_DFAULT_REQUEST 20   /* malformed request: program offset not 8-aligned or flags != 0;
                                  fault_addr = segment offset of the ring entry */
#define VF_DFAULT_PROGRAM 21   /* a dispatch entry outside the segment; fault_addr = 1st byte outside */
#define VF_DFAULT_ENTRY 22     /* unknown op, or FRAME with 0 instructions; fault_addr = entry offset */
#define VF_DFAULT_FRAME 23     /* a frame's instructions outside the segment; fault_addr = 1st byte out */
#define VF_DFAULT_DISABLED 24  /* records only: aborted because the tenant was disabled */

/* ---- DDR formats (inside the tenant segment) --------------------------- */

/* Request ring entry. */
typedef struct {
    uint32_t prog_offset;   /* segment offset of the dispatch program, 8-aligned */
    uint32_t prog_entries;  /* vf_dispatch_t entries (an END may come earlier) */
    uint32_t request_id;    /* echoed in the completion record */
    uint32_t flags;         /* must be 0 */
} vf_disp_request_t;

/* Completion record. Counters cover the request's frames (those that ran,
 * also when it failed), saturating at 0xffffffff. */
typedef struct {
    uint32_t request_id;
    uint32_t seq;           /* request sequence number */
    uint32_t status;        /* VF_CPL_* */
    uint32_t fault;         /* FAULT: the fault; ABORTED: why (tenant fault or VF_DFAULT_DISABLED) */
    uint32_t fault_core;
    uint32_t fault_addr;
    uint32_t fault_insn;    /* core fault: instruction index inside the frame */
    uint32_t fault_entry;   /* dispatch entry index (VF_DFAULT_OVERLAP: the other tenant) */
    uint32_t frames;        /* frames run */
    uint32_t barriers;      /* barriers passed */
    uint32_t insns;         /* instructions retired */
    uint32_t load_iters;    /* pipelined-loop iterations of the units */
    uint32_t compute_iters;
    uint32_t save_iters;
    uint32_t fault_opcode;
    uint32_t cycles;        /* clock cycles from the request's start (ring entry read) to its record */
} vf_disp_completion_t;

/* ========================================================================
 * RNN cores (LSTM / GRU)
 * ========================================================================
 * Everything from here to the end of the RNN section belongs to the RNN
 * cores; the CNN definitions above are unchanged. An RNN core runs the same
 * program structure as a CNN core -- FRAME / BARRIER / END markers and NOP
 * (VF_OP_*), the 8-byte head, the dependency tokens (VF_DEP_*), the fault
 * codes (VF_FAULT_*) and the arithmetic helpers rshift_round / clamp defined
 * at the top of this file -- with its own four opcodes. The RNN opcodes lie
 * outside [0, VF_OP_COUNT), so a CNN core rejects them with VF_FAULT_OPCODE;
 * an RNN core rejects the CNN opcodes 1..6 the same way.
 *
 * Units and tokens: RNN_LOAD runs on the load unit (deps: only *_NEXT),
 * RNN_MATVEC and RNN_GATES on the compute unit (all four), RNN_SAVE on the
 * save unit (only *_PREV); the token rules are those of the CNN core.
 *
 * On-chip buffers (sizes from the board config, "rnn_core" section):
 *   WBUF  int8 weights, byte addressed            (VF_RNN_BUF_WGT)
 *         (RNN_MATVEC reads them as ROWS x COLS tiles)
 *   VBUF  int8 vectors: x_t, h_{t-1}, r*h, h_t     (VF_RNN_BUF_VEC)
 *   ACC   int32 matrix-vector accumulators, words  (VF_RNN_BUF_ACC)
 *   PARAM int32 words; entry e = words 3e..3e+2 = {bias, mult, shift}
 *         (the VF_PARAM_ENTRY_WORDS layout)        (VF_RNN_BUF_PARAM)
 *   STATE int32 words: cell state c and hidden state h in Q.15
 *                                                  (VF_RNN_BUF_STATE)
 *   ACT   int32 words: activation tables           (VF_RNN_BUF_ACT)
 * int32 buffers are filled from DDR as little-endian words.
 *
 * Fixed-point formats (Q.F = F fractional bits, value = integer / 2^F):
 *   pre-activation  Q8.15, VF_RNN_PRE_BITS = 24 bits: every pre-activation
 *                   term and sum is clamped to [PRE_MIN, PRE_MAX] =
 *                   [-2^23, 2^23 - 1] ([-256, 256)).
 *   activation      Q.15 in [-ONE, ONE], ONE = 2^15 = VF_RNN_ONE (17 bits:
 *                   +1.0 is representable).
 *   cell state c    Q16.15 in int32 (saturating).
 *   hidden h        Q16.15 in int32 (|h| <= 1.0 for LSTM; GRU keeps any
 *                   initial state), plus its int8 requantization in VBUF.
 * All arithmetic below is exact int64; no intermediate can overflow it.
 *
 * Activation tables. A table is SEG + 1 int32 words (SEG =
 * VF_RNN_ACT_SEGMENTS, STEP = VF_RNN_ACT_STEP_LOG2, HALF = SEG << (STEP-1),
 * all board-config macros) sampling a function on the knots
 * x_k = (k * 2^STEP - HALF) / 2^15, k = 0..SEG, i.e. the domain
 * [-HALF, HALF) / 2^15 in steps of 2^STEP / 2^15. For a pre-activation p:
 *   u = p + HALF
 *   act(T, p) = clamp(y, -ONE, ONE) with
 *     y = T[0]                                    if u < 0
 *     y = T[SEG]                                  if u >= SEG << STEP
 *     y = T[k] + rshift_round((T[k+1] - T[k]) * (u & (2^STEP - 1)), STEP)
 *                                                 otherwise, k = u >> STEP
 * The tables are data (RNN_LOAD into ACT): the runtime fills them with
 *   T[k] = floor(2^15 * f(x_k) + 1/2)   f = sigmoid or tanh
 * (runtime/rnn_golden.py: act_table). With the board configs' SEG = 2048,
 * STEP = 9 (domain [-16, 16), knots 1/64 apart) these tables give, for every
 * pre-activation p in [PRE_MIN, PRE_MAX] and x = p / 2^15:
 *   |act(SIG, p) / 2^15 - sigmoid(x)| <= 3.1e-5  (measured max 3.07e-5)
 *   |act(TANH, p) / 2^15 - tanh(x)|   <= 4.8e-5  (measured max 4.72e-5)
 * (checked exhaustively by the C-sim testbench and host_tests/test_rnn_core).
 *
 * Requantization of one accumulator with PARAM entry e (shift in [0, 62]):
 *   pre(acc, e) = clamp(rshift_round(acc * e.mult, e.shift), PRE_MIN, PRE_MAX)
 * and of a Q.15 value v to int8 with the GATES output fields:
 *   q8(v) = clamp(out_zp + rshift_round(v * out_mult, out_shift), -128, 127)
 *
 * The compiler keeps the input part W x_t and the recurrent part R h_{t-1}
 * of every gate in separate accumulators ("x part" and "h part"), each with
 * its own per-row PARAM entry (per-row weight scale x vector scale -> Q.15,
 * bias folded in), because x and h have different scales. Vector zero
 * points never reach the core: the compiler folds -zp * sum(row) into that
 * row's bias (mod 2^32), as for CNN convolutions.
 *
 * Work is split across RNN cores along the hidden dimension: a frame is one
 * timestep of a slice [h0, h0 + n) of the hidden units. The slice is
 * addressed entirely by buffer and segment offsets (the rows of the slice in
 * WBUF/ACC/PARAM, its state words, the bytes of h_t it saves); the full
 * h_{t-1} vector every slice needs is exchanged through DDR between the
 * BARRIERs of consecutive timesteps.
 */
#define VF_RNN_OP_FIRST 16  /* lowest RNN opcode                              */
#define VF_RNN_OP_LOAD 16   /* load unit:    DDR rows -> any on-chip buffer    */
#define VF_RNN_OP_MATVEC 17 /* compute unit: WBUF x VBUF -> ACC                */
#define VF_RNN_OP_GATES 18  /* compute unit: ACC -> gates -> STATE, VBUF       */
#define VF_RNN_OP_SAVE 19   /* save unit:    VBUF / ACC / STATE rows -> DDR    */
#define VF_RNN_OP_LIMIT 20  /* one past the highest RNN opcode                 */

/* RNN_LOAD / RNN_SAVE buffers */
#define VF_RNN_BUF_WGT 0
#define VF_RNN_BUF_VEC 1
#define VF_RNN_BUF_ACC 2
#define VF_RNN_BUF_PARAM 3
#define VF_RNN_BUF_STATE 4
#define VF_RNN_BUF_ACT 5
#define VF_RNN_BUF_COUNT 6

/* RNN_MATVEC flags (head.flags) */
#define VF_RNN_MV_INIT 1    /* start from PARAM bias, not from ACC             */

/* RNN_GATES cell kinds */
#define VF_RNN_CELL_LSTM 0    /* LSTM step                                      */
#define VF_RNN_CELL_GRU 1     /* GRU step, linear_before_reset = 0 (2nd half)   */
#define VF_RNN_CELL_GRU_LBR 2 /* GRU step, linear_before_reset = 1              */
#define VF_RNN_CELL_GRU_RH 3  /* GRU, linear_before_reset = 0: r * h_{t-1}      */
#define VF_RNN_CELL_COUNT 4

/* gate order in ACC / PARAM (the ONNX order: LSTM iofc, GRU zrh) */
#define VF_RNN_LSTM_GATES 4
#define VF_RNN_GATE_I 0
#define VF_RNN_GATE_O 1
#define VF_RNN_GATE_F 2
#define VF_RNN_GATE_C 3
#define VF_RNN_GRU_GATES 3
#define VF_RNN_GATE_Z 0
#define VF_RNN_GATE_R 1
#define VF_RNN_GATE_H 2

/* fixed-point formats */
#define VF_RNN_FRAC_BITS 15
#define VF_RNN_ONE 32768
#define VF_RNN_PRE_BITS 24
#define VF_RNN_PRE_MAX 8388607 /* PRE_MIN = -(VF_RNN_PRE_MAX + 1)          */

/* RNN_LOAD and RNN_SAVE: planes x rows x row_bytes bytes. For p < planes,
 * r < rows, b < row_bytes, the DDR byte
 *   dram_addr + p * plane_stride + r * row_stride + b
 * corresponds to byte (p * rows + r) * row_bytes + b of a dense run in the
 * buffer that starts at element buf_addr (bytes for WBUF/VBUF, int32 words
 * for ACC/PARAM/STATE/ACT; int32 buffers need row_bytes % 4 == 0 and take
 * little-endian words). LOAD: any buffer, any strides (0 repeats a row);
 *   into WBUF (one memory of T-byte tile words, T = VF_RNN_ROWS *
 *   VF_RNN_COLS, written a whole word at a time) buf_addr and row_bytes
 *   must be multiples of T (else VF_FAULT_FIELD on the field).
 * SAVE: VBUF, ACC or STATE, rows that do not overlap in DDR
 *   (rows == 1 or row_stride >= row_bytes, and planes == 1 or
 *    plane_stride >= (rows - 1) * row_stride + row_bytes). */
typedef struct {
    vf_insn_head_t head;
    uint32_t dram_addr;    /* segment offset of plane 0, row 0 */
    uint32_t row_stride;   /* DDR bytes between rows */
    uint32_t plane_stride; /* DDR bytes between planes */
    uint32_t buf_addr;     /* element offset in the buffer */
    uint32_t row_bytes;    /* bytes per row, >= 1 */
    uint16_t rows;         /* >= 1 */
    uint16_t planes;       /* >= 1 */
    uint8_t buffer;        /* VF_RNN_BUF_* */
    uint8_t reserved[3];
} vf_insn_rnn_mem_t;

/* RNN_MATVEC: int8 matrix x int8 vector, int32 accumulators, the matrix in
 * WBUF as beat-major tiles. A tile is one WBUF word of T = VF_RNN_ROWS *
 * VF_RNN_COLS bytes holding a ROWS x COLS block of the matrix row-major
 * ([r][c]: byte r * COLS + c), the block the array consumes in one beat. For
 * row r < rows and column c < cols, with R = VF_RNN_ROWS, C = VF_RNN_COLS:
 *   W(r, c) = WBUF[wgt_addr + ((r / R) * wgt_stride + c / C) * T + (r % R) * C + c % C]
 * i.e. row block rb's tiles are column blocks 0, 1, ... in consecutive words,
 * and row blocks lie wgt_stride words apart. For r < rows:
 *   acc = INIT ? PARAM[param_addr + r].bias : ACC[acc_addr + r]
 *   acc += sum_{c < cols} W(r, c) * VBUF[vec_addr + c]
 *   ACC[acc_addr + r] = acc                    (int32, wraps on overflow)
 * The bytes of a partial tile outside rows x cols are never read (the
 * compiler writes zeros there). Requires rows, cols >= 1, wgt_addr a
 * multiple of T (a tile's bytes sit at fixed offsets of a word) and
 * wgt_stride >= ceil(cols / C) when rows > R (row blocks do not overlap).
 * A matrix wider than a tile row is summed by several RNN_MATVECs without
 * INIT. */
typedef struct {
    vf_insn_head_t head;
    uint32_t wgt_addr;   /* WBUF byte offset of tile (0, 0), a multiple of T */
    uint32_t wgt_stride; /* WBUF tile words between row blocks */
    uint32_t vec_addr;   /* VBUF byte offset of element 0 */
    uint32_t acc_addr;   /* ACC word offset of row 0 */
    uint32_t param_addr; /* PARAM entry of row 0 (INIT only) */
    uint32_t rows;
    uint32_t cols;
} vf_insn_rnn_matvec_t;

/* RNN_GATES: the element-wise unit over a slice of n hidden units. For gate
 * k and unit j < n, with gs = gate_stride (>= n):
 *   ax_k = pre(ACC[acc_x + k*gs + j], PARAM[param_x + k*gs + j])   x part
 *   ah_k = pre(ACC[acc_h + k*gs + j], PARAM[param_h + k*gs + j])   h part
 *   p_k  = clamp(ax_k + ah_k, PRE_MIN, PRE_MAX)
 *   SIG = ACT[sig_addr ...], TANH = ACT[tanh_addr ...]  (SEG + 1 words each)
 *   hp = STATE[state_h + j] (h_{t-1}, Q.15), cp = STATE[state_c + j] (c_{t-1})
 * cell LSTM (gates i, o, f, c):
 *   i = act(SIG, p_0), o = act(SIG, p_1), f = act(SIG, p_2), g = act(TANH, p_3)
 *   c = clamp(rshift_round(f * cp + i * g, 15), INT32_MIN, INT32_MAX)
 *   h = rshift_round(o * act(TANH, clamp(c, PRE_MIN, PRE_MAX)), 15)
 *   STATE[state_c + j] = c, STATE[state_h + j] = h, VBUF[out_addr + j] = q8(h)
 *   (the c and h ranges of STATE must not overlap)
 * cell GRU_LBR (gates z, r, h; linear_before_reset = 1):
 *   z = act(SIG, p_0), r = act(SIG, p_1)
 *   n = act(TANH, clamp(ax_2 + rshift_round(r * ah_2, 15), PRE_MIN, PRE_MAX))
 *   h = clamp(n + rshift_round(z * (hp - n), 15), INT32_MIN, INT32_MAX)
 *   STATE[state_h + j] = h, VBUF[out_addr + j] = q8(h)
 * cell GRU (linear_before_reset = 0, after GRU_RH and an RNN_MATVEC of the
 *   h-gate rows of R by r * h_{t-1} into the h part of gate 2):
 *   as GRU_LBR but n = act(TANH, p_2)
 * cell GRU_RH (linear_before_reset = 0, first half; reads gate 1 only):
 *   r = act(SIG, p_1), VBUF[out_addr + j] = q8(rshift_round(r * hp, 15))
 * Accesses: LSTM reads gates 0..3, STATE c and h ranges, both tables; GRU and
 * GRU_LBR read gates 0..2, the STATE h range and both tables; GRU_RH reads
 * gate 1, the STATE h range and SIG. Every PARAM shift read must lie in
 * [0, 62] and out_shift <= 62. Units are processed in order j = 0, 1, ... */
typedef struct {
    vf_insn_head_t head;
    uint32_t acc_x;       /* ACC word offset: gate 0 of the x part */
    uint32_t acc_h;       /* ACC word offset: gate 0 of the h part */
    uint32_t param_x;     /* PARAM entry: gate 0 of the x part */
    uint32_t param_h;     /* PARAM entry: gate 0 of the h part */
    uint32_t state_c;     /* STATE word offset of c[0] (LSTM) */
    uint32_t state_h;     /* STATE word offset of h[0] */
    uint32_t out_addr;    /* VBUF byte offset of the int8 output */
    uint32_t n;           /* hidden units in the slice, >= 1 */
    uint32_t gate_stride; /* ACC words / PARAM entries between gates, >= n */
    uint16_t sig_addr;    /* ACT word offset of the sigmoid table */
    uint16_t tanh_addr;   /* ACT word offset of the tanh table */
    int32_t out_mult;
    uint8_t out_shift;
    int8_t out_zp;
    uint8_t cell;         /* VF_RNN_CELL_* */
    uint8_t reserved;
} vf_insn_rnn_gates_t;

/* One RNN instruction slot (the markers use vf_insn_marker_t). */
typedef union {
    vf_insn_head_t head;
    vf_insn_rnn_mem_t rnn_mem;
    vf_insn_rnn_matvec_t matvec;
    vf_insn_rnn_gates_t gates;
    vf_insn_marker_t marker;
    uint8_t raw[64];
} vf_rnn_insn_t;
/* ---- end of the RNN section -------------------------------------------- */

#endif /* VFPGA_ISA_H */
