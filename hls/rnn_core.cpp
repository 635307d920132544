/*
 * vfpga RNN core: decoder + LOAD / COMPUTE (matrix-vector array and
 * element-wise gate unit) / SAVE units (Vitis HLS C++14).
 *
 * Implements vf_rnn_core_geometry(), vf_rnn_core_step() and
 * vf_rnn_activation() of include/vfpga_rnn_core.h with the instruction
 * semantics and fixed-point arithmetic of the RNN section of
 * include/vfpga_isa.h. The same source is synthesised by Vitis HLS (wrapped
 * by rnn_core_top.cpp), compiled by g++ for the C-simulation testbench, and
 * loaded into Python through cffi as the emulated hardware.
 *
 * ---- Step rule, decode and the unit schedule -------------------------------
 * As include/vfpga_unit_scheduler.h states them (written once for both core
 * kinds). The RNN core's units: LOAD (RNN_LOAD), COMPUTE (RNN_MATVEC,
 * RNN_GATES) and SAVE (RNN_SAVE); NOP, FRAME, BARRIER, END and
 * VF_RNN_OP_FIRST .. VF_RNN_OP_LIMIT - 1 decode, anything else (the CNN
 * opcodes included) is VF_FAULT_OPCODE. VF_RNN_STEP_* are the VF_STEP_*
 * values. The on-chip buffers keep their contents between steps (weights and
 * state may stay resident across the frames of a sequence).
 * A timestep of an RNN layer split over k cores is one frame per core,
 *   FRAME, RNN_LOAD x_t and h_{t-1} (and, unless resident, the slice's
 *   weights, PARAM and state), RNN_MATVEC (x part, h part), RNN_GATES,
 *   RNN_SAVE h_t slice (and state), BARRIER
 * and the dispatcher's barrier orders the timesteps.
 *
 * ---- Faults -------------------------------------------------------------------
 * Each instruction is validated completely before it moves any byte:
 *   1. VF_FAULT_FIELD   undefined flag bits, zero sizes, RNN_MATVEC
 *                       wgt_addr not a multiple of the tile (ROWS x COLS
 *                       bytes) or wgt_stride < ceil(cols / COLS) tiles
 *                       (rows > ROWS), a bad buffer or cell
 *                       code, int32 buffer rows not a multiple of 4 bytes,
 *                       an RNN_LOAD into WBUF whose buf_addr or row_bytes
 *                       is not a multiple of the tile,
 *                       overlapping RNN_SAVE rows/planes, gate_stride < n,
 *                       out_shift > 62, overlapping LSTM c/h state ranges,
 *                       then (after the buffer checks) a PARAM shift outside
 *                       [0, 62] among the entries RNN_GATES reads.
 *                       fault_addr = byte offset of the offending field in
 *                       the 64-byte instruction (a bad PARAM shift reports
 *                       param_x or param_h).
 *   2. VF_FAULT_BUFFER  an on-chip range outside its buffer; fault_addr =
 *                       max(start, size) in the unit of the address field
 *                       (start = the range's first element; RNN_GATES GRU_RH
 *                       ranges start at gate 1).
 *   3. VF_FAULT_SEGMENT a DDR byte outside [0, seg_limit); fault_addr = the
 *                       lowest such offset (for RNN_SAVE, whose rows do not
 *                       overlap, also the first in access order).
 * VF_FAULT_FETCH / VF_FAULT_OPCODE / VF_FAULT_DEADLOCK: see the scheduler.
 * All address arithmetic is 64-bit on validated, saturated extents, and all
 * arithmetic on buffer contents is int64 with the bounds of vfpga_isa.h: no
 * field or data value can make the core touch memory outside seg[0,
 * seg_limit) or its buffers, or overflow. Nothing of a faulting instruction
 * is written.
 *
 * ---- Pipelined-loop iteration counts (the cycle model's contract) ----------
 * Per retired instruction, iterations of its II=1 pipelined loop:
 *   RNN_LOAD, RNN_SAVE  planes * rows * ceil(row_bytes / VF_AXI_BYTES)
 *   RNN_MATVEC          ceil(rows / VF_RNN_ROWS) * ceil(cols / VF_RNN_COLS)
 *   RNN_GATES           ceil(n / VF_RNN_LANES)
 *   NOP, markers        0
 * (RNN_GATES first checks the PARAM shifts it will read -- a fault check, as
 * the CNN core's CONV does; it is not counted.)
 * iters[idx] and the counters as the scheduler keeps them; load_bytes /
 * save_bytes count DDR bytes (planes * rows * row_bytes); macs counts
 * rows * cols per RNN_MATVEC.
 *
 * ---- Two bodies, one loop nest ----------------------------------------------
 * With VF_HLS_LITERAL (automatic under __SYNTHESIS__) the loop nests are the
 * HLS ones -- beat loops with VF_AXI_BYTES lanes, the VF_RNN_ROWS x
 * VF_RNN_COLS matrix-vector array, VF_RNN_LANES gate lanes -- and count their
 * iterations as they run. The default g++ build (the emulator) moves rows
 * with memcpy and reduces each tile row as a COLS-byte int8 dot product of
 * compile-time length (g++ -O3 vectorises it), and takes the counts from the
 * formulas. int32 wrapping addition is associative and the gate unit runs the
 * same per-unit function in both builds, so they are bit-identical;
 * `make -C hls csim-rnn` runs the testbench on both.
 *
 * ---- Memories for one beat per cycle ------------------------------------------
 * RNN_MATVEC's weights are beat-major tiles (vfpga_isa.h): beat (rb, cb)
 * reads the one WBUF word wgt_addr / T + rb * wgt_stride + cb, T = ROWS x
 * COLS bytes, wgt_addr a multiple of T; WBUF is reshaped cyclically by T
 * (VF_RNN_PARTITIONS in include/vfpga_hls.h): one memory of T-byte words, a
 * tile per word, read whole by a beat. RNN_LOAD writes it a whole tile at
 * a time (buf_addr and row_bytes multiples of T, MEM_TILE), never bytes
 * into a wide word (a read-modify-write that would break II=1). The gate
 * unit's LANES lanes each read the activation tables twice per unit: ACT
 * is held as VF_RNN_LANES copies (vfpga_rnn_core.h,
 * VF_RNN_ACT_BUFFER_WORDS), one memory per lane (the
 * tops partition the lane dimension completely), RNN_LOAD into ACT writes
 * all copies in the same beat and lane l reads copy l. That costs LANES x
 * act_words x 4 bytes of on-chip memory per core instead of act_words x 4
 * (u200: 16 x 4098 words = 256 KiB; u200_bigcore: 128 x 4098 = 2 MiB;
 * pynq_z2: 4 x 4098 = 64 KiB).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "vfpga_isa.h"
#include "vfpga_mac.h"
#include "vfpga_rnn_core.h"
#define VF_STEP_STORE_URAM VF_URAM_RNN_STEP_STORE /* this kind's step instruction store (board config storage.uram) */
#include "vfpga_unit_scheduler.h"

#if !defined(VF_AXI_BYTES) || !defined(VF_RNN_ROWS) || !defined(VF_RNN_COLS) || !defined(VF_RNN_LANES) ||      \
    !defined(VF_RNN_WBUF_BYTES) || !defined(VF_RNN_VBUF_BYTES) || !defined(VF_RNN_ACC_WORDS) ||                 \
    !defined(VF_RNN_PARAM_ENTRIES) || !defined(VF_RNN_STATE_WORDS) || !defined(VF_RNN_ACT_WORDS) ||             \
    !defined(VF_RNN_ACT_SEGMENTS) || !defined(VF_RNN_ACT_STEP_LOG2) || !defined(VF_RNN_TILE_BYTES)
#error "board macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif

static_assert(sizeof(vf_insn_rnn_mem_t) <= VF_INSN_BYTES && sizeof(vf_insn_rnn_matvec_t) <= VF_INSN_BYTES &&
                  sizeof(vf_insn_rnn_gates_t) <= VF_INSN_BYTES,
              "RNN instruction formats fit a slot");
static_assert(VF_RNN_OP_FIRST >= VF_OP_COUNT, "RNN opcodes must stay outside the CNN range");
static_assert(VF_RNN_ROWS % 2 == 0, "the MATVEC beat packs its rows in pairs (vfpga_mac.h): rows must be even");
static_assert(VF_RNN_STEP_FRAME == VF_STEP_FRAME && VF_RNN_STEP_END == VF_STEP_END &&
                  VF_RNN_STEP_FAULT == VF_STEP_FAULT,
              "step codes");
static_assert(VF_RNN_ROWS >= 1 && VF_RNN_ROWS <= 256, "VF_RNN_ROWS out of range");
static_assert(VF_RNN_COLS >= 1 && VF_RNN_COLS <= 256, "VF_RNN_COLS out of range");
static_assert(VF_RNN_LANES >= 1 && VF_RNN_LANES <= 256, "VF_RNN_LANES out of range");
static_assert(VF_RNN_WBUF_BYTES >= 1 && VF_RNN_WBUF_BYTES <= (1u << 30), "VF_RNN_WBUF_BYTES out of range");
static_assert(VF_RNN_VBUF_BYTES >= 1 && VF_RNN_VBUF_BYTES <= (1u << 30), "VF_RNN_VBUF_BYTES out of range");
static_assert(VF_RNN_ACC_WORDS >= 1 && VF_RNN_ACC_WORDS <= (1u << 28), "VF_RNN_ACC_WORDS out of range");
static_assert(VF_RNN_PARAM_ENTRIES >= 1 && VF_RNN_PARAM_ENTRIES <= (1u << 24), "VF_RNN_PARAM_ENTRIES out of range");
static_assert(VF_RNN_STATE_WORDS >= 1 && VF_RNN_STATE_WORDS <= (1u << 28), "VF_RNN_STATE_WORDS out of range");
static_assert(VF_RNN_ACT_WORDS >= 1 && VF_RNN_ACT_WORDS <= (1u << 16), "VF_RNN_ACT_WORDS out of range");
static_assert(VF_RNN_ACT_STEP_LOG2 >= 1 && VF_RNN_ACT_STEP_LOG2 <= 20, "VF_RNN_ACT_STEP_LOG2 out of range");
static_assert(VF_RNN_ACT_SEGMENTS >= 2 && VF_RNN_ACT_SEGMENTS <= (1u << 16), "VF_RNN_ACT_SEGMENTS out of range");
static_assert(VF_RNN_ACT_SEGMENTS + 1 <= VF_RNN_ACT_WORDS, "ACT must hold one table");
static_assert(VF_RNN_TILE_BYTES == VF_RNN_ROWS * VF_RNN_COLS, "a tile is ROWS x COLS bytes");
static_assert(VF_RNN_WBUF_BYTES % VF_RNN_TILE_BYTES == 0, "WBUF holds whole tile words");
static_assert(VF_RNN_TILE_BYTES % VF_AXI_BYTES == 0, "RNN_LOAD writes WBUF tiles whole: a bus beat lies in one tile");

namespace {

const uint64_t VR_PARAM_WORDS = (uint64_t)VF_RNN_PARAM_ENTRIES * VF_PARAM_ENTRY_WORDS;
const uint64_t VR_TABLE_WORDS = (uint64_t)VF_RNN_ACT_SEGMENTS + 1;
const int64_t VR_PRE_MAX = VF_RNN_PRE_MAX;
const int64_t VR_PRE_MIN = -(int64_t)VF_RNN_PRE_MAX - 1;
const int64_t VR_ONE = VF_RNN_ONE;
const int64_t VR_HALF = (int64_t)VF_RNN_ACT_SEGMENTS << (VF_RNN_ACT_STEP_LOG2 - 1);
/* One MATVEC beat's weights: a ROWS x COLS tile, one WBUF word. */
const uint64_t VR_TILE = VF_RNN_TILE_BYTES;

/* ========================================================================== */
/* Small helpers (the shared ones are in vfpga_unit_scheduler.h)               */
/* ========================================================================== */

inline int64_t vr_clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

inline int32_t vr_clamp32(int64_t v) { return (int32_t)vr_clamp(v, INT32_MIN, INT32_MAX); }

inline int64_t vr_clamp_pre(int64_t v) { return vr_clamp(v, VR_PRE_MIN, VR_PRE_MAX); }

/* pre(acc, e): an accumulator requantized to a Q8.15 pre-activation with the
 * PARAM entry e = {bias, mult, shift}, shift already checked to be <= 62. */
inline int64_t vr_pre(int32_t acc, const int32_t *e)
{
    return vr_clamp_pre(vf_rshift_round((int64_t)acc * e[1], (uint32_t)e[2]));
}

/* act(T, p): table activation, p in [PRE_MIN, PRE_MAX], result in [-ONE, ONE]. */
inline int64_t vr_act(const int32_t *t, int64_t p)
{
    const int64_t u = p + VR_HALF;
    int64_t y;
    if (u < 0) {
        y = t[0];
    } else {
        const int64_t k = u >> VF_RNN_ACT_STEP_LOG2;
        if (k >= (int64_t)VF_RNN_ACT_SEGMENTS) {
            y = t[VF_RNN_ACT_SEGMENTS];
        } else {
            const int64_t f = u & (((int64_t)1 << VF_RNN_ACT_STEP_LOG2) - 1);
            y = t[k] + vf_rshift_round(((int64_t)t[k + 1] - t[k]) * f, VF_RNN_ACT_STEP_LOG2);
        }
    }
    return vr_clamp(y, -VR_ONE, VR_ONE);
}

/* q8(v): |v| <= 2^31, out_shift <= 62. */
inline int8_t vr_q8(int64_t v, int32_t mult, uint32_t shift, int8_t zp)
{
    return (int8_t)vr_clamp((int64_t)zp + vf_rshift_round(v * mult, shift), -128, 127);
}

inline void vr_put_word(int8_t *p, int32_t w)
{
    const uint32_t u = (uint32_t)w;
    uint8_t b[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
    memcpy(p, b, 4);
}

/* ========================================================================== */
/* LOAD and SAVE units                                                         */
/* ========================================================================== */

inline bool vr_wide(uint32_t buffer) { return buffer >= VF_RNN_BUF_ACC; }

/* Size of a buffer in elements (bytes / int32 words); 0 for no buffer. */
inline uint64_t vr_buf_size(uint32_t buffer)
{
    switch (buffer) {
    case VF_RNN_BUF_WGT: return VF_RNN_WBUF_BYTES;
    case VF_RNN_BUF_VEC: return VF_RNN_VBUF_BYTES;
    case VF_RNN_BUF_ACC: return VF_RNN_ACC_WORDS;
    case VF_RNN_BUF_PARAM: return VR_PARAM_WORDS;
    case VF_RNN_BUF_STATE: return VF_RNN_STATE_WORDS;
    case VF_RNN_BUF_ACT: return VF_RNN_ACT_WORDS;
    default: return 0;
    }
}

/* The lowest DDR offset >= limit among planes x rows runs of rb bytes at
 * base + p * ps + r * rs (true when every byte lies in [0, limit)). */
bool vr_seg_check(uint64_t base, uint64_t planes, uint64_t ps, uint64_t rows, uint64_t rs, uint64_t rb,
                  uint64_t limit, uint64_t *first)
{
    const uint64_t plane_span = (rows - 1) * rs + rb; /* < 2^49 */
    if (base + (planes - 1) * ps + plane_span <= limit)
        return true;
    uint64_t low = ~0ull; /* lowest start of a row that sticks out */
SEG_SCAN:
    for (uint64_t p = 0; p < planes; ++p) {
        const uint64_t sp = base + p * ps;
        if (sp >= low)
            break; /* later planes start even higher */
        if (sp + plane_span <= limit)
            continue;
        const uint64_t r = sp + rb > limit ? 0 : (limit - sp - rb) / rs + 1; /* rs > 0 here */
        low = vf_min64(low, sp + r * rs);
    }
    *first = vf_max64(low, limit);
    return false;
}

vf_exec_t vr_mem(const vf_ddr_t &ddr, uint64_t win, uint64_t seg_limit, const vf_insn_rnn_mem_t &m,
                 vf_rnn_buffers_t *b, bool save)
{
    if (m.head.flags != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    if (m.buffer >= VF_RNN_BUF_COUNT ||
        (save && m.buffer != VF_RNN_BUF_VEC && m.buffer != VF_RNN_BUF_ACC && m.buffer != VF_RNN_BUF_STATE))
        return VF_FIELD(vf_insn_rnn_mem_t, buffer);
    if (m.row_bytes == 0)
        return VF_FIELD(vf_insn_rnn_mem_t, row_bytes);
    if (m.rows == 0)
        return VF_FIELD(vf_insn_rnn_mem_t, rows);
    if (m.planes == 0)
        return VF_FIELD(vf_insn_rnn_mem_t, planes);
    const bool wide = vr_wide(m.buffer);
    if (wide && (m.row_bytes & 3u) != 0)
        return VF_FIELD(vf_insn_rnn_mem_t, row_bytes);
    /* WBUF is one memory of tile words (VF_RNN_PARTITIONS): RNN_LOAD writes whole tiles */
    if (m.buffer == VF_RNN_BUF_WGT && m.buf_addr % VF_RNN_TILE_BYTES != 0)
        return VF_FIELD(vf_insn_rnn_mem_t, buf_addr);
    if (m.buffer == VF_RNN_BUF_WGT && m.row_bytes % VF_RNN_TILE_BYTES != 0)
        return VF_FIELD(vf_insn_rnn_mem_t, row_bytes);
    const uint64_t rb = m.row_bytes, rows = m.rows, planes = m.planes, rs = m.row_stride, ps = m.plane_stride;
    if (save && rows > 1 && rs < rb)
        return VF_FIELD(vf_insn_rnn_mem_t, row_stride);
    if (save && planes > 1 && ps < (rows - 1) * rs + rb)
        return VF_FIELD(vf_insn_rnn_mem_t, plane_stride);

    const uint64_t total = vf_mul_sat(vf_mul_sat(planes, rows), rb); /* bytes */
    const uint64_t size = vr_buf_size(m.buffer);
    if (!vf_fits(m.buf_addr, wide ? total / 4 : total, size))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(m.buf_addr, size));
    uint64_t first = 0;
    if (!vr_seg_check(m.dram_addr, planes, ps, rows, rs, rb, seg_limit, &first))
        return vf_fail(VF_FAULT_SEGMENT, first);

    /* validated: total < 2^32 bytes, every row inside the segment */
    int8_t *bytes = NULL;
    int32_t *words = NULL;
    switch (m.buffer) {
    case VF_RNN_BUF_WGT: bytes = b->wbuf + m.buf_addr; break;
    case VF_RNN_BUF_VEC: bytes = b->vbuf + m.buf_addr; break;
    case VF_RNN_BUF_ACC: words = b->acc + m.buf_addr; break;
    case VF_RNN_BUF_PARAM: words = b->param + m.buf_addr; break;
    case VF_RNN_BUF_STATE: words = b->state + m.buf_addr; break;
    default: words = b->act + m.buf_addr; break;
    }
    const uint64_t beats_per_row = vf_ceil_div(rb, VF_AXI_BYTES);
#ifdef VF_HLS_LITERAL
    static_assert(VF_AXI_BYTES % 4 == 0, "a bus word holds whole int32 words");
    uint64_t beats = 0;
    const bool wgt = m.buffer == VF_RNN_BUF_WGT;
    int8_t tword[VF_RNN_TILE_BYTES]; /* the WBUF tile word being assembled, written whole */
MEM_PLANE:
    for (uint64_t p = 0; p < planes; ++p) {
    MEM_ROW:
        for (uint64_t r = 0; r < rows; ++r) {
            const uint64_t d = m.dram_addr + p * ps + r * rs; /* segment offset of the DDR row */
            const uint64_t o = (p * rows + r) * rb;                  /* byte offset of the row in the buffer run */
        MEM_BEAT:
            for (uint64_t bt = 0; bt < beats_per_row; ++bt) {
#pragma HLS PIPELINE II=1
                ++beats;
                const uint32_t n = (uint32_t)vf_min64(VF_AXI_BYTES, rb - bt * VF_AXI_BYTES);
                int8_t word[VF_AXI_BYTES] = {0};
                if (!save)
                    vf_seg_read_beat(ddr, win, d + bt * VF_AXI_BYTES, word, n);
                if (!wide) {
                MEM_LANE:
                    for (uint32_t j = 0; j < VF_AXI_BYTES; ++j) {
#pragma HLS UNROLL
                        const uint64_t k = bt * VF_AXI_BYTES + j;
                        if (k < rb) {
                            if (save)
                                word[j] = bytes[o + k];
                            else if (wgt)
                                tword[(o + k) % VF_RNN_TILE_BYTES] = word[j]; /* the beat lies in one tile */
                            else
                                bytes[o + k] = word[j];
                        }
                    }
                    /* a tile goes into WBUF whole, at the beat that completes it (rows are whole tiles) */
                    const uint64_t end = vf_min64((bt + 1) * VF_AXI_BYTES, rb);
                    if (wgt && end % VF_RNN_TILE_BYTES == 0) {
                    MEM_TILE:
                        for (uint32_t j = 0; j < VF_RNN_TILE_BYTES; ++j) {
#pragma HLS UNROLL
                            bytes[o + end - VF_RNN_TILE_BYTES + j] = tword[j];
                        }
                    }
                } else {
                    /* the int32 buffers move whole words (o and rb are multiples of 4) */
                MEM_WORD:
                    for (uint32_t j = 0; j < VF_AXI_BYTES / 4; ++j) {
#pragma HLS UNROLL
                        const uint64_t k = bt * VF_AXI_BYTES + 4 * j;
                        if (k < rb) {
                            if (save) {
                                vr_put_word(word + 4 * j, words[(o + k) >> 2]);
                            } else if (m.buffer == VF_RNN_BUF_ACT) {
                                /* every lane's copy of the tables, one write port each */
                            MEM_ACT_COPY:
                                for (uint32_t l = 0; l < VF_RNN_LANES; ++l) {
#pragma HLS UNROLL
                                    words[l * (uint64_t)VF_RNN_ACT_WORDS + ((o + k) >> 2)] = vf_word(word + 4 * j);
                                }
                            } else {
                                words[(o + k) >> 2] = vf_word(word + 4 * j);
                            }
                        }
                    }
                }
                if (save)
                    vf_seg_write_beat(ddr, win, d + bt * VF_AXI_BYTES, word, n);
            }
        }
    }
    return vf_done(beats, planes * rows * rb, 0);
#else
    for (uint64_t p = 0; p < planes; ++p) {
        for (uint64_t r = 0; r < rows; ++r) {
            const uint64_t d = m.dram_addr + p * ps + r * rs; /* segment offset */
            const uint64_t o = (p * rows + r) * rb;
            if (!wide) {
                if (save)
                    vf_seg_write(ddr, win, d, bytes + o, rb);
                else
                    vf_seg_read(ddr, win, d, bytes + o, rb);
            } else {
                int32_t *w = words + o / 4;
                int8_t chunk[256]; /* whole words */
                for (uint64_t k = 0; k < rb; k += sizeof chunk) {
                    const uint64_t n = vf_min64(sizeof chunk, rb - k);
                    if (save) {
                        for (uint64_t i = 0; i < n / 4; ++i)
                            vr_put_word(chunk + 4 * i, w[k / 4 + i]);
                        vf_seg_write(ddr, win, d + k, chunk, n);
                    } else {
                        vf_seg_read(ddr, win, d + k, chunk, n);
                        for (uint64_t i = 0; i < n / 4; ++i)
                            w[k / 4 + i] = vf_word(chunk + 4 * i);
                    }
                }
            }
        }
    }
    if (!save && m.buffer == VF_RNN_BUF_ACT) /* the other lanes' copies of the run */
        for (uint32_t l = 1; l < VF_RNN_LANES; ++l)
            memcpy(words + l * (uint64_t)VF_RNN_ACT_WORDS, words, total);
    return vf_done(planes * rows * beats_per_row, planes * rows * rb, 0);
#endif
}

/* ========================================================================== */
/* COMPUTE unit: matrix-vector array                                           */
/* ========================================================================== */

vf_exec_t vr_matvec(const vf_insn_rnn_matvec_t &mv, vf_rnn_buffers_t *b)
{
    if ((mv.head.flags & ~(uint32_t)VF_RNN_MV_INIT) != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    if (mv.rows == 0)
        return VF_FIELD(vf_insn_rnn_matvec_t, rows);
    if (mv.cols == 0)
        return VF_FIELD(vf_insn_rnn_matvec_t, cols);
    if (mv.wgt_addr % VR_TILE != 0)
        return VF_FIELD(vf_insn_rnn_matvec_t, wgt_addr);
    const uint64_t rows = mv.rows, cols = mv.cols, ws = mv.wgt_stride;
    const uint64_t nrb = vf_ceil_div(rows, VF_RNN_ROWS), ncb = vf_ceil_div(cols, VF_RNN_COLS);
    if (nrb > 1 && ws < ncb)
        return VF_FIELD(vf_insn_rnn_matvec_t, wgt_stride);
    const bool init = (mv.head.flags & VF_RNN_MV_INIT) != 0;
    /* the tiles span words 0 .. (nrb - 1) * ws + ncb - 1 from wgt_addr */
    if (!vf_fits(mv.wgt_addr, vf_mul_sat(vf_mul_sat(nrb - 1, ws) + ncb, VR_TILE), VF_RNN_WBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(mv.wgt_addr, VF_RNN_WBUF_BYTES));
    if (!vf_fits(mv.vec_addr, cols, VF_RNN_VBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(mv.vec_addr, VF_RNN_VBUF_BYTES));
    if (!vf_fits(mv.acc_addr, rows, VF_RNN_ACC_WORDS))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(mv.acc_addr, VF_RNN_ACC_WORDS));
    if (init && !vf_fits(mv.param_addr, rows, VF_RNN_PARAM_ENTRIES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(mv.param_addr, VF_RNN_PARAM_ENTRIES));

    const int8_t *w = b->wbuf + mv.wgt_addr;
    const int8_t *v = b->vbuf + mv.vec_addr;
    int32_t *acc = b->acc + mv.acc_addr;
    const int32_t *prm = init ? b->param + (uint64_t)mv.param_addr * VF_PARAM_ENTRY_WORDS : NULL;
#ifdef VF_HLS_LITERAL
    uint64_t beats = 0;
MV_RB:
    for (uint64_t rb = 0; rb < nrb; ++rb) {
        uint32_t lane[VF_RNN_ROWS];
#pragma HLS ARRAY_PARTITION variable=lane complete
    MV_INIT:
        for (uint32_t r = 0; r < VF_RNN_ROWS; ++r) {
#pragma HLS UNROLL
            const uint64_t row = rb * VF_RNN_ROWS + r;
            lane[r] = row < rows ? (uint32_t)(init ? prm[row * VF_PARAM_ENTRY_WORDS] : acc[row]) : 0u;
        }
    MV_CB:
        for (uint64_t cb = 0; cb < ncb; ++cb) {
#pragma HLS PIPELINE II=1
            ++beats;
            /* the beat's tile: one WBUF word, its byte r * COLS + c in bank r * COLS + c */
            const int8_t *tile = w + (rb * ws + cb) * VR_TILE;
            /* rows r and r + 1 multiply the same vector byte: one DSP slice
             * gives both products (vf_mul2, vfpga_mac.h) */
        MV_ROW:
            for (uint32_t r = 0; r < VF_RNN_ROWS; r += 2) {
#pragma HLS UNROLL
                int32_t s0 = 0, s1 = 0;
            MV_COL:
                for (uint32_t c = 0; c < VF_RNN_COLS; ++c) {
#pragma HLS UNROLL
                    if (cb * VF_RNN_COLS + c < cols) {
                        int32_t p1, p0;
                        vf_mul2(v[cb * VF_RNN_COLS + c], tile[(r + 1) * VF_RNN_COLS + c], tile[r * VF_RNN_COLS + c],
                                &p1, &p0);
                        s0 += rb * VF_RNN_ROWS + r < rows ? p0 : 0;
                        s1 += rb * VF_RNN_ROWS + r + 1 < rows ? p1 : 0;
                    }
                }
                lane[r] += (uint32_t)s0;
                lane[r + 1] += (uint32_t)s1;
            }
        }
    MV_STORE:
        for (uint32_t r = 0; r < VF_RNN_ROWS; ++r) {
#pragma HLS UNROLL
            if (rb * VF_RNN_ROWS + r < rows)
                acc[rb * VF_RNN_ROWS + r] = vf_i32(lane[r]);
        }
    }
    return vf_done(beats, 0, rows * cols);
#else
    /* a row block at a time; each tile row is a COLS-byte dot product of
     * compile-time length (g++ vectorises it), the last column block cut */
    const uint64_t full = cols / VF_RNN_COLS, tail = cols % VF_RNN_COLS;
    for (uint64_t rb = 0; rb < nrb; ++rb) {
        const uint64_t r0 = rb * VF_RNN_ROWS, nr = vf_min64(VF_RNN_ROWS, rows - r0);
        const int8_t *t = w + rb * ws * VR_TILE;
        uint32_t lane[VF_RNN_ROWS];
        for (uint64_t r = 0; r < nr; ++r)
            lane[r] = (uint32_t)(init ? prm[(r0 + r) * VF_PARAM_ENTRY_WORDS] : acc[r0 + r]);
        for (uint64_t cb = 0; cb < full; ++cb) {
            const int8_t *tile = t + cb * VR_TILE, *vc = v + cb * VF_RNN_COLS;
            uint64_t r = 0;
            for (; r + 4 <= nr; r += 4) { /* four rows share each vector load */
                const int8_t *t0 = tile + r * VF_RNN_COLS, *t1 = t0 + VF_RNN_COLS, *t2 = t1 + VF_RNN_COLS,
                             *t3 = t2 + VF_RNN_COLS;
                int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                for (uint32_t c = 0; c < VF_RNN_COLS; ++c) {
                    const int32_t x = vc[c];
                    s0 += x * t0[c];
                    s1 += x * t1[c];
                    s2 += x * t2[c];
                    s3 += x * t3[c];
                }
                lane[r] += (uint32_t)s0;
                lane[r + 1] += (uint32_t)s1;
                lane[r + 2] += (uint32_t)s2;
                lane[r + 3] += (uint32_t)s3;
            }
            for (; r < nr; ++r) {
                const int8_t *tr = tile + r * VF_RNN_COLS;
                int32_t s = 0;
                for (uint32_t c = 0; c < VF_RNN_COLS; ++c)
                    s += (int32_t)tr[c] * vc[c];
                lane[r] += (uint32_t)s;
            }
        }
        if (tail != 0) {
            const int8_t *tile = t + full * VR_TILE, *vc = v + full * VF_RNN_COLS;
            for (uint64_t r = 0; r < nr; ++r) {
                const int8_t *tr = tile + r * VF_RNN_COLS;
                int32_t s = 0;
                for (uint64_t c = 0; c < tail; ++c)
                    s += (int32_t)tr[c] * vc[c];
                lane[r] += (uint32_t)s;
            }
        }
        for (uint64_t r = 0; r < nr; ++r)
            acc[r0 + r] = vf_i32(lane[r]);
    }
    return vf_done(nrb * ncb, 0, rows * cols);
#endif
}

/* ========================================================================== */
/* COMPUTE unit: element-wise gate unit                                        */
/* ========================================================================== */

/* A validated RNN_GATES, decoded. */
struct vr_gates_t {
    uint32_t cell;
    uint64_t gs;
    const int32_t *ax, *ah; /* ACC, gate 0 */
    const int32_t *px, *ph; /* PARAM words, gate 0 */
    int32_t *c, *h;         /* STATE (c: LSTM only) */
    int8_t *out;            /* VBUF */
    const int32_t *sig, *tanh_t;
    int32_t mult;
    uint32_t shift;
    int8_t zp;
};

/* p_k and its two terms for unit j */
inline int64_t vr_term_x(const vr_gates_t &g, uint32_t k, uint64_t j)
{
    const uint64_t i = k * g.gs + j;
    return vr_pre(g.ax[i], g.px + i * VF_PARAM_ENTRY_WORDS);
}
inline int64_t vr_term_h(const vr_gates_t &g, uint32_t k, uint64_t j)
{
    const uint64_t i = k * g.gs + j;
    return vr_pre(g.ah[i], g.ph + i * VF_PARAM_ENTRY_WORDS);
}
inline int64_t vr_gate(const vr_gates_t &g, uint32_t k, uint64_t j)
{
    return vr_clamp_pre(vr_term_x(g, k, j) + vr_term_h(g, k, j));
}

/* One hidden unit of RNN_GATES: the lane body, the same in both builds. Unit
 * j runs on lane j % LANES and looks its activations up in that lane's copy
 * of the tables (vf_lane_loop's beats start at multiples of LANES, so the
 * copy is the unrolled lane's own, a compile-time index). */
inline void vr_gate_unit(const vr_gates_t &g, uint64_t j)
{
    const uint64_t copy = (j % VF_RNN_LANES) * (uint64_t)VF_RNN_ACT_WORDS;
    const int32_t *sig = g.sig + copy;
    const int32_t *tanh_t = g.tanh_t + copy; /* unused (and not a table) for GRU_RH */
    switch (g.cell) {
    case VF_RNN_CELL_LSTM: {
        const int64_t i = vr_act(sig, vr_gate(g, VF_RNN_GATE_I, j));
        const int64_t o = vr_act(sig, vr_gate(g, VF_RNN_GATE_O, j));
        const int64_t f = vr_act(sig, vr_gate(g, VF_RNN_GATE_F, j));
        const int64_t u = vr_act(tanh_t, vr_gate(g, VF_RNN_GATE_C, j));
        const int32_t c = vr_clamp32(vf_rshift_round(f * g.c[j] + i * u, VF_RNN_FRAC_BITS));
        const int64_t h = vf_rshift_round(o * vr_act(tanh_t, vr_clamp_pre(c)), VF_RNN_FRAC_BITS);
        g.c[j] = c;
        g.h[j] = (int32_t)h;
        g.out[j] = vr_q8(h, g.mult, g.shift, g.zp);
        break;
    }
    case VF_RNN_CELL_GRU:
    case VF_RNN_CELL_GRU_LBR: {
        const int64_t z = vr_act(sig, vr_gate(g, VF_RNN_GATE_Z, j));
        int64_t pn;
        if (g.cell == VF_RNN_CELL_GRU_LBR) {
            const int64_t r = vr_act(sig, vr_gate(g, VF_RNN_GATE_R, j));
            pn = vr_clamp_pre(vr_term_x(g, VF_RNN_GATE_H, j) +
                              vf_rshift_round(r * vr_term_h(g, VF_RNN_GATE_H, j), VF_RNN_FRAC_BITS));
        } else {
            pn = vr_gate(g, VF_RNN_GATE_H, j);
        }
        const int64_t n = vr_act(tanh_t, pn);
        const int64_t hp = g.h[j];
        const int32_t h = vr_clamp32(n + vf_rshift_round(z * (hp - n), VF_RNN_FRAC_BITS));
        g.h[j] = h;
        g.out[j] = vr_q8(h, g.mult, g.shift, g.zp);
        break;
    }
    default: { /* VF_RNN_CELL_GRU_RH */
        const int64_t r = vr_act(sig, vr_gate(g, VF_RNN_GATE_R, j));
        g.out[j] = vr_q8(vf_rshift_round(r * g.h[j], VF_RNN_FRAC_BITS), g.mult, g.shift, g.zp);
        break;
    }
    }
}

/* [base + first*gs, base + (first+count-1)*gs + n) inside [0, size)? */
inline bool vr_gate_range(uint64_t base, uint32_t first, uint32_t count, uint64_t gs, uint64_t n, uint64_t size,
                          uint64_t *start)
{
    *start = base + first * gs;
    return vf_fits(*start, (count - 1) * gs + n, size);
}

/* Every PARAM shift of the entries a gate range reads lies in [0, 62]? */
bool vr_shifts_ok(const int32_t *param, uint64_t start, uint32_t count, uint64_t gs, uint64_t n)
{
    bool ok = true;
GATES_CHECK:
    for (uint32_t k = 0; k < count; ++k)
        for (uint64_t j = 0; j < n; ++j) {
            const int32_t s = param[(start + k * gs + j) * VF_PARAM_ENTRY_WORDS + 2];
            ok = ok && s >= 0 && s <= 62;
        }
    return ok;
}

vf_exec_t vr_gates(const vf_insn_rnn_gates_t &gi, vf_rnn_buffers_t *b)
{
    if (gi.head.flags != 0)
        return vf_fail(VF_FAULT_FIELD, VF_FLAGS_OFFSET);
    if (gi.cell >= VF_RNN_CELL_COUNT)
        return VF_FIELD(vf_insn_rnn_gates_t, cell);
    if (gi.n == 0)
        return VF_FIELD(vf_insn_rnn_gates_t, n);
    if (gi.gate_stride < gi.n)
        return VF_FIELD(vf_insn_rnn_gates_t, gate_stride);
    if (gi.out_shift > 62)
        return VF_FIELD(vf_insn_rnn_gates_t, out_shift);
    const bool lstm = gi.cell == VF_RNN_CELL_LSTM;
    const bool rh = gi.cell == VF_RNN_CELL_GRU_RH;
    const uint64_t n = gi.n, gs = gi.gate_stride;
    if (lstm && (uint64_t)gi.state_c < (uint64_t)gi.state_h + n && (uint64_t)gi.state_h < (uint64_t)gi.state_c + n)
        return VF_FIELD(vf_insn_rnn_gates_t, state_c);

    const uint32_t g0 = rh ? VF_RNN_GATE_R : 0;
    const uint32_t ng = lstm ? VF_RNN_LSTM_GATES : rh ? 1 : VF_RNN_GRU_GATES;
    uint64_t s = 0;
    if (!vr_gate_range(gi.acc_x, g0, ng, gs, n, VF_RNN_ACC_WORDS, &s))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(s, VF_RNN_ACC_WORDS));
    if (!vr_gate_range(gi.acc_h, g0, ng, gs, n, VF_RNN_ACC_WORDS, &s))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(s, VF_RNN_ACC_WORDS));
    uint64_t spx = 0, sph = 0;
    if (!vr_gate_range(gi.param_x, g0, ng, gs, n, VF_RNN_PARAM_ENTRIES, &spx))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(spx, VF_RNN_PARAM_ENTRIES));
    if (!vr_gate_range(gi.param_h, g0, ng, gs, n, VF_RNN_PARAM_ENTRIES, &sph))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(sph, VF_RNN_PARAM_ENTRIES));
    if (lstm && !vf_fits(gi.state_c, n, VF_RNN_STATE_WORDS))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(gi.state_c, VF_RNN_STATE_WORDS));
    if (!vf_fits(gi.state_h, n, VF_RNN_STATE_WORDS))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(gi.state_h, VF_RNN_STATE_WORDS));
    if (!vf_fits(gi.out_addr, n, VF_RNN_VBUF_BYTES))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(gi.out_addr, VF_RNN_VBUF_BYTES));
    if (!vf_fits(gi.sig_addr, VR_TABLE_WORDS, VF_RNN_ACT_WORDS))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(gi.sig_addr, VF_RNN_ACT_WORDS));
    if (!rh && !vf_fits(gi.tanh_addr, VR_TABLE_WORDS, VF_RNN_ACT_WORDS))
        return vf_fail(VF_FAULT_BUFFER, vf_first_out(gi.tanh_addr, VF_RNN_ACT_WORDS));
    if (!vr_shifts_ok(b->param, spx, ng, gs, n))
        return VF_FIELD(vf_insn_rnn_gates_t, param_x);
    if (!vr_shifts_ok(b->param, sph, ng, gs, n))
        return VF_FIELD(vf_insn_rnn_gates_t, param_h);

    vr_gates_t g;
    g.cell = gi.cell;
    g.gs = gs;
    g.ax = b->acc + gi.acc_x;
    g.ah = b->acc + gi.acc_h;
    g.px = b->param + (uint64_t)gi.param_x * VF_PARAM_ENTRY_WORDS;
    g.ph = b->param + (uint64_t)gi.param_h * VF_PARAM_ENTRY_WORDS;
    g.c = lstm ? b->state + gi.state_c : NULL;
    g.h = b->state + gi.state_h;
    g.out = b->vbuf + gi.out_addr;
    g.sig = b->act + gi.sig_addr; /* lane 0's copy; vr_gate_unit picks the lane's */
    g.tanh_t = b->act + (rh ? 0 : gi.tanh_addr);
    g.mult = gi.out_mult;
    g.shift = gi.out_shift;
    g.zp = gi.out_zp;
    const uint64_t beats = vf_lane_loop<VF_RNN_LANES>(n, [&](uint64_t j) { vr_gate_unit(g, j); });
    return vf_done(beats, 0, 0);
}

/* The COMPUTE unit: RNN_MATVEC and RNN_GATES. */
vf_exec_t vr_compute_unit(const vf_rnn_insn_t &insn, vf_rnn_buffers_t *b)
{
    if (insn.head.opcode == VF_RNN_OP_MATVEC)
        return vr_matvec(vf_format<vf_insn_rnn_matvec_t>(insn), b);
    return vr_gates(vf_format<vf_insn_rnn_gates_t>(insn), b);
}

/* ========================================================================== */
/* The RNN kind of core (its units), for vf_unit_step                          */
/* ========================================================================== */

struct vr_kind {
    typedef vf_rnn_buffers_t buffers_t;
    typedef vf_rnn_insn_t insn_t;
    enum { FRAME_INSNS = VF_RNN_FRAME_INSNS };

    static bool buffers_ok(const vf_rnn_buffers_t *b)
    {
        return b->wbuf != NULL && b->vbuf != NULL && b->acc != NULL && b->param != NULL && b->state != NULL &&
               b->act != NULL;
    }

    static bool opcode_ok(uint32_t opcode)
    {
        return opcode == VF_OP_NOP || vf_is_marker(opcode) || (opcode >= VF_RNN_OP_FIRST && opcode < VF_RNN_OP_LIMIT);
    }

    static uint32_t unit_of(uint32_t opcode)
    {
        switch (opcode) {
        case VF_RNN_OP_LOAD: return VF_UNIT_LOAD;
        case VF_RNN_OP_MATVEC:
        case VF_RNN_OP_GATES: return VF_UNIT_COMPUTE;
        case VF_RNN_OP_SAVE: return VF_UNIT_SAVE;
        default: return VF_UNIT_NONE;
        }
    }

    static vf_exec_t execute(uint32_t unit, const vf_ddr_t &ddr, uint64_t win, uint64_t seg_limit,
                             const vf_rnn_insn_t &insn, vf_rnn_buffers_t *b)
    {
        if (unit == VF_UNIT_COMPUTE)
            return vr_compute_unit(insn, b);
        return vr_mem(ddr, win, seg_limit, vf_format<vf_insn_rnn_mem_t>(insn), b, unit == VF_UNIT_SAVE);
    }
};

} /* namespace */

void vf_rnn_core_geometry(vf_rnn_geometry_t *geometry)
{
    if (geometry == NULL)
        return;
    geometry->rows = VF_RNN_ROWS;
    geometry->cols = VF_RNN_COLS;
    geometry->lanes = VF_RNN_LANES;
    geometry->axi_bytes = VF_AXI_BYTES;
    geometry->wbuf_bytes = VF_RNN_WBUF_BYTES;
    geometry->vbuf_bytes = VF_RNN_VBUF_BYTES;
    geometry->acc_words = VF_RNN_ACC_WORDS;
    geometry->param_entries = VF_RNN_PARAM_ENTRIES;
    geometry->state_words = VF_RNN_STATE_WORDS;
    geometry->act_words = VF_RNN_ACT_WORDS;
    geometry->act_segments = VF_RNN_ACT_SEGMENTS;
    geometry->act_step_log2 = VF_RNN_ACT_STEP_LOG2;
    geometry->act_buffer_words = (uint32_t)VF_RNN_ACT_BUFFER_WORDS;
}

void vf_rnn_activation(const int32_t *table, const int32_t *pre, int32_t *out, uint32_t n)
{
    if (table == NULL || pre == NULL || out == NULL)
        return;
ACT_EVAL:
    for (uint32_t i = 0; i < n; ++i)
        out[i] = (int32_t)vr_act(table, vr_clamp_pre(pre[i]));
}

uint32_t vf_rnn_core_step(int8_t *seg, uint32_t seg_limit, uint32_t insn_offset, uint32_t insn_count,
                          vf_rnn_buffers_t *buffers, vf_rnn_state_t *state, vf_rnn_counters_t *counters,
                          uint32_t *iters)
{
    return vf_unit_step<vr_kind>(vf_ddr_window(seg, seg_limit), 0, seg_limit, insn_offset, insn_count, buffers, state,
                                 counters, iters);
}

uint32_t vf_rnn_core_step_ddr(const vf_ddr_t &ddr, uint64_t seg_win, uint32_t seg_limit, uint32_t insn_offset,
                              uint32_t insn_count, vf_rnn_buffers_t *buffers, vf_rnn_state_t *state,
                              vf_rnn_counters_t *counters, uint32_t *iters)
{
    return vf_unit_step<vr_kind>(ddr, seg_win, seg_limit, insn_offset, insn_count, buffers, state, counters, iters);
}
