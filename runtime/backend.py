"""The ``onnx.backend`` interface: ONNX's own backend test runner (and any
tool written against onnx.backend.base) drives vfpga through it.

    from vfpga.runtime import backend
    rep = backend.prepare(model, device="FPGA:u200", calibration=samples)
    (y,) = rep.run([x])              # outputs in ONNX layout and dtype
    rep.close()                      # or let it be garbage-collected

Devices: "FPGA" (the default board, u200), "FPGA:<board>" (any board
config: u200, zcu104, pynq_z2, u200_bigcore) and "CPU". On a host without a
board every FPGA is the emulated one -- the real HLS C++ running on the host
CPU -- so "CPU" (what ONNX's runner asks for) means exactly that: the
emulated default board. It never means "run the model on onnxruntime".
"CUDA" is not supported.

One accelerator per board is opened once per process and shared by every
prepared model; each prepared model is one tenant on one CNN core, removed
when its rep is closed or garbage-collected (so a test run does not use up
the board's cores).

Three kinds of model reach the accelerator:

* integer (QOperator) models -- QLinearConv, QLinearMatMul, integer MaxPool,
  Relu/Clip and com.microsoft QGemm/QLinearAdd/QLinearAveragePool/
  QLinearGlobalAveragePool, int8 or uint8, per-tensor or per-channel weight
  scales, int32 bias, behind a QuantizeLinear/before a DequantizeLinear or
  with integer I/O -- through :mod:`vfpga.runtime.qlinear`. QLinearConv and
  QLinearMatMul are bit-exact to ONNX except on exact requantization ties
  (+1 LSB; see qlinear's docstring); pools and adds within 1 LSB.
* QDQ models, through frontend.to_graph: per layer within 1 LSB of
  onnxruntime on the same QDQ model.
* float models (Conv, Gemm, MatMul, MaxPool, AveragePool,
  GlobalAveragePool, Relu, Clip, residual Add, folded BatchNormalization,
  ...), quantized with onnxruntime's static int8 quantization
  (frontend.quantize) on calibration data given as ``calibration=`` to
  prepare -- or, without it, on the input of the first run (a UserWarning
  says so). These are approximate: ``FLOAT_TOLERANCE_LSB`` states the bound
  the tests hold single ops to.

Layout: the accelerator runs batch 1. A batch N > 1 of an NCHW (or [N, K])
input runs as N requests when every op treats the leading axis as a batch;
a model of only elementwise ops runs on any shape as one [1, size, 1, 1]
request; QLinearMatMul rows (and a 3-D batch of them) map onto the core's
spatial axes and channels. A model has exactly one activation input (a
tenant program reads one input tensor).

Parameters a model takes as graph inputs (weights, biases, scales and zero
points fed at run time, as the ONNX node tests do) are folded into the
program when they are first seen; the accelerator keeps weights in its
segment, so new parameter values mean a recompile (cached by content).

Ops without an accelerator mapping raise UnsupportedOperatorError at
prepare. ConvInteger and MatMulInteger are among them: they produce the
int32 accumulators, and the CNN core always requantizes to int8 before
anything leaves it. With ``cpu_fallback=True``: a float/QDQ model keeps its
accelerator layers and the front end cuts the other nodes out into
onnxruntime subgraphs (frontend.to_graph(fallback=True)); an integer model,
or one with no accelerator op at all, runs wholly on onnxruntime on the
host. Either way ``rep.placement()`` says where every node ran ("cpu" for
the fallback; ``rep.kind == "cpu"`` for a whole-model fallback).
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import itertools
import threading
import warnings
import weakref
from collections import OrderedDict

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

from vfpga import overlay

from . import api, frontend, ir, qlinear
from .frontend import FrontendError, UnsupportedOperatorError

DEFAULT_BOARD = "u200"
# Float models, one op: |vfpga - float reference| <= FLOAT_TOLERANCE_LSB * the output's int8 scale on
# inputs inside the calibrated range. Measured on ONNX's 49 float node tests: <= 0.95 steps for
# Conv/Gemm/MatMul/pools, 1.47 (Relu) and 1.59 (Clip), whose output step is finer than the input's.
# Deeper networks add up per-layer errors: measure them end to end.
FLOAT_TOLERANCE_LSB = 2.0
# Options passed on to onnxruntime's quantize_static for float models: quantize a
# pool even when nothing before it is quantized (single-op models), and keep Relu/Clip
# as ops between Q/DQ instead of folding them into the producer's output range (that
# fold turns Clip(min > max) into garbage; the front end folds the clamp itself, and
# on the test CNNs the results are identical).
DEFAULT_QUANT_OPTIONS = {"ForceQuantizeNoInputCheck": True, "QDQKeepRemovableActivations": True}
_CACHE_SIZE = 4
# Whether frontend.to_graph can cut unsupported nodes out into CPU subgraphs.
FRONTEND_FALLBACK = "fallback" in inspect.signature(frontend.to_graph).parameters

# Float/QDQ ops the accelerator path takes (frontend), plus what its
# quantization pre-processing folds away.
_FLOAT_OPS = frozenset(frontend.ACCELERATOR_OPS | frontend.VIEW_OPS | frontend.QDQ_OPS) | {
    "Constant",
    "BatchNormalization",
}
# Elementwise ops: a model made only of these does not care about layout.
_ELEMENTWISE = frozenset({"Relu", "Clip", "Identity", "Dropout", "QuantizeLinear", "DequantizeLinear", "Constant"})
# Ops that treat the leading axis as a batch (for running N > 1 as N requests).
_BATCH_OPS = frozenset(
    {
        "Conv",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Relu",
        "Clip",
        "Gemm",
        "MatMul",
        "Flatten",
        "Identity",
        "Dropout",
        "BatchNormalization",
        "Add",
        "Sum",
        "QuantizeLinear",
        "DequantizeLinear",
        "Constant",
    }
)
# Activation operand positions (the other operands are parameters).
_ACTIVATION_SLOTS = dict(qlinear.ACTIVATION_SLOTS)
_ACTIVATION_SLOTS.update(
    {
        "Conv": (0,),
        "Gemm": (0,),
        "MatMul": (0,),
        "AveragePool": (0,),
        "GlobalAveragePool": (0,),
        "GlobalMaxPool": (0,),
        "BatchNormalization": (0,),
        "Dropout": (0,),
        "Add": (0, 1),
        "Sum": tuple(range(16)),
    }
)


class BackendError(ValueError):
    """The backend cannot take this model, device or input as given."""


# ---------------------------------------------------------------- devices and accelerators

_accels: dict[str, api.Accelerator] = {}
_accel_lock = threading.Lock()
_tenant_ids = itertools.count()


def parse_device(device: str) -> str:
    """Board name for a device string: "FPGA", "FPGA:<board>", "CPU"[":0"]."""
    if not isinstance(device, str) or not device:
        raise BackendError(f"device must be a string such as 'FPGA' or 'FPGA:u200', got {device!r}")
    kind, _, arg = device.partition(":")
    kind = kind.upper()
    if kind == "FPGA":
        board = arg or DEFAULT_BOARD
        if board not in overlay.available():
            raise BackendError(f"unknown board {board!r} in device {device!r}; known: {', '.join(overlay.available())}")
        return board
    if kind == "CPU":
        if arg and not arg.isdigit():
            raise BackendError(f"device {device!r}: CPU takes a numeric id (the host), not {arg!r}")
        return DEFAULT_BOARD
    raise BackendError(
        f"vfpga does not run on device {device!r}; use 'FPGA', 'FPGA:<board>' "
        f"({', '.join(overlay.available())}) or 'CPU' (the emulated board on this host)"
    )


def accelerator(board: str = DEFAULT_BOARD) -> api.Accelerator:
    """The process-wide accelerator of ``board`` (opened on first use)."""
    with _accel_lock:
        if board not in _accels:
            _accels[board] = api.open(board)
        return _accels[board]


_deferred: list = []  # slots whose rep was collected while the accelerator was busy


def release_unused() -> int:
    """Collect dropped reps and remove their tenants now; returns how many
    tenants were removed. (prepare() does this by itself.)"""
    gc.collect()
    n = 0
    while _deferred:
        slot = _deferred.pop()
        n += slot.tenant is not None
        slot.release()
    return n


class _Slot:
    """The tenant a rep holds; released when the rep is closed or collected
    (a weakref.finalize callback, so it must not refer to the rep)."""

    def __init__(self, accel: api.Accelerator):
        self.accel = accel
        self.tenant: api.Tenant | None = None

    def on_collect(self) -> None:
        # The cyclic GC may run this while this very thread holds the
        # accelerator's lock (inside deploy/remove); removing then would
        # deadlock, so it is deferred to the next prepare/release_unused.
        lock = getattr(self.accel, "_lock", None)
        if lock is not None and not lock.acquire(blocking=False):
            _deferred.append(self)
            return
        if lock is not None:
            lock.release()
        self.release()

    def deploy(self, compiled) -> api.Tenant:
        self.release()
        name = f"onnx{next(_tenant_ids)}"
        try:
            self.tenant = self.accel.deploy(compiled, name=name)
        except api.DeployError:
            release_unused()  # reps dropped but not yet collected still hold cores
            self.tenant = self.accel.deploy(compiled, name=name)
        return self.tenant

    def release(self) -> None:
        t, self.tenant = self.tenant, None
        if t is not None and t.name in self.accel.tenants:
            self.accel.remove(t)


# ---------------------------------------------------------------- model helpers


def _runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def split_inputs(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(activation inputs, parameter inputs) among the runtime graph inputs.
    A parameter is a graph input read only in parameter slots (weights,
    bias, scales, zero points, clip bounds, shapes)."""
    act, params = [], []
    for vi in _runtime_inputs(model):
        uses = [(n, k) for n in model.graph.node for k, i in enumerate(n.input) if i == vi.name]
        if not uses or any(k in _ACTIVATION_SLOTS.get(n.op_type, (0,)) for n, k in uses):
            act.append(vi.name)
        else:
            params.append(vi.name)
    return act, params


def _bind(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the given graph inputs turned into initializers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [i for i in m.graph.input if i.name not in values]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for name, v in values.items():
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(v), name))
    return m


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
        return None
    return tuple(int(d.dim_value) for d in tt.shape.dim)


def _reshape_io(model: onnx.ModelProto, in_shape, out_shapes: dict | None) -> onnx.ModelProto:
    """Copy with a new static input shape; output shapes set or re-inferred."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inp = _runtime_inputs(m)[0]
    inp.type.tensor_type.ClearField("shape")
    for d in in_shape:
        inp.type.tensor_type.shape.dim.add().dim_value = int(d)
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
        if out_shapes is not None:
            for d in out_shapes[o.name]:
                o.type.tensor_type.shape.dim.add().dim_value = int(d)
    try:
        return onnx.shape_inference.infer_shapes(m, strict_mode=True)
    except Exception as e:
        raise BackendError(f"shape inference failed for input shape {list(in_shape)}: {e}") from e


def _check_ops(model: onnx.ModelProto, integer: bool) -> None:
    """Clear errors at prepare for ops the accelerator path does not have."""
    for idx, n in enumerate(model.graph.node):
        nname = n.name or f"{n.op_type}_{idx}"
        if n.op_type in qlinear.NOT_ON_CORE:
            raise UnsupportedOperatorError(n.op_type, nname, qlinear.NOT_ON_CORE[n.op_type])
        if integer:
            ok = (n.domain in ("", "ai.onnx") and n.op_type in qlinear.INTEGER_OPS | {"Constant"}) or (
                n.domain == "com.microsoft" and n.op_type in qlinear.MS_OPS
            )
        else:
            ok = n.domain in ("", "ai.onnx") and n.op_type in _FLOAT_OPS
            if n.domain == "com.microsoft" and n.op_type in frontend.QDQ_OPS:
                ok = True
        if not ok:
            raise UnsupportedOperatorError(n.op_type, nname, "no accelerator mapping (and cpu_fallback is off)")
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if "kernel_shape" in attrs and len(attrs["kernel_shape"]) != 2:
            raise UnsupportedOperatorError(n.op_type, nname, f"{len(attrs['kernel_shape'])}-D kernel (only 2-D)")
        if any(int(d) != 1 for d in attrs.get("dilations", [])):
            raise UnsupportedOperatorError(n.op_type, nname, f"dilations {list(attrs['dilations'])} (only 1)")
        if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
            raise UnsupportedOperatorError(n.op_type, nname, "the Indices output")
        if n.op_type == "Gemm" and attrs.get("transA", 0):
            raise UnsupportedOperatorError(n.op_type, nname, "transA=1 (the activation must be [batch, K])")


def _normalize_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gemm's constant C of shape [], [1], [1, N] or [N] broadcasts the same
    over the rows: give it as the [N] vector onnxruntime's quantizer takes,
    with beta folded in (its QDQ quantizer resets beta to 1 without scaling
    the bias, which would change the result)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    for k, n in enumerate(m.graph.node):
        if n.op_type != "Gemm" or len(n.input) < 3 or n.input[2] not in inits or n.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        beta = float(attrs.get("beta", 1.0))
        c = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32)
        b = numpy_helper.to_array(inits[n.input[1]])
        cols = b.shape[0] if attrs.get("transB", 0) else b.shape[1]
        if not (c.size == 1 or c.shape in ((cols,), (1, cols))):
            continue  # a per-row bias: left as it is (batched runs refuse it)
        name = f"{n.input[2]}@vfpga_1d_{k}"
        c1 = (np.broadcast_to(c.reshape(-1), (cols,)) * np.float32(beta)).astype(np.float32)
        m.graph.initializer.append(numpy_helper.from_array(c1, name))
        n.input[2] = name
        keep = [a for a in n.attribute if a.name != "beta"]
        del n.attribute[:]
        n.attribute.extend(keep)
    return m


# Ops onnxruntime's QDQ quantizer leaves float when their input is not
# already quantized (it quantizes a tensor only behind/ahead of ops it knows).
_NEEDS_QUANTIZED_INPUT = frozenset({"Relu", "Clip"})


def _anchor_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """When the float input feeds an op onnxruntime quantizes only behind a
    quantized tensor, insert an identity 1x1 MaxPool (max over one element
    is the element) at the input, which it does quantize. The front end maps
    it to one 1x1 pool layer, into which it folds the Relu/Clip clamp; the
    node shows in rep.placement() as "vfpga_input_anchor"."""
    (inp,) = _runtime_inputs(model)
    shape = _static_shape(inp)
    readers = [n for n in model.graph.node if inp.name in n.input]
    if shape is None or len(shape) != 4 or not any(n.op_type in _NEEDS_QUANTIZED_INPUT for n in readers):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    anchored = f"{inp.name}@vfpga_anchor"
    for n in m.graph.node:
        for k, i in enumerate(n.input):
            if i == inp.name:
                n.input[k] = anchored
    for o in m.graph.output:
        if o.name == inp.name:
            raise BackendError(f"graph output '{o.name}' is the input itself; nothing runs on the accelerator")
    anchor = helper.make_node("MaxPool", [inp.name], [anchored], name="vfpga_input_anchor", kernel_shape=[1, 1])
    m.graph.node.insert(0, anchor)
    return m


def _content_key(values: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(values):
        a = np.ascontiguousarray(values[name])
        h.update(name.encode() + b"\0" + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- engines (one compiled form each)


class _IntegerEngine:
    """An integer model as one IR graph; host does the I/O layout."""

    kind = "integer"

    def __init__(self, model: onnx.ModelProto, accel: api.Accelerator):
        self.im = qlinear.convert(model)
        self.compiled = accel.compile(self.im.graph)

    def execute(self, tenant: api.Tenant, feeds: dict) -> list[np.ndarray]:
        m = self.im.input
        results = [tenant.run_quantized(req)[0] for req in m.split(feeds[m.onnx_name])]
        return [o.join([r[k] for r in results], shape)
                for k, (o, shape) in enumerate(zip(self.im.outputs, self.im.output_shapes))]

    def placement(self) -> dict[str, str]:
        out = dict(self.im.extra_placement)
        for layer in self.compiled.graph.layers:
            for n in layer.onnx_nodes:
                out[n] = "accelerator"
        return out


class _QuantEngine:
    """A QDQ model (given, or quantized from float here) through the front end.

    ``layout`` maps the ONNX input/outputs onto the batch-1 model the
    accelerator path takes: "same", "batch" (N > 1 as N requests) or "flat"
    (an elementwise model on any shape as one [1, size] request)."""

    def __init__(self, model, accel, kind, layout, in_name, out_shapes, calibration=None, quant_options=None,
                 fallback=False):
        self.kind, self.layout, self.in_name, self.out_shapes = kind, layout, in_name, out_shapes
        if kind == "float":
            opts = dict(DEFAULT_QUANT_OPTIONS)
            opts.update(quant_options or {})
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*calibration.*")
                qdq = frontend.quantize(model, calibration=calibration, extra_options=opts)
            if not frontend.is_qdq(qdq):
                ops = ", ".join(sorted({n.op_type for n in model.graph.node}))
                raise FrontendError(
                    f"onnxruntime's static quantization left every op float ({ops}: no QDQ rule applied); "
                    f"the accelerator computes in int8 only"
                )
        else:
            qdq = model
        self.qdq = qdq
        self.graph = frontend.to_graph(qdq, fallback=True) if fallback else frontend.to_graph(qdq)
        self.compiled = accel.compile(self.graph)

    def execute(self, tenant: api.Tenant, feeds: dict) -> list[np.ndarray]:
        results = []
        for x in _samples(feeds[self.in_name], self.layout):
            ys = tenant.run(x)  # quantize, run (CPU parts too), dequantize: the API's own path
            results.append(list(ys) if isinstance(ys, (list, tuple)) else [ys])
        outs = []
        for k in range(len(self.graph.outputs)):
            ys = [r[k] for r in results]
            y = np.concatenate(ys, axis=0) if self.layout == "batch" else ys[0]
            outs.append(y.reshape(self.out_shapes[k]) if self.layout == "flat" else y)
        return outs

    def placement(self) -> dict[str, str]:
        if getattr(self.graph, "onnx_nodes", None) and hasattr(frontend, "placement_report"):
            return {name: where for name, _, where in frontend.placement_report(self.graph)}
        out = {}
        for layer in self.compiled.graph.layers:
            for n in layer.onnx_nodes:
                out[n] = "cpu" if layer.kind == "cpu" else "accelerator"
        return out


def _samples(x, layout: str) -> list[np.ndarray]:
    x = np.asarray(x)
    if layout == "batch":
        return [x[i : i + 1] for i in range(x.shape[0])]
    if layout == "flat":
        return [x.reshape(1, -1, 1, 1)]
    return [x]


# ---------------------------------------------------------------- the rep


class VfpgaRep(BackendRep):
    """A model prepared for one vfpga board.

    kind: "integer", "qdq", "float" (run on the accelerator) or "cpu" (the
    whole model on onnxruntime, only with cpu_fallback=True). ``compiled``
    and ``tenant`` are those of the last parameter set run (None before the
    first run when parameters come as inputs). ``placement()`` says where
    each ONNX node ran."""

    def __init__(self, model, board, kind, calibration=None, quant_options=None, reason="", fallback=False):
        self.model = model
        self.fallback = fallback
        self.board = board
        self.kind = kind
        self.fallback_reason = reason
        self.input_names = [i.name for i in _runtime_inputs(model)]
        self.output_names = [o.name for o in model.graph.output]
        self._calibration = calibration
        self._quant_options = quant_options
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._engine = None
        self._key = None
        self._closed = False
        self._session = None
        if kind == "cpu":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            self._slot = None
            return
        self.accel = accelerator(board)
        while _deferred:
            _deferred.pop().release()
        self._slot = _Slot(self.accel)
        self._finalizer = weakref.finalize(self, self._slot.on_collect)
        self.activation_inputs, self.param_inputs = split_inputs(model)
        if len(self.activation_inputs) != 1:
            raise BackendError(
                f"the model has {len(self.activation_inputs)} activation inputs ({', '.join(self.activation_inputs)}); "
                f"the accelerator path takes exactly one input tensor per model"
            )
        if not self.param_inputs and (kind != "float" or calibration is not None):
            self._select({}, None)

    # -- building

    def _build(self, params: dict, x) -> object:
        model = _bind(self.model, params) if params else self.model
        if self.kind == "integer":
            return _IntegerEngine(model, self.accel)
        return self._build_quant(model, x)

    def _build_quant(self, model, x):
        (inp,) = _runtime_inputs(model)
        shape = _static_shape(inp)
        if shape is None:
            raise BackendError(f"input '{inp.name}' has no static shape; the accelerator compiles for fixed shapes")
        ops = {n.op_type for n in model.graph.node}
        out_shapes = []
        for o in model.graph.output:
            s = _static_shape(o)
            if s is None:
                inferred = onnx.shape_inference.infer_shapes(model)
                s = next((_static_shape(v) for v in inferred.graph.output if v.name == o.name), None)
            out_shapes.append(s)
        if ops <= _ELEMENTWISE and not (len(shape) in (2, 4) and shape[0] == 1):
            layout = "flat"
            size = int(np.prod(shape))
            model = _reshape_io(model, (1, size, 1, 1), {o.name: (1, size, 1, 1) for o in model.graph.output})
        elif len(shape) >= 2 and shape[0] > 1:
            bad = sorted(ops - _BATCH_OPS)
            if bad:
                raise BackendError(
                    f"input '{inp.name}' has batch {shape[0]}; the accelerator runs batch 1 and would run the "
                    f"batch as {shape[0]} requests, but {', '.join(bad)} may mix the batch axis"
                )
            for n in model.graph.node:
                if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2]:
                    c = next((numpy_helper.to_array(t) for t in model.graph.initializer if t.name == n.input[2]), None)
                    if c is not None and c.ndim == 2 and c.shape[0] > 1:
                        raise BackendError(
                            f"Gemm '{n.name}': bias C of shape {list(c.shape)} differs per row; the batch of "
                            f"{shape[0]} rows cannot run as independent requests"
                        )
            layout = "batch"
            model = _reshape_io(model, (1,) + tuple(shape[1:]), None)
        else:
            layout = "same"
        calibration = None
        if self.kind == "float":
            model = _normalize_gemm(model)
            model = _anchor_input(model)
            raw = self._calibration
            if raw is None:
                warnings.warn(
                    "no calibration= given to prepare(): the float model is quantized on the input of its first "
                    "run; pass representative calibration data for a model you run on other inputs",
                    UserWarning,
                    stacklevel=4,
                )
                raw = [x]
                self._calibration = raw
            items = [raw] if isinstance(raw, np.ndarray) else list(raw)
            calibration = [s for item in items for s in _samples(np.asarray(item, dtype=np.float32), layout)]
        return _QuantEngine(model, self.accel, self.kind, layout, inp.name, out_shapes, calibration,
                            self._quant_options, self.fallback)

    def _select(self, params: dict, x) -> None:
        key = _content_key(params)
        if key == self._key:
            return
        engine = self._cache.pop(key, None) or self._build(params, x)
        self._cache[key] = engine
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        self._slot.deploy(engine.compiled)
        self._engine, self._key = engine, key

    # -- running

    def _feeds(self, inputs) -> dict:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        elif isinstance(inputs, np.ndarray) or np.isscalar(inputs):
            feeds = {self.input_names[0]: inputs}
        else:
            inputs = list(inputs)
            if len(inputs) != len(self.input_names):
                raise BackendError(f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}")
            feeds = dict(zip(self.input_names, inputs))
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendError(f"no value for input(s) {', '.join(missing)}")
        return {k: np.asarray(v) for k, v in feeds.items()}

    def run(self, inputs, **kwargs):
        """Inputs (a list in graph-input order, a dict by name, or one array)
        -> the outputs as a namedtuple, in ONNX layout and dtype."""
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        if self._closed:
            raise BackendError("this rep has been closed")
        feeds = self._feeds(inputs)
        if self.kind == "cpu":
            values = self._session.run(self.output_names, feeds)
        else:
            x = feeds[self.activation_inputs[0]]
            self._select({n: feeds[n] for n in self.param_inputs}, x)
            values = self._engine.execute(self._slot.tenant, feeds)
        return namedtupledict("Outputs", self.output_names)(*values)

    # -- reporting and lifetime

    @property
    def compiled(self):
        return self._engine.compiled if self._engine is not None else None

    @property
    def graph(self) -> ir.Graph | None:
        return self._engine.compiled.graph if self._engine is not None else None

    @property
    def tenant(self) -> api.Tenant | None:
        return self._slot.tenant if self._slot is not None else None

    def placement(self) -> dict[str, str]:
        """ONNX node name -> "accelerator", "cpu" (onnxruntime), "host" (the
        boundary QuantizeLinear/DequantizeLinear of an integer model, applied
        by the host as it writes the input / reads the outputs) or, for
        float/QDQ models, "folded" (frontend.placement_report: absorbed at
        compile time). Float models list the QDQ model's nodes."""
        if self.kind == "cpu":
            return {n.name or f"{n.op_type}_{i}": "cpu" for i, n in enumerate(self.model.graph.node)}
        if self._engine is None:
            raise BackendError("not built yet: parameters given as inputs are bound at the first run")
        return self._engine.placement()

    def close(self) -> None:
        """Remove the tenant (frees its core and segment)."""
        self._closed = True
        if self._slot is not None:
            self._finalizer.detach()
            self._slot.release()
        self._cache.clear()
        self._engine = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- the backend


_PREPARE_KWARGS = {"calibration", "cpu_fallback", "quant_options"}


class VfpgaBackend(Backend):
    """onnx.backend.base.Backend for vfpga (see the module docstring)."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            parse_device(device)
        except BackendError:
            return False
        return True

    @classmethod
    def is_compatible(cls, model, device: str = "FPGA", **kwargs) -> bool:
        """True when prepare would put the model on the accelerator."""
        if not cls.supports_device(device):
            return False
        try:
            _check_ops(model, qlinear.is_integer_model(model))
        except FrontendError:
            return False
        return True

    @classmethod
    def prepare(cls, model, device: str = "FPGA", **kwargs) -> VfpgaRep:
        """Compile ``model`` (ModelProto, bytes or path) for the board of
        ``device``. Keyword arguments: calibration (float models: one array
        or a list of arrays in the input's own layout), cpu_fallback (run
        the nodes the accelerator cannot take on onnxruntime, see the module
        docstring), quant_options (extra onnxruntime quantize_static
        options)."""
        unknown = set(kwargs) - _PREPARE_KWARGS
        if unknown:
            raise TypeError(f"unknown prepare() arguments: {', '.join(sorted(unknown))}")
        board = parse_device(device)
        if isinstance(model, (bytes, bytearray)):
            model = onnx.load_model_from_string(bytes(model))
        elif not isinstance(model, onnx.ModelProto):
            model = onnx.load(model)
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            raise FrontendError(f"not a valid ONNX model (onnx.checker: {e})") from e
        integer = qlinear.is_integer_model(model)
        kind = "integer" if integer else ("qdq" if frontend.is_qdq(model) else "float")
        calibration = kwargs.get("calibration")
        if calibration is not None and kind != "float":
            warnings.warn(f"calibration= is unused: the model is already quantized ({kind})", UserWarning, stacklevel=2)
        try:
            _check_ops(model, integer)
        except UnsupportedOperatorError as e:
            if not kwargs.get("cpu_fallback"):
                raise
            some_on_core = any(n.op_type in frontend.ACCELERATOR_OPS for n in model.graph.node)
            if integer or not FRONTEND_FALLBACK or not some_on_core:
                return VfpgaRep(model, board, "cpu", reason=str(e))
            # The front end cuts the unsupported nodes out into onnxruntime subgraphs.
            return VfpgaRep(model, board, kind, calibration, kwargs.get("quant_options"), reason=str(e), fallback=True)
        return VfpgaRep(model, board, kind, calibration, kwargs.get("quant_options"))

    @classmethod
    def run_model(cls, model, inputs, device: str = "FPGA", **kwargs):
        with cls.prepare(model, device, **kwargs) as rep:
            return rep.run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "FPGA", outputs_info=None, **kwargs):
        """One node on the accelerator: wraps it in a model whose inputs are
        the node's (typed from ``inputs``), then prepare + run.
        ``opset_version`` (kwarg) picks the opset, default 21."""
        opset = int(kwargs.pop("opset_version", 21))
        names = [i for i in node.input if i]
        if isinstance(inputs, dict):
            arrays = [np.asarray(inputs[n]) for n in names]
        else:
            arrays = [np.asarray(a) for a in inputs]
        if len(arrays) != len(names):
            raise BackendError(f"node {node.op_type} has {len(names)} inputs, got {len(arrays)} values")
        vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in zip(names, arrays)]
        if outputs_info:
            outs = [
                helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
                for o, (dt, shape) in zip(node.output, outputs_info)
            ]
        else:
            outs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        opsets = [helper.make_opsetid("", opset)]
        if node.domain == "com.microsoft":
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        graph = helper.make_graph([node], f"node_{node.op_type}", vis, outs)
        model = helper.make_model(graph, opset_imports=opsets)
        if not outputs_info:
            model = onnx.shape_inference.infer_shapes(model)
            inferred = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
            del model.graph.output[:]
            model.graph.output.extend(inferred[o] for o in node.output if o)
        with cls.prepare(model, device, **kwargs) as rep:
            return rep.run(arrays)


prepare = VfpgaBackend.prepare
run_model = VfpgaBackend.run_model
run_node = VfpgaBackend.run_node
supports_device = VfpgaBackend.supports_device
is_compatible = VfpgaBackend.is_compatible

__all__ = [
    "DEFAULT_BOARD",
    "FLOAT_TOLERANCE_LSB",
    "BackendError",
    "VfpgaBackend",
    "VfpgaRep",
    "accelerator",
    "is_compatible",
    "parse_device",
    "prepare",
    "release_unused",
    "run_model",
    "run_node",
    "split_inputs",
    "supports_device",
]
