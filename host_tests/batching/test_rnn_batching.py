"""Dynamic batching of an RNN tenant's requests on the emulated board (real C-sim).

Every request of a batch must give exactly what it gives run alone (the
batched variants quantize with the batch-1 program's scales and the cores
compute each item with the same integer arithmetic); requests that arrive
together run as one batch; bad input is refused at submit without touching
the others; concurrent submitters through live re-allocation lose,
duplicate or corrupt nothing; a fault fails its batch alone; a deploy that
does not fit says which batch would.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from harness import bank_bytes_for, emulated_accelerator, submit_through_reallocations
from onnx import helper, numpy_helper

from vfpga.driver import isa
from vfpga.runtime.compiler import rnn
from vfpga.runtime.compiler.segment import rnn_batch_layout
from vfpga.runtime.errors import DeployError, TenantFault
from vfpga.runtime.models import small

T, IN, H = 5, 16, 32
# max_delay_us: requests submitted back to back (inputs made beforehand) meet in one batch well within
# it; a batch short of max_batch waits all of it
WAIT = 3e5


def lstm_with_states(seed: int = 0) -> onnx.ModelProto:
    """An LSTM whose initial h and c are graph inputs (batch 1), with a Gemm head on Y_h."""
    rng = np.random.default_rng(seed)
    u = lambda *s: rng.uniform(-0.3, 0.3, s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(u(1, 4 * H, IN), "W"), numpy_helper.from_array(u(1, 4 * H, H), "R"),
             numpy_helper.from_array(u(1, 8 * H), "B"), numpy_helper.from_array(u(H, 3), "Wo")]
    nodes = [helper.make_node("LSTM", ["X", "W", "R", "B", "", "h0", "c0"], ["Y", "Y_h", "Y_c"], name="lstm",
                              hidden_size=H),
             helper.make_node("Squeeze", ["Y_h"], ["h_last"], axes=[0]),
             helper.make_node("MatMul", ["h_last", "Wo"], ["logits"])]
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(nodes, "lstm_states", [helper.make_tensor_value_info("X", f, [T, 1, IN]),
                                                     helper.make_tensor_value_info("h0", f, [1, 1, H]),
                                                     helper.make_tensor_value_info("c0", f, [1, 1, H])],
                              [helper.make_tensor_value_info(o, f, None) for o in ("Y", "logits", "Y_c")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])


def gru_batchwise(seed: int = 0) -> onnx.ModelProto:
    """A layout-1 GRU (X [B, T, I]) with a constant initial h and sequence_lens
    shorter than the sequence: batching repeats both per item."""
    rng = np.random.default_rng(seed)
    u = lambda *s: rng.uniform(-0.3, 0.3, s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(u(1, 3 * H, IN), "W"), numpy_helper.from_array(u(1, 3 * H, H), "R"),
             numpy_helper.from_array(u(1, 6 * H), "B"), numpy_helper.from_array(np.array([T - 1], np.int32), "lens"),
             numpy_helper.from_array(u(1, 1, H), "h0")]
    node = helper.make_node("GRU", ["X", "W", "R", "B", "lens", "h0"], ["Y", "Y_h"], name="gru", hidden_size=H,
                            layout=1, linear_before_reset=1)
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph([node], "gru_l1", [helper.make_tensor_value_info("X", f, [1, T, IN])],
                              [helper.make_tensor_value_info(o, f, None) for o in ("Y", "Y_h")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _calib(model, n=3, seed=9):
    rng = np.random.default_rng(seed)
    names = {i.name for i in model.graph.input}
    out = []
    for _ in range(n):
        f = {"X": rng.uniform(-1, 1, _x_shape(model)).astype(np.float32)}
        if "h0" in names:
            f["h0"] = rng.uniform(-0.5, 0.5, (1, 1, H)).astype(np.float32)
            f["c0"] = rng.uniform(-0.5, 0.5, (1, 1, H)).astype(np.float32)
        out.append(f)
    return out


@pytest.fixture(scope="module")
def models():
    lstm = lstm_with_states(1)
    gru = small.random_rnn_model("GRU", hidden=H, input_size=IN, steps=T, lbr=0, seed=2)
    gru_l1 = gru_batchwise(3)
    return {"lstm": rnn.compile_rnn(lstm, "u200", calibration=_calib(lstm)),
            "gru": rnn.compile_rnn(gru, "u200", calibration=_calib(gru)),
            "gru_l1": rnn.compile_rnn(gru_l1, "u200", calibration=_calib(gru_l1))}


def _x_shape(model_or_name) -> tuple:
    name = model_or_name if isinstance(model_or_name, str) else model_or_name.graph.name
    return (1, T, IN) if name in ("gru_l1",) else (T, 1, IN)


def _feeds(name: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    f = {"X": rng.uniform(-1, 1, _x_shape(name)).astype(np.float32)}
    if name == "lstm" and seed % 3:  # some requests give initial states, others leave them zero
        f["h0"] = rng.uniform(-0.5, 0.5, (1, 1, H)).astype(np.float32)
        f["c0"] = rng.uniform(-0.5, 0.5, (1, 1, H)).astype(np.float32)
    return f


def _same(got, want) -> bool:
    got = got if isinstance(got, list) else [got]
    want = want if isinstance(want, list) else [want]
    return len(got) == len(want) and all(g.dtype == w.dtype and np.array_equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_l1"])
def test_each_request_of_a_batch_equals_its_unbatched_run(models, name):
    compiled = models[name]
    ov = emulated_accelerator("u200", 64 << 20)
    try:
        alone = ov.deploy(compiled, cores=1, name="alone")
        batch = ov.deploy(compiled, cores=2, name="batch", max_batch=4, max_delay_us=WAIT)
        assert batch.batched.sizes == [1, 2, 4]
        if name == "gru_l1":  # the constants of batch 1 repeated per item
            lay = batch.batched.variants[4].layers[0]
            assert lay.seq_lens.tolist() == [T - 1] * 4 and lay.h0.shape == (4, 1, H)
        seeds = list(range(11))
        want = {s: alone.run(_feeds(name, s)) for s in seeds}
        assert not any(_same(want[0], want[s]) for s in seeds[1:])  # the inputs differ, so must the results
        for group in (seeds[:4], seeds[4:7], seeds[7:8], seeds[8:]):  # 4, 3 (padded to 4), 1, 3
            feeds = [_feeds(name, s) for s in group]
            futs = [batch.submit_with_info(f) for f in feeds]
            for s, f in zip(group, futs):
                got, info = f.result(120)
                assert info.batch == len(group) and info.batch_size == batch.batched.size_for(len(group))
                assert 0 < info.input_marshal_s < info.submit_to_doorbell_s  # all the batch's inputs, then its doorbell
                assert _same(got, want[s]), f"request {s} in a batch of {len(group)} differs from its run alone"
        st = ov.stats()["batch"]  # a run's device time is shared by the requests batched in it
        assert st.requests == len(seeds)
        per_request = sum(1 / len(g) for g in (seeds[:4], seeds[4:7], seeds[7:8], seeds[8:]) for _ in g) / len(seeds)
        assert st.throughput_rps == pytest.approx(1e3 / st.latency_ms / per_request, rel=0.2)
    finally:
        ov.close()


def test_bad_input_is_refused_at_submit_and_spares_the_batch(models):
    ov = emulated_accelerator("u200", 64 << 20)
    try:
        alone = ov.deploy(models["lstm"], cores=1, name="alone")
        t = ov.deploy(models["lstm"], cores=1, name="batch", max_batch=4, max_delay_us=2e5)
        good = [_feeds("lstm", 1), _feeds("lstm", 2)]
        want = [alone.run(f) for f in good]
        fut0 = t.submit_with_info(good[0])
        with pytest.raises(ValueError, match=r"input 'X' has shape \(5, 2, 16\), the model was compiled for"):
            t.submit({"X": np.zeros((T, 2, IN), np.float32)})
        with pytest.raises(ValueError, match="input 'X' has dtype int64; the model takes floating-point"):
            t.submit({"X": np.zeros((T, 1, IN), np.int64)})
        with pytest.raises(ValueError, match=r"input 'h0' has shape \(1, 2, 32\)"):
            t.submit({**good[1], "h0": np.zeros((1, 2, H), np.float32)})
        fut1 = t.submit_with_info(good[1])
        for f, w in zip((fut0, fut1), want):
            got, info = f.result(120)
            assert info.batch == 2 and _same(got, w)
        assert t.requests == 2 and t.failed == 0
    finally:
        ov.close()


def test_concurrent_submitters_through_live_reallocation(models):
    """Four threads submit while the tenant's cores change; every request is
    answered once, with its own unbatched result."""
    compiled = models["gru"]
    ov = emulated_accelerator("u200", 64 << 20)
    try:
        alone = ov.deploy(compiled, cores=1, name="alone")
        t = ov.deploy(compiled, cores=2, name="batch", max_batch=4, max_delay_us=2000)
        seeds = {(i, j): 100 * i + j for i in range(4) for j in range(10)}
        want = {s: alone.run(_feeds("gru", s)) for s in seeds.values()}
        infos = submit_through_reallocations(
            ov, t, lambda i, j: t.submit_with_info(_feeds("gru", seeds[i, j])), lambda i, j: want[seeds[i, j]],
            _same, (4, 1, 3, [ov.rnn_cores[5], ov.rnn_cores[6]], 2), per=10)
        assert max(info.batch for info in infos) > 1  # batching did happen
    finally:
        ov.close()


def test_a_fault_fails_its_batch_alone(models):
    compiled = models["gru"]
    ov = emulated_accelerator("u200", 64 << 20)
    try:
        other = ov.deploy(compiled, cores=1, name="other")
        t = ov.deploy(compiled, cores=2, name="batch", max_batch=4, max_delay_us=WAIT)
        want = other.run(_feeds("gru", 5))
        # an unknown opcode in every frame of the batch-4 program: batches of 3-4 fault, nothing else does
        v4 = t.batched.variants[4]
        spots = [int(o) + isa.INSN_BYTES for o in v4.frames["offset"]]
        saved = [t.segment.read(at, 1).copy() for at in spots]
        for at in spots:
            t.segment.write(at, np.array([250], np.uint8))
            t.segment.sync_to_device(at, 1)
        feeds = [_feeds("gru", s) for s in range(3)]
        futs = [t.submit(f) for f in feeds]
        for f in futs:
            with pytest.raises(TenantFault, match="tenant 'batch'.*OPCODE"):
                f.result(120)
        assert t.failed == 3 and t.fault is not None
        assert _same(other.run(_feeds("gru", 5)), want) and other.fault is None
        for at, b in zip(spots, saved):
            t.segment.write(at, b)
            t.segment.sync_to_device(at, 1)
        t.reset()
        assert _same(t.run(_feeds("gru", 5)), want)
    finally:
        ov.close()


def test_a_deploy_that_does_not_fit_names_the_batch_that_would(models):
    compiled = models["gru"]
    batched = rnn.compile_batched(compiled, 8)
    n = 8
    sizes = {b: rnn_batch_layout(batched.upto(b), n).size for b in (2, 4, 8)}
    assert sizes[2] < sizes[4] < sizes[8]
    ov = emulated_accelerator("u200", (bank_bytes_for("u200", sizes[2]) + bank_bytes_for("u200", sizes[4])) // 2)
    try:
        with pytest.raises(DeployError, match=rf"max_batch=2 would fit \({sizes[2]} bytes\)"):
            ov.deploy(compiled, cores=2, name="big", max_batch=8)
        assert ov.free_rnn_cores == ov.rnn_cores and not ov.tenants  # nothing held after the failure
        t = ov.deploy(compiled, cores=2, name="fits", max_batch=2)
        assert t.segment.size == sizes[2]
    finally:
        ov.close()


def test_batching_is_refused_where_it_is_not_built(models):
    ov = emulated_accelerator("u200", 64 << 20)
    try:
        with pytest.raises(DeployError, match="batches .* or keeps requests in flight"):
            ov.deploy(small.conv_graph(2), cores=1, max_batch=2, max_inflight=2)
        with pytest.raises(DeployError, match="max_batch must be a positive integer"):
            ov.deploy(models["gru"], cores=1, max_batch=0)
        with pytest.raises(DeployError, match="max_delay_us must be a number >= 0"):
            ov.deploy(models["gru"], cores=1, max_batch=2, max_delay_us=-1)
        assert ov.free_rnn_cores == ov.rnn_cores
        batch2 = rnn.compile_rnn(small.random_rnn_model("GRU", H, IN, T, batch=2, seed=2), "u200",
                                 calibration=[{"X": np.ones((T, 2, IN), np.float32)}])
        with pytest.raises(DeployError, match="batching needs a batch-1 model"):
            ov.deploy(batch2, cores=1, max_batch=2)
    finally:
        ov.close()
