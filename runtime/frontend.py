"""ONNX front end: load a model, quantize it with onnxruntime (static, QDQ)
and read the QDQ model into the integer layer graph of :mod:`vfpga.runtime.ir`.

The QDQ model is the single source of the quantization: every int8 tensor of
the IR is the output of one QuantizeLinear (its scale/zero point), every
layer is one compute node between DequantizeLinear(s) and a QuantizeLinear,
and the layer's integer parameters are derived from those scales exactly as
onnxruntime's integer kernels (QLinearConv, ...) would use them, so per-layer
results agree with onnxruntime to within rounding of the requantization.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from . import ir, quant

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# Ops the CNN core executes (after fusion), plus the layout/no-op and QDQ
# plumbing the reader resolves away. Everything else raises
# UnsupportedOperatorError from _Reader.unsupported(): that is where the CPU
# fallback (onnxruntime on the cut-out subgraph, a later issue) will plug in.
ACCELERATOR_OPS = frozenset(
    {
        "Conv",
        "Gemm",
        "MatMul",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Add",
        "Sum",
        "Relu",
        "Clip",
    }
)
VIEW_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
QOPERATOR_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd"}
)


class FrontendError(ValueError):
    """The model cannot be taken by the accelerator path as it is."""


class UnsupportedOperatorError(FrontendError):
    """An operator (or an attribute of it) the accelerator does not have.

    Carries op_type/node_name/reason so a partitioner can catch it and cut the
    node out into a CPU subgraph instead."""

    def __init__(self, op_type: str, node_name: str, reason: str = ""):
        self.op_type, self.node_name, self.reason = op_type, node_name, reason
        msg = f"operator {op_type} (node '{node_name}') is not supported by the accelerator"
        super().__init__(msg + (f": {reason}" if reason else ""))


# ---------------------------------------------------------------- loading


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    # Older exporters list initializers among the graph inputs.
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> list | None:
    """Static dims of a value (None for an unknown dim), or None without shape."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]


def load_model(model, input_shape=None) -> onnx.ModelProto:
    """Load and validate a model for the accelerator path.

    model: a path, serialized bytes or an onnx.ModelProto (copied, never
    modified). input_shape: explicit [1, C, H, W] for a model whose input
    has dynamic/unknown dims. Raises FrontendError naming the problem."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        what = "the given ModelProto"
    elif isinstance(model, (bytes, bytearray)):
        what = "the given bytes"
        try:
            proto = onnx.load_model_from_string(bytes(model))
        except DecodeError as e:
            raise FrontendError(f"{what} are not an ONNX model (protobuf parse failed: {e})") from e
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        what = f"'{path}'"
        if not os.path.isfile(path):
            raise FrontendError(f"no such model file: {path}")
        try:
            proto = onnx.load(path)
        except DecodeError as e:
            raise FrontendError(f"{what} is not an ONNX model (protobuf parse failed: {e})") from e
        except Exception as e:  # e.g. external data files missing next to the model
            raise FrontendError(f"cannot load ONNX model {what}: {e}") from e
    else:
        raise TypeError(f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")

    # Protobuf parses many byte strings into *some* message; the checker
    # tells an ONNX model from an accident.
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise FrontendError(f"{what} is not a valid ONNX model (onnx.checker: {e})") from e

    inputs = _real_inputs(proto)
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise FrontendError(
            f"the model has {len(inputs)} inputs ({names}); the accelerator path takes exactly one"
        )
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        dt = TensorProto.DataType.Name(inp.type.tensor_type.elem_type)
        raise FrontendError(f"input '{inp.name}' has element type {dt}; expected a float32 NCHW image tensor")

    dims = _dims(inp)
    if input_shape is not None:
        _override_input_shape(proto, inp, dims, input_shape)
        dims = _dims(inp)
    if dims is None:
        raise FrontendError(f"input '{inp.name}' has no shape; pass input_shape=(1, C, H, W)")
    for i, d in enumerate(dims):
        if d is None:
            sym = inp.type.tensor_type.shape.dim[i].dim_param
            label = f"'{sym}'" if sym else "unknown"
            raise FrontendError(
                f"input '{inp.name}' has a dynamic dimension {i} ({label}); "
                f"pass input_shape=(1, C, H, W) to fix it"
            )
    if not dims or dims[0] != 1:
        raise FrontendError(
            f"input '{inp.name}' has batch {dims[0] if dims else '?'} (shape {dims}); batch 1 is what the "
            f"accelerator path runs: export the model with batch 1"
        )
    return proto


def _override_input_shape(proto, inp, dims, input_shape) -> None:
    shape = [int(d) for d in input_shape]
    if any(d <= 0 for d in shape):
        raise FrontendError(f"input_shape must be positive integers, got {tuple(input_shape)}")
    if dims is not None and len(dims) != len(shape):
        raise FrontendError(
            f"input_shape {tuple(shape)} has rank {len(shape)}; input '{inp.name}' has rank {len(dims)}"
        )
    for i, (d, s) in enumerate(zip(dims or [], shape)):
        if d is not None and d != s:
            raise FrontendError(
                f"input_shape {tuple(shape)} conflicts with the fixed dimension {i} = {d} of input '{inp.name}'"
            )
    tt = inp.type.tensor_type
    tt.ClearField("shape")
    for s in shape:
        tt.shape.dim.add().dim_value = s
    # Stale symbolic shapes downstream would clash with the now static ones.
    del proto.graph.value_info[:]
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception as e:
        raise FrontendError(f"shape inference failed with input_shape {tuple(shape)}: {e}") from e
    proto.CopyFrom(inferred)


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Old exporters (IR < 4) list every initializer as a graph input too;
    onnxruntime's quantization then expects them fed. They are the model's
    weights, so make them plain initializers."""
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)


def _sum_to_add(model: onnx.ModelProto) -> None:
    """Two-input Sum (Caffe2-era residuals) as Add: the same values, and Add
    is an op onnxruntime quantizes (it leaves Sum, and what follows, float)."""
    for n in model.graph.node:
        if n.op_type == "Sum" and n.domain in ("", "ai.onnx") and len(n.input) == 2:
            n.op_type = "Add"


def _onnx_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 0


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


# ---------------------------------------------------------------- quantization


def _calibration_samples(calibration, name: str, shape: list[int]) -> list[dict]:
    """Normalise user calibration data to a list of {input: float32 [1,C,H,W]}."""
    if isinstance(calibration, np.ndarray):
        arr = calibration
        # One sample (with or without the batch axis), or N samples stacked on the batch axis.
        items = [arr] if arr.ndim < len(shape) or arr.shape[0] == 1 else list(arr)
    else:
        items = list(calibration)
    if not items:
        raise FrontendError("calibration data is empty")
    out = []
    for k, item in enumerate(items):
        x = item[name] if isinstance(item, dict) else item
        x = np.asarray(x)
        if x.ndim == len(shape) - 1:
            x = x[None]
        if not np.issubdtype(x.dtype, np.floating) or tuple(x.shape) != tuple(shape):
            raise FrontendError(
                f"calibration sample {k} has {x.dtype} shape {tuple(x.shape)}; expected float32 {list(shape)}"
            )
        out.append({name: np.ascontiguousarray(x, dtype=np.float32)})
    return out


def quantize(
    model,
    calibration=None,
    seed: int = 0,
    *,
    input_shape=None,
    num_random: int = 16,
    extra_options: dict | None = None,
) -> onnx.ModelProto:
    """Static int8 quantization to QDQ with onnxruntime.

    Weights int8 symmetric per output channel, activations int8 asymmetric
    (MinMax calibration). calibration: an array of one sample or N samples
    stacked on the batch axis, an iterable of arrays or {input: array} dicts,
    or None for num_random generated inputs (with a warning: int8 accuracy
    depends on representative data). Models that already hold
    QuantizeLinear/DequantizeLinear are returned as loaded. extra_options are
    merged over the defaults and passed to onnxruntime's quantize_static."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = load_model(model, input_shape=input_shape)
    if is_qdq(proto):
        return proto
    qop = sorted({n.op_type for n in proto.graph.node if n.op_type in QOPERATOR_OPS})
    if qop:
        raise FrontendError(
            f"the model is already quantized in QOperator format ({', '.join(qop)}); "
            f"vfpga reads QDQ models: quantize the float model with QuantFormat.QDQ"
        )
    opset = _onnx_opset(proto)
    if opset < 13:  # per-channel QDQ (DequantizeLinear axis) needs opset 13
        try:
            proto = onnx.version_converter.convert_version(proto, 13)
        except Exception as e:
            raise FrontendError(
                f"cannot convert the model from opset {opset} to 13 for quantization: {e}"
            ) from e

    _drop_initializer_inputs(proto)
    _sum_to_add(proto)
    inp = _real_inputs(proto)[0]
    shape = _dims(inp)
    if calibration is None:
        warnings.warn(
            f"no calibration data given: quantizing with {num_random} random inputs; the int8 model's "
            f"accuracy depends on representative data, pass calibration= with real inputs",
            UserWarning,
            stacklevel=2,
        )
        rng = np.random.default_rng(seed)
        samples = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(num_random)]
    else:
        samples = _calibration_samples(calibration, inp.name, shape)

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

    options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    options.update(extra_options or {})
    with tempfile.TemporaryDirectory(prefix="vfpga-quant-") as tmp:
        src, pre, out = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "qdq.onnx"))
        onnx.save(proto, src)
        # Shape inference + basic graph optimisations (constant folding,
        # Conv+BatchNorm folding, Identity/Dropout removal); symbolic shape
        # inference is for transformers and would need sympy.
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        if not os.path.isfile(pre):
            raise FrontendError("onnxruntime quantization pre-processing failed (see the log above)")
        try:
            quantize_static(
                pre,
                out,
                _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                extra_options=options,
            )
        except (AssertionError, ValueError, RuntimeError) as e:  # ORT asserts on NaN/inf ranges
            raise FrontendError(
                f"onnxruntime static quantization failed: {type(e).__name__}: {e} "
                f"(non-finite activations on the calibration data give this too)"
            ) from e
        return onnx.load(out)


# ---------------------------------------------------------------- host-side I/O


def _onnx_layout(tensor: ir.Tensor) -> tuple[int, ...]:
    h, w, c = tensor.shape
    return tuple(tensor.onnx_shape) if tensor.onnx_shape is not None else (1, c, h, w)


def quantize_input(x, tensor: ir.Tensor) -> np.ndarray:
    """Float NCHW input -> int8 HWC as ONNX QuantizeLinear does it:
    saturate(round_half_even(x / scale) + zero_point), in float32."""
    expected = _onnx_layout(tensor)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise FrontendError(
            f"model input: expected float32 NCHW {list(expected)}, got dtype {x.dtype}"
        )
    if tuple(x.shape) != expected:
        raise FrontendError(
            f"model input: expected float32 NCHW {list(expected)}, got shape {list(x.shape)}"
        )
    q = np.rint(x.astype(np.float32) / np.float32(tensor.scale)) + tensor.zero_point
    q = np.clip(q, quant.INT8_MIN, quant.INT8_MAX).astype(np.int8)
    h, w, c = tensor.shape
    return np.ascontiguousarray(q.reshape(c, h, w).transpose(1, 2, 0))


def dequantize_output(q, tensor: ir.Tensor) -> np.ndarray:
    """int8 HWC -> float32 in the ONNX output's layout (NCHW, or the
    flattened [1, K] for a fully-connected output): (q - zp) * scale."""
    q = np.asarray(q)
    if q.dtype != np.int8 or tuple(q.shape) != tuple(tensor.shape):
        raise FrontendError(
            f"output '{tensor.name}': expected int8 HWC {list(tensor.shape)}, got {q.dtype} {list(q.shape)}"
        )
    x = (q.astype(np.float32) - np.float32(tensor.zero_point)) * np.float32(tensor.scale)
    return np.ascontiguousarray(x.transpose(2, 0, 1)).reshape(_onnx_layout(tensor))


# ---------------------------------------------------------------- QDQ -> IR


@dataclass
class _Ref:
    """A value equal to an IR int8 tensor (dequantized, if it is a float),
    possibly seen through a reshape: flat means ONNX sees it as the
    NCHW-flattened [1, C*H*W]."""

    q: str
    flat: bool = False
    nodes: list = field(default_factory=list)  # view nodes on the way


@dataclass
class _QConst:
    """A constant behind a DequantizeLinear: integer data and its qparams."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


@dataclass
class _Pending:
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


def _hwc(shape, what: str) -> tuple[int, int, int]:
    s = list(shape)
    if len(s) == 4 and s[0] == 1:
        return (s[2], s[3], s[1])
    if len(s) == 2 and s[0] == 1:
        return (1, 1, s[1])
    raise FrontendError(f"{what} has shape {s}; the accelerator handles [1, C, H, W] and [1, K] tensors")


def _layer_inputs(layer) -> list[str]:
    return list(layer.inputs) if layer.kind == "add" else [layer.input]


def _round_half_even(x) -> np.ndarray:
    return np.rint(np.asarray(x, dtype=np.float64))


def _clip_bounds(lo: float, hi: float, scale: float, zp: int) -> tuple[int, int]:
    """int8 bounds equivalent to clamping the real value to [lo, hi] before
    quantization (quantization is monotonic, so the clamp commutes)."""
    if lo == 0.0:
        lo_q, hi_q = quant.relu_clip(zp, scale, None if math.isinf(hi) else hi)
    else:
        lo_q = quant.INT8_MIN if math.isinf(lo) else zp + int(_round_half_even(lo / scale))
        hi_q = quant.INT8_MAX if math.isinf(hi) else zp + int(_round_half_even(hi / scale))
    lo_q = min(max(lo_q, quant.INT8_MIN), quant.INT8_MAX)
    hi_q = min(max(hi_q, quant.INT8_MIN), quant.INT8_MAX)
    return (min(lo_q, hi_q), hi_q)  # ONNX Clip with min > max yields max


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _resolve_pads(node, attrs, in_hw, kernel, strides, name) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) from pads or auto_pad."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        p = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(p) != 4:
            raise UnsupportedOperatorError(node.op_type, name, f"pads {p} (only 2-D is supported)")
        return (p[0], p[1], p[2], p[3])  # ONNX order [y_begin, x_begin, y_end, x_end]
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s in zip(in_hw, kernel, strides):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            small, big = total // 2, total - total // 2
            b, e = (small, big) if auto == "SAME_UPPER" else (big, small)
            begin.append(b)
            end.append(e)
        return (begin[0], begin[1], end[0], end[1])
    raise UnsupportedOperatorError(node.op_type, name, f"auto_pad {auto}")


def _per_channel(scale, n: int, axis: int, ndim: int, want_axis: int, what: str, op, name) -> np.ndarray:
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


class _Reader:
    """One pass over the (topologically ordered) QDQ graph."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and len(n.attribute) == 1:
                a = n.attribute[0]
                v = (
                    numpy_helper.to_array(a.t)
                    if a.name == "value"
                    else np.asarray(helper.get_attribute_value(a))
                )
                self.consts[n.output[0]] = v
        self.shapes = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            d = _dims(vi)
            if d is not None and None not in d:
                self.shapes[vi.name] = tuple(d)
        self.input_name = _real_inputs(model)[0].name
        self.tensors: dict[str, ir.Tensor] = {}
        self.layers: list = []
        self.qref: dict[str, _Ref] = {}  # int8 value -> IR tensor
        self.fref: dict[str, _Ref] = {}  # float value == dequantized IR tensor
        self.qconst: dict[str, _QConst] = {}  # float value == dequantized constant
        self.int_consts: dict[str, tuple] = {}  # int8 value == quantized constant
        self.pending: dict[str, _Pending] = {}
        self.forked: dict[str, str] = {}  # pending value -> the fused op that took it
        self.input_q: str | None = None
        self.names: set[str] = set()

    # ---- helpers

    def unsupported(self, node, name, reason=""):
        """The single exit for ops the core lacks. CPU fallback hook: the
        partitioner will catch UnsupportedOperatorError here and cut the
        node out instead."""
        raise UnsupportedOperatorError(node.op_type, name, reason)

    def const(self, name, node, nname, what):
        if name not in self.consts:
            self.unsupported(node, nname, f"{what} '{name}' must be a constant")
        return self.consts[name]

    def qparams(self, node, nname):
        scale = np.asarray(self.const(node.input[1], node, nname, "scale"), dtype=np.float64)
        if len(node.input) > 2 and node.input[2]:
            zp = self.const(node.input[2], node, nname, "zero point")
        else:
            zp = np.zeros(scale.shape, dtype=np.uint8)  # ONNX default: uint8, zero 0
        if "block_size" in _attrs(node) and _attrs(node)["block_size"]:
            self.unsupported(node, nname, "blocked quantization")
        return scale, np.asarray(zp)

    def act(self, node, nname, i) -> _Ref:
        """The IR tensor behind activation input i of a compute node."""
        name = node.input[i]
        if name in self.fref:
            return self.fref[name]
        if name in self.pending or name == self.input_name:
            raise FrontendError(
                f"{node.op_type} '{nname}' reads the float tensor '{name}', which is not quantized "
                f"(no QuantizeLinear/DequantizeLinear in between); the accelerator computes in int8 only"
            )
        if name in self.consts or name in self.qconst:
            self.unsupported(node, nname, f"constant operand '{name}' where an activation is expected")
        raise FrontendError(f"{node.op_type} '{nname}' reads '{name}', which is not a quantized activation")

    def spatial_ok(self, ref: _Ref, node, nname):
        h, w, _ = self.tensors[ref.q].shape
        if ref.flat and h * w > 1:
            self.unsupported(
                node,
                nname,
                "it reads a flattened HxWxC tensor with HxW > 1; flattening is a layout "
                "no-op in HWC only when it feeds Gemm/MatMul",
            )

    def weight(self, name, node, nname) -> _QConst:
        if name not in self.qconst:
            self.unsupported(
                node, nname, f"weight '{name}' is not an int8 constant behind a DequantizeLinear"
            )
        w = self.qconst[name]
        if w.values.dtype != np.int8 or np.any(w.zero_point != 0):
            self.unsupported(node, nname, f"weight '{name}' must be int8 with zero point 0 (symmetric)")
        return w

    def bias(self, name, node, nname, n, acc_scale, beta=1.0) -> np.ndarray:
        """int32 bias (times beta) in accumulator units (acc_scale, which is
        in_scale * w_scale, times Gemm's alpha)."""
        if not name:
            return np.zeros(n, dtype=np.int32)
        size = self.qconst[name].values.size if name in self.qconst else np.size(self.consts.get(name, 0))
        if size not in (1, n):
            raise FrontendError(f"{node.op_type} '{nname}': bias '{name}' has {size} values for {n} outputs")
        if name in self.qconst:
            b = self.qconst[name]
            vals = np.broadcast_to(b.values.reshape(-1), (n,))
            bscale = np.broadcast_to(np.asarray(b.scale, dtype=np.float64).ravel(), (n,))
            bzp = np.broadcast_to(np.asarray(b.zero_point, dtype=np.int64).ravel(), (n,))
            if (
                b.values.dtype == np.int32
                and not np.any(bzp)
                and np.allclose(beta * bscale, acc_scale, rtol=1e-6, atol=0)
            ):
                return np.asarray(vals, dtype=np.int32).copy()  # onnxruntime's own int32 bias
            real = (vals.astype(np.float64) - bzp) * bscale
        elif name in self.consts:
            real = np.broadcast_to(np.asarray(self.consts[name], dtype=np.float64).reshape(-1), (n,))
        else:
            self.unsupported(node, nname, f"bias '{name}' must be a constant")
        q = _round_half_even(beta * real / acc_scale)
        return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)

    def layer_name(self, node, idx):
        name = node.name or f"{node.op_type}_{idx}"
        base, k = name, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def add_tensor(self, name, shape, scale, zp):
        self.tensors[name] = ir.Tensor(name, tuple(int(v) for v in shape), float(scale), int(zp))

    # ---- the walk

    def read(self) -> ir.Graph:
        handlers = {
            "QuantizeLinear": self.on_quantize,
            "DequantizeLinear": self.on_dequantize,
            "Conv": self.on_conv,
            "Gemm": self.on_gemm,
            "MatMul": self.on_matmul,
            "MaxPool": self.on_pool,
            "AveragePool": self.on_pool,
            "GlobalAveragePool": self.on_pool,
            "GlobalMaxPool": self.on_pool,
            "Add": self.on_add,
            "Sum": self.on_add,  # two-input Sum (Caffe2 exports) is Add
            "Relu": self.on_activation,
            "Clip": self.on_activation,
        }
        for v in VIEW_OPS:
            handlers[v] = self.on_view
        for idx, node in enumerate(self.model.graph.node):
            if node.op_type == "Constant":
                continue
            nname = node.name or f"{node.op_type}_{idx}"
            handler = handlers.get(node.op_type) if node.domain in ("", "ai.onnx", "com.microsoft") else None
            if handler is None or (node.domain == "com.microsoft" and node.op_type not in QDQ_OPS):
                self.unsupported(node, nname)
            handler(node, nname, idx)
        return self.finish()

    def on_quantize(self, node, nname, idx):
        x, out = node.input[0], node.output[0]
        scale, zp = self.qparams(node, nname)
        if x in self.consts:  # weight kept as float + Q/DQ pair (AddQDQPairToWeight)
            axis = _attrs(node).get("axis", 1)
            vals = _quantize_array(self.consts[x], scale, zp, axis)
            self.int_consts[out] = (vals, scale, zp, axis)
            return
        if zp.dtype != np.int8 or scale.size != 1:
            raise FrontendError(
                f"QuantizeLinear '{nname}' quantizes '{x}' to {zp.dtype} with {scale.size} scale(s); vfpga "
                f"activations are int8 per tensor (quantize with activation_type=QInt8, per-tensor activations)"
            )
        s, z = float(scale.ravel()[0]), int(zp.ravel()[0])
        if x == self.input_name:
            if self.input_q is None:
                self.input_q = out
                self.add_tensor(out, _hwc(self.shapes[x], f"input '{x}'"), s, z)
                self.qref[out] = _Ref(out)
                return
            ref = _Ref(self.input_q)
        elif x in self.fref:
            ref = self.fref[x]
        elif x in self.pending:
            self.finalize(self.pending[x], out, s, z, nname)
            return
        elif x in self.forked:
            raise FrontendError(
                f"QuantizeLinear '{nname}' reads '{x}', which also feeds '{self.forked[x]}'; "
                f"the accelerator cannot fork a float value"
            )
        else:
            raise FrontendError(
                f"QuantizeLinear '{nname}' reads '{x}', which the accelerator path cannot produce"
            )
        src = self.tensors[ref.q]
        if (src.scale, src.zero_point) == (s, z):  # Q(DQ(q)) with equal params: the same int8 data
            self.qref[out] = ref
            return
        # Requantization to other params: a 1x1 pool applies the multiplier.
        name = self.layer_name(node, idx)
        mult, shift = quant.quantize_multiplier(src.scale / s, max_shift=30)
        self.add_tensor(out, src.shape, s, z)
        self.layers.append(
            ir.Pool(name, ref.q, out, "max", (1, 1), mult=mult, shift=shift, onnx_nodes=ref.nodes + [nname])
        )
        self.qref[out] = _Ref(out, ref.flat)

    def on_dequantize(self, node, nname, idx):
        x, out = node.input[0], node.output[0]
        scale, zp = self.qparams(node, nname)
        axis = _attrs(node).get("axis", 1)
        if x in self.consts:
            self.qconst[out] = _QConst(np.asarray(self.consts[x]), scale, zp, axis)
        elif x in self.int_consts:
            self.qconst[out] = _QConst(*self.int_consts[x])
        elif x in self.qref:
            ref = self.qref[x]
            t = self.tensors[ref.q]
            if scale.size != 1 or (t.scale, t.zero_point) != (float(scale.ravel()[0]), int(zp.ravel()[0])):
                raise FrontendError(
                    f"DequantizeLinear '{nname}' reads '{x}' with other parameters than its QuantizeLinear wrote"
                )
            self.fref[out] = ref
        else:
            raise FrontendError(
                f"DequantizeLinear '{nname}' reads '{x}', which is neither a constant nor a quantized tensor"
            )

    def on_view(self, node, nname, idx):
        x, out = node.input[0], node.output[0]
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            self.unsupported(node, nname, "Dropout mask output")
        if out not in self.shapes:
            raise FrontendError(f"{node.op_type} '{nname}': output shape unknown after shape inference")
        new = self.shapes[out]

        def view(hwc, flat_in):
            h, w, c = hwc
            if node.op_type in ("Identity", "Dropout"):
                return flat_in
            if list(new) == [1, c, h, w]:  # also un-flattening back: same HWC data
                return False
            if h * w == 1 and int(np.prod(new)) == c and (len(new) == 2 or len(new) == 4) and new[0] == 1:
                return len(new) == 2
            if list(new) == [1, h * w * c]:
                return True
            self.unsupported(node, nname, f"reshape of HWC {hwc} to {list(new)} changes the memory layout")

        if x in self.fref or x in self.qref:
            table = self.fref if x in self.fref else self.qref
            ref = table[x]
            table[out] = _Ref(ref.q, view(self.tensors[ref.q].shape, ref.flat), ref.nodes + [nname])
        elif x in self.pending:
            p = self.take_pending(x, node, nname)
            p.flat = view(p.shape, p.flat)
            p.nodes.append(nname)
            self.pending[out] = p
        else:
            raise FrontendError(f"{node.op_type} '{nname}' reads '{x}', which is not a quantized activation")

    def on_activation(self, node, nname, idx):
        x, out = node.input[0], node.output[0]
        if node.op_type == "Relu":
            lo, hi = 0.0, math.inf
        else:
            a = _attrs(node)
            lo, hi = a.get("min", -math.inf), a.get("max", math.inf)  # opset < 11
            if len(node.input) > 1 and node.input[1]:
                lo = float(self.const(node.input[1], node, nname, "Clip min"))
            if len(node.input) > 2 and node.input[2]:
                hi = float(self.const(node.input[2], node, nname, "Clip max"))
        if x in self.pending:  # Conv -> Relu -> Q: fold into the producer's clamp
            p = self.take_pending(x, node, nname)
            p.lo, p.hi = max(p.lo, lo), min(p.hi, hi)
            p.nodes.append(nname)
            self.pending[out] = p
            return
        ref = self.act(node, nname, 0)
        t = self.tensors[ref.q]
        name = self.layer_name(node, idx)

        # DQ -> Relu -> Q: a standalone 1x1 max pool (requantizing, clamping);
        # finish() folds it into the producer when the params make that exact.
        def build(out_t, clip):
            mult, shift = quant.quantize_multiplier(t.scale / out_t.scale, max_shift=30)
            return ir.Pool(
                name,
                ref.q,
                out_t.name,
                "max",
                (1, 1),
                mult=mult,
                shift=shift,
                clip=clip,
                onnx_nodes=ref.nodes + [nname],
            )

        self.pending[out] = _Pending(build, t.shape, [], nname, ref.flat, lo, hi)

    def take_pending(self, x, node, nname) -> _Pending:
        """Move a pending float value on through a fused op (view, Relu)."""
        p = self.pending[x]
        if p.done is not None:
            raise FrontendError(
                f"{node.op_type} '{nname}' reads the float output of '{p.producer}', which is also quantized "
                f"as it is; the accelerator cannot fork a float value"
            )
        del self.pending[x]
        self.forked[x] = nname
        return p

    def finalize(self, p: _Pending, out: str, scale: float, zp: int, qname: str):
        if p.done is not None:  # one Q per consumer (DedicatedQDQPair): the same int8 data
            first, s0, z0 = p.done
            if (s0, z0) != (scale, zp):
                raise FrontendError(
                    f"the float output of '{p.producer}' is quantized twice with different parameters ('{qname}')"
                )
            self.qref[out] = _Ref(first, p.flat)
            return
        p.done = (out, scale, zp)
        if out in self.shapes:
            got = _hwc(self.shapes[out], f"'{out}'")
            if got != tuple(p.shape):
                raise FrontendError(
                    f"'{p.producer}': computed output shape {p.shape} (HWC) but ONNX infers {got}"
                )
        self.add_tensor(out, p.shape, scale, zp)
        try:
            layer = p.build(self.tensors[out], _clip_bounds(p.lo, p.hi, scale, zp))
        except ValueError as e:  # e.g. a requantization multiplier >= 2**31
            raise FrontendError(f"'{p.producer}' cannot be requantized to '{out}': {e}") from e
        layer.onnx_nodes = list(layer.onnx_nodes) + [n for n in p.nodes if n not in layer.onnx_nodes]
        self.layers.append(layer)
        self.qref[out] = _Ref(out, p.flat)

    def on_conv(self, node, nname, idx):
        a = _attrs(node)
        ref = self.act(node, nname, 0)
        self.spatial_ok(ref, node, nname)
        t = self.tensors[ref.q]
        w = self.weight(node.input[1], node, nname)
        if w.values.ndim != 4:
            self.unsupported(node, nname, f"{w.values.ndim - 2}-D convolution (only 2-D is supported)")
        oc, icg, kh, kw = w.values.shape
        groups = int(a.get("group", 1))
        if list(a.get("dilations", [1, 1])) != [1, 1]:
            self.unsupported(node, nname, f"dilations {list(a['dilations'])} (only 1 is supported)")
        if icg * groups != t.shape[2] or oc % groups:
            raise FrontendError(
                f"Conv '{nname}': weight {w.values.shape} with group {groups} does not fit input channels {t.shape[2]}"
            )
        strides = tuple(a.get("strides", [1, 1]))
        h, wd, _ = t.shape
        pads = _resolve_pads(node, a, (h, wd), (kh, kw), strides, nname)
        oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
        ow = (wd + pads[1] + pads[3] - kw) // strides[1] + 1
        if oh < 1 or ow < 1:
            raise FrontendError(
                f"Conv '{nname}': empty output for input {h}x{wd}, kernel {kh}x{kw}, pads {pads}"
            )
        w_scale = _per_channel(w.scale, oc, w.axis, 4, 0, "weight", node.op_type, nname)
        acc_scale = t.scale * w_scale
        bias = self.bias(node.input[2] if len(node.input) > 2 else "", node, nname, oc, acc_scale)
        name = self.layer_name(node, idx)
        weight = np.ascontiguousarray(w.values, dtype=np.int8)

        def build(out_t, clip):
            mult, shift = quant.quantize_multipliers(acc_scale / out_t.scale)
            return ir.Conv(
                name,
                ref.q,
                out_t.name,
                weight,
                bias,
                mult,
                shift,
                stride=(int(strides[0]), int(strides[1])),
                pads=tuple(int(p) for p in pads),
                groups=groups,
                clip=clip,
                onnx_nodes=ref.nodes + [nname],
            )

        self.pending[node.output[0]] = _Pending(build, (oh, ow, oc), [], nname)

    def fully_connected(self, node, nname, idx, ref, w_nk, w_scale, bias_name, alpha, beta):
        """Gemm/MatMul on [1, K] as a Conv whose kernel covers the whole
        HxW input; K is ONNX's NCHW flatten order, so the [N, K] weight
        reshapes to [N, C, H, W]."""
        h, wd, c = self.tensors[ref.q].shape
        n, k = w_nk.shape
        if k != h * wd * c:
            raise FrontendError(
                f"{node.op_type} '{nname}': weight has K={k} but its input holds {h}x{wd}x{c}"
            )
        t = self.tensors[ref.q]
        acc_scale = alpha * t.scale * w_scale
        bias = self.bias(bias_name, node, nname, n, acc_scale, beta=beta)
        weight = np.ascontiguousarray(w_nk.reshape(n, c, h, wd), dtype=np.int8)
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            mult, shift = quant.quantize_multipliers(acc_scale / out_t.scale)
            return ir.Conv(
                name, ref.q, out_t.name, weight, bias, mult, shift, clip=clip, onnx_nodes=ref.nodes + [nname]
            )

        self.pending[node.output[0]] = _Pending(build, (1, 1, n), [], nname, flat=True)

    def on_gemm(self, node, nname, idx):
        a = _attrs(node)
        if a.get("transA", 0):
            self.unsupported(node, nname, "transA=1")
        ref = self.act(node, nname, 0)
        w = self.weight(node.input[1], node, nname)
        if w.values.ndim != 2:
            raise FrontendError(f"Gemm '{nname}': weight must be 2-D, got {w.values.shape}")
        trans_b = bool(a.get("transB", 0))
        n = w.values.shape[0] if trans_b else w.values.shape[1]
        w_scale = _per_channel(w.scale, n, w.axis, 2, 0 if trans_b else 1, "weight", node.op_type, nname)
        w_nk = w.values if trans_b else w.values.T
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        if not alpha > 0:
            self.unsupported(node, nname, f"alpha {alpha} (must be positive to fold into the multiplier)")
        bias_name = node.input[2] if len(node.input) > 2 else ""
        self.fully_connected(node, nname, idx, ref, w_nk, w_scale, bias_name, alpha, beta)

    def on_matmul(self, node, nname, idx):
        ref = self.act(node, nname, 0)
        if node.input[0] in self.shapes and len(self.shapes[node.input[0]]) != 2:
            self.unsupported(node, nname, f"input of shape {list(self.shapes[node.input[0]])} (only [1, K])")
        w = self.weight(node.input[1], node, nname)
        if w.values.ndim != 2:
            self.unsupported(node, nname, f"weight of shape {list(w.values.shape)} (only [K, N])")
        n = w.values.shape[1]
        w_scale = _per_channel(w.scale, n, w.axis, 2, 1, "weight", node.op_type, nname)
        self.fully_connected(node, nname, idx, ref, w.values.T, w_scale, "", 1.0, 1.0)

    def on_pool(self, node, nname, idx):
        a = _attrs(node)
        ref = self.act(node, nname, 0)
        self.spatial_ok(ref, node, nname)
        t = self.tensors[ref.q]
        h, wd, c = t.shape
        mode = "max" if "Max" in node.op_type else "avg"
        if len(node.output) > 1 and node.output[1]:
            self.unsupported(node, nname, "MaxPool Indices output")
        count_pad = bool(a.get("count_include_pad", 0))
        if node.op_type.startswith("Global"):
            kernel, strides, pads = (h, wd), (1, 1), (0, 0, 0, 0)
        else:
            kernel = tuple(a["kernel_shape"])
            if len(kernel) != 2:
                self.unsupported(node, nname, f"{len(kernel)}-D pooling (only 2-D)")
            if list(a.get("dilations", [1, 1])) != [1, 1]:
                self.unsupported(node, nname, f"dilations {list(a['dilations'])} (only 1 is supported)")
            strides = tuple(a.get("strides", [1, 1]))
            pads = _resolve_pads(node, a, (h, wd), kernel, strides, nname)
            if a.get("ceil_mode", 0):
                pads = self.ceil_pads(
                    node, nname, (h, wd), kernel, strides, pads, mode == "avg" and count_pad
                )
        oh = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
        ow = (wd + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            # Equal scales give mult = 2**30, shift = 30: exact.
            mult, shift = quant.quantize_multiplier(t.scale / out_t.scale, max_shift=30)
            return ir.Pool(
                name,
                ref.q,
                out_t.name,
                mode,
                tuple(int(k) for k in kernel),
                stride=tuple(int(s) for s in strides),
                pads=tuple(int(p) for p in pads),
                count_include_pad=count_pad,
                mult=mult,
                shift=shift,
                clip=clip,
                onnx_nodes=ref.nodes + [nname],
            )

        self.pending[node.output[0]] = _Pending(build, (oh, ow, c), [], nname)

    def ceil_pads(self, node, nname, in_hw, kernel, strides, pads, count_pad):
        """ceil_mode as extra bottom/right padding (windows never read it)."""
        extra = []
        for i in range(2):
            size = in_hw[i] + pads[i] + pads[i + 2]
            out = -(-(size - kernel[i]) // strides[i]) + 1
            if (out - 1) * strides[i] >= in_hw[i] + pads[i]:  # last window must start inside
                out -= 1
            extra.append(max((out - 1) * strides[i] + kernel[i] - size, 0))
        if any(extra) and count_pad:
            self.unsupported(node, nname, "ceil_mode with count_include_pad=1")
        return (pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1])

    def on_add(self, node, nname, idx):
        if len(node.input) != 2:
            self.unsupported(node, nname, f"{len(node.input)} inputs (only 2)")
        ra, rb = self.act(node, nname, 0), self.act(node, nname, 1)
        ta, tb = self.tensors[ra.q], self.tensors[rb.q]
        if ta.shape != tb.shape:
            self.unsupported(node, nname, f"broadcasting Add of {ta.shape} and {tb.shape} (HWC)")
        if ra.flat != rb.flat and ta.shape[0] * ta.shape[1] > 1:
            self.unsupported(node, nname, "Add of a flattened and an unflattened tensor")
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            am, bm, shift = quant.pair_multipliers(ta.scale / out_t.scale, tb.scale / out_t.scale)
            return ir.Add(
                name,
                (ra.q, rb.q),
                out_t.name,
                am,
                bm,
                shift,
                clip=clip,
                onnx_nodes=ra.nodes + rb.nodes + [nname],
            )

        self.pending[node.output[0]] = _Pending(build, ta.shape, [], nname, ra.flat)

    # ---- wrap-up

    def finish(self) -> ir.Graph:
        g = self.model.graph
        if self.input_q is None:
            raise FrontendError(f"the graph input '{self.input_name}' is not quantized by a QuantizeLinear")
        outputs = []
        for o in g.output:
            ref = self.fref.get(o.name) or self.qref.get(o.name)
            if ref is None:
                p = self.pending.get(o.name)
                src = (
                    f"float output of '{p.producer}'"
                    if p
                    else "not produced through QuantizeLinear/DequantizeLinear"
                )
                raise FrontendError(
                    f"graph output '{o.name}' is {src}; the accelerator's outputs are int8 tensors"
                )
            outputs.append(ref.q)
            if o.name in self.shapes:
                self.tensors[ref.q].onnx_shape = tuple(self.shapes[o.name])
        self.tensors[self.input_q].onnx_shape = tuple(self.shapes[self.input_name])
        self.fold_activations(outputs)
        used = {self.input_q, *outputs}
        for layer in self.layers:
            used.update(_layer_inputs(layer))
            used.add(layer.output)
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        return ir.Graph(tensors, self.layers, [self.input_q], outputs, name=g.name or "model")

    def fold_activations(self, outputs):
        """Fold identity-requantizing 1x1 max pools (a Relu/Clip that ORT
        kept between Q/DQ pairs with unchanged params) into the layer that
        produces their input: max(clamp(v, lo1, hi1), lo2) ... is exactly
        clamp(v, max(lo), min(hi)) when the int8 data means the same."""
        changed = True
        while changed:
            changed = False
            producers = {layer.output: layer for layer in self.layers}
            readers: dict[str, int] = {}
            for layer in self.layers:
                for i in _layer_inputs(layer):
                    readers[i] = readers.get(i, 0) + 1
            for p in self.layers:
                if not (p.kind == "pool" and p.mode == "max" and p.kernel == (1, 1) and p.stride == (1, 1)):
                    continue
                if p.pads != (0, 0, 0, 0) or (p.mult, p.shift) != (1 << 30, 30):
                    continue
                src, dst = self.tensors[p.input], self.tensors[p.output]
                prod = producers.get(p.input)
                if prod is None or readers.get(p.input) != 1 or p.input in outputs:
                    continue
                if (src.scale, src.zero_point) != (dst.scale, dst.zero_point):
                    continue
                lo, hi = max(prod.clip[0], p.clip[0]), min(prod.clip[1], p.clip[1])
                if lo > hi:
                    continue
                prod.clip = (lo, hi)
                prod.output = p.output
                prod.onnx_nodes = list(prod.onnx_nodes) + [
                    n for n in p.onnx_nodes if n not in prod.onnx_nodes
                ]
                self.layers.remove(p)
                changed = True
                break


def _quantize_array(x, scale, zp, axis) -> np.ndarray:
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


def to_graph(model) -> ir.Graph:
    """Read a QDQ model (path, bytes or ModelProto) into the layer IR.

    Raises UnsupportedOperatorError for ops/attributes the accelerator does
    not have, FrontendError for anything else it cannot map exactly."""
    proto = load_model(model)
    if not is_qdq(proto):
        raise FrontendError(
            "the model holds no QuantizeLinear/DequantizeLinear: quantize it first (frontend.quantize)"
        )
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as e:
        raise FrontendError(f"ONNX shape inference failed on the quantized model: {e}") from e
    return _Reader(proto).read()
