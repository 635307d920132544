"""The values the QDQ reader tracks (references to IR tensors, quantized
constants, float results waiting for their QuantizeLinear) and the small
conversions its parts share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vfpga.runtime.hw import fixed_point

from .errors import FrontendError, UnsupportedOperatorError

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclass
class Ref:
    """A value equal to an IR int8 tensor (dequantized, if it is a float),
    possibly seen through a reshape: flat means ONNX sees it as the
    NCHW-flattened [1, C*H*W]."""

    q: str
    flat: bool = False
    nodes: list = field(default_factory=list)  # view nodes on the way


@dataclass
class QConst:
    """A constant behind a DequantizeLinear: integer data and its qparams."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


@dataclass
class Pending:
    """A computed float value waiting for its QuantizeLinear, which fixes the
    output quantization (and so the multipliers and clip bounds)."""

    build: Callable  # (out_tensor, clip) -> ir layer
    shape: tuple  # HWC of the result
    nodes: list
    producer: str  # the compute node, for messages
    flat: bool = False
    lo: float = -math.inf  # float clip from fused Relu/Clip
    hi: float = math.inf
    done: tuple | None = None  # (int8 name, scale, zp) once quantized
    # (k, c, node, name) -> None: fold a per-channel affine y = k * x + c
    # into the producer (convolutions), None where that is not possible.
    affine: Callable | None = None


def hwc(shape, what: str) -> tuple[int, int, int]:
    s = list(shape)
    if len(s) == 4 and s[0] == 1:
        return (s[2], s[3], s[1])
    if len(s) == 2 and s[0] == 1:
        return (1, 1, s[1])
    raise FrontendError(f"{what} has shape {s}; the accelerator handles [1, C, H, W] and [1, K] tensors")


def layer_inputs(layer) -> list[str]:
    return list(layer.inputs) if hasattr(layer, "inputs") else [layer.input]


def layer_outputs(layer) -> list[str]:
    return list(layer.outputs) if hasattr(layer, "outputs") else [layer.output]


def round_half_even(x) -> np.ndarray:
    return np.rint(np.asarray(x, dtype=np.float64))


def clip_bounds(lo: float, hi: float, scale: float, zp: int) -> tuple[int, int]:
    """int8 bounds equivalent to clamping the real value to [lo, hi] before
    quantization (quantization is monotonic, so the clamp commutes)."""
    if lo == 0.0:
        lo_q, hi_q = fixed_point.relu_clip(zp, scale, None if math.isinf(hi) else hi)
    else:
        lo_q = fixed_point.INT8_MIN if math.isinf(lo) else zp + int(round_half_even(lo / scale))
        hi_q = fixed_point.INT8_MAX if math.isinf(hi) else zp + int(round_half_even(hi / scale))
    lo_q = min(max(lo_q, fixed_point.INT8_MIN), fixed_point.INT8_MAX)
    hi_q = min(max(hi_q, fixed_point.INT8_MIN), fixed_point.INT8_MAX)
    return (min(lo_q, hi_q), hi_q)  # ONNX Clip with min > max yields max




def per_channel_scales(scale, n: int, axis: int, ndim: int, want_axis: int, what: str, op, name) -> np.ndarray:
    """Scales as a float64 [n] vector along want_axis (per-tensor broadcast)."""
    s = np.asarray(scale, dtype=np.float64).ravel()
    if s.size == 1:
        return np.full(n, s[0])
    if (axis % ndim) != want_axis or s.size != n:
        raise UnsupportedOperatorError(
            op,
            name,
            f"{what} is quantized per channel along axis {axis}; only per-output-channel scales fold into the requantization",
        )
    return s



def quantize_array(x, scale, zp, axis) -> np.ndarray:
    """ONNX QuantizeLinear on a constant (per-tensor or per-axis)."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zp)
    if scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = scale.size
        scale, zpb = scale.reshape(shape), zp.reshape(shape)
    else:
        zpb = zp
    info = np.iinfo(zp.dtype)
    q = np.rint(x / scale) + zpb.astype(np.float64)
    return np.clip(q, info.min, info.max).astype(zp.dtype)
