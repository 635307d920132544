/*
 * Device memory as the dispatcher top sees it: one m_axi port per DDR bank
 * (C++ only; needs the board macros).
 *
 * The window is the board's banks at their physical offsets from
 * ddr.base_address: bank b holds window offsets [b * VF_DDR_BANK_STRIDE,
 * b * VF_DDR_BANK_STRIDE + bank_bytes). The top (hls/dispatcher_top.cpp)
 * declares one m_axi master per bank, each in its own bundle (bank0 ..
 * bank<VF_DDR_BANKS-1>) and each linked to its bank alone (v++
 * --connectivity.sp, overlay/board_build.py). Every port's base register
 * holds the window's base, so a port is indexed by window offset; port b
 * only ever carries offsets of bank b:
 *  - the dispatcher's own accesses (request ring entries, completion
 *    records, dispatch entries) decode the bank of each access and issue it
 *    on that bank's port (vf_ddr_read / vf_ddr_write: one statically bound
 *    access per port, selected by the bank);
 *  - a frame's core reaches its tenant's segment the same way: the literal
 *    units, the instruction fetch and the vectorised C-sim bodies address
 *    it by segment offset (vf_seg_*), which becomes a window offset on its
 *    bank's port (vf_ddr_read / vf_ddr_write). A contiguous segment never
 *    crosses a bank boundary: the dispatcher refuses such a segment at
 *    enable (VF_DFAULT_WINDOW).
 *  - a striped segment (VF_TENANT_STRIPED, boards whose config stripes
 *    segments over VF_SEG_PARTS = S > 1 banks: u200, u200_bigcore) is S
 *    equal parts at the same offset in banks 0 .. S-1; segment offset a
 *    lies in part (a / W) % S at part offset (a / (W * S)) * W + a % W,
 *    W = VF_DDR_WORD (one bus word of a port): vf_seg_window, the one
 *    definition (Python's copy: overlay/config.py Stripe, tested against
 *    it). Each part lies inside its own bank (vf_seg_first_out_striped,
 *    checked at enable). A core of VF_CORE_PORTS = S ports (the big core)
 *    reads or writes one word on each port in the same cycle per beat
 *    (VF_AXI_BYTES = S * W): the S banks' bandwidth for one core. A core of
 *    one port (the pool's) moves its beat's word on the port of that word's
 *    bank, so its consecutive words go to the S banks in turn: the frames
 *    of every core share the S banks' bandwidth, whichever cores they run on.
 * A bank's port is therefore shared by every core whose frame in flight
 * holds a segment in that bank, and its bandwidth is divided between them:
 * what the pool timeline charges (vfpga.runtime.hw.timeline).
 *
 * In the C-simulation, the emulator and the timing simulator all ports are
 * the same window pointer (the ports' base registers are equal), so the
 * decode changes no byte; it states which port carries each access.
 */
#ifndef VFPGA_DDR_H
#define VFPGA_DDR_H

#include <stdint.h>
#include <string.h>

#include "vfpga_hls.h"

#if !defined(VF_DDR_BANKS) || !defined(VF_DDR_BANK_STRIDE) || !defined(VF_CORE_PORTS) || \
    !defined(VF_SEG_PARTS) || !defined(VF_DDR_PORT_BITS) || !defined(VF_AXI_BYTES)
#error "board macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif
static_assert(VF_DDR_BANKS >= 1 && VF_DDR_BANKS <= 4, "the dispatcher top declares 1..4 bank ports");

/* One bus word of a bank port: a striped segment's interleave unit. */
#define VF_DDR_WORD (VF_DDR_PORT_BITS / 8)
static_assert(VF_CORE_PORTS >= 1 && VF_CORE_PORTS <= VF_DDR_BANKS, "a core's ports are bank ports");
static_assert(VF_AXI_BYTES == VF_CORE_PORTS * VF_DDR_WORD, "a core's beat is one bus word per port");
static_assert(VF_SEG_PARTS >= 1 && VF_SEG_PARTS <= VF_DDR_BANKS, "a striped segment's parts are in distinct banks");
static_assert(VF_CORE_PORTS == 1 || VF_CORE_PORTS == VF_SEG_PARTS, "a core of several ports moves one word of each part per beat");

typedef struct {
    int8_t *port[VF_DDR_BANKS]; /* bank b's m_axi port, indexed by window offset */
    uint64_t bytes;             /* the window's size (mem_bytes); 0: no window */
    uint32_t striped;           /* the segment reached through it is striped (only when VF_SEG_PARTS > 1) */
} vf_ddr_t;

/* The same window through every port (the C API: emulator, simulator). */
static inline vf_ddr_t vf_ddr_window(int8_t *mem, uint64_t mem_bytes)
{
    vf_ddr_t d;
DDR_WINDOW:
    for (uint32_t b = 0; b < VF_DDR_BANKS; ++b)
        d.port[b] = mem;
    d.bytes = mem != 0 ? mem_bytes : 0;
    d.striped = 0;
    return d;
}

/* The window for a segment that is striped or not (VF_TENANT_STRIPED). */
static inline vf_ddr_t vf_ddr_for(const vf_ddr_t &d, uint32_t striped)
{
    vf_ddr_t s = d;
    s.striped = VF_SEG_PARTS > 1 && striped != 0;
    return s;
}

/* The bank holding window offset `at` (offsets past the last bank's stride
 * belong to the last bank; the window check rejects them anyway). */
static inline uint32_t vf_ddr_bank(uint64_t at)
{
    const uint64_t b = at / (uint64_t)VF_DDR_BANK_STRIDE;
    return b < VF_DDR_BANKS ? (uint32_t)b : VF_DDR_BANKS - 1u;
}

/* n bytes at window offset `at` (inside one bank) through that bank's port. */
static inline void vf_ddr_read(const vf_ddr_t &d, uint64_t at, void *dst, uint32_t n)
{
    const uint32_t bank = vf_ddr_bank(at);
DDR_READ_PORT:
    for (uint32_t b = 0; b < VF_DDR_BANKS; ++b) {
#pragma HLS UNROLL
        if (b == bank)
            memcpy(dst, d.port[b] + at, n);
    }
}

static inline void vf_ddr_write(const vf_ddr_t &d, uint64_t at, const void *src, uint32_t n)
{
    const uint32_t bank = vf_ddr_bank(at);
DDR_WRITE_PORT:
    for (uint32_t b = 0; b < VF_DDR_BANKS; ++b) {
#pragma HLS UNROLL
        if (b == bank)
            memcpy(d.port[b] + at, src, n);
    }
}


/* ---- a segment by its offsets ------------------------------------------------
 * seg_win: the segment's window offset (a striped one's first part's, in
 * bank 0). Every access of a frame, of the instruction fetch and of the
 * dispatcher's ring, record and program reads goes through these. */

static inline uint64_t vf_ddr_min(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t vf_ddr_max(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* The window offset of segment offset a: the stripe mapping (part
 * (a / W) % P in bank (a / W) % P at part offset (a / (W * P)) * W + a % W),
 * or seg_win + a for a contiguous segment. */
static inline uint64_t vf_seg_window(const vf_ddr_t &d, uint64_t seg_win, uint64_t a)
{
#if VF_SEG_PARTS > 1
    if (d.striped) {
        const uint64_t w = a / VF_DDR_WORD;
        return (w % VF_SEG_PARTS) * (uint64_t)VF_DDR_BANK_STRIDE + seg_win + (w / VF_SEG_PARTS) * VF_DDR_WORD +
               a % VF_DDR_WORD;
    }
#endif
    return seg_win + a;
}

/* n bytes at segment offset a, any length: word by word through each
 * word's bank port when striped, else one access on the segment's bank. */
static inline void vf_seg_read(const vf_ddr_t &d, uint64_t seg_win, uint64_t a, void *dst, uint64_t n)
{
#if VF_SEG_PARTS > 1
    if (d.striped) {
        int8_t *o = (int8_t *)dst;
    SEG_READ_WORDS:
        for (uint64_t k = 0; k < n;) {
            const uint64_t m = vf_ddr_min(VF_DDR_WORD - (a + k) % VF_DDR_WORD, n - k);
#ifndef VF_HLS_LITERAL
            if (m == VF_DDR_WORD) { /* a whole word: a fixed-size copy, not a call or a string move */
                const uint64_t at = vf_seg_window(d, seg_win, a + k);
                memcpy(o + k, d.port[vf_ddr_bank(at)] + at, VF_DDR_WORD);
                k += m;
                continue;
            }
#endif
            vf_ddr_read(d, vf_seg_window(d, seg_win, a + k), o + k, (uint32_t)m);
            k += m;
        }
        return;
    }
#endif
    vf_ddr_read(d, seg_win + a, dst, (uint32_t)n);
}

static inline void vf_seg_write(const vf_ddr_t &d, uint64_t seg_win, uint64_t a, const void *src, uint64_t n)
{
#if VF_SEG_PARTS > 1
    if (d.striped) {
        const int8_t *i = (const int8_t *)src;
    SEG_WRITE_WORDS:
        for (uint64_t k = 0; k < n;) {
            const uint64_t m = vf_ddr_min(VF_DDR_WORD - (a + k) % VF_DDR_WORD, n - k);
#ifndef VF_HLS_LITERAL
            if (m == VF_DDR_WORD) { /* as in vf_seg_read */
                const uint64_t at = vf_seg_window(d, seg_win, a + k);
                memcpy(d.port[vf_ddr_bank(at)] + at, i + k, VF_DDR_WORD);
                k += m;
                continue;
            }
#endif
            vf_ddr_write(d, vf_seg_window(d, seg_win, a + k), i + k, (uint32_t)m);
            k += m;
        }
        return;
    }
#endif
    vf_ddr_write(d, seg_win + a, src, (uint32_t)n);
}

/* One beat of a core's LOAD unit: n <= VF_AXI_BYTES bytes at segment
 * offset a. Striped, the P ports move their words of the beat in parallel:
 * the beat spans at most P + 1 bus words, so port p reads one word, or two
 * adjacent words of its bank (the first and the last of an unaligned beat),
 * each port statically bound to its bank. Contiguous: the whole beat on
 * the segment's bank port. */
static inline void vf_seg_read_beat(const vf_ddr_t &d, uint64_t seg_win, uint64_t a, int8_t *dst, uint32_t n)
{
#if VF_CORE_PORTS > 1
    if (d.striped) {
        const uint64_t w0 = a / VF_DDR_WORD;
    SEG_READ_PORT:
        for (uint32_t p = 0; p < VF_CORE_PORTS; ++p) {
#pragma HLS UNROLL
            const uint64_t w = w0 + (p + VF_CORE_PORTS - w0 % VF_CORE_PORTS) % VF_CORE_PORTS; /* port p's first */
        SEG_READ_PORT_WORD:
            for (uint32_t k = 0; k < 2; ++k) {
#pragma HLS UNROLL
                const uint64_t lo = vf_ddr_max(a, (w + k * VF_CORE_PORTS) * VF_DDR_WORD);
                const uint64_t hi = vf_ddr_min(a + n, (w + k * VF_CORE_PORTS + 1) * VF_DDR_WORD);
                if (lo < hi)
                    memcpy(dst + (lo - a), d.port[p] + vf_seg_window(d, seg_win, lo), hi - lo);
            }
        }
        return;
    }
#elif VF_SEG_PARTS > 1
    if (d.striped) {
        /* a one-port core: the beat's word (two when unaligned), each on the
         * port of its part's bank */
        const uint64_t w0 = a / VF_DDR_WORD;
    SEG_READ_BEAT_WORD:
        for (uint32_t k = 0; k < 2; ++k) {
#pragma HLS UNROLL
            const uint64_t lo = vf_ddr_max(a, (w0 + k) * VF_DDR_WORD);
            const uint64_t hi = vf_ddr_min(a + n, (w0 + k + 1) * VF_DDR_WORD);
            if (lo < hi)
                vf_ddr_read(d, vf_seg_window(d, seg_win, lo), dst + (lo - a), (uint32_t)(hi - lo));
        }
        return;
    }
#endif
    vf_ddr_read(d, seg_win + a, dst, n);
}

/* One beat of a core's SAVE unit: the write side of vf_seg_read_beat. */
static inline void vf_seg_write_beat(const vf_ddr_t &d, uint64_t seg_win, uint64_t a, const int8_t *src, uint32_t n)
{
#if VF_CORE_PORTS > 1
    if (d.striped) {
        const uint64_t w0 = a / VF_DDR_WORD;
    SEG_WRITE_PORT:
        for (uint32_t p = 0; p < VF_CORE_PORTS; ++p) {
#pragma HLS UNROLL
            const uint64_t w = w0 + (p + VF_CORE_PORTS - w0 % VF_CORE_PORTS) % VF_CORE_PORTS;
        SEG_WRITE_PORT_WORD:
            for (uint32_t k = 0; k < 2; ++k) {
#pragma HLS UNROLL
                const uint64_t lo = vf_ddr_max(a, (w + k * VF_CORE_PORTS) * VF_DDR_WORD);
                const uint64_t hi = vf_ddr_min(a + n, (w + k * VF_CORE_PORTS + 1) * VF_DDR_WORD);
                if (lo < hi)
                    memcpy(d.port[p] + vf_seg_window(d, seg_win, lo), src + (lo - a), hi - lo);
            }
        }
        return;
    }
#elif VF_SEG_PARTS > 1
    if (d.striped) {
        const uint64_t w0 = a / VF_DDR_WORD;
    SEG_WRITE_BEAT_WORD:
        for (uint32_t k = 0; k < 2; ++k) {
#pragma HLS UNROLL
            const uint64_t lo = vf_ddr_max(a, (w0 + k) * VF_DDR_WORD);
            const uint64_t hi = vf_ddr_min(a + n, (w0 + k + 1) * VF_DDR_WORD);
            if (lo < hi)
                vf_ddr_write(d, vf_seg_window(d, seg_win, lo), src + (lo - a), (uint32_t)(hi - lo));
        }
        return;
    }
#endif
    vf_ddr_write(d, seg_win + a, src, n);
}

/* A striped segment of `limit` bytes at seg_win: the first segment offset
 * whose byte is not inside the window and its part's bank (each part ends
 * before the next bank's stride; the last bank ends with the window), or
 * limit when every byte is. */
static inline uint64_t vf_seg_first_out_striped(const vf_ddr_t &d, uint64_t seg_win, uint64_t limit)
{
    uint64_t first = limit;
SEG_PARTS:
    for (uint32_t p = 0; p < VF_SEG_PARTS; ++p) {
        const uint64_t start = (uint64_t)p * VF_DDR_BANK_STRIDE + seg_win;
        const uint64_t end =
            p + 1u < VF_DDR_BANKS ? vf_ddr_min((uint64_t)(p + 1u) * VF_DDR_BANK_STRIDE, d.bytes) : d.bytes;
        const uint64_t room = end > start ? end - start : 0; /* part p's bytes that can be reached */
        first = vf_ddr_min(first, (room / VF_DDR_WORD) * VF_DDR_WORD * VF_SEG_PARTS + (uint64_t)p * VF_DDR_WORD +
                                      room % VF_DDR_WORD);
    }
    return first;
}

/* The bytes a segment of `limit` bytes occupies in each of its banks from
 * seg_win on: a striped one's parts (the first is the largest), else all. */
static inline uint64_t vf_seg_span(const vf_ddr_t &d, uint64_t limit)
{
#if VF_SEG_PARTS > 1
    if (d.striped)
        return (limit + VF_SEG_PARTS * VF_DDR_WORD - 1) / (VF_SEG_PARTS * VF_DDR_WORD) * VF_DDR_WORD;
#endif
    return limit;
}

#endif /* VFPGA_DDR_H */
