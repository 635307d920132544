"""Models with convolutions before their LSTM/GRU layers: the convolutional
front end on the CNN cores, the recurrent part (and its head) on the RNN
cores, the layout glue between them on the host.

The split (:func:`split_mixed`): the first LSTM/GRU node's input X is traced
back through layout-only ops (Transpose, Reshape, Squeeze, Unsqueeze,
Flatten) to the front end's output F; the front end is the subgraph from the
main graph input to F, the recurrent part everything from X to the graph
outputs. A Conv1d front end over [N, C, L] runs as 2-D convolutions over
[1, C, N, L] (kernels 1 x k: the N rows never mix, so a batch of N windows,
or one sequence with N = 1, is one request on the CNN cores); the host moves
[N, C, L] to and from that layout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vfpga.runtime.compiler import rnn, static
from vfpga.runtime.compiler.frontend.errors import FrontendError
from vfpga.runtime.compiler.frontend.load import _known_ops, reinfer_shapes, topological_sort
from vfpga.runtime.compiler.frontend.ops import attrs, prune_initializers, static_dims

LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
# Ops of a 1-D front end that keep their meaning over [1, C, N, L] (channels on axis 1).
ROW_SAFE = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Add", "Sub",
                      "Mul", "Div", "BatchNormalization", "QuantizeLinear", "DequantizeLinear", "Pow", "Sqrt",
                      "Abs", "Neg", "Exp", "Log", "Max", "Min"})


class MixedError(FrontendError):
    """A CNN + RNN model whose parts cannot be separated as the cores need."""


@dataclass
class MixedSplit:
    model: onnx.ModelProto  # the whole float model, shapes bound
    main_input: str
    front: onnx.ModelProto  # float CNN front end over a 4-D [1, C, H, W] input
    rows: bool  # the model's front end is 1-D over [N, C, L]: front runs on [1, C, N, L]
    front_output: str  # F
    glue: onnx.ModelProto | None  # host: F (the model's own layout) -> X
    recurrent: onnx.ModelProto  # X (+ state inputs) -> the graph outputs
    x_name: str
    pre: onnx.ModelProto | None = None  # host: the main input -> the front end's input (ops before the 1st Conv)
    front_input: str = ""
    s2d: int = 1  # the front end's input folded s positions deep (a long strided first kernel)
    length: int = 0  # rows: the input positions the front end reads


def is_mixed(model: onnx.ModelProto) -> bool:
    """LSTM/GRU nodes with more than layout ops between the graph input and the first of them."""
    cells = [n for n in model.graph.node if n.op_type in rnn.CELLS]
    if not cells:
        return False
    prod = {o: n for n in model.graph.node for o in n.output if o}
    v = cells[0].input[0]
    while v in prod and prod[v].op_type in LAYOUT_OPS:
        v = prod[v].input[0]
    return v in prod


def _load(model, input_shape) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model)
    elif isinstance(model, (bytes, bytearray)):
        m = onnx.load_model_from_string(bytes(model))
    else:
        m = onnx.load(model)
    topological_sort(m.graph)
    _known_ops(m)
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    cells = [n for n in m.graph.node if n.op_type in rnn.CELLS]
    readers = {i for n in m.graph.node for i in n.input}
    # the main input: the one the front end reads (the first graph input read by a non-cell node)
    main = next((i for i in inputs if i.name in readers and not any(
        i.name in n.input for n in cells)), inputs[0])
    dims = static_dims(main)
    if input_shape is not None:
        tt = main.type.tensor_type
        tt.ClearField("shape")
        for d in input_shape:
            tt.shape.dim.add().dim_value = int(d)
    elif dims is None or None in dims:
        raise MixedError(f"input '{main.name}' has dynamic dimensions {dims}; pass input_shape=")
    reinfer_shapes(m)
    from vfpga.runtime.compiler.frontend.cleanup import fold_constants

    fold_constants(m)  # computed pads, shapes and axes as constants: static shapes downstream
    reinfer_shapes(m)
    return m, main.name


def _shape(model, name):
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.name == name:
            return static_dims(vi)
    return None


def split_mixed(model, input_shape=None) -> MixedSplit:
    m, main = _load(model, input_shape)
    g = m.graph
    prod = {o: n for n in g.node for o in n.output if o}
    cells = [n for n in g.node if n.op_type in rnn.CELLS]
    x_name = cells[0].input[0]
    glue_nodes, v = [], x_name
    while v in prod and prod[v].op_type in LAYOUT_OPS:
        glue_nodes.insert(0, prod[v])
        v = prod[v].input[0]
    front_out = v
    if front_out not in prod:
        raise MixedError(f"the first recurrent node {cells[0].name!r} reads the graph input: not a mixed model")
    ex = onnx.utils.Extractor(m)
    front = ex.extract_model([main], [front_out])
    if any(n.op_type in rnn.CELLS for n in front.graph.node):
        raise MixedError("recurrent nodes feed the convolutional front end; only front ends before them split")
    # ops on the float input before the first convolution (padding, reshapes) run on the host
    first = next((n for n in front.graph.node if n.op_type == "Conv"), None)
    if first is None:
        raise MixedError("the front end before the recurrent layers has no convolution")
    pre, p_in = None, main
    if first.input[0] != main:
        p_in = first.input[0]
        pre = ex.extract_model([main], [p_in])
        front = ex.extract_model([p_in], [front_out])
    shape = _shape(m, p_in)
    rows, s2d, length = len(shape) == 3, 1, 0
    if rows:
        front, s2d, length = _rows_front(front, p_in, shape)
    elif len(shape) != 4 or shape[0] != 1:
        raise MixedError(f"'{p_in}' has shape {shape}: the front end takes [1, C, H, W] or [N, C, L]")
    glue = None
    if glue_nodes:
        glue = ex.extract_model([front_out], [x_name])
    others = [i.name for i in g.input if i.name != main and i.name not in {t.name for t in g.initializer}]
    recurrent = ex.extract_model([x_name] + [o for o in others if any(o in n.input for n in g.node)],
                                 [o.name for o in g.output])
    return MixedSplit(m, main, front, rows, front_out, glue, recurrent, x_name, pre, p_in, s2d, length)


AXES_3D_TO_ROWS = {0: 2, 1: 1, 2: 3, -1: -1, -2: 1, -3: 2}  # [N, C, L] axis -> [1, C, N, L] axis


def _rows_front(front: onnx.ModelProto, main: str, shape) -> tuple[onnx.ModelProto, int, int]:
    """A 1-D front end over [N, C, L] as 2-D over [1, C, N, L] (kernels 1 x k);
    also the depth s its input is folded to when the first kernel is long and
    strided (space to depth: returns s, 1 if not) and the input positions
    the front end reads."""
    from vfpga.runtime.compiler.frontend.cleanup import fold_constants

    fold_constants(front)
    n_rows = shape[0]
    g = front.graph
    inits = {t.name: t for t in g.initializer}
    new_inits = []
    s2d, reads = 1, shape[2]
    for node in g.node:
        a = attrs(node)
        if node.op_type == "Slice" and len(node.input) >= 4 and node.input[3] in inits:
            axes = numpy_helper.to_array(inits[node.input[3]]).astype(np.int64)
            mapped = np.array([AXES_3D_TO_ROWS[int(x)] for x in axes], np.int64)
            if 0 in axes and n_rows > 1:
                raise MixedError(f"Slice {node.name!r} slices the batch of the 1-D front end")
            nm = f"{node.input[3]}__rows_{node.name}"
            new_inits.append(numpy_helper.from_array(mapped, nm))
            node.input[3] = nm
            continue
        if node.op_type in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
            k = a.get("kernel_shape")
            if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in inits:
                w = numpy_helper.to_array(inits[node.input[1]])
                if w.ndim == 3:
                    name = f"{node.input[1]}__2d"
                    new_inits.append(numpy_helper.from_array(w[:, :, None, :], name))
                    node.input[1] = name
                    k = k or [w.shape[2]]
            if k is None or len(k) != 1:
                raise MixedError(f"{node.op_type} {node.name!r} of the 1-D front end has kernel {k}")
            fixed = {"kernel_shape": [1, k[0]], "strides": [1, a.get("strides", [1])[0]],
                     "dilations": [1, a.get("dilations", [1])[0]]}
            p = a.get("pads", [0, 0])
            fixed["pads"] = [0, p[0], 0, p[1]]
            st = fixed["strides"][1]
            if (node.op_type == "Conv" and node.input[0] == main and k[0] > 255 and st > 1 and k[0] % st == 0
                    and p == [0, 0] and a.get("group", 1) == 1 and shape[2] >= k[0]):
                # a long strided kernel over the input: fold s = stride positions into channels
                # (over the positions it reads: the rest of the input is cut off on the host)
                s2d = st
                reads = ((shape[2] - k[0]) // st) * st + k[0]
                w4 = numpy_helper.to_array(next(t for t in new_inits if t.name == node.input[1]))
                o, c, _, kk = w4.shape
                w2 = w4.reshape(o, c, kk // st, st).transpose(0, 1, 3, 2).reshape(o, c * st, 1, kk // st)
                name = f"{node.input[1]}_s2d"
                new_inits.append(numpy_helper.from_array(np.ascontiguousarray(w2), name))
                node.input[1] = name
                fixed.update(kernel_shape=[1, kk // st], strides=[1, 1])
            if "output_padding" in a:
                fixed["output_padding"] = [0, a["output_padding"][0]]
            for att in list(node.attribute):
                if att.name in fixed:
                    node.attribute.remove(att)
            for key, val in fixed.items():
                if key != "dilations" or node.op_type != "AveragePool":
                    node.attribute.append(helper.make_attribute(key, val))
        elif node.op_type in ("GlobalAveragePool", "GlobalMaxPool") and n_rows == 1:
            pass
        elif node.op_type == "Concat" and a.get("axis") in (1, -2):
            node.attribute.remove(next(x for x in node.attribute if x.name == "axis"))
            node.attribute.append(helper.make_attribute("axis", 1))
        elif node.op_type in ROW_SAFE or node.op_type == "Slice":
            for i, name in enumerate(node.input):
                if name in inits and node.op_type not in ("BatchNormalization",) and not node.op_type.endswith(
                        "Linear"):
                    c = numpy_helper.to_array(inits[name])
                    if c.size > 1:
                        if c.ndim == 2 and c.shape[1] == 1:
                            c2 = c.reshape(c.shape[0], 1, 1)
                        elif c.ndim == 3 and c.shape[0] == 1 and c.shape[2] == 1:
                            c2 = c.reshape(1, c.shape[1], 1, 1)
                        else:
                            raise MixedError(f"{node.op_type} {node.name!r}: constant of shape {c.shape} does not "
                                             f"broadcast per channel")
                        nm = f"{name}__2d"
                        new_inits.append(numpy_helper.from_array(c2, nm))
                        node.input[i] = nm
        else:
            raise MixedError(f"{node.op_type} {node.name!r}: the 1-D front end runs on the cores as 2-D "
                             f"convolutions over [1, C, N, L]; this op does not keep its meaning there")
    g.initializer.extend(new_inits)
    prune_initializers(g)
    inp = next(i for i in g.input if i.name == main)
    tt = inp.type.tensor_type
    tt.ClearField("shape")
    length = reads if s2d > 1 else shape[2]
    for d in (1, shape[1] * s2d, shape[0], length // s2d):
        tt.shape.dim.add().dim_value = int(d)
    reinfer_shapes(front)
    return front, s2d, length


def rows_in(x: np.ndarray, s2d: int = 1, length: int = 0) -> np.ndarray:
    """[N, C, L] -> [1, C, N, L]; with s2d = s: [1, C * s, N, length / s],
    channel c * s + j holding positions t * s + j (space to depth) of the
    first ``length`` positions."""
    x = np.asarray(x, np.float32)
    if s2d > 1:
        x = x[:, :, :length]
        n, c, length = x.shape
        x = x.reshape(n, c, length // s2d, s2d).transpose(1, 3, 0, 2).reshape(1, c * s2d, n, length // s2d)
        return np.ascontiguousarray(x)
    return np.ascontiguousarray(x.transpose(1, 0, 2)[None])


def rows_out(y: np.ndarray) -> np.ndarray:
    """[1, C, N, L] -> [N, C, L]."""
    return np.ascontiguousarray(np.asarray(y)[0].transpose(1, 0, 2))


@dataclass
class CompiledMixed:
    """A mixed model compiled for one board: its CNN front end and recurrent part."""

    board: str
    split: MixedSplit
    front: static.CompiledModel
    recurrent: rnn.CompiledRnn
    front_source: dict

    def host_pre(self):
        """A function main input -> the front end's input array on the cores
        (the host ops before the first convolution, then the layout)."""
        sp = self.split
        sess = None
        if sp.pre is not None:
            import onnxruntime as ort

            sess = ort.InferenceSession(sp.pre.SerializeToString(), providers=["CPUExecutionProvider"])

        def pre(x):
            p = sess.run(None, {sp.main_input: np.asarray(x, np.float32)})[0] if sess is not None else x
            return rows_in(p, sp.s2d, sp.length) if sp.rows else np.asarray(p, np.float32)

        return pre

    def host_glue(self):
        """A function F (the front end's output, as the model computes it) -> X."""
        if self.split.glue is None:
            return lambda f: f
        import onnxruntime as ort

        sess = ort.InferenceSession(self.split.glue.SerializeToString(), providers=["CPUExecutionProvider"])
        return lambda f: sess.run(None, {self.split.front_output: f})[0]


def _calibration(split: MixedSplit, calibration, seed=0):
    """Main-input samples and full feed dicts (all runtime inputs)."""
    m = split.model
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if calibration is None:
        warnings.warn("no calibration data given: calibrating the mixed model on random inputs", UserWarning,
                      stacklevel=3)
        rng = np.random.default_rng(seed)
        calibration = [{i.name: rng.standard_normal(static_dims(i)).astype(np.float32) * (
            1.0 if i.name == split.main_input else 0.0) for i in inputs} for _ in range(4)]
    feeds = []
    for s in calibration:
        f = dict(s) if isinstance(s, dict) else {split.main_input: np.asarray(s, np.float32)}
        for i in inputs:
            if i.name not in f:
                f[i.name] = np.zeros(static_dims(i), np.float32)
        feeds.append(f)
    return feeds


def compile_mixed(model, board="u200", calibration=None, input_shape=None, *, cache=None,
                  fallback: bool = True) -> CompiledMixed:
    """Static stage of both parts (the front end through the compile cache)."""
    import onnxruntime as ort

    from vfpga import overlay
    from vfpga.runtime.compiler import cache as compile_cache

    cfg = overlay.load(board) if isinstance(board, str) else board
    split = split_mixed(model, input_shape)
    feeds = _calibration(split, calibration)
    probe = onnx.ModelProto()
    probe.CopyFrom(split.model)
    have = {o.name for o in probe.graph.output}
    for v in (split.x_name, split.front_input):
        if v not in have:
            probe.graph.output.append(helper.make_empty_tensor_value_info(v))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    runs = [dict(zip(names, sess.run(None, f))) for f in feeds]
    xs = [r[split.x_name] for r in runs]
    front_cal = [rows_in(r[split.front_input], split.s2d, split.length) if split.rows else r[split.front_input]
                 for r in runs]
    res = compile_cache.compile_with_cache(split.front, cfg, front_cal, cache=cache, progress=False,
                                           fallback=fallback)
    rec_inputs = {i.name for i in split.recurrent.graph.input}
    rec_feeds = [{k: v for k, v in {**f, split.x_name: x}.items() if k in rec_inputs} for f, x in zip(feeds, xs)]
    recurrent = rnn.compile_rnn(split.recurrent, cfg, rec_feeds)
    return CompiledMixed(cfg["name"], split, res.compiled, recurrent, res.source)
