"""Whole networks: the light model-zoo CNNs shipped inside the onnx wheel, with
random weights (vfpga.runtime.models.zoo), through quantization, the front end
(CPU fallback on) and the golden model, against onnxruntime on the same QDQ
model.

The reference is onnxruntime with graph optimizations off: that executes
the QDQ graph as written (DequantizeLinear, float op, QuantizeLinear), i.e.
the quantized model's meaning. Its fused int8 kernels (optimizations on)
differ from that meaning on CPUs without VNNI (int16 pair-sum saturation);
the slow tests print that comparison too, without asserting on it.

Per layer, every accelerator layer is fed onnxruntime's own int8 inputs and
must land within 1 LSB of onnxruntime's int8 output (rounding of ties differs:
the ISA rounds half up / away from zero, ONNX half to even). End to end, the
golden model runs the whole graph from the float input (CpuOps on
onnxruntime), and the final outputs are compared: max difference in LSB,
cosine similarity, top-1 agreement (on the int8 softmax output and on the
logits, the last accelerator layer's output).

Default run: one cheap input per network (VGG-19 is slow only: its 143 M
parameters take ~1.5 min to quantize here). Slow (-m slow): 8 inputs per
network, and the other zoo networks.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from harness import MEMORY_HEAVY_MODELS, one_at_a_time_on_this_host

from vfpga.runtime.compiler import frontend, ir
from vfpga.runtime.compiler.frontend.marshal import to_hwc
from vfpga.runtime.compiler.frontend.reference import OrtReference
from vfpga.runtime.hw import golden
from vfpga.runtime.models import zoo

# Layer counts by kind (with Concat input sharing, see frontend.share_concat_scales).
EXPECTED = {
    "resnet50": {"conv": 54, "add": 16, "pool": 2, "cpu": 1},  # Softmax on the CPU
    "vgg19": {"conv": 19, "pool": 5, "cpu": 1},
    "squeezenet": {"conv": 26, "concat": 8, "pool": 4, "cpu": 1},
    "inception_v1": {"conv": 58, "pool": 13, "concat": 9, "cpu": 3},  # 2x LRN (one with its MaxPool), Softmax
}
CPU_OPS = {
    "resnet50": [{"Softmax"}],
    "vgg19": [{"Softmax"}],
    "squeezenet": [{"Flatten", "Softmax"}],
    "inception_v1": [{"LRN"}, {"LRN", "MaxPool"}, {"Softmax"}],
}

_CACHE: dict = {}


def build(name: str):
    """(float model, QDQ model, graph, seconds per stage), cached per process."""
    if name not in _CACHE:
        t0 = time.perf_counter()
        model = zoo.load(name)
        t1 = time.perf_counter()
        heavy = one_at_a_time_on_this_host("quantize-" + name) if name in MEMORY_HEAVY_MODELS else nullcontext()
        with heavy:
            qdq = frontend.quantize(model, zoo.random_inputs(model, 2, seed=1))
        t2 = time.perf_counter()
        graph = frontend.to_graph(qdq, fallback=True)
        t3 = time.perf_counter()
        times = {"load": t1 - t0, "quantize": t2 - t1, "to_graph": t3 - t2}
        print(f"{name}: load {t1 - t0:.1f}s, quantize {t2 - t1:.1f}s, to_graph {t3 - t2:.2f}s")
        _CACHE[name] = (model, qdq, graph, times)
    return _CACHE[name]


def _layer_out(graph: ir.Graph, layer, vals):
    zp = lambda n: graph.tensors[n].zero_point  # noqa: E731
    if layer.kind == "conv":
        return {layer.output: golden.conv(vals[layer.input], layer, zp(layer.input), zp(layer.output))}
    if layer.kind == "pool":
        return {layer.output: golden.pool(vals[layer.input], layer, zp(layer.input), zp(layer.output))}
    if layer.kind == "add":
        a, b = layer.inputs
        return {layer.output: golden.add(vals[a], vals[b], layer, zp(a), zp(b), zp(layer.output))}
    if layer.kind == "concat":
        return {layer.output: golden.concat([vals[i] for i in layer.inputs], layer)}
    return dict(zip(layer.outputs, golden.cpu_op(layer, [vals[i] for i in layer.inputs])))


def layer_stats(qdq, graph: ir.Graph, inputs, optimize=False) -> dict:
    """Per layer, fed onnxruntime's int8 inputs: max |diff| (LSB), fraction
    within 1 LSB, fraction exact. Tensors without an ONNX counterpart
    (requantizing copies for Concat inputs) are taken from the golden layer."""
    in_onnx = {o for n in qdq.graph.node for o in n.output}
    names = [t for t in graph.tensors if t in in_onnx and graph.tensors[t].dtype == "int8"]
    ref = OrtReference(qdq, names, optimize=optimize)
    acc: dict = {}
    for x in inputs:
        out = ref.run(x)
        vals = {n: to_hwc(out[n]) for n in names}
        for layer in graph.layers:
            for name, got in _layer_out(graph, layer, vals).items():
                if name not in vals:
                    vals[name] = got
                    continue
                if graph.tensors[name].dtype != "int8":
                    continue
                d = np.abs(got.astype(np.int64) - vals[name].astype(np.int64))
                a = acc.setdefault(layer.name, [layer.kind, 0, 0, 0, 0])
                a[1] = max(a[1], int(d.max()))
                a[2] += int((d <= 1).sum())
                a[3] += int((d == 0).sum())
                a[4] += d.size
    return {k: {"kind": a[0], "max": a[1], "within1": a[2] / a[4], "exact": a[3] / a[4]} for k, a in acc.items()}


def _cos(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def end_to_end(qdq, graph: ir.Graph, inputs, optimize=False) -> dict:
    """golden.run_graph from the float input vs onnxruntime on the QDQ model."""
    out = graph.outputs[0]
    tout = graph.tensors[out]
    logits = [layer for layer in graph.layers if layer.kind == "conv"][-1].output
    ref = OrtReference(qdq, [out, logits], optimize=optimize)
    worst, worst_logits, cos, cos_logits, top1, top1_logits = 0, 0, [], [], 0, 0
    t_golden = t_ort = 0.0
    for x in inputs:
        t0 = time.perf_counter()
        vals = golden.run_graph(graph, frontend.quantize_input(x, graph.tensors[graph.inputs[0]]))
        t1 = time.perf_counter()
        r = ref.run(x)
        t2 = time.perf_counter()
        t_golden, t_ort = t_golden + t1 - t0, t_ort + t2 - t1
        got, want = vals[out].astype(np.int64), to_hwc(r[out]).astype(np.int64)
        worst = max(worst, int(np.abs(got - want).max()))
        gl, wl = vals[logits].astype(np.int64), to_hwc(r[logits]).astype(np.int64)
        worst_logits = max(worst_logits, int(np.abs(gl - wl).max()))
        y = frontend.dequantize_output(vals[out], tout)
        np.testing.assert_array_equal(frontend.dequantize_output(to_hwc(r[out]), tout).shape, y.shape)
        y_ref = r[qdq.graph.output[0].name]
        cos.append(_cos(y, y_ref))
        cos_logits.append(_cos(gl - graph.tensors[logits].zero_point, wl - graph.tensors[logits].zero_point))
        top1 += int(np.argmax(y) == np.argmax(y_ref))
        top1_logits += int(np.argmax(gl) == np.argmax(wl))
    n = len(inputs)
    return {
        "n": n,
        "max_lsb": worst,
        "max_lsb_logits": worst_logits,
        "cos_min": min(cos),
        "cos_logits_min": min(cos_logits),
        "top1": top1 / n,
        "top1_logits": top1_logits / n,
        "golden_s": t_golden / n,
        "ort_s": t_ort / n,
    }


def _print_stats(name, stats, e2e):
    acc = {k: v for k, v in stats.items() if v["kind"] != "cpu"}
    frac = np.mean([v["within1"] for v in acc.values()])
    exact = np.mean([v["exact"] for v in acc.values()])
    print(
        f"{name}: {len(acc)} accelerator layers, max {max(v['max'] for v in acc.values())} LSB, "
        f"mean within-1-LSB {100 * frac:.3f}%, mean exact {100 * exact:.2f}%; CpuOps max "
        f"{max([v['max'] for v in stats.values() if v['kind'] == 'cpu'], default=0)} LSB"
    )
    print(
        f"{name} end to end on {e2e['n']} inputs: output max {e2e['max_lsb']} LSB, cosine >= {e2e['cos_min']:.5f}, "
        f"top-1 {100 * e2e['top1']:.0f}%; logits max {e2e['max_lsb_logits']} LSB, cosine >= "
        f"{e2e['cos_logits_min']:.5f}, top-1 {100 * e2e['top1_logits']:.0f}%; golden {e2e['golden_s']:.2f}s, "
        f"onnxruntime {e2e['ort_s']:.2f}s per input"
    )


def _check_structure(name, graph):
    kinds = Counter(layer.kind for layer in graph.layers)
    want = Counter(EXPECTED[name])
    assert kinds == want, f"{name}: {dict(kinds)} != {dict(want)}"
    cpu = [layer for layer in graph.layers if layer.kind == "cpu"]
    report = frontend.placement_report(graph)
    op_of = {n: op for n, op, _ in report}
    got = [{op_of[n] for n in c.onnx_nodes} - {"QuantizeLinear", "DequantizeLinear"} for c in cpu]
    assert got == CPU_OPS[name]
    for c in cpu:
        sub = onnx.load_model_from_string(c.model)
        onnx.checker.check_model(sub)
        assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT8 for i in sub.graph.input)
    placed = Counter(p for _, _, p in report)
    assert placed["cpu"] == sum(len(c.onnx_nodes) for c in cpu)
    assert all(p == "accelerator" for _, op, p in report if op in ("Conv", "Gemm"))
    print(f"{name}: layers {dict(kinds)}; placement {dict(placed)}")


def _assert_accuracy(name, stats, e2e):
    for layer, st in stats.items():
        assert st["max"] <= 1, f"{name}: layer {layer} differs from onnxruntime by {st['max']} LSB"
        assert st["exact"] >= 0.99 or st["kind"] == "pool", f"{name}: layer {layer} only {st['exact']:.3f} exact"
    assert e2e["cos_min"] >= 0.99 and e2e["cos_logits_min"] >= 0.995
    assert e2e["max_lsb_logits"] <= 8
    assert e2e["top1_logits"] >= 7 / 8 if e2e["n"] >= 8 else e2e["top1_logits"] == 1.0


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("name", ["squeezenet", "resnet50", "inception_v1"])
def test_random_weights_replace_the_constant_ones(name):
    original, model = zoo.load_original(name), zoo.load(name)
    rep = zoo.substitution_report(original, model)
    print(f"{name}: {rep}")
    assert rep["fraction_changed"] == 1.0 and rep["parameters"] >= 26
    assert rep["min_distinct_after"] > 1  # no constant fills left
    ops = {n.op_type for n in model.graph.node}
    assert "ConstantOfShape" not in ops and "ConstantOfShape" in {n.op_type for n in original.graph.node}
    # Deterministic in the seed, different across seeds.
    again = zoo.load(name)
    assert again.SerializeToString() == model.SerializeToString()
    other = zoo.randomize(original, seed=1)
    w = next(t.name for t in model.graph.initializer if t.dims and len(t.dims) == 4)
    get = lambda m: onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == w))  # noqa: E731
    assert not np.array_equal(get(model), get(other))


@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_random_weights_keep_activations_in_range(name):
    """He scaling: every Relu/Add/Sum output of the float model on a random
    input has a standard deviation within [0.2, 20] (no vanishing, no
    exploding through ResNet-50's 16 residual sums)."""
    model = zoo.load(name)
    outs = [n.output[0] for n in model.graph.node if n.op_type in ("Relu", "Sum", "Add", "Concat")]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in outs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = zoo.random_inputs(model, 1)[0]
    vals = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    stds = np.array([np.std(vals[o]) for o in outs])
    print(f"{name}: activation std min {stds.min():.3f}, max {stds.max():.3f}, last {stds[-1]:.3f}")
    assert 0.2 <= stds.min() and stds.max() <= 20


def test_zoo_errors():
    with pytest.raises(zoo.ZooError, match="unknown zoo model 'resnet51'"):
        zoo.load("resnet51")


# ---------------------------------------------------------------- the four networks


@pytest.mark.parametrize("name", ["squeezenet", "inception_v1", "resnet50"])
def test_network_smoke(name):
    """Structure, per-layer 1-LSB agreement and end-to-end agreement on one input."""
    model, qdq, graph, _ = build(name)
    _check_structure(name, graph)
    x = zoo.random_inputs(model, 1, seed=11)
    stats = layer_stats(qdq, graph, x)
    e2e = end_to_end(qdq, graph, x)
    _print_stats(name, stats, e2e)
    _assert_accuracy(name, stats, e2e)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "vgg19", "squeezenet", "inception_v1"])
def test_network_accuracy(name):
    """8 random inputs: every layer within 1 LSB, end-to-end figures."""
    model, qdq, graph, times = build(name)
    _check_structure(name, graph)
    xs = zoo.random_inputs(model, 8, seed=21)
    t0 = time.perf_counter()
    stats = layer_stats(qdq, graph, xs)
    e2e = end_to_end(qdq, graph, xs)
    print(f"{name}: stage times {times}, comparisons {time.perf_counter() - t0:.1f}s")
    _print_stats(name, stats, e2e)
    _assert_accuracy(name, stats, e2e)
    fused = end_to_end(qdq, graph, xs[:2], optimize=True)
    print(
        f"{name} vs onnxruntime's fused int8 kernels (not the QDQ semantics, reported only): "
        f"output max {fused['max_lsb']} LSB, logits max {fused['max_lsb_logits']} LSB, "
        f"cosine >= {fused['cos_logits_min']:.5f}, top-1 {100 * fused['top1_logits']:.0f}%"
    )


OTHERS = ["densenet121", "inception_v2", "shufflenet", "alexnet", "zfnet512"]


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_other_zoo_networks(name):
    """The rest of the family through the same path (two inputs)."""
    model, qdq, graph, _ = build(name)
    kinds = Counter(layer.kind for layer in graph.layers)
    cpu = [sorted({op for n, op, p in frontend.placement_report(graph) if p == "cpu"} - {"QuantizeLinear", "DequantizeLinear"})]
    print(f"{name}: layers {dict(kinds)}, CPU ops {cpu}")
    xs = zoo.random_inputs(model, 2, seed=21)
    stats = layer_stats(qdq, graph, xs)
    e2e = end_to_end(qdq, graph, xs)
    _print_stats(name, stats, e2e)
    _assert_accuracy(name, stats, e2e)


def test_shipped_constant_weights_fold_in_the_front_end():
    """The models as shipped compute every weight with ConstantOfShape; the
    front end folds those subgraphs itself (no zoo pre-processing)."""
    model = zoo.load_original("squeezenet")
    assert sum(n.op_type == "ConstantOfShape" for n in model.graph.node) == 39
    qdq = frontend.quantize(model, zoo.random_inputs(model, 1))
    graph = frontend.to_graph(qdq, fallback=True)
    assert Counter(layer.kind for layer in graph.layers) == Counter(EXPECTED["squeezenet"])


# ---------------------------------------------------------------- on the emulated accelerator


def _emulate(name, n_inputs, board="u200"):
    """Compile, deploy on one emulated core and run: every output must equal
    the golden model bit for bit (per-layer agreement with onnxruntime is
    the golden model's, checked above)."""
    from vfpga.runtime import tenants
    from vfpga.runtime.compiler import static

    model, _, graph, _ = build(name)
    compiled = static.compile_graph(graph, board)
    ov = tenants.open(board)
    try:
        tenant = ov.deploy(compiled, name=name)
        for x in zoo.random_inputs(model, n_inputs, seed=21):
            x_q = frontend.quantize_input(x, graph.tensors[graph.inputs[0]])
            outs, info = tenant.run_quantized(x_q)
            want = golden.run_graph(graph, x_q)
            for o, n in zip(outs, graph.outputs):
                assert np.array_equal(o, want[n]), f"{name}: output {n} differs from the golden model"
            assert info.modeled_cycles > 0
    finally:
        ov.close()


@pytest.mark.parametrize("name", ["squeezenet", "inception_v1", "resnet50"])
def test_network_runs_bit_exact_on_the_emulator(name):
    _emulate(name, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "vgg19", "squeezenet", "inception_v1"])
def test_network_runs_bit_exact_on_the_emulator_8_inputs(name):
    _emulate(name, 8)
