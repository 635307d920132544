/* Host-side marshalling of a request's tensors (the driver's path on a board
 * as in emulation): one pass in C where numpy needs several, each step as
 * the ONNX operator defines it. Built by hls/cffi_build.py into
 * vfpga.driver._marshal; runtime/compiler/frontend/marshal.py calls it. */
#ifndef VFPGA_MARSHAL_H
#define VFPGA_MARSHAL_H

#include <stddef.h>
#include <stdint.h>

/* QuantizeLinear of a float32 CHW image into int8 HWC:
 * q[p * channels + c] = saturate(round_half_even(x[c * pixels + p] / scale) + zero_point),
 * the quotient and its rounding in float32 as onnxruntime computes them (IEEE
 * division, the current rounding mode's ties-to-even), then the zero point
 * added and saturated in int32, exact either way. NaN saturates to -128.
 * vector nonzero: where the CPU has AVX-512 VBMI (else AVX2), an RGB image
 * (3 channels) is quantized 16 (8) values per instruction, by x times
 * 1/scale where that provably rounds as x / scale does (else by division),
 * and interleaved by byte permutations (shuffles and blends): the same
 * bytes (0 keeps the compiler's loops). */
void vf_quantize_chw_to_hwc(const float *x, int8_t *q, size_t channels, size_t pixels, float scale,
                            int32_t zero_point, int vector);

/* DequantizeLinear of an int8 HWC tensor into float32 CHW (ONNX's layout):
 * x[c * pixels + p] = (q[p * channels + c] - zero_point) * scale, in float32. */
void vf_dequantize_hwc_to_chw(const int8_t *q, float *x, size_t channels, size_t pixels, float scale,
                              float zero_point);

/* A striped segment's parts: byte a of the segment is byte
 * (a / (word * ports)) * word + a % word of part (a / word) % ports. */
typedef struct {
    const uintptr_t *parts; /* each part's host buffer's address */
    size_t ports;
    size_t word; /* bytes of a bus word */
} vf_stripe_t;

/* Output chunks in one period of an output row (the pattern of where a
 * chunk's bytes come from repeats every lcm(chunk bytes, a pixel's bytes)). */
#define VF_FOLD_PERIOD_MAX 32

/* vf_fold_plan_t's kind: which instructions the plan is for. */
#define VF_FOLD_SCALAR 0 /* no plan: the fold copies runs */
#define VF_FOLD_VBMI 1   /* AVX-512 VBMI: 64-byte chunks, one vpermt2b each */
#define VF_FOLD_AVX2 2   /* AVX2: 32-byte chunks, two 16-byte halves of vpshufb each */

/* The fold's byte permutations for one (s, c, cols) on this CPU. Output
 * chunk n of a row (k = n % chunks, q = n / chunks) is:
 * VBMI: byte index[k][l] of the 128 bytes [64 at base[k][0] + q * advance
 *   of padded row 0, then 64 at the same offset of padded row s - 1];
 * AVX2: in half h (bytes 16h .. 16h + 15), from the 16 bytes at
 *   base[k][h] + q * advance of each padded row, byte index[k][16h + l] of
 *   row 0's OR byte index[k][32 + 16h + l] of row s - 1's (at stride 2; at
 *   stride 1 row 0's alone), an index with its high bit set giving 0. */
typedef struct {
    uint32_t kind;   /* VF_FOLD_*, the others' meaning with it */
    uint32_t chunks; /* 0: no plan, the fold takes its scalar path */
    uint32_t advance;
    uint32_t base[VF_FOLD_PERIOD_MAX][2]; /* VBMI: [k][0] only */
    uint8_t index[VF_FOLD_PERIOD_MAX][64];
} vf_fold_plan_t;

/* Fills `plan` for the fold at stride s of c channels with cols kernel
 * columns folded; returns its chunks. VBMI where the CPU has AVX-512 VBMI
 * and the VBMI plan applies, else AVX2 where the CPU has AVX2 and that
 * applies, else 0 (kind VF_FOLD_SCALAR): s over 2, or the period over
 * VF_FOLD_PERIOD_MAX chunks, or one window too short for a chunk's bytes
 * (64 bytes for VBMI, 16 per half for AVX2). */
size_t vf_fold_plan(size_t s, size_t c, size_t cols, vf_fold_plan_t *plan);

/* The first convolution's input fold (runtime/compiler/input_fold.py) of an
 * int8 HWC image x [h, w, c] into [fh, fw, cols * s * s * c]:
 *   out[I, J, ((V * s + a) * s + b) * c + ch] = x_pad[s*I + a, s*(J + V) + b, ch]
 * where x_pad[r, q] = x[r - top, q - left], the zero point outside x.
 *
 * With a vector plan (vf_fold_plan gave it chunks), each output row is cut
 * from the s padded image rows it reads, x_pad[s*I + a, 0 .. wj * s), built
 * in `row` one after another, each wj * s * c + 64 bytes (wj = fw + cols - 1):
 * every chunk of output bytes is byte permutations of windows of each.
 * Otherwise (plan NULL or without chunks) row I of
 * x'[I, J', (a, b, ch)] = x_pad[s*I + a, s*J' + b, ch] is built in `row`
 * (wj * s * s * c bytes; unused when cols is 1: x' is then the output row
 * itself), and each output pixel is one run of it.
 * stripe NULL: `out` is the folded input's destination. Otherwise `out` is
 * a scratch of one output row (fw * cols * s * s * c bytes) and each row goes
 * straight into the striped segment's parts, the folded input at segment
 * offset `at`. */
void vf_fold_input(const int8_t *x, size_t h, size_t w, size_t c, ptrdiff_t top, ptrdiff_t left, size_t s,
                   size_t cols, size_t fh, size_t fw, int8_t zero_point, const vf_fold_plan_t *plan, int8_t *row,
                   int8_t *out, const vf_stripe_t *stripe, size_t at);

/* Copies a striped segment's bytes [lo, hi) between its host copy (segment
 * order, at address `image`) and its parts. to_parts: host copy -> parts,
 * else parts -> host copy. */
void vf_stripe_copy(uintptr_t image, const vf_stripe_t *stripe, size_t lo, size_t hi, int to_parts);

#endif
