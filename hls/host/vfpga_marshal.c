#include "vfpga_marshal.h"

#include <math.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
/* The RGB quantization and the fold as byte permutations: compiled for
 * AVX-512 VBMI and for AVX2 (AMD Zen 3 has no AVX-512) in every build, the
 * portable one too, each taken only on a CPU that has it (VBMI first); on
 * other targets the loops. */
#define VF_X86 1
#define VF_TARGET_VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))
#define VF_TARGET_AVX2 __attribute__((target("avx2")))

static int vf_vbmi, vf_avx2; /* what the CPU has: set once at load, read by every call */

__attribute__((constructor)) static void vf_cpu_init(void)
{
    __builtin_cpu_init();
    vf_vbmi = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw");
    vf_avx2 = __builtin_cpu_supports("avx2");
}
#endif

/* 1.5 * 2^23: v + M - M rounds v to an integer, ties to even, for |v| <= 2^22
 * (the sum's last mantissa bit is the unit), as rintf does in the default
 * rounding mode, and vectorises on every target. */
#define VF_ROUND_MAGIC 12582912.0f

#if defined(__GNUC__)
#define VF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define VF_ALWAYS_INLINE inline
#endif

static inline int8_t quantize_one(float x, float scale, int32_t zero_point)
{
    float v = x / scale;
    /* clamped before rounding: past +-256 every zero point saturates alike;
     * written so that NaN (every comparison false) lands on -256 */
    v = v > -256.0f ? v : -256.0f;
    v = v < 256.0f ? v : 256.0f;
    v = (v + VF_ROUND_MAGIC) - VF_ROUND_MAGIC;
    /* an integer in [-256, 256] now: the zero point added and the result
     * saturated in int32, exactly as in float32, in fewer vector steps */
    int32_t q = (int32_t)v + zero_point;
    q = q > -128 ? q : -128;
    q = q < 127 ? q : 127;
    return (int8_t)q;
}

#define VF_BLOCK 256 /* pixels quantized per channel before they are interleaved */

#ifdef VF_X86
/* 64 bytes of interleaved RGB (byte 3p + ch = channel ch of pixel p) from
 * each 64-byte plane: where output chunk k's bytes come from, R and G
 * through one vpermt2b (R: 0..63, G: 64..127), then B by a masked vpermb. */
typedef struct {
    uint8_t rg[3][64], b[3][64];
    __mmask64 b_lanes[3];
} rgb_interleave_t;

static rgb_interleave_t rgb_interleave;

__attribute__((constructor)) static void rgb_interleave_init(void)
{
    for (size_t o = 0; o < 192; ++o) {
        const size_t k = o / 64, l = o % 64, pixel = o / 3, ch = o % 3;
        rgb_interleave.rg[k][l] = (uint8_t)(ch == 1 ? 64 + pixel : pixel); /* B's lanes: ignored */
        rgb_interleave.b[k][l] = (uint8_t)pixel;
        if (ch == 2)
            rgb_interleave.b_lanes[k] |= (__mmask64)1 << l;
    }
}

/* 16 floats quantized to 16 int8, as quantize_one does each (the division
 * in float32, the clamp to +-256 with NaN on -256: max takes its second
 * operand where the first is NaN; vcvtps2dq rounds in the current rounding
 * mode, as the magic sum does; vpmovsdb saturates as the int32 clamp). */
VF_TARGET_VBMI static inline __m128i quantize16(const float *x, __m512 scale, __m512i zero_point)
{
    __m512 v = _mm512_div_ps(_mm512_loadu_ps(x), scale);
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-256.0f)), _mm512_set1_ps(256.0f));
    return _mm512_cvtsepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(v), zero_point));
}

/* Where a product by the reciprocal lies farther than this from every
 * half-integer, it rounds as the quotient does (quantize16_product). */
#define VF_NEAR_HALF 0x1p-13f

/* quantize16 with x * inv (inv = RN(1/scale), a normal float) for x /
 * scale, and in `near` the lanes where that may round otherwise. Why the
 * others are exact (round to nearest, u = 2^-24): v = RN(x * inv) is within
 * |z| (2u + u^2) of z = x / scale, and RN(z) within |z| u, so v and RN(z)
 * are less than 5.4e-5 < VF_NEAR_HALF apart while |z| <= 300: clamped alike
 * (the clamp moves neither apart), no half-integer lies between them unless
 * v is within VF_NEAR_HALF of one (a subnormal product is within 2^-150:
 * both are 0). Past 300 both clamp to the same end; NaN, +-inf and an
 * overflowing product clamp as the quotient does. */
VF_TARGET_VBMI static inline __m128i quantize16_product(const float *x, __m512 inv, __m512i zero_point,
                                                        __mmask16 *near)
{
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x), inv);
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-256.0f)), _mm512_set1_ps(256.0f));
    const __m512 w = _mm512_roundscale_ps(v, _MM_FROUND_CUR_DIRECTION);
    *near |= _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, w)), _mm512_set1_ps(0.5f - VF_NEAR_HALF),
                                _CMP_GE_OQ);
    return _mm512_cvtsepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(w), zero_point));
}

VF_TARGET_VBMI static inline __m512i join4(__m128i a, __m128i b, __m128i c, __m128i d)
{
    const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
    const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(c), d, 1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

VF_TARGET_VBMI static inline __m512i quantize64(const float *x, __m512 scale, __m512i zero_point)
{
    return join4(quantize16(x, scale, zero_point), quantize16(x + 16, scale, zero_point),
                 quantize16(x + 32, scale, zero_point), quantize16(x + 48, scale, zero_point));
}

VF_TARGET_VBMI static inline __m512i quantize64_product(const float *x, __m512 inv, __m512i zero_point,
                                                        __mmask16 *near)
{
    return join4(quantize16_product(x, inv, zero_point, near), quantize16_product(x + 16, inv, zero_point, near),
                 quantize16_product(x + 32, inv, zero_point, near),
                 quantize16_product(x + 48, inv, zero_point, near));
}

/* An RGB image, 64 pixels at a time: each plane's 64 int8, then the three
 * interleaved by permutations; the last pixels (under 64) as quantize_one. */
VF_TARGET_VBMI static void quantize_rgb_vbmi(const float *x, int8_t *q, size_t pixels, float scale,
                                             int32_t zero_point)
{
    const __m512 s = _mm512_set1_ps(scale);
    const __m512i zp = _mm512_set1_epi32(zero_point);
    const float *r = x, *g = x + pixels, *b = x + 2 * pixels;
    size_t p = 0;
    const float reciprocal = 1.0f / scale;
    const int product = isnormal(reciprocal); /* quantize16_product's condition */
    const __m512 inv = _mm512_set1_ps(reciprocal);
    for (; p + 64 <= pixels; p += 64) {
        __m512i R, G, B;
        __mmask16 near = 0;
        if (product) {
            R = quantize64_product(r + p, inv, zp, &near);
            G = quantize64_product(g + p, inv, zp, &near);
            B = quantize64_product(b + p, inv, zp, &near);
        }
        if (!product || near) { /* a product near a half-integer: these 64 pixels by division */
            R = quantize64(r + p, s, zp);
            G = quantize64(g + p, s, zp);
            B = quantize64(b + p, s, zp);
        }
        for (size_t k = 0; k < 3; ++k) {
            const __m512i rg = _mm512_permutex2var_epi8(R, _mm512_loadu_si512(rgb_interleave.rg[k]), G);
            const __m512i v = _mm512_mask_permutexvar_epi8(rg, rgb_interleave.b_lanes[k],
                                                           _mm512_loadu_si512(rgb_interleave.b[k]), B);
            _mm512_storeu_si512((void *)(q + 3 * p + 64 * k), v);
        }
    }
    for (; p < pixels; ++p) {
        q[3 * p] = quantize_one(r[p], scale, zero_point);
        q[3 * p + 1] = quantize_one(g[p], scale, zero_point);
        q[3 * p + 2] = quantize_one(b[p], scale, zero_point);
    }
}

/* AVX2 (no VBMI): quantize_rgb_vbmi's steps, 8 values per instruction,
 * the planes interleaved by in-lane shuffles and blends. After pack32, a lane holds 16 pixels'
 * bytes; vpshufb puts pixel p of plane ch at byte (3p + ch) % 16 of its lane
 * (3 is odd: one pixel per byte), so 16 output bytes at 16m of the 48 of a
 * lane's pixels are a blend of the three planes, by (16m + j) % 3. */
typedef struct {
    uint8_t plane[3][32]; /* vpshufb of plane ch, the same in both lanes */
    uint8_t g[3][32], b[3][32]; /* output bytes 16m .. 16m + 15 of a lane's 48: G's and B's (high bit) */
} rgb_shuffle_t;

static rgb_shuffle_t rgb_shuffle;

/* Where pack32 leaves value v (0..15) of a lane: its 4-byte groups in the order 0, 2, 1, 3. */
static size_t packed_at(size_t v)
{
    return (v & 3) | (v & 4) << 1 | (v & 8) >> 1;
}

__attribute__((constructor)) static void rgb_shuffle_init(void)
{
    for (size_t j = 0; j < 32; ++j) {
        for (size_t ch = 0; ch < 3; ++ch) {
            const size_t pixel = (j % 16 + 16 - ch) * 11 % 16; /* 3 * pixel + ch = j (mod 16): 11 = 1/3 mod 16 */
            rgb_shuffle.plane[ch][j] = (uint8_t)packed_at(pixel);
        }
        for (size_t m = 0; m < 3; ++m) {
            const size_t ch = (16 * m + j % 16) % 3;
            rgb_shuffle.g[m][j] = ch == 1 ? 0x80 : 0;
            rgb_shuffle.b[m][j] = ch == 2 ? 0x80 : 0;
        }
    }
}

/* 8 floats as quantize16 does them, to int32 before the zero point, with
 * one clamp: min(256, v) keeps NaN (it takes its second operand where one
 * is NaN), and vcvtps2dq gives INT_MIN for NaN and for anything below
 * -2^31, which pack32's saturations take to -128 as the clamp to -256 would. */
VF_TARGET_AVX2 static inline __m256i quantize8(const float *x, __m256 scale)
{
    return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_set1_ps(256.0f), _mm256_div_ps(_mm256_loadu_ps(x), scale)));
}

/* The same as quantize16_product does it (its reasoning, its margin): x *
 * inv, and in `near` the largest |v - round(v)| (max takes its second
 * operand where the first is NaN: the lane of a NaN or -inf product, where
 * v - w is NaN, is skipped). */
VF_TARGET_AVX2 static inline __m256i quantize8_product(const float *x, __m256 inv, __m256 *near)
{
    const __m256 v = _mm256_min_ps(_mm256_set1_ps(256.0f), _mm256_mul_ps(_mm256_loadu_ps(x), inv));
    const __m256 w = _mm256_round_ps(v, _MM_FROUND_CUR_DIRECTION);
    *near = _mm256_max_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(v, w)), *near);
    return _mm256_cvtps_epi32(w);
}

/* 32 int32 (values 0..7 in a, 8..15 in b, ...) plus the zero point
 * (int16), saturated to int8: vpackssdw to int16, the zero point added
 * saturating, vpacksswb; a value past int16's range stays past int8's, so
 * this is the int32 sum's saturation. Lane 0 gets values 0..15, lane 1
 * 16..31, each lane's 4-byte groups in the order 0, 2, 1, 3 (packed_at). */
VF_TARGET_AVX2 static inline __m256i pack32(__m256i a, __m256i b, __m256i c, __m256i d, __m256i zero_point)
{
    const __m256i v = _mm256_packs_epi16(_mm256_adds_epi16(_mm256_packs_epi32(a, b), zero_point),
                                         _mm256_adds_epi16(_mm256_packs_epi32(c, d), zero_point));
    return _mm256_permute4x64_epi64(v, _MM_SHUFFLE(3, 1, 2, 0));
}

VF_TARGET_AVX2 static inline __m256i quantize32(const float *x, __m256 scale, __m256i zero_point)
{
    return pack32(quantize8(x, scale), quantize8(x + 8, scale), quantize8(x + 16, scale), quantize8(x + 24, scale),
                  zero_point);
}

VF_TARGET_AVX2 static inline __m256i quantize32_product(const float *x, __m256 inv, __m256i zero_point,
                                                        __m256 *near)
{
    return pack32(quantize8_product(x, inv, near), quantize8_product(x + 8, inv, near),
                  quantize8_product(x + 16, inv, near), quantize8_product(x + 24, inv, near), zero_point);
}

/* 32 pixels' R, G and B (pack32's order) into 96 interleaved bytes at q. */
VF_TARGET_AVX2 static inline void interleave32(__m256i R, __m256i G, __m256i B, int8_t *q)
{
    const rgb_shuffle_t *t = &rgb_shuffle;
    R = _mm256_shuffle_epi8(R, _mm256_loadu_si256((const __m256i *)t->plane[0]));
    G = _mm256_shuffle_epi8(G, _mm256_loadu_si256((const __m256i *)t->plane[1]));
    B = _mm256_shuffle_epi8(B, _mm256_loadu_si256((const __m256i *)t->plane[2]));
    __m256i m[3]; /* m[k]: output bytes 16k .. 16k + 15 in lane 0, 48 + 16k .. in lane 1 */
    for (size_t k = 0; k < 3; ++k)
        m[k] = _mm256_blendv_epi8(_mm256_blendv_epi8(R, G, _mm256_loadu_si256((const __m256i *)t->g[k])), B,
                                  _mm256_loadu_si256((const __m256i *)t->b[k]));
    _mm256_storeu_si256((__m256i *)q, _mm256_permute2x128_si256(m[0], m[1], 0x20));
    _mm256_storeu_si256((__m256i *)(q + 32), _mm256_blend_epi32(m[2], m[0], 0xF0));
    _mm256_storeu_si256((__m256i *)(q + 64), _mm256_permute2x128_si256(m[1], m[2], 0x31));
}

/* quantize_rgb_vbmi on AVX2: 64 pixels at a time by the product, again by
 * division where one lies near a half-integer; the last pixels (under 64)
 * as quantize_one. */
VF_TARGET_AVX2 static void quantize_rgb_avx2(const float *x, int8_t *q, size_t pixels, float scale,
                                             int32_t zero_point)
{
    const __m256 s = _mm256_set1_ps(scale);
    const __m256i zp = _mm256_set1_epi16((int16_t)zero_point);
    const float *plane[3] = {x, x + pixels, x + 2 * pixels};
    size_t p = 0;
    const float reciprocal = 1.0f / scale;
    const int product = isnormal(reciprocal); /* quantize16_product's condition */
    const __m256 inv = _mm256_set1_ps(reciprocal);
    for (; p + 64 <= pixels; p += 64) {
        __m256i v[3][2] = {{_mm256_setzero_si256()}}; /* plane, 32-pixel half (set: no warning, no cost) */
        int by_division = !product;
        if (product) {
            __m256 near = _mm256_setzero_ps();
            for (size_t ch = 0; ch < 3; ++ch)
                for (size_t h = 0; h < 2; ++h)
                    v[ch][h] = quantize32_product(plane[ch] + p + 32 * h, inv, zp, &near);
            by_division = _mm256_movemask_ps(_mm256_cmp_ps(near, _mm256_set1_ps(0.5f - VF_NEAR_HALF), _CMP_GE_OQ));
        }
        if (by_division) /* a product near a half-integer: these 64 pixels by division */
            for (size_t ch = 0; ch < 3; ++ch)
                for (size_t h = 0; h < 2; ++h)
                    v[ch][h] = quantize32(plane[ch] + p + 32 * h, s, zp);
        interleave32(v[0][0], v[1][0], v[2][0], q + 3 * p);
        interleave32(v[0][1], v[1][1], v[2][1], q + 3 * p + 96);
    }
    for (; p < pixels; ++p) {
        q[3 * p] = quantize_one(plane[0][p], scale, zero_point);
        q[3 * p + 1] = quantize_one(plane[1][p], scale, zero_point);
        q[3 * p + 2] = quantize_one(plane[2][p], scale, zero_point);
    }
}
#endif

void vf_quantize_chw_to_hwc(const float *x, int8_t *q, size_t channels, size_t pixels, float scale,
                            int32_t zero_point, int vector)
{
#ifdef VF_X86
    if (vector && channels == 3 && vf_vbmi) {
        quantize_rgb_vbmi(x, q, pixels, scale, zero_point);
        return;
    }
    if (vector && channels == 3 && vf_avx2) {
        quantize_rgb_avx2(x, q, pixels, scale, zero_point);
        return;
    }
#else
    (void)vector;
#endif
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

void vf_dequantize_hwc_to_chw(const int8_t *q, float *x, size_t channels, size_t pixels, float scale,
                              float zero_point)
{
    /* a block of pixels at a time, so that the block's bytes stay in cache
     * while each channel's plane is written in turn */
    for (size_t p0 = 0; p0 < pixels; p0 += VF_BLOCK) {
        size_t n = pixels - p0 < VF_BLOCK ? pixels - p0 : VF_BLOCK;
        for (size_t c = 0; c < channels; ++c) {
            const int8_t *in = q + p0 * channels + c;
            float *out = x + c * pixels + p0;
            for (size_t i = 0; i < n; ++i)
                out[i] = ((float)in[i * channels] - zero_point) * scale;
        }
    }
}

/* n bytes from s to d (not overlapping) for the fold's short runs (6 bytes
 * for an RGB image's stride-2 blocks): no library call, the size's branch
 * taken the same way for a whole loop; each move is two overlapping
 * fixed-size copies, which the compiler turns into plain loads and stores. */
static inline void copy_run(uint8_t *d, const uint8_t *s, size_t n)
{
    if (n >= 16) {
        size_t i = 0;
        for (; i + 16 <= n; i += 16)
            memcpy(d + i, s + i, 16);
        if (i < n)
            memcpy(d + n - 16, s + n - 16, 16);
    } else if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        memcpy(d, &a, 4);
        memcpy(d + n - 4, &b, 4);
    } else {
        for (size_t i = 0; i < n; ++i)
            d[i] = s[i];
    }
}

/* n bytes, a multiple of 16, as 16-byte moves (48 for ResNet-50's folded pixels). */
static inline void copy_16s(uint8_t *d, const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i += 16)
        memcpy(d + i, s + i, 16);
}

/* A striped segment's bytes [lo, hi), held at `bytes`, into its parts (to_parts) or back. */
static void stripe_move(uint8_t *bytes, const vf_stripe_t *stripe, size_t lo, size_t hi, int to_parts)
{
    const size_t word = stripe->word, ports = stripe->ports;
    size_t g = lo / word, p = g % ports, row = g / ports; /* global word g is word `row` of part p */
    for (; g * word < hi; ++g) {
        size_t a = g * word > lo ? g * word : lo, b = (g + 1) * word < hi ? (g + 1) * word : hi;
        uint8_t *part = (uint8_t *)stripe->parts[p] + row * word + (a - g * word), *mine = bytes + (a - lo);
        if (b - a == 64) { /* a whole bus word: a fixed-size copy, inlined */
            if (to_parts)
                memcpy(part, mine, 64);
            else
                memcpy(mine, part, 64);
        } else if (to_parts) {
            memcpy(part, mine, b - a);
        } else {
            memcpy(mine, part, b - a);
        }
        if (++p == ports) {
            p = 0;
            ++row;
        }
    }
}

/* Image row r - top of x as x_pad's row: pixels [0, n) of it at `dst`, the zero point outside x. */
static VF_ALWAYS_INLINE void padded_row(const int8_t *x, size_t h, size_t w, size_t c, ptrdiff_t r,
                                        ptrdiff_t left, size_t n, int8_t zero_point, uint8_t *dst)
{
    const ptrdiff_t first = left > 0 ? left : 0;
    const ptrdiff_t end = left + (ptrdiff_t)w < (ptrdiff_t)n ? left + (ptrdiff_t)w : (ptrdiff_t)n;
    if (r < 0 || r >= (ptrdiff_t)h || first >= end) {
        memset(dst, (uint8_t)zero_point, n * c);
        return;
    }
    memset(dst, (uint8_t)zero_point, (size_t)first * c);
    memcpy(dst + (size_t)first * c, x + ((size_t)r * w + (size_t)(first - left)) * c, (size_t)(end - first) * c);
    memset(dst + (size_t)end * c, (uint8_t)zero_point, (n - (size_t)end) * c);
}

/* vf_fold_input's body, inlined into it for the two common stems of RGB
 * networks, then for any other fold: at stride 2 (ResNet, SqueezeNet,
 * MobileNet: 6-byte blocks) with s and c known, each block's copy and the
 * border's zero point are fixed-size moves, no call or size test (a third
 * of the time of ResNet-50's fold here); a 3x3 kernel at stride 1 (VGG)
 * with its 9-byte folded pixels known too (a quarter of VGG-19's). */
static VF_ALWAYS_INLINE void fold_rows(const int8_t *x, size_t h, size_t w, size_t c, ptrdiff_t top,
                                       ptrdiff_t left, size_t s, size_t cols, size_t fh, size_t fw,
                                       int8_t zero_point, int8_t *row, int8_t *out, const vf_stripe_t *stripe,
                                       size_t at)
{
    const size_t wj = fw + cols - 1, unit = s * s * c, block = s * c, run = cols * unit;
    for (size_t i = 0; i < fh; ++i) {
        uint8_t *orow = (uint8_t *)out + (stripe ? 0 : i * fw * run); /* output row i */
        /* x'[i]: per a, image row s*i + a - top cut into s-pixel blocks, one every `unit` bytes */
        uint8_t *x1 = cols > 1 ? (uint8_t *)row : orow;
        if (s == 1) { /* the blocks are pixels, side by side: the image row, the zero point around it */
            padded_row(x, h, w, c, (ptrdiff_t)i - top, left, wj, zero_point, x1);
        } else {
            for (size_t a = 0; a < s; ++a) {
                const ptrdiff_t r = (ptrdiff_t)(s * i + a) - top;
                const int row_inside = r >= 0 && r < (ptrdiff_t)h;
                const uint8_t *src = (const uint8_t *)x + (row_inside ? (size_t)r * w * c : 0);
                for (size_t j = 0; j < wj; ++j) {
                    uint8_t *dst = x1 + j * unit + a * block;
                    const ptrdiff_t q = (ptrdiff_t)(s * j) - left;
                    if (row_inside && q >= 0 && q + (ptrdiff_t)s <= (ptrdiff_t)w) {
                        copy_run(dst, src + (size_t)q * c, block);
                        continue;
                    }
                    for (size_t b = 0; b < s; ++b) { /* at the border: pixel by pixel */
                        const ptrdiff_t qb = q + (ptrdiff_t)b;
                        if (row_inside && qb >= 0 && qb < (ptrdiff_t)w)
                            memcpy(dst + b * c, src + (size_t)qb * c, c);
                        else
                            memset(dst + b * c, (uint8_t)zero_point, c);
                    }
                }
            }
        }
        if (cols > 1 && run % 16 == 0) /* x''[i, J] = x'[i, J .. J + cols) flattened: one run per output pixel */
            for (size_t j = 0; j < fw; ++j)
                copy_16s(orow + j * run, x1 + j * unit, run);
        else if (cols > 1)
            for (size_t j = 0; j < fw; ++j)
                copy_run(orow + j * run, x1 + j * unit, run);
        if (stripe) /* the row, still in cache, into the parts */
            stripe_move(orow, stripe, at + i * fw * run, at + (i + 1) * fw * run, 1);
    }
}

#ifdef VF_X86
/* Output chunk k of a period whose source bytes start at q in the padded rows r0 and r1. */
VF_TARGET_VBMI static inline __m512i fold_chunk(const uint8_t *r0, const uint8_t *r1, const vf_fold_plan_t *plan,
                                                size_t k, size_t q)
{
    const size_t from = q + plan->base[k][0];
    return _mm512_permutex2var_epi8(_mm512_loadu_si512((const void *)(r0 + from)),
                                    _mm512_loadu_si512((const void *)plan->index[k]),
                                    _mm512_loadu_si512((const void *)(r1 + from)));
}

/* vf_fold_input with a VBMI plan: per output row, the s padded image rows, then
 * each 64 output bytes one vpermt2b of 64 bytes of each (of the one row
 * twice at stride 1), the row's last partial chunk a masked store. Into a
 * striped segment whose rows are whole bus words of 64 bytes (ResNet's
 * stem: 112 pixels of 48 bytes), each chunk is stored straight into its
 * part; otherwise the row is made in `out` and moved into the parts. */
VF_TARGET_VBMI static void fold_rows_vbmi(const int8_t *x, size_t h, size_t w, size_t c, ptrdiff_t top,
                                          ptrdiff_t left, size_t s, size_t cols, size_t fh, size_t fw,
                                          int8_t zero_point, const vf_fold_plan_t *plan, int8_t *row,
                                          int8_t *out, const vf_stripe_t *stripe, size_t at)
{
    const size_t wj = fw + cols - 1, pitch = wj * s * c + 64, row_bytes = fw * cols * s * s * c;
    const size_t full = row_bytes / 64, tail = row_bytes % 64, chunks = plan->chunks;
    const int direct = stripe && stripe->word == 64 && at % 64 == 0 && tail == 0;
    const uint8_t *r0 = (const uint8_t *)row, *r1 = r0 + (s - 1) * pitch;
    size_t g = at / 64, p = direct ? g % stripe->ports : 0, word = direct ? g / stripe->ports : 0;
    for (size_t i = 0; i < fh; ++i) {
        for (size_t a = 0; a < s; ++a)
            padded_row(x, h, w, c, (ptrdiff_t)(s * i + a) - top, left, wj * s, zero_point,
                       (uint8_t *)row + a * pitch);
        uint8_t *dst = (uint8_t *)out + (stripe ? 0 : i * row_bytes);
        size_t k = 0, q = 0;
        for (size_t n = 0; n < full; ++n) {
            const __m512i v = fold_chunk(r0, r1, plan, k, q);
            if (direct) { /* segment word g: word `word` of part p */
                _mm512_storeu_si512((void *)((uint8_t *)stripe->parts[p] + word * 64), v);
                if (++p == stripe->ports) {
                    p = 0;
                    ++word;
                }
            } else {
                _mm512_storeu_si512((void *)(dst + 64 * n), v);
            }
            if (++k == chunks) {
                k = 0;
                q += plan->advance;
            }
        }
        if (tail)
            _mm512_mask_storeu_epi8((void *)(dst + 64 * full), (__mmask64)((1ULL << tail) - 1),
                                    fold_chunk(r0, r1, plan, k, q));
        if (stripe && !direct)
            stripe_move(dst, stripe, at + i * row_bytes, at + (i + 1) * row_bytes, 1);
    }
}

/* 16 bytes at a and 16 at b as one register's lanes */
VF_TARGET_AVX2 static inline __m256i load_lanes(const uint8_t *a, const uint8_t *b)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                   _mm_loadu_si128((const __m128i *)b), 1);
}

/* A 32-byte chunk of the AVX2 fold from the padded rows r0 and (at stride 2)
 * r1: per half, a vpshufb of its window of each row (lo: the first half's,
 * hi: the second's), the two ORed (each row's index zeroes the other's bytes). */
VF_TARGET_AVX2 static VF_ALWAYS_INLINE __m256i fold_chunk_avx2(const uint8_t *r0, const uint8_t *r1, size_t lo,
                                                               size_t hi, __m256i index0, __m256i index1, size_t s)
{
    const __m256i v = _mm256_shuffle_epi8(load_lanes(r0 + lo, r0 + hi), index0);
    return s == 1 ? v : _mm256_or_si256(v, _mm256_shuffle_epi8(load_lanes(r1 + lo, r1 + hi), index1));
}

/* Output chunk k of the plan, the period's source bytes at r0 and r1. */
VF_TARGET_AVX2 static VF_ALWAYS_INLINE __m256i fold_plan_chunk(const uint8_t *r0, const uint8_t *r1,
                                                               const vf_fold_plan_t *plan, size_t k, size_t s)
{
    return fold_chunk_avx2(r0, r1, plan->base[k][0], plan->base[k][1],
                           _mm256_loadu_si256((const __m256i *)plan->index[k]),
                           _mm256_loadu_si256((const __m256i *)(plan->index[k] + 32)), s);
}

/* Where the AVX2 fold's chunks go: one after another from d or, direct
 * (rows of whole 64-byte bus words, on a word), two to a word, d in word
 * `word` of part p. */
typedef struct {
    uint8_t *d;
    const vf_stripe_t *stripe;
    size_t p, word;
    int second; /* direct: d is a word's second half */
} chunk_out_t;

VF_TARGET_AVX2 static VF_ALWAYS_INLINE void put_chunk(chunk_out_t *o, __m256i v, int direct)
{
    _mm256_storeu_si256((__m256i *)o->d, v);
    if (direct && o->second) {
        if (++o->p == o->stripe->ports) {
            o->p = 0;
            ++o->word;
        }
        o->d = (uint8_t *)o->stripe->parts[o->p] + o->word * 64;
    } else {
        o->d += 32;
    }
    if (direct)
        o->second ^= 1;
}

/* `periods` periods of the plan's chunks from the padded rows at r0 and r1 (period m at m * advance). */
VF_TARGET_AVX2 static VF_ALWAYS_INLINE void fold_periods_avx2(const uint8_t *r0, const uint8_t *r1,
                                                              const vf_fold_plan_t *plan, size_t s, size_t periods,
                                                              chunk_out_t *o, int direct)
{
    for (size_t m = 0; m < periods; ++m, r0 += plan->advance, r1 += plan->advance)
        for (size_t k = 0; k < plan->chunks; ++k)
            put_chunk(o, fold_plan_chunk(r0, r1, plan, k, s), direct);
}

/* The same with n, the period's chunks, known (inlined with a constant of
 * at most 9: RGB's 3 at stride 2, 9 at stride 1): the plan's indices and
 * window bases loaded once, into registers. fold_periods_avx2 reads them
 * from the plan at every chunk, as its stores might alias the plan; held,
 * ResNet-50's fold alone takes a third less time (38 -> 25 us on Zen 3). */
VF_TARGET_AVX2 static VF_ALWAYS_INLINE void fold_periods_held_avx2(const uint8_t *r0, const uint8_t *r1,
                                                                   const vf_fold_plan_t *plan, size_t s, size_t n,
                                                                   size_t periods, chunk_out_t *o, int direct)
{
    __m256i index0[9], index1[9];
    size_t lo[9], hi[9];
#pragma GCC unroll 9
    for (size_t k = 0; k < n; ++k) {
        index0[k] = _mm256_loadu_si256((const __m256i *)plan->index[k]);
        index1[k] = _mm256_loadu_si256((const __m256i *)(plan->index[k] + 32));
        lo[k] = plan->base[k][0];
        hi[k] = plan->base[k][1];
    }
    for (size_t m = 0; m < periods; ++m, r0 += plan->advance, r1 += plan->advance)
#pragma GCC unroll 9
        for (size_t k = 0; k < n; ++k)
            put_chunk(o, fold_chunk_avx2(r0, r1, lo[k], hi[k], index0[k], index1[k], s), direct);
}

/* An output row's full chunks: its whole periods, then the first `rest` chunks of one more. */
VF_TARGET_AVX2 static VF_ALWAYS_INLINE void fold_row_avx2(const uint8_t *r0, const uint8_t *r1,
                                                          const vf_fold_plan_t *plan, size_t s, size_t periods,
                                                          size_t rest, chunk_out_t *o, int direct)
{
    if (plan->chunks == 3)
        fold_periods_held_avx2(r0, r1, plan, s, 3, periods, o, direct);
    else if (plan->chunks == 9)
        fold_periods_held_avx2(r0, r1, plan, s, 9, periods, o, direct);
    else
        fold_periods_avx2(r0, r1, plan, s, periods, o, direct);
    const size_t q = periods * plan->advance;
    for (size_t k = 0; k < rest; ++k)
        put_chunk(o, fold_plan_chunk(r0 + q, r1 + q, plan, k, s), direct);
}

/* vf_fold_input with an AVX2 plan, s (1 or 2) known: as fold_rows_vbmi, 32
 * output bytes at a time; the row's last partial chunk through a stack
 * buffer, only its first half where the second holds none of the row's
 * bytes (every window of a chunk with bytes of the row starts at one of
 * them, so it ends within the 64 bytes past the padded row). */
VF_TARGET_AVX2 static VF_ALWAYS_INLINE void fold_rows_avx2(const int8_t *x, size_t h, size_t w, size_t c,
                                                           ptrdiff_t top, ptrdiff_t left, size_t s, size_t cols,
                                                           size_t fh, size_t fw, int8_t zero_point,
                                                           const vf_fold_plan_t *plan, int8_t *row, int8_t *out,
                                                           const vf_stripe_t *stripe, size_t at)
{
    const size_t wj = fw + cols - 1, pitch = wj * s * c + 64, row_bytes = fw * cols * s * s * c;
    const size_t full = row_bytes / 32, tail = row_bytes % 32, chunks = plan->chunks;
    const size_t periods = full / chunks, rest = full % chunks, q = periods * plan->advance;
    const int direct = stripe && stripe->word == 64 && at % 64 == 0 && row_bytes % 64 == 0;
    const uint8_t *r0 = (const uint8_t *)row, *r1 = r0 + (s - 1) * pitch;
    chunk_out_t o = {NULL, stripe, 0, 0, 0};
    if (direct) { /* segment word g: word g / ports of part g % ports */
        o.p = at / 64 % stripe->ports;
        o.word = at / 64 / stripe->ports;
        o.d = (uint8_t *)stripe->parts[o.p] + o.word * 64;
    }
    for (size_t i = 0; i < fh; ++i) {
        for (size_t a = 0; a < s; ++a)
            padded_row(x, h, w, c, (ptrdiff_t)(s * i + a) - top, left, wj * s, zero_point,
                       (uint8_t *)row + a * pitch);
        uint8_t *dst = (uint8_t *)out + (stripe ? 0 : i * row_bytes);
        if (direct) {
            fold_row_avx2(r0, r1, plan, s, periods, rest, &o, 1);
            continue;
        }
        o.d = dst;
        fold_row_avx2(r0, r1, plan, s, periods, rest, &o, 0);
        if (tail) {
            const size_t k = rest;
            uint8_t last[32];
            if (tail > 16)
                _mm256_storeu_si256((__m256i *)last, fold_plan_chunk(r0 + q, r1 + q, plan, k, s));
            else /* the first half, in both lanes (the second's window may lie past the rows) */
                _mm_storeu_si128((__m128i *)last,
                                 _mm256_castsi256_si128(fold_chunk_avx2(
                                     r0 + q, r1 + q, plan->base[k][0], plan->base[k][0],
                                     _mm256_loadu_si256((const __m256i *)plan->index[k]),
                                     _mm256_loadu_si256((const __m256i *)(plan->index[k] + 32)), s)));
            memcpy(dst + 32 * full, last, tail);
        }
        if (stripe)
            stripe_move(dst, stripe, at + i * row_bytes, at + (i + 1) * row_bytes, 1);
    }
}

/* fold_rows_avx2 compiled for each stride it takes */
VF_TARGET_AVX2 static void fold_rows_avx2_s1(const int8_t *x, size_t h, size_t w, size_t c, ptrdiff_t top,
                                             ptrdiff_t left, size_t cols, size_t fh, size_t fw, int8_t zero_point,
                                             const vf_fold_plan_t *plan, int8_t *row, int8_t *out,
                                             const vf_stripe_t *stripe, size_t at)
{
    fold_rows_avx2(x, h, w, c, top, left, 1, cols, fh, fw, zero_point, plan, row, out, stripe, at);
}

VF_TARGET_AVX2 static void fold_rows_avx2_s2(const int8_t *x, size_t h, size_t w, size_t c, ptrdiff_t top,
                                             ptrdiff_t left, size_t cols, size_t fh, size_t fw, int8_t zero_point,
                                             const vf_fold_plan_t *plan, int8_t *row, int8_t *out,
                                             const vf_stripe_t *stripe, size_t at)
{
    fold_rows_avx2(x, h, w, c, top, left, 2, cols, fh, fw, zero_point, plan, row, out, stripe, at);
}

static size_t gcd(size_t a, size_t b)
{
    while (b) {
        const size_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* vf_fold_plan for chunks of `bytes` (VBMI 64, AVX2 32), each read through
 * windows of `window` bytes (VBMI one of 64, AVX2 one of 16 per half);
 * 0 where the period or a window is too short. */
static size_t make_plan(size_t s, size_t c, size_t cols, size_t bytes, size_t window, vf_fold_plan_t *plan)
{
    const size_t block = s * c, run = cols * s * block, chunks = run / gcd(run, bytes);
    if (chunks > VF_FOLD_PERIOD_MAX)
        return 0;
    /* output byte l of the period: pixel J, kernel column V, row a, byte t of
     * the block, from byte (J + V) * block + t of padded row a; counted up */
    size_t J = 0, V = 0, a = 0, t = 0;
    for (size_t k = 0; k < chunks; ++k) {
        for (size_t half = 0; half < bytes / window; ++half) {
            size_t src[64], lo = (size_t)-1, hi = 0;
            uint8_t second[64];
            for (size_t l = 0; l < window; ++l) {
                src[l] = (J + V) * block + t;
                second[l] = (uint8_t)a;
                lo = src[l] < lo ? src[l] : lo;
                hi = src[l] > hi ? src[l] : hi;
                if (++t == block) {
                    t = 0;
                    if (++a == s) {
                        a = 0;
                        if (++V == cols) {
                            V = 0;
                            ++J;
                        }
                    }
                }
            }
            if (hi - lo >= window)
                return 0;
            plan->base[k][half] = (uint32_t)lo;
            for (size_t l = 0; l < window; ++l) {
                const uint8_t off = (uint8_t)(src[l] - lo);
                if (window == 64) { /* vpermt2b: row s - 1's bytes follow row 0's */
                    plan->index[k][l] = (uint8_t)(off + 64 * second[l]);
                } else { /* vpshufb per row, 0x80 giving 0 where the byte is the other row's */
                    plan->index[k][16 * half + l] = second[l] ? 0x80 : off;
                    plan->index[k][32 + 16 * half + l] = second[l] ? off : 0x80;
                }
            }
        }
    }
    plan->advance = (uint32_t)(bytes * chunks / run * block);
    plan->chunks = (uint32_t)chunks;
    return chunks;
}
#endif

size_t vf_fold_plan(size_t s, size_t c, size_t cols, vf_fold_plan_t *plan)
{
    plan->kind = VF_FOLD_SCALAR;
    plan->chunks = 0;
    plan->advance = 0;
#ifdef VF_X86
    if (s < 1 || s > 2 || c == 0 || cols == 0)
        return 0;
    if (vf_vbmi && make_plan(s, c, cols, 64, 64, plan))
        plan->kind = VF_FOLD_VBMI;
    else if (vf_avx2 && make_plan(s, c, cols, 32, 16, plan))
        plan->kind = VF_FOLD_AVX2;
    return plan->chunks;
#else
    (void)s;
    (void)c;
    (void)cols;
    return 0;
#endif
}

void vf_fold_input(const int8_t *x, size_t h, size_t w, size_t c, ptrdiff_t top, ptrdiff_t left, size_t s,
                   size_t cols, size_t fh, size_t fw, int8_t zero_point, const vf_fold_plan_t *plan, int8_t *row,
                   int8_t *out, const vf_stripe_t *stripe, size_t at)
{
#ifdef VF_X86
    if (plan && plan->chunks && plan->kind == VF_FOLD_VBMI) {
        fold_rows_vbmi(x, h, w, c, top, left, s, cols, fh, fw, zero_point, plan, row, out, stripe, at);
        return;
    }
    if (plan && plan->chunks && plan->kind == VF_FOLD_AVX2) {
        if (s == 1)
            fold_rows_avx2_s1(x, h, w, c, top, left, cols, fh, fw, zero_point, plan, row, out, stripe, at);
        else
            fold_rows_avx2_s2(x, h, w, c, top, left, cols, fh, fw, zero_point, plan, row, out, stripe, at);
        return;
    }
#else
    (void)plan;
#endif
    if (s == 2 && c == 3)
        fold_rows(x, h, w, 3, top, left, 2, cols, fh, fw, zero_point, row, out, stripe, at);
    else if (s == 1 && c == 3 && cols == 3)
        fold_rows(x, h, w, 3, top, left, 1, 3, fh, fw, zero_point, row, out, stripe, at);
    else
        fold_rows(x, h, w, c, top, left, s, cols, fh, fw, zero_point, row, out, stripe, at);
}

void vf_stripe_copy(uintptr_t image, const vf_stripe_t *stripe, size_t lo, size_t hi, int to_parts)
{
    stripe_move((uint8_t *)image + lo, stripe, lo, hi, to_parts);
}
