"""Which ONNX operators the accelerator path takes, and the attribute
helpers the graph readers share."""

from __future__ import annotations

import math

import onnx
from onnx import helper

from .errors import UnsupportedOperatorError

# Ops the CNN core executes (after fusion), plus the layout/no-op and QDQ
# plumbing the reader resolves away. Everything else raises
# UnsupportedOperatorError from QdqReader.unsupported(); with
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
        "ConvTranspose",  # as one convolution per output phase
        "Resize",  # nearest, integer factors
        # element-wise chains of one quantized tensor: activation tables
        "HardSigmoid",
        "HardSwish",
        "Sigmoid",
        "Tanh",
        "Div",
    }
)
# Ops whose output spans a very different dynamic range than their input
# (squares, roots): the quantizer leaves them float (see quantization.float_nodes).
RANGE_OPS = frozenset({"Pow", "Sqrt"})
VIEW_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
QOPERATOR_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd"}
)



def attrs(node) -> dict:
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


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    # Older exporters list initializers among the graph inputs.
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def static_dims(vi: onnx.ValueInfoProto) -> list | None:
    """Static dims of a value (None for an unknown dim), or None without shape."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]


def onnx_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 0


def consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i:
                out.setdefault(i, []).append((n, k))
    return out


def rename_input(graph, old: str, new: str) -> None:
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new


def prune_initializers(graph) -> None:
    """Drops the initializers no node reads."""
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def rewrite_nodes(graph, replace: dict, removed: set) -> None:
    """Rebuilds the node list: a node whose id is in ``replace`` becomes the
    node(s) given there (one node or a list), nodes in ``removed`` go; then
    unread initializers go too."""
    nodes = []
    for n in graph.node:
        if id(n) in replace:
            r = replace[id(n)]
            nodes.extend(r if isinstance(r, list) else [r])
        elif id(n) not in removed:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    prune_initializers(graph)


# Initializers of more elements than this pass through shape inference as
# dims alone: operators read the values only of small shape-like inputs
# (Reshape's shape, Slice's starts, Resize's scales, ...), never of weights.
_INFER_DATA_LIMIT = 1024


def infer_shapes(model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    """onnx.shape_inference.infer_shapes(model, **kwargs), without sending the
    weights through it: large initializers go in as external tensors (dims
    and type only) and come back afterwards. The result is the same model
    with inferred value_info; on ResNet-50 the serialising of its 100 MB of
    weights to C++ and back was four fifths of the call."""
    g = model.graph
    big = [i for i, t in enumerate(g.initializer) if t.data_location != onnx.TensorProto.EXTERNAL
           and math.prod(t.dims) > _INFER_DATA_LIMIT]
    if not big:
        return onnx.shape_inference.infer_shapes(model, **kwargs)
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for i in big:
        t = light.graph.initializer[i]
        stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims,
                                data_location=onnx.TensorProto.EXTERNAL)
        stub.external_data.add(key="location", value="(left out for shape inference)")
        t.CopyFrom(stub)
    inferred = onnx.shape_inference.infer_shapes(light, **kwargs)
    for i in big:
        inferred.graph.initializer[i].CopyFrom(g.initializer[i])
    return inferred

