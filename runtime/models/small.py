"""Small float CNNs built with onnx.helper, for tests, demos and benchmarks,
and a small already-quantized layer graph (:func:`conv_graph`).

The weights are random (fixed seed) and He-scaled so that activations keep a
similar magnitude through the layers: quantization then exercises the whole
int8 range instead of collapsing to a few levels.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vfpga.runtime.compiler import ir
from vfpga.runtime.hw import fixed_point

INPUT_SHAPE = (1, 3, 32, 32)


class GraphBuilder:
    """Accumulates nodes and He-initialised parameters of a single-input CNN;
    each node's output and parameters are named after the node. Tests use it
    to build variants (other ops, attributes) of the models below."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def param(self, name: str, arr) -> str:
        """A float32 initializer."""
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def conv(self, name, x, cin, cout, k=3, stride=1, pads=(1, 1, 1, 1), group=1, gain=2.0, **attrs):
        """Conv with bias; extra attrs (auto_pad, dilations, ...) override."""
        fan_in = (cin // group) * k * k
        w = self.rng.normal(0.0, np.sqrt(gain / fan_in), size=(cout, cin // group, k, k))
        b = self.rng.normal(0.0, 0.1, size=(cout,))
        kw = dict(
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=None if pads is None else list(pads),
            group=group,
        )
        kw.update(attrs)
        kw = {a: v for a, v in kw.items() if v is not None}  # pads=None for auto_pad
        inputs = [x, self.param(f"{name}.weight", w), self.param(f"{name}.bias", b)]
        self.nodes.append(helper.make_node("Conv", inputs, [name], name=name, **kw))
        return name

    def gemm(self, name, x, k, n, trans_b=1, gain=1.0):
        w = self.rng.normal(0.0, np.sqrt(gain / k), size=(n, k))
        if not trans_b:
            w = w.T
        b = self.rng.normal(0.0, 0.1, size=(n,))
        self.nodes.append(
            helper.make_node(
                "Gemm",
                [x, self.param(f"{name}.weight", w), self.param(f"{name}.bias", b)],
                [name],
                name=name,
                transB=trans_b,
            )
        )
        return name

    def op(self, op_type, name, inputs, **attrs):
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def model(self, graph_name, out, out_shape, opset=13):
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(INPUT_SHAPE))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = min(model.ir_version, 8)  # loadable by older onnxruntime builds too
        onnx.checker.check_model(model)
        return model


def small_cnn(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Float CNN over [1, 3, 32, 32] -> 10 logits covering every layer kind of
    the CNN core: conv+relu, max pool, a residual block, a strided conv with
    asymmetric padding, a depthwise conv, global average pooling and a
    fully-connected head. Channel counts (24, 40) are deliberately not
    multiples of the 16-lane core width."""
    b = GraphBuilder(seed)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 24)])  # 24x32x32
    p = b.op("MaxPool", "pool1", [x], kernel_shape=[2, 2], strides=[2, 2])  # 24x16x16
    x = b.op("Relu", "relu2", [b.conv("conv2", p, 24, 24)])
    x = b.conv("conv3", x, 24, 24, gain=1.0)  # residual branch: keep the sum's variance moderate
    x = b.op("Relu", "relu3", [b.op("Add", "add1", [x, p])])
    x = b.op("Relu", "relu4", [b.conv("conv4", x, 24, 40, stride=2, pads=(0, 0, 1, 1))])  # 40x8x8
    x = b.op("Relu", "relu5", [b.conv("dwconv5", x, 40, 40, group=40)])
    x = b.op("GlobalAveragePool", "gap", [x])  # 40x1x1
    x = b.op("Flatten", "flatten", [x], axis=1)
    out = b.gemm("fc", x, 40, 10)
    return b.model("small_cnn", out, (1, 10), opset)


def flatten_cnn(seed: int = 0, opset: int = 13) -> onnx.ModelProto:
    """Float CNN over [1, 3, 32, 32] whose classifier reads a flattened 4x4
    feature map (no global pooling), so a Gemm consumes an NCHW-flattened
    HxWxC tensor; one Gemm has transB=0, the other transB=1."""
    b = GraphBuilder(seed)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 8, stride=2)])  # 8x16x16
    x = b.op("MaxPool", "pool1", [x], kernel_shape=[4, 4], strides=[4, 4])  # 8x4x4
    x = b.op("Flatten", "flatten", [x], axis=1)  # 128
    x = b.op("Relu", "relu2", [b.gemm("fc1", x, 128, 20, trans_b=0, gain=2.0)])
    out = b.gemm("fc2", x, 20, 10)
    return b.model("flatten_cnn", out, (1, 10), opset)


def with_op(op_type: str, **attrs) -> onnx.ModelProto:
    """A strided conv and ReLU, then one ``op_type`` node (named
    "the_<op_type>"), then conv, global average pool and flatten: a model
    with a node the cores may not have (Softmax, LRN run on the host)."""
    b = GraphBuilder(seed=3)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 8, stride=2)])
    x = b.op(op_type, f"the_{op_type.lower()}", [x], **attrs)
    x = b.op("GlobalAveragePool", "gap", [b.conv("conv2", x, 8, 8)])
    out = b.op("Flatten", "flatten", [x], axis=1)
    return b.model(f"with_{op_type}", out, (1, 8))


def classifier_with_softmax(seed: int = 0) -> onnx.ModelProto:
    """A small classifier ending in Softmax, as ImageNet models do: conv,
    ReLU, global average pool, flatten, Gemm, then Softmax (on the host)."""
    b = GraphBuilder(seed)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 16, stride=2)])
    x = b.op("GlobalAveragePool", "gap", [x])
    x = b.op("Flatten", "flatten", [x], axis=1)
    out = b.op("Softmax", "softmax", [b.gemm("fc", x, 16, 10)], axis=1)
    return b.model("classifier_with_softmax", out, (1, 10))


def calibration_inputs(n: int = 8, seed: int = 0, shape: tuple[int, ...] = INPUT_SHAPE) -> list[np.ndarray]:
    """n float32 inputs of the given shape, standard normal (what a
    normalized image looks like to the first layer), smoothed a little so
    neighbouring pixels correlate as in images."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal(shape)
        x = (x + np.roll(x, 1, axis=-1) + np.roll(x, 1, axis=-2)) / np.sqrt(3.0)
        out.append(x.astype(np.float32))
    return out


def conv_graph(seed: int, shape=(8, 8, 16), cout: int = 24, pool: bool = True) -> ir.Graph:
    """A quantized layer graph with random int8 parameters, no ONNX or
    calibration needed: conv 3x3 + ReLU -> [max pool 2x2] -> conv 1x1 (several
    layers and frames, so a program has SAVEs in the middle)."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    hp, wp = (h // 2, w // 2) if pool else (h, w)
    t = {"x": ir.Tensor("x", shape, 0.05, int(rng.integers(-20, 20))),
         "a": ir.Tensor("a", (h, w, cout), 0.04, -128),
         "y": ir.Tensor("y", (hp, wp, 10), 0.1, int(rng.integers(-20, 20)))}

    def conv(name, src, dst, cin, co, k, clip):
        wgt = rng.integers(-127, 128, size=(co, cin, k, k), dtype=np.int8)
        bias = np.round(rng.normal(0, 1000, co)).astype(np.int32)
        mult, shift = fixed_point.quantize_multipliers(40.0 / (np.sqrt(cin * k * k) * 74 * 74) * rng.uniform(0.5, 2, co))
        return ir.Conv(name, src, dst, wgt, bias, mult, shift, (1, 1), (k // 2,) * 4, 1, clip)

    layers = [conv("conv_a", "x", "a", c, cout, 3, fixed_point.relu_clip(-128, 0.04))]
    src = "a"
    if pool:
        t["p"] = ir.Tensor("p", (hp, wp, cout), 0.04, -128)
        layers.append(ir.Pool("pool", "a", "p", "max", (2, 2), (2, 2)))
        src = "p"
    layers.append(conv("conv_y", src, "y", cout, 10, 1, (-128, 127)))
    return ir.Graph(t, layers, ["x"], ["y"], name=f"conv{seed}")


def random_rnn_model(op: str, hidden: int, input_size: int, steps: int, batch: int = 1, lbr: int = 0,
                     direction: str = "forward", seed: int = 0) -> onnx.ModelProto:
    """One LSTM/GRU node with DeepBench-style random weights
    U(-1/sqrt(H), 1/sqrt(H)) (the PyTorch/ONNX initialisation range), for
    the accuracy and benchmark scripts."""
    rng = np.random.default_rng(seed)
    g = 4 if op == "LSTM" else 3
    d = 2 if direction == "bidirectional" else 1
    k = 1 / math.sqrt(hidden)
    u = lambda *s: rng.uniform(-k, k, s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(u(d, g * hidden, input_size), "W"),
             numpy_helper.from_array(u(d, g * hidden, hidden), "R"), numpy_helper.from_array(u(d, 2 * g * hidden), "B")]
    attrs = {"hidden_size": hidden, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    outs = ["Y", "Y_h"]
    node = helper.make_node(op, ["X", "W", "R", "B"], outs, name=op.lower(), **attrs)
    graph = helper.make_graph([node], op.lower(), [helper.make_tensor_value_info(
        "X", onnx.TensorProto.FLOAT, [steps, batch, input_size])],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
