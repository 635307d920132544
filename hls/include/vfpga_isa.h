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

#define VF_ISA_VERSION 1
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
#define VF_OP_COUNT 10

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
 * SAVE: OBUF[buf_addr ...] tile is written to pixels (y0 + r, x0 + c), which
 *   must all lie inside the view (no padding on the way out). */
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
    uint8_t reserved[3];
} vf_insn_mem_t;

/* LOAD_LINEAR: nbytes contiguous bytes to WBUF or PARAM (byte offset,
 * multiple of 4 for PARAM). */
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
 *          * WBUF[wgt_addr + (((g*cout_g + o)*kh + ky)*kw + kx)*cin_g + i]
 *   ACC_FINAL: OBUF[out_addr + (oy*out_w+ox)*oct + oc] =
 *                clamp(out_zp + rshift_round(acc * mult, shift), clip_lo, clip_hi)
 *   else:      ACC[...] = acc
 * where ict = groups*cin_g, oct = groups*cout_g and mult/shift come from
 * PARAM[param_addr + oc]. Requires (out_h-1)*sh + kh <= in_h (same for w),
 * shift in [0, 62].
 * The input zero point never reaches the core: the compiler loads padding as
 * in_zp and folds -in_zp * sum(w) into the bias (mod 2^32), which equals
 * summing (x - in_zp) * w over a zero-padded input. */
typedef struct {
    vf_insn_head_t head;
    uint32_t in_addr;       /* IBUF byte offset */
    uint32_t wgt_addr;      /* WBUF byte offset */
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
 * only a change of k needs a new dispatch program. */
#define VF_DISPATCH_FRAME 1
#define VF_DISPATCH_BARRIER 2
#define VF_DISPATCH_END 3

typedef struct {
    uint32_t frame_offset;  /* segment offset of the frame's FRAME marker */
    uint16_t n_insns;       /* instructions in the frame, marker included */
    uint8_t slot;           /* virtual core slot, 0 .. k-1 */
    uint8_t op;             /* VF_DISPATCH_* */
} vf_dispatch_t;

#endif /* VFPGA_ISA_H */
