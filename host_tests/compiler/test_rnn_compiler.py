"""The RNN compiler (vfpga.runtime.compiler.rnn) and cycle model
(vfpga.runtime.hw.rnn_cycle_model), run on the C-simulated RNN core
(hls/rnn_core.cpp built through cffi) and checked against:

* onnxruntime's float LSTM / GRU on the same float weights (the oracle):
  cosine >= 0.999 and max |error| <= ABS_TOL on every output;
* the numpy golden model (vfpga.runtime.hw.rnn_golden) on the compiler's own
  integer parameters: the Q.15 hidden states bit for bit, on 1..3 cores,
  resident and streamed weights;
* the C-sim's per-instruction iteration counts (cycle model contract);
* ONNX's backend node tests for LSTM and GRU (within ABS_TOL);
* and the errors for what the RNN core does not support.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vfpga.driver import isa
from vfpga.runtime.compiler import rnn as rc
from vfpga.runtime.hw import rnn_cycle_model as rcm
from vfpga.runtime.hw import rnn_golden as rg

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the RNN core")

# Stated tolerance against onnxruntime's float run (int8 weights and h, Q.15
# state, table activations): absolute error on outputs in [-1, 1].
ABS_TOL = 0.03
# ONNX node tests (weights 0.1..0.3, tiny layers): measured max 0.0027
NODE_TOL = 0.01
COS_MIN = 0.999
NODE_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")


@pytest.fixture(scope="module")
def sim():
    return rc.RnnCoreSim("u200", seed=7)


def rnn_model(op, hidden, inp, steps, batch, direction="forward", lbr=0, seed=0, layout=0, seq=None,
              h0_input=False, c0_const=False, extra_attrs=None, peep=None):
    """One LSTM/GRU node with random weights U(-1/sqrt(H), 1/sqrt(H))."""
    rng = np.random.default_rng(seed)
    g = 4 if op == "LSTM" else 3
    d = 2 if direction == "bidirectional" else 1
    k = 1 / np.sqrt(hidden)
    inits = [numpy_helper.from_array(rng.uniform(-k, k, (d, g * hidden, inp)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(-k, k, (d, g * hidden, hidden)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.uniform(-k, k, (d, 2 * g * hidden)).astype(np.float32), "B")]
    ins = ["X", "W", "R", "B", ""]
    if seq is not None:
        inits.append(numpy_helper.from_array(np.array(seq, np.int32), "sl"))
        ins[4] = "sl"
    xs = [steps, batch, inp] if layout == 0 else [batch, steps, inp]
    state = [d, batch, hidden] if layout == 0 else [batch, d, hidden]
    gi = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xs)]
    if h0_input:
        ins.append("h0")
        gi.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state))
    if c0_const:
        if len(ins) == 5:
            ins.append("")
        ins.append("c0")
        inits.append(numpy_helper.from_array(rng.uniform(-1, 1, state).astype(np.float32), "c0"))
    if peep is not None:
        ins += [""] * (7 - len(ins)) + ["P"]
        inits.append(numpy_helper.from_array(np.full((d, 3 * hidden), peep, np.float32), "P"))
    attrs = dict(hidden_size=hidden, direction=direction, **(extra_attrs or {}))
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    if layout:
        attrs["layout"] = layout
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ins, outs, name="rnn0", **attrs)
    graph = helper.make_graph([node], "rnn", gi, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                  for o in outs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def feeds_for(model, seed=1):
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name not in init:
            shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
            out[i.name] = rng.uniform(-1, 1, shape).astype(np.float32) * (0.5 if i.name != "X" else 1)
    return out


def onnxruntime_run(model, feeds):
    """onnxruntime's float run (layout=1 nodes through rc.layout0_equivalent:
    onnxruntime refuses batchwise recurrent ops)."""
    m = rc.layout0_equivalent(model)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_close(ref, got, what):
    assert len(ref) == len(got), what
    for i, (r, g) in enumerate(zip(ref, got)):
        assert r.shape == g.shape, f"{what}: output {i} shape {g.shape}, onnxruntime {r.shape}"
        c = rg.compare(r, g)
        assert c["cosine"] >= COS_MIN and c["max_abs"] <= ABS_TOL, f"{what}: output {i}: {c}"


# ------------------------------------------------------------------ accuracy vs onnxruntime

CASES = [
    ("LSTM", "forward", 0), ("LSTM", "reverse", 0), ("LSTM", "bidirectional", 0),
    ("GRU", "forward", 0), ("GRU", "reverse", 1), ("GRU", "bidirectional", 0), ("GRU", "bidirectional", 1),
]


@pytest.mark.parametrize("op,direction,lbr", CASES)
def test_matches_onnxruntime_on_any_core_count(sim, op, direction, lbr):
    """batch 3 with sequence_lens, initial_h fed at run time (and a constant
    initial_c for LSTM), one compile, plans for 1, 2, 3 and 8 cores."""
    m = rnn_model(op, 40, 12, 5, 3, direction, lbr, seq=[5, 2, 4], h0_input=True, c0_const=op == "LSTM")
    f = feeds_for(m)
    ref = onnxruntime_run(m, f)
    c = rc.compile_rnn(m, calibration=[f])
    for k in (1, 2, 3, 8):
        plan = rc.plan_rnn(c, k)
        assert_close(ref, sim.run(c, plan, f), f"{op} {direction} lbr={lbr} k={k}")


@pytest.mark.parametrize("op,lbr", [("LSTM", 0), ("GRU", 0)])
def test_streamed_weights_chunks_sub_slices_and_batch_groups(sim, op, lbr):
    """Self-contained frames (resident=False) whose slice exceeds a WBUF half
    (chunked weights), PARAM/ACC (sub-slices) and ACC per item (batch groups)."""
    m = rnn_model(op, 600, 300, 3, 2, "bidirectional" if op == "LSTM" else "forward", lbr, seq=[3, 2])
    f = feeds_for(m)
    c = rc.compile_rnn(m, calibration=[f], resident=False)
    t = c.tilings[0][1]
    assert not t.resident and t.m < 600 and t.bg == 2
    assert_close(onnxruntime_run(m, f), sim.run(c, rc.plan_rnn(c, 1, variant=1), f), f"{op} streamed")
    assert_close(onnxruntime_run(m, f), sim.run(c, rc.plan_rnn(c, 3), f), f"{op} streamed on 3")


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_layout_1_batchwise(sim, op):
    m = rnn_model(op, 20, 6, 4, 2, "bidirectional", layout=1, h0_input=True, seq=[4, 3])
    f = feeds_for(m)
    c = rc.compile_rnn(m, calibration=[f])
    ref = onnxruntime_run(m, f)
    assert ref[0].shape == (2, 4, 2, 20)
    assert_close(ref, sim.run(c, rc.plan_rnn(c, 2), f), "layout 1")


def stacked_model(seed=0, hidden=24, inp=10, steps=6, batch=2, classes=5):
    """Bidirectional LSTM -> Transpose/Reshape -> GRU -> Y_h Squeeze ->
    MatMul + Add head (the head runs on the host through onnxruntime)."""
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(hidden)
    u = lambda *s: rng.uniform(-k, k, s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(u(2, 4 * hidden, inp), "W1"), numpy_helper.from_array(u(2, 4 * hidden, hidden), "R1"),
             numpy_helper.from_array(u(2, 8 * hidden), "B1"),
             numpy_helper.from_array(u(1, 3 * hidden, 2 * hidden), "W2"),
             numpy_helper.from_array(u(1, 3 * hidden, hidden), "R2"), numpy_helper.from_array(u(1, 6 * hidden), "B2"),
             numpy_helper.from_array(np.array([steps, batch, 2 * hidden], np.int64), "shape"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(u(hidden, classes), "Wh"), numpy_helper.from_array(u(classes), "bh")]
    nodes = [helper.make_node("LSTM", ["X", "W1", "R1", "B1"], ["Y1"], name="lstm", hidden_size=hidden,
                              direction="bidirectional"),
             helper.make_node("Transpose", ["Y1"], ["Y1t"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["Y1t", "shape"], ["X2"]),
             helper.make_node("GRU", ["X2", "W2", "R2", "B2"], ["Y2", "H2"], name="gru", hidden_size=hidden,
                              linear_before_reset=1),
             helper.make_node("Squeeze", ["H2", "ax0"], ["H2s"]),
             helper.make_node("MatMul", ["H2s", "Wh"], ["logits0"]),
             helper.make_node("Add", ["logits0", "bh"], ["logits"])]
    graph = helper.make_graph(nodes, "stacked", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                               [steps, batch, inp])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("Y2", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def test_stacked_layers_and_a_head_on_the_host(sim):
    m = stacked_model()
    f = feeds_for(m)
    c = rc.compile_rnn(m, calibration=[f])
    assert len(c.layers) == 2 and c.post is not None and c.post_inputs == ["H2"]
    ref = onnxruntime_run(m, f)
    for k in (1, 4):
        assert_close(ref, sim.run(c, rc.plan_rnn(c, k), f), f"stacked k={k}")


def test_hidden_256_sequence_25_cosine(sim):
    """A DeepBench-like size in the default run (the big ones are slow tests)."""
    for op, lbr in (("LSTM", 0), ("GRU", 0)):
        m = rnn_model(op, 256, 256, 25, 1, lbr=lbr, seed=5)
        f = feeds_for(m)
        c = rc.compile_rnn(m, calibration=[f])
        assert_close(onnxruntime_run(m, f), sim.run(c, rc.plan_rnn(c, 2), f), op)


@pytest.mark.slow
@pytest.mark.parametrize("op,lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
@pytest.mark.parametrize("hidden,steps", [(512, 50), (1024, 100)])
def test_deepbench_sizes_cosine(sim, op, lbr, hidden, steps):
    m = rnn_model(op, hidden, hidden, steps, 1, lbr=lbr, seed=hidden + steps)
    f = feeds_for(m)
    c = rc.compile_rnn(m, calibration=[f])
    assert_close(onnxruntime_run(m, f), sim.run(c, rc.plan_rnn(c, 4), f), f"{op} {hidden}x{steps}")


# ------------------------------------------------------------------ bit-exact vs the golden model

@pytest.mark.parametrize("op,lbr,resident", [("LSTM", 0, True), ("LSTM", 0, False), ("GRU", 0, True),
                                             ("GRU", 0, False), ("GRU", 1, True)])
def test_core_states_equal_the_golden_model(sim, op, lbr, resident):
    """The compiled frames compute exactly rnn_golden's sequence on the
    compiler's integer parameters: Q.15 h of every step, on 1..3 cores."""
    m = rnn_model(op, 48, 20, 4, 1, lbr=lbr, seed=3)
    f = feeds_for(m)
    c = rc.compile_rnn(m, calibration=[f], resident=resident)
    lay = c.layers[0]
    p = lay.params[0]
    xq = rg.quantize_input(f["X"][:, 0, :], lay.x_scale)
    if op == "LSTM":
        _, hs, _ = rg.lstm_sequence(p, xq)
    else:
        _, hs = rg.gru_sequence(p, xq)
    a = lay.addr
    for k in (1, 2, 3):
        sim.run(c, rc.plan_rnn(c, k), f)
        got = sim.seg[a["hh"]:a["hh"] + 4 * hs.size].view("<i4").reshape(hs.shape)
        np.testing.assert_array_equal(got, hs, err_msg=f"{op} lbr={lbr} resident={resident} k={k}")


# ------------------------------------------------------------------ plans

def test_plan_structure_for_every_k():
    m = rnn_model("GRU", 64, 16, 3, 1, "bidirectional", 0)
    c = rc.compile_rnn(m, calibration=[feeds_for(m)])
    ops = isa.DISPATCH_OPS
    for k in range(1, 9):
        plan = rc.plan_rnn(c, k)
        p = plan.program
        assert p["op"][-1] == ops["END"] and (p["op"] == ops["END"]).sum() == 1
        frames = p[p["op"] == ops["FRAME"]]
        assert frames["slot"].max() < k
        # one barrier per phase of the chosen variants; GRU lbr=0: two phases per step
        n_phases = sum(1 for ph in c.phases if plan.variants[ph.direction] in ph.frames)
        assert (p["op"] == ops["BARRIER"]).sum() == n_phases == 2 * (1 + 2 * 3)
        offsets = set(c.frames["offset"].tolist())
        assert set(frames["frame_offset"].tolist()) <= offsets
        assert all(v <= k for v, lay in zip(plan.variants, [0, 0]) if c.tilings[0][v].resident)
    with pytest.raises(ValueError, match="1..255"):
        rc.plan_rnn(c, 0)


# ------------------------------------------------------------------ cycle model

def test_cycle_model_iterations_equal_the_csim_counts(sim):
    for op, lbr, res in (("LSTM", 0, True), ("GRU", 0, False)):
        m = rnn_model(op, 300, 40, 2, 2, lbr=lbr)
        f = feeds_for(m)
        c = rc.compile_rnn(m, calibration=[f], resident=res)
        iters = {}
        plan = rc.plan_rnn(c, 2)
        before = sim.counters()["macs"]
        sim.run(c, plan, f, iters=iters)
        assert iters
        model = rcm.program_iters(c.program, c.config)
        for off, got in iters.items():
            a = (off - c.program_offset) // isa.INSN_BYTES
            np.testing.assert_array_equal(got.astype(np.int64), model[a:a + len(got)])
        g = 4 if op == "LSTM" else 3
        assert sim.counters()["macs"] - before == 2 * 2 * g * 300 * (40 + 300)
        t = rcm.plan_timing(c, plan)
        assert t.cycles == t.phase_cycles.sum() > 0


def test_resident_frames_are_faster_than_streamed_and_cores_help_when_weights_fit():
    m = rnn_model("LSTM", 256, 256, 4, 1)
    f = feeds_for(m)
    res = rc.compile_rnn(m, calibration=[f])
    stream = rc.compile_rnn(m, calibration=[f], resident=False)
    t = {k: rcm.plan_timing(res, rc.plan_rnn(res, k, variant=k)).cycles for k in (1, 2, 4)}
    s1 = rcm.plan_timing(stream, rc.plan_rnn(stream, 1, variant=1)).cycles
    assert t[1] < s1
    assert t[4] < t[2] < t[1]


# ------------------------------------------------------------------ ONNX backend node tests

def _node_case(name):
    model = onnx.load(os.path.join(NODE_DIR, name, "model.onnx"))
    d = os.path.join(NODE_DIR, name, "test_data_set_0")
    ins, outs = [], []
    for i in range(len(model.graph.input)):
        t = onnx.TensorProto()
        with open(os.path.join(d, f"input_{i}.pb"), "rb") as fh:
            t.ParseFromString(fh.read())
        ins.append(numpy_helper.to_array(t))
    for i in range(len(model.graph.output)):
        t = onnx.TensorProto()
        with open(os.path.join(d, f"output_{i}.pb"), "rb") as fh:
            t.ParseFromString(fh.read())
        outs.append(numpy_helper.to_array(t))
    return model, ins, outs


def _bind(model, ins):
    """Weights fed as inputs by the node tests become constants (the compiler
    places weights at compile time, as vfpga.runtime.backend does)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    data = m.graph.input[0].name
    feeds = {}
    keep = []
    for vi, v in zip(model.graph.input, ins):
        if vi.name == data:
            feeds[vi.name] = v
            keep.append(vi)
        else:
            m.graph.initializer.append(numpy_helper.from_array(v, vi.name))
    del m.graph.input[:]
    m.graph.input.extend(keep)
    return m, feeds


NODE_TESTS = sorted(n for n in os.listdir(NODE_DIR) if n.startswith(("test_lstm", "test_gru")))


@pytest.mark.parametrize("name", NODE_TESTS)
def test_onnx_backend_node_tests(sim, name):
    model, ins, outs = _node_case(name)
    m, feeds = _bind(model, ins)
    if name == "test_lstm_with_peepholes":
        with pytest.raises(rc.RnnCompileError, match=r"input P \(peepholes\)"):
            rc.compile_rnn(m, calibration=[feeds])
        return
    c = rc.compile_rnn(m, calibration=[feeds])
    got = sim.run(c, rc.plan_rnn(c, 1), feeds)
    for r, g in zip(outs, got):
        assert r.shape == g.shape
        err = float(np.abs(r - g).max())
        assert err <= NODE_TOL, f"{name}: max |error| {err}"


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs,match", [
    (dict(extra_attrs={"clip": 3.0}), r"rnn0.*'clip'"),
    (dict(extra_attrs={"activations": ["Sigmoid", "Relu", "Tanh"]}), r"rnn0.*'activations'"),
    (dict(extra_attrs={"input_forget": 1}), r"rnn0.*'input_forget'"),
    (dict(extra_attrs={"activation_alpha": [1.0]}), r"rnn0.*'activation_alpha'"),
    (dict(peep=0.5), r"rnn0.*input P \(peepholes\)"),
])
def test_unsupported_variants_name_node_and_attribute(kwargs, match):
    m = rnn_model("LSTM", 8, 4, 3, 1, **kwargs)
    with pytest.raises(rc.RnnCompileError, match=match):
        rc.compile_rnn(m, calibration=[feeds_for(m)])


def test_zero_peepholes_and_explicit_default_activations_are_accepted(sim):
    m = rnn_model("LSTM", 8, 4, 3, 1, peep=0.0, extra_attrs={"activations": ["Sigmoid", "Tanh", "Tanh"]})
    f = feeds_for(m)
    c = rc.compile_rnn(m, calibration=[f])
    assert_close(onnxruntime_run(m, f), sim.run(c, rc.plan_rnn(c, 1), f), "zero peepholes")


def test_wrong_shapes_are_named():
    m = rnn_model("GRU", 8, 4, 3, 2)
    w = next(t for t in m.graph.initializer if t.name == "R")
    w.CopyFrom(numpy_helper.from_array(np.zeros((1, 24, 7), np.float32), "R"))
    with pytest.raises(rc.RnnCompileError, match=r"GRU node 'rnn0': input R has shape \(1, 24, 7\)"):
        rc.compile_rnn(m, calibration=[])
    m = rnn_model("GRU", 8, 4, 3, 2)
    with pytest.raises(rc.RnnCompileError, match=r"input X has shape \(3, 2, 5\): 5 features, but W expects 4"):
        rc.compile_rnn(m, input_shape=(3, 2, 5), calibration=[])
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    with pytest.raises(rc.RnnCompileError, match=r"input X \('X'\) needs a static 3-D shape"):
        rc.compile_rnn(m, calibration=[])
    m = rnn_model("LSTM", 8, 4, 3, 2, seq=[3, 4])
    with pytest.raises(rc.RnnCompileError, match=r"sequence_lens \[3, 4\] outside \[1, 3\]"):
        rc.compile_rnn(m, calibration=[])
    m = rnn_model("LSTM", 8, 4, 3, 2)
    c = rc.compile_rnn(m, calibration=[feeds_for(m)])
    with pytest.raises(rc.RnnCompileError, match=r"input 'X' has shape \(4, 2, 4\), the model was compiled for"):
        rc.request_image(c, {"X": np.zeros((4, 2, 4), np.float32)})


def test_runtime_sequence_lens_and_non_layout_glue_are_rejected():
    m = rnn_model("GRU", 8, 4, 3, 2)
    m.graph.node[0].input[4] = "sl"
    m.graph.input.append(helper.make_tensor_value_info("sl", TensorProto.INT32, [2]))
    with pytest.raises(rc.RnnCompileError, match=r"sequence_lens \('sl'\) must be a constant"):
        rc.compile_rnn(m, calibration=[])
    m = stacked_model()
    for n in m.graph.node:
        if n.op_type == "Transpose":
            n.op_type = "Relu"
            del n.attribute[:]
    with pytest.raises(rc.RnnCompileError, match=r"between 'lstm' and 'gru'"):
        rc.compile_rnn(m, calibration=[feeds_for(m)])
