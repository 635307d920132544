"""Models with a convolutional front end before their LSTM: one deploy call
gives two linked tenants (front end on CNN cores, recurrent part on RNN
cores, layout glue on the host), checked end to end against onnxruntime on
the float model, through re-allocation of both parts, a fault in one, and
the stats and MAC share of both."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
from harness import emulated_accelerator

from vfpga.driver import isa
from vfpga.runtime.compiler import mixed
from vfpga.runtime.errors import DeployError, TenantFault, TenantRemoved
from vfpga.runtime.models import mobile


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def feeds_for(model, seed):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    return s, lambda: {i.name: rng.standard_normal(i.shape).astype(np.float32) * (1.0 if i.name == "x" else 0.3)
                       for i in s.get_inputs()}


@pytest.fixture(scope="module")
def accel():
    a = emulated_accelerator("u200", 64 << 20)
    yield a
    a.close()


def check(net, sess, make, windows, n=2):
    """End to end (int8 front end, then the RNN cores) >= 0.99 on every
    output; the recurrent part alone, on the X the front end handed over,
    >= 0.999 against onnxruntime's float LSTM."""
    split = net.compiled.split
    rec = ort.InferenceSession(split.recurrent.SerializeToString(), providers=["CPUExecutionProvider"])
    for _ in range(n):
        f = make()
        got = net.run(f if windows else f["x"])
        want = sess.run(None, f)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and cosine(g, w) >= 0.99
        front = net.front.run(net.compiled.host_pre()(f["x"]))
        feeds = {k: v for k, v in f.items() if k != "x"}
        feeds[split.x_name] = net.compiled.host_glue()(mixed.rows_out(front))
        for g, w in zip(net.recurrent.run(feeds), rec.run(None, feeds)):
            assert cosine(g, w) >= 0.999


def test_split_of_a_conv1d_front_end():
    sp = mixed.split_mixed(mobile.conv1d_lstm())
    assert sp.rows and [n.op_type for n in sp.front.graph.node] == ["Conv", "Relu", "Conv", "Relu"]
    assert [n.op_type for n in sp.glue.graph.node] == ["Transpose"]
    assert [n.op_type for n in sp.recurrent.graph.node] == ["LSTM", "Squeeze"]
    w = next(t for t in sp.front.graph.initializer if t.name.startswith("enc1.weight"))
    assert list(w.dims) == [16, 8, 1, 3]  # a 1 x 3 kernel over [1, C, N, L]


def test_split_of_a_spectrogram_front_end():
    """Reflect padding on the float input runs on the host; the kernel-256
    stride-128 convolution folds 128 positions into channels (space to depth)."""
    sp = mixed.split_mixed(mobile.conv1d_lstm(windows="stft"))
    assert [n.op_type for n in sp.pre.graph.node] == ["Pad", "Unsqueeze"]
    assert sp.s2d == 128 and sp.length == 640  # (640 - 256) / 128 + 1 = 4 outputs read every position
    conv = sp.front.graph.node[0]
    assert [a.ints for a in conv.attribute if a.name == "kernel_shape"][0] == [1, 2]
    x = np.random.default_rng(0).standard_normal((12, 1, 640)).astype(np.float32)
    folded = mixed.rows_in(x, sp.s2d, sp.length)
    assert folded.shape == (1, 128, 12, 5) and folded[0, 5, 3, 2] == x[3, 0, 2 * 128 + 5]
    cut = mixed.rows_in(x[:, :, :600], 128, 512)  # a length the kernel does not cover to the end
    assert cut.shape == (1, 128, 12, 4)


@pytest.mark.parametrize("windows", [False, True, "stft"])
def test_conv1d_front_end_before_an_lstm(accel, windows):
    model = mobile.conv1d_lstm(seed=2, windows=windows)
    sess, make = feeds_for(model, 0)
    tag = str(windows).lower()
    net = accel.deploy(model, cores=2, calibration=[make() for _ in range(6)], name=f"vad_{tag}")
    try:
        assert net.kind == "mixed" and net.front.kind == "cnn" and net.recurrent.kind == "rnn"
        assert [layer.kind for layer in net.front.graph.layers] == ["conv"] * (3 if windows else 2)
        windows = bool(windows)
        check(net, sess, make, windows)
        share = net.mac_share()
        assert share.share >= (0.99 if windows else 1.0)  # the 1x1 head conv after the LSTM runs on the host
        stats = accel.stats()
        for part in (f"vad_{tag}.cnn", f"vad_{tag}.rnn"):
            assert stats[part].requests == 4 and stats[part].mac_share is not None  # 2 whole + 2 of the part alone
        assert stats[f"vad_{tag}.rnn"].host_cpu_ms is not None and len(net.host_cpu_seconds) == 2
    finally:
        accel.remove(net)
    assert f"vad_{tag}.cnn" not in accel.tenants and f"vad_{tag}.rnn" not in accel.tenants


def test_both_parts_reallocate_and_fault_alone(accel):
    model = mobile.conv1d_lstm(seed=4)
    sess, make = feeds_for(model, 1)
    net = accel.deploy(model, cores={"cnn": 1, "rnn": 1}, calibration=[make() for _ in range(6)], name="mix")
    try:
        check(net, sess, make, False, 1)
        accel.reallocate({"mix.cnn": 4, "mix.rnn": 2})
        assert len(net.cores["cnn"]) == 4 and len(net.cores["rnn"]) == 2
        check(net, sess, make, False, 1)
        # an unknown opcode in the front end's program: that part faults, the request fails with it
        front = net.front
        spots = [int(o) + isa.INSN_BYTES for o in front.compiled.frames["offset"]]  # every frame's 1st instruction
        saved = [front.segment.read(at, 1).copy() for at in spots]
        for at in spots:
            front.segment.write(at, np.array([250], np.uint8))
            front.segment.sync_to_device(at, 1)
        with pytest.raises(TenantFault, match="tenant 'mix.cnn'.*OPCODE"):
            net.run(make()["x"])
        assert front.fault is not None and net.recurrent.fault is None
        for at, b in zip(spots, saved):
            front.segment.write(at, b)
            front.segment.sync_to_device(at, 1)
        net.reset()
        check(net, sess, make, False, 1)
    finally:
        accel.remove(net)


def _watch_parts(net) -> dict:
    """Records (start, end) host times of each front-end and RNN-part request of ``net``."""
    spans = {"front": [], "rnn": []}

    def watch(part, method, key):
        inner = getattr(part, method)

        def submit(x):
            t0 = time.perf_counter()
            fut = inner(x)
            fut.add_done_callback(lambda _: spans[key].append((t0, time.perf_counter())))
            return fut
        setattr(part, method, submit)

    watch(net.front, "submit_float_with_info", "front")
    watch(net.recurrent, "submit_with_info", "rnn")
    return spans


def _overlaps(spans) -> int:
    """Front-end runs that overlap an RNN-part run of an earlier request."""
    return sum(1 for fs, fe in spans["front"] for rs, re_ in spans["rnn"] if fs < re_ and rs < fe and rs < fs)


def test_a_pipeline_through_both_parts(accel):
    """max_inflight=4 (2 in the front end): a request's front end runs while an
    earlier one is in the RNN part; results equal the one-at-a-time tenant's bit for bit, in
    submission order; removal answers every request it leaves."""
    model = mobile.conv1d_lstm(seed=5)
    sess, make = feeds_for(model, 2)
    calib = [make() for _ in range(6)]
    seq = accel.deploy(model, cores={"cnn": 1, "rnn": 1}, calibration=calib, name="seq")
    pipe = accel.deploy(model, cores={"cnn": 2, "rnn": 1}, calibration=calib, name="pipe", max_inflight=4,
                        max_batch=2, max_delay_us=1000)
    try:
        assert pipe.front.max_inflight == 2 and pipe.front_limit == 2 and pipe.recurrent.max_batch == 2
        xs = [make()["x"] for _ in range(8)]
        spans = {n: _watch_parts(t) for n, t in (("seq", seq), ("pipe", pipe))}
        want = [f.result(timeout=120) for f in [seq.submit(x) for x in xs]]
        futs = [pipe.submit(x) for x in xs]
        for f, w in zip(futs, want):
            got = f.result(timeout=120)
            assert all(np.array_equal(g, e) for g, e in zip(got, w))
        assert pipe.inflight_peak == 4 and seq.inflight_peak == 1 and pipe.requests == 8
        # the pipeline: some request's front end ran while an earlier one was in the RNN part;
        # one at a time, never (both submitted all 8 at once)
        assert _overlaps(spans["pipe"]) > 0 and _overlaps(spans["seq"]) == 0
        with pytest.raises(ValueError, match="missing input"):
            pipe.submit({"not_x": xs[0]})
        futs = [pipe.submit(x) for x in xs[:5]]
    finally:
        accel.remove(pipe)
        accel.remove(seq)
    for f in futs:  # each one either ran or was refused with TenantRemoved; none is left waiting
        try:
            assert len(f.result(timeout=60)) == len(want[0])
        except TenantRemoved:
            pass
    with pytest.raises(TenantRemoved):
        pipe.submit(xs[0])
    with pytest.raises(DeployError, match="max_inflight must be 1..4"):
        accel.deploy(model, cores=1, calibration=calib, name="wide", max_inflight=9)
    assert "wide.cnn" not in accel.tenants
