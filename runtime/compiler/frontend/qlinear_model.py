"""What an integer (QOperator) ONNX model becomes: the layer IR plus the map
between its ONNX integer tensors and the core's int8 ones, and the pool and
weight-plane helpers its reader uses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from vfpga.runtime.compiler import ir

from .errors import FrontendError, UnsupportedOperatorError
from .ops import resolve_pads

# Ops this reader maps onto the core (domain "" unless listed in MS_OPS).
INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "MaxPool",
        "Relu",
        "Clip",
        "QuantizeLinear",
        "DequantizeLinear",
        "Flatten",
        "Reshape",
        "Identity",
        "Squeeze",
        "Unsqueeze",
    }
)
MS_OPS = frozenset({"QLinearAdd", "QLinearAveragePool", "QLinearGlobalAveragePool", "QGemm"})
# Ops whose presence makes a model an integer (QOperator) model.
QOPERATOR_MARKERS = frozenset({"QLinearConv", "QLinearMatMul"}) | MS_OPS
# Integer ops the core cannot produce, and why.
NOT_ON_CORE = {
    "ConvInteger": "it outputs the int32 accumulators, and the CNN core always requantizes to int8 "
    "before anything leaves it (no int32 path to DDR)",
    "MatMulInteger": "it outputs the int32 accumulators, and the CNN core always requantizes to int8 "
    "before anything leaves it (no int32 path to DDR)",
}
# Activation operand positions of the ops above (the rest are parameters).
ACTIVATION_SLOTS = {
    "QLinearConv": (0,),
    "QLinearMatMul": (0,),
    "QLinearAdd": (0, 3),
    "QGemm": (0,),
    "QLinearAveragePool": (0,),
    "QLinearGlobalAveragePool": (0,),
    "ConvInteger": (0,),
    "MatMulInteger": (0,),
    "MaxPool": (0,),
    "Relu": (0,),
    "Clip": (0,),
    "QuantizeLinear": (0,),
    "DequantizeLinear": (0,),
    "Flatten": (0,),
    "Reshape": (0,),
    "Identity": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
}

# dtype in which M = x_scale * w_scale / y_scale is formed before it becomes
# (mult, shift): float32 like ONNX's reference, which makes mult exact.
REQUANT_DTYPE = np.float32

INT_TYPES = {TensorProto.INT8: np.dtype(np.int8), TensorProto.UINT8: np.dtype(np.uint8)}


def storage_offset(dtype) -> int:
    """What is subtracted to store a value of ``dtype`` as the core's int8."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 128
    if dtype == np.int8:
        return 0
    raise FrontendError(f"integer tensors of type {dtype} are not int8/uint8; the CNN core is int8")


def is_integer_model(model: onnx.ModelProto) -> bool:
    """QOperator ops, the integer ops the core lacks, or an int8/uint8 graph input."""
    ops = {n.op_type for n in model.graph.node}
    if ops & (QOPERATOR_MARKERS | set(NOT_ON_CORE)):
        return True
    inits = {t.name for t in model.graph.initializer}
    return any(
        i.type.tensor_type.elem_type in INT_TYPES for i in model.graph.input if i.name not in inits
    )


# ---------------------------------------------------------------- host I/O


@dataclass
class IOMap:
    """How one ONNX graph input/output maps onto an IR tensor (batch 1).

    kind: "nchw"  ONNX [N, C, H, W] <-> N requests of HWC (H, W, C)
          "flat"  ONNX [N, H*W*C] in NCHW-flatten order <-> N requests of (H, W, C)
          "rows"  ONNX [K], [M, K] or [B, M, K] <-> one request of (1, 1, K), (1, M, K), (B, M, K)
          "grouped" ONNX [B, M, K] <-> one request of (1, M, B*K) (batch in the channels)
    dtype: the ONNX element type. Integer values are stored shifted
    (uint8 - 128); float values are quantized/dequantized with
    (scale, zero_point) on the host, as QuantizeLinear/DequantizeLinear do."""

    onnx_name: str
    ir_name: str
    kind: str
    hwc: tuple[int, int, int]
    dtype: np.dtype
    scale: float | None = None  # float I/O only
    zero_point: int | None = None  # in the ONNX integer type (float I/O only)
    qtype: np.dtype | None = None  # the integer type of that zero point

    def _int_offset(self) -> int:
        return storage_offset(self.qtype if self.scale is not None else self.dtype)

    def split(self, arr: np.ndarray) -> list[np.ndarray]:
        """ONNX input array -> int8 HWC arrays, one per request."""
        arr = np.asarray(arr)
        if self.scale is not None:  # QuantizeLinear on the host: saturate(rint(x / s) + zp)
            if not np.issubdtype(arr.dtype, np.floating):
                raise FrontendError(f"input '{self.onnx_name}': expected a float tensor, got {arr.dtype}")
            info = np.iinfo(self.qtype)
            q = np.rint(arr.astype(np.float32) / np.float32(self.scale)) + self.zero_point
            q = np.clip(q, info.min, info.max).astype(np.int64)
        else:
            if arr.dtype != self.dtype:
                raise FrontendError(f"input '{self.onnx_name}': expected {self.dtype}, got {arr.dtype}")
            q = arr.astype(np.int64)
        s = (q - self._int_offset()).astype(np.int8)
        h, w, c = self.hwc
        if self.kind == "nchw":
            if s.ndim != 4 or s.shape[1:] != (c, h, w):
                raise FrontendError(f"input '{self.onnx_name}': expected [N, {c}, {h}, {w}], got {list(s.shape)}")
            return [np.ascontiguousarray(a.transpose(1, 2, 0)) for a in s]
        if self.kind == "grouped":
            b, m, k = s.shape
            return [np.ascontiguousarray(s.transpose(1, 0, 2).reshape(1, m, b * k))]
        if s.size != h * w * c:
            raise FrontendError(f"input '{self.onnx_name}': expected {h * w * c} values, got {list(s.shape)}")
        return [np.ascontiguousarray(s.reshape(h, w, c))]

    def join(self, outs: list[np.ndarray], onnx_shape) -> np.ndarray:
        """int8 HWC results of the requests -> the ONNX output array."""
        h, w, c = self.hwc
        if self.kind == "nchw":
            v = np.stack([o.transpose(2, 0, 1) for o in outs])
        elif self.kind == "flat":
            v = np.stack([o.transpose(2, 0, 1).reshape(-1) for o in outs])
        elif self.kind == "grouped":
            b, m, n = onnx_shape
            v = outs[0].reshape(m, b, n).transpose(1, 0, 2)
        else:
            v = outs[0].reshape(onnx_shape)
        v = v.astype(np.int64) + self._int_offset()
        if self.scale is not None:  # DequantizeLinear on the host
            return ((v - self.zero_point).astype(np.float32) * np.float32(self.scale)).astype(self.dtype)
        return np.ascontiguousarray(v.astype(self.dtype))


@dataclass
class IntegerModel:
    """An integer ONNX model as one IR graph plus its host-side I/O maps."""

    graph: ir.Graph
    input: IOMap
    outputs: list[IOMap]
    output_shapes: list[tuple[int, ...] | None]
    # ONNX nodes that are not layers: views (addresses only, on the
    # accelerator's tensors) and the boundary Quantize/DequantizeLinear,
    # which the host applies while it writes/reads the tensors.
    extra_placement: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- reader


@dataclass
class QValue:
    """An ONNX integer value: IR tensor + how ONNX sees it."""

    ir: str
    kind: str  # nchw | flat | rows | grouped
    onnx_shape: tuple[int, ...]
    dtype: np.dtype  # ONNX element type (int8/uint8)


def pool_geometry(op, nname, attrs, in_hw, avg_count_pad=False):
    """kernel, strides, pads (ceil_mode as extra bottom/right padding that no
    window reads) of a 2-D MaxPool/AveragePool."""
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    if len(kernel) != 2:
        raise UnsupportedOperatorError(op, nname, f"{len(kernel)}-D pooling (only 2-D)")
    if any(int(d) != 1 for d in attrs.get("dilations", [1, 1])):
        raise UnsupportedOperatorError(op, nname, f"dilations {list(attrs['dilations'])} (only 1)")
    strides = tuple(int(s) for s in attrs.get("strides", [1, 1]))
    pads = resolve_pads(op, nname, attrs, in_hw, kernel, strides)
    if attrs.get("ceil_mode", 0):
        extra = []
        for i in range(2):
            size = in_hw[i] + pads[i] + pads[i + 2]
            out = -(-(size - kernel[i]) // strides[i]) + 1
            if (out - 1) * strides[i] >= in_hw[i] + pads[i]:  # the last window must start inside
                out -= 1
            extra.append(max((out - 1) * strides[i] + kernel[i] - size, 0))
        if any(extra) and avg_count_pad:
            raise UnsupportedOperatorError(op, nname, "ceil_mode with count_include_pad=1")
        pads = (pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1])
    return kernel, strides, pads


def weight_planes(w_eff: np.ndarray) -> list[np.ndarray]:
    """Split an integer weight into the fewest int8 planes that sum to it."""
    w = np.asarray(w_eff, dtype=np.int64)
    p = max(1, math.ceil(max(int(w.max(initial=0)), 0) / 127), math.ceil(max(-int(w.min(initial=0)), 0) / 128))
    planes, rest = [], w.copy()
    for i in range(p):
        part = rest if i == p - 1 else np.clip(rest, -128, 127)
        planes.append(part.astype(np.int8))
        rest = rest - part
    assert not rest.any() and all(-128 <= int(q.min()) and int(q.max()) <= 127 for q in planes)
    return planes
