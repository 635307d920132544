"""Folding per-channel affine chains (BatchNormalization, Mul/Add/Sub by
constants) into the convolutions that produce them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .ops import attrs, consumers, infer_shapes, rewrite_nodes, static_dims


def per_channel_const(v: np.ndarray, c: int) -> np.ndarray | None:
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
    inferred = infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        d = static_dims(vi)
        if d is not None and None not in d:
            shapes[vi.name] = d
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    outputs = {o.name for o in g.output}

    def affine_of(node):
        """(activation input, k, c) of one affine node, or None."""
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "BatchNormalization":
            if len(node.output) > 1 and any(node.output[1:]) or attrs(node).get("training_mode", 0):
                return None
            x = node.input[0]
            if x not in shapes or len(shapes[x]) != 4 or not all(i in consts for i in node.input[1:5]):
                return None
            c = shapes[x][1]
            gamma, beta, mean, var = (np.asarray(consts[i], dtype=np.float64).reshape(-1) for i in node.input[1:5])
            if not all(v.size == c for v in (gamma, beta, mean, var)):
                return None
            eps = float(attrs(node).get("epsilon", 1e-5))
            k = gamma / np.sqrt(var + eps)
            return x, k, beta - k * mean
        if node.op_type in ("Mul", "Add", "Sub") and len(node.input) == 2:
            for xi in (0, 1):
                x, cst = node.input[xi], node.input[1 - xi]
                if cst not in consts or x in consts or x not in shapes or len(shapes[x]) != 4:
                    continue
                if node.output[0] not in shapes or shapes[node.output[0]] != shapes[x]:
                    continue
                v = per_channel_const(consts[cst], shapes[x][1])
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

    readers_of = consumers(g)
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
            readers = readers_of.get(out, [])
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
            and len(readers_of.get(x, [])) == 1
            and x not in outputs
            and prod.input[1] in consts
            and (len(prod.input) < 3 or not prod.input[2] or prod.input[2] in consts)
            and len(readers_of.get(prod.input[1], [])) == 1
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
    g.initializer.extend(new_inits)
    rewrite_nodes(g, replace, removed)
    return model
