"""Float models written the way exporters write them (paddle2onnx,
torch.onnx), for the front end's tests, the demo and the scripts:
MobileNetV3-style classifiers, a DBNet-style text detector and a
convolutional front end before an LSTM.

``quirks=True`` adds what real exports carry: dynamic batch and spatial
dims, value_info entries without a shape and with a stale rank, weights in
Constant nodes instead of initializers, hard-swish written out as
Add/Clip/Div/Mul and HardSigmoid in squeeze-and-excitation blocks.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .small import GraphBuilder


class ExportBuilder(GraphBuilder):
    """GraphBuilder with the exporters' habits."""

    def __init__(self, seed: int, opset: int, quirks: bool):
        super().__init__(seed)
        self.opset, self.quirks = opset, quirks
        self.n = 0

    def name(self, what: str) -> str:
        self.n += 1
        return f"{what}_{self.n}"

    def const(self, arr, dtype=np.float32) -> str:
        """A constant: a Constant node (quirks) or an initializer."""
        name = self.name("const")
        arr = np.asarray(arr, dtype=dtype)
        if self.quirks:
            self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                               value=numpy_helper.from_array(arr, name)))
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def conv(self, name, x, cin, cout, k=3, stride=1, pads=None, group=1, gain=2.0, **attrs):
        kh, kw = (k, k) if isinstance(k, int) else k
        pads = pads if pads is not None else [kh // 2, kw // 2, kh // 2, kw // 2]
        fan_in = (cin // group) * kh * kw
        w = self.rng.normal(0.0, np.sqrt(gain / fan_in), size=(cout, cin // group, kh, kw))
        b = self.rng.normal(0.0, 0.1, size=(cout,))
        if self.quirks and self.n % 2:
            inputs = [x, self.const(w), self.const(b)]
        else:
            inputs = [x, self.param(f"{name}.weight", w), self.param(f"{name}.bias", b)]
        self.nodes.append(helper.make_node("Conv", inputs, [name], name=name, kernel_shape=[kh, kw],
                                           strides=[stride, stride], pads=list(pads), group=group, **attrs))
        return name

    def bn(self, x, c):
        g, b = self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.1, c)
        m, v = self.rng.normal(0, 0.1, c), self.rng.uniform(0.5, 1.5, c)
        name = self.name("bn")
        ins = [x] + [self.param(f"{name}.{k}", a) for k, a in zip("gbmv", (g, b, m, v))]
        self.nodes.append(helper.make_node("BatchNormalization", ins, [name], name=name, epsilon=1e-5))
        return name

    def clip(self, x, lo, hi):
        name = self.name("clip")
        if self.opset < 11:
            self.nodes.append(helper.make_node("Clip", [x], [name], name=name, min=float(lo), max=float(hi)))
        else:
            self.nodes.append(helper.make_node("Clip", [x, self.const(lo), self.const(hi)], [name], name=name))
        return name

    def hard_swish(self, x, form):
        """x * relu6(x + 3) / 6 as exporters write it: 'decomposed'
        (Add/Clip/Div/Mul), 'hsig' (x * HardSigmoid(x)) or 'op' (HardSwish, opset 14)."""
        if form == "op" and self.opset >= 14:
            return self.op("HardSwish", self.name("hswish"), [x])
        if form == "hsig":
            h = self.op("HardSigmoid", self.name("hsig"), [x], alpha=1.0 / 6, beta=0.5)
            return self.op("Mul", self.name("mul"), [x, h])
        a = self.op("Add", self.name("add"), [x, self.const(3.0)])
        c = self.clip(a, 0.0, 6.0)
        d = self.op("Div", self.name("div"), [c, self.const(6.0)])
        return self.op("Mul", self.name("mul"), [x, d])

    def se(self, x, c, r=4):
        """Squeeze-and-excitation: GAP -> 1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid -> x * s."""
        s = self.op("GlobalAveragePool", self.name("gap"), [x])
        s = self.op("Relu", self.name("relu"), [self.conv(self.name("se_fc1"), s, c, max(c // r, 8), k=1)])
        s = self.conv(self.name("se_fc2"), s, max(c // r, 8), c, k=1, gain=1.0)
        s = self.op("HardSigmoid", self.name("hsig"), [s], alpha=0.2, beta=0.5)
        return self.op("Mul", self.name("se_mul"), [x, s])

    def finish(self, graph_name, in_shape, out, out_rank, stale=()):
        dims = list(in_shape)
        if self.quirks:  # dynamic batch and spatial dims, as paddle2onnx writes them
            dims = ["p2o.DynamicDimension.0", in_shape[1], "p2o.DynamicDimension.1", "p2o.DynamicDimension.2"]
        graph = helper.make_graph(self.nodes, graph_name,
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None] * out_rank)],
                                  initializer=self.inits)
        if self.quirks:
            names = [n.output[0] for n in self.nodes if n.op_type not in ("Constant",)]
            graph.value_info.append(helper.make_tensor_value_info(names[1], TensorProto.FLOAT, None))  # no shape
            for v in stale or names[3:4]:  # a stale rank
                graph.value_info.append(helper.make_tensor_value_info(v, TensorProto.FLOAT, [1]))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 7
        onnx.checker.check_model(model)
        return model


def mobilenet_v3_style(seed: int = 0, opset: int = 13, quirks: bool = True, width: int = 16,
                       in_shape=(1, 3, 48, 48)) -> onnx.ModelProto:
    """A MobileNetV3-small-style classifier: stem conv + hard-swish, inverted
    residual blocks (1x1 expand, depthwise 3x3 / 5x5, squeeze-and-excitation,
    1x1 project, residuals), 1x1 conv + hard-swish, global pooling, FC head."""
    b = ExportBuilder(seed, opset, quirks)
    w = width
    x = b.hard_swish(b.bn(b.conv("stem", "x", 3, w, stride=2), w), "decomposed")
    blocks = [  # (expand, out, kernel, stride, se, act)
        (w, w, 3, 2, True, "relu"),
        (4 * w, w + 8, 3, 2, False, "relu"),
        (4 * w, w + 8, 3, 1, False, "relu"),
        (6 * w, 2 * w, 5, 2, True, "hsig"),
        (6 * w, 2 * w, 5, 1, True, "decomposed"),
        (8 * w, 3 * w, 5, 1, True, "op"),
    ]
    cin = w
    for e, cout, k, s, use_se, act in blocks:
        y = b.bn(b.conv(b.name("expand"), x, cin, e, k=1), e)
        y = b.op("Relu", b.name("relu"), [y]) if act == "relu" else b.hard_swish(y, act)
        y = b.bn(b.conv(b.name("dw"), y, e, e, k=k, stride=s, group=e), e)
        y = b.op("Relu", b.name("relu"), [y]) if act == "relu" else b.hard_swish(y, act)
        if use_se:
            y = b.se(y, e)
        y = b.bn(b.conv(b.name("project"), y, e, cout, k=1, gain=1.0), cout)
        x = b.op("Add", b.name("residual"), [x, y]) if s == 1 and cin == cout else y
        cin = cout
    x = b.hard_swish(b.bn(b.conv("last", x, cin, 6 * w, k=1), 6 * w), "hsig")
    x = b.op("GlobalAveragePool", "pool", [x])
    x = b.op("Reshape", "flatten", [x, b.const(np.array([-1, 6 * w]), np.int64)])
    x = b.gemm("fc", x, 6 * w, 10)
    return b.finish("mobilenet_v3_style", in_shape, x, 2)


def dbnet_style(seed: int = 0, opset: int = 12, quirks: bool = True, width: int = 16,
                in_shape=(1, 3, 64, 64)) -> onnx.ModelProto:
    """A DBNet-style text detector: a strided backbone (1/4 .. 1/16), an FPN
    with nearest Resize x2 and Add, the pyramid upsampled to 1/4 and
    concatenated, and the probability head: conv, two ConvTranspose k2 s2 and
    a Sigmoid (full resolution, 1 channel)."""
    b = ExportBuilder(seed, opset, quirks)
    w = width

    def block(x, cin, cout, stride):
        y = b.op("Relu", b.name("relu"), [b.bn(b.conv(b.name("conv"), x, cin, cout, stride=stride), cout)])
        return b.hard_swish(b.bn(b.conv(b.name("conv"), y, cout, cout), cout), "hsig")

    def resize(x, f):
        name = b.name("resize")
        scales = b.const(np.array([1, 1, f, f], np.float32))
        ins = [x, scales] if opset < 11 else [x, b.const(np.zeros(0, np.float32)), scales]
        b.nodes.append(helper.make_node("Resize", ins, [name], name=name, mode="nearest",
                                        **({} if opset < 11 else {"coordinate_transformation_mode": "asymmetric",
                                                                  "nearest_mode": "floor"})))
        return name

    c2 = block(block("x", 3, w, 2), w, w, 2)  # 1/4
    c3 = block(c2, w, 2 * w, 2)  # 1/8
    c4 = block(c3, 2 * w, 4 * w, 2)  # 1/16
    p4 = b.conv(b.name("lat"), c4, 4 * w, w, k=1)
    p3 = b.op("Add", b.name("fpn_add"), [resize(p4, 2), b.conv(b.name("lat"), c3, 2 * w, w, k=1)])
    p2 = b.op("Add", b.name("fpn_add"), [resize(p3, 2), b.conv(b.name("lat"), c2, w, w, k=1)])
    o4 = resize(b.conv(b.name("out"), p4, w, w // 4), 4)
    o3 = resize(b.conv(b.name("out"), p3, w, w // 4), 2)
    o2 = b.conv(b.name("out"), p2, w, w // 4)
    fuse = b.op("Concat", b.name("concat"), [o4, o3, o2, o2], axis=1)
    h = b.op("Relu", b.name("relu"), [b.bn(b.conv("head", fuse, w, w // 4), w // 4)])

    def deconv(x, cin, cout):
        name = b.name("deconv")
        wt = b.rng.normal(0.0, np.sqrt(2.0 / cin), size=(cin, cout, 2, 2))
        b.nodes.append(helper.make_node("ConvTranspose", [x, b.param(f"{name}.weight", wt)], [name], name=name,
                                        kernel_shape=[2, 2], strides=[2, 2]))
        return name

    h = b.op("Relu", b.name("relu"), [b.bn(deconv(h, w // 4, w // 4), w // 4)])
    prob = b.op("Sigmoid", "prob", [deconv(h, w // 4, 1)])
    return b.finish("dbnet_style", in_shape, prob, 4)


def conv1d_lstm(seed: int = 0, features: int = 8, steps: int = 12, channels: int = 16, hidden: int = 24,
                windows: bool | str = False, opset: int = 16) -> onnx.ModelProto:
    """A convolutional front end before an LSTM, as torch.onnx exports it.

    windows=False: one sequence [1, features, steps] -> Conv1d + ReLU (x2)
    -> Transpose to [steps, 1, channels] -> LSTM -> Y squeezed to
    [steps, 1, hidden], plus Y_h / Y_c. windows=True (a voice-activity
    detector's shape): ``steps`` windows [steps, features, 16] -> strided
    Conv1d + ReLU down to one position each -> Transpose to [steps, 1, C] ->
    LSTM over the windows with the state as graph inputs h, c -> ReLU ->
    1x1 Conv1d -> Sigmoid (one probability per window). windows="stft":
    as silero's VAD, raw windows [steps, 512] reflect-padded and unsqueezed
    on the float input, then a long strided Conv1d (kernel 256, stride 128)
    before the same encoder."""
    b = ExportBuilder(seed, opset, quirks=False)

    def conv1d(name, x, cin, cout, k, stride=1, pad=None):
        pad = k // 2 if pad is None else pad
        w = b.rng.normal(0.0, np.sqrt(2.0 / (cin * k)), size=(cout, cin, k))
        bias = b.rng.normal(0.0, 0.1, size=(cout,))
        b.nodes.append(helper.make_node("Conv", [x, b.param(f"{name}.weight", w), b.param(f"{name}.bias", bias)],
                                        [name], name=name, kernel_shape=[k], strides=[stride], pads=[pad, pad]))
        return name

    if windows == "stft":
        pads = b.const(np.array([0, 64, 0, 64]), np.int64)
        b.nodes.append(helper.make_node("Pad", ["x", pads], ["padded"], name="pad", mode="reflect"))
        u = b.op("Unsqueeze", "unsqueeze", ["padded", b.const(np.array([1]), np.int64)])  # [N, 1, 640]
        y = b.op("Relu", "relu0", [conv1d("stft", u, 1, features, 256, stride=128, pad=0)])  # 640 -> 4
        y = b.op("Relu", "relu1", [conv1d("enc1", y, features, channels, 3, stride=2, pad=1)])  # 4 -> 2
        y = b.op("Relu", "relu3", [conv1d("enc3", y, channels, channels, 2, stride=1, pad=0)])  # 2 -> 1
        seq = b.op("Transpose", "to_time", [y], perm=[2, 0, 1])
        seq = b.op("Transpose", "to_seq", [seq], perm=[1, 0, 2])
        in_shape = [steps, 512]
        state_in = ["h", "c"]
    elif windows:
        y = b.op("Relu", "relu1", [conv1d("enc1", "x", features, channels, 4, stride=4, pad=0)])  # 16 -> 4
        y = b.op("Relu", "relu2", [conv1d("enc2", y, channels, channels, 3, stride=2, pad=1)])  # 4 -> 2
        y = b.op("Relu", "relu3", [conv1d("enc3", y, channels, channels, 2, stride=1, pad=0)])  # 2 -> 1
        seq = b.op("Transpose", "to_seq", [y], perm=[2, 0, 1])  # [1, N, C] ... as [T=1?]
        seq = b.op("Transpose", "to_time", [seq], perm=[1, 0, 2])  # [N, 1, C]: the windows are the sequence
        in_shape = [steps, features, 16]
        state_in = ["h", "c"]
    else:
        y = b.op("Relu", "relu1", [conv1d("enc1", "x", features, channels, 3)])
        y = b.op("Relu", "relu2", [conv1d("enc2", y, channels, channels, 3)])
        seq = b.op("Transpose", "to_seq", [y], perm=[2, 0, 1])  # [steps, 1, channels]
        in_shape = [1, features, steps]
        state_in = ["", ""]
    w = b.rng.normal(0, 1 / np.sqrt(channels), size=(1, 4 * hidden, channels))
    r = b.rng.normal(0, 1 / np.sqrt(hidden), size=(1, 4 * hidden, hidden))
    bias = b.rng.normal(0, 0.1, size=(1, 8 * hidden))
    b.nodes.append(helper.make_node("LSTM", [seq, b.param("W", w), b.param("R", r), b.param("B", bias), "",
                                             *state_in], ["Y", "Y_h", "Y_c"], name="lstm", hidden_size=hidden))
    y = b.op("Squeeze", "squeeze", ["Y", b.const(np.array([1]), np.int64)])  # [steps, 1, hidden]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)]
    if windows:
        y = b.op("Relu", "relu4", [y])
        y = b.op("Transpose", "to_channels", [y], perm=[1, 2, 0])  # [1, hidden, steps]
        y = b.op("Sigmoid", "prob", [conv1d("out", y, hidden, 1, 1, pad=0)])
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, hidden]) for n in ("h", "c")]
        outputs = [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)]
    else:
        outputs = [helper.make_tensor_value_info("squeeze", TensorProto.FLOAT, None)]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y_h", "Y_c")]
    graph = helper.make_graph(b.nodes, "conv1d_lstm", inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model
