"""Float-graph clean-up before quantization: constant subgraphs folded,
no-op nodes removed, affine chains folded (:func:`simplify`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .activations import fuse_hard_activations
from .affine import fold_affine
from .ops import attrs, infer_shapes, onnx_opset, rename_input, static_dims

# ---------------------------------------------------------------- graph clean-up


# Ops never evaluated at compile time even when their inputs are constants.
_NO_FOLD = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
     "If", "Loop", "Scan", "QuantizeLinear", "DequantizeLinear"}
)


def _opset_of(model: onnx.ModelProto) -> int:
    return onnx_opset(model) or 13


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
        inferred = infer_shapes(model)
    except Exception:
        inferred = model
    static = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        d = static_dims(vi)
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
                at = attrs(node)
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
    stale = [v for v in g.value_info if v.name in inits]  # constants carry their own shape now
    for v in stale:
        g.value_info.remove(v)
    real = [i for i in g.input if i.name not in inits]
    if len(real) != len(g.input):
        del g.input[:]
        g.input.extend(real)
        model.ir_version = max(model.ir_version, 4)
    return model






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
                any(o in read for o in n.output[1:]) or attrs(n).get("training_mode", 0) or len(n.input) > 2
            ):
                keep.append(n)  # the mask is read, or it may train: not a no-op
                continue
            if n.output[0] in outputs:
                if n.op_type == "Dropout":
                    keep.append(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
                else:
                    keep.append(n)
                continue
            rename_input(g, n.output[0], n.input[0])
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return model




def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float-model clean-up before quantization, in place: constants
    folded, no-ops dropped, decomposed hard-sigmoid/hard-swish recognised,
    affine chains folded (see the functions used)."""
    fold_constants(model)
    remove_no_ops(model)
    fuse_hard_activations(model)
    fold_affine(model)
    return model
