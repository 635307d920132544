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
 * every step in float32 as onnxruntime computes it (IEEE division, the
 * current rounding mode's ties-to-even). NaN saturates to -128. */
void vf_quantize_chw_to_hwc(const float *x, int8_t *q, size_t channels, size_t pixels, float scale,
                            float zero_point);

/* Copies `count` blocks of `block` bytes from address src (one every
 * `src_stride` bytes) to address dst (one every `dst_stride` bytes): a
 * striped segment's bus words between its host image (segment order, one
 * word of each bank's part in turn) and one part's buffer. The addresses
 * are integers, as the caller holds them (no pointer conversion per call). */
void vf_copy_blocks(uintptr_t src, size_t src_stride, uintptr_t dst, size_t dst_stride, size_t block,
                    size_t count);

#endif
