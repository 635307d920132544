"""The Open Inference Protocol over HTTP against a live `vfpga serve` on
localhost (emulated board underneath), with a plain HTTP client: model
control, inference (JSON and binary tensor data) equal to the in-process
runtime, tokens, quotas, bad requests, metrics, re-allocation under load
and concurrent clients over several tenants."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time

import numpy as np
import pytest
from conftest import (
    ADMIN,
    CALIBRATION,
    MODELS,
    ServerProcess,
    infer_binary,
    infer_json,
    inputs,
    output_of,
)


@pytest.fixture(scope="module")
def vision(server):
    """small_cnn (seed 0) loaded as 'vision' on 2 cores with its calibration file and a given token."""
    token = "vision-token-0123456789"
    reply = server.load("vision", MODELS["cnn0"](), {"cores": 2, "token": token, "max_pending": 32},
                        calibration=CALIBRATION)
    assert reply["token"] == token and len(reply["cores"]) == 2
    return token


def test_health_and_server_metadata(server):
    c = server.client()
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").status_code == 200
    meta = c.get("/v2").json()
    assert meta["name"] == "vfpga" and {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


def test_load_with_files_and_config_then_metadata(server, vision):
    c = server.client(vision)
    meta = c.get("/v2/models/vision").json()
    assert meta["platform"] == "onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32]}]
    assert meta["outputs"] == [{"name": "fc", "datatype": "FP32", "shape": [1, 10]}]
    assert c.get("/v2/models/vision/ready").json()["ready"] is True
    index = server.admin.post("/v2/repository/index", json={}).json()
    assert {"name": "vision", "version": "1", "state": "READY"} in index
    assert "load model=vision kind=cnn platform=onnx cores=" in server.log()


def test_infer_json_and_binary_equal_the_in_process_run(server, vision, reference):
    c = server.client(vision)
    xs = inputs(3, seed=11)
    want = reference("cnn0", xs)
    for x, y in zip(xs, want):
        np.testing.assert_array_equal(output_of(c.post("/v2/models/vision/infer", json=infer_json(x))), y)
        body, headers = infer_binary(x)
        np.testing.assert_array_equal(output_of(c.post("/v2/models/vision/infer", content=body, headers=headers)), y)
    # the request id comes back; a gzip body is read like a plain one
    doc = {**infer_json(xs[0]), "id": "req-7"}
    r = c.post("/v2/models/vision/versions/1/infer", content=gzip.compress(json.dumps(doc).encode()),
               headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.json()["id"] == "req-7"
    np.testing.assert_array_equal(output_of(r), want[0])


def test_tokens(server, vision):
    x = inputs(1, seed=12)[0]
    other = server.load("other", MODELS["flat"](), {"cores": 1}, calibration=CALIBRATION)
    assert len(other["token"]) >= 16 and other["token"] != vision
    try:
        cases = {
            "missing": (server.client(), 401),
            "malformed": (server.client(), 401),
            "unknown": (server.client("not-a-token-of-anyone-here"), 401),
            "another tenant's": (server.client(other["token"]), 403),
        }
        for what, (c, status) in cases.items():
            headers = {"Authorization": "Basic abc"} if what == "malformed" else {}
            r = c.post("/v2/models/vision/infer", json=infer_json(x), headers=headers)
            assert r.status_code == status, (what, r.text)
        # another tenant's model and a model that does not exist look the same
        c = server.client(other["token"])
        assert c.get("/v2/models/vision").json() == {"error": "model 'vision' not found or not yours"}
        assert c.get("/v2/models/nosuch").json() == {"error": "model 'nosuch' not found or not yours"}
        assert c.post("/v2/models/nosuch/infer", json=infer_json(x)).json() == {
            "error": "model 'nosuch' not found or not yours"}
        # tenants cannot control models or read the metrics
        for path in ("/v2/repository/models/vision/unload", "/v2/repository/index",
                     "/v2/repository/models/vision/reallocate"):
            assert c.post(path, json={"cores": 1}).status_code == 403
        assert c.get("/metrics").status_code == 403
        assert server.client().post("/v2/repository/models/x/load", json={}).status_code == 401
        # a token is unique
        r = server.admin.post("/v2/repository/models/dup/load", json={"parameters": {
            "config": json.dumps({"token": vision}),
            "file:m.onnx": base64.b64encode(MODELS["flat"]().SerializeToString()).decode()}})
        assert r.status_code == 409 and "token is already in use" in r.json()["error"]
        # the owner still gets through
        assert server.client(vision).post("/v2/models/vision/infer", json=infer_json(x)).status_code == 200
    finally:
        assert server.admin.post("/v2/repository/models/other/unload").status_code == 200


def _bad_requests(server, vision):
    x = inputs(1, seed=13)[0]
    body, headers = infer_binary(x)
    onnx_b64 = base64.b64encode(MODELS["flat"]().SerializeToString()).decode()
    infer = [
        ("wrong input name", infer_json(x, name="image"), None, 400, "has no input 'image'; its inputs: input"),
        ("wrong datatype", infer_json(x.astype(np.float64), datatype="FP64"), None, 400,
         "datatype FP64, the model takes FP32"),
        ("wrong shape", infer_json(x[..., :16]), None, 400, "shape [1, 3, 32, 16], the model takes [1, 3, 32, 32]"),
        ("data does not fit the shape", {"inputs": [{**infer_json(x)["inputs"][0], "data": [1.0, 2.0]}]}, None, 400,
         "2 elements of data, shape [1, 3, 32, 32] has 3072"),
        ("unknown datatype", infer_json(x, datatype="FP128"), None, 400, "unknown datatype 'FP128'"),
        ("no inputs", {"inputs": []}, None, 400, "needs a non-empty 'inputs' list"),
        ("unknown output", {**infer_json(x), "outputs": [{"name": "logits"}]}, None, 400, "has no output(s) ['logits']"),
        ("malformed JSON", b'{"inputs": [', None, 400, "is not valid JSON"),
        ("binary header too long", body, {**headers, "Inference-Header-Content-Length": "999999"}, 400,
         "does not fit the"),
        ("binary data short", body[:-4], headers, 400, "does not fit the"),
        ("oversized body", b" " * (17 << 20), None, 413, "more than the limit of 16777216"),
    ]
    control = [
        ("unknown model", "/v2/repository/models/nosuch/unload", {}, 404, "model 'nosuch' not found"),
        ("model bytes that are no ONNX", "/v2/repository/models/junk/load",
         {"parameters": {"file:1/model.onnx": base64.b64encode(b"\x08\x07garbage" * 50).decode()}}, 400,
         "not an ONNX model"),
        ("no model file", "/v2/repository/models/junk/load", {"parameters": {"config": "{}"}}, 400,
         "needs exactly one model file"),
        ("base64 that is not", "/v2/repository/models/junk/load", {"parameters": {"file:m.onnx": "@@@"}}, 400,
         "not valid base64"),
        ("config that is not JSON", "/v2/repository/models/junk/load",
         {"parameters": {"config": "{cores: 2", "file:m.onnx": onnx_b64}}, 400, "config is not JSON"),
        ("unknown config key", "/v2/repository/models/junk/load",
         {"parameters": {"config": '{"gpus": 2}', "file:m.onnx": onnx_b64}}, 400, "unknown keys ['gpus']"),
        ("calibration file missing", "/v2/repository/models/junk/load",
         {"parameters": {"config": '{"calibration": "c.npy"}', "file:m.onnx": onnx_b64}}, 400,
         "not among the load's files"),
        ("more cores than are free", "/v2/repository/models/junk/load",
         {"parameters": {"config": '{"cores": 15}', "file:m.onnx": onnx_b64}}, 409, "15 CNN cores, 14 free"),
        ("a loaded name", "/v2/repository/models/vision/load",
         {"parameters": {"file:m.onnx": onnx_b64}}, 409, "already loaded"),
        ("reallocate without cores", "/v2/repository/models/vision/reallocate", {"n": 2}, 400, 'needs "cores"'),
        ("reallocate beyond the pool", "/v2/repository/models/vision/reallocate", {"cores": 17}, 409,
         "the u200 pool has 16"),
        ("reallocate onto nonsense", "/v2/repository/models/vision/reallocate", {"cores": "many"}, 400,
         "a count >= 1 or a list of core indices"),
    ]
    return x, infer, control


def test_bad_requests_get_a_clear_4xx_and_the_server_stays_up(server, vision, reference):
    x, infer, control = _bad_requests(server, vision)
    c = server.client(vision)
    for what, doc, headers, status, text in infer:
        kw = {"content": doc} if isinstance(doc, bytes) else {"json": doc}
        r = c.post("/v2/models/vision/infer", headers=headers, **kw)
        assert r.status_code == status and text in r.json()["error"], (what, r.status_code, r.text)
    for what, path, doc, status, text in control:
        r = server.admin.post(path, json=doc)
        assert r.status_code == status and text in r.json()["error"], (what, r.status_code, r.text)
    unsupported = server.admin.post("/v2/repository/models/junk/load", json={"parameters": {
        "file:m.onnx": base64.b64encode(_unsupported_model()).decode(), "config": '{"cores": 1}'}})
    assert unsupported.status_code == 400 and "unsupported model" in unsupported.json()["error"], unsupported.text
    assert all(m["name"] != "junk" for m in server.admin.post("/v2/repository/index").json())
    # nothing above disturbed the model or the server
    np.testing.assert_array_equal(output_of(c.post("/v2/models/vision/infer", json=infer_json(x))),
                                  reference("cnn0", [x])[0])
    assert server.proc.poll() is None


def _unsupported_model() -> bytes:
    """A valid ONNX model the compiler refuses: its input is a 3-D tensor (no NCHW image)."""
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def test_quotas_come_from_the_server_config(tmp_path):
    quotas = tmp_path / "quotas.json"
    quotas.write_text(json.dumps({"default": {"max_cores": 2, "max_request_bytes": 20000},
                                  "models": {"big": {"max_cores": 3}}}))
    s = ServerProcess(tmp_path / "serve.log", "--quotas", str(quotas), "--grpc-port", "-1")
    try:
        onnx_b64 = base64.b64encode(MODELS["flat"]().SerializeToString()).decode()

        def load(name, cores):
            return s.admin.post(f"/v2/repository/models/{name}/load", json={"parameters": {
                "file:m.onnx": onnx_b64, "config": json.dumps({"cores": cores})}})

        r = load("small", 3)
        assert r.status_code == 403 and "exceeds the quota of 2 cores" in r.json()["error"]
        r = s.admin.post("/v2/repository/models/small/load", json={"parameters": {
            "file:m.onnx": onnx_b64, "config": json.dumps({"max_pending": 65})}})
        assert r.status_code == 403 and "max_pending 65 exceeds the quota of 64" in r.json()["error"]
        token = load("big", 3).json()["token"]
        r = s.admin.post("/v2/repository/models/big/reallocate", json={"cores": 4})
        assert r.status_code == 403 and "quota of 3 cores" in r.json()["error"]
        c = s.client(token)
        assert c.post("/v2/models/big/infer", json=infer_json(inputs(1, 1)[0])).status_code == 413  # JSON: ~60 kB
        body, headers = infer_binary(inputs(1, 1)[0])  # 12 kB
        assert c.post("/v2/models/big/infer", content=body, headers=headers).status_code == 200
    finally:
        assert s.stop() == 0


def test_metrics(server, vision):
    c = server.client(vision)
    c.post("/v2/models/vision/infer", json=infer_json(inputs(1, 14)[0]))
    c.post("/v2/models/vision/infer", json=infer_json(inputs(1, 14)[0], name="nope"))
    text = server.admin.get("/metrics").text
    for line in ('vfpga_requests_total{model="vision",outcome="ok"}', 'vfpga_requests_total{model="vision",'
                 'outcome="rejected"}', 'vfpga_request_seconds_bucket{le="0.01",model="vision"}',
                 'vfpga_queue_depth{model="vision"} 0.0', 'vfpga_cores{model="vision"}',
                 'vfpga_device_utilisation{model="vision",source="modeled"}',
                 'vfpga_device_latency_seconds{model="vision",source="modeled"}'):
        assert line in text, line


def test_reallocation_under_load(server, vision, reference):
    xs = inputs(4, seed=15)
    want = reference("cnn0", xs)
    stop, results, errors = threading.Event(), [], []

    def client(i):
        c = server.client(vision)
        k = 0
        while not stop.is_set():
            j = (i + k) % len(xs)
            r = c.post("/v2/models/vision/infer", json=infer_json(xs[j]))
            if r.status_code != 200:
                errors.append(r.text)
            else:
                results.append((j, output_of(r)))
            k += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for cores in (4, 1, [12, 13, 14], 2):
            seen = len(results) + len(errors)
            deadline = time.monotonic() + 30
            while len(results) + len(errors) < seen + 3 and time.monotonic() < deadline:  # under load
                time.sleep(0.005)
            r = server.admin.post("/v2/repository/models/vision/reallocate", json={"cores": cores})
            assert r.status_code == 200, r.text
            assert r.json()["cores"] == (cores if isinstance(cores, list) else r.json()["cores"])
            assert len(r.json()["cores"]) == (len(cores) if isinstance(cores, list) else cores)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors and len(results) >= 12
    for j, y in results:
        np.testing.assert_array_equal(y, want[j])
    assert server.log().count("reallocate model=vision") >= 4


def test_eight_concurrent_clients_over_three_tenants(server, reference):
    kinds = {"t-cnn0": "cnn0", "t-cnn1": "cnn1", "t-flat": "flat"}
    tokens = {n: server.load(n, MODELS[k](), {"cores": 1 + i}, calibration=CALIBRATION)["token"]
              for i, (n, k) in enumerate(kinds.items())}
    xs = inputs(3, seed=16)
    want = {n: reference(k, xs) for n, k in kinds.items()}
    got, errors = [], []

    def client(i):
        name = list(kinds)[i % 3]
        c = server.client(tokens[name])
        for k in range(6):
            j = (i + k) % 3
            if k % 2:
                body, headers = infer_binary(xs[j])
                r = c.post(f"/v2/models/{name}/infer", content=body, headers=headers)
            else:
                r = c.post(f"/v2/models/{name}/infer", json=infer_json(xs[j]))
            if r.status_code != 200:
                errors.append(r.text)
                continue
            got.append((name, j, output_of(r)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(got) == 8 * 6
    for name, j, y in got:
        np.testing.assert_array_equal(y, want[name][j], err_msg=f"{name} input {j}")
    for name in kinds:
        assert server.admin.post(f"/v2/repository/models/{name}/unload").status_code == 200


def test_unload(server, reference):
    token = server.load("gone", MODELS["flat"](), calibration=CALIBRATION)["token"]
    c = server.client(token)
    x = inputs(1, seed=17)[0]
    np.testing.assert_array_equal(output_of(c.post("/v2/models/gone/infer", json=infer_json(x))),
                                  reference("flat", [x])[0])
    assert server.admin.post("/v2/repository/models/gone/unload").status_code == 200
    assert "unload model=gone" in server.log()
    r = c.post("/v2/models/gone/infer", json=infer_json(x))
    assert r.status_code == 401  # the token went with the model
    assert server.admin.get("/v2/models/gone").status_code == 404
    assert all(m["name"] != "gone" for m in server.admin.post("/v2/repository/index").json())
    # its cores are free again
    assert server.load("back", MODELS["flat"](), {"cores": 1}, calibration=CALIBRATION)
    assert server.admin.post("/v2/repository/models/back/unload").status_code == 200
    assert ADMIN not in server.log()


@pytest.mark.filterwarnings("ignore:compile_rnn. no calibration data")  # the in-process deploy's, like the server's
def test_an_lstm_model_runs_on_the_rnn_cores(server):
    from harness import emulated_accelerator

    from vfpga.runtime.models import small

    model = small.random_rnn_model("LSTM", hidden=16, input_size=8, steps=4)
    reply = server.load("speech", model, {"cores": 1})
    assert len(reply["cores"]) == 1 and reply["cores"][0] >= 16  # an RNN core (after the 16 CNN cores)
    assert reply["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [4, 1, 8]}]
    assert reply["outputs"] == [{"name": "Y", "datatype": "FP32", "shape": [4, 1, 1, 16]},
                                {"name": "Y_h", "datatype": "FP32", "shape": [1, 1, 16]}]
    x = np.random.default_rng(0).standard_normal((4, 1, 8)).astype(np.float32)
    r = server.client(reply["token"]).post("/v2/models/speech/infer", json=infer_json(x, name="X"))
    assert r.status_code == 200, r.text
    got = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}
    accel = emulated_accelerator()
    try:
        want = accel.deploy(model.SerializeToString(), cores=1, name="speech").run(x)
    finally:
        accel.close()
    np.testing.assert_array_equal(got["Y"], want[0])
    np.testing.assert_array_equal(got["Y_h"], want[1])
    assert server.admin.post("/v2/repository/models/speech/unload").status_code == 200


@pytest.mark.filterwarnings("ignore:compile_rnn. no calibration data")
def test_an_lstm_model_batches_its_concurrent_requests(server):
    """config.max_batch: requests that arrive together run as one batch; each
    answer equals the model's unbatched run."""
    from harness import emulated_accelerator

    from vfpga.runtime.models import small

    model = small.random_rnn_model("LSTM", hidden=16, input_size=8, steps=4, seed=5)
    bad = server.admin.post("/v2/repository/models/batched/load", json={"parameters": {
        "file:1/model.onnx": base64.b64encode(model.SerializeToString()).decode(),
        "config": json.dumps({"cores": 1, "max_batch": 4, "max_delay_us": "soon"})}})
    assert bad.status_code == 400 and "max_delay_us must be a number" in bad.json()["error"]
    reply = server.load("batched", model, {"cores": 1, "max_batch": 4, "max_delay_us": 50000})
    xs = [np.random.default_rng(s).standard_normal((4, 1, 8)).astype(np.float32) for s in range(6)]
    got: dict = {}

    def call(i):
        r = server.client(reply["token"]).post("/v2/models/batched/infer", json=infer_json(xs[i], name="X"))
        got[i] = r

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    accel = emulated_accelerator()
    try:
        alone = accel.deploy(model.SerializeToString(), cores=1, name="alone")
        for i, x in enumerate(xs):
            assert got[i].status_code == 200, got[i].text
            out = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in got[i].json()["outputs"]}
            want = alone.run(x)
            np.testing.assert_array_equal(out["Y"], want[0])
            np.testing.assert_array_equal(out["Y_h"], want[1])
    finally:
        accel.close()
    assert server.admin.post("/v2/repository/models/batched/unload").status_code == 200


def test_a_cnn_model_keeps_several_requests_in_flight(server, reference):
    """config.max_inflight: concurrent requests of one CNN tenant are in flight
    together, each answer equal to the in-process run; a value the board
    cannot take is refused at load (409, as a deploy the board cannot
    hold), naming the limit."""
    too_many = server.admin.post("/v2/repository/models/wide/load", json={"parameters": {
        "file:1/model.onnx": base64.b64encode(MODELS["cnn0"]().SerializeToString()).decode(),
        "config": json.dumps({"cores": 2, "max_inflight": 1000})}})
    assert too_many.status_code == 409 and "max_inflight" in too_many.json()["error"], too_many.text
    token = server.load("wide", MODELS["cnn0"](), {"cores": 2, "max_inflight": 3},
                        calibration=CALIBRATION)["token"]
    xs = inputs(6, seed=23)
    want = reference("cnn0", xs)
    got: dict = {}

    def call(i):
        got[i] = server.client(token).post("/v2/models/wide/infer", json=infer_json(xs[i]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(len(xs)):
        assert got[i].status_code == 200, got[i].text
        out = got[i].json()["outputs"][0]
        np.testing.assert_array_equal(np.asarray(out["data"], np.float32).reshape(out["shape"]), want[i])
    assert server.admin.post("/v2/repository/models/wide/unload").status_code == 200


def test_a_full_queue_answers_429_and_the_others_are_served(server, reference):
    """max_pending=1: of simultaneous requests, those beyond the queue are
    refused with 429 (naming the limit); every one answered is right."""
    token = server.load("narrow", MODELS["cnn0"](), {"cores": 1, "max_pending": 1},
                        calibration=CALIBRATION)["token"]
    xs = inputs(2, seed=18)
    want = reference("cnn0", xs)
    statuses, errors = [], []
    try:
        for _ in range(10):  # rounds of eight requests fired together, until the queue overflows
            barrier = threading.Barrier(8)

            def client(i, barrier=barrier):
                c = server.client(token)
                body, headers = infer_binary(xs[i % 2])
                barrier.wait()
                r = c.post("/v2/models/narrow/infer", content=body, headers=headers)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    np.testing.assert_array_equal(output_of(r), want[i % 2])
                elif r.status_code != 429 or "max_pending=1" not in r.json()["error"]:
                    errors.append(r.text)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            if 429 in statuses:
                break
        assert not errors and 429 in statuses and 200 in statuses, statuses
        assert 'outcome="rejected"' in server.admin.get("/metrics").text
    finally:
        assert server.admin.post("/v2/repository/models/narrow/unload").status_code == 200
