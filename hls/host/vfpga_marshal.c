#include "vfpga_marshal.h"

#include <string.h>

/* 1.5 * 2^23: v + M - M rounds v to an integer, ties to even, for |v| <= 2^22
 * (the sum's last mantissa bit is the unit), as rintf does in the default
 * rounding mode, and vectorises on every target. */
#define VF_ROUND_MAGIC 12582912.0f

static inline int8_t quantize_one(float x, float scale, float zero_point)
{
    float v = x / scale;
    /* clamped before rounding: past +-256 every zero point saturates alike;
     * written so that NaN (every comparison false) lands on -256 */
    v = v > -256.0f ? v : -256.0f;
    v = v < 256.0f ? v : 256.0f;
    v = (v + VF_ROUND_MAGIC) - VF_ROUND_MAGIC;
    v += zero_point;
    v = v > -128.0f ? v : -128.0f;
    v = v < 127.0f ? v : 127.0f;
    return (int8_t)(int32_t)v;
}

#define VF_BLOCK 256 /* pixels quantized per channel before they are interleaved */

void vf_quantize_chw_to_hwc(const float *x, int8_t *q, size_t channels, size_t pixels, float scale,
                            float zero_point)
{
#if defined(__AVX2__) || defined(__ARM_NEON)
    /* an RGB image: the three planes read and interleaved in one loop, which
     * the compiler vectorises with shuffles (AVX2) or st3 (NEON); without
     * either (x86-64 baseline) that loop stays scalar and the blocks below win */
    if (channels == 3) {
        const float *r = x, *g = x + pixels, *b = x + 2 * pixels;
        for (size_t p = 0; p < pixels; ++p) {
            q[3 * p] = quantize_one(r[p], scale, zero_point);
            q[3 * p + 1] = quantize_one(g[p], scale, zero_point);
            q[3 * p + 2] = quantize_one(b[p], scale, zero_point);
        }
        return;
    }
#endif
    int8_t block[VF_BLOCK];
    for (size_t c = 0; c < channels; ++c) {
        const float *row = x + c * pixels;
        for (size_t p0 = 0; p0 < pixels; p0 += VF_BLOCK) {
            size_t n = pixels - p0 < VF_BLOCK ? pixels - p0 : VF_BLOCK;
            for (size_t i = 0; i < n; ++i) /* contiguous: vectorised */
                block[i] = quantize_one(row[p0 + i], scale, zero_point);
            int8_t *out = q + p0 * channels + c;
            for (size_t i = 0; i < n; ++i)
                out[i * channels] = block[i];
        }
    }
}

void vf_copy_blocks(uintptr_t src, size_t src_stride, uintptr_t dst, size_t dst_stride, size_t block,
                    size_t count)
{
    const uint8_t *s = (const uint8_t *)src;
    uint8_t *d = (uint8_t *)dst;
    if (block == 64) { /* a bus word: a fixed-size copy the compiler inlines as vector moves */
        for (size_t i = 0; i < count; ++i)
            memcpy(d + i * dst_stride, s + i * src_stride, 64);
        return;
    }
    for (size_t i = 0; i < count; ++i)
        memcpy(d + i * dst_stride, s + i * src_stride, block);
}
