"""Models as exporters write them, end to end on the emulated board against
onnxruntime on the float model: MobileNetV3-style classifiers and a
DBNet-style detector (vfpga.runtime.models.mobile) with dynamic batch and
spatial dims, value_info without a shape and with a stale rank, Constant
weights, hard-swish written out three ways, squeeze-and-excitation blocks,
nearest Resize and ConvTranspose, at opsets 9 to 18; and the inputs the front
end must refuse with an error that names what is wrong."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from harness import emulated_accelerator
from onnx import TensorProto, helper, numpy_helper

from vfpga.runtime.compiler import frontend, placement
from vfpga.runtime.compiler.frontend import FrontendError
from vfpga.runtime.models import mobile

MOBILENET = (1, 3, 40, 40)
DBNET = (1, 3, 48, 48)


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def accel():
    a = emulated_accelerator("u200", 256 << 20)
    yield a
    a.close()


def samples(shape, n, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def run_against_onnxruntime(accel, model, shape, *, calibration=None, input_shape=None, n=3):
    """Deploys ``model`` with the README's calls, runs n inputs; returns the
    tenant and the worst cosine against onnxruntime on the float model."""
    net = accel.deploy(model, cores=2, calibration=calibration or samples(shape, 6, 1), input_shape=input_shape)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 1.0
    for x in samples(shape, n, 2):
        (want,) = sess.run(None, {sess.get_inputs()[0].name: x})
        got = net.run(x)
        assert np.shape(got) == want.shape
        worst = min(worst, cosine(got, want))
    return net, worst


def test_the_models_carry_the_quirks():
    m = mobile.mobilenet_v3_style()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[2].dim_param and dims[3].dim_param  # dynamic batch and spatial dims
    vis = list(m.graph.value_info)
    assert any(not v.type.tensor_type.HasField("shape") for v in vis)  # value_info without a shape
    assert any(len(v.type.tensor_type.shape.dim) == 1 for v in vis)  # a stale rank
    ops = [n.op_type for n in m.graph.node]
    assert "Constant" in ops and "Div" in ops and "HardSigmoid" in ops and "GlobalAveragePool" in ops
    d = [n.op_type for n in mobile.dbnet_style().graph.node]
    assert "Resize" in d and "ConvTranspose" in d and "Sigmoid" in d


@pytest.mark.parametrize("opset", [9, 11, 13, 18])
def test_mobilenet_v3_style(accel, opset):
    """Every hard-swish form and the SE blocks run on the cores (activation
    tables fused after the convolutions, per-channel MUL), >= 95 % of the MACs."""
    model = mobile.mobilenet_v3_style(seed=opset, opset=opset, in_shape=MOBILENET)
    net, cos = run_against_onnxruntime(accel, model, MOBILENET, input_shape=MOBILENET)
    try:
        assert cos >= 0.99, cos
        kinds = [layer.kind for layer in net.graph.layers]
        assert "cpu" not in kinds and kinds.count("mul") == 4  # the four SE products
        assert sum(getattr(layer, "table", None) is not None for layer in net.graph.layers) >= 10
        share = placement.mac_share(net.compiled)
        assert share.share >= 0.95 and share.cpu_macs == 0
    finally:
        accel.remove(net)


def test_dbnet_style(accel):
    """Resize (nearest x2, x4) and ConvTranspose (k2 s2) on the cores, the
    final Sigmoid as the last ConvTranspose's table: >= 90 % of the MACs."""
    model = mobile.dbnet_style(seed=3, in_shape=DBNET)
    net, cos = run_against_onnxruntime(accel, model, DBNET, input_shape=DBNET)
    try:
        assert cos >= 0.99, cos
        kinds = [layer.kind for layer in net.graph.layers]
        assert kinds.count("upsample") == 4 and kinds.count("convtranspose") == 2 and "cpu" not in kinds
        assert placement.mac_share(net.compiled).share >= 0.90
    finally:
        accel.remove(net)


def test_calibration_binds_the_dynamic_dims(accel):
    """Without input_shape the calibration samples' shape binds the dynamic dims."""
    model = mobile.mobilenet_v3_style(seed=5, in_shape=MOBILENET)
    net, cos = run_against_onnxruntime(accel, model, MOBILENET, calibration=samples(MOBILENET, 6, 3))
    try:
        assert cos >= 0.99 and net.compiled.input_shape == (40, 40, 3)
    finally:
        accel.remove(net)


def test_decomposed_hard_swish_becomes_one_table():
    """Add/Clip/Div/Mul in either order, x * HardSigmoid(x) and HardSwish all
    read as HardSigmoid (+ Mul by x) before quantization: one table each."""
    for form in ("decomposed", "hsig", "op"):
        b = mobile.ExportBuilder(0, 14, quirks=False)
        y = b.hard_swish(b.conv("c", "x", 3, 8), form)
        model = b.finish("hs", (1, 3, 8, 8), y, 4)
        if form == "decomposed":  # also the Mul-before-Div order paddle2onnx writes
            simplified = frontend.simplify(frontend.load_model(model))
            assert [n.op_type for n in simplified.graph.node] == ["Conv", "HardSigmoid", "Mul"]
        g = frontend.to_graph(frontend.quantize(model, samples((1, 3, 8, 8), 4, 0)))
        assert [(layer.kind, layer.table is not None) for layer in g.layers] == [("conv", True)], form


# ---------------------------------------------------------------- bad input


def tiny(op="Relu", opset=13, domain="", dims=(1, 3, 8, 8)):
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node(op, ["c"], ["y"], name="the_op", domain=domain)]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=ops)


def test_dynamic_dim_without_a_shape_names_the_input():
    with pytest.raises(FrontendError, match=r"input 'x' has a dynamic dimension 2 \('H'\).*input_shape"):
        frontend.load_model(tiny(dims=(1, 3, "H", 8)))
    assert frontend.load_model(tiny(dims=(1, 3, "H", 8)), input_shape=(1, 3, 8, 8)) is not None


def test_opset_outside_the_range_is_named():
    with pytest.raises(FrontendError, match=r"opset 8; the front end takes opsets 9 to"):
        frontend.load_model(tiny(opset=8))
    with pytest.raises(FrontendError, match=r"opset 30; the front end takes opsets 9 to"):
        frontend.load_model(tiny(opset=30))


def test_a_cycle_names_its_nodes():
    m = tiny()
    m.graph.node[0].input[0] = "y"  # conv reads the op's output, the op reads the conv's
    m.graph.input[0].name = "x_unused"
    with pytest.raises(FrontendError, match=r"cycle: 2 nodes .*Conv 'conv'.*Relu 'the_op'"):
        frontend.load_model(m)


def test_unsorted_graphs_are_sorted():
    m = tiny()
    m.graph.node.reverse()
    assert [n.name for n in frontend.load_model(m).graph.node] == ["conv", "the_op"]


def test_an_op_neither_the_cores_nor_the_host_runs_is_named(accel):
    with pytest.raises(FrontendError, match=r"the_op"):
        accel.deploy(tiny("Frobnicate", domain="com.example"), calibration=samples((1, 3, 8, 8), 2, 0))


def test_stale_shapes_are_dropped():
    m = tiny()
    m.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [7]))
    m.graph.value_info.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    loaded = frontend.load_model(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in loaded.graph.value_info}
    assert shapes["c"] == [1, 4, 8, 8]
    assert onnx.checker.check_model(loaded) is None


@pytest.mark.parametrize("mode, ctm", [("linear", "half_pixel"), ("linear", "pytorch_half_pixel"),
                                       ("linear", "asymmetric"), ("nearest", "half_pixel")])
def test_resize_on_the_cores(accel, mode, ctm):
    """Resize x2 (bilinear as depthwise phase convolutions, nearest as stepped SAVEs) between convolutions."""
    b = mobile.ExportBuilder(1, 13, quirks=False)
    y = b.op("Relu", "r", [b.conv("c1", "x", 3, 8)])
    b.nodes.append(helper.make_node("Resize", [y, "", b.const(np.array([1, 1, 2, 2], np.float32))], ["up"],
                                    name="up", mode=mode, coordinate_transformation_mode=ctm))
    model = b.finish("resize", (1, 3, 12, 10), b.conv("c2", "up", 8, 4), 4)
    net, cos = run_against_onnxruntime(accel, model, (1, 3, 12, 10))
    try:
        assert cos >= 0.99, cos
        ups = [layer for layer in net.graph.layers if layer.kind == "upsample"]
        assert len(ups) == 1 and ups[0].mode == mode and "cpu" not in [layer.kind for layer in net.graph.layers]
    finally:
        accel.remove(net)
