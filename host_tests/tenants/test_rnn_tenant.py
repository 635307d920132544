"""LSTM/GRU tenants on the RNN cores of the shared overlay, beside CNN tenants.

The RNN tenant's results through the level-1 dispatcher must equal the RNN
compiler's own C-sim executor bit for bit (same frames, same cores' C++) and
onnxruntime's float run within the RNN tolerance; CNN and RNN tenants run
at the same time without disturbing each other; cores never cross kinds.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
from harness import emulated_accelerator, make_model

from vfpga.driver.tenant_context import MaskRejected
from vfpga.runtime.compiler import rnn
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small
from vfpga.runtime.tenants import DeployError

TIMEOUT = 120



@pytest.fixture(scope="module")
def lstm():
    m = small.random_rnn_model("LSTM", hidden=64, input_size=32, steps=12, batch=2, seed=3)
    rng = np.random.default_rng(4)
    calib = [{"X": rng.uniform(-1, 1, (12, 2, 32)).astype(np.float32)} for _ in range(2)]
    return m, rnn.compile_rnn(m, "u200", calibration=calib)


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (12, 2, 32)).astype(np.float32)


def _cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_lstm_tenant_equals_the_executor_and_onnxruntime(lstm):
    model, compiled = lstm
    ov = emulated_accelerator("u200", 64 << 20)
    t = ov.deploy(compiled, cores=2, name="lstm")
    assert t.kind == "rnn" and t.cores == ov.rnn_cores[:2] and not set(t.cores) & set(ov.cores)
    x = _x(1)
    got, info = t.run_with_info(x)
    assert info.ok and info.modeled_cycles > 0
    want = rnn.RnnCoreSim("u200").run(compiled, rnn.plan_rnn(compiled, 2), {"X": x})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"X": x})
    for g, r in zip(got, ref):
        assert _cosine(g, r) >= 0.999 and np.abs(np.asarray(g) - r).max() < 0.03
    ov.close()


def test_cnn_and_lstm_tenants_side_by_side(lstm):
    _, compiled = lstm
    cnn_model = make_model("conv", small.conv_graph(5, shape=(16, 16, 16), cout=32), seed=5)
    ov = emulated_accelerator("u200", 64 << 20)
    cnn = ov.deploy(cnn_model.compiled, cores=8, name="vision")
    rnn = ov.deploy(compiled, cores=4, name="speech")
    alone = {s: rnn.run(_x(s)) for s in range(3)}
    errors: list = []

    def stream(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def cnn_stream():
        for i in range(12):
            (y,), _ = cnn.run_quantized(cnn_model.inputs[i % 4])
            np.testing.assert_array_equal(y, cnn_model.wants[i % 4])

    def rnn_stream():
        for i in range(9):
            for g, w in zip(rnn.run(_x(i % 3)), alone[i % 3]):
                np.testing.assert_array_equal(g, w)

    threads = [threading.Thread(target=stream, args=(f,)) for f in (cnn_stream, rnn_stream)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(TIMEOUT)
    assert not errors, errors
    s = ov.stats()
    assert (s["vision"].requests, s["speech"].requests) == (12, 12) and s["speech"].source == "modeled"
    ov.close()


def test_resident_rnn_tenant_reallocated_between_requests(lstm):
    _, compiled = lstm
    ov = emulated_accelerator("u200", 64 << 20)
    rnn = ov.deploy(compiled, cores=2, name="speech")
    assert rnn.needs_hold  # its plan keeps weights in its cores
    want = rnn.run(_x(7))
    futs = [rnn.submit(_x(7)) for _ in range(6)]
    for cores in (4, [ov.rnn_cores[-1]], 3, 2):
        ov.reallocate({"speech": cores})
    for f in futs:
        for g, w in zip(f.result(TIMEOUT), want):
            np.testing.assert_array_equal(g, w)
    assert len(rnn.cores) == 2 and set(rnn.cores) <= set(ov.rnn_cores)
    ov.close()


def test_cores_never_cross_kinds(lstm):
    _, compiled = lstm
    ov = emulated_accelerator("u200", 64 << 20)
    rnn = ov.deploy(compiled, cores=1, name="speech")
    cnn = ov.deploy(make_model("c", small.conv_graph(2)).compiled, cores=1, name="vision")
    with pytest.raises(DeployError, match=r"must name distinct RNN cores of 16\.\.23"):
        ov.reallocate({"speech": [0]})
    with pytest.raises(DeployError, match=r"must name distinct CNN cores of 0\.\.15"):
        ov.reallocate({"vision": [16]})
    with pytest.raises(DeployError, match=r"asked for 9 RNN cores; the u200 pool has 8"):
        ov.deploy(compiled, cores=9, name="big")
    with pytest.raises(DeployError, match=r"asked for 9 RNN cores in all"):
        ov.reallocate({"speech": 9})
    # the hardware refuses a mixed mask on its own (VF_MASK_REJECT_KIND) and keeps the old one
    with pytest.raises(MaskRejected, match="REJECT_KIND"):
        rnn.context.set_mask(1 << 0 | 1 << 16)
    assert rnn.context.active_mask == 1 << rnn.cores[0]
    x = _x(2)
    assert all(np.isfinite(np.asarray(y)).all() for y in rnn.run(x))
    xq = np.zeros(cnn.compiled.input_shape, np.int8)
    (y,), _ = cnn.run_quantized(xq)
    np.testing.assert_array_equal(y, golden.run_graph(cnn.graph, xq)[cnn.graph.outputs[0]])
    ov.close()


def test_rnn_input_errors_are_named(lstm):
    _, compiled = lstm
    ov = emulated_accelerator("u200", 64 << 20)
    speech = ov.deploy(compiled, cores=1, name="speech")
    with pytest.raises(rnn.RnnCompileError, match=r"input 'X' has shape \(12, 1, 32\)"):
        speech.submit(np.zeros((12, 1, 32), np.float32))
    with pytest.raises(TypeError, match="RNN tenant"):
        speech.submit_quantized(np.zeros((12, 2, 32), np.int8))
    assert speech.requests == 0 and speech.run(_x(0))
    ov.close()


def test_simulator_gives_the_rnn_tenants_cycles(lstm):
    from vfpga.runtime.sim import simulator

    _, compiled = lstm
    ov = emulated_accelerator("u200", 64 << 20)
    rnn = ov.deploy(compiled, cores=3, name="speech")
    _, info = rnn.run_with_info(_x(0))
    cores = list(rnn.cores)
    ov.close()
    sim = simulator.Simulator("u200")
    sim.deploy("speech", compiled, cores)
    (r,) = sim.run({"speech": [0]})["speech"]
    assert r.device_cycles == info.modeled_cycles > 0
