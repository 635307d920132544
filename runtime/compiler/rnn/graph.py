"""Reading an ONNX graph of LSTM/GRU layers: node checks, the layout-only
glue between stacked layers, the host head after the last layer, and
calibration through onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vfpga.runtime.compiler.frontend.ops import attrs

from .model import CELLS, DEFAULT_ACTIVATIONS, RnnCompileError, RnnLayer


def constants_of(model: onnx.ModelProto) -> dict:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            a = attrs(n)
            if "value" in a:
                out[n.output[0]] = numpy_helper.to_array(a["value"])
    return out


def shape_of(model: onnx.ModelProto, name: str):
    for vi in list(model.graph.input) + list(model.graph.value_info):
        if vi.name == name:
            dims = vi.type.tensor_type.shape.dim
            return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return None


def check_node(node, consts, model, x_shape) -> RnnLayer:
    """Validates one LSTM/GRU node and returns its layer record."""
    op, name = node.op_type, node.name or node.output[0]
    a = attrs(node)
    where = f"{op} node {name!r}"
    for bad in ("activation_alpha", "activation_beta", "clip"):
        if bad in a:
            raise RnnCompileError(f"{where}: attribute {bad!r} is not supported (the RNN core has no clip and "
                                  f"only the default activations)")
    if a.get("input_forget", 0):
        raise RnnCompileError(f"{where}: attribute 'input_forget'=1 (coupled input/forget gate) is not supported")
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise RnnCompileError(f"{where}: attribute 'direction'={direction!r} is not an ONNX direction")
    d = 2 if direction == "bidirectional" else 1
    acts = [x.decode().lower() if isinstance(x, bytes) else str(x).lower() for x in a.get("activations", [])]
    if acts and acts != DEFAULT_ACTIVATIONS[op] * d:
        raise RnnCompileError(f"{where}: attribute 'activations'={acts} is not supported; the RNN core runs "
                              f"only the defaults {DEFAULT_ACTIVATIONS[op] * d}")
    layout = int(a.get("layout", 0))
    if layout not in (0, 1):
        raise RnnCompileError(f"{where}: attribute 'layout'={layout} is not 0 or 1")
    g = 4 if op == "LSTM" else 3
    ins = list(node.input) + [""] * (8 - len(node.input))
    for idx, what in ((1, "W"), (2, "R"), (3, "B")):
        if ins[idx] and ins[idx] not in consts:
            raise RnnCompileError(f"{where}: input {what} ({ins[idx]!r}) must be a constant (weights are placed in "
                                  f"the segment at compile time)")
    w = consts[ins[1]].astype(np.float64)
    r = consts[ins[2]].astype(np.float64)
    if w.ndim != 3 or w.shape[0] != d or w.shape[1] % g:
        raise RnnCompileError(f"{where}: input W has shape {w.shape}, expected [{d}, {g}*hidden, input]")
    hidden = w.shape[1] // g
    if "hidden_size" in a and int(a["hidden_size"]) != hidden:
        raise RnnCompileError(f"{where}: attribute hidden_size={a['hidden_size']} but W has {g}*{hidden} rows")
    inp = w.shape[2]
    if r.shape != (d, g * hidden, hidden):
        raise RnnCompileError(f"{where}: input R has shape {r.shape}, expected {(d, g * hidden, hidden)}")
    bias = consts[ins[3]].astype(np.float64) if ins[3] else np.zeros((d, 2 * g * hidden))
    if bias.shape != (d, 2 * g * hidden):
        raise RnnCompileError(f"{where}: input B has shape {bias.shape}, expected {(d, 2 * g * hidden)}")
    if x_shape is None or len(x_shape) != 3 or any(v is None or v < 1 for v in x_shape):
        raise RnnCompileError(f"{where}: input X ({ins[0]!r}) needs a static 3-D shape, got {x_shape} "
                              f"(pass input_shape= to compile_rnn)")
    steps, batch = (x_shape[0], x_shape[1]) if layout == 0 else (x_shape[1], x_shape[0])
    if x_shape[2] != inp:
        raise RnnCompileError(f"{where}: input X has shape {tuple(x_shape)}: {x_shape[2]} features, but W expects "
                              f"{inp}")
    seq = None
    if ins[4]:
        if ins[4] not in consts:
            raise RnnCompileError(f"{where}: input sequence_lens ({ins[4]!r}) must be a constant: frames are "
                                  f"emitted per timestep")
        seq = consts[ins[4]].astype(np.int64).reshape(-1)
        if seq.shape != (batch,):
            raise RnnCompileError(f"{where}: input sequence_lens has {seq.size} entries for batch {batch}")
        if seq.min() < 1 or seq.max() > steps:
            raise RnnCompileError(f"{where}: input sequence_lens {seq.tolist()} outside [1, {steps}]")
        if (seq == steps).all():
            seq = None
    state_shape = (d, batch, hidden) if layout == 0 else (batch, d, hidden)
    states = []
    for idx, what in ((5, "initial_h"), (6, "initial_c")):
        if idx == 6 and op == "GRU" and ins[idx]:
            raise RnnCompileError(f"{where}: GRU has no input {idx}")
        nm = ins[idx] or None
        val = consts.get(nm) if nm else None
        if nm and val is None:
            shp = shape_of(model, nm)
            if shp is not None and tuple(shp) != state_shape:
                raise RnnCompileError(f"{where}: input {what} has shape {shp}, expected {state_shape}")
        if val is not None and val.shape != state_shape:
            raise RnnCompileError(f"{where}: input {what} has shape {val.shape}, expected {state_shape}")
        states.append((nm if val is None else None, val))
    if op == "LSTM" and ins[7]:
        p = consts.get(ins[7])
        if p is None or np.any(p != 0):
            raise RnnCompileError(f"{where}: input P (peepholes) is not supported unless all zero")
    outs = list(node.output) + [""] * (3 - len(node.output))
    return RnnLayer(node=name, op=op, hidden=hidden, input_size=inp, directions=d, reverse=direction == "reverse",
                    layout=layout, lbr=int(a.get("linear_before_reset", 0)) if op == "GRU" else 0, w=w, r=r,
                    b=bias, seq_lens=seq, h0_name=states[0][0], c0_name=states[1][0], h0=states[0][1],
                    c0=states[1][1], x_name=ins[0], outputs=outs[:3])




# ------------------------------------------------------------------ graph

def producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output if o}


def glue_nodes(model, prod, src: str, dst: str, node_name: str) -> list:
    """Nodes between ``src`` (a layer's Y) and ``dst`` (the next layer's X)."""
    out, todo, seen = [], [dst], set()
    consts = {t.name for t in model.graph.initializer}
    while todo:
        name = todo.pop()
        if name == src or name in seen or name in consts or not name:
            continue
        seen.add(name)
        n = prod.get(name)
        if n is None:
            raise RnnCompileError(f"node {node_name!r}: its input X depends on {name!r}, which is not the previous "
                                  f"RNN layer's output Y")
        if n.op_type in CELLS:
            raise RnnCompileError(f"node {node_name!r}: its input X comes from output {name!r} of {n.op_type} "
                                  f"{n.name!r}; stacked layers must be joined through Y")
        out.append(n)
        todo.extend(n.input)
    return out[::-1]


def dev_to_onnx_y(y, layout):
    """[T, B, D, H] -> ONNX Y ([T, D, B, H], or [B, T, D, H] for layout 1)."""
    return y.transpose(0, 2, 1, 3) if layout == 0 else y.transpose(1, 0, 2, 3)


def check_glue(model, glue, prev: RnnLayer, nxt: RnnLayer, steps, batch):
    """The ops joining two layers must only re-lay Y [T, B, D, H] as the next
    X [T, B, D*H]; checked by running them on an index tensor."""
    import onnxruntime as ort

    y_name = prev.outputs[0]
    if not glue:
        if nxt.x_name != y_name:
            raise RnnCompileError(f"node {nxt.node!r}: input X is not the output of {prev.node!r}")
        raise RnnCompileError(f"node {nxt.node!r}: reads the 4-D Y of {prev.node!r} directly; expected a "
                              f"Squeeze/Transpose/Reshape to 3-D")
    idx = np.arange(steps * batch * prev.directions * prev.hidden, dtype=np.float32)
    idx = idx.reshape(steps, batch, prev.directions, prev.hidden)
    y = np.ascontiguousarray(dev_to_onnx_y(idx, prev.layout))
    inits = [t for t in model.graph.initializer if any(t.name in n.input for n in glue)]
    g = helper.make_graph(glue, "glue", [helper.make_tensor_value_info(y_name, onnx.TensorProto.FLOAT, y.shape)],
                          [helper.make_tensor_value_info(nxt.x_name, onnx.TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        (x,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {y_name: y})
    except Exception as e:  # noqa: BLE001 - any failure means the glue is not a layout op we understand
        raise RnnCompileError(f"ops between {prev.node!r} and {nxt.node!r} "
                              f"({', '.join(n.op_type for n in glue)}) failed on Y's shape: {e}") from e
    want = idx.reshape(steps, batch, -1)
    got = x if nxt.layout == 0 else (x.transpose(1, 0, 2) if x.ndim == 3 else x)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise RnnCompileError(f"ops between {prev.node!r} and {nxt.node!r} ({', '.join(n.op_type for n in glue)}) "
                              f"do not map Y to X as [T, B, directions*hidden]; only layout changes can join layers")


def post_model(model, rnn_nodes, keep_outputs):
    """The host subgraph computing the graph outputs from the RNN layers'
    outputs (heads), or None when the graph outputs are RNN outputs."""
    rnn_out = {o for n in rnn_nodes for o in n.output if o}
    prod = producers(model)
    outs = [o.name for o in model.graph.output]
    need_nodes, inputs, todo, seen = [], [], [o for o in outs if o not in rnn_out], set()
    consts = {t.name for t in model.graph.initializer}
    while todo:
        name = todo.pop()
        if name in seen or not name or name in consts:
            continue
        seen.add(name)
        if name in rnn_out:
            inputs.append(name)
            continue
        n = prod.get(name)
        if n is None:
            raise RnnCompileError(f"graph output depends on {name!r}, which is neither an RNN output nor computed "
                                  f"from one (ops before the first RNN layer are not supported)")
        if n in need_nodes:
            continue
        need_nodes.append(n)
        todo.extend(n.input)
    if not need_nodes:
        return None, []
    order = [n for n in model.graph.node if n in need_nodes]
    vi = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    ins = [vi.get(i) or helper.make_tensor_value_info(i, onnx.TensorProto.FLOAT, None) for i in inputs]
    used = {i for n in order for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    g = helper.make_graph(order, "post", ins, [o for o in model.graph.output if o.name not in rnn_out], inits)
    return helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version), inputs


# -------------------------------------------------------------- calibration

def layout0_equivalent(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every layout=1 LSTM/GRU rewritten as layout 0 between
    Transposes. onnxruntime (1.2x) refuses batchwise recurrent ops, so this
    is what calibration and tests run on the host as the float reference."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = []
    for n in m.graph.node:
        a = attrs(n)
        if n.op_type not in CELLS or int(a.get("layout", 0)) != 1:
            nodes.append(n)
            continue
        pre = f"{n.name or n.output[0]}__l0"
        ins = list(n.input)
        for idx, perm in ((0, [1, 0, 2]), (5, [1, 0, 2]), (6, [1, 0, 2])):
            if idx < len(ins) and ins[idx]:
                nodes.append(helper.make_node("Transpose", [ins[idx]], [f"{pre}_in{idx}"], perm=perm))
                ins[idx] = f"{pre}_in{idx}"
        outs = list(n.output)
        new_outs = [f"{pre}_out{i}" if o else "" for i, o in enumerate(outs)]
        kept = {k: v for k, v in a.items() if k != "layout"}
        nodes.append(helper.make_node(n.op_type, ins, new_outs, name=n.name, **kept))
        for i, o in enumerate(outs):
            if o:
                nodes.append(helper.make_node("Transpose", [new_outs[i]], [o],
                                              perm=[2, 0, 1, 3] if i == 0 else [1, 0, 2]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def calibrate(model, layers, feeds_list):
    """x scale of the model input and h scale of every layer from float
    onnxruntime runs (max |value| / 127)."""
    import onnxruntime as ort

    m = layout0_equivalent(model)
    have = {o.name for o in m.graph.output}
    for lay in layers:
        for o in lay.outputs[:2]:
            if o and o not in have:
                m.graph.output.append(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    hmax = [0.0] * len(layers)
    xmax = 0.0
    for feeds in feeds_list:
        res = dict(zip(names, sess.run(None, feeds)))
        xmax = max(xmax, float(np.abs(feeds[layers[0].x_name]).max()))
        for i, lay in enumerate(layers):
            for o in lay.outputs[:2]:
                if o:
                    hmax[i] = max(hmax[i], float(np.abs(res[o]).max()))
            for nm in (lay.h0_name,):
                if nm and nm in feeds:
                    hmax[i] = max(hmax[i], float(np.abs(feeds[nm]).max()))
            if lay.h0 is not None:
                hmax[i] = max(hmax[i], float(np.abs(lay.h0).max()))
    x_scale = (xmax or 1.0) / 127
    return x_scale, [(h or 1.0) / 127 for h in hmax]


def random_feeds(model, shapes: dict, seed: int = 0) -> dict:
    """U(-1, 1) values for every runtime float input (calibration default)."""
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-1, 1, s).astype(np.float32) for n, s in shapes.items()}
