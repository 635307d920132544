"""Loading a model for the accelerator path: parse, check, bind the input
shape, normalise what old exporters wrote."""

from __future__ import annotations

import os

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from .errors import FrontendError
from .ops import QDQ_OPS, real_inputs, static_dims

# ---------------------------------------------------------------- loading






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
    if input_shape is not None:
        _override_input_shape(proto, inp, dims, input_shape)
        dims = static_dims(inp)
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
