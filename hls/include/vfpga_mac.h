/*
 * Two int8 products per DSP slice.
 *
 * A DSP48E2 multiplies a 27-bit by an 18-bit signed operand. Two int8
 * weights w_hi and w_lo that multiply the same int8 activation a fit its
 * 27-bit port as w_hi * 2^18 + w_lo, and the 45-bit product holds both
 * results apart:
 *
 *   p  = a * (w_hi * 2^18 + w_lo) = a * w_hi * 2^18 + a * w_lo
 *   lo = p's low 18 bits, read as signed  = a * w_lo   (|a * w_lo| <= 2^14)
 *   hi = (p - lo) / 2^18                  = a * w_hi
 *
 * exactly, for every int8 a, w_hi, w_lo (host_tests/hls/test_mac_packing.py
 * checks all 2^24 triples). Written as one 27 x 8 multiply, Vitis HLS maps it
 * onto one DSP48E2, so a MAC array whose lanes share their activation
 * operand in pairs (the CONV beat's output lanes, the RNN MATVEC beat's rows)
 * needs half as many DSP slices; the extraction is a few LUTs per product.
 * VF_MACS_PER_DSP is what the resource estimate (overlay/resources.py)
 * counts for such an array.
 */
#ifndef VFPGA_MAC_H
#define VFPGA_MAC_H

#include <stdint.h>

#define VF_MACS_PER_DSP 2
#define VF_MAC_PACK_SHIFT 18 /* the 18-bit field that holds a * w_lo */

static inline void vf_mul2(int32_t a, int32_t w_hi, int32_t w_lo, int32_t *p_hi, int32_t *p_lo)
{
    const int32_t packed = w_hi * (1 << VF_MAC_PACK_SHIFT) + w_lo; /* 27-bit signed operand */
    const int64_t p = (int64_t)packed * a;
    const int32_t field = (int32_t)(p & ((1 << VF_MAC_PACK_SHIFT) - 1));
    const int32_t lo = field >= (1 << (VF_MAC_PACK_SHIFT - 1)) ? field - (1 << VF_MAC_PACK_SHIFT) : field;
    *p_lo = lo;
    *p_hi = (int32_t)((p - lo) / (1 << VF_MAC_PACK_SHIFT)); /* exact: p - lo is a multiple */
}

#endif /* VFPGA_MAC_H */
