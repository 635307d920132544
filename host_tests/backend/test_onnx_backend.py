"""The onnx.backend interface (vfpga.runtime.backend), driven by ONNX's own
backend node tests.

* Integer node tests (QLinearConv, QLinearMatMul, uint8 MaxPool, int8 Clip)
  run through ONNX's BackendTest runner. Its comparison (rtol 1e-3) is
  exact equality for integer outputs, and the same cases are also checked
  with assert_array_equal.
* Float node tests (Conv, Gemm, MatMul, pools, Relu, Clip) cannot meet
  rtol 1e-3 on an int8 accelerator: they run from the same test data with
  calibration on the test input and must stay within
  backend.FLOAT_TOLERANCE_LSB steps of the output's int8 scale.
* Node tests vfpga cannot run are excluded with a reason, and a test checks
  that each really fails with that reason at prepare/run.
* Beyond the node tests: randomized QLinearConv/QLinearMatMul against ONNX's
  reference (bit-exact except exact requantization ties, which are counted),
  onnxruntime-quantized QOperator CNNs, devices, lifetimes and errors.
"""

from __future__ import annotations

import gc
import glob
import os
import re
import tempfile
import warnings

import numpy as np
import onnx
import onnx.backend.test
import onnxruntime as ort
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from vfpga.runtime import backend as vb
from vfpga.runtime.compiler.frontend import FrontendError, UnsupportedOperatorError
from vfpga.runtime.models import small

NODE_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")

# The operators this backend covers: every node test whose name matches.
COVERED = [
    r"^test_qlinearconv",
    r"^test_qlinearmatmul",
    r"^test_convinteger",
    r"^test_matmulinteger",
    r"^test_conv_",
    r"^test_basic_conv",
    r"^test_gemm",
    r"^test_matmul_2d",
    r"^test_maxpool",
    r"^test_averagepool",
    r"^test_globalaveragepool",
    r"^test_globalmaxpool",
    r"^test_relu",
    r"^test_clip",
    r"^test_add",
]

# Node tests vfpga cannot run: (why, what the raised error must say).
UNSUPPORTED = {
    r"^test_(maxpool|averagepool)_1d": ("1-D pooling; the core pools 2-D windows", r"1-D kernel"),
    r"^test_(maxpool|averagepool)_3d": ("3-D pooling; the core pools 2-D windows", r"3-D kernel"),
    r"^test_(maxpool|averagepool)_2d_dilations": ("dilated windows; POOL/CONV have no dilation", r"dilations"),
    r"^test_maxpool_with_argmax": ("MaxPool's Indices output", r"Indices"),
    r"^test_convinteger|^test_matmulinteger": (
        "int32 accumulator outputs; the core requantizes to int8 before anything leaves it "
        "(prepare(cpu_fallback=True) runs them on onnxruntime, tested below)",
        r"int32",
    ),
    r"^test_gemm_(transposeA|all_attributes)$": ("transA=1: the activation is not [batch, K]", r"transA"),
    r"^test_gemm_default_matrix_bias$": ("a bias that differs per batch row", r"differs per row"),
    r"^test_globalmaxpool": (
        "onnxruntime's QDQ quantizer has no GlobalMaxPool rule, so the op stays float",
        r"float output|left every op float \(GlobalMaxPool",
    ),
    r"^test_add(_bcast|_u?int(16|32|64))?$": (
        "two runtime activation inputs; a tenant program reads one input tensor",
        r"2 activation inputs",
    ),
    r"^test_add_u?int8$": ("integer Add wraps modulo 2**8 in ONNX; the core's ADD saturates", r"operator Add"),
    r"_expanded": (
        "function-expanded forms (Less/Where/CastLike/Max, or a bare Identity) are not core ops",
        r"operator (Less|CastLike)|input itself|left every op float \(Identity",
    ),
}


def _node_tests() -> list[str]:
    return sorted(n for n in os.listdir(NODE_DIR) if any(re.search(p, n) for p in COVERED))


def _unsupported_reason(name: str):
    for pattern, why in UNSUPPORTED.items():
        if re.search(pattern, name):
            return why
    return None


def _is_float_test(name: str) -> bool:
    m = onnx.load(os.path.join(NODE_DIR, name, "model.onnx"), load_external_data=False)
    return any(o.type.tensor_type.elem_type != TensorProto.UINT8 and o.type.tensor_type.elem_type != TensorProto.INT8
               for o in m.graph.output)


NODE_TESTS = _node_tests()
EXCLUDED = [n for n in NODE_TESTS if _unsupported_reason(n)]
FLOAT_TESTS = [n for n in NODE_TESTS if n not in EXCLUDED and _is_float_test(n)]
INTEGER_TESTS = [n for n in NODE_TESTS if n not in EXCLUDED and n not in FLOAT_TESTS]


# ---------------------------------------------------------------- ONNX's runner (integer node tests)

backend_test = onnx.backend.test.BackendTest(vb.VfpgaBackend, __name__)
for _pattern in COVERED:
    backend_test.include(_pattern)
for _name in EXCLUDED + FLOAT_TESTS:  # reasons: UNSUPPORTED, and the float tolerance tests below
    backend_test.exclude(rf"^{_name}_(cpu|cuda)$")
# The runner marks every test outside the include patterns as skipped; keep
# only the node tests covered here, so pytest lists what matters.
_runner_cases = backend_test.test_cases
for _cls in _runner_cases.values():
    for _attr in [a for a in vars(_cls) if a.startswith("test_")]:
        if re.sub(r"_(cpu|cuda)$", "", _attr) not in NODE_TESTS:
            delattr(_cls, _attr)
globals().update({k: c for k, c in _runner_cases.items() if any(a.startswith("test_") for a in vars(c))})


def test_runner_covers_the_integer_node_tests():
    """The runner holds every covered node test; it runs the integer ones
    (on "CPU": the emulated board; it skips their CUDA twins since
    supports_device("CUDA") is False) and skips the excluded/float ones."""
    held = {re.sub(r"_(cpu|cuda)$", "", a) for c in _runner_cases.values() for a in vars(c) if a.startswith("test_")}
    assert held == set(NODE_TESTS)
    ran = set(NODE_TESTS) - set(EXCLUDED) - set(FLOAT_TESTS)
    assert ran == set(INTEGER_TESTS)
    assert len(INTEGER_TESTS) >= 13
    assert {"test_qlinearconv", "test_maxpool_2d_uint8"} <= ran
    assert sum(n.startswith("test_qlinearmatmul") for n in ran) == 8


# ---------------------------------------------------------------- node-test data


def _read_pb(path):
    t = TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def _load_node_test(name):
    model = onnx.load(os.path.join(NODE_DIR, name, "model.onnx"))
    sets = []
    for d in sorted(glob.glob(os.path.join(NODE_DIR, name, "test_data_set_*"))):
        ins = [_read_pb(p) for p in sorted(glob.glob(os.path.join(d, "input_*.pb")))]
        outs = [_read_pb(p) for p in sorted(glob.glob(os.path.join(d, "output_*.pb")))]
        sets.append((ins, outs))
    return model, sets


@pytest.mark.parametrize("name", INTEGER_TESTS)
def test_integer_node_test_bit_exact(name):
    model, sets = _load_node_test(name)
    with vb.prepare(model, "FPGA") as rep:
        assert rep.kind == "integer"
        for ins, outs in sets:
            got = rep.run(ins)
            for g, e in zip(got, outs):
                assert g.dtype == e.dtype and g.shape == e.shape
                np.testing.assert_array_equal(g, e)
        assert set(rep.placement().values()) == {"accelerator"}


@pytest.mark.parametrize("name", FLOAT_TESTS)
def test_float_node_test_within_tolerance(name):
    """Float ops, quantized to int8 on the test's own input (the node tests
    carry no other data): |error| <= FLOAT_TOLERANCE_LSB output steps."""
    model, sets = _load_node_test(name)
    names = [i.name for i in vb.models.runtime_inputs(model)]
    (act,), _ = vb.split_inputs(model)
    for ins, outs in sets:
        x = ins[names.index(act)]
        with vb.prepare(model, "FPGA", calibration=x) as rep:
            assert rep.kind == "float"
            got = rep.run(ins)
            for k, (g, e) in enumerate(zip(got, outs)):
                assert g.dtype == e.dtype and g.shape == e.shape
                step = rep.graph.tensors[rep.graph.outputs[k]].scale
                err = np.abs(g.astype(np.float64) - e).max()
                assert err <= vb.FLOAT_TOLERANCE_LSB * step, f"{name}: {err / step:.2f} output steps"


@pytest.mark.parametrize("name", EXCLUDED)
def test_excluded_node_test_fails_with_its_reason(name):
    why, pattern = _unsupported_reason(name)
    model, sets = _load_node_test(name)
    ins, _ = sets[0]
    with pytest.raises((FrontendError, vb.BackendError)) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # float ones: calibrated on their first input
        with vb.prepare(model, "FPGA") as rep:
            rep.run(ins)
    assert re.search(pattern, str(e.value)), f"{name} ({why}) raised: {e.value}"


def test_float_tests_cover_the_named_operators():
    ops = {onnx.load(os.path.join(NODE_DIR, n, "model.onnx")).graph.node[0].op_type for n in FLOAT_TESTS}
    assert {"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip"} <= ops
    assert len(FLOAT_TESTS) >= 45


# ---------------------------------------------------------------- randomized integer exactness


def _conv_acc(x, w, xzp, wzp, groups, strides, pads):
    """Exact int64 accumulators of QLinearConv: sum((x - xzp) * (w - wzp))."""
    xs = x[0].astype(np.int64) - int(xzp)
    ws = w.astype(np.int64) - np.asarray(wzp, np.int64).reshape(-1, 1, 1, 1)
    xs = np.pad(xs, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oc, icg, kh, kw = ws.shape
    win = sliding_window_view(xs, (kh, kw), axis=(1, 2))[:, :: strides[0], :: strides[1]]  # C, OH, OW, kh, kw
    ocg = oc // groups
    out = []
    for g in range(groups):
        part = win[g * icg : (g + 1) * icg]
        out.append(np.einsum("cyxij,ocij->oyx", part, ws[g * ocg : (g + 1) * ocg]))
    return np.concatenate(out)[None]


def _qconv_model(rng, dtype, c, oc, hw, k, groups, strides, pads, per_channel, scales, wide_wzp, bias):
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, size=(1, c, hw, hw)).astype(dtype)
    w = rng.integers(info.min, info.max + 1, size=(oc, c // groups, k, k)).astype(dtype)
    xs, ws, ys = scales
    n_w = oc if per_channel else 1
    w_scale = (ws * rng.uniform(0.5, 2.0, n_w)).astype(np.float32) if per_channel else np.array([ws], np.float32)
    mid = 128 if dtype == np.uint8 else 0
    if wide_wzp:  # w - w_zp spans up to 255: weight planes
        w_zp = np.full(n_w, info.max if rng.random() < 0.5 else info.min, dtype)
    else:
        w_zp = (mid + rng.integers(-16, 16, size=n_w)).astype(dtype)
    x_zp = np.array(mid + rng.integers(-64, 64), dtype)
    y_zp = np.array(mid + rng.integers(-64, 64), dtype)
    inits = [
        numpy_helper.from_array(np.array(xs, np.float32), "x_scale"),
        numpy_helper.from_array(x_zp, "x_zero_point"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(w_zp, "w_zero_point"),
        numpy_helper.from_array(np.array(ys, np.float32), "y_scale"),
        numpy_helper.from_array(y_zp, "y_zero_point"),
    ]
    names = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point"]
    b = None
    if bias:
        b = rng.integers(-5000, 5000, size=oc).astype(np.int32)
        inits.append(numpy_helper.from_array(b, "B"))
        names.append("B")
    node = helper.make_node("QLinearConv", names, ["y"], group=groups, strides=list(strides), pads=list(pads))
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    oh = (hw + pads[0] + pads[2] - k) // strides[0] + 1
    ow = (hw + pads[1] + pads[3] - k) // strides[1] + 1
    graph = helper.make_graph([node], "qconv", [helper.make_tensor_value_info("x", et, x.shape)],
                              [helper.make_tensor_value_info("y", et, (1, oc, oh, ow))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    acc = _conv_acc(x, w, x_zp, w_zp, groups, strides, pads) + (0 if b is None else b.reshape(1, -1, 1, 1))
    return model, x, acc


def _ties(rep, acc) -> np.ndarray:
    """Where acc * M is exactly halfway between two integers (M = mult * 2**-shift,
    the core's multiplier, which equals ONNX's float32 M)."""
    conv = [layer for layer in rep.graph.layers if layer.kind == "conv"][-1]
    mult = conv.mult.astype(np.int64).reshape(1, -1, 1, 1)
    shift = conv.shift.astype(np.int64).reshape(1, -1, 1, 1)
    prod = acc.astype(np.int64) * mult
    return (prod & ((np.int64(1) << shift) - 1)) == (np.int64(1) << (shift - 1))


CONV_CASES = [
    # c, oc, hw, k, groups, strides, pads, per_channel, wide_wzp, bias
    (8, 16, 9, 3, 1, (1, 1), (1, 1, 1, 1), False, False, True),
    (8, 16, 9, 3, 1, (2, 2), (0, 1, 1, 0), True, False, True),
    (8, 8, 7, 3, 2, (1, 2), (1, 0, 1, 2), True, False, False),
    (6, 12, 7, 3, 1, (1, 1), (1, 1, 1, 1), True, True, True),
    (8, 8, 6, 3, 4, (1, 1), (1, 1, 1, 1), False, True, True),
]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_qlinearconv_matches_onnx_reference(dtype, case):
    """Random QLinearConv (per tensor/channel, groups, strides, asymmetric
    pads, bias, weight zero points that need weight planes): bit-exact with
    ONNX's reference. Scales are random float32, so no requantization ties."""
    rng = np.random.default_rng(100 + case + (50 if dtype == np.int8 else 0))
    c, oc, hw, k, groups, strides, pads, per_channel, wide, bias = CONV_CASES[case]
    scales = (0.02, 0.004, 0.05 * np.sqrt(c * k * k / groups))
    model, x, acc = _qconv_model(rng, dtype, c, oc, hw, k, groups, strides, pads, per_channel, scales, wide, bias)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    with vb.prepare(model) as rep:
        got = rep.run([x])[0]
        assert not _ties(rep, acc).any()
        if wide:
            assert any(layer.kind == "concat" for layer in rep.graph.layers)  # weight planes
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_requantization_ties_are_the_only_difference():
    """Power-of-two scales make acc * M land exactly on .5 often. There the
    core rounds half up and ONNX half to even: measured, every mismatch is
    such a tie and exactly 1 LSB; every other element is bit-exact."""
    rng = np.random.default_rng(7)
    model, x, acc = _qconv_model(rng, np.int8, 8, 16, 10, 3, 1, (1, 1), (1, 1, 1, 1), False,
                                 (2.0**-5, 2.0**-6, 2.0**-4), False, True)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    with vb.prepare(model) as rep:
        got = rep.run([x])[0]
        ties = _ties(rep, acc)
    diff = got.astype(np.int64) - ref.astype(np.int64)
    assert ties.sum() > 0 and (diff != 0).sum() > 0
    assert np.all(ties[diff != 0])  # mismatches only at ties
    assert set(np.unique(diff[diff != 0])) == {1}  # half up vs half to even: +1 LSB
    assert (diff != 0).sum() < ties.sum()  # ties that already round up to even agree


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape", [(5, 24), (3, 4, 24)])
def test_qlinearmatmul_matches_onnx_reference(dtype, shape):
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    k, n = shape[-1], 10
    a = rng.integers(info.min, info.max + 1, size=shape).astype(dtype)
    b_shape = (shape[0], k, n) if len(shape) == 3 else (k, n)
    b = rng.integers(info.min, info.max + 1, size=b_shape).astype(dtype)
    mid = 128 if dtype == np.uint8 else 0
    vals = {
        "a_scale": np.array([0.03], np.float32), "a_zero_point": np.array([mid + 3], dtype),
        "b": b, "b_scale": np.array([0.011], np.float32), "b_zero_point": np.array([mid - 100], dtype),
        "y_scale": np.array([0.9], np.float32), "y_zero_point": np.array([mid - 7], dtype),
    }
    names = ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point"]
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph([helper.make_node("QLinearMatMul", names, ["y"])], "qmm",
                              [helper.make_tensor_value_info("a", et, shape)],
                              [helper.make_tensor_value_info("y", et, tuple(shape[:-1]) + (n,))],
                              [numpy_helper.from_array(v, k_) for k_, v in vals.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ref = ReferenceEvaluator(model).run(None, {"a": a})[0]
    with vb.prepare(model) as rep:
        got = rep.run([a])[0]
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_batched_integer_input_runs_as_requests():
    rng = np.random.default_rng(3)
    model, _, _ = _qconv_model(rng, np.uint8, 4, 8, 6, 3, 1, (1, 1), (1, 1, 1, 1), True, (0.02, 0.004, 0.3), False, True)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    x = rng.integers(0, 256, size=(3, 4, 6, 6)).astype(np.uint8)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    with vb.prepare(model) as rep:
        np.testing.assert_array_equal(rep.run([x])[0], ref)


# ---------------------------------------------------------------- quantized CNNs from onnxruntime


def _qoperator(model, activation_type):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cal = small.calibration_inputs(8)
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: c} for c in cal])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx.save(model, f"{d}/f.onnx")
        quant_pre_process(f"{d}/f.onnx", f"{d}/p.onnx", skip_symbolic_shape=True)
        quantize_static(f"{d}/p.onnx", f"{d}/q.onnx", Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=activation_type, weight_type=QuantType.QInt8)
        return onnx.load(f"{d}/q.onnx")


def _ort(model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _avgpool_matmul_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv+Relu -> AveragePool 4x4/4 -> Reshape [1, 512] -> MatMul: a
    QLinearAveragePool and a QLinearMatMul reading an NCHW-flattened tensor."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((512, 5)) * 0.1).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[4, 4], strides=[4, 4], name="pool"),
             helper.make_node("Reshape", ["p", "shape"], ["f"], name="reshape"),
             helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "avgpool_matmul", [helper.make_tensor_value_info("input", TensorProto.FLOAT, small.INPUT_SHAPE)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("make", [small.small_cnn, small.flatten_cnn, _avgpool_matmul_cnn])
def test_qoperator_int8_cnn_matches_onnxruntime(make):
    """onnxruntime's QOperator int8 models (QLinearConv, MaxPool, QLinearAdd,
    QLinearGlobalAveragePool, QLinearAveragePool, QGemm, QLinearMatMul,
    Flatten/Reshape, Quantize/DequantizeLinear): every op on the
    accelerator, outputs within 1 LSB of onnxruntime (measured: equal)."""
    from onnxruntime.quantization import QuantType

    q = _qoperator(make(0), QuantType.QInt8)
    sess = _ort(q)
    with vb.prepare(q, "FPGA") as rep:
        assert rep.kind == "integer"
        placed = rep.placement()
        for n in q.graph.node:
            assert placed[n.name] == ("host" if n.op_type in ("QuantizeLinear", "DequantizeLinear") else "accelerator")
        step = rep._engine.im.outputs[0].scale
        for x in small.calibration_inputs(3, seed=9):
            y = rep.run([x])[0]
            yr = sess.run(None, {q.graph.input[0].name: x})[0]
            assert y.dtype == yr.dtype == np.float32
            assert np.abs(y - yr).max() <= step * 1.001


def test_qoperator_uint8_conv_matches_onnx_reference():
    """uint8 activations: the first QLinearConv of a QOperator model equals
    ONNX's reference exactly. (onnxruntime's own u8s8 kernel on CPUs without
    VNNI saturates pairwise int16 sums and differs from both; we compare
    with the reference.)"""
    from onnxruntime.quantization import QuantType

    q = _qoperator(small.flatten_cnn(0), QuantType.QUInt8)
    first = next(n for n in q.graph.node if n.op_type == "QLinearConv")
    keep = []
    for n in q.graph.node:
        keep.append(n)
        if n is first:
            break
    sub = onnx.ModelProto()
    sub.CopyFrom(q)
    del sub.graph.node[:]
    sub.graph.node.extend(keep)
    del sub.graph.output[:]
    sub.graph.output.append(helper.make_tensor_value_info(first.output[0], TensorProto.UINT8, (1, 8, 16, 16)))
    x = small.calibration_inputs(1, seed=4)[0]
    ref = ReferenceEvaluator(sub).run(None, {q.graph.input[0].name: x})[0]
    with vb.prepare(sub) as rep:
        got = rep.run([x])[0]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, ref)


def test_qdq_model_goes_through_the_front_end():
    from vfpga.runtime.compiler import frontend

    model = small.small_cnn(1)
    cal = small.calibration_inputs(4)
    qdq = frontend.quantize(model, calibration=cal)
    with vb.prepare(qdq) as rep:
        assert rep.kind == "qdq"
        x = small.calibration_inputs(1, seed=3)[0]
        y = rep.run([x])[0]
        yr = _ort(qdq).run(None, {qdq.graph.input[0].name: x})[0]
        step = rep.graph.tensors[rep.graph.outputs[0]].scale
        assert y.shape == yr.shape and np.abs(y - yr).max() <= 4 * step  # end to end, per-layer LSBs add up


# ---------------------------------------------------------------- devices, lifetimes, API


def test_supports_device():
    for ok in ("FPGA", "fpga", "FPGA:u200", "FPGA:zcu104", "FPGA:pynq_z2", "CPU", "CPU:0"):
        assert vb.VfpgaBackend.supports_device(ok), ok
    for bad in ("CUDA", "CUDA:0", "FPGA:u9999", "TPU", "", "CPU:x"):
        assert not vb.VfpgaBackend.supports_device(bad), bad


def test_device_errors_are_clear():
    model, _ = _load_node_test("test_qlinearconv")
    with pytest.raises(vb.BackendError, match="does not run on device 'CUDA'"):
        vb.prepare(model, "CUDA")
    with pytest.raises(vb.BackendError, match="unknown board 'u9999'.*u200"):
        vb.prepare(model, "FPGA:u9999")


def test_other_board_and_parameters_bound_at_run():
    """Parameters fed as inputs are compiled in at the first run and
    recompiled (content-cached) when they change."""
    model, sets = _load_node_test("test_qlinearconv")
    ins, outs = sets[0]
    with vb.prepare(model, "FPGA:zcu104") as rep:
        assert rep.board == "zcu104" and rep.compiled is None
        np.testing.assert_array_equal(rep.run(ins)[0], outs[0])
        first = rep.compiled
        ins2 = list(ins)
        ins2[3] = np.array([200], np.uint8).reshape(1, 1, 1, 1)  # another weight
        ref2 = ReferenceEvaluator(model).run(None, dict(zip([i.name for i in model.graph.input], ins2)))[0]
        np.testing.assert_array_equal(rep.run(ins2)[0], ref2)
        assert rep.compiled is not first
        rep.run(ins)
        assert rep.compiled is first  # from the cache


def test_inputs_as_dict_or_array_and_run_node():
    model, sets = _load_node_test("test_maxpool_2d_uint8")
    (x,), (y,) = sets[0]
    with vb.prepare(model) as rep:
        np.testing.assert_array_equal(rep.run({"x": x}).y, y)
        np.testing.assert_array_equal(rep.run(x)[0], y)
    np.testing.assert_array_equal(vb.run_model(model, [x])[0], y)
    np.testing.assert_array_equal(vb.VfpgaBackend.run_node(model.graph.node[0], [x])[0], y)
    qmodel, qsets = _load_node_test("test_qlinearconv")
    ins, outs = qsets[0]
    np.testing.assert_array_equal(vb.run_node(qmodel.graph.node[0], ins, opset_version=10)[0], outs[0])


def test_tenants_are_released():
    model, sets = _load_node_test("test_maxpool_2d_uint8")
    (x,), _ = sets[0]
    accel = vb.accelerator(vb.DEFAULT_BOARD)
    rep = vb.prepare(model)
    name = rep.tenant.name
    assert name in accel.tenants
    rep.close()
    assert name not in accel.tenants
    with pytest.raises(vb.BackendError, match="closed"):
        rep.run([x])
    rep = vb.prepare(model)
    name = rep.tenant.name
    del rep
    gc.collect()
    assert name not in accel.tenants
    cores = len(accel.cores)
    for _ in range(cores + 4):  # more prepares than cores: dropped reps give theirs back
        vb.prepare(model).run([x])
    assert len(accel.tenants) < cores


def _softmax_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=1)], "sm", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_unsupported_ops_fail_at_prepare_or_fall_back_visibly():
    with pytest.raises(UnsupportedOperatorError, match="Softmax"):
        vb.prepare(_softmax_model())
    assert not vb.VfpgaBackend.is_compatible(_softmax_model())
    x = np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32)
    with vb.prepare(_softmax_model(), cpu_fallback=True) as rep:
        assert rep.kind == "cpu" and "Softmax" in rep.fallback_reason
        assert set(rep.placement().values()) == {"cpu"}
        np.testing.assert_allclose(rep.run([x])[0], _ort(_softmax_model()).run(None, {"x": x})[0], rtol=1e-6)


def test_integer_accumulator_ops_are_not_faked():
    model, sets = _load_node_test("test_convinteger_without_padding")  # onnxruntime lacks per-channel w_zp
    ins, outs = sets[0]
    with pytest.raises(UnsupportedOperatorError, match="ConvInteger.*int32 accumulators"):
        vb.prepare(model)
    with vb.prepare(model, cpu_fallback=True) as rep:
        assert rep.kind == "cpu" and set(rep.placement().values()) == {"cpu"}
        got = rep.run(ins)[0]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, outs[0])


def test_argument_and_input_errors():
    model, sets = _load_node_test("test_qlinearconv")
    ins, _ = sets[0]
    with pytest.raises(TypeError, match="calibraton"):
        vb.prepare(model, calibraton=[1])
    with pytest.warns(UserWarning, match="calibration= is unused"):
        vb.prepare(model, calibration=np.zeros(3, np.float32)).close()
    with vb.prepare(model) as rep:
        with pytest.raises(vb.BackendError, match="expected 8 inputs"):
            rep.run(ins[:2])
        bad = list(ins)
        bad[0] = ins[0].astype(np.int8)
        with pytest.raises(FrontendError, match="expected uint8, got int8"):
            rep.run(bad)
    add, add_sets = _load_node_test("test_add")
    with pytest.raises(vb.BackendError, match="2 activation inputs"):
        vb.prepare(add)


def test_float_model_without_calibration_warns_and_uses_the_first_input():
    model, sets = _load_node_test("test_maxpool_2d_default")
    (x,), (y,) = sets[0]
    with vb.prepare(model) as rep:
        with pytest.warns(UserWarning, match="first run"):
            got = rep.run([x])[0]
        step = rep.graph.tensors[rep.graph.outputs[0]].scale
        assert np.abs(got - y).max() <= vb.FLOAT_TOLERANCE_LSB * step
        placed = rep.placement()  # the QDQ model's nodes; its Q/DQ plumbing is folded
        assert {v for v in placed.values() if v != "folded"} == {"accelerator"}
        assert "MaxPool" in " ".join(k for k, v in placed.items() if v == "accelerator")


def test_partial_cpu_fallback_through_the_front_end():
    """Conv -> Softmax with cpu_fallback: the Conv stays on the accelerator,
    the front end cuts Softmax out into an onnxruntime subgraph."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                           helper.make_node("Softmax", ["c"], ["y"], axis=1, name="softmax")], "conv_softmax",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    with pytest.raises(UnsupportedOperatorError, match="Softmax"):
        vb.prepare(m, calibration=x)
    with vb.prepare(m, cpu_fallback=True, calibration=x) as rep:
        y = rep.run([x])[0]
        placed = rep.placement()
        assert rep.kind == "float" and placed["conv"] == "accelerator" and placed["softmax"] == "cpu"
    ref = _ort(m).run(None, {"x": x})[0]
    assert np.abs(y - ref).max() < 0.05  # int8 softmax input/output: a few output steps of 1/255
