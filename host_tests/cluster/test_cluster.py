"""Three emulated boards as Ray actors on a local Ray: names, resources,
placement (packed as specified, refusals with the reason), replicas
(requests spread, results equal the single-board run), live re-allocation
on a board and across boards, bad input, figures."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
from harness import emulated_accelerator
from stream import Stream

from vfpga.runtime.cluster import NotComputed
from vfpga.runtime.cluster.pool import NAMESPACE, actor_name, resource
from vfpga.runtime.compiler import rnn
from vfpga.runtime.errors import DeployError, PlacementError, QueueFull
from vfpga.runtime.models import small


@pytest.fixture(scope="module")
def cl(make_cluster):
    c = make_cluster({"u200": 3})
    yield c
    c.close()


def _clear(cl):
    for name in list(cl.tenants):
        cl.remove(name)


def test_boards_are_named_actors_pinned_by_their_resource(cl, ray_session):
    ray = ray_session
    pids = set()
    for i in range(3):
        handle = ray.get_actor(actor_name(i), namespace=NAMESPACE)
        info = ray.get(handle.info.remote())
        assert info["index"] == i and info["kind"] == "u200" and info["mode"] == "emulated"
        pids.add(info["pid"])
    assert len(pids) == 3  # a process each
    assert ray.cluster_resources()[resource("u200")] - ray.available_resources().get(resource("u200"), 0) >= 3
    assert [b.up for b in cl.boards()] == [True] * 3


def test_tenants_are_packed_fewest_boards_first(cl, models):
    _clear(cl)
    a = cl.deploy(models["conv"].compiled, cores=4, replicas=2, name="a")
    b = cl.deploy(models["conv2"].compiled, cores=12, name="b")
    c = cl.deploy(models["conv"].compiled, cores=8, replicas=2, name="c")
    assert [p["board"] for p in a.placement] == [0, 0]  # one board holds both replicas
    assert [p["board"] for p in b.placement] == [1]  # the tightest fit: board 0 has 8 cores left, 1 and 2 have 16
    assert [p["board"] for p in c.placement] == [2, 2]
    assert all(len(p["cores"]) == n for t, n in ((a, 4), (b, 12), (c, 8)) for p in t.placement)
    free = {s.index: s.free["cnn"] for s in cl.boards()}
    assert free == {0: 8, 1: 4, 2: 0}
    _clear(cl)


def test_an_impossible_request_is_refused_with_the_reason(cl, models):
    _clear(cl)
    cl.deploy(models["conv"].compiled, cores=10, replicas=2, spread=True, name="big")
    with pytest.raises(PlacementError) as e:
        cl.deploy(models["conv"].compiled, cores=8, replicas=3, name="more")
    msg = str(e.value)
    assert "asks for 3 replicas of 8 CNN cores" in msg and "room for 2" in msg
    assert "board 0: 6 of 16 CNN cores free" in msg and "board 2: 16 of 16" in msg
    assert "more" not in cl.tenants and sum(len(b.replicas) for b in cl.boards()) == 2  # nothing left behind
    with pytest.raises(DeployError, match="no zcu104 boards"):
        cl.deploy(models["conv"].compiled, board="zcu104")
    with pytest.raises(DeployError, match="already deployed"):
        cl.deploy(models["conv"].compiled, name="big")
    _clear(cl)


def test_replicas_share_the_load_and_equal_the_single_board_run(cl, models, small_cnn_path):
    _clear(cl)
    m = models["conv"]
    t = cl.deploy(m.compiled, cores=2, replicas=3, spread=True, name="spread")
    assert sorted(p["board"] for p in t.placement) == [0, 1, 2]
    xs = m.inputs * 4
    futs = [t.submit_quantized(x) for x in xs]
    for i, f in enumerate(futs):
        (y,), info = f.result(timeout=120)
        m.check([y], i % len(m.inputs))
        assert info.ok
    per_replica = [r.requests for r in cl.stats()["spread"].replicas]
    assert sum(per_replica) == len(xs) and min(per_replica) > 0, per_replica
    # a float ONNX model: the cluster's answers are the single board's, bit for bit
    calib = small.calibration_inputs(4)
    onnx_t = cl.deploy(str(small_cnn_path), cores=2, replicas=2, spread=True, calibration=calib, name="onnx")
    accel = emulated_accelerator()
    try:
        alone = accel.deploy(str(small_cnn_path), cores=2, calibration=calib, name="alone")
        xs = small.calibration_inputs(6, seed=5)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            got = list(pool.map(onnx_t.run, xs))
        for x, y in zip(xs, got):
            np.testing.assert_array_equal(y, alone.run(x))
    finally:
        accel.close()
    _clear(cl)


def test_reallocation_on_a_board_and_across_boards(cl, models):
    _clear(cl)
    m = models["conv"]
    t = cl.deploy(m.compiled, cores=4, name="grow")
    assert [p["board"] for p in t.placement] == [0]
    r = cl.reallocate({"grow": 8})  # board 0 has room: live on its board
    assert r.after["grow"][0]["board"] == 0 and len(r.after["grow"][0]["cores"]) == 8 and not r.migrated["grow"]
    cl.deploy(m.compiled, cores=6, name="squeeze")  # the tightest fit: board 0 (8 free) -> 2 left
    r = cl.reallocate({"grow": 12})  # board 0 lacks 2 cores: migrated (boards 1 and 2 tie: the lower index)
    assert r.migrated["grow"] == [0] and [p["board"] for p in t.placement] == [1]
    assert len(t.placement[0]["cores"]) == 12 and "grow: [board 0: 8 cores] -> [board 1: 12 cores]" in r.describe()
    for i, x in enumerate(m.inputs):
        m.check(t.run_quantized(x)[0], i)
    r = cl.reallocate({"grow": {"replicas": 2, "cores": 2}})
    assert len(t.placement) == 2 and all(len(p["cores"]) == 2 for p in t.placement)
    with pytest.raises(PlacementError, match="a u200 board has 16"):
        cl.reallocate({"grow": 17})
    with pytest.raises(DeployError, match="unknown keys"):
        cl.reallocate({"grow": {"core": 2}})
    _clear(cl)


def test_bad_input_and_limits_are_clear(cl, models):
    _clear(cl)
    m = models["conv"]
    t = cl.deploy(m.compiled, cores=1, max_pending=2, name="small")
    with pytest.raises(ValueError, match="expects an int8 HWC input of shape"):
        t.submit_quantized(np.zeros((3, 3), np.int8))
    futs = []
    with pytest.raises(QueueFull, match="max_pending=2 per replica"):
        for _ in range(50):
            futs.append(t.submit_quantized(m.inputs[0]))
    for f in futs:
        m.check(f.result(timeout=60)[0], 0)
    s = cl.stats()["small"]
    assert s.requests == len(futs) and s.failed == 0 and s.source == "modeled" and s.latency_ms > 0
    assert s.host_latency_ms["p99"] >= s.host_latency_ms["p50"] > 0
    boards = cl.boards()
    assert boards[0].requests >= len(futs) and boards[0].clock_s > 0 and boards[0].replicas == ["small#1"]
    assert not isinstance(futs[0].result(), NotComputed)
    _clear(cl)


def test_migration_under_load_loses_nothing(cl, models):
    _clear(cl)
    m, m2 = models["conv"], models["conv2"]
    t = cl.deploy(m.compiled, cores=4, name="mover")
    other = cl.deploy(m2.compiled, cores=4, replicas=2, name="other")
    start = t.placement[0]["board"]
    steps = []

    def move():
        steps.append(cl.migrate("mover", from_board=start)[0]["board"])  # where placement puts it
        steps.append(cl.migrate("mover", from_board=steps[-1], to_board=2)[0]["board"])
        cl.reallocate({"other": 14})  # two replicas of 14 cores cannot share a board: one migrates
        steps.append(sorted(p["board"] for p in other.placement))

    s = Stream({"mover": (t, m), "other": (other, m2)}, per_client=60)
    s.run(during=move, after=20)
    assert s.check_all_right() == 120  # zero wrong, zero lost
    assert cl.controller.duplicates == 0
    assert steps[0] != start and steps[1] == 2 and len(set(steps[2])) == 2
    assert [p["board"] for p in t.placement] == [2] and all(len(p["cores"]) == 14 for p in other.placement)
    names = {b.index: b.replicas for b in cl.boards()}
    assert sum(len(v) for v in names.values()) == 3  # the old replicas left their boards
    _clear(cl)


def test_an_lstm_tenant_on_the_rnn_cores_of_two_boards(cl):
    _clear(cl)
    model = small.random_rnn_model("LSTM", hidden=32, input_size=16, steps=6, batch=1, seed=3)
    rng = np.random.default_rng(4)
    compiled = rnn.compile_rnn(model, "u200", calibration=[{"X": rng.uniform(-1, 1, (6, 1, 16)).astype(np.float32)}])
    t = cl.deploy(compiled, cores=8, replicas=2, name="lstm")  # a u200 has 8 RNN cores: one replica per board
    assert t.kind == "rnn" and sorted(p["board"] for p in t.placement) == [0, 1]
    assert all(p["cores"] == list(range(16, 24)) for p in t.placement)  # pool indices of the RNN cores
    xs = [rng.uniform(-1, 1, (6, 1, 16)).astype(np.float32) for _ in range(4)]
    accel = emulated_accelerator("u200", 64 << 20)
    try:
        alone = accel.deploy(compiled, cores=8, name="alone")
        futs = [t.submit(x) for x in xs]
        for x, f in zip(xs, futs):
            for got, want in zip(f.result(timeout=120), alone.run(x)):
                np.testing.assert_array_equal(got, want)
    finally:
        accel.close()
    with pytest.raises(TypeError, match="RNN tenant"):
        t.submit_quantized(np.zeros(3, np.int8))
    with pytest.raises(ValueError):
        t.submit(np.zeros((2, 2), np.float32))
    assert sum(r.requests for r in cl.stats()["lstm"].replicas) == 4
    _clear(cl)


def _throughput(ray, board: int) -> dict:
    return ray.get(ray.get_actor(actor_name(board), namespace=NAMESPACE).info.remote())["throughput"]


def test_batching_and_requests_in_flight_reach_every_replica(cl, models, ray_session):
    """max_batch (RNN) and max_inflight (CNN) are each replica's, kept by a
    migrated replica; batched results equal the single-board unbatched run."""
    _clear(cl)
    model = small.random_rnn_model("GRU", hidden=32, input_size=16, steps=5, batch=1, seed=8)
    rng = np.random.default_rng(9)
    compiled = rnn.compile_rnn(model, "u200", calibration=[{"X": rng.uniform(-1, 1, (5, 1, 16)).astype(np.float32)}])
    with pytest.raises(DeployError, match="batches .* or keeps requests in flight"):
        cl.deploy(models["conv"].compiled, cores=1, name="nope", max_batch=4, max_inflight=2)
    with pytest.raises(DeployError, match=r"max_inflight is implemented for CNN tenants and CNN \+ RNN models only"):
        cl.deploy(compiled, cores=1, name="nope", max_inflight=2)
    with pytest.raises(DeployError, match="max_inflight must be 1..4"):
        cl.deploy(models["conv"].compiled, cores=1, name="nope", max_inflight=99)
    assert "nope" not in cl.tenants
    gru = cl.deploy(compiled, cores=4, replicas=2, name="gru", max_batch=4, max_delay_us=200_000, spread=True)
    boards = [p["board"] for p in gru.placement]
    assert all(_throughput(ray_session, b)[f"gru#{i + 1}"]["max_batch"] == 4 for i, b in enumerate(boards))
    xs = [rng.uniform(-1, 1, (5, 1, 16)).astype(np.float32) for _ in range(12)]
    accel = emulated_accelerator("u200", 64 << 20)
    try:
        alone = accel.deploy(compiled, cores=1, name="alone")
        want = [alone.run(x) for x in xs]
    finally:
        accel.close()
    futs = [gru.submit(x) for x in xs]
    for f, w in zip(futs, want):
        for got, exp in zip(f.result(timeout=120), w):
            np.testing.assert_array_equal(got, exp)
    st = cl.stats()["gru"]
    assert sum(r.requests for r in st.replicas) == 12 and sum(r.batched for r in st.replicas) >= 2
    m = models["conv"]
    cnn = cl.deploy(m.compiled, cores=2, name="wide", max_inflight=2)
    (board,) = [p["board"] for p in cnn.placement]
    assert _throughput(ray_session, board)["wide#1"] == {"max_batch": 1, "max_inflight": 2}
    cl.migrate("wide", from_board=board)
    (moved,) = [p["board"] for p in cnn.placement]
    assert moved != board and _throughput(ray_session, moved)["wide#2"]["max_inflight"] == 2
    futs = [cnn.submit_quantized(x) for x in m.inputs * 2]
    for i, f in enumerate(futs):
        (y,), info = f.result(timeout=120)
        m.check([y], i % len(m.inputs))
    _clear(cl)
