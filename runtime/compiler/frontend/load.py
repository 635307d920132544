"""Loading a model for the accelerator path: parse, check, bind the input
shape, normalise what old exporters wrote."""

from __future__ import annotations

import os

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from .errors import FrontendError
from .ops import QDQ_OPS, infer_shapes, onnx_opset, real_inputs, static_dims

# ---------------------------------------------------------------- loading


# The default-domain opsets the front end takes: from 9 (the oldest the
# quantizer's converter handles) to the newest the onnx/onnxruntime pins know
# (22: the ONNX backend node tests are written at it). QDQ models need 10.
OPSETS = (9, 22)
QDQ_OPSETS = (10, 22)


def load_model(model, input_shape=None, calibration=None) -> onnx.ModelProto:
    """Load and validate a model for the accelerator path, as tolerant as
    onnxruntime and as strict as correctness needs.

    model: a path, serialized bytes or an onnx.ModelProto (copied, never
    modified). input_shape: explicit [1, C, H, W] for a model whose input
    has dynamic/unknown dims; without it, the first calibration sample's
    shape binds them (calibration as for frontend.quantize). Nodes are put in topological order (a cycle is
    an error naming its nodes); the default-domain opset must lie in
    OPSETS (QDQ models: QDQ_OPSETS); value_info and graph output shapes are
    dropped and re-inferred from the input shape (exporters leave stale or
    partial ones that onnxruntime ignores). Raises FrontendError naming the
    problem."""
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

    opset = onnx_opset(proto)
    lo, hi = QDQ_OPSETS if is_qdq(proto) else OPSETS
    if opset and not lo <= opset <= hi:  # (no opset at all: the checker says what is wrong)
        raise FrontendError(f"{what} uses ONNX opset {opset}; the front end takes opsets {lo} to {hi} "
                            f"(convert it with onnx.version_converter)")
    topological_sort(proto.graph)
    _known_ops(proto)
    _shapes_for_the_checker(proto)
    # Protobuf parses many byte strings into *some* message; the checker
    # tells an ONNX model from an accident.
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise FrontendError(f"{what} is not a valid ONNX model (onnx.checker: {e})") from e

    inputs = real_inputs(proto)
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs) or "none"
        raise FrontendError(
            f"the model has {len(inputs)} inputs ({names}); the accelerator path takes exactly one"
        )
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        dt = TensorProto.DataType.Name(inp.type.tensor_type.elem_type)
        raise FrontendError(f"input '{inp.name}' has element type {dt}; expected a float32 NCHW image tensor")

    dims = static_dims(inp)
    if input_shape is None and (dims is None or None in dims):
        input_shape = calibration_shape(calibration)
    bound = input_shape is not None and dims != [int(d) for d in input_shape]
    if input_shape is not None:
        _override_input_shape(inp, dims, input_shape)
        dims = static_dims(inp)
    if dims is None:
        raise FrontendError(f"input '{inp.name}' has no shape; pass input_shape=(1, C, H, W)")
    for i, d in enumerate(dims):
        if d is None:
            sym = inp.type.tensor_type.shape.dim[i].dim_param
            label = f"'{sym}'" if sym else "unknown"
            raise FrontendError(
                f"input '{inp.name}' has a dynamic dimension {i} ({label}); "
                f"pass input_shape=(1, C, H, W) (or calibration data of that shape) to fix it"
            )
    if not dims or dims[0] != 1:
        raise FrontendError(
            f"input '{inp.name}' has batch {dims[0] if dims else '?'} (shape {dims}); batch 1 is what the "
            f"accelerator path runs: export the model with batch 1 or pass input_shape=(1, ...)"
        )
    if bound or not is_qdq(proto):  # a QDQ model as given stays as it is (to_graph infers its shapes)
        reinfer_shapes(proto)
    return proto


HOST_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")  # what onnxruntime's CPU provider runs


def _known_ops(proto: onnx.ModelProto) -> None:
    """Every node is an op the cores or onnxruntime's CPU provider know;
    otherwise FrontendError naming the node."""
    for k, n in enumerate(proto.graph.node):
        domain = n.domain or ""
        known = domain in HOST_DOMAINS and (domain == "com.microsoft" or onnx.defs.has(n.op_type, domain))
        if not known:
            where = f"domain '{domain}'" if domain else "the ONNX standard"
            raise FrontendError(f"node '{n.name or n.output[0] if n.output else k}' is {n.op_type} of {where}: "
                                f"neither the cores nor onnxruntime's CPU provider run it")


def _shapes_for_the_checker(proto: onnx.ModelProto) -> None:
    """value_info dropped (stale or partial: re-inferred later) and graph
    outputs without a shape given the inferred one, as onnxruntime would
    see them: the checker insists on output shapes, exporters omit them."""
    if all(o.type.tensor_type.HasField("shape") for o in proto.graph.output):
        return
    del proto.graph.value_info[:]
    try:
        inferred = infer_shapes(proto)
    except Exception:  # noqa: BLE001 - the checker names the problem
        return
    shapes = {o.name: o.type for o in inferred.graph.output}
    for o in proto.graph.output:
        if not o.type.tensor_type.HasField("shape") and shapes.get(o.name) is not None:
            if shapes[o.name].tensor_type.HasField("shape"):
                o.type.CopyFrom(shapes[o.name])


def topological_sort(graph) -> None:
    """Nodes in an order where every value is produced before it is read
    (onnxruntime sorts too; the checker insists). A cycle raises
    FrontendError naming the nodes on it."""
    produced_by = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    deps = [{produced_by[i] for i in n.input if i in produced_by} for n in graph.node]
    if all(d < k for k, dd in enumerate(deps) for d in dd):
        return
    readers: dict[int, list[int]] = {}
    for k, dd in enumerate(deps):
        for d in dd:
            readers.setdefault(d, []).append(k)
    waiting = [len(d) for d in deps]
    ready = [k for k, w in enumerate(waiting) if not w]
    order = []
    while ready:
        k = ready.pop(0)
        order.append(k)
        for r in readers.get(k, []):
            waiting[r] -= 1
            if not waiting[r]:
                ready.append(r)
    if len(order) != len(graph.node):
        stuck = [k for k in range(len(graph.node)) if k not in set(order)]
        names = ", ".join(f"{graph.node[k].op_type} '{graph.node[k].name or graph.node[k].output[0]}'"
                          for k in stuck[:6])
        raise FrontendError(f"the graph has a cycle: {len(stuck)} nodes wait on each other ({names}"
                            f"{', ...' if len(stuck) > 6 else ''})")
    copies = []
    for k in order:  # the repeated field is cleared below: keep copies
        c = onnx.NodeProto()
        c.CopyFrom(graph.node[k])
        copies.append(c)
    del graph.node[:]
    graph.node.extend(copies)


def reinfer_shapes(proto: onnx.ModelProto) -> None:
    """Drops value_info and the graph outputs' shapes (exporters write stale
    or partial ones) and infers them again from the input shape."""
    del proto.graph.value_info[:]
    saved = {o.name: onnx.TypeProto() for o in proto.graph.output}
    for o in proto.graph.output:
        saved[o.name].CopyFrom(o.type)
        o.type.tensor_type.ClearField("shape")
    try:
        inferred = infer_shapes(proto)
    except Exception as e:
        raise FrontendError(f"ONNX shape inference failed with input shape "
                            f"{static_dims(real_inputs(proto)[0])}: {e}") from e
    proto.CopyFrom(inferred)
    for o in proto.graph.output:  # keep a shape where inference found none (the checker wants one)
        if not o.type.tensor_type.HasField("shape"):
            o.type.CopyFrom(saved[o.name])
            for d in o.type.tensor_type.shape.dim:
                d.Clear()


def calibration_shape(calibration) -> tuple[int, ...] | None:
    """The input shape of the first calibration sample (to bind dynamic dims), or None."""
    if calibration is None:
        return None
    if isinstance(calibration, np.ndarray):
        return (1, *calibration.shape[1:]) if calibration.ndim >= 4 else (1, *calibration.shape)
    try:
        first = next(iter(calibration))
    except (TypeError, StopIteration):
        return None
    if isinstance(first, dict):
        if len(first) != 1:
            return None
        first = next(iter(first.values()))
    a = np.asarray(first)
    return tuple(int(d) for d in (a.shape if a.ndim >= 4 else (1, *a.shape)))


def _override_input_shape(inp, dims, input_shape) -> None:
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


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Old exporters (IR < 4) list every initializer as a graph input too;
    onnxruntime's quantization then expects them fed. They are the model's
    weights, so make them plain initializers."""
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)


def sum_to_add(model: onnx.ModelProto) -> None:
    """Two-input Sum (Caffe2-era residuals) as Add: the same values, and Add
    is an op onnxruntime quantizes (it leaves Sum, and what follows, float)."""
    for n in model.graph.node:
        if n.op_type == "Sum" and n.domain in ("", "ai.onnx") and len(n.input) == 2:
            n.op_type = "Add"


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)
