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
 *    units and the instruction fetch decode the bank of each access
 *    (vf_ddr_read / vf_ddr_write at the segment's window offset); the
 *    vectorised C-sim bodies use the segment's pointer (vf_ddr_segment).
 *    A segment never crosses a bank boundary: the dispatcher refuses such a
 *    segment at enable (VF_DFAULT_WINDOW).
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

#if !defined(VF_DDR_BANKS) || !defined(VF_DDR_BANK_STRIDE)
#error "board macros missing: compile with the flags printed by python3 overlay/config.py BOARD"
#endif
static_assert(VF_DDR_BANKS >= 1 && VF_DDR_BANKS <= 4, "the dispatcher top declares 1..4 bank ports");

typedef struct {
    int8_t *port[VF_DDR_BANKS]; /* bank b's m_axi port, indexed by window offset */
    uint64_t bytes;             /* the window's size (mem_bytes); 0: no window */
} vf_ddr_t;

/* The same window through every port (the C API: emulator, simulator). */
static inline vf_ddr_t vf_ddr_window(int8_t *mem, uint64_t mem_bytes)
{
    vf_ddr_t d;
DDR_WINDOW:
    for (uint32_t b = 0; b < VF_DDR_BANKS; ++b)
        d.port[b] = mem;
    d.bytes = mem != 0 ? mem_bytes : 0;
    return d;
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

/* A frame's segment through the port of its bank (seg_win: the segment's
 * window offset; the segment lies inside one bank). */
static inline int8_t *vf_ddr_segment(const vf_ddr_t &d, uint64_t seg_win)
{
    return d.port[vf_ddr_bank(seg_win)] + seg_win;
}

#endif /* VFPGA_DDR_H */
