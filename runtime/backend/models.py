"""Preparing an ONNX model for the accelerator path: which ops it takes,
which graph inputs are parameters, static shapes, the small rewrites
onnxruntime's quantizer needs."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vfpga.runtime.compiler import frontend
from vfpga.runtime.compiler.frontend import UnsupportedOperatorError, qlinear_model

from .devices import BackendError

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
# Float/QDQ ops the accelerator path takes (frontend), plus what its
# quantization pre-processing folds away.
FLOAT_OPS = frozenset(frontend.ACCELERATOR_OPS | frontend.VIEW_OPS | frontend.QDQ_OPS) | {
    "Constant",
    "BatchNormalization",
}
# Elementwise ops: a model made only of these does not care about layout.
ELEMENTWISE_OPS = frozenset({"Relu", "Clip", "Identity", "Dropout", "QuantizeLinear", "DequantizeLinear", "Constant"})
# Ops that treat the leading axis as a batch (for running N > 1 as N requests).
BATCH_OPS = frozenset(
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
ACTIVATION_SLOTS = dict(qlinear_model.ACTIVATION_SLOTS)
ACTIVATION_SLOTS.update(
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





def runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def split_inputs(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(activation inputs, parameter inputs) among the runtime graph inputs.
    A parameter is a graph input read only in parameter slots (weights,
    bias, scales, zero points, clip bounds, shapes)."""
    act, params = [], []
    for vi in runtime_inputs(model):
        uses = [(n, k) for n in model.graph.node for k, i in enumerate(n.input) if i == vi.name]
        if not uses or any(k in ACTIVATION_SLOTS.get(n.op_type, (0,)) for n, k in uses):
            act.append(vi.name)
        else:
            params.append(vi.name)
    return act, params


def bind_inputs(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the given graph inputs turned into initializers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [i for i in m.graph.input if i.name not in values]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for name, v in values.items():
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(v), name))
    return m


def static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape") or not all(d.HasField("dim_value") for d in tt.shape.dim):
        return None
    return tuple(int(d.dim_value) for d in tt.shape.dim)


def reshape_io(model: onnx.ModelProto, in_shape, out_shapes: dict | None) -> onnx.ModelProto:
    """Copy with a new static input shape; output shapes set or re-inferred."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inp = runtime_inputs(m)[0]
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


def check_ops(model: onnx.ModelProto, integer: bool) -> None:
    """Clear errors at prepare for ops the accelerator path does not have."""
    for idx, n in enumerate(model.graph.node):
        nname = n.name or f"{n.op_type}_{idx}"
        if n.op_type in qlinear_model.NOT_ON_CORE:
            raise UnsupportedOperatorError(n.op_type, nname, qlinear_model.NOT_ON_CORE[n.op_type])
        if integer:
            ok = (n.domain in ("", "ai.onnx") and n.op_type in qlinear_model.INTEGER_OPS | {"Constant"}) or (
                n.domain == "com.microsoft" and n.op_type in qlinear_model.MS_OPS
            )
        else:
            ok = n.domain in ("", "ai.onnx") and n.op_type in FLOAT_OPS
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


def normalize_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
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
NEEDS_QUANTIZED_INPUT = frozenset({"Relu", "Clip"})


def anchor_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """When the float input feeds an op onnxruntime quantizes only behind a
    quantized tensor, insert an identity 1x1 MaxPool (max over one element
    is the element) at the input, which it does quantize. The front end maps
    it to one 1x1 pool layer, into which it folds the Relu/Clip clamp; the
    node shows in rep.placement() as "vfpga_input_anchor"."""
    (inp,) = runtime_inputs(model)
    shape = static_shape(inp)
    readers = [n for n in model.graph.node if inp.name in n.input]
    if shape is None or len(shape) != 4 or not any(n.op_type in NEEDS_QUANTIZED_INPUT for n in readers):
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


def content_key(values: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(values):
        a = np.ascontiguousarray(values[name])
        h.update(name.encode() + b"\0" + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()
