/*
 * vfpga CNN core: decoder + LOAD / COMPUTE / SAVE units (Vitis HLS C++14).
 *
 * Implements vf_cnn_core_geometry() and vf_cnn_core_step() of
 * include/vfpga_cnn_core.h with the instruction semantics of
 * include/vfpga_isa.h. The same source is synthesised by Vitis HLS (wrapped by
 * cnn_core_top.cpp), compiled by g++ for the C-simulation testbench, and
 * loaded into Python through cffi as the emulated hardware.
 *
 * ---- Step rule, decode and the unit schedule -------------------------------
 * As include/vfpga_unit_scheduler.h states them (written once for both core
 * kinds). The CNN core's units: LOAD (LOAD_TILE, LOAD_LINEAR), COMPUTE (CONV,
 * POOL, ADD, LUT, MUL) and SAVE (SAVE); opcodes below VF_OP_COUNT decode (any other is
 * VF_FAULT_OPCODE).
 *
 * ---- Faults -------------------------------------------------------------------
 * Each instruction is validated completely before it moves any byte:
 *   1. VF_FAULT_FIELD   inconsistent fields (zero sizes, strides, kernel larger
 *                       than the tile, shift out of range, channels >
 *                       pixel_stride, SAVE tile outside its view, PARAM
 *                       alignment, POOL valid window outside the tile,
 *                       clip_lo > clip_hi, undefined flag/deps bits, a PARAM
 *                       shift outside [0, 62] for CONV ACC_FINAL, a CONV
 *                       wgt_addr that is not a multiple of VF_CONV_WORD, a
 *                       LOAD_LINEAR into WBUF whose buf_addr is not a
 *                       multiple of VF_AXI_BYTES).
 *                       fault_addr = byte offset of the offending field inside
 *                       the 64-byte instruction (a bad PARAM shift reports the
 *                       param_addr field).
 *   2. VF_FAULT_BUFFER  an on-chip range outside its buffer. fault_addr = first
 *                       offending offset, in the unit of the address field
 *                       (IBUF/WBUF/OBUF bytes, ACC words, PARAM entries for
 *                       CONV, PARAM bytes for LOAD_LINEAR).
 *   3. VF_FAULT_SEGMENT a DDR byte the instruction would touch lies outside
 *                       [0, seg_limit). fault_addr = lowest such offset (which
 *                       is also the first one in access order).
 * VF_FAULT_FETCH / VF_FAULT_OPCODE / VF_FAULT_DEADLOCK: see the scheduler.
 * fault_addr saturates at 0xffffffff.
 * All address arithmetic is 64-bit on validated, saturated extents: no field
 * value can make the core touch memory outside seg[0, seg_limit) or outside
 * its on-chip buffers. Nothing of a faulting instruction is written.
 *
 * ---- Pipelined-loop iteration counts (the cycle model's contract) ----------
 * Per retired instruction, iterations of its II=1 pipelined loop:
 *   LOAD_TILE, SAVE  dense (pixel_stride == channels, and step_x <= 1):
 *                        tile_h * ceil(tile_w * channels / VF_AXI_BYTES)
 *                    otherwise:
 *                        tile_h * tile_w * ceil(channels / VF_AXI_BYTES)
 *                    (LOAD_TILE: padding pixels included)
 *   LOAD_LINEAR      ceil(nbytes / VF_AXI_BYTES)
 *   CONV  cin_g == 1 (channel lanes, depthwise style):
 *                        out_h * out_w * kh * kw * ceil(groups * cout_g / VF_OCP)
 *         otherwise  groups * out_h * out_w * kh * kw
 *                        * ceil(cin_g / VF_ICP) * ceil(cout_g / VF_OCP)
 *   POOL             out_h * out_w * kh * kw * ceil(channels / VF_OCP)
 *   ADD, LUT         ceil(length / VF_OCP)
 *   MUL              pixels * ceil(channels / VF_OCP)
 *   NOP, markers     0
 * iters[idx] and the counters as the scheduler keeps them; load_bytes /
 * save_bytes count DDR bytes actually moved (LOAD_TILE padding excluded); macs
 * counts useful CONV MACs (groups * out_h * out_w * kh * kw * cin_g * cout_g).
 *
 * ---- Two bodies, one loop nest ----------------------------------------------
 * The HLS loop nests (pipelined beat loops with VF_ICP x VF_OCP / VF_AXI_BYTES
 * unrolled lane bodies) are compiled when VF_HLS_LITERAL is defined, which is
 * automatic under __SYNTHESIS__; they count their beats as they run. The
 * default g++ build (the emulator) keeps the same validation and
 * requantization but executes each beat sequence as contiguous int8 runs that
 * g++ -O3 vectorises: dense CONV is a blocked int8 GEMM (vf_conv_gemm: im2col
 * rows of a pixel block against weight-stationary blocks of output channels,
 * reduced to the host's byte dot-product instructions where it has them
 * (vpmaddwd on operands widened to 16 bits on AVX2 hosts without one), the
 * beat-major weight words unpacked into rows once per CONV), depthwise CONV
 * runs channel blocks outermost reading the lane rows of the words in place,
 * POOL visits only the valid window, ADD / LUT / MUL run over whole rows,
 * LOAD/SAVE move rows with memcpy. It takes the counts from the formulas
 * above. int32 wrapping addition is associative and commutative
 * and every output is written once from the same inputs, so both builds are
 * bit-identical; `make -C hls csim` runs the testbench on both and checks the
 * counted beats against the formulas, and host_tests/hls/
 * test_csim_bodies_agree.py runs random programs on both (and on the
 * emulator's portable and host-ISA builds) comparing every byte and count.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vfpga_isa.h"
#include "vfpga_cnn_core.h"
#include "vfpga_mac.h"
#define VF_STEP_STORE_URAM VF_URAM_STEP_STORE /* this kind's step instruction store (board config storage.uram) */
#include "vfpga_unit_scheduler.h"

#ifndef VF_HLS_LITERAL
#include <vector>
#endif

#if !defined(VF_ICP) || !defined(VF_OCP) || !defined(VF_AXI_BYTES) || !defined(VF_IBUF_BYTES) || \
    !defined(VF_WBUF_BYTES) || !defined(VF_ACC_WORDS) || !defined(VF_OBUF_BYTES) ||                \
    !defined(VF_PARAM_ENTRIES) || !defined(VF_CONV_WORD)
#error "board macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif

static_assert(VF_ICP >= 1 && VF_ICP <= 256, "VF_ICP out of range");
static_assert(VF_OCP % 2 == 0, "the CONV beat packs its output lanes in pairs (vfpga_mac.h): ocp must be even");
static_assert(VF_OCP >= 1 && VF_OCP <= 256, "VF_OCP out of range");
static_assert(VF_CONV_WORD == VF_ICP * VF_OCP, "VF_CONV_WORD is one MAC beat's weights: ICP * OCP bytes");
static_assert(VF_CONV_WORD % VF_AXI_BYTES == 0, "LOAD_LINEAR writes WBUF words whole: a bus beat lies in one word");
/* POOL: |sum * mult| <= 255 * IBUF * 2^31 must stay below 2^63. */
static_assert(VF_IBUF_BYTES >= 1 && VF_IBUF_BYTES <= (1u << 23), "VF_IBUF_BYTES out of range");
static_assert(VF_WBUF_BYTES >= 1 && VF_WBUF_BYTES <= (1u << 30), "VF_WBUF_BYTES out of range");
static_assert(VF_ACC_WORDS >= 1 && VF_ACC_WORDS <= (1u << 28), "VF_ACC_WORDS out of range");
static_assert(VF_OBUF_BYTES >= 1 && VF_OBUF_BYTES <= (1u << 30), "VF_OBUF_BYTES out of range");
static_assert(VF_PARAM_ENTRIES >= 1 && VF_PARAM_ENTRIES <= (1u << 24), "VF_PARAM_ENTRIES out of range");

#define VF_PARAM_BYTES ((uint64_t)VF_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS * 4u)

/* ========================================================================== */
/* Small helpers (the shared ones are in vfpga_unit_scheduler.h)               */
/* ========================================================================== */

/* A DDR access of `rows` rows starting `row_pitch` apart, each made of `cols`
 * runs of `run` bytes starting `col_pitch` apart (col_pitch >= run >= 1).
 * Addresses increase in access order. Returns true when every byte lies in
 * [0, limit); otherwise *first is the lowest accessed offset >= limit. */
static bool vf_seg_check(uint64_t base, uint64_t rows, uint64_t row_pitch, uint64_t cols, uint64_t col_pitch,
                         uint64_t run, uint64_t limit, uint64_t *first)
{
    const uint64_t row_span = (cols - 1) * col_pitch + run;
    if (base + (rows - 1) * row_pitch + row_span <= limit)
        return true;
SEG_SCAN:
    for (uint64_t r = 0; r < rows; ++r) {
        const uint64_t rs = base + r * row_pitch;
        if (rs + row_span <= limit)
            continue;
        if (rs >= limit) {
            *first = rs;
            return false;
        }
        const uint64_t k = (limit - rs) / col_pitch;
        const uint64_t ps = rs + k * col_pitch;
        *first = limit < ps + run ? limit : ps + col_pitch;
        return false;
    }
    *first = limit; /* not reached: the whole-range test above failed */
    return false;
}

/* rdiv(n, d) = sign(n) * ((|n| + d / 2) / d), d >= 1, |n| <= 2^62. */
static inline int64_t vf_rdiv(int64_t n, int64_t d)
{
    const int64_t q = ((n < 0 ? -n : n) + d / 2) / d;
    return n < 0 ? -q : q;
}

static inline int8_t vf_clamp8(int64_t v, int8_t lo, int8_t hi)
{
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}

/* CONV output: clamp(out_zp + rshift_round(acc * mult, shift), lo, hi). */
static inline int8_t vf_requant(int32_t acc, int32_t mult, int32_t shift, int8_t zp, int8_t lo, int8_t hi)
{
    return vf_clamp8((int64_t)zp + vf_rshift_round((int64_t)acc * mult, (uint32_t)shift), lo, hi);
}

/* ========================================================================== */
/* LOAD unit                                                                   */
/* ========================================================================== */

/* Field checks every tensor-view instruction (LOAD_TILE, SAVE) shares;
 * ok.fault == VF_FAULT_NONE when the view is well formed. */
static vf_exec_t vf_view_fields(const vf_insn_mem_t &m)
{
    if (m.channels == 0)
        return VF_FIELD(vf_insn_mem_t, channels);
    if (m.pixel_stride < m.channels)
        return VF_FIELD(vf_insn_mem_t, pixel_stride);
    if (m.height == 0)
        return VF_FIELD(vf_insn_mem_t, height);
    if (m.width == 0)
        return VF_FIELD(vf_insn_mem_t, width);
    if (m.tile_h == 0)
        return VF_FIELD(vf_insn_mem_t, tile_h);
    if (m.tile_w == 0)
        return VF_FIELD(vf_insn_mem_t, tile_w);
    return vf_fail(VF_FAULT_NONE, 0);
}

static vf_exec_t vf_load_tile(const vf_ddr_t &ddr, uint64_t win, uint64_t seg_limit, const vf_insn_mem_t &m,
                              int8_t *ibuf)
{
    const vf_exec_t view = vf_view_fields(m);
    if (view.fault != VF_FAULT_NONE)
        return view;
    if (m.step_y > 1)
        return VF_FIELD(vf_insn_mem_t, step_y);
    if (m.step_x > 1)
        return VF_FIELD(vf_insn_mem_t, step_x);

    const uint64_t ch = m.channels, ps = m.pixel_stride, th = m.tile_h, tw = m.tile_w;
    const uint64_t row_bytes = tw * ch; /* < 2^32 */
    const bool dense = ps == ch;
    if (!vf_fits(m.buf_addr, th * row_bytes, VF_IBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(m.buf_addr, VF_IBUF_BYTES));

    /* the part of the tile inside the view */
    const int64_t y0 = m.y0, x0 = m.x0;
    const int64_t ys = y0 > 0 ? y0 : 0, ye = y0 + (int64_t)th < (int64_t)m.height ? y0 + (int64_t)th : m.height;
    const int64_t xs = x0 > 0 ? x0 : 0, xe = x0 + (int64_t)tw < (int64_t)m.width ? x0 + (int64_t)tw : m.width;
    const bool any = ys < ye && xs < xe;
    const uint64_t pitch = (uint64_t)m.width * ps;
    uint64_t moved = 0;
    if (any) {
        const uint64_t rows = (uint64_t)(ye - ys), cols = (uint64_t)(xe - xs);
        const uint64_t base = m.dram_addr + (uint64_t)ys * pitch + (uint64_t)xs * ps;
        uint64_t first = 0;
        const bool ok = dense ? vf_seg_check(base, rows, pitch, 1, cols * ch, cols * ch, seg_limit, &first)
                              : vf_seg_check(base, rows, pitch, cols, ps, ch, seg_limit, &first);
        if (!ok)
            return vf_fail(VF_FAULT_SEGMENT, first);
        moved = rows * cols * ch;
    }

    int8_t *dst = ibuf + m.buf_addr;
    const int8_t pad = m.pad_value;
    const uint64_t left = any ? (uint64_t)(xs - x0) * ch : row_bytes; /* padding bytes before a row's data */
    const uint64_t mid = any ? (uint64_t)(xe - xs) * ch : 0;          /* a row's data bytes */
#ifdef VF_HLS_LITERAL
    uint64_t beats = 0;
LOAD_ROW:
    for (uint64_t r = 0; r < th; ++r) {
        const int64_t y = y0 + (int64_t)r;
        const bool row_in = any && y >= ys && y < ye;
        int8_t *drow = dst + r * row_bytes;
        if (dense) {
            /* a dense row's data is one DDR run: tile byte k in [left, left + mid)
             * is run byte k - left, so a beat reads one span of consecutive
             * bytes (no per-lane division by the channel count) */
            const uint64_t run = row_in ? m.dram_addr + (uint64_t)y * pitch + (uint64_t)xs * ps : 0;
        LOAD_BEAT_DENSE:
            for (uint64_t b = 0; b < vf_ceil_div(row_bytes, VF_AXI_BYTES); ++b) {
#pragma HLS PIPELINE II=1
                ++beats;
                const uint64_t k0 = b * VF_AXI_BYTES;
                const uint64_t lo = vf_max64(k0, left), hi = vf_min64(k0 + VF_AXI_BYTES, left + mid);
                int8_t word[VF_AXI_BYTES] = {0};
                if (row_in && lo < hi)
                    vf_seg_read_beat(ddr, win, run + (lo - left), word + (lo - k0), (uint32_t)(hi - lo));
            LOAD_LANE_DENSE:
                for (uint32_t j = 0; j < VF_AXI_BYTES; ++j) {
#pragma HLS UNROLL
                    const uint64_t k = k0 + j;
                    if (k < row_bytes)
                        drow[k] = row_in && k >= left && k < left + mid ? word[j] : pad;
                }
            }
        } else {
        LOAD_PIXEL:
            for (uint64_t c = 0; c < tw; ++c) {
                const int64_t x = x0 + (int64_t)c;
                const bool in = row_in && x >= xs && x < xe;
            LOAD_BEAT:
                for (uint64_t b = 0; b < vf_ceil_div(ch, VF_AXI_BYTES); ++b) {
#pragma HLS PIPELINE II=1
                    ++beats;
                    const uint64_t k0 = b * VF_AXI_BYTES;
                    int8_t word[VF_AXI_BYTES] = {0};
                    if (in)
                        vf_seg_read_beat(ddr, win, m.dram_addr + (uint64_t)y * pitch + (uint64_t)x * ps + k0, word,
                                         (uint32_t)vf_min64(VF_AXI_BYTES, ch - k0));
                LOAD_LANE:
                    for (uint32_t j = 0; j < VF_AXI_BYTES; ++j) {
#pragma HLS UNROLL
                        const uint64_t k = k0 + j;
                        if (k < ch)
                            drow[c * ch + k] = in ? word[j] : pad;
                    }
                }
            }
        }
    }
    return vf_done(beats, moved, 0);
#else
    const uint64_t right = row_bytes - left - mid;
    for (uint64_t r = 0; r < th; ++r, dst += row_bytes) {
        const int64_t y = y0 + (int64_t)r;
        if (!any || y < ys || y >= ye) {
            memset(dst, pad, row_bytes);
            continue;
        }
        memset(dst, pad, left);
        uint64_t at = m.dram_addr + (uint64_t)y * pitch + (uint64_t)xs * ps; /* segment offset */
        if (dense) {
            vf_seg_read(ddr, win, at, dst + left, mid);
        } else {
            int8_t *d = dst + left;
            for (int64_t x = xs; x < xe; ++x, d += ch, at += ps)
                vf_seg_read(ddr, win, at, d, ch);
        }
        memset(dst + left + mid, pad, right);
    }
    const uint64_t iters = dense ? th * vf_ceil_div(row_bytes, VF_AXI_BYTES) : th * tw * vf_ceil_div(ch, VF_AXI_BYTES);
    return vf_done(iters, moved, 0);
#endif
}

static vf_exec_t vf_load_linear(const vf_ddr_t &ddr, uint64_t win, uint64_t seg_limit, const vf_insn_linear_t &l,
                                int8_t *wbuf, int32_t *param)
{
    if (l.buffer != VF_BUF_WGT && l.buffer != VF_BUF_PARAM)
        return VF_FIELD(vf_insn_linear_t, buffer);
    if (l.nbytes == 0)
        return VF_FIELD(vf_insn_linear_t, nbytes);
    const bool to_param = l.buffer == VF_BUF_PARAM;
    if (to_param && (l.buf_addr & 3u) != 0)
        return VF_FIELD(vf_insn_linear_t, buf_addr);
    if (to_param && (l.nbytes & 3u) != 0)
        return VF_FIELD(vf_insn_linear_t, nbytes);
    /* WBUF is one memory of VF_CONV_WORD-byte words (VF_CNN_PARTITIONS): a bus
     * beat must land inside one word, so the run starts on a bus word */
    if (!to_param && (l.buf_addr % VF_AXI_BYTES) != 0)
        return VF_FIELD(vf_insn_linear_t, buf_addr);
    const uint64_t size = to_param ? VF_PARAM_BYTES : (uint64_t)VF_WBUF_BYTES;
    if (!vf_fits(l.buf_addr, l.nbytes, size))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(l.buf_addr, size));
    if (!vf_fits(l.dram_addr, l.nbytes, seg_limit))
        return vf_fail(VF_FAULT_SEGMENT, vf_first_out(l.dram_addr, seg_limit));

    const uint64_t n = l.nbytes;
#ifdef VF_HLS_LITERAL
    uint64_t beats = 0;
    /* WBUF words are assembled in wword and written whole (no byte writes into a wide word). The bytes of
     * the first and the last word outside the run keep their contents: both words are read once before
     * the beats, on the LOAD unit's port while the first DDR beat is on its way, and merged. */
    const uint64_t ws = to_param ? 0 : l.buf_addr % VF_CONV_WORD; /* run byte 0's offset in its word */
    int8_t wword[VF_CONV_WORD], wlast[VF_CONV_WORD];
    if (!to_param) {
        const uint64_t w0 = l.buf_addr / VF_CONV_WORD, wl = (l.buf_addr + n - 1) / VF_CONV_WORD;
    LINEAR_MERGE:
        for (uint32_t j = 0; j < VF_CONV_WORD; ++j) {
#pragma HLS UNROLL
            wword[j] = wbuf[w0 * VF_CONV_WORD + j];
            wlast[j] = wbuf[wl * VF_CONV_WORD + j];
        }
    }
LINEAR_BEAT:
    for (uint64_t b = 0; b < vf_ceil_div(n, VF_AXI_BYTES); ++b) {
#pragma HLS PIPELINE II=1
        ++beats;
        int8_t word[VF_AXI_BYTES] = {0};
        vf_seg_read_beat(ddr, win, l.dram_addr + b * VF_AXI_BYTES, word,
                         (uint32_t)vf_min64(VF_AXI_BYTES, n - b * VF_AXI_BYTES));
    LINEAR_LANE:
        for (uint32_t j = 0; j < VF_AXI_BYTES; ++j) {
#pragma HLS UNROLL
            const uint64_t k = b * VF_AXI_BYTES + j;
            if (k < n) {
                if (to_param) {
                    const uint64_t a = l.buf_addr + k;
                    const uint32_t sh = 8u * (uint32_t)(a & 3u);
                    const uint32_t old = (uint32_t)param[a >> 2];
                    const uint32_t byte = (uint32_t)(uint8_t)word[j];
                    param[a >> 2] = vf_i32((old & ~(0xffu << sh)) | (byte << sh));
                } else {
                    /* the beat's bytes into the word being assembled (the beat lies inside it) */
                    wword[(ws + k) % VF_CONV_WORD] = word[j];
                }
            }
        }
        /* a WBUF word is written whole, once: at the beat that completes it or at the run's last beat */
        const uint64_t end = vf_min64((b + 1) * VF_AXI_BYTES, n); /* run bytes so far */
        if (!to_param && ((ws + end) % VF_CONV_WORD == 0 || end == n)) {
            const uint64_t wi = (l.buf_addr + end - 1) / VF_CONV_WORD;
        LINEAR_WORD:
            for (uint32_t j = 0; j < VF_CONV_WORD; ++j) {
#pragma HLS UNROLL
                wbuf[wi * VF_CONV_WORD + j] = wword[j];
                wword[j] = wlast[j]; /* the next word: whole if it is not the last, else merged */
            }
        }
    }
    return vf_done(beats, n, 0);
#else
    if (to_param) {
        int32_t *dst = param + (l.buf_addr >> 2);
        int8_t chunk[256]; /* whole words */
        for (uint64_t k = 0; k < n; k += sizeof chunk) {
            const uint64_t m = vf_min64(sizeof chunk, n - k);
            vf_seg_read(ddr, win, l.dram_addr + k, chunk, m);
            for (uint64_t w = 0; w < m / 4; ++w)
                dst[k / 4 + w] = vf_word(chunk + 4 * w);
        }
    } else {
        vf_seg_read(ddr, win, l.dram_addr, wbuf + l.buf_addr, n);
    }
    return vf_done(vf_ceil_div(n, VF_AXI_BYTES), n, 0);
#endif
}

/* The LOAD unit: LOAD_TILE and LOAD_LINEAR. */
static vf_exec_t vf_load_unit(const vf_ddr_t &ddr, uint64_t win, uint64_t seg_limit, const vf_insn_t &insn,
                              vf_cnn_buffers_t *b)
{
    if (insn.head.flags != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    if (insn.head.opcode == VF_OP_LOAD_TILE)
        return vf_load_tile(ddr, win, seg_limit, vf_format<vf_insn_mem_t>(insn), b->ibuf);
    return vf_load_linear(ddr, win, seg_limit, vf_format<vf_insn_linear_t>(insn), b->wbuf, b->param);
}

/* ========================================================================== */
/* COMPUTE unit                                                                */
/* ========================================================================== */

/* A validated CONV, decoded. Pointers are only set for the buffers the
 * instruction really accesses. */
typedef struct {
    uint32_t G, CIN, COUT, KH, KW, SH, SW, IW, OH, OW;
    uint64_t ICT, OCT, WST; /* input/output channels of the tile, weights per output channel */
    uint64_t NIB, NOB;      /* input/output channel blocks (of a group; NOB across groups when CIN == 1) */
    bool init, final;
    int8_t zp, lo, hi;
    const int8_t *in;
    const int8_t *w;
    int32_t *acc;
    int8_t *out;
    const int32_t *prm;
} vf_conv_t;

static inline uint32_t vf_conv_first(const vf_conv_t &k, uint64_t oc, uint64_t pix)
{
    return k.init ? (uint32_t)k.prm[oc * VF_PARAM_ENTRY_WORDS] : (uint32_t)k.acc[pix * k.OCT + oc];
}

static inline void vf_conv_last(const vf_conv_t &k, uint64_t oc, uint64_t pix, uint32_t v)
{
    if (k.final) {
        const int32_t *p = k.prm + oc * VF_PARAM_ENTRY_WORDS;
        k.out[pix * k.OCT + oc] = vf_requant(vf_i32(v), p[1], p[2], k.zp, k.lo, k.hi);
    } else {
        k.acc[pix * k.OCT + oc] = vf_i32(v);
    }
}

#ifndef VF_HLS_LITERAL
/* ---- The vectorised CONV body for cin_g > 1: a blocked int8 GEMM -----------
 * Per group, out[pix][oc] = first(oc, pix) + sum_j A[pix][j] * W[oc][j] over
 * the WST = kh * kw * cin_g taps, A[pix] being the pixel's window (im2col row)
 * in the order of the weights (ky, kx, cin). Blocks: the im2col rows of a
 * block of pixels sit in a per-thread buffer sized for L2, with an int32 tile
 * of their outputs; for each block of VF_GEMM_NO output channels, whose weight
 * rows stay in L1 (weight-stationary), VF_GEMM_NP pixels at a time are reduced
 * against them into NP x NO int32 accumulators. g++ -O3 vectorises that
 * reduction as a dot product (usdot_prod), one instruction per 4 byte pairs
 * where the host has one (x86 VNNI vpdpbusd; hls/cffi_build.py builds the
 * emulator for the installing host). It multiplies unsigned by signed bytes,
 * so A holds x + 128 (x ^ 0x80) and each output channel adds
 * -128 * sum_j W[oc][j]: equal modulo 2^32, as every lane is (wrapping uint32,
 * in both bodies). Partial sums stay exact in int32 for runs of VF_GEMM_RUN
 * products (|(x + 128) * w| <= 255 * 128). The first values (bias or the
 * accumulator) and the requantization run over contiguous channels of the
 * tile, vectorised too.
 */
#if defined(__AVX512VNNI__) || defined(__AVXVNNI__)
#define VF_GEMM_NP 4 /* pixels per register block (4 x 4 dot products in registers) */
#else
#define VF_GEMM_NP 2 /* without a byte dot product, 2 x 4 keeps the widened operands in registers */
#endif
#define VF_GEMM_NO 4                /* output channels per register block */
#define VF_GEMM_RUN 65536u          /* products per exact int32 partial sum */
#define VF_GEMM_A_BYTES (96u << 10) /* im2col rows of one pixel block (L2) */

/* c[p * ldc + o] += sum_{j < n} a[p * lda + j] * w[o * ldw + j], wrapping. */
template <int NP, int NO>
static inline void vf_gemm_block(uint32_t *c, uint64_t ldc, const uint8_t *a, uint64_t lda, const int8_t *w,
                                 uint64_t ldw, uint64_t n)
{
    for (uint64_t j0 = 0; j0 < n; j0 += VF_GEMM_RUN) {
        const uint32_t m = (uint32_t)vf_min64(n - j0, VF_GEMM_RUN);
        int32_t s[NP][NO] = {};
        for (uint32_t j = 0; j < m; ++j) {
            for (int p = 0; p < NP; ++p) {
                const int32_t x = a[p * lda + j0 + j];
                for (int o = 0; o < NO; ++o)
                    s[p][o] += x * w[o * ldw + j0 + j];
            }
        }
        for (int p = 0; p < NP; ++p)
            for (int o = 0; o < NO; ++o)
                c[p * ldc + o] += (uint32_t)s[p][o];
    }
}

/* The explicit kernels below (VNNI, AVX2) reduce along the output channels:
 * Block<NP, NV>::run adds NP pixels' products with NV vectors of L channels
 * into the tile. These two run a group's tile through one of them: register
 * blocks of NP pixels x up to 3 vectors, the pixels left over one by one. */
template <template <int, int> class Block, int NP, typename A, typename W>
static inline void vf_gemm_register_block(uint64_t left, uint32_t *c, uint64_t n, const A *a, uint64_t K,
                                          const W *wv, uint64_t steps, uint64_t o0)
{
    if (left >= 3)
        Block<NP, 3>::run(c, n, a, K, wv, steps, o0, n);
    else if (left == 2)
        Block<NP, 2>::run(c, n, a, K, wv, steps, o0, n);
    else
        Block<NP, 1>::run(c, n, a, K, wv, steps, o0, n);
}

/* The tile's np pixels against all n channels of one group's panel: per
 * vector of L channels, `steps` steps of E panel elements. */
template <template <int, int> class Block, int NP, uint64_t L, uint64_t E, typename A, typename W>
static void vf_gemm_vectors(uint32_t *tile, uint64_t n, const A *rows, uint64_t K, const W *panel, uint64_t steps,
                            uint64_t np)
{
    const uint64_t nv = (n + L - 1) / L;
    for (uint64_t v0 = 0; v0 < nv; v0 += 3) {
        const W *wv = panel + v0 * steps * E;
        uint64_t p = 0;
        for (; p + NP <= np; p += NP)
            vf_gemm_register_block<Block, NP>(nv - v0, tile + p * n, n, rows + p * K, K, wv, steps, L * v0);
        for (; p < np; ++p)
            vf_gemm_register_block<Block, 1>(nv - v0, tile + p * n, n, rows + p * K, K, wv, steps, L * v0);
    }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* With 512-bit VNNI the reduction runs along the output channels instead,
 * as int8 GEMM libraries do: a vector holds 16 output channels' four
 * weights of one tap quad (the panel repacked as [16-channel block][K/4][16][4],
 * zero beyond cout_g and K), each pixel's four im2col bytes are broadcast,
 * and vpdpbusd accumulates 16 channels at once, no horizontal sum. Its
 * wrapping int32 lanes are the wrapping uint32 sums of the generic body.
 * NP pixels x NV vectors of accumulators stay in registers. */
#include <immintrin.h>
#define VF_GEMM_VNNI 1
#define VF_GEMM_VP 8 /* pixels per register block: 8 x 3 accumulators + 3 weights */

/* Weight rows w[o * K + j] (o < n) as the kernel's panel: per 16-channel
 * block, K4 = ceil(K / 4) vectors; channel l's quad q is bytes 4l..4l+3 of
 * vector q. One 4-byte move per quad (the panel is repacked for every CONV,
 * so this is on the hot path of small tiles). */
static void vf_gemm_pack16(const int8_t *w, uint64_t n, uint64_t K, int8_t *dst)
{
    const uint64_t K4 = (K + 3) / 4, full = K / 4;
    for (uint64_t ob = 0; ob < n; ob += 16, dst += K4 * 64)
        for (uint64_t l = 0; l < 16; ++l) {
            int8_t *col = dst + 4 * l;
            if (ob + l >= n) {
                for (uint64_t q = 0; q < K4; ++q)
                    memset(col + q * 64, 0, 4);
                continue;
            }
            const int8_t *row = w + (ob + l) * K;
            for (uint64_t q = 0; q < full; ++q)
                memcpy(col + q * 64, row + 4 * q, 4);
            if (full < K4) {
                int8_t tail[4] = {0, 0, 0, 0};
                memcpy(tail, row + 4 * full, K - 4 * full);
                memcpy(col + full * 64, tail, 4);
            }
        }
}

/* c[p * ldc + o] += sum_j a[p * lda + j] * w[o][j] for NP pixels and NV
 * 16-channel vectors (channels o0 .. o0 + 16 * NV of the n, the rest masked
 * off); wv: the first vector's panel. a's rows are read in 4-byte quads up to
 * 3 bytes past K (the panel's zero weights there). */
template <int NP, int NV> struct vf_gemm_vnni_block {
    static void run(uint32_t *c, uint64_t ldc, const uint8_t *a, uint64_t lda, const int8_t *wv, uint64_t K4,
                    uint64_t o0, uint64_t n);
};

template <int NP, int NV>
inline void vf_gemm_vnni_block<NP, NV>::run(uint32_t *c, uint64_t ldc, const uint8_t *a, uint64_t lda,
                                             const int8_t *wv, uint64_t K4, uint64_t o0, uint64_t n)
{
    __m512i acc[NP][NV];
    for (int p = 0; p < NP; ++p)
        for (int v = 0; v < NV; ++v)
            acc[p][v] = _mm512_setzero_si512();
    for (uint64_t q = 0; q < K4; ++q) {
        __m512i w[NV];
        for (int v = 0; v < NV; ++v)
            w[v] = _mm512_loadu_si512((const void *)(wv + ((uint64_t)v * K4 + q) * 64));
        for (int p = 0; p < NP; ++p) {
            int32_t quad;
            memcpy(&quad, a + p * lda + 4 * q, 4);
            const __m512i x = _mm512_set1_epi32(quad);
            for (int v = 0; v < NV; ++v)
                acc[p][v] = _mm512_dpbusd_epi32(acc[p][v], x, w[v]);
        }
    }
    for (int v = 0; v < NV; ++v) {
        const uint64_t o = o0 + 16 * (uint64_t)v;
        const __mmask16 m = n - o >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - o)) - 1u);
        for (int p = 0; p < NP; ++p) {
            uint32_t *dst = c + p * ldc + o;
            const __m512i old = _mm512_maskz_loadu_epi32(m, dst);
            _mm512_mask_storeu_epi32(dst, m, _mm512_add_epi32(old, acc[p][v]));
        }
    }
}

#endif

#if !defined(VF_GEMM_VNNI) && !defined(__AVXVNNI__) && defined(__AVX2__)
/* With AVX2 and no byte dot product the reduction runs along the output
 * channels too, on 16-bit operands: vpmaddubsw would saturate (x + 128 up
 * to 255 times a weight down to -128, twice, exceeds int16), so the im2col
 * rows hold x + 128 widened to uint16 and the panel int16 weights, and
 * vpmaddwd multiplies 8 channels' tap pairs by a pixel's broadcast pair into
 * exact int32 sums (at most 2 * 255 * 128), added with wrapping vpaddd: the
 * generic body's wrapping uint32 sums. NP pixels x NV vectors of
 * accumulators and the broadcasts stay in the 16 registers; the weights are
 * memory operands of vpmaddwd (alone on a Zen 3 host, 4 x 3 ran at 68 GMAC/s
 * and 4 x 2 at 54, the best of four runs each). */
#include <immintrin.h>
#define VF_GEMM_AVX2 1
#define VF_GEMM_VP 4 /* pixels per register block: 4 x 3 accumulators, the weights from memory */

/* Weight rows w[o * K + j] (o < n) as the kernel's panel: per 8-channel
 * block, K2 = ceil(K / 2) vectors; channel l's tap pair q is int16 elements
 * 2l, 2l + 1 of vector q, zero beyond n and K. The panel is repacked for
 * every CONV, so eight pairs of the eight rows at a time are widened and
 * transposed as an 8 x 8 matrix of 32-bit pairs; the rest pair by pair. */
static void vf_gemm_pack8(const int8_t *w, uint64_t n, uint64_t K, int16_t *dst)
{
    const uint64_t K2 = (K + 1) / 2;
    for (uint64_t ob = 0; ob < n; ob += 8, dst += K2 * 16) {
        const uint64_t rows = vf_min64(8, n - ob);
        uint64_t q = 0;
        for (; 2 * q + 16 <= K; q += 8) {
            __m256i r[8];
            for (uint64_t l = 0; l < 8; ++l)
                r[l] = l < rows ? _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + (ob + l) * K + 2 * q)))
                                : _mm256_setzero_si256();
            __m256i t[8], u[8];
            for (int i = 0; i < 4; ++i) {
                t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            for (int i = 0; i < 2; ++i) { /* u[4i + j]: pairs j and j + 4 of rows 4i .. 4i + 3 */
                u[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
                u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
                u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
                u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
            }
            for (int j = 0; j < 4; ++j) {
                _mm256_storeu_si256((__m256i *)(dst + (q + j) * 16), _mm256_permute2x128_si256(u[j], u[4 + j], 0x20));
                _mm256_storeu_si256((__m256i *)(dst + (q + j + 4) * 16),
                                    _mm256_permute2x128_si256(u[j], u[4 + j], 0x31));
            }
        }
        for (; q < K2; ++q)
            for (uint64_t l = 0; l < 8; ++l) {
                int16_t first = 0, second = 0;
                if (l < rows) {
                    first = w[(ob + l) * K + 2 * q];
                    second = 2 * q + 1 < K ? w[(ob + l) * K + 2 * q + 1] : 0;
                }
                dst[q * 16 + 2 * l] = first;
                dst[q * 16 + 2 * l + 1] = second;
            }
    }
}

/* c[p * ldc + o] += sum_j a[p * lda + j] * w[o][j] for NP pixels and NV
 * 8-channel vectors (channels o0 .. o0 + 8 * NV of the n, the rest masked
 * off); wv: the first vector's panel. a's rows are read in pairs, up to one
 * element past K (the panel's zero weights there). */
template <int NP, int NV> struct vf_gemm_avx2_block {
    static void run(uint32_t *c, uint64_t ldc, const uint16_t *a, uint64_t lda, const int16_t *wv, uint64_t K2,
                    uint64_t o0, uint64_t n);
};

template <int NP, int NV>
inline void vf_gemm_avx2_block<NP, NV>::run(uint32_t *c, uint64_t ldc, const uint16_t *a, uint64_t lda,
                                             const int16_t *wv, uint64_t K2, uint64_t o0, uint64_t n)
{
    __m256i acc[NP][NV];
    for (int p = 0; p < NP; ++p)
        for (int v = 0; v < NV; ++v)
            acc[p][v] = _mm256_setzero_si256();
    /* two tap pairs per iteration: g++ copies each accumulator once per
     * iteration after its add, so fewer iterations issue fewer copies
     * (alone on a Zen 3 host, 4 x 3 blocks: 37-66 GMAC/s, 31-40 with one
     * pair per iteration, five runs each at K 576 and 2304) */
    uint64_t q = 0;
    for (; q < K2; q += 2) {
        const int steps = q + 1 < K2 ? 2 : 1;
        for (int u = 0; u < steps; ++u) {
            __m256i w[NV];
            for (int v = 0; v < NV; ++v)
                w[v] = _mm256_loadu_si256((const __m256i *)(wv + ((uint64_t)v * K2 + q + u) * 16));
            for (int p = 0; p < NP; ++p) {
                int32_t pair;
                memcpy(&pair, a + p * lda + 2 * (q + u), 4);
                const __m256i x = _mm256_set1_epi32(pair);
                for (int v = 0; v < NV; ++v)
                    acc[p][v] = _mm256_add_epi32(acc[p][v], _mm256_madd_epi16(x, w[v]));
            }
        }
    }
    for (int v = 0; v < NV; ++v) {
        const uint64_t o = o0 + 8 * (uint64_t)v, live = n - o >= 8 ? 8 : n - o;
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)live), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int p = 0; p < NP; ++p) {
            int *dst = (int *)(c + p * ldc + o);
            const __m256i old = _mm256_maskload_epi32(dst, m);
            _mm256_maskstore_epi32(dst, m, _mm256_add_epi32(old, acc[p][v]));
        }
    }
}

/* The requantization of 8 channels' int32 sums in place, as the scalar
 * loop below computes it in int64: (x * mult + 2^(sh - 1)) >> sh (sh in
 * [0, 62], the rounding term 0 for sh 0), plus the zero point, clamped to
 * [lo, hi]. AVX2 has neither a 64-bit multiply nor a 64-bit arithmetic
 * shift, so even and odd channels go through vpmuldq apart, and the shift
 * is a logical one with the sign put back: ((t >>> sh) ^ m) - m, m = 2^63 >>> sh. */
static inline void vf_requant8_avx2(uint32_t *r, const int32_t *mult, const int32_t *shift, int64_t zp, int64_t lo,
                                    int64_t hi)
{
    const __m256i one = _mm256_set1_epi64x(1), top = _mm256_set1_epi64x((int64_t)(1ull << 63));
    const __m256i z = _mm256_set1_epi64x(zp), l = _mm256_set1_epi64x(lo), h = _mm256_set1_epi64x(hi);
    const __m256i x = _mm256_loadu_si256((const __m256i *)r), m = _mm256_loadu_si256((const __m256i *)mult);
    const __m256i s = _mm256_loadu_si256((const __m256i *)shift);
    __m256i half[2];
    for (int odd = 0; odd < 2; ++odd) { /* vpmuldq multiplies the low 32 bits of each 64-bit lane */
        const __m256i sv = odd ? _mm256_srli_epi64(s, 32) : _mm256_and_si256(s, _mm256_set1_epi64x(0xffffffff));
        __m256i t = _mm256_mul_epi32(odd ? _mm256_srli_epi64(x, 32) : x, odd ? _mm256_srli_epi64(m, 32) : m);
        t = _mm256_add_epi64(t, _mm256_sllv_epi64(one, _mm256_sub_epi64(sv, one))); /* a count over 63 gives 0 */
        const __m256i sign = _mm256_srlv_epi64(top, sv);
        t = _mm256_add_epi64(_mm256_sub_epi64(_mm256_xor_si256(_mm256_srlv_epi64(t, sv), sign), sign), z);
        t = _mm256_blendv_epi8(t, l, _mm256_cmpgt_epi64(l, t));
        half[odd] = _mm256_blendv_epi8(t, h, _mm256_cmpgt_epi64(t, h));
    }
    _mm256_storeu_si256((__m256i *)r, _mm256_blend_epi32(half[0], _mm256_slli_epi64(half[1], 32), 0xAA));
}
#endif

#ifdef VF_GEMM_AVX2
typedef uint16_t vf_gemm_elem_t; /* an im2col element: x + 128, widened for vpmaddwd */
#else
typedef uint8_t vf_gemm_elem_t; /* an im2col element: x + 128 */
#endif

/* The im2col row of output pixel pix of group g, as unsigned x + 128. */
static inline void vf_gemm_row(const vf_conv_t &k, uint32_t g, uint64_t pix, vf_gemm_elem_t *dst)
{
    const uint64_t oy = pix / k.OW, ox = pix % k.OW;
    const uint64_t in_row = (uint64_t)k.IW * k.ICT;
    const int8_t *win = k.in + oy * k.SH * in_row + ox * k.SW * k.ICT + (uint64_t)g * k.CIN;
    /* with one group, the (kx, cin) run of a kernel row is contiguous */
    const uint64_t run = k.G == 1 ? (uint64_t)k.KW * k.CIN : k.CIN;
    const uint64_t runs = k.G == 1 ? k.KH : (uint64_t)k.KH * k.KW;
    for (uint64_t r = 0; r < runs; ++r, dst += run) {
        const uint64_t ky = k.G == 1 ? r : r / k.KW, kx = k.G == 1 ? 0 : r % k.KW;
        const int8_t *src = win + ky * in_row + kx * k.ICT;
        for (uint64_t i = 0; i < run; ++i)
            dst[i] = (vf_gemm_elem_t)((uint8_t)src[i] ^ 0x80u);
    }
}

/* Per-thread scratch of the GEMM body (frames of several cores run at once). */
struct vf_gemm_scratch {
    std::vector<vf_gemm_elem_t> rows; /* im2col rows of a pixel block */
    std::vector<uint32_t> tile; /* their outputs, [pixel][cout_g] */
    std::vector<uint32_t> bias; /* per output channel: first value (ACC_INIT) + correction */
    std::vector<uint32_t> corr; /* per output channel: -128 * sum of its weights */
    std::vector<int8_t> panel;  /* the weights unpacked from their beat words: [oc][ky][kx][cin_g] */
    std::vector<int8_t> packed; /* VNNI builds: each group's panel as 16-channel vectors */
    std::vector<int16_t> packed16; /* AVX2 builds: each group's panel as 8-channel int16 vectors */
    std::vector<int32_t> mult, shift; /* requantization per output channel: multiplier, shift */
    std::vector<int64_t> rnd;          /* and the rounding term 2^(shift - 1) (0 for shift 0) */
};

/* The beat-major weight words (vfpga_isa.h) as GEMM rows: w[oc * K + (ky *
 * kw + kx) * cin_g + i], K = WST. One pass over the weights per CONV, small
 * against the MACs (each weight meets every pixel of the tile). */
static void vf_gemm_panel(const vf_conv_t &k, int8_t *w)
{
    const uint64_t K = k.WST, taps = (uint64_t)k.KH * k.KW;
    const int8_t *word = k.w;
    for (uint64_t g = 0; g < k.G; ++g)
        for (uint64_t ob = 0; ob < k.COUT; ob += VF_OCP) {
            const uint64_t nO = vf_min64(VF_OCP, k.COUT - ob);
            int8_t *rows = w + (g * k.COUT + ob) * K;
            for (uint64_t t = 0; t < taps; ++t)
                for (uint64_t ib = 0; ib < k.CIN; ib += VF_ICP, word += VF_CONV_WORD) {
                    int8_t *dst = rows + t * k.CIN + ib;
                    if (ib + VF_ICP <= k.CIN) {
                        for (uint64_t o = 0; o < nO; ++o)
                            memcpy(dst + o * K, word + o * VF_ICP, VF_ICP);
                    } else {
                        for (uint64_t o = 0; o < nO; ++o)
                            memcpy(dst + o * K, word + o * VF_ICP, k.CIN - ib);
                    }
                }
        }
}

/* noinline: inlined into the unit scheduler, g++ costs these loops cold and leaves them scalar. */
static __attribute__((noinline)) void vf_conv_gemm(const vf_conv_t &k)
{
    static thread_local vf_gemm_scratch sc;
    const uint64_t K = k.WST, N = k.COUT, pixels = (uint64_t)k.OH * k.OW;
    if (sc.panel.size() < k.OCT * K)
        sc.panel.resize(k.OCT * K);
    vf_gemm_panel(k, sc.panel.data());
    const int8_t *const wp = sc.panel.data();
    sc.corr.resize(k.OCT);
    sc.bias.resize(k.OCT);
    for (uint64_t oc = 0; oc < k.OCT; ++oc) {
        const int8_t *w = wp + oc * K;
        uint32_t sum = 0;
        for (uint64_t j = 0; j < K; ++j)
            sum += (uint32_t)(int32_t)w[j];
        sc.corr[oc] = 0u - (sum << 7);
        sc.bias[oc] = sc.corr[oc] + (k.init ? (uint32_t)k.prm[oc * VF_PARAM_ENTRY_WORDS] : 0u);
    }
    if (k.final) {
        sc.mult.resize(k.OCT);
        sc.rnd.resize(k.OCT);
        sc.shift.resize(k.OCT);
        for (uint64_t oc = 0; oc < k.OCT; ++oc) {
            const int32_t sh = k.prm[oc * VF_PARAM_ENTRY_WORDS + 2]; /* in [0, 62]: checked */
            sc.mult[oc] = k.prm[oc * VF_PARAM_ENTRY_WORDS + 1];
            sc.rnd[oc] = sh == 0 ? 0 : (int64_t)1 << (sh - 1);
            sc.shift[oc] = sh;
        }
    }
    uint64_t block = VF_GEMM_A_BYTES / (K * sizeof(vf_gemm_elem_t));
    block = block < VF_GEMM_NP ? VF_GEMM_NP : block - block % VF_GEMM_NP;
    block = vf_min64(block, pixels);
    if (sc.rows.size() < block * K + 4) /* + 4: the vector kernels read rows in quads or pairs */
        sc.rows.resize(block * K + 4);
#ifdef VF_GEMM_VNNI
    const uint64_t packed_group = (N + 15) / 16 * ((K + 3) / 4) * 64;
    if (sc.packed.size() < k.G * packed_group)
        sc.packed.resize(k.G * packed_group);
    for (uint32_t g = 0; g < k.G; ++g)
        vf_gemm_pack16(wp + (uint64_t)g * N * K, N, K, sc.packed.data() + g * packed_group);
#endif
#ifdef VF_GEMM_AVX2
    const uint64_t packed_group = (N + 7) / 8 * ((K + 1) / 2) * 16;
    if (sc.packed16.size() < k.G * packed_group)
        sc.packed16.resize(k.G * packed_group);
    for (uint32_t g = 0; g < k.G; ++g)
        vf_gemm_pack8(wp + (uint64_t)g * N * K, N, K, sc.packed16.data() + g * packed_group);
#endif
    if (sc.tile.size() < block * N)
        sc.tile.resize(block * N);
    vf_gemm_elem_t *rows = sc.rows.data();
    uint32_t *tile = sc.tile.data();
    const int64_t zp = k.zp, lo = k.lo, hi = k.hi;
    for (uint32_t g = 0; g < k.G; ++g) {
        const uint64_t oc0 = (uint64_t)g * N;
        const int8_t *wg = wp + oc0 * K;
        const uint32_t *bias = sc.bias.data() + oc0, *corr = sc.corr.data() + oc0;
        for (uint64_t p0 = 0; p0 < pixels; p0 += block) {
            const uint64_t np = vf_min64(block, pixels - p0);
            for (uint64_t p = 0; p < np; ++p) {
                vf_gemm_row(k, g, p0 + p, rows + p * K);
                uint32_t *c = tile + p * N;
                if (k.init) {
                    for (uint64_t o = 0; o < N; ++o)
                        c[o] = bias[o];
                } else {
                    const int32_t *a = k.acc + (p0 + p) * k.OCT + oc0;
                    for (uint64_t o = 0; o < N; ++o)
                        c[o] = (uint32_t)a[o] + corr[o];
                }
            }
#if defined(VF_GEMM_VNNI)
            (void)wg;
            vf_gemm_vectors<vf_gemm_vnni_block, VF_GEMM_VP, 16, 64>(tile, N, rows, K,
                                                                   sc.packed.data() + g * packed_group, (K + 3) / 4, np);
#elif defined(VF_GEMM_AVX2)
            (void)wg;
            vf_gemm_vectors<vf_gemm_avx2_block, VF_GEMM_VP, 8, 16>(tile, N, rows, K,
                                                                  sc.packed16.data() + g * packed_group, (K + 1) / 2, np);
#else
            uint64_t o = 0;
            for (; o + VF_GEMM_NO <= N; o += VF_GEMM_NO) {
                uint64_t p = 0;
                for (; p + VF_GEMM_NP <= np; p += VF_GEMM_NP)
                    vf_gemm_block<VF_GEMM_NP, VF_GEMM_NO>(tile + p * N + o, N, rows + p * K, K, wg + o * K, K, K);
                for (; p < np; ++p)
                    vf_gemm_block<1, VF_GEMM_NO>(tile + p * N + o, N, rows + p * K, K, wg + o * K, K, K);
            }
            for (; o < N; ++o) {
                uint64_t p = 0;
                for (; p + VF_GEMM_NP <= np; p += VF_GEMM_NP)
                    vf_gemm_block<VF_GEMM_NP, 1>(tile + p * N + o, N, rows + p * K, K, wg + o * K, K, K);
                for (; p < np; ++p)
                    vf_gemm_block<1, 1>(tile + p * N + o, N, rows + p * K, K, wg + o * K, K, K);
            }
#endif
            for (uint64_t p = 0; p < np; ++p) {
                const uint64_t at = (p0 + p) * k.OCT + oc0;
                if (!k.final) {
                    const uint32_t *c = tile + p * N;
                    int32_t *acc = k.acc + at;
                    for (uint64_t q = 0; q < N; ++q)
                        acc[q] = vf_i32(c[q]);
                    continue;
                }
                /* vf_requant in two vectorisable passes: clamped values in place, then bytes */
                const int32_t *mult = sc.mult.data() + oc0, *sh = sc.shift.data() + oc0;
                const int64_t *rnd = sc.rnd.data() + oc0;
                uint32_t *r = tile + p * N;
                uint64_t q = 0;
#ifdef VF_GEMM_AVX2
                for (; q + 8 <= N; q += 8)
                    vf_requant8_avx2(r + q, mult + q, sh + q, zp, lo, hi);
#endif
                for (; q < N; ++q) {
                    const int64_t v = zp + (((int64_t)vf_i32(r[q]) * mult[q] + rnd[q]) >> sh[q]);
                    r[q] = (uint32_t)(v < lo ? lo : (v > hi ? hi : v));
                }
                int8_t *out = k.out + at;
                for (uint64_t q = 0; q < N; ++q)
                    out[q] = (int8_t)vf_i32(r[q]);
            }
        }
    }
}
#endif

/* CONV with cin_g > 1: lanes = VF_OCP output channels of one group, beats =
 * (ky, kx, VF_ICP input channels). Returns the beats run (literal build). */
#ifdef VF_HLS_LITERAL
/* One pipelined loop over every beat, in the order (g, oy, ox, output block,
 * ky, kx, input block): a block's first beat loads its lanes (bias or ACC)
 * and its last stores them, as predicates, so the pipeline fills once per
 * CONV. The beat's weights are WBUF word wi (beat-major, vfpga_isa.h): its
 * byte o * VF_ICP + i is MAC (o, i), a fixed bank of the VF_CONV_WORD-cyclic
 * WBUF, so the whole word is one read of every bank. wi steps with the beat
 * and rewinds to the group's first word at each pixel. */
static uint64_t vf_conv_dense(const vf_conv_t &k)
{
    const uint64_t nIB = k.NIB, nOB = k.NOB;
    const uint64_t total = (uint64_t)k.G * k.OH * k.OW * nOB * k.KH * k.KW * nIB;
    const uint64_t group_words = nOB * k.KH * k.KW * nIB;
    uint32_t g = 0, oy = 0, ox = 0, ob = 0, ky = 0, kx = 0, ib = 0; /* ob, ib: first channel of the block */
    uint64_t wi = 0, wg = 0; /* the beat's weight word, the group's first */
    uint32_t lane[VF_OCP];
#pragma HLS ARRAY_PARTITION variable=lane complete
    uint64_t beats = 0;
CONV_BEAT:
    for (uint64_t t = 0; t < total; ++t) {
#pragma HLS PIPELINE II=1
        /* a block reads and writes only its own (pixel, channel) ACC words */
#pragma HLS DEPENDENCE class=pointer type=inter dependent=false
        ++beats;
        const uint64_t pix = (uint64_t)oy * k.OW + ox;
        const uint64_t oc0 = (uint64_t)g * k.COUT + ob;
        const uint32_t nO = (uint32_t)vf_min64(VF_OCP, k.COUT - ob);
        const bool first = ky == 0 && kx == 0 && ib == 0;
        const bool last = ky + 1 == k.KH && kx + 1 == k.KW && (uint64_t)ib + VF_ICP >= k.CIN;
        const int8_t *x = k.in + (((uint64_t)oy * k.SH + ky) * k.IW + (uint64_t)ox * k.SW + kx) * k.ICT +
                          (uint64_t)g * k.CIN + ib;
        const int8_t *wb = k.w + wi * VF_CONV_WORD;
    CONV_INIT:
        for (uint32_t o = 0; o < VF_OCP; ++o) {
#pragma HLS UNROLL
            if (first)
                lane[o] = o < nO ? vf_conv_first(k, oc0 + o, pix) : 0u;
        }
        /* lanes o and o + 1 multiply the same x[i]: one DSP slice gives both
         * products (vf_mul2, vfpga_mac.h) */
    CONV_OL:
        for (uint32_t o = 0; o < VF_OCP; o += 2) {
#pragma HLS UNROLL
            int32_t s0 = 0, s1 = 0;
        CONV_IL:
            for (uint32_t i = 0; i < VF_ICP; ++i) {
#pragma HLS UNROLL
                if (ib + i < k.CIN) {
                    int32_t p1, p0;
                    vf_mul2(x[i], wb[(o + 1) * VF_ICP + i], wb[o * VF_ICP + i], &p1, &p0);
                    s0 += o < nO ? p0 : 0;
                    s1 += o + 1 < nO ? p1 : 0;
                }
            }
            lane[o] += (uint32_t)s0;
            lane[o + 1] += (uint32_t)s1;
        }
    CONV_STORE:
        for (uint32_t o = 0; o < VF_OCP; ++o) {
#pragma HLS UNROLL
            if (last && o < nO)
                vf_conv_last(k, oc0 + o, pix, lane[o]);
        }
        /* the next beat's coordinates */
        ++wi;
        ib += VF_ICP;
        if (ib >= k.CIN) {
            ib = 0;
            if (++kx == k.KW) {
                kx = 0;
                if (++ky == k.KH) {
                    ky = 0;
                    ob += VF_OCP;
                    if (ob >= k.COUT) {
                        ob = 0;
                        if (++ox == k.OW) {
                            ox = 0;
                            if (++oy == k.OH) {
                                oy = 0;
                                ++g;
                                wg += group_words;
                            }
                        }
                        wi = wg;
                    }
                }
            }
        }
    }
    return beats;
}
#else
/* the vectorised body: the blocked GEMM above */
static uint64_t vf_conv_dense(const vf_conv_t &k)
{
    vf_conv_gemm(k);
    return 0;
}
#endif

/* Depthwise-style CONV (cin_g == 1): lanes = VF_OCP output channels across
 * groups, output channel oc reads input channel oc / cout_g; beats = (ky, kx).
 * The weights of beat (channel block, ky, kx) are one lane row of VF_OCP
 * bytes, VF_ICP rows to a WBUF word (vfpga_isa.h). */
static uint64_t vf_conv_lanes(const vf_conv_t &k)
{
    uint64_t beats = 0;
    const uint64_t taps = (uint64_t)k.KH * k.KW;
#ifdef VF_HLS_LITERAL
    /* one pipelined loop over every beat (oy, ox, channel block, ky, kx); a
     * block's first beat loads its lanes, its last stores them. The beat
     * reads its word wr (row wsel of it) from every bank of the
     * VF_CONV_WORD-cyclic WBUF and picks the row with constant bank indices;
     * (wr, wsel) step with the beat and rewind at each pixel. */
    const uint64_t total = (uint64_t)k.OH * k.OW * k.NOB * taps;
    uint32_t oy = 0, ox = 0, ky = 0, kx = 0;
    uint64_t ob = 0; /* first channel of the block */
    uint64_t wr = 0;
    uint32_t wsel = 0;
    uint32_t lane[VF_OCP];
#pragma HLS ARRAY_PARTITION variable=lane complete
    int8_t wl[VF_OCP];
#pragma HLS ARRAY_PARTITION variable=wl complete
DW_BEAT:
    for (uint64_t t = 0; t < total; ++t) {
#pragma HLS PIPELINE II=1
        /* a block reads and writes only its own (pixel, channel) ACC words */
#pragma HLS DEPENDENCE class=pointer type=inter dependent=false
        ++beats;
        const uint64_t pix = (uint64_t)oy * k.OW + ox;
        const bool first = ky == 0 && kx == 0;
        const bool last = ky + 1 == k.KH && kx + 1 == k.KW;
        const int8_t *xp = k.in + (((uint64_t)oy * k.SH + ky) * k.IW + (uint64_t)ox * k.SW + kx) * k.ICT;
        const int8_t *ww = k.w + wr * VF_CONV_WORD;
    DW_PICK:
        for (uint32_t b = 0; b < VF_CONV_WORD; ++b) {
#pragma HLS UNROLL
            if (b / VF_OCP == wsel)
                wl[b % VF_OCP] = ww[b];
        }
    DW_INIT:
        for (uint32_t o = 0; o < VF_OCP; ++o) {
#pragma HLS UNROLL
            if (first)
                lane[o] = ob + o < k.OCT ? vf_conv_first(k, ob + o, pix) : 0u;
        }
    DW_LANE:
        for (uint32_t o = 0; o < VF_OCP; ++o) {
#pragma HLS UNROLL
            const uint64_t oc = ob + o;
            if (oc < k.OCT)
                lane[o] += (uint32_t)((int32_t)xp[oc / k.COUT] * wl[o]);
        }
    DW_STORE:
        for (uint32_t o = 0; o < VF_OCP; ++o) {
#pragma HLS UNROLL
            if (last && ob + o < k.OCT)
                vf_conv_last(k, ob + o, pix, lane[o]);
        }
        /* the next beat's coordinates */
        if (++wsel == VF_ICP) {
            wsel = 0;
            ++wr;
        }
        if (++kx == k.KW) {
            kx = 0;
            if (++ky == k.KH) {
                ky = 0;
                ob += VF_OCP;
                if (ob >= k.OCT) {
                    ob = 0;
                    wr = 0;
                    wsel = 0;
                    if (++ox == k.OW) {
                        ox = 0;
                        ++oy;
                    }
                }
            }
        }
    }
#else
    uint64_t src[VF_OCP]; /* input channel of each lane */
    for (uint64_t ob = 0; ob < k.OCT; ob += VF_OCP) {
        const uint32_t nO = (uint32_t)vf_min64(VF_OCP, k.OCT - ob);
        for (uint32_t o = 0; o < nO; ++o)
            src[o] = (ob + o) / k.COUT;
        const int8_t *wl = k.w + ob * taps; /* the block's lane rows, [tap][VF_OCP] */
        const bool straight = k.COUT == 1; /* lane o reads input channel ob + o */
        for (uint32_t oy = 0; oy < k.OH; ++oy) {
            for (uint32_t ox = 0; ox < k.OW; ++ox) {
                const uint64_t pix = (uint64_t)oy * k.OW + ox;
                uint32_t lane[VF_OCP];
                for (uint32_t o = 0; o < nO; ++o)
                    lane[o] = vf_conv_first(k, ob + o, pix);
                for (uint32_t ky = 0; ky < k.KH; ++ky) {
                    for (uint32_t kx = 0; kx < k.KW; ++kx) {
                        const uint64_t t = (uint64_t)ky * k.KW + kx;
                        const int8_t *xp =
                            k.in + (((uint64_t)oy * k.SH + ky) * k.IW + (uint64_t)ox * k.SW + kx) * k.ICT;
                        const int8_t *ws = wl + t * VF_OCP;
                        if (straight) {
                            const int8_t *xs = xp + ob;
                            for (uint32_t o = 0; o < nO; ++o)
                                lane[o] += (uint32_t)((int32_t)xs[o] * ws[o]);
                        } else {
                            for (uint32_t o = 0; o < nO; ++o)
                                lane[o] += (uint32_t)((int32_t)xp[src[o]] * ws[o]);
                        }
                    }
                }
                for (uint32_t o = 0; o < nO; ++o)
                    vf_conv_last(k, ob + o, pix, lane[o]);
            }
        }
    }
#endif
    return beats;
}

static vf_exec_t vf_conv(const vf_insn_conv_t &c, vf_cnn_buffers_t *b)
{
    if ((c.head.flags & ~(uint32_t)(VF_CONV_ACC_INIT | VF_CONV_ACC_FINAL)) != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    if (c.groups == 0)
        return VF_FIELD(vf_insn_conv_t, groups);
    if (c.cin_g == 0)
        return VF_FIELD(vf_insn_conv_t, cin_g);
    if (c.cout_g == 0)
        return VF_FIELD(vf_insn_conv_t, cout_g);
    if (c.kh == 0)
        return VF_FIELD(vf_insn_conv_t, kh);
    if (c.kw == 0)
        return VF_FIELD(vf_insn_conv_t, kw);
    if (c.sh == 0)
        return VF_FIELD(vf_insn_conv_t, sh);
    if (c.sw == 0)
        return VF_FIELD(vf_insn_conv_t, sw);
    if (c.out_h == 0)
        return VF_FIELD(vf_insn_conv_t, out_h);
    if (c.out_w == 0)
        return VF_FIELD(vf_insn_conv_t, out_w);
    if ((uint64_t)(c.out_h - 1) * c.sh + c.kh > c.in_h)
        return VF_FIELD(vf_insn_conv_t, in_h);
    if ((uint64_t)(c.out_w - 1) * c.sw + c.kw > c.in_w)
        return VF_FIELD(vf_insn_conv_t, in_w);
    if (c.clip_lo > c.clip_hi)
        return VF_FIELD(vf_insn_conv_t, clip_lo);
    if (c.wgt_addr % VF_CONV_WORD != 0) /* beat-major words start on a word */
        return VF_FIELD(vf_insn_conv_t, wgt_addr);

    vf_conv_t k;
    k.G = c.groups;
    k.CIN = c.cin_g;
    k.COUT = c.cout_g;
    k.KH = c.kh;
    k.KW = c.kw;
    k.SH = c.sh;
    k.SW = c.sw;
    k.IW = c.in_w;
    k.OH = c.out_h;
    k.OW = c.out_w;
    k.ICT = (uint64_t)k.G * k.CIN;
    k.OCT = (uint64_t)k.G * k.COUT;
    k.WST = (uint64_t)k.KH * k.KW * k.CIN;
    k.NIB = vf_ceil_div(k.CIN, VF_ICP);
    k.NOB = vf_ceil_div(k.CIN == 1 ? k.OCT : k.COUT, VF_OCP);
    k.init = (c.head.flags & VF_CONV_ACC_INIT) != 0;
    k.final = (c.head.flags & VF_CONV_ACC_FINAL) != 0;
    k.zp = c.out_zp;
    k.lo = c.clip_lo;
    k.hi = c.clip_hi;

    const uint64_t pixels = (uint64_t)k.OH * k.OW;
    const uint64_t in_len = vf_mul_sat((uint64_t)c.in_h * c.in_w, k.ICT);
    /* beat-major words (vfpga_isa.h): one lane row per beat on the channel-lane path */
    const uint64_t w_len = k.CIN == 1 ? vf_mul_sat(k.NOB * VF_OCP, (uint64_t)k.KH * k.KW)
                                      : vf_mul_sat(vf_mul_sat((uint64_t)k.G * k.NOB, (uint64_t)k.KH * k.KW),
                                                   k.NIB * VF_CONV_WORD);
    const uint64_t out_len = vf_mul_sat(pixels, k.OCT);
    if (!vf_fits(c.in_addr, in_len, VF_IBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(c.in_addr, VF_IBUF_BYTES));
    if (!vf_fits(c.wgt_addr, w_len, VF_WBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(c.wgt_addr, VF_WBUF_BYTES));
    if (k.final && !vf_fits(c.out_addr, out_len, VF_OBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(c.out_addr, VF_OBUF_BYTES));
    const bool uses_acc = !(k.init && k.final);
    if (uses_acc && !vf_fits(c.acc_addr, out_len, VF_ACC_WORDS))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(c.acc_addr, VF_ACC_WORDS));
    const bool uses_param = k.init || k.final;
    if (uses_param && !vf_fits(c.param_addr, k.OCT, VF_PARAM_ENTRIES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(c.param_addr, VF_PARAM_ENTRIES));

    k.in = b->ibuf + c.in_addr;
    k.w = b->wbuf + c.wgt_addr;
    k.acc = uses_acc ? b->acc + c.acc_addr : NULL;
    k.out = k.final ? b->obuf + c.out_addr : NULL;
    k.prm = uses_param ? b->param + (uint64_t)c.param_addr * VF_PARAM_ENTRY_WORDS : NULL;
    if (k.final) {
    CONV_SHIFTS:
        for (uint64_t oc = 0; oc < k.OCT; ++oc) {
            const int32_t s = k.prm[oc * VF_PARAM_ENTRY_WORDS + 2];
            if (s < 0 || s > 62)
                return VF_FIELD(vf_insn_conv_t, param_addr);
        }
    }

    const uint64_t beats = k.CIN == 1 ? vf_conv_lanes(k) : vf_conv_dense(k);
    const uint64_t taps = (uint64_t)k.KH * k.KW;
#ifdef VF_HLS_LITERAL
    const uint64_t iters = beats;
#else
    (void)beats;
    const uint64_t iters = k.CIN == 1
                               ? pixels * taps * vf_ceil_div(k.OCT, VF_OCP)
                               : k.G * pixels * taps * vf_ceil_div(k.CIN, VF_ICP) * vf_ceil_div(k.COUT, VF_OCP);
#endif
    return vf_done(iters, 0, k.G * pixels * taps * k.CIN * k.COUT);
}

/* POOL output of one channel: v (already relative to in_zp) over count. */
static inline int8_t vf_pool_out(int64_t v, uint64_t count, const vf_insn_pool_t &p)
{
    if (count == 0)
        return vf_clamp8(p.out_zp, p.clip_lo, p.clip_hi);
    return vf_clamp8((int64_t)p.out_zp + vf_rdiv(v * p.mult, (int64_t)(count << p.shift)), p.clip_lo, p.clip_hi);
}

#define VF_POOL_CHUNK 256 /* C-sim channel chunk */

static vf_exec_t vf_pool(const vf_insn_pool_t &p, vf_cnn_buffers_t *b)
{
    if ((p.head.flags & ~(uint32_t)(VF_POOL_AVG | VF_POOL_COUNT_PAD)) != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    if (p.channels == 0)
        return VF_FIELD(vf_insn_pool_t, channels);
    if (p.kh == 0)
        return VF_FIELD(vf_insn_pool_t, kh);
    if (p.kw == 0)
        return VF_FIELD(vf_insn_pool_t, kw);
    if (p.sh == 0)
        return VF_FIELD(vf_insn_pool_t, sh);
    if (p.sw == 0)
        return VF_FIELD(vf_insn_pool_t, sw);
    if (p.out_h == 0)
        return VF_FIELD(vf_insn_pool_t, out_h);
    if (p.out_w == 0)
        return VF_FIELD(vf_insn_pool_t, out_w);
    if ((uint64_t)(p.out_h - 1) * p.sh + p.kh > p.in_h)
        return VF_FIELD(vf_insn_pool_t, in_h);
    if ((uint64_t)(p.out_w - 1) * p.sw + p.kw > p.in_w)
        return VF_FIELD(vf_insn_pool_t, in_w);
    if (p.valid_y0 > p.valid_y1)
        return VF_FIELD(vf_insn_pool_t, valid_y0);
    if (p.valid_y1 > p.in_h)
        return VF_FIELD(vf_insn_pool_t, valid_y1);
    if (p.valid_x0 > p.valid_x1)
        return VF_FIELD(vf_insn_pool_t, valid_x0);
    if (p.valid_x1 > p.in_w)
        return VF_FIELD(vf_insn_pool_t, valid_x1);
    if (p.shift > 30)
        return VF_FIELD(vf_insn_pool_t, shift);
    if (p.clip_lo > p.clip_hi)
        return VF_FIELD(vf_insn_pool_t, clip_lo);

    const uint64_t C = p.channels;
    const uint64_t pixels = (uint64_t)p.out_h * p.out_w;
    const uint64_t in_len = (uint64_t)p.in_h * p.in_w * C;
    const uint64_t out_len = pixels * C;
    if (!vf_fits(p.in_addr, in_len, VF_IBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(p.in_addr, VF_IBUF_BYTES));
    if (!vf_fits(p.out_addr, out_len, VF_OBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(p.out_addr, VF_OBUF_BYTES));

    const bool avg = (p.head.flags & VF_POOL_AVG) != 0;
    const bool count_pad = (p.head.flags & VF_POOL_COUNT_PAD) != 0;
    const int8_t *in = b->ibuf + p.in_addr;
    int8_t *out = b->obuf + p.out_addr;
    const uint64_t taps = (uint64_t)p.kh * p.kw;
    const int32_t zp = p.in_zp;
    uint64_t beats = 0;
#ifdef VF_HLS_LITERAL
    /* one pipelined loop over every beat (oy, ox, channel block, ky, kx); a
     * block's first beat resets its lanes, its last divides and stores all
     * VF_OCP lanes at once */
    const uint64_t total = pixels * vf_ceil_div(C, VF_OCP) * taps;
    uint32_t oy = 0, ox = 0, ky = 0, kx = 0;
    uint64_t cb = 0; /* first channel of the block */
    int32_t lane[VF_OCP];
#pragma HLS ARRAY_PARTITION variable=lane complete
    uint64_t nvalid = 0;
POOL_BEAT:
    for (uint64_t t = 0; t < total; ++t) {
#pragma HLS PIPELINE II=1
        ++beats;
        const uint64_t pix = (uint64_t)oy * p.out_w + ox;
        const uint64_t iy = (uint64_t)oy * p.sh + ky, ix = (uint64_t)ox * p.sw + kx;
        const bool first = ky == 0 && kx == 0;
        const bool last = ky + 1 == p.kh && kx + 1 == p.kw;
        const bool valid = iy >= p.valid_y0 && iy < p.valid_y1 && ix >= p.valid_x0 && ix < p.valid_x1;
        nvalid = (first ? 0 : nvalid) + (valid ? 1 : 0);
        const int8_t *xp = in + (iy * p.in_w + ix) * C + cb;
    POOL_INIT:
        for (uint32_t o = 0; o < VF_OCP; ++o) {
#pragma HLS UNROLL
            if (first)
                lane[o] = avg ? 0 : INT8_MIN;
        }
    POOL_LANE:
        for (uint32_t o = 0; o < VF_OCP; ++o) {
#pragma HLS UNROLL
            if (valid && cb + o < C) {
                const int32_t x = xp[o];
                lane[o] = avg ? lane[o] + x : (x > lane[o] ? x : lane[o]);
            }
        }
        const uint64_t count = avg ? (count_pad ? taps : nvalid) : 1;
    POOL_STORE:
        for (uint32_t o = 0; o < VF_OCP; ++o) {
#pragma HLS UNROLL
            if (last && cb + o < C) {
                const int64_t v = avg ? (int64_t)lane[o] - (int64_t)nvalid * zp
                                      : (nvalid ? (int64_t)lane[o] - zp : 0);
                out[pix * C + cb + o] = vf_pool_out(v, count, p);
            }
        }
        /* the next beat's coordinates */
        if (++kx == p.kw) {
            kx = 0;
            if (++ky == p.kh) {
                ky = 0;
                cb += VF_OCP;
                if (cb >= C) {
                    cb = 0;
                    if (++ox == p.out_w) {
                        ox = 0;
                        ++oy;
                    }
                }
            }
        }
    }
#else
    for (uint32_t oy = 0; oy < p.out_h; ++oy) {
        for (uint32_t ox = 0; ox < p.out_w; ++ox) {
            const uint64_t pix = (uint64_t)oy * p.out_w + ox;
            const uint64_t by = (uint64_t)oy * p.sh, bx = (uint64_t)ox * p.sw;
            /* only the valid part of the window is visited */
            const uint64_t ky0 = p.valid_y0 > by ? p.valid_y0 - by : 0;
            const uint64_t ky1 = vf_min64(p.kh, p.valid_y1 > by ? p.valid_y1 - by : 0);
            const uint64_t kx0 = p.valid_x0 > bx ? p.valid_x0 - bx : 0;
            const uint64_t kx1 = vf_min64(p.kw, p.valid_x1 > bx ? p.valid_x1 - bx : 0);
            const uint64_t nvalid = (ky1 > ky0 && kx1 > kx0) ? (ky1 - ky0) * (kx1 - kx0) : 0;
            const uint64_t count = avg ? (count_pad ? taps : nvalid) : 1;
            for (uint64_t cb = 0; cb < C; cb += VF_POOL_CHUNK) {
                const uint32_t n = (uint32_t)vf_min64(VF_POOL_CHUNK, C - cb);
                int32_t lane[VF_POOL_CHUNK];
                for (uint32_t o = 0; o < n; ++o)
                    lane[o] = avg ? 0 : INT8_MIN;
                for (uint64_t ky = ky0; ky < ky1; ++ky) {
                    for (uint64_t kx = kx0; kx < kx1; ++kx) {
                        const int8_t *xp = in + ((by + ky) * p.in_w + bx + kx) * C + cb;
                        if (avg)
                            for (uint32_t o = 0; o < n; ++o)
                                lane[o] += xp[o];
                        else
                            for (uint32_t o = 0; o < n; ++o)
                                lane[o] = xp[o] > lane[o] ? xp[o] : lane[o];
                    }
                }
                int8_t *op = out + pix * C + cb;
                for (uint32_t o = 0; o < n; ++o) {
                    const int64_t v = avg ? (int64_t)lane[o] - (int64_t)nvalid * zp
                                          : (nvalid ? (int64_t)lane[o] - zp : 0);
                    op[o] = vf_pool_out(v, count, p);
                }
            }
        }
    }
    beats = pixels * taps * vf_ceil_div(C, VF_OCP);
#endif
    return vf_done(beats, 0, 0);
}

static vf_exec_t vf_add(const vf_insn_add_t &a, vf_cnn_buffers_t *b)
{
    if (a.head.flags != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    if (a.length == 0)
        return VF_FIELD(vf_insn_add_t, length);
    if (a.shift > 62)
        return VF_FIELD(vf_insn_add_t, shift);
    if (a.clip_lo > a.clip_hi)
        return VF_FIELD(vf_insn_add_t, clip_lo);
    if (!vf_fits(a.a_addr, a.length, VF_IBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(a.a_addr, VF_IBUF_BYTES));
    if (!vf_fits(a.b_addr, a.length, VF_IBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(a.b_addr, VF_IBUF_BYTES));
    if (!vf_fits(a.out_addr, a.length, VF_OBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(a.out_addr, VF_OBUF_BYTES));

    const int8_t *pa = b->ibuf + a.a_addr;
    const int8_t *pb = b->ibuf + a.b_addr;
    int8_t *po = b->obuf + a.out_addr;
    const int64_t am = a.a_mult, bm = a.b_mult;
    const int32_t az = a.a_zp, bz = a.b_zp;
    const uint64_t n = a.length;
    const uint64_t beats = vf_lane_loop<VF_OCP>(n, [&](uint64_t i) {
        const int64_t v = (int64_t)(pa[i] - az) * am + (int64_t)(pb[i] - bz) * bm;
        po[i] = vf_clamp8((int64_t)a.out_zp + vf_rshift_round(v, a.shift), a.clip_lo, a.clip_hi);
    });
    return vf_done(beats, 0, 0);
}

/* LUT: OBUF[out + i] = WBUF[table + (uint8_t)(src[in + i] + 128)]. */
static vf_exec_t vf_lut(const vf_insn_lut_t &l, vf_cnn_buffers_t *b)
{
    if ((l.head.flags & ~(uint32_t)VF_LUT_SRC_OBUF) != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    if (l.length == 0)
        return VF_FIELD(vf_insn_lut_t, length);
    const bool from_obuf = (l.head.flags & VF_LUT_SRC_OBUF) != 0;
    const uint64_t n = l.length;
    if (from_obuf && l.in_addr != l.out_addr && (uint64_t)l.in_addr < (uint64_t)l.out_addr + n &&
        (uint64_t)l.out_addr < (uint64_t)l.in_addr + n)
        return VF_FIELD(vf_insn_lut_t, in_addr); /* partly overlapping: order-dependent */
    const uint64_t src_size = from_obuf ? (uint64_t)VF_OBUF_BYTES : (uint64_t)VF_IBUF_BYTES;
    if (!vf_fits(l.in_addr, n, src_size))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(l.in_addr, src_size));
    if (!vf_fits(l.out_addr, n, VF_OBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(l.out_addr, VF_OBUF_BYTES));
    if (!vf_fits(l.table_addr, VF_LUT_ENTRIES, VF_WBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(l.table_addr, VF_WBUF_BYTES));

    const int8_t *src = (from_obuf ? b->obuf : b->ibuf) + l.in_addr;
    const int8_t *table = b->wbuf + l.table_addr;
    int8_t *out = b->obuf + l.out_addr;
    const uint64_t beats = vf_lane_loop<VF_OCP>(n, [&](uint64_t i) { out[i] = table[(uint8_t)(src[i] + 128)]; });
    return vf_done(beats, 0, 0);
}

/* MUL: requantized element-wise product, b broadcast per channel with BCAST. */
static vf_exec_t vf_mul(const vf_insn_mul_t &m, vf_cnn_buffers_t *b)
{
    if ((m.head.flags & ~(uint32_t)VF_MUL_BCAST) != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    if (m.pixels == 0)
        return VF_FIELD(vf_insn_mul_t, pixels);
    if (m.channels == 0)
        return VF_FIELD(vf_insn_mul_t, channels);
    if (m.shift > 62)
        return VF_FIELD(vf_insn_mul_t, shift);
    if (m.clip_lo > m.clip_hi)
        return VF_FIELD(vf_insn_mul_t, clip_lo);
    const bool bcast = (m.head.flags & VF_MUL_BCAST) != 0;
    const uint64_t C = m.channels, P = m.pixels;
    const uint64_t len = vf_mul_sat(P, C);
    if (!vf_fits(m.a_addr, len, VF_IBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(m.a_addr, VF_IBUF_BYTES));
    if (!vf_fits(m.b_addr, bcast ? C : len, VF_IBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(m.b_addr, VF_IBUF_BYTES));
    if (!vf_fits(m.out_addr, len, VF_OBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(m.out_addr, VF_OBUF_BYTES));

    const int8_t *pa = b->ibuf + m.a_addr;
    const int8_t *pb = b->ibuf + m.b_addr;
    int8_t *po = b->obuf + m.out_addr;
    const int32_t az = m.a_zp, bz = m.b_zp;
    const int64_t mult = m.mult;
    const uint64_t bstep = bcast ? 0 : C; /* b elements between pixels */
    uint64_t beats = 0;
MUL_PIX:
    for (uint64_t p = 0; p < P; ++p) {
        const int8_t *ra = pa + p * C, *rb = pb + p * bstep;
        int8_t *ro = po + p * C;
        beats += vf_lane_loop<VF_OCP>(C, [&](uint64_t c) {
            const int64_t v = (int64_t)((ra[c] - az) * (rb[c] - bz)) * mult;
            ro[c] = vf_clamp8((int64_t)m.out_zp + vf_rshift_round(v, m.shift), m.clip_lo, m.clip_hi);
        });
    }
    return vf_done(beats, 0, 0);
}

/* The COMPUTE unit: CONV, POOL, ADD, LUT, MUL. */
static vf_exec_t vf_compute_unit(const vf_insn_t &insn, vf_cnn_buffers_t *b)
{
    if (insn.head.opcode == VF_OP_CONV)
        return vf_conv(vf_format<vf_insn_conv_t>(insn), b);
    if (insn.head.opcode == VF_OP_POOL)
        return vf_pool(vf_format<vf_insn_pool_t>(insn), b);
    if (insn.head.opcode == VF_OP_LUT)
        return vf_lut(vf_format<vf_insn_lut_t>(insn), b);
    if (insn.head.opcode == VF_OP_MUL)
        return vf_mul(vf_format<vf_insn_mul_t>(insn), b);
    return vf_add(vf_format<vf_insn_add_t>(insn), b);
}

/* ========================================================================== */
/* SAVE unit                                                                   */
/* ========================================================================== */

/* The SAVE unit: an OBUF tile to pixels that all lie inside the view, rows
 * sy and pixels sx apart (steps 0 and 1 both mean adjacent). */
static vf_exec_t vf_save_unit(const vf_ddr_t &ddr, uint64_t win, uint64_t seg_limit, const vf_insn_t &insn,
                              const vf_cnn_buffers_t *b)
{
    if (insn.head.flags != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    const vf_insn_mem_t m = vf_format<vf_insn_mem_t>(insn);
    const vf_exec_t view = vf_view_fields(m);
    if (view.fault != VF_FAULT_NONE)
        return view;
    if (m.y0 < 0)
        return VF_FIELD(vf_insn_mem_t, y0);
    if (m.x0 < 0)
        return VF_FIELD(vf_insn_mem_t, x0);
    const uint64_t sy = m.step_y > 1 ? m.step_y : 1, sx = m.step_x > 1 ? m.step_x : 1;
    if ((uint64_t)m.y0 + (uint64_t)(m.tile_h - 1) * sy >= m.height)
        return VF_FIELD(vf_insn_mem_t, tile_h);
    if ((uint64_t)m.x0 + (uint64_t)(m.tile_w - 1) * sx >= m.width)
        return VF_FIELD(vf_insn_mem_t, tile_w);

    const uint64_t ch = m.channels, ps = m.pixel_stride, th = m.tile_h, tw = m.tile_w;
    const uint64_t row_bytes = tw * ch;
    const bool dense = ps == ch && sx == 1;
    if (!vf_fits(m.buf_addr, th * row_bytes, VF_OBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(m.buf_addr, VF_OBUF_BYTES));
    const uint64_t pitch = (uint64_t)m.width * ps * sy; /* DDR bytes between tile rows */
    const uint64_t pstep = ps * sx;                     /* DDR bytes between tile pixels */
    const uint64_t base = m.dram_addr + (uint64_t)m.y0 * m.width * ps + (uint64_t)m.x0 * ps;
    uint64_t first = 0;
    const bool ok = dense ? vf_seg_check(base, th, pitch, 1, row_bytes, row_bytes, seg_limit, &first)
                          : vf_seg_check(base, th, pitch, tw, pstep, ch, seg_limit, &first);
    if (!ok)
        return vf_fail(VF_FAULT_SEGMENT, first);

    const int8_t *src = b->obuf + m.buf_addr;
#ifdef VF_HLS_LITERAL
    uint64_t beats = 0;
SAVE_ROW:
    for (uint64_t r = 0; r < th; ++r) {
        const uint64_t drow = base + r * pitch; /* segment offset of the DDR row */
        const int8_t *srow = src + r * row_bytes;
        if (dense) {
        SAVE_BEAT_DENSE:
            for (uint64_t bt = 0; bt < vf_ceil_div(row_bytes, VF_AXI_BYTES); ++bt) {
#pragma HLS PIPELINE II=1
                ++beats;
                int8_t word[VF_AXI_BYTES];
            SAVE_LANE_DENSE:
                for (uint32_t j = 0; j < VF_AXI_BYTES; ++j) {
#pragma HLS UNROLL
                    const uint64_t k = bt * VF_AXI_BYTES + j;
                    word[j] = k < row_bytes ? srow[k] : 0;
                }
                vf_seg_write_beat(ddr, win, drow + bt * VF_AXI_BYTES, word,
                                  (uint32_t)vf_min64(VF_AXI_BYTES, row_bytes - bt * VF_AXI_BYTES));
            }
        } else {
        SAVE_PIXEL:
            for (uint64_t c = 0; c < tw; ++c) {
            SAVE_BEAT:
                for (uint64_t bt = 0; bt < vf_ceil_div(ch, VF_AXI_BYTES); ++bt) {
#pragma HLS PIPELINE II=1
                    ++beats;
                    int8_t word[VF_AXI_BYTES];
                SAVE_LANE:
                    for (uint32_t j = 0; j < VF_AXI_BYTES; ++j) {
#pragma HLS UNROLL
                        const uint64_t k = bt * VF_AXI_BYTES + j;
                        word[j] = k < ch ? srow[c * ch + k] : 0;
                    }
                    vf_seg_write_beat(ddr, win, drow + c * pstep + bt * VF_AXI_BYTES, word,
                                      (uint32_t)vf_min64(VF_AXI_BYTES, ch - bt * VF_AXI_BYTES));
                }
            }
        }
    }
    return vf_done(beats, th * row_bytes, 0);
#else
    for (uint64_t r = 0; r < th; ++r) {
        const uint64_t drow = base + r * pitch; /* segment offset */
        const int8_t *srow = src + r * row_bytes;
        if (dense)
            vf_seg_write(ddr, win, drow, srow, row_bytes);
        else
            for (uint64_t c = 0; c < tw; ++c)
                vf_seg_write(ddr, win, drow + c * pstep, srow + c * ch, ch);
    }
    const uint64_t iters = dense ? th * vf_ceil_div(row_bytes, VF_AXI_BYTES) : th * tw * vf_ceil_div(ch, VF_AXI_BYTES);
    return vf_done(iters, th * row_bytes, 0);
#endif
}

/* ========================================================================== */
/* The CNN kind of core, for vf_unit_step                                      */
/* ========================================================================== */

struct vf_cnn_kind {
    typedef vf_cnn_buffers_t buffers_t;
    typedef vf_insn_t insn_t;
    enum { FRAME_INSNS = VF_FRAME_INSNS };

    static bool buffers_ok(const vf_cnn_buffers_t *b)
    {
        return b->ibuf != NULL && b->wbuf != NULL && b->acc != NULL && b->obuf != NULL && b->param != NULL;
    }

    static bool opcode_ok(uint32_t opcode) { return opcode < VF_OP_COUNT; }

    static uint32_t unit_of(uint32_t opcode)
    {
        switch (opcode) {
        case VF_OP_LOAD_TILE:
        case VF_OP_LOAD_LINEAR:
            return VF_UNIT_LOAD;
        case VF_OP_CONV:
        case VF_OP_POOL:
        case VF_OP_ADD:
        case VF_OP_LUT:
        case VF_OP_MUL:
            return VF_UNIT_COMPUTE;
        case VF_OP_SAVE:
            return VF_UNIT_SAVE;
        default:
            return VF_UNIT_NONE;
        }
    }

    static vf_exec_t execute(uint32_t unit, const vf_ddr_t &ddr, uint64_t win, uint64_t seg_limit,
                             const vf_insn_t &insn, vf_cnn_buffers_t *b)
    {
        if (unit == VF_UNIT_LOAD)
            return vf_load_unit(ddr, win, seg_limit, insn, b);
        if (unit == VF_UNIT_COMPUTE)
            return vf_compute_unit(insn, b);
        return vf_save_unit(ddr, win, seg_limit, insn, b);
    }
};

void vf_cnn_core_geometry(vf_cnn_geometry_t *geometry)
{
    geometry->icp = VF_ICP;
    geometry->ocp = VF_OCP;
    geometry->axi_bytes = VF_AXI_BYTES;
    geometry->ibuf_bytes = VF_IBUF_BYTES;
    geometry->wbuf_bytes = VF_WBUF_BYTES;
    geometry->acc_words = VF_ACC_WORDS;
    geometry->obuf_bytes = VF_OBUF_BYTES;
    geometry->param_entries = VF_PARAM_ENTRIES;
}

uint32_t vf_cnn_core_step(int8_t *seg, uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count,
                          vf_cnn_buffers_t *buffers, vf_cnn_state_t *state, vf_cnn_counters_t *counters,
                          uint32_t *iters)
{
    return vf_unit_step<vf_cnn_kind>(vf_ddr_window(seg, seg_limit), 0, seg_limit, insn_offset, insn_count, buffers,
                                     state, counters, iters);
}

uint32_t vf_cnn_core_step_window(int8_t *mem, uint64_t mem_bytes, uint64_t seg_win, uint32_t striped,
                                 uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count,
                                 vf_cnn_buffers_t *buffers, vf_cnn_state_t *state, vf_cnn_counters_t *counters,
                                 uint32_t *iters)
{
    return vf_unit_step<vf_cnn_kind>(vf_ddr_for(vf_ddr_window(mem, mem_bytes), striped), seg_win, seg_limit,
                                     insn_offset, insn_count, buffers, state, counters, iters);
}

uint32_t vf_cnn_core_step_ddr(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t seg_limit, uint32_t insn_offset,
                              uint32_t insn_count, vf_cnn_buffers_t *buffers, vf_cnn_state_t *state,
                              vf_cnn_counters_t *counters, uint32_t *iters)
{
    return vf_unit_step<vf_cnn_kind>(ddr, seg_win, seg_limit, insn_offset, insn_count, buffers, state, counters,
                                     iters);
}
