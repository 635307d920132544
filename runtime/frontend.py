"""ONNX front end: load a model, quantize it with onnxruntime (static, QDQ)
and read the QDQ model into the integer layer graph of :mod:`vfpga.runtime.ir`.

The QDQ model is the single source of the quantization: every int8 tensor of
the IR is the output of one QuantizeLinear (its scale/zero point), every
layer is one compute node between DequantizeLinear(s) and a QuantizeLinear,
and the layer's integer parameters are derived from those scales exactly as
onnxruntime's integer kernels (QLinearConv, ...) would use them, so per-layer
results agree with onnxruntime to within rounding of the requantization.

Float models are cleaned up before quantization (:func:`simplify`: constant
subgraphs folded, Identity/Dropout dropped, BatchNormalization and
per-channel affine chains folded into convolutions) and, after it, Concat
inputs share the Concat's quantization where that is free
(:func:`share_concat_scales`). Concat becomes an ir.Concat (address
placement), with requantizing 1x1 copies only for inputs whose quantization
still differs. With ``to_graph(..., fallback=True)`` the ops the core lacks
run on the host: each maximal connected run of them becomes one ir.CpuOp,
an ONNX model cut out of the QDQ graph with int8 tensors at its boundary;
:func:`placement_report` lists where every node runs.
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
# UnsupportedOperatorError from _Reader.unsupported(); with
# to_graph(fallback=True) such nodes become ir.CpuOp layers instead
# (onnxruntime on the cut-out subgraph).
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
        "Concat",
        "BatchNormalization",  # folded into a Conv, or a depthwise 1x1 Conv
        "Mul",  # by a per-channel constant, likewise
        "Sub",  # minus a per-channel constant
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


# ---------------------------------------------------------------- graph clean-up


# Ops never evaluated at compile time even when their inputs are constants.
_NO_FOLD = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
     "If", "Loop", "Scan", "QuantizeLinear", "DequantizeLinear"}
)


def _opset_of(model: onnx.ModelProto) -> int:
    return _onnx_opset(model) or 13


def _eval_node(node: onnx.NodeProto, inputs: list, opset: int) -> list[np.ndarray]:
    """Evaluate one standard-domain node on constant inputs with onnx's
    reference implementation (exact ONNX semantics)."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" if name else "" for k, name in enumerate(node.input)]
    outs = [f"out{k}" if name else "" for k, name in enumerate(node.output)]
    n = helper.make_node(node.op_type, names, outs, domain=node.domain)
    n.attribute.extend(node.attribute)
    vals = [v for v, name in zip(inputs, names) if name]
    graph = helper.make_graph(
        [n],
        "fold",
        [
            helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for nm, v in zip([nm for nm in names if nm], vals)
        ],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs if o],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    res = ReferenceEvaluator(m).run(None, dict(zip([nm for nm in names if nm], vals)))
    return [np.asarray(r) for r in res]


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant subgraphs as initializers, in place: Constant nodes, every
    standard-domain node whose inputs are all constants (ConstantOfShape,
    Reshape/Unsqueeze/Concat of shapes, ...) and Shape/Size of values whose
    shape is static after ONNX shape inference, evaluated with onnx's
    reference implementation. Q/DQ nodes are left alone (the reader
    interprets them), as are random and control-flow ops. Returns the model."""
    g = model.graph
    opset = _opset_of(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    static = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        d = _dims(vi)
        if d is not None and None not in d:
            static[vi.name] = d
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    keep, folded = [], set()
    for node in g.node:
        std = node.domain in ("", "ai.onnx")
        out = None
        if std and node.op_type == "Constant" and len(node.attribute) == 1:
            a = node.attribute[0]
            out = [numpy_helper.to_array(a.t) if a.name == "value" else np.asarray(helper.get_attribute_value(a))]
        elif std and node.op_type in ("Shape", "Size") and node.input[0] in static:
            d = static[node.input[0]]
            if node.op_type == "Size":
                out = [np.array(int(np.prod(d)), dtype=np.int64)]
            else:
                at = _attrs(node)
                start, end = at.get("start", 0), at.get("end", len(d))
                out = [np.array(d[slice(start, end)], dtype=np.int64)]
        elif (
            std
            and node.op_type not in _NO_FOLD
            and node.input
            and all(not i or i in consts for i in node.input)
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        ):
            try:
                out = _eval_node(node, [consts[i] for i in node.input if i], opset)
            except Exception:
                out = None  # leave it to onnxruntime
        if out is None:
            keep.append(node)
            continue
        for name, v in zip([o for o in node.output if o], out):
            consts[name] = v
            folded.add(name)
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    # Subgraph-bearing nodes may read outer values; keep everything then.
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in keep for a in n.attribute):
        used |= set(consts)
    del g.node[:]
    g.node.extend(keep)
    old = {t.name: t for t in g.initializer}
    del g.initializer[:]
    for name, v in consts.items():
        if name not in used:
            continue
        if name in old and name not in folded:
            g.initializer.append(old[name])
        else:
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(v), name))
    inits = {t.name for t in g.initializer}
    real = [i for i in g.input if i.name not in inits]
    if len(real) != len(g.input):
        del g.input[:]
        g.input.extend(real)
        model.ir_version = max(model.ir_version, 4)
    return model


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i:
                out.setdefault(i, []).append((n, k))
    return out


def _rename_input(graph, old: str, new: str) -> None:
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new


def remove_no_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop Identity and inference-mode Dropout (in place): their readers
    read the input instead. One that produces a graph output stays (as an
    Identity) so the output keeps its name."""
    g = model.graph
    outputs = {o.name for o in g.output}
    read = {i for n in g.node for i in n.input} | outputs
    keep = []
    for n in g.node:
        if n.domain in ("", "ai.onnx") and n.op_type in ("Identity", "Dropout"):
            if n.op_type == "Dropout" and (
                any(o in read for o in n.output[1:]) or _attrs(n).get("training_mode", 0) or len(n.input) > 2
            ):
                keep.append(n)  # the mask is read, or it may train: not a no-op
                continue
            if n.output[0] in outputs:
                if n.op_type == "Dropout":
                    keep.append(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
                else:
                    keep.append(n)
                continue
            _rename_input(g, n.output[0], n.input[0])
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return model


def _per_channel_const(v: np.ndarray, c: int) -> np.ndarray | None:
    """A constant that broadcasts per channel over [1, C, H, W]: scalar,
    [1], [C, 1, 1] or [1, C, 1, 1] -> [C] float64 (None otherwise)."""
    v = np.asarray(v)
    if not np.issubdtype(v.dtype, np.floating):
        return None
    if v.size == 1 and v.ndim <= 4:
        return np.full(c, float(v.reshape(-1)[0]))
    s = list(v.shape)
    while len(s) > 3 and s[0] == 1:
        s = s[1:]
    if len(s) == 3 and s == [c, 1, 1]:
        return v.reshape(c).astype(np.float64)
    return None


def fold_affine(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold inference BatchNormalization and per-channel Mul/Add/Sub by
    constants (the decomposed affine chains Caffe2 exports write as
    Unsqueeze -> Mul -> Unsqueeze -> Add) on 4-D activations, in place.

    A maximal chain of such nodes (each the only reader of the previous) is
    one per-channel affine y = k * x + c. If x is the output of a Conv that
    nothing else reads, k and c fold into its weight and bias (the Conv then
    writes the chain's output name); otherwise the chain becomes a depthwise
    1x1 Conv (weight k, bias c), which the accelerator runs. Needs constants
    folded and static shapes (ONNX shape inference)."""
    g = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        d = _dims(vi)
        if d is not None and None not in d:
            shapes[vi.name] = d
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    outputs = {o.name for o in g.output}

    def affine_of(node):
        """(activation input, k, c) of one affine node, or None."""
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "BatchNormalization":
            if len(node.output) > 1 and any(node.output[1:]) or _attrs(node).get("training_mode", 0):
                return None
            x = node.input[0]
            if x not in shapes or len(shapes[x]) != 4 or not all(i in consts for i in node.input[1:5]):
                return None
            c = shapes[x][1]
            gamma, beta, mean, var = (np.asarray(consts[i], dtype=np.float64).reshape(-1) for i in node.input[1:5])
            if not all(v.size == c for v in (gamma, beta, mean, var)):
                return None
            eps = float(_attrs(node).get("epsilon", 1e-5))
            k = gamma / np.sqrt(var + eps)
            return x, k, beta - k * mean
        if node.op_type in ("Mul", "Add", "Sub") and len(node.input) == 2:
            for xi in (0, 1):
                x, cst = node.input[xi], node.input[1 - xi]
                if cst not in consts or x in consts or x not in shapes or len(shapes[x]) != 4:
                    continue
                if node.output[0] not in shapes or shapes[node.output[0]] != shapes[x]:
                    continue
                v = _per_channel_const(consts[cst], shapes[x][1])
                if v is None:
                    continue
                if node.op_type == "Mul":
                    return x, v, np.zeros_like(v)
                if node.op_type == "Add":
                    return x, np.ones_like(v), v
                if xi == 0:  # x - c
                    return x, np.ones_like(v), -v
                return None  # c - x: negation, not worth a special case
        return None

    consumers = _consumers(g)
    producer = {o: n for n in g.node for o in n.output}
    removed: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    new_inits = []
    for node in list(g.node):
        if id(node) in removed:
            continue
        first = affine_of(node)
        if first is None:
            continue
        x, k, c = first
        chain = [node]
        while True:
            out = chain[-1].output[0]
            readers = consumers.get(out, [])
            if out in outputs or len(readers) != 1:
                break
            nxt = affine_of(readers[0][0])
            if nxt is None or nxt[0] != out:
                break
            chain.append(readers[0][0])
            k, c = nxt[1] * k, nxt[1] * c + nxt[2]
        out = chain[-1].output[0]
        for n in chain:
            removed.add(id(n))
        prod = producer.get(x)
        conv_ok = (
            prod is not None
            and prod.op_type == "Conv"
            and prod.domain in ("", "ai.onnx")
            and id(prod) not in removed
            and len(consumers.get(x, [])) == 1
            and x not in outputs
            and prod.input[1] in consts
            and (len(prod.input) < 3 or not prod.input[2] or prod.input[2] in consts)
            and len(consumers.get(prod.input[1], [])) == 1
        )
        if conv_ok:
            w = np.asarray(consts[prod.input[1]], dtype=np.float64)
            if w.shape[0] != k.size:
                conv_ok = False
        if conv_ok:
            b = np.asarray(consts[prod.input[2]], dtype=np.float64) if len(prod.input) > 2 and prod.input[2] else 0.0
            wf = (w * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
            bf = (k * b + c).astype(np.float32)
            wname, bname = f"{prod.input[1]}_folded", f"{out}_folded_bias"
            new_inits += [numpy_helper.from_array(wf, wname), numpy_helper.from_array(bf, bname)]
            conv = onnx.NodeProto()
            conv.CopyFrom(prod)
            del conv.input[:]
            conv.input.extend([prod.input[0], wname, bname])
            conv.output[0] = out
            replace[id(prod)] = conv
        else:
            ch = k.size
            wname, bname = f"{out}_affine_weight", f"{out}_affine_bias"
            new_inits += [
                numpy_helper.from_array(k.reshape(ch, 1, 1, 1).astype(np.float32), wname),
                numpy_helper.from_array(c.astype(np.float32), bname),
            ]
            dw = helper.make_node(
                "Conv", [x, wname, bname], [out], name=chain[0].name or f"{out}_affine", group=ch, kernel_shape=[1, 1]
            )
            replace[id(chain[0])] = dw
            removed.discard(id(chain[0]))
    nodes = []
    for n in g.node:
        if id(n) in replace:
            nodes.append(replace[id(n)])
        elif id(n) not in removed:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float-model clean-up before quantization, in place: constants
    folded, no-ops dropped, affine chains folded (see the functions used)."""
    fold_constants(model)
    remove_no_ops(model)
    fold_affine(model)
    return model


def share_concat_scales(model: onnx.ModelProto, float_model: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Give the inputs of a channel Concat the Concat output's quantization
    where that is free, in place on a QDQ model from onnxruntime (which
    calibrates every Concat input on its own): the input's QuantizeLinear and
    the DequantizeLinears reading it switch to the output's scale/zero point,
    so the accelerator places the input as a slice of the output without a
    requantizing copy. Concats are visited last first so nested ones
    (DenseNet) share down the chain.

    Only where the output's real range covers the input's (MinMax
    calibration makes the Concat's range the union of its inputs'), so the
    wider quantization clamps nothing the input's did not -- except where
    onnxruntime removed a Relu/Clip because the input's range itself does
    the clamping: float_model (the float model that was quantized) tells
    which tensors those are. A removed Relu needs the zero point to stay at
    int8 min; after a removed Clip nothing is shared. Without float_model
    any input may hide a removed activation: only inputs with the output's
    zero point and a smaller scale share then (which still drops a removed
    Clip's upper bound, so pass float_model for models with Clip)."""
    g = model.graph
    removed = None
    if float_model is not None:
        producers = {o: n for n in g.node for o in n.output}
        removed = {}
        for n in float_model.graph.node:
            if n.op_type in ("Relu", "Clip") and n.output and n.output[0]:
                p = producers.get(n.output[0])
                if p is None or p.op_type != n.op_type:
                    removed[n.output[0]] = n.op_type
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers = _consumers(g)

    def qdq_params(node):
        if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
            return None
        s, z = inits[node.input[1]], inits[node.input[2]]
        if s.size != 1 or z.dtype != np.int8:
            return None
        return float(s.reshape(-1)[0]), int(z.reshape(-1)[0])

    for cat in reversed([n for n in g.node if n.op_type == "Concat" and n.domain in ("", "ai.onnx")]):
        if _attrs(cat).get("axis") not in (1, -3):
            continue
        readers = consumers.get(cat.output[0], [])
        if len(readers) != 1 or readers[0][0].op_type != "QuantizeLinear":
            continue
        q_out = readers[0][0]
        p_out = qdq_params(q_out)
        if p_out is None:
            continue
        for x in cat.input:
            dq = producer.get(x)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or qdq_params(dq) != qdq_params(q):
                continue
            p_in = qdq_params(q)
            if p_in is None or p_in == p_out:
                continue
            act = "Relu" if removed is None else removed.get(q.input[0])
            if act == "Clip":
                continue
            if act == "Relu" and (p_in[1] != p_out[1] or p_in[0] > p_out[0]):
                continue  # equal zero points: the wider range has the larger scale
            lo_in, hi_in = (-128 - p_in[1]) * p_in[0], (127 - p_in[1]) * p_in[0]
            lo_out, hi_out = (-128 - p_out[1]) * p_out[0], (127 - p_out[1]) * p_out[0]
            tol = 1e-6 * (hi_out - lo_out)
            if lo_out > lo_in + tol or hi_out < hi_in - tol:
                continue
            readers_q = [n for n, _ in consumers.get(q.output[0], [])]
            if not all(n.op_type == "DequantizeLinear" and qdq_params(n) == p_in for n in readers_q):
                continue
            for n in [q] + readers_q:
                n.input[1], n.input[2] = q_out.input[1], q_out.input[2]
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


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
    share_scales: bool = True,
) -> onnx.ModelProto:
    """Static int8 quantization to QDQ with onnxruntime.

    Weights int8 symmetric per output channel, activations int8 asymmetric
    (MinMax calibration). calibration: an array of one sample or N samples
    stacked on the batch axis, an iterable of arrays or {input: array} dicts,
    or None for num_random generated inputs (with a warning: int8 accuracy
    depends on representative data). Models that already hold
    QuantizeLinear/DequantizeLinear are returned as loaded. extra_options are
    merged over the defaults and passed to onnxruntime's quantize_static.

    Before quantization the float graph is cleaned up (:func:`simplify`:
    constant subgraphs folded, Identity/Dropout dropped, BatchNormalization
    and per-channel Mul/Add chains folded into the preceding Conv or turned
    into a depthwise 1x1 Conv). share_scales: afterwards give Concat inputs
    the Concat's quantization where that loses no range
    (:func:`share_concat_scales`), so Concats need no requantizing copies."""
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
    try:
        simplify(proto)
    except onnx.shape_inference.InferenceError as e:
        raise FrontendError(f"ONNX shape inference failed on the float model: {e}") from e
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
        qdq = onnx.load(out)
    if share_scales:
        share_concat_scales(qdq, proto)
    return qdq


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
    flattened [1, K] for a fully-connected output): (q - zp) * scale.
    A float32 output (tensor.dtype "float32", computed on the CPU) is only
    put into the ONNX layout."""
    q = np.asarray(q)
    if tensor.dtype == "float32":  # a float graph output computed on the CPU
        if q.dtype != np.float32 or tuple(q.shape) != tuple(tensor.shape):
            raise FrontendError(
                f"output '{tensor.name}': expected float32 HWC {list(tensor.shape)}, got {q.dtype} {list(q.shape)}"
            )
        return np.ascontiguousarray(q.transpose(2, 0, 1)).reshape(_onnx_layout(tensor))
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
    # (k, c, node, name) -> None: fold a per-channel affine y = k * x + c
    # into the producer (convolutions), None where that is not possible.
    affine: Callable | None = None


def _hwc(shape, what: str) -> tuple[int, int, int]:
    s = list(shape)
    if len(s) == 4 and s[0] == 1:
        return (s[2], s[3], s[1])
    if len(s) == 2 and s[0] == 1:
        return (1, 1, s[1])
    raise FrontendError(f"{what} has shape {s}; the accelerator handles [1, C, H, W] and [1, K] tensors")


def _layer_inputs(layer) -> list[str]:
    return list(layer.inputs) if hasattr(layer, "inputs") else [layer.input]


def _layer_outputs(layer) -> list[str]:
    return list(layer.outputs) if hasattr(layer, "outputs") else [layer.output]


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


def resolve_pads(op_type, name, attrs, in_hw, kernel, strides) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) from pads or auto_pad (2-D)."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        p = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
        if len(p) != 4:
            raise UnsupportedOperatorError(op_type, name, f"pads {p} (only 2-D is supported)")
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
    raise UnsupportedOperatorError(op_type, name, f"auto_pad {auto}")


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

    def __init__(self, model: onnx.ModelProto, fallback: bool = False):
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
        self.concat_inputs: set[str] = set()  # tensors placed as a slice of some Concat output
        # CPU fallback state: regions (union-find over ids) of ONNX node indices.
        self.fallback = fallback
        self.initializer_names = {t.name for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.node_index = {id(n): k for k, n in enumerate(g.node)}
        self.parent: dict[int, int] = {}
        self.region_nodes: dict[int, set] = {}
        self.region_inputs: dict[int, set] = {}  # IR tensors read at the boundary
        self.region_seq: dict[int, int] = {}
        self.cpu_val: dict[str, int] = {}  # ONNX value computed inside a region -> region
        self.cpu_q: dict[str, tuple] = {}  # int8 per-tensor values in regions -> (scale, zp)
        self.cpu_dq: dict[str, str] = {}  # float value = DequantizeLinear(int8 region value)
        self.materialized: dict[str, int] = {}  # region int8 values that are IR tensors
        self.cpu_node: dict[str, int] = {}  # Q/DQ on region values -> node index
        self.float_outputs: dict[str, int] = {}  # float graph outputs computed on the CPU

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
            "Sub": self.on_add,  # by a constant only
            "Mul": self.on_mul,  # by a per-channel constant only
            "BatchNormalization": self.on_batchnorm,
            "Concat": self.on_concat,
            "Relu": self.on_activation,
            "Clip": self.on_activation,
        }
        for v in VIEW_OPS:
            handlers[v] = self.on_view
        for idx, node in enumerate(self.model.graph.node):
            if node.op_type == "Constant":
                continue
            nname = node.name or f"{node.op_type}_{idx}"
            if self.fallback and any(i in self.cpu_val for i in node.input if i):
                self.on_cpu_reader(node, nname, idx, handlers)
                continue
            try:
                self.dispatch(node, nname, idx, handlers)
            except UnsupportedOperatorError:
                if not self.fallback:
                    raise
                self.to_cpu(node, nname, idx)
        return self.finish()

    def dispatch(self, node, nname, idx, handlers):
        handler = handlers.get(node.op_type) if node.domain in ("", "ai.onnx", "com.microsoft") else None
        if handler is None or (node.domain == "com.microsoft" and node.op_type not in QDQ_OPS):
            self.unsupported(node, nname)
        handler(node, nname, idx)

    # ---- CPU fallback: regions of ONNX nodes cut out into ir.CpuOp layers

    def find(self, rid: int) -> int:
        while self.parent[rid] != rid:
            self.parent[rid] = self.parent[self.parent[rid]]
            rid = self.parent[rid]
        return rid

    def materializable(self, x: str) -> bool:
        """A per-tensor int8 value inside a CPU region that can leave it as an IR tensor."""
        if x not in self.cpu_q or x not in self.shapes:
            return False
        s = list(self.shapes[x])
        return (len(s) == 4 and s[0] == 1) or (len(s) == 2 and s[0] == 1)

    def materialize(self, x: str) -> None:
        """Make the int8 value x of a CPU region an output of it (an IR tensor)."""
        if x in self.tensors:
            return
        s, z = self.cpu_q[x]
        rid = self.find(self.cpu_val[x])
        chain = []
        self.chain_to(x, chain)  # the QuantizeLinear writing x joins the region
        self.region_add(rid, chain)
        self.add_tensor(x, _hwc(self.shapes[x], f"'{x}'"), s, z)
        self.tensors[x].onnx_shape = tuple(self.shapes[x])
        self.qref[x] = _Ref(x, len(self.shapes[x]) == 2)
        self.materialized[x] = rid

    def on_cpu_reader(self, node, nname, idx, handlers):
        """A node reading a value computed on the CPU."""
        x = node.input[0]
        if node.op_type in QDQ_OPS and x in self.cpu_val:
            rid = self.find(self.cpu_val[x])
            out = node.output[0]
            self.cpu_val[out] = rid
            self.cpu_node[out] = idx  # joins the region when a CPU node reads it (chain_to)
            if node.op_type == "QuantizeLinear":
                try:
                    scale, zp = self.qparams(node, nname)
                except UnsupportedOperatorError:
                    return
                if zp.dtype == np.int8 and scale.size == 1:
                    self.cpu_q[out] = (float(scale.ravel()[0]), int(zp.ravel()[0]))
            else:
                self.cpu_dq[out] = x
            return
        # An accelerator op reading int8 results of the CPU through DequantizeLinear.
        reads = [i for i in node.input if i in self.cpu_val]
        if all(i in self.cpu_dq and self.materializable(self.cpu_dq[i]) for i in reads):
            for i in reads:
                q = self.cpu_dq[i]
                self.materialize(q)
                self.fref[i] = _Ref(q, self.qref[q].flat)
            try:
                self.dispatch(node, nname, idx, handlers)
                return
            except UnsupportedOperatorError:
                pass
        self.to_cpu(node, nname, idx)

    def chain_to(self, value: str, out: list) -> None:
        """The nodes computing `value` from IR tensors and constants (the
        DequantizeLinear / view / Q-DQ chain at a region's boundary)."""
        if value in self.tensors:
            return
        if value in self.cpu_node:  # a Q/DQ on a region value: walk through to the region
            if self.cpu_node[value] not in out:
                out.append(self.cpu_node[value])
                self.chain_to(self.model.graph.node[self.cpu_node[value]].input[0], out)
            return
        if value in self.cpu_val or value in self.tensors or value in self.initializer_names or not value:
            return
        node = self.producer.get(value)
        if node is None:
            raise FrontendError(f"cannot cut out a CPU subgraph: '{value}' has no producer")
        idx = self.node_index[id(node)]
        if idx in out:
            return
        out.append(idx)
        for i in node.input:
            self.chain_to(i, out)

    def region_deps(self, tensors, memo=None) -> set:
        """Root ids of the CPU regions the given IR tensors depend on."""
        memo = {} if memo is None else memo
        producers = {o: layer for layer in self.layers for o in _layer_outputs(layer)}
        result = set()

        def deps(t):
            if t in memo:
                return memo[t]
            memo[t] = set()
            d = set()
            if t in self.materialized:
                r = self.find(self.materialized[t])
                d.add(r)
                for i in self.region_inputs[r]:
                    d |= deps(i)
            elif t in producers:
                for i in _layer_inputs(producers[t]):
                    d |= deps(i)
            memo[t] = d
            return d

        for t in tensors:
            result |= deps(t)
        return result

    def region_add(self, rid, idxs, inputs=()):
        self.region_nodes[rid].update(idxs)
        self.region_inputs[rid].update(inputs)
        self.region_seq[rid] = len(self.layers)

    def to_cpu(self, node, nname, idx):
        """Put `node` on the CPU, in the region of the CPU values it reads
        (merging regions it joins), with DequantizeLinear chains from the IR
        tensors it reads at the boundary. Where joining a region would make
        the cut cyclic (the node also reads an accelerator result computed
        from that region), int8 results of the region are read as boundary
        inputs instead, and the node starts a region of its own."""
        rids, boundary, chain = self.cpu_inputs(node, nname, split=set())
        if rids and boundary:
            cyclic = self.region_deps(boundary) & rids
            if cyclic:
                rids, boundary, chain = self.cpu_inputs(node, nname, split=cyclic)
                if rids and boundary and self.region_deps(boundary) & rids:
                    raise FrontendError(
                        f"cannot run {node.op_type} '{nname}' on the CPU: it joins a CPU subgraph and also "
                        f"reads an accelerator result computed from that subgraph's output (the cut would "
                        f"be cyclic)"
                    )
        if rids:
            rid = min(rids)
            for r in rids:
                self.parent[r] = rid
                if r != rid:
                    self.region_nodes[rid] |= self.region_nodes.pop(r)
                    self.region_inputs[rid] |= self.region_inputs.pop(r)
        else:
            rid = len(self.parent)
            self.parent[rid] = rid
            self.region_nodes[rid], self.region_inputs[rid] = set(), set()
        self.region_add(rid, chain + [idx], boundary)
        for o in node.output:
            if o:
                self.cpu_val[o] = rid

    def cpu_inputs(self, node, nname, split: set):
        """(regions joined, boundary IR tensors, chain node indices) of a
        node put on the CPU; values of the regions in `split` that are int8
        results read through a DequantizeLinear become boundary inputs."""
        rids, boundary, chain = set(), set(), []
        for i in node.input:
            if not i:
                continue
            if i in self.cpu_val and self.find(self.cpu_val[i]) in split:
                q = self.cpu_dq.get(i)
                if q is None or not self.materializable(q):
                    raise FrontendError(
                        f"cannot run {node.op_type} '{nname}' on the CPU: it reads '{i}' of a CPU subgraph "
                        f"whose output also feeds the accelerator results it reads (the cut would be cyclic)"
                    )
                self.materialize(q)
                boundary.add(q)
                self.chain_to(i, chain)
            elif i in self.cpu_val:
                rids.add(self.find(self.cpu_val[i]))
                self.chain_to(i, chain)
            elif i in self.fref or i in self.qref:
                ref = self.fref.get(i) or self.qref[i]
                boundary.add(ref.q)
                self.chain_to(i, chain)
            elif i in self.pending:
                raise FrontendError(
                    f"{node.op_type} '{nname}' runs on the CPU but reads the float result of "
                    f"'{self.pending[i].producer}' directly (no QuantizeLinear in between); the accelerator "
                    f"hands over int8 tensors only"
                )
            elif i == self.input_name:
                raise FrontendError(
                    f"{node.op_type} '{nname}' runs on the CPU on the float graph input '{i}' before it is "
                    f"quantized; the accelerator path takes int8 inputs"
                )
            elif i in self.initializer_names or i in self.producer:
                self.chain_to(i, chain)  # constants (and their Q/DQ or Constant producers)
            else:
                raise FrontendError(f"{node.op_type} '{nname}' reads '{i}', which nothing produces")
        return rids, boundary, chain

    def build_cpu_ops(self, outputs: list[str]) -> list:
        """One ir.CpuOp per region that feeds anything."""
        g = self.model.graph
        used = set(outputs)
        for layer in self.layers:
            used.update(_layer_inputs(layer))
        for ins in self.region_inputs.values():
            used.update(ins)
        inits = {t.name: t for t in g.initializer}
        const_nodes = {o: n for n in g.node if n.op_type == "Constant" for o in n.output}
        ops = []
        for rid in sorted(self.region_nodes):
            outs = [t for t, r in self.materialized.items() if self.find(r) == rid and t in used]
            outs += [t for t, r in self.float_outputs.items() if self.find(r) == rid]
            if not outs:
                continue  # computes nothing anything reads
            inputs = sorted(self.region_inputs[rid])
            # Only what the outputs need (a region may have grown nodes whose results nobody reads).
            members = self.region_nodes[rid]
            need, keep = set(outs), set()
            for i in sorted(members, reverse=True):
                if any(o in need for o in g.node[i].output):
                    keep.add(i)
                    need.update(x for x in g.node[i].input if x)
            inputs = [t for t in inputs if t in need]
            nodes = [g.node[i] for i in sorted(keep)]
            if not nodes:
                raise FrontendError(f"internal error: the CPU subgraph for {outs} holds no nodes")
            produced = {o for n in nodes for o in n.output}
            need_inits, need_consts = [], []
            for n in nodes:
                for i in n.input:
                    if not i or i in produced or i in inputs:
                        continue
                    if i in inits:
                        if i not in [t.name for t in need_inits]:
                            need_inits.append(inits[i])
                    elif i in const_nodes:
                        if const_nodes[i] not in need_consts:
                            need_consts.append(const_nodes[i])
                    else:
                        raise FrontendError(f"cannot cut out a CPU subgraph: '{i}' comes from outside it")

            def info(name):
                t = self.tensors[name]
                elem = TensorProto.FLOAT if t.dtype == "float32" else TensorProto.INT8
                return helper.make_tensor_value_info(name, elem, list(self.shapes[name]))

            names = [n.name or f"{n.op_type}_{self.node_index[id(n)]}" for n in nodes]
            sub = helper.make_graph(
                need_consts + nodes, f"cpu_{len(ops)}", [info(i) for i in inputs], [info(o) for o in outs], need_inits
            )
            model = helper.make_model(sub, opset_imports=list(self.model.opset_import))
            model.ir_version = self.model.ir_version
            main = next((n for n, nd in zip(names, nodes) if nd.op_type not in QDQ_OPS | VIEW_OPS), names[-1])
            name = self.layer_name(helper.make_node("CpuOp", [], [], name=f"cpu_{main}"), rid)
            op = ir.CpuOp(name, tuple(inputs), tuple(outs), model.SerializeToString(), onnx_nodes=names)
            ops.append((self.region_seq[rid], op))
        return ops

    def order(self, cpu_ops) -> list:
        """Layers (in reading order) and CPU ops (at the point their region
        last grew) in a valid execution order, stable otherwise."""
        import heapq

        items = [((k, 0), layer) for k, layer in enumerate(self.layers)] + [((s, -1), op) for s, op in cpu_ops]
        producer = {o: n for n, (_, layer) in enumerate(items) for o in _layer_outputs(layer)}
        deps = [{producer[i] for i in _layer_inputs(layer) if i in producer} for _, layer in items]
        readers: dict[int, list] = {}
        for n, d in enumerate(deps):
            for p in d:
                readers.setdefault(p, []).append(n)
        waiting = [len(d) for d in deps]
        heap = [(items[n][0], n) for n in range(len(items)) if not waiting[n]]
        heapq.heapify(heap)
        out = []
        while heap:
            _, n = heapq.heappop(heap)
            out.append(items[n][1])
            for r in readers.get(n, []):
                waiting[r] -= 1
                if not waiting[r]:
                    heapq.heappush(heap, (items[r][0], r))
        if len(out) != len(items):
            raise FrontendError("the accelerator/CPU partition has a cycle")
        return out


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
            flat = view(self.pending[x].shape, self.pending[x].flat)
            p = self.take_pending(x, node, nname)
            p.flat = flat
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
            built = p.build(self.tensors[out], _clip_bounds(p.lo, p.hi, scale, zp))
        except ValueError as e:  # e.g. a requantization multiplier >= 2**31
            raise FrontendError(f"'{p.producer}' cannot be requantized to '{out}': {e}") from e
        built = built if isinstance(built, list) else [built]
        layer = built[-1]  # the one writing `out`
        layer.onnx_nodes = list(layer.onnx_nodes) + [n for n in p.nodes if n not in layer.onnx_nodes]
        self.layers.extend(built)
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
        pads = resolve_pads(node.op_type, nname, a, (h, wd), (kh, kw), strides)
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
        state = {"k": np.ones(oc), "c": np.zeros(oc)}  # a folded BatchNormalization / affine

        def affine(k, c, bn, bn_name):
            k = np.broadcast_to(np.asarray(k, dtype=np.float64), (oc,))
            c = np.broadcast_to(np.asarray(c, dtype=np.float64), (oc,))
            k_all = k * state["k"]
            if np.any(k_all == 0) or not np.all(np.isfinite(k_all)) or not np.all(np.isfinite(c)):
                raise FrontendError(
                    f"{bn.op_type} '{bn_name}' cannot be folded exactly into Conv '{nname}': a channel scale "
                    f"is zero or not finite"
                )
            neg = k_all < 0
            if np.any(weight[neg] == -128):
                raise FrontendError(
                    f"{bn.op_type} '{bn_name}' cannot be folded exactly into Conv '{nname}': it negates "
                    f"channels whose int8 weights hold -128"
                )
            state["c"] = k * state["c"] + c
            state["k"] = k_all

        def build(out_t, clip):
            k, c = state["k"], state["c"]
            sign = np.where(k < 0, -1, 1)
            wq = weight if not np.any(k < 0) else (weight.astype(np.int16) * sign[:, None, None, None]).astype(np.int8)
            scale = acc_scale * np.abs(k)
            b = bias
            if np.any(k != 1) or np.any(c):
                b64 = sign * bias.astype(np.int64) + _round_half_even(c / scale).astype(np.int64)
                b = np.clip(b64, INT32_MIN, INT32_MAX).astype(np.int32)
            mult, shift = quant.quantize_multipliers(scale / out_t.scale)
            return ir.Conv(
                name,
                ref.q,
                out_t.name,
                wq,
                b,
                mult,
                shift,
                stride=(int(strides[0]), int(strides[1])),
                pads=tuple(int(p) for p in pads),
                groups=groups,
                clip=clip,
                onnx_nodes=ref.nodes + [nname],
            )

        self.pending[node.output[0]] = _Pending(build, (oh, ow, oc), [], nname, affine=affine)

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
            pads = resolve_pads(node.op_type, nname, a, (h, wd), kernel, strides)
            if a.get("ceil_mode", 0):
                if mode == "avg" and count_pad and not any(pads):
                    # Windows are clipped to the padded extent before counting, so without
                    # explicit padding count_include_pad counts exactly the valid positions.
                    count_pad = False
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
        """ceil_mode as extra bottom/right padding (windows never read it).

        Exact for max pooling (padding never wins a max) and for average
        pooling with count_include_pad=0 (the extra padding is not counted,
        as onnxruntime counts only valid positions). Average pooling with
        count_include_pad=1 counts the explicit padding but not the ceil
        extension (onnxruntime clips windows to the padded extent first),
        which the core's count (whole kernel) cannot express: unsupported,
        so the CPU runs it when fallback is on."""
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
        co = self.const_operand(node)
        if co is not None:  # + per-channel constant: an affine
            i, v = co
            if node.op_type == "Sub" and i == 1:
                self.unsupported(node, nname, "constant minus activation")
            c = self.per_channel(node, nname, node.input[i], v)
            c = -c if node.op_type == "Sub" else c
            self.affine(node, nname, idx, node.input[i], np.ones_like(c), c)
            return
        if node.op_type == "Sub":
            self.unsupported(node, nname, "difference of two activations")
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

    # ---- per-channel affine (BatchNormalization, Mul/Add by constants)

    def float_const(self, name):
        """A constant operand as float64 (dequantized if behind a DequantizeLinear), or None."""
        if name in self.qconst:
            q = self.qconst[name]
            v = q.values.astype(np.float64)
            scale, zp = np.asarray(q.scale, np.float64), np.asarray(q.zero_point, np.float64)
            if scale.size > 1:
                shape = [1] * v.ndim
                shape[q.axis % v.ndim] = scale.size
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            return (v - zp) * scale
        if name in self.consts:
            return np.asarray(self.consts[name], dtype=np.float64)
        return None

    def on_batchnorm(self, node, nname, idx):
        a = _attrs(node)
        if a.get("training_mode", 0) or (len(node.output) > 1 and any(node.output[1:])):
            self.unsupported(node, nname, "training mode")
        params = [self.float_const(i) for i in node.input[1:5]]
        if any(p is None for p in params):
            self.unsupported(node, nname, "scale, bias, mean and variance must be constants")
        gamma, beta, mean, var = (p.reshape(-1) for p in params)
        k = gamma / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        self.affine(node, nname, idx, node.input[0], k, beta - k * mean)

    def affine(self, node, nname, idx, x, k, c):
        """y = k * x + c per channel: folded into a pending Conv, or a
        depthwise 1x1 Conv with weights +-127 and per-channel weight scale
        |k| / 127 on a quantized activation (both exact up to the int32 bias
        rounding)."""
        out = node.output[0]
        if x in self.pending:
            p = self.pending[x]
            n = p.shape[2]
            if p.affine is None or p.done is not None or p.lo != -math.inf or p.hi != math.inf or p.flat:
                raise FrontendError(
                    f"{node.op_type} '{nname}' cannot be folded exactly: it reads the float output of "
                    f"'{p.producer}', which is not a convolution result it can fold into (quantize the "
                    f"float model with vfpga.runtime.frontend.quantize, which folds it before quantizing)"
                )
            k, c = np.broadcast_to(k, (n,)), np.broadcast_to(c, (n,))
            p = self.take_pending(x, node, nname)
            p.affine(k, c, node, nname)
            p.nodes.append(nname)
            self.pending[out] = p
            return
        ref = self.act(node, nname, 0 if node.input[0] == x else 1)
        self.spatial_ok(ref, node, nname)
        t = self.tensors[ref.q]
        ch = t.shape[2]
        if np.size(k) not in (1, ch) or np.size(c) not in (1, ch):
            self.unsupported(node, nname, "parameters are not per channel")
        k = np.broadcast_to(np.asarray(k, np.float64).reshape(-1), (ch,))
        c = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (ch,))
        if np.any(k == 0) or not np.all(np.isfinite(k)) or not np.all(np.isfinite(c)):
            self.unsupported(node, nname, "a channel scale is zero or not finite")
        # Weights +-127 with weight scale |k| / 127: the accumulator's unit is
        # 1/127 of an input step, so the int32 bias carries c with that resolution.
        weight = np.where(k < 0, -127, 127).astype(np.int8).reshape(ch, 1, 1, 1)
        acc_scale = t.scale * np.abs(k) / 127.0
        bias = np.clip(_round_half_even(c / acc_scale), INT32_MIN, INT32_MAX).astype(np.int32)
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            mult, shift = quant.quantize_multipliers(acc_scale / out_t.scale)
            return ir.Conv(
                name, ref.q, out_t.name, weight, bias, mult, shift, groups=ch, clip=clip,
                onnx_nodes=ref.nodes + [nname],
            )

        self.pending[out] = _Pending(build, t.shape, [], nname, ref.flat)

    def const_operand(self, node):
        """(activation input index, constant values) of a binary node with one
        constant operand, or None."""
        if len(node.input) != 2:
            return None
        for i in (0, 1):
            v = self.float_const(node.input[1 - i])
            if v is not None and node.input[i] not in self.consts and node.input[i] not in self.qconst:
                return i, v
        return None

    def per_channel(self, node, nname, x, v):
        """A constant operand of a binary op on activation x as a [C] vector
        (scalar, [C, 1, 1] / [1, C, 1, 1] on 4-D, [C] / [1, C] on [1, C])."""
        if x in self.pending:
            ch = self.pending[x].shape[2]
        elif x in self.fref:
            ch = self.tensors[self.fref[x].q].shape[2]
        else:
            self.unsupported(node, nname, f"'{x}' is not a quantized activation")
        rank = len(self.shapes[x]) if x in self.shapes else 4
        v = np.asarray(v, dtype=np.float64)
        if v.size == 1:
            return np.full(ch, float(v.reshape(-1)[0]))
        vv = None
        if rank == 4:
            vv = _per_channel_const(v, ch)
        elif rank == 2 and v.size == ch and v.ndim <= 2 and v.shape[0] in (1, ch):
            vv = v.reshape(ch)
        if vv is None:
            self.unsupported(node, nname, f"constant operand of shape {list(v.shape)} is not per channel")
        return vv

    def on_mul(self, node, nname, idx):
        co = self.const_operand(node)
        if co is None:
            self.unsupported(node, nname, "only a product with a per-channel constant is supported")
        i, v = co
        k = self.per_channel(node, nname, node.input[i], v)
        self.affine(node, nname, idx, node.input[i], k, np.zeros_like(k))

    # ---- concatenation

    def on_concat(self, node, nname, idx):
        axis = _attrs(node).get("axis", 1)
        out = node.output[0]
        rank = len(self.shapes[out]) if out in self.shapes else None
        refs = [self.act(node, nname, i) for i in range(len(node.input))]
        ts = [self.tensors[r.q] for r in refs]
        flat = all(r.flat for r in refs)
        if rank == 4 and axis in (1, -3) and not any(r.flat for r in refs):
            pass
        elif rank == 2 and axis in (1, -1) and flat and all(t.shape[:2] == (1, 1) for t in ts):
            pass
        else:
            self.unsupported(node, nname, f"concatenation on axis {axis} of rank {rank} (only channels)")
        if len({t.shape[:2] for t in ts}) != 1:
            raise FrontendError(f"Concat '{nname}': inputs of different spatial size {[t.shape for t in ts]}")
        h, w = ts[0].shape[:2]
        shape = (h, w, sum(t.shape[2] for t in ts))
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            layers, inputs = [], []
            for i, (r, t) in enumerate(zip(refs, ts)):
                same = (t.scale, t.zero_point) == (out_t.scale, out_t.zero_point)
                placeable = (
                    r.q not in self.concat_inputs  # one slice per tensor
                    and r.q not in inputs
                    and r.q != self.input_q  # the graph input lives in its own buffer
                )
                if same and placeable and clip == (quant.INT8_MIN, quant.INT8_MAX):
                    inputs.append(r.q)
                    continue
                # A requantizing copy writes the input with the output's
                # quantization (an exact copy when the parameters are equal).
                copy = f"{out_t.name}__in{i}"
                self.add_tensor(copy, t.shape, out_t.scale, out_t.zero_point)
                mult, shift = quant.quantize_multiplier(t.scale / out_t.scale, max_shift=30)
                copy_name = f"{name}__in{i}"
                self.names.add(copy_name)
                layers.append(
                    ir.Pool(
                        copy_name, r.q, copy, "max", (1, 1), mult=mult, shift=shift, clip=clip,
                        onnx_nodes=r.nodes + [nname],
                    )
                )
                inputs.append(copy)
            self.concat_inputs.update(inputs)
            layers.append(ir.Concat(name, tuple(inputs), out_t.name, onnx_nodes=[n for r in refs for n in r.nodes] + [nname]))
            return layers

        self.pending[out] = _Pending(build, shape, [], nname, flat)

    # ---- wrap-up

    def finish(self) -> ir.Graph:
        g = self.model.graph
        if self.input_q is None:
            raise FrontendError(f"the graph input '{self.input_name}' is not quantized by a QuantizeLinear")
        outputs = []
        for o in g.output:
            name = self.graph_output(o.name)
            outputs.append(name)
            if o.name in self.shapes:
                self.tensors[name].onnx_shape = tuple(self.shapes[o.name])
        self.tensors[self.input_q].onnx_shape = tuple(self.shapes[self.input_name])
        if self.region_nodes:
            self.layers = self.order(self.build_cpu_ops(outputs))
        self.fold_activations(outputs)
        used = {self.input_q, *outputs}
        for layer in self.layers:
            used.update(_layer_inputs(layer))
            used.update(_layer_outputs(layer))
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        graph = ir.Graph(tensors, self.layers, [self.input_q], outputs, name=g.name or "model")
        graph.onnx_nodes = [
            (n.name or f"{n.op_type}_{k}", n.op_type) for k, n in enumerate(g.node)
        ]
        return graph

    def graph_output(self, name: str) -> str:
        """The IR tensor holding graph output `name`."""
        if name in self.cpu_val:
            q = self.cpu_dq.get(name, name)
            if self.materializable(q):  # int8 from the CPU, dequantized on the host
                self.materialize(q)
                return q
            if name not in self.shapes:
                raise FrontendError(f"graph output '{name}' (computed on the CPU) has no static shape")
            self.add_tensor(name, _hwc(self.shapes[name], f"graph output '{name}'"), 1.0, 0)
            elem = next(o for o in self.model.graph.output if o.name == name).type.tensor_type.elem_type
            if elem != TensorProto.FLOAT:
                raise FrontendError(
                    f"graph output '{name}' (computed on the CPU) is {TensorProto.DataType.Name(elem)}; "
                    f"outputs are int8 tensors or float32 ones"
                )
            self.tensors[name].dtype = "float32"
            self.float_outputs[name] = self.cpu_val[name]
            return name
        ref = self.fref.get(name) or self.qref.get(name)
        if ref is None:
            p = self.pending.get(name)
            src = f"float output of '{p.producer}'" if p else "not produced through QuantizeLinear/DequantizeLinear"
            raise FrontendError(f"graph output '{name}' is {src}; the accelerator's outputs are int8 tensors")
        return ref.q

    def fold_activations(self, outputs):
        """Fold identity-requantizing 1x1 max pools (a Relu/Clip that ORT
        kept between Q/DQ pairs with unchanged params) into the layer that
        produces their input: max(clamp(v, lo1, hi1), lo2) ... is exactly
        clamp(v, max(lo), min(hi)) when the int8 data means the same."""
        changed = True
        while changed:
            changed = False
            producers = {o: layer for layer in self.layers for o in _layer_outputs(layer)}
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
                if prod is None or prod.kind not in ("conv", "pool", "add"):
                    continue
                if readers.get(p.input) != 1 or p.input in outputs:
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


def to_graph(model, fallback: bool = False, *, input_shape=None) -> ir.Graph:
    """Read a QDQ model (path, bytes or ModelProto) into the layer IR.

    fallback=False: raises UnsupportedOperatorError for the first op or
    attribute the accelerator does not have. fallback=True: every maximal
    connected run of such nodes becomes one ir.CpuOp (an ONNX model cut out
    of the QDQ graph, its boundary DequantizeLinear/QuantizeLinear nodes
    included, so it reads and writes int8 tensors; a float graph output
    computed on the CPU is a float32 output of it, ir.Tensor.dtype
    "float32"). FrontendError for anything else that cannot be mapped
    exactly. Constant subgraphs (Constant, Shape of static shapes,
    ConstantOfShape, ...) are folded first. The graph's ``onnx_nodes`` list
    (name, op_type) of every node of the QDQ model feeds placement_report."""
    proto = load_model(model, input_shape=input_shape)
    if not is_qdq(proto):
        raise FrontendError(
            "the model holds no QuantizeLinear/DequantizeLinear: quantize it first (frontend.quantize)"
        )
    _drop_initializer_inputs(proto)
    try:
        fold_constants(proto)
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as e:
        raise FrontendError(f"ONNX shape inference failed on the quantized model: {e}") from e
    return _Reader(proto, fallback=fallback).read()


def placement_report(graph: ir.Graph) -> list[tuple[str, str, str]]:
    """Where each node of the QDQ model the graph was read from runs:
    (node name, op_type, "accelerator" | "cpu" | "folded"), in model order.
    "folded": absorbed at compile time (Quantize/DequantizeLinear pairs,
    views, Relu/Clip fused into a clamp, constants) -- no work of its own."""
    nodes = getattr(graph, "onnx_nodes", None)
    if not nodes:
        raise FrontendError("the graph carries no ONNX node list (it was not read by frontend.to_graph)")
    op_of = dict(nodes)
    plumbing = QDQ_OPS | VIEW_OPS | {"Concat"}
    where = {}
    for layer in graph.layers:
        if layer.kind == "cpu":
            for n in layer.onnx_nodes:
                where[n] = "cpu"
            continue
        names = list(layer.onnx_nodes)
        compute = [n for n in names if op_of.get(n) not in plumbing]
        # A layer made of plumbing only (a requantizing QuantizeLinear, a
        # Concat's copy) is that plumbing's work; otherwise plumbing is folded.
        for n in compute or [n for n in names if op_of.get(n) not in VIEW_OPS]:
            where.setdefault(n, "accelerator")
    return [(name, op, where.get(name, "folded")) for name, op in nodes]
