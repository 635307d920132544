"""Decomposed activations recognised in the float graph before quantization.

Exporters write hard-sigmoid and hard-swish out of elementary ops:
relu6(x + 3) / 6 as Add -> Clip(0, 6) -> Div(6) (or Mul(1/6)), and
x * relu6(x + 3) / 6 with the Mul before or after the Div. Quantized as
they are, every elementary op gets its own int8 rounding (x + 3 and the
product lose most of their precision); as HardSigmoid (and a Mul by x) the
chain is one activation table on the cores and two roundings in
onnxruntime's QDQ graph. The rewrite is exact in float:
HardSigmoid(x; alpha = 1/c, beta = b/c) = clip((x + b) / c, 0, 1) =
clip(x + b, 0, c) / c.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .ops import attrs, consumers, rewrite_nodes


def _scalar(name, consts):
    v = consts.get(name)
    if v is None or np.size(v) != 1 or not np.issubdtype(np.asarray(v).dtype, np.floating):
        return None
    return float(np.asarray(v).reshape(-1)[0])


def _clip_bounds(node, consts):
    if node.op_type == "Relu":
        return 0.0, np.inf
    if node.op_type != "Clip":
        return None
    a = attrs(node)
    lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
    if len(node.input) > 1 and node.input[1]:
        lo = _scalar(node.input[1], consts)
    if len(node.input) > 2 and node.input[2]:
        hi = _scalar(node.input[2], consts)
    return None if lo is None or hi is None else (lo, hi)


def fuse_hard_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites relu6-style hard-sigmoid and hard-swish chains as HardSigmoid
    (and Mul by x), in place. Needs constants as initializers (fold_constants
    first); only chains whose inner values have no other reader change."""
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    outputs = {o.name for o in g.output}
    readers = consumers(g)

    def only(value):
        r = readers.get(value, [])
        return r[0][0] if len(r) == 1 and value not in outputs else None

    def scaled(node, by):
        """node divides by `by` (Div(c) or Mul(1/c))."""
        if node is None or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            return False
        if node.op_type == "Div":
            c = _scalar(node.input[1], consts)
            return c is not None and np.isclose(c, by, rtol=1e-6)
        if node.op_type == "Mul":
            for i in (0, 1):
                c = _scalar(node.input[i], consts)
                if c is not None and np.isclose(c * by, 1.0, rtol=1e-6):
                    return True
        return False

    def other(node, value):
        return node.input[1] if node.input[0] == value else node.input[0]

    replace: dict[int, list] = {}
    removed: set[int] = set()
    for add in g.node:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
            continue
        k = next((i for i in (0, 1) if _scalar(add.input[i], consts) is not None), None)
        if k is None:
            continue
        x, b = add.input[1 - k], _scalar(add.input[k], consts)
        clip = only(add.output[0])
        bounds = _clip_bounds(clip, consts) if clip is not None else None
        if bounds is None or bounds[0] != 0.0 or not np.isfinite(bounds[1]) or bounds[1] <= 0:
            continue
        c = bounds[1]
        nxt = only(clip.output[0])
        name = add.name or add.output[0]
        hs_out = f"{name}__hardsigmoid"
        hsig = helper.make_node("HardSigmoid", [x], [hs_out], name=hs_out, alpha=1.0 / c, beta=b / c)
        if scaled(nxt, c):  # relu6(x + b) / c [ * x ]
            last = nxt
            mul = only(nxt.output[0])
            if mul is not None and mul.op_type == "Mul" and other(mul, nxt.output[0]) == x:
                last = mul
                new = [hsig, helper.make_node("Mul", [x, hs_out], [mul.output[0]], name=mul.name)]
                chain = [add, clip, nxt, mul]
            else:
                hsig.output[0] = nxt.output[0]
                new, chain = [hsig], [add, clip, nxt]
        elif nxt is not None and nxt.op_type == "Mul" and other(nxt, clip.output[0]) == x and scaled(
                only(nxt.output[0]), c):  # x * relu6(x + b) / c
            last = only(nxt.output[0])
            new = [hsig, helper.make_node("Mul", [x, hs_out], [last.output[0]], name=last.name)]
            chain = [add, clip, nxt, last]
        else:
            continue
        if any(id(n) in removed for n in chain):
            continue
        for n in chain:
            removed.add(id(n))
        replace[id(last)] = new
    if not replace:
        return model
    rewrite_nodes(g, replace, removed)
    return model
