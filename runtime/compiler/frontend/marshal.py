"""Host-side marshalling between ONNX tensors (float NCHW) and the
accelerator's (int8 HWC), as ONNX QuantizeLinear/DequantizeLinear define it."""

from __future__ import annotations

import numpy as np

from vfpga.driver import host_isa
from vfpga.runtime.compiler import ir

from .errors import FrontendError

# the C helpers (hls/host/vfpga_marshal.c) built for this host's ISA level, else portable
_marshal = host_isa.best_module("_marshal")
# an RGB input's quantization as AVX-512 VBMI permutations where the CPU has them, else AVX2 shuffles and blends
# (False: the compiler's loops, the same bytes; the tests take both)
VECTOR = True

_F32, _I8 = np.dtype(np.float32), np.dtype(np.int8)  # (dtypes compare with dtypes without a conversion)

# ---------------------------------------------------------------- host-side I/O


def onnx_layout(tensor: ir.Tensor) -> tuple[int, ...]:
    h, w, c = tensor.shape
    return tuple(tensor.onnx_shape) if tensor.onnx_shape is not None else (1, c, h, w)


def quantize_input(x, tensor: ir.Tensor) -> np.ndarray:
    """Float NCHW input -> int8 HWC as ONNX QuantizeLinear does it (and
    onnxruntime, NaN included): saturate(round_half_even(x / scale) +
    zero_point), in float32."""
    expected = onnx_layout(tensor)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise FrontendError(
            f"model input: expected float32 NCHW {list(expected)}, got dtype {x.dtype}"
        )
    if x.shape != expected:
        raise FrontendError(
            f"model input: expected float32 NCHW {list(expected)}, got shape {list(x.shape)}"
        )
    h, w, c = tensor.shape
    # on a request's path: one pass in C (hls/host/vfpga_marshal.c) instead of numpy's four and a transpose;
    # numpy's conversions only where the input needs one (each costs microseconds on a cold cache)
    f = x if x.dtype == _F32 and x.flags.c_contiguous else np.ascontiguousarray(x, np.float32)
    q = np.empty((h, w, c), np.int8)
    ffi = _marshal.ffi
    _marshal.lib.vf_quantize_chw_to_hwc(ffi.from_buffer("float[]", f), ffi.from_buffer("int8_t[]", q), c, h * w,
                                        float(np.float32(tensor.scale)), int(tensor.zero_point), int(VECTOR))
    return q


def dequantize_output(q, tensor: ir.Tensor) -> np.ndarray:
    """int8 HWC -> float32 in the ONNX output's layout (NCHW, or the
    flattened [1, K] for a fully-connected output): (q - zp) * scale.
    A float32 output (tensor.dtype "float32", computed on the CPU) is only
    put into the ONNX layout."""
    q = np.asarray(q)
    if tensor.dtype == "float32":  # a float graph output computed on the CPU
        if q.dtype != np.float32 or tuple(q.shape) != tuple(tensor.shape):
            raise FrontendError(
                f"output '{tensor.name}': expected float32 HWC {list(tensor.shape)}, got {q.dtype} {list(q.shape)}"
            )
        return np.ascontiguousarray(q.transpose(2, 0, 1)).reshape(onnx_layout(tensor))
    if q.dtype != _I8 or q.shape != tuple(tensor.shape):
        raise FrontendError(
            f"output '{tensor.name}': expected int8 HWC {list(tensor.shape)}, got {q.dtype} {list(q.shape)}"
        )
    # on a request's path: one pass in C into the ONNX layout, the same float32 steps as numpy's
    h, w, c = tensor.shape
    q = q if q.flags.c_contiguous else np.ascontiguousarray(q)
    x = np.empty((c, h, w), _F32)
    ffi = _marshal.ffi
    _marshal.lib.vf_dequantize_hwc_to_chw(ffi.from_buffer("int8_t[]", q), ffi.from_buffer("float[]", x), c, h * w,
                                          float(np.float32(tensor.scale)), float(tensor.zero_point))
    return x.reshape(onnx_layout(tensor))



def to_hwc(a: np.ndarray) -> np.ndarray:
    """ONNX NCHW (or [1, N]) batch-1 tensor -> HWC."""
    if a.ndim == 4:
        return np.ascontiguousarray(a[0].transpose(1, 2, 0))
    if a.ndim == 2:
        return a.reshape(1, 1, -1)
    raise ValueError(f"cannot map a tensor of shape {a.shape} to HWC")


def to_onnx_layout(hwc: np.ndarray, onnx_shape=None) -> np.ndarray:
    """HWC batch-1 tensor -> NCHW, reshaped to ``onnx_shape`` (e.g. a
    flattened [1, K]) when given; the inverse of :func:`from_onnx_layout`."""
    nchw = np.ascontiguousarray(hwc.transpose(2, 0, 1))[None]
    return nchw.reshape(onnx_shape) if onnx_shape is not None else nchw


def from_onnx_layout(a: np.ndarray, hwc_shape) -> np.ndarray:
    """ONNX tensor (NCHW or flattened in NCHW order) -> HWC of ``hwc_shape``."""
    h, w, c = hwc_shape
    return np.ascontiguousarray(np.asarray(a).reshape(c, h, w).transpose(1, 2, 0))
