"""ONNX front end: loading and its errors, onnxruntime quantization, the QDQ
-> IR reading, and the IR's faithfulness to onnxruntime layer by layer.

The faithfulness check evaluates each IR layer with a small, deliberately
naive numpy implementation of the formulas in runtime/ir.py and
hls/include/vfpga_isa.h (independent of the golden model module), fed with
onnxruntime's own int8 input of that layer, and compares with onnxruntime's
int8 output of the layer.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from vfpga.runtime.compiler import frontend, ir
from vfpga.runtime.compiler.frontend import FrontendError, UnsupportedOperatorError
from vfpga.runtime.compiler.frontend.ops import attrs, infer_shapes, onnx_opset
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small

# ---------------------------------------------------------------- reference evaluation of IR layers


def rshift_round(v, s):
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    half = np.left_shift(np.int64(1), np.maximum(s - 1, 0))
    return np.where(s == 0, v, (v + half) >> s)


def rshift_tie(v, s):
    """Where v * 2**-s lies exactly halfway between two integers."""
    v, s = np.asarray(v, dtype=np.int64), np.asarray(s, dtype=np.int64)
    mask = np.left_shift(np.int64(1), s) - 1
    return (s > 0) & ((v & mask) == np.left_shift(np.int64(1), np.maximum(s - 1, 0)))


def rdiv(n, d):
    n = np.asarray(n, dtype=np.int64)
    return np.sign(n) * ((np.abs(n) + d // 2) // d)


def eval_conv(layer: ir.Conv, x, tin: ir.Tensor, tout: ir.Tensor):
    t, lf, b, r = layer.pads
    xp = np.pad(x.astype(np.float64) - tin.zero_point, ((t, b), (lf, r), (0, 0)))  # real zeros
    oc, icg, kh, kw = layer.weight.shape
    sh, sw = layer.stride
    oh, ow = (xp.shape[0] - kh) // sh + 1, (xp.shape[1] - kw) // sw + 1
    cog = oc // layer.groups
    acc = np.zeros((oh, ow, oc))
    for g in range(layer.groups):
        xs = xp[:, :, g * icg : (g + 1) * icg]
        w = layer.weight[g * cog : (g + 1) * cog].astype(np.float64)
        for ky in range(kh):
            for kx in range(kw):
                patch = xs[ky : ky + (oh - 1) * sh + 1 : sh, kx : kx + (ow - 1) * sw + 1 : sw]
                acc[:, :, g * cog : (g + 1) * cog] += patch @ w[:, :, ky, kx].T
    prod = (acc.astype(np.int64) + layer.bias) * layer.mult.astype(np.int64)
    y = tout.zero_point + rshift_round(prod, layer.shift)
    return np.clip(y, *layer.clip).astype(np.int8), rshift_tie(prod, layer.shift)


def eval_pool(layer: ir.Pool, x, tin: ir.Tensor, tout: ir.Tensor):
    h, w, c = x.shape
    kh, kw = layer.kernel
    sh, sw = layer.stride
    t, lf, b, r = layer.pads
    oh, ow = (h + t + b - kh) // sh + 1, (w + lf + r - kw) // sw + 1
    xv = x.astype(np.int64) - tin.zero_point
    y = np.zeros((oh, ow, c), dtype=np.int64)
    tie = np.zeros((oh, ow, c), dtype=bool)
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * sh - t, ox * sw - lf
            win = xv[max(y0, 0) : min(y0 + kh, h), max(x0, 0) : min(x0 + kw, w)].reshape(-1, c)
            if layer.mode == "max":
                v, count = (win.max(0) if len(win) else np.zeros(c, np.int64)), 1
            else:
                v, count = win.sum(0), (kh * kw if layer.count_include_pad else len(win))
            d = count << layer.shift
            y[oy, ox] = tout.zero_point + (rdiv(v * layer.mult, d) if count else 0)
            tie[oy, ox] = (2 * (np.abs(v * layer.mult) % d) == d) if count else False
    return np.clip(y, *layer.clip).astype(np.int8), tie


def eval_add(layer: ir.Add, a, b, ta: ir.Tensor, tb: ir.Tensor, tout: ir.Tensor):
    v = (a.astype(np.int64) - ta.zero_point) * layer.a_mult + (
        b.astype(np.int64) - tb.zero_point
    ) * layer.b_mult
    y = np.clip(tout.zero_point + rshift_round(v, layer.shift), *layer.clip).astype(np.int8)
    return y, rshift_tie(v, layer.shift)


def eval_layer(layer, graph: ir.Graph, values: dict):
    """(int8 output HWC, mask of outputs whose exact value was a rounding tie)."""
    ts = graph.tensors
    if layer.kind == "concat":
        out = np.concatenate([values[i] for i in layer.inputs], axis=2)
        return out, np.zeros(out.shape, dtype=bool)
    if layer.kind == "add":
        a, b = layer.inputs
        return eval_add(layer, values[a], values[b], ts[a], ts[b], ts[layer.output])
    fn = eval_conv if layer.kind == "conv" else eval_pool
    return fn(layer, values[layer.input], ts[layer.input], ts[layer.output])


def to_hwc(a: np.ndarray) -> np.ndarray:
    return a[0].transpose(1, 2, 0) if a.ndim == 4 else a.reshape(1, 1, -1)


# ---------------------------------------------------------------- onnxruntime side


def ort_run(model: onnx.ModelProto, x, extra_outputs=(), level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    """Run onnxruntime, also returning the named intermediate values."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in extra_outputs:
        if name not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {m.graph.input[0].name: x})))


def layer_agreement(qdq, graph, inputs, level):
    """Per layer: max |diff| in LSB, fraction exactly equal, the same among
    outputs that were not exact rounding ties, element and tie counts."""
    acc = {}
    in_onnx = {o for n in qdq.graph.node for o in n.output}
    for x in inputs:
        vals = ort_run(qdq, x, [t for t in graph.tensors if t in in_onnx], level)
        q = {n: to_hwc(vals[n]) for n in graph.tensors if n in in_onnx}
        for layer in graph.layers:
            got, tie = eval_layer(layer, graph, q)
            if layer.output not in q:  # a requantizing copy for a Concat: no ONNX counterpart
                q[layer.output] = got
                continue
            want = q[layer.output].astype(np.int64)
            assert got.shape == want.shape, (layer.name, got.shape, want.shape)
            d = np.abs(got.astype(np.int64) - want)
            a = acc.setdefault(layer.name, np.zeros(5, dtype=np.int64))
            a += [0, (d == 0).sum(), ((d == 0) & ~tie).sum(), d.size, tie.sum()]
            a[0] = max(a[0], d.max())
    return {
        k: dict(
            max=int(a[0]), exact=a[1] / a[3], exact_no_tie=a[2] / (a[3] - a[4]), n=int(a[3]), ties=int(a[4])
        )
        for k, a in acc.items()
    }


def run_ir(graph: ir.Graph, x):
    """Whole-graph integer evaluation from the float input."""
    vals = {graph.inputs[0]: frontend.quantize_input(x, graph.tensors[graph.inputs[0]])}
    for layer in graph.layers:
        vals[layer.output] = eval_layer(layer, graph, vals)[0]
    return vals


LEVELS = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)


def assert_faithful(qdq, graph, inputs, label, allow_ties=False):
    """Every layer within 1 LSB of onnxruntime and >= 99% exactly equal.
    allow_ties: count only outputs whose exact value was not a rounding tie
    (the ISA rounds ties up / away from zero, ONNX to even; average pooling
    over windows with an even number of valid positions hits ties often)."""
    for level in LEVELS:
        stats = layer_agreement(qdq, graph, inputs, level)
        for name, st in stats.items():
            print(
                f"{label} [{level.name}] {name}: max {st['max']} LSB, {100 * st['exact']:.2f}% exact of {st['n']}"
                f" ({st['ties']} ties; {100 * st['exact_no_tie']:.2f}% exact without them)"
            )
        for name, st in stats.items():
            assert st["max"] <= 1, f"{label}: layer {name} differs from onnxruntime by {st['max']} LSB"
            frac = st["exact_no_tie"] if allow_ties else st["exact"]
            assert frac >= 0.99, f"{label}: layer {name} only {100 * frac:.2f}% exact"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def calib():
    return small.calibration_inputs(8, seed=1)


@pytest.fixture(scope="module")
def test_inputs():
    return small.calibration_inputs(3, seed=2)


@pytest.fixture(scope="module")
def small_qdq(calib):
    return frontend.quantize(small.small_cnn(), calib)


@pytest.fixture(scope="module")
def small_graph(small_qdq):
    return frontend.to_graph(small_qdq)


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _misc_cnn():
    """Attributes small_cnn does not use: auto_pad SAME_UPPER, Clip(0, 6),
    padded AveragePool (both count_include_pad), MaxPool ceil_mode,
    GlobalMaxPool and a MatMul head."""
    b = small.GraphBuilder(seed=3)
    lo, hi = b.param("six.lo", np.array(0.0)), b.param("six.hi", np.array(6.0))
    x = b.conv("conv1", "input", 3, 16, stride=2, pads=None, auto_pad="SAME_UPPER")  # 16x16x16
    x = b.op("Clip", "relu6", [x, lo, hi])
    x = b.op("AveragePool", "avg1", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    x = b.op("Relu", "relu2", [b.conv("conv2", x, 16, 24, k=1, pads=(0, 0, 0, 0))])
    x = b.op("MaxPool", "pool2", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)  # 8x8
    x = b.op("AveragePool", "avg2", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 4x4
    x = b.op("GlobalMaxPool", "gmp", [x])
    x = b.op("Flatten", "flatten", [x], axis=1)
    w = b.param("head.weight", b.rng.normal(0, 0.2, size=(24, 10)))
    out = b.op("MatMul", "head", [x, w])
    return b.model("misc_cnn", out, (1, 10))


# ---------------------------------------------------------------- quantization


def test_quantize_warns_without_calibration():
    with pytest.warns(UserWarning, match="representative data"):
        q = frontend.quantize(small.small_cnn(), num_random=4)
    assert frontend.is_qdq(q)


def test_quantize_with_calibration_is_silent(small_qdq, calib):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        frontend.quantize(
            small.small_cnn(), np.concatenate(calib[:4])
        )  # N samples stacked on the batch axis
    assert not [w for w in rec if "calibration" in str(w.message)]
    ops = {n.op_type for n in small_qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    # int8 per-channel symmetric weights, int8 activations
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in small_qdq.graph.initializer}
    w_dq = next(
        n for n in small_qdq.graph.node if n.op_type == "DequantizeLinear" and "conv2.weight" in n.input[0]
    )
    assert inits[w_dq.input[0]].dtype == np.int8 and inits[w_dq.input[1]].shape == (24,)
    assert not inits[w_dq.input[2]].any()
    q_in = next(n for n in small_qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert inits[q_in.input[2]].dtype == np.int8


def test_quantize_returns_qdq_models_unchanged(small_qdq):
    again = frontend.quantize(small_qdq)
    assert again.SerializeToString() == small_qdq.SerializeToString()


def test_quantize_converts_old_opsets(calib):
    q = frontend.quantize(small.small_cnn(opset=11), calib[:4])
    assert onnx_opset(q) >= 13
    g = frontend.to_graph(q)
    assert [layer.kind for layer in g.layers] == [
        "conv",
        "pool",
        "conv",
        "conv",
        "add",
        "conv",
        "conv",
        "pool",
        "conv",
    ]


def test_calibration_shape_checked():
    with pytest.raises(FrontendError, match=r"calibration sample 0 .*expected float32 \[1, 3, 32, 32\]"):
        frontend.quantize(small.small_cnn(), [np.zeros((1, 3, 16, 16), np.float32)])


# ---------------------------------------------------------------- QDQ -> IR structure


def test_small_cnn_layers(small_graph):
    g = small_graph
    kinds = [(layer.kind, layer.name) for layer in g.layers]
    assert kinds == [
        ("conv", "conv1"),
        ("pool", "pool1"),
        ("conv", "conv2"),
        ("conv", "conv3"),
        ("add", "add1"),
        ("conv", "conv4"),
        ("conv", "dwconv5"),
        ("pool", "gap"),
        ("conv", "fc"),
    ]
    L = {layer.name: layer for layer in g.layers}
    shape = lambda name: g.tensors[name].shape  # noqa: E731
    assert shape(g.inputs[0]) == (32, 32, 3) and g.tensors[g.inputs[0]].onnx_shape == (1, 3, 32, 32)
    assert shape(L["conv1"].output) == (32, 32, 24) and L["conv1"].weight.shape == (24, 3, 3, 3)
    assert L["conv1"].weight.dtype == np.int8 and L["conv1"].bias.dtype == np.int32
    assert L["conv1"].mult.dtype == np.int32 and L["conv1"].shift.shape == (24,)
    assert shape(L["pool1"].output) == (16, 16, 24) and L["pool1"].mode == "max"
    assert (L["pool1"].kernel, L["pool1"].stride) == ((2, 2), (2, 2))
    assert (L["pool1"].mult, L["pool1"].shift) == (1 << 30, 30)  # equal scales: exact
    # residual: the Add reads conv3's output and the max pool's
    assert L["add1"].inputs == (L["conv3"].output, L["pool1"].output)
    assert L["conv4"].stride == (2, 2) and L["conv4"].pads == (0, 0, 1, 1)
    assert shape(L["conv4"].output) == (8, 8, 40)
    assert L["dwconv5"].groups == 40 and L["dwconv5"].weight.shape == (40, 1, 3, 3)
    assert L["gap"].mode == "avg" and L["gap"].kernel == (8, 8) and shape(L["gap"].output) == (1, 1, 40)
    assert L["gap"].shift <= 30
    assert L["fc"].weight.shape == (10, 40, 1, 1) and L["fc"].onnx_nodes == ["flatten", "fc"]
    assert g.outputs == [L["fc"].output] and g.tensors[g.outputs[0]].onnx_shape == (1, 10)
    # Relu folded by onnxruntime into the output quantization (zero point at
    # int8 min), so the clamp is exact with the full range; conv3 has no Relu.
    for name in ("conv1", "conv2", "conv4", "dwconv5", "add1"):
        t = g.tensors[L[name].output]
        assert t.zero_point == -128 and L[name].clip == (-128, 127)
    assert g.tensors[L["conv3"].output].zero_point > -128
    assert all(layer.onnx_nodes for layer in g.layers)


def test_ir_parameters_follow_the_qdq_initializers(small_qdq, small_graph):
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in small_qdq.graph.initializer}
    conv2 = next(layer for layer in small_graph.layers if layer.name == "conv2")
    np.testing.assert_array_equal(conv2.weight, inits["conv2.weight_quantized"])
    np.testing.assert_array_equal(conv2.bias, inits["conv2.bias_quantized"])
    m = conv2.mult.astype(np.float64) * 2.0 ** -conv2.shift.astype(np.float64)
    tin, tout = small_graph.tensors[conv2.input], small_graph.tensors[conv2.output]
    want = tin.scale * inits["conv2.weight_scale"].astype(np.float64) / tout.scale
    np.testing.assert_allclose(m, want, rtol=1e-8)


def test_flattened_feature_map_into_gemm(calib, test_inputs):
    """Gemm on an NCHW-flattened 4x4x8 map: a Conv covering the whole map,
    the [N, C*H*W] weight read in ONNX's flatten order; transB=0 handled."""
    qdq = frontend.quantize(small.flatten_cnn(), calib)
    g = frontend.to_graph(qdq)
    assert [layer.kind for layer in g.layers] == ["conv", "pool", "conv", "conv"]
    fc1 = g.layers[2]
    assert fc1.weight.shape == (20, 8, 4, 4) and g.tensors[fc1.input].shape == (4, 4, 8)
    assert fc1.onnx_nodes == ["flatten", "fc1"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    np.testing.assert_array_equal(fc1.weight, inits["fc1.weight_quantized"].T.reshape(20, 8, 4, 4))
    assert_faithful(qdq, g, test_inputs, "flatten_cnn")


def test_misc_attributes(calib, test_inputs):
    qdq = frontend.quantize(_misc_cnn(), calib)
    g = frontend.to_graph(qdq)
    L = {layer.name: layer for layer in g.layers}
    assert L["conv1"].pads == (0, 0, 1, 1)  # SAME_UPPER, stride 2 on 32: the extra row/column at the end
    assert g.tensors[L["conv1"].output].shape == (16, 16, 16)
    assert L["avg1"].count_include_pad and L["avg1"].pads == (1, 1, 1, 1)
    assert L["pool2"].pads == (0, 0, 1, 1) and g.tensors[L["pool2"].output].shape == (8, 8, 24)  # ceil_mode
    assert not L["avg2"].count_include_pad and g.tensors[L["avg2"].output].shape == (4, 4, 24)
    assert L["gmp"].mode == "max" and L["gmp"].kernel == (4, 4)
    assert L["head"].weight.shape == (10, 24, 1, 1)
    assert_faithful(qdq, g, test_inputs, "misc_cnn", allow_ties=True)


def test_relu_kept_between_qdq_pairs_fuses(calib, test_inputs):
    """With QDQKeepRemovableActivations the Relu stays, between Q/DQ pairs:
    Conv -> Q(s, z) -> DQ -> Relu -> Q(s, z). onnxruntime gives both pairs
    the Relu's parameters, so the Relu is exactly a clamp at z of the conv's
    own int8 output and folds into the Conv's clip. Weights as float + Q/DQ
    pairs and dedicated Q/DQ pairs per consumer are read as well."""
    opts = {"QDQKeepRemovableActivations": True, "AddQDQPairToWeight": True, "DedicatedQDQPair": True}
    qdq = frontend.quantize(small.small_cnn(), calib, extra_options=opts)
    assert sum(n.op_type == "Relu" for n in qdq.graph.node) == 5
    g = frontend.to_graph(qdq)
    L = {layer.name: layer for layer in g.layers}
    assert list(L) == ["conv1", "pool1", "conv2", "conv3", "add1", "conv4", "dwconv5", "gap", "fc"]
    for layer, relu in (
        ("conv1", "relu1"),
        ("conv2", "relu2"),
        ("add1", "relu3"),
        ("conv4", "relu4"),
        ("dwconv5", "relu5"),
    ):
        assert L[layer].onnx_nodes == [layer, relu]
        assert L[layer].clip == (g.tensors[L[layer].output].zero_point, 127)
        assert L[layer].output.startswith(f"{relu}_QuantizeLinear_Output")
    assert_faithful(qdq, g, test_inputs, "small_cnn keep-relu")


def test_relu_between_different_qdq_pairs(calib, test_inputs):
    """Conv -> Q(a) -> DQ -> Relu -> Q(b) with a != b cannot fold exactly (it
    rounds twice): the Relu becomes a requantizing 1x1 max pool whose clamp
    is the Relu."""
    qdq = frontend.quantize(small.small_cnn(), calib, extra_options={"QDQKeepRemovableActivations": True})
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    qdq.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(inits["relu1_scale"] * np.float32(1.37), "conv1_alt_scale"),
            onnx.numpy_helper.from_array(np.array(-20, np.int8), "conv1_alt_zero_point"),
        ]
    )
    for n in qdq.graph.node:
        if n.name in ("conv1_QuantizeLinear", "conv1_DequantizeLinear"):
            n.input[1], n.input[2] = "conv1_alt_scale", "conv1_alt_zero_point"
    unused = [t for t in qdq.graph.initializer if t.name in ("conv1_scale", "conv1_zero_point")]
    for t in unused:
        qdq.graph.initializer.remove(t)
    g = frontend.to_graph(qdq)
    L = {layer.name: layer for layer in g.layers}
    assert list(L)[:3] == ["conv1", "relu1", "pool1"]
    relu, conv = L["relu1"], L["conv1"]
    assert conv.clip == (-128, 127) and g.tensors[conv.output].zero_point == -20
    assert (
        relu.kind == "pool" and relu.mode == "max" and relu.kernel == (1, 1) and relu.onnx_nodes == ["relu1"]
    )
    assert relu.input == conv.output and relu.clip == (g.tensors[relu.output].zero_point, 127)
    assert relu.mult * 2.0**-relu.shift == pytest.approx(1.37, rel=1e-6)  # a.scale / b.scale
    assert_faithful(qdq, g, test_inputs, "small_cnn requant-relu")


# ---------------------------------------------------------------- faithfulness vs onnxruntime


def test_small_cnn_layers_match_onnxruntime(small_qdq, small_graph, test_inputs, calib):
    assert_faithful(small_qdq, small_graph, test_inputs + calib[:2], "small_cnn")


def test_host_io_matches_onnx_semantics(small_qdq, small_graph, test_inputs):
    g = small_graph
    tin, tout = g.tensors[g.inputs[0]], g.tensors[g.outputs[0]]
    x = test_inputs[0]
    vals = ort_run(small_qdq, x, [tin.name, tout.name])
    np.testing.assert_array_equal(frontend.quantize_input(x, tin), to_hwc(vals[tin.name]))
    logits = frontend.dequantize_output(to_hwc(vals[tout.name]), tout)
    assert logits.shape == (1, 10) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, vals[small_qdq.graph.output[0].name])
    with pytest.raises(
        FrontendError, match=r"expected float32 NCHW \[1, 3, 32, 32\], got shape \[3, 32, 32\]"
    ):
        frontend.quantize_input(x[0], tin)
    with pytest.raises(FrontendError, match="expected float32 NCHW.*got dtype int64"):
        frontend.quantize_input(np.zeros((1, 3, 32, 32), np.int64), tin)
    with pytest.raises(FrontendError, match=r"expected int8 HWC \[1, 1, 10\]"):
        frontend.dequantize_output(np.zeros((1, 10), np.int8), tout)


def test_end_to_end_agreement(small_qdq, small_graph, test_inputs, calib):
    """Whole integer graph from the float input vs onnxruntime on the same
    QDQ model. The reference is the QDQ graph's own semantics (optimizations
    off: DequantizeLinear, float op, QuantizeLinear); that must agree within
    a few LSB (per-layer 1-LSB differences can compound) with equal classes.
    onnxruntime's fully fused int8 kernels are only reported: on x86 without
    VNNI they saturate int16 pair sums (a known onnxruntime limitation), so
    they drift from the QDQ semantics themselves."""
    g = small_graph
    out = g.outputs[0]
    onnx_out = small_qdq.graph.output[0].name
    xs = test_inputs + calib
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        worst, agree, exact = 0, 0, 0
        for x in xs:
            vals = run_ir(g, x)
            ref = ort_run(small_qdq, x, [out], level)
            d = int(np.abs(vals[out].astype(int) - to_hwc(ref[out]).astype(int)).max())
            worst, exact = max(worst, d), exact + (d == 0)
            logits = frontend.dequantize_output(vals[out], g.tensors[out])
            agree += int(np.argmax(logits) == np.argmax(ref[onnx_out]))
        print(
            f"end-to-end vs onnxruntime [{level.name}]: max {worst} LSB on the logits, "
            f"{exact}/{len(xs)} bit-exact, argmax agrees {agree}/{len(xs)}"
        )
        if level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL:
            assert worst <= 2 and agree == len(xs)


# ---------------------------------------------------------------- load errors


def _with_input_dims(model, dims):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    shape = m.graph.input[0].type.tensor_type.shape
    for d, v in zip(shape.dim, dims):
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    return m


def test_shape_inference_without_the_weights_gives_onnxs_model():
    """frontend.ops.infer_shapes leaves large initializers' bytes out of onnx's
    shape inference; the model it returns is onnx's, byte for byte: the
    weights back in place, a Reshape whose shape is a (small) initializer
    inferred from its values, a large initializer the Reshape reshapes."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)  # 4608 elements: left out
    table = rng.standard_normal((64, 32)).astype(np.float32)    # 2048: left out, and reshaped
    inits = [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(table, "table"),
             onnx.numpy_helper.from_array(np.array([1, -1], np.int64), "flat"),
             onnx.numpy_helper.from_array(np.array([32, 64], np.int64), "swap")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["y", "flat"], ["z"]),
             helper.make_node("Reshape", ["table", "swap"], ["t"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("t", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    got = infer_shapes(model)
    assert model.SerializeToString() == before  # the argument is left alone
    assert got.SerializeToString() == onnx.shape_inference.infer_shapes(model).SerializeToString()
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in got.graph.output}
    assert dims == {"z": [1, 2048], "t": [32, 64]}


def test_missing_file(tmp_path):
    with pytest.raises(FrontendError, match="no such model file: .*nope.onnx"):
        frontend.load_model(tmp_path / "nope.onnx")


def test_garbage_bytes(tmp_path):
    p = tmp_path / "garbage.onnx"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(FrontendError, match="not (an|a valid) ONNX model"):
        frontend.load_model(p)
    p.write_text("hello, this is not a model\n")
    with pytest.raises(FrontendError, match="not (an|a valid) ONNX model"):
        frontend.load_model(str(p))


def test_malformed_model():
    m = small.small_cnn()
    m.graph.node[0].input[1] = "no_such_weight"
    with pytest.raises(FrontendError, match="not a valid ONNX model.*no_such_weight"):
        frontend.load_model(m)


def test_dynamic_dims_and_override(tmp_path):
    m = _with_input_dims(small.small_cnn(), ["N", 3, 32, 32])
    with pytest.raises(FrontendError, match=r"input 'input' has a dynamic dimension 0 \('N'\).*input_shape"):
        frontend.load_model(m)
    m = _with_input_dims(small.small_cnn(), [1, 3, "height", "width"])
    with pytest.raises(FrontendError, match=r"dynamic dimension 2 \('height'\)"):
        frontend.load_model(m)
    fixed = frontend.load_model(m, input_shape=(1, 3, 32, 32))
    dims = [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]
    with pytest.raises(FrontendError, match="conflicts with the fixed dimension 1"):
        frontend.load_model(m, input_shape=(1, 4, 32, 32))


def test_batch_two():
    m = _with_input_dims(small.small_cnn(), [2, 3, 32, 32])
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    with pytest.raises(FrontendError, match="batch 2.*batch 1 is what the accelerator path runs"):
        frontend.load_model(m)


def test_two_inputs():
    m = small.small_cnn()
    m.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1, 4]))
    with pytest.raises(FrontendError, match=r"2 inputs \('input', 'extra'\)"):
        frontend.load_model(m)


def test_float_model_is_not_read_as_graph():
    with pytest.raises(FrontendError, match="quantize it first"):
        frontend.to_graph(small.small_cnn())


# ---------------------------------------------------------------- unsupported operators


def _with_tail(op_type, **attrs):
    """small_cnn's backbone with an op the core lacks inserted after conv2."""
    b = small.GraphBuilder(seed=0)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 8, stride=2)])
    x = b.op(op_type, f"my_{op_type.lower()}", [x], **attrs)
    x = b.op("GlobalAveragePool", "gap", [b.conv("conv2", x, 8, 8)])
    out = b.op("Flatten", "flatten", [x], axis=1)
    return b.model(f"with_{op_type}", out, (1, 8))


@pytest.mark.parametrize(
    "op_type, attrs",
    [("LRN", {"size": 3}), ("Softmax", {"axis": 1}), ("LpNormalization", {"axis": 1})],
)
def test_unsupported_op_names_op_and_node(op_type, attrs, calib):
    qdq = frontend.quantize(_with_tail(op_type, **attrs), calib[:2])
    with pytest.raises(UnsupportedOperatorError, match=f"{op_type} \\(node 'my_{op_type.lower()}'\\)") as e:
        frontend.to_graph(qdq)
    assert e.value.op_type == op_type and e.value.node_name == f"my_{op_type.lower()}"


@pytest.mark.parametrize("op_type", ["Sigmoid", "Tanh", "HardSigmoid"])
def test_elementwise_ops_are_activation_tables(op_type, calib):
    """An element-wise op between quantized tensors is the core's activation
    table, folded into the convolution before it; the table is onnxruntime's
    own DQ -> op -> Q on the 256 codes."""
    qdq = frontend.quantize(_with_tail(op_type), calib[:2])
    g = frontend.to_graph(qdq)
    fused = [layer for layer in g.layers if getattr(layer, "table", None) is not None]
    assert len(fused) == 1 and f"my_{op_type.lower()}" in fused[0].onnx_nodes
    assert "lut" not in [layer.kind for layer in g.layers]


def test_dilation_is_unsupported(calib):
    b = small.GraphBuilder(seed=0)
    x = b.conv("dilated", "input", 3, 8, pads=(2, 2, 2, 2), dilations=[2, 2])
    out = b.op("Flatten", "flatten", [b.op("GlobalAveragePool", "gap", [x])], axis=1)
    qdq = frontend.quantize(b.model("dilated", out, (1, 8)), calib[:2])
    with pytest.raises(UnsupportedOperatorError, match=r"Conv \(node 'dilated'\).*dilations \[2, 2\]"):
        frontend.to_graph(qdq)


# ---------------------------------------------------------------- graph clean-up of float models


def _float_run(model, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _bn(b, name, x, c, gamma=None):
    rng = b.rng
    params = [
        b.param(f"{name}.s", rng.uniform(0.5, 1.5, c) if gamma is None else gamma),
        b.param(f"{name}.b", rng.normal(0, 0.1, c)),
        b.param(f"{name}.m", rng.normal(0, 0.1, c)),
        b.param(f"{name}.v", rng.uniform(0.5, 2.0, c)),
    ]
    return b.op("BatchNormalization", name, [x] + params, epsilon=1e-5)


def _affine_cnn(opset=9):
    """Caffe2-era exports: Conv -> BN -> Unsqueeze/Mul/Unsqueeze/Add chains,
    a pre-activation BN after a max pool (nothing to fold into), Dropout,
    a weight from ConstantOfShape and a Reshape whose shape comes from a
    Shape -> Gather -> Unsqueeze -> Concat chain, a Sum residual."""
    b = small.GraphBuilder(seed=5)
    x = b.conv("conv1", "input", 3, 16)
    x = _bn(b, "bn1", x, 16)
    def unsqueeze(name, x, axes):
        if opset < 13:
            return b.op("Unsqueeze", name, [x], axes=axes)
        b.inits.append(onnx.numpy_helper.from_array(np.array(axes, np.int64), f"{name}.axes"))
        return b.op("Unsqueeze", name, [x, f"{name}.axes"])

    k = unsqueeze("k_u", b.param("k", b.rng.uniform(0.5, 1.5, 16)), [1, 2])
    c = unsqueeze("c_u", b.param("c", b.rng.normal(0, 0.1, 16)), [1, 2])
    x = b.op("Relu", "relu1", [b.op("Add", "aff_add", [b.op("Mul", "aff_mul", [x, k]), c])])
    p = b.op("MaxPool", "pool1", [x], kernel_shape=[2, 2], strides=[2, 2])  # 16x16x16
    y = b.op("Relu", "relu2", [_bn(b, "bn_pre", p, 16)])  # standalone: a depthwise conv
    y = b.conv("conv2", y, 16, 16, gain=1.0)
    y = _bn(b, "bn2", y, 16, gamma=np.where(np.arange(16) % 4 == 0, -0.7, 0.9))  # some negative scales
    x = b.op("Relu", "relu3", [b.op("Sum", "res", [y, p])])
    x = b.op("Dropout", "drop", [x], ratio=0.5) if opset < 12 else b.op("Identity", "drop", [x])
    x = b.op("GlobalAveragePool", "gap", [x])
    shape = b.op("Shape", "shape", [x])
    b.inits.append(onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"))
    n = b.op("Gather", "n", [shape, "zero"], axis=0)
    n_u = unsqueeze("n_u", n, [0])
    b.inits.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus1"))
    target = b.op("Concat", "target", [n_u, "minus1"], axis=0)
    x = b.op("Reshape", "flatten", [x, target])
    b.inits.append(onnx.numpy_helper.from_array(np.array([10, 16], np.int64), "fc.wshape"))
    w = b.op("ConstantOfShape", "fc.w", ["fc.wshape"], value=onnx.numpy_helper.from_array(np.array([0.05], np.float32)))
    out = b.op("Gemm", "fc", [x, w, b.param("fc.bias", b.rng.normal(0, 0.1, 10))], transB=1)
    return b.model("affine_cnn", out, (1, 10), opset)


@pytest.mark.parametrize("opset", [9, 13])
def test_simplify_folds_affine_chains_exactly(opset, test_inputs):
    m = _affine_cnn(opset)
    s = frontend.simplify(onnx.load_model_from_string(m.SerializeToString()))
    ops = [n.op_type for n in s.graph.node]
    assert not {"BatchNormalization", "Mul", "Unsqueeze", "Dropout", "Identity", "Shape", "ConstantOfShape"} & set(ops)
    assert ops.count("Conv") == 3  # conv1 (+bn1, mul, add), bn_pre as a depthwise conv, conv2 (+bn2)
    dw = next(n for n in s.graph.node if n.op_type == "Conv" and attrs(n).get("group", 1) == 16)
    assert dw.input[0] == "pool1"
    for x in test_inputs[:2]:
        np.testing.assert_allclose(_float_run(s, x), _float_run(m, x), rtol=1e-4, atol=1e-4)


def test_affine_cnn_quantizes_and_reads(calib, test_inputs):
    qdq = frontend.quantize(_affine_cnn(9), calib)
    g = frontend.to_graph(qdq)
    kinds = [layer.kind for layer in g.layers]
    assert kinds == ["conv", "pool", "conv", "conv", "add", "pool", "conv"]
    dw = g.layers[2]
    assert dw.groups == 16 and dw.weight.shape == (16, 1, 1, 1)
    assert_faithful(qdq, g, test_inputs, "affine_cnn")


def _qdq_with_bn(calib, between_qdq):
    """A QDQ model that still holds a BatchNormalization after a Conv:
    quantized without the clean-up (BN left float), then (unless
    between_qdq) the Q/DQ pair between Conv and BN removed, so the BN reads
    the Conv's float result."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    b = small.GraphBuilder(seed=8)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 8)])
    x = b.conv("conv2", x, 8, 8)
    x = b.op("Relu", "relu2", [_bn(b, "bn", x, 8, gamma=np.array([0.9, -0.8, 1.1, 0.7, -1.2, 1.0, 0.6, 1.3]))])
    out = b.op("Flatten", "flatten", [b.op("GlobalAveragePool", "gap", [x])], axis=1)
    m = b.model("bn_cnn", out, (1, 8))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": c} for c in calib])

        def get_next(self):
            return next(self.it, None)

    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(m, src)
        quantize_static(
            src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Relu", "GlobalAveragePool", "Flatten"],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        q = onnx.load(dst)
    bn = next(n for n in q.graph.node if n.op_type == "BatchNormalization")
    if not between_qdq:
        dq = next(n for n in q.graph.node if n.output[0] == bn.input[0])
        qn = next(n for n in q.graph.node if n.output[0] == dq.input[0])
        bn.input[0] = qn.input[0]
        q.graph.node.remove(dq)
        q.graph.node.remove(qn)
    return q


@pytest.mark.parametrize("between_qdq", [False, True])
def test_qdq_model_with_batchnorm(between_qdq, calib, test_inputs):
    qdq = _qdq_with_bn(calib, between_qdq)
    g = frontend.to_graph(qdq)
    kinds = [layer.kind for layer in g.layers]
    if between_qdq:  # DQ -> BN -> Q: a depthwise 1x1 conv with weights +-127
        assert kinds == ["conv", "conv", "conv", "pool"]
        dw = g.layers[2]
        assert dw.groups == 8 and set(np.unique(dw.weight)) == {-127, 127} and "bn" in dw.onnx_nodes
    else:  # Conv -> BN: folded into the conv (negative scales negate the weights)
        assert kinds == ["conv", "conv", "pool"] and "bn" in g.layers[1].onnx_nodes
    assert_faithful(qdq, g, test_inputs, f"bn between_qdq={between_qdq}")


def test_qdq_batchnorm_that_cannot_fold_exactly(calib):
    qdq = _qdq_with_bn(calib, between_qdq=False)
    w_dq = next(n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and "conv2.weight" in n.input[0])
    w = next(t for t in qdq.graph.initializer if t.name == w_dq.input[0])
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[1, 0, 0, 0] = -128  # channel 1 has a negative BN scale: -(-128) is not int8
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    with pytest.raises(FrontendError, match="'bn' cannot be folded exactly into Conv 'conv2'.*-128"):
        frontend.to_graph(qdq)


# ---------------------------------------------------------------- concatenation


def _concat_cnn():
    """Inception-style block: branches concatenated on channels, one of
    them a max pool of the block input (so it has the input's scale); a
    second Concat reads the first (nested, as DenseNet does)."""
    b = small.GraphBuilder(seed=9)
    x = b.op("Relu", "relu0", [b.conv("conv0", "input", 3, 8, stride=2)])  # 8x16x16
    a = b.op("Relu", "ra", [b.conv("ca", x, 8, 8, k=1, pads=(0, 0, 0, 0))])
    c = b.op("Relu", "rc", [b.conv("cc", x, 8, 12)])
    p = b.op("MaxPool", "mp", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    cat1 = b.op("Concat", "cat1", [a, c, p], axis=1)  # 28 channels
    d = b.op("Relu", "rd", [b.conv("cd", cat1, 28, 6, gain=0.5)])
    cat2 = b.op("Concat", "cat2", [cat1, d], axis=1)  # 34
    x = b.op("GlobalAveragePool", "gap", [cat2])
    out = b.op("Flatten", "flatten", [x], axis=1)
    return b.model("concat_cnn", out, (1, 34))


@pytest.mark.parametrize("share", [True, False])
def test_concat(share, calib, test_inputs):
    qdq = frontend.quantize(_concat_cnn(), calib, share_scales=share)
    g = frontend.to_graph(qdq)
    cats = [layer for layer in g.layers if layer.kind == "concat"]
    assert [c.name for c in cats] == ["cat1", "cat2"]
    copies = [layer for layer in g.layers if layer.name.startswith("cat") and layer.kind == "pool"]
    for c in cats:
        out = g.tensors[c.output]
        assert sum(g.tensors[i].shape[2] for i in c.inputs) == out.shape[2]
        for i in c.inputs:  # every input carries the output's quantization
            assert (g.tensors[i].scale, g.tensors[i].zero_point) == (out.scale, out.zero_point)
    # each tensor is a slice of at most one concat output
    slices = [i for c in cats for i in c.inputs]
    assert len(slices) == len(set(slices))
    if share:  # onnxruntime calibrates each input on its own; sharing removes the copies
        assert not copies
    else:
        assert copies and all(p.kernel == (1, 1) and p.mode == "max" for p in copies)
    assert_faithful(qdq, g, test_inputs, f"concat share={share}", allow_ties=not share)
    for x in test_inputs:
        vals = golden.run_graph(g, frontend.quantize_input(x, g.tensors[g.inputs[0]]))
        ref = ort_run(qdq, x, g.outputs, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        o = g.outputs[0]
        assert np.abs(vals[o].astype(int) - to_hwc(ref[o]).astype(int)).max() <= 2


# ---------------------------------------------------------------- pooling modes


@pytest.mark.parametrize("count_pad", [0, 1])
def test_average_pool_ceil_mode(count_pad, calib, test_inputs):
    """ceil_mode on AveragePool: the extra bottom/right windows are padding
    that is never counted (ONNX divides by the valid positions, or by the
    window clipped to the explicit padding with count_include_pad=1). The
    first is the accelerator's count of valid positions; the second has no
    exact form (the count would have to include the explicit padding but not
    the ceil extension), so it is unsupported -> CPU with fallback."""
    b = small.GraphBuilder(seed=4)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 8, stride=2)])  # 16x16
    x = b.op("AveragePool", "avg", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             ceil_mode=1, count_include_pad=count_pad)  # 9x9: the last window reaches past the padding
    x = b.conv("conv2", x, 8, 8)
    out = b.op("Flatten", "flatten", [b.op("GlobalAveragePool", "gap", [x])], axis=1)
    qdq = frontend.quantize(b.model("avg_ceil", out, (1, 8)), calib)
    if not count_pad:
        g = frontend.to_graph(qdq)
        avg = next(layer for layer in g.layers if layer.name == "avg")
        assert avg.pads == (1, 1, 2, 2) and g.tensors[avg.output].shape == (9, 9, 8)
        assert_faithful(qdq, g, test_inputs, "avg ceil_mode", allow_ties=True)
        return
    with pytest.raises(UnsupportedOperatorError, match="ceil_mode with count_include_pad=1"):
        frontend.to_graph(qdq)
    g = frontend.to_graph(qdq, fallback=True)
    assert [layer.kind for layer in g.layers] == ["conv", "cpu", "conv", "pool"]
    assert g.layers[1].onnx_nodes[1:2] == ["avg"] or "avg" in g.layers[1].onnx_nodes
    _assert_end_to_end(qdq, g, test_inputs)


# ---------------------------------------------------------------- CPU fallback


def _assert_end_to_end(qdq, g, inputs, tol=2):
    """golden.run_graph (CpuOps on onnxruntime) vs onnxruntime on the whole QDQ model."""
    for x in inputs:
        vals = golden.run_graph(g, frontend.quantize_input(x, g.tensors[g.inputs[0]]))
        names = [o for o in g.outputs if g.tensors[o].dtype == "int8"]
        ref = ort_run(qdq, x, names, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        for o, onnx_out in zip(g.outputs, qdq.graph.output):
            t = g.tensors[o]
            if t.dtype == "int8":
                assert np.abs(vals[o].astype(int) - to_hwc(ref[o]).astype(int)).max() <= tol
            got = frontend.dequantize_output(vals[o], t)
            want = ref[onnx_out.name]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=tol * t.scale + 1e-3 * (t.dtype == "float32"), rtol=0.05)


@pytest.mark.parametrize(
    "op_type, attrs",
    [("LRN", {"size": 3}), ("Softmax", {"axis": 1}), ("LpNormalization", {"axis": 1})],
)
def test_fallback_runs_unsupported_ops_on_the_cpu(op_type, attrs, calib, test_inputs):
    qdq = frontend.quantize(_with_tail(op_type, **attrs), calib[:4])
    g = frontend.to_graph(qdq, fallback=True)
    assert [layer.kind for layer in g.layers] == ["conv", "cpu", "conv", "pool"]
    cpu = g.layers[1]
    assert isinstance(cpu, ir.CpuOp) and f"my_{op_type.lower()}" in cpu.onnx_nodes
    assert cpu.inputs == (g.layers[0].output,) and cpu.outputs == (g.layers[2].input,)
    sub = onnx.load_model_from_string(cpu.model)
    onnx.checker.check_model(sub)
    assert [i.type.tensor_type.elem_type for i in sub.graph.input] == [TensorProto.INT8]
    assert [o.type.tensor_type.elem_type for o in sub.graph.output] == [TensorProto.INT8]
    assert {n.op_type for n in sub.graph.node} <= {op_type, "QuantizeLinear", "DequantizeLinear"}
    report = frontend.placement_report(g)
    assert {(n, p) for n, _, p in report if n in ("conv1", "conv2", f"my_{op_type.lower()}")} == {
        ("conv1", "accelerator"), ("conv2", "accelerator"), (f"my_{op_type.lower()}", "cpu")
    }
    assert {p for _, _, p in report} <= {"accelerator", "cpu", "folded"}
    assert [n for n, _, _ in report] == [n.name or f"{n.op_type}_{k}" for k, n in enumerate(qdq.graph.node)]
    _assert_end_to_end(qdq, g, test_inputs)


def _shuffle_cnn(tail=None):
    """ShuffleNet's channel shuffle (Reshape to 5-D, Transpose, Reshape
    back) between grouped convs, and optionally an op after the classifier."""
    b = small.GraphBuilder(seed=6)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 12, stride=2, group=3)])  # 12x16x16
    b.inits.append(onnx.numpy_helper.from_array(np.array([1, 3, 4, 16, 16], np.int64), "s5"))
    b.inits.append(onnx.numpy_helper.from_array(np.array([1, 12, 16, 16], np.int64), "s4"))
    x = b.op("Reshape", "shuf_r1", [x, "s5"])
    x = b.op("Transpose", "shuf_t", [x], perm=[0, 2, 1, 3, 4])
    x = b.op("Reshape", "shuf_r2", [x, "s4"])
    x = b.op("Relu", "relu2", [b.conv("conv2", x, 12, 12, group=3)])
    x = b.op("Flatten", "flatten", [b.op("GlobalAveragePool", "gap", [x])], axis=1)
    out = b.gemm("fc", x, 12, 10)
    if tail:
        out = b.op(tail, "tail", [out], **({"axis": 1} if tail == "Softmax" else {"size": 3}))
    return b.model("shuffle_cnn", out, (1, 10))


def test_fallback_channel_shuffle_is_one_cpu_op(calib, test_inputs):
    """The 5-D Reshape/Transpose/Reshape run keeps its int8 Q/DQ pairs
    inside one CpuOp; only 4-D tensors cross the boundary."""
    qdq = frontend.quantize(_shuffle_cnn(), calib[:4])
    with pytest.raises(UnsupportedOperatorError, match="node 'shuf_r1'"):
        frontend.to_graph(qdq)
    g = frontend.to_graph(qdq, fallback=True)
    assert [layer.kind for layer in g.layers] == ["conv", "cpu", "conv", "pool", "conv"]
    cpu = g.layers[1]
    assert {"shuf_r1", "shuf_t", "shuf_r2"} <= set(cpu.onnx_nodes)
    sub = onnx.load_model_from_string(cpu.model)
    assert len(sub.graph.input) == 1 and len(sub.graph.output) == 1
    assert [d.dim_value for d in sub.graph.output[0].type.tensor_type.shape.dim] == [1, 12, 16, 16]
    _assert_end_to_end(qdq, g, test_inputs)


@pytest.mark.parametrize("tail", ["Softmax", "LRN"])
def test_fallback_final_op_on_the_cpu(tail, calib, test_inputs):
    """Softmax is quantized by onnxruntime (int8 output, dequantized on the
    host); LRN is not, so the graph output is the CpuOp's float32 output."""
    m = _shuffle_cnn(tail)
    if tail == "LRN":  # LRN needs 4-D: put it on the [1, 10, 1, 1] logits
        b = small.GraphBuilder(seed=6)
        b.nodes, b.inits = list(m.graph.node), list(m.graph.initializer)
        b.nodes.pop()
        b.inits.append(onnx.numpy_helper.from_array(np.array([1, 10, 1, 1], np.int64), "s_lrn"))
        x = b.op("Reshape", "to4d", ["fc", "s_lrn"])
        out = b.op("LRN", "tail", [x], size=3)
        m = b.model("shuffle_lrn", out, (1, 10, 1, 1))
    qdq = frontend.quantize(m, calib[:4])
    g = frontend.to_graph(qdq, fallback=True)
    out = g.tensors[g.outputs[0]]
    assert g.layers[-1].kind == "cpu" and "tail" in g.layers[-1].onnx_nodes
    if tail == "Softmax":
        assert out.dtype == "int8"
    else:
        assert out.dtype == "float32" and out.shape == (1, 1, 10) and out.onnx_shape == (1, 10, 1, 1)
        sub = onnx.load_model_from_string(g.layers[-1].model)
        assert sub.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    _assert_end_to_end(qdq, g, test_inputs)


def test_placement_report_needs_a_frontend_graph(small_graph):
    report = frontend.placement_report(small_graph)
    assert {p for _, _, p in report} == {"accelerator", "folded"}
    assert ("conv1", "Conv", "accelerator") in report and ("fc", "Gemm", "accelerator") in report
    assert all(p == "folded" for _, op, p in report if op in ("QuantizeLinear", "DequantizeLinear", "Flatten"))
    bare = ir.Graph(small_graph.tensors, small_graph.layers, small_graph.inputs, small_graph.outputs)
    with pytest.raises(FrontendError, match="no ONNX node list"):
        frontend.placement_report(bare)


def test_to_graph_dynamic_input_needs_a_shape(small_qdq):
    m = _with_input_dims(small_qdq, ["N", 3, 32, 32])
    with pytest.raises(FrontendError, match=r"dynamic dimension 0 \('N'\).*input_shape"):
        frontend.to_graph(m)
    g = frontend.to_graph(m, input_shape=(1, 3, 32, 32))
    assert g.tensors[g.inputs[0]].shape == (32, 32, 3)


def test_concat_sharing_keeps_removed_clips(calib, test_inputs):
    """onnxruntime drops a Clip(0, 6) whose output range is exactly [0, 6]
    (the QuantizeLinear clamps); widening that input to the Concat's range
    would lose the clamp at 6, so such inputs keep their own quantization
    (a copy) while plain Relu inputs share."""
    b = small.GraphBuilder(seed=12)
    lo, hi = b.param("lo", np.array(0.0)), b.param("hi", np.array(6.0))
    x = b.op("Relu", "relu0", [b.conv("conv0", "input", 3, 8, stride=2)])
    a = b.op("Clip", "six", [b.conv("ca", x, 8, 8, gain=40.0), lo, hi])  # saturates at 6 often
    c = b.op("Relu", "rc", [b.conv("cc", x, 8, 8, gain=200.0)])  # wider than [0, 6]
    cat = b.op("Concat", "cat", [a, c], axis=1)
    out = b.op("Flatten", "flatten", [b.op("GlobalAveragePool", "gap", [cat])], axis=1)
    qdq = frontend.quantize(b.model("relu6_cat", out, (1, 16)), calib)
    assert "six" not in {n.name for n in qdq.graph.node}  # removed by onnxruntime
    g = frontend.to_graph(qdq)
    L = {layer.name: layer for layer in g.layers}
    cat_layer = L["cat"]
    assert "cat__in0" in L and L["cat__in0"].input == L["ca"].output  # the clipped branch is copied
    assert cat_layer.inputs[1] == L["cc"].output  # the Relu branch shares
    six = g.tensors[L["ca"].output]
    assert six.zero_point == -128 and (127 - six.zero_point) * six.scale == pytest.approx(6.0, rel=1e-3)
    assert_faithful(qdq, g, test_inputs, "relu6 concat", allow_ties=True)


def test_fallback_on_the_float_input_is_a_clear_error(calib):
    """An unquantized op (LRN) straight on the graph input: the CPU would
    have to take the float input, but the accelerator path's input is int8."""
    b = small.GraphBuilder(seed=0)
    x = b.op("LRN", "lrn0", ["input"], size=3)
    out = b.op("Flatten", "flatten", [b.op("GlobalAveragePool", "gap", [b.conv("conv1", x, 3, 8)])], axis=1)
    qdq = frontend.quantize(b.model("lrn_first", out, (1, 8)), calib[:2])
    with pytest.raises(FrontendError, match="LRN 'lrn0' runs on the CPU on the float graph input 'input'"):
        frontend.to_graph(qdq, fallback=True)


def test_fallback_regions_never_form_a_cycle(calib, test_inputs):
    """LRN on the CPU feeds a conv on the accelerator, and a difference of two
    activations (CPU) reads both the LRN result and the conv's: joining the
    LRN's CpuOp would make the cut cyclic, so the difference gets a CpuOp of
    its own that reads the LRN's int8 result."""
    b = small.GraphBuilder(seed=13)
    x = b.op("Relu", "relu1", [b.conv("conv1", "input", 3, 8, stride=2)])
    lrn = b.op("LRN", "lrn", [x], size=3)
    c = b.op("Relu", "relu2", [b.conv("conv2", lrn, 8, 8)])
    m = b.op("Sub", "prod", [lrn, c])
    out = b.op("Flatten", "flatten", [b.op("GlobalAveragePool", "gap", [b.conv("conv3", m, 8, 8)])], axis=1)
    qdq = frontend.quantize(b.model("cyclic", out, (1, 8)), calib[:4])
    g = frontend.to_graph(qdq, fallback=True)
    assert [layer.kind for layer in g.layers] == ["conv", "cpu", "conv", "cpu", "conv", "pool"]
    lrn_op, prod_op = g.layers[1], g.layers[3]
    assert "lrn" in lrn_op.onnx_nodes and "prod" in prod_op.onnx_nodes and "lrn" not in prod_op.onnx_nodes
    assert set(prod_op.inputs) == {lrn_op.outputs[0], g.layers[2].output}
    _assert_end_to_end(qdq, g, test_inputs)


def _linear_op_ort(op: str, value: np.ndarray, tensor: ir.Tensor) -> np.ndarray:
    """onnxruntime's QuantizeLinear (float32 -> int8) or DequantizeLinear
    (int8 -> float32) of ``value`` with ``tensor``'s scale and zero point."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    types = (TensorProto.FLOAT, TensorProto.INT8)
    if op == "DequantizeLinear":
        types = types[::-1]
    graph = helper.make_graph(
        [helper.make_node(op, ["v", "scale", "zero_point"], ["out"])], op,
        [helper.make_tensor_value_info("v", types[0], list(value.shape))],
        [helper.make_tensor_value_info("out", types[1], list(value.shape))],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [tensor.scale]),
         helper.make_tensor("zero_point", TensorProto.INT8, [], [tensor.zero_point])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"v": value})[0]


def _quantize_linear_ort(x, tensor: ir.Tensor) -> np.ndarray:
    """onnxruntime's QuantizeLinear of ``x`` (cast to float32, as a float32 model input is) in int8 HWC."""
    q = _linear_op_ort("QuantizeLinear", np.asarray(x).astype(np.float32), tensor)
    h, w, c = tensor.shape
    return np.ascontiguousarray(q.reshape(c, h, w).transpose(1, 2, 0))


@pytest.mark.parametrize("path", ["vector", "loops"])
@pytest.mark.parametrize("build", ["this host's", "portable"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape, onnx_shape", [((7, 5, 3), None), ((1, 1, 10), (1, 10)), ((224, 224, 3), None),
                                               ((5, 29, 3), None), ((3, 300, 1), None), ((9, 9, 20), None)])
def test_quantize_input_equals_onnxruntime_quantize_linear(monkeypatch, build, path, dtype, shape, onnx_shape):
    """Both builds of the C helper (the host's ISA level, loaded by default,
    and the portable one), an RGB image on both paths (AVX-512 VBMI where the
    CPU has it, else AVX2, 64 pixels at a time then the rest, and the
    compiler's loops)."""
    import importlib

    from vfpga.runtime.compiler.frontend import marshal
    if build == "portable":
        monkeypatch.setattr(marshal, "_marshal", importlib.import_module("vfpga.driver._marshal"))
    monkeypatch.setattr(marshal, "VECTOR", path == "vector")
    rng = np.random.default_rng(len(shape) + shape[0])
    for scale, zp in ((0.0339, -4), (0.5, 127), (1e-3, -128), (2.0, 0)):
        t = ir.Tensor("x", shape, scale, zp, onnx_shape=onnx_shape)
        layout = onnx_shape or (1, shape[2], shape[0], shape[1])
        x = rng.standard_normal(layout) * 200 * scale
        # values at and near halfway points (round half to even), the saturation edges, huge, inf and nan
        flat = x.reshape(-1)
        n = flat.size
        flat[: n // 4] = (rng.integers(-140, 140, n // 4) + 0.5) * scale
        specials = [np.inf, -np.inf, np.nan, 1e30, -1e30, 0.0, -0.0, (127.5 - zp) * scale, (-128.5 - zp) * scale,
                    (2 ** 22 + 0.5) * scale, -(2 ** 23 + 1.0) * scale, 255.5 * scale, -256.5 * scale]
        flat[n // 4:n // 4 + len(specials)] = specials[: max(0, min(len(specials), n - n // 4))]
        # float32 values one or two ulps from halfway points, where x * (1 / scale) and x / scale may round
        # apart: one in 67, so that a 64-pixel block holds one among values far from halfway
        near = flat[n // 2::67]
        half = ((rng.integers(-140, 140, near.size) + 0.5) * scale).astype(np.float32)
        ulps = rng.choice(np.array([-2, -1, 1, 2], np.int32), near.size)
        near[:] = (half.view(np.int32) + ulps).view(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # inf and nan on purpose
            x = x.astype(dtype)
            np.testing.assert_array_equal(frontend.quantize_input(x, t), _quantize_linear_ort(x, t))


@pytest.mark.parametrize("path", ["vector", "loops"])
@pytest.mark.parametrize("build", ["this host's", "portable"])
@pytest.mark.parametrize("later", [np.nan, -np.inf])
def test_quantize_input_takes_a_block_by_division_whatever_follows_in_a_lane(monkeypatch, build, path, later):
    """One 64-pixel block: R of pixel 3 is a value whose product by 1/scale
    rounds apart from its quotient, and G of pixel 19 (the same lane of 8
    and of 16 values, quantized after it) is NaN or -inf, whose |v - round(v)|
    is NaN: the near-half check must still send the block to division."""
    import importlib

    from vfpga.runtime.compiler.frontend import marshal
    if build == "portable":
        monkeypatch.setattr(marshal, "_marshal", importlib.import_module("vfpga.driver._marshal"))
    monkeypatch.setattr(marshal, "VECTOR", path == "vector")
    scale, zp = np.float32(0.0339), -4
    near = np.float32(-3.915449857711792)  # 1 ulp below -115.5 * scale: x / scale -> -115, x * (1 / scale) -> -116
    assert np.rint(near / scale) == -115 and np.rint(near * (np.float32(1) / scale)) == -116
    t = ir.Tensor("x", (8, 8, 3), float(scale), zp)
    x = (np.random.default_rng(3).standard_normal((1, 3, 8, 8)) * 40 * scale).astype(np.float32)
    x[0, 0].reshape(-1)[3] = near
    x[0, 1].reshape(-1)[19] = later
    got = frontend.quantize_input(x, t)
    assert got[0, 3, 0] == -119  # the quotient's -115, plus the zero point
    np.testing.assert_array_equal(got, _quantize_linear_ort(x, t))


def _dequantize_linear_ort(q: np.ndarray, tensor: ir.Tensor) -> np.ndarray:
    """onnxruntime's DequantizeLinear of an int8 HWC ``q``, in the ONNX layout."""
    return _linear_op_ort("DequantizeLinear", np.ascontiguousarray(q.transpose(2, 0, 1))[None], tensor)


@pytest.mark.parametrize("build", ["this host's", "portable"])
@pytest.mark.parametrize("shape, onnx_shape", [((7, 5, 3), None), ((1, 1, 1000), (1, 1000)), ((14, 14, 40), None),
                                               ((56, 56, 1), None), ((20, 15, 33), None)])
def test_dequantize_output_equals_onnxruntime_dequantize_linear(monkeypatch, build, shape, onnx_shape):
    """Both builds of the C helper; (q - zp) * scale in float32, bit for bit, in the ONNX layout."""
    if build == "portable":
        import importlib

        from vfpga.runtime.compiler.frontend import marshal
        monkeypatch.setattr(marshal, "_marshal", importlib.import_module("vfpga.driver._marshal"))
    rng = np.random.default_rng(shape[2])
    for scale, zp in ((0.0339, -4), (0.5, 127), (1e-3, -128), (3.7, 0)):
        t = ir.Tensor("y", shape, scale, zp, onnx_shape=onnx_shape)
        q = rng.integers(-128, 128, size=shape, dtype=np.int8)
        q.reshape(-1)[:256] = np.arange(-128, 128)[: q.size]  # every code
        got = frontend.dequantize_output(q, t)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert got.shape == (onnx_shape or (1, shape[2], shape[0], shape[1]))
        np.testing.assert_array_equal(got, _dequantize_linear_ort(q, t).reshape(got.shape))
        # a strided view of the same values gives the same (the C pass takes a contiguous copy)
        wide = np.zeros(shape[:2] + (2 * shape[2],), np.int8)
        wide[:, :, ::2] = q
        np.testing.assert_array_equal(frontend.dequantize_output(wide[:, :, ::2], t), got)
