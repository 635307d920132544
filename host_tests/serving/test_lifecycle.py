"""The server's life: SIGTERM with requests in flight (each is answered or
refused with an error, none lost), a tenant's fault reported to its own
clients only, the gRPC endpoint without the standard client, and a soak
whose memory stays flat."""

from __future__ import annotations

import io
import signal
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
from conftest import ADMIN, CALIBRATION, MODELS, ServerProcess, infer_binary, inputs, output_of

from vfpga.runtime.serving import grpc_api


def test_sigterm_answers_or_refuses_every_request(tmp_path, reference):
    s = ServerProcess(tmp_path / "serve.log")
    token = s.load("vision", MODELS["cnn0"](), {"cores": 1, "max_pending": 64}, calibration=CALIBRATION)["token"]
    xs = inputs(2, seed=31)
    want = reference("cnn0", xs)
    outcomes, lock = [], threading.Lock()  # (sent at, answered at, "ok" | status | "refused")
    stop_at = [None]

    def client(i):
        c = s.client(token)
        for k in range(10_000):
            j = (i + k) % 2
            body, headers = infer_binary(xs[j])
            sent = time.monotonic()
            try:
                r = c.post("/v2/models/vision/infer", content=body, headers=headers, timeout=60)
            except httpx.TransportError as e:  # the connection was refused or closed: the client knows
                with lock:
                    outcomes.append((sent, time.monotonic(), f"refused: {type(e).__name__}"))
                if stop_at[0] is not None:
                    return
                continue
            if r.status_code == 200:
                np.testing.assert_array_equal(output_of(r), want[j])
                result = "ok"
            else:
                assert r.status_code == 503 and "shutting down" in r.json()["error"], r.text
                result = "503"
            with lock:
                outcomes.append((sent, time.monotonic(), result))
            if stop_at[0] is not None and result != "ok":
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(outcomes) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop_at[0] = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a client is still waiting: a request was lost"
    assert s.proc.wait(60) == 0, s.log()
    log = s.log()
    assert "shutdown: refusing new requests" in log and "stopped: every tenant unloaded" in log
    # requests queued at the signal (8 clients, one tenant: several in its queue) were answered
    in_flight = [o for o in outcomes if o[0] < stop_at[0] < o[1]]
    assert in_flight and any(o[2] == "ok" for o in in_flight), outcomes[-20:]
    assert {o[2] for o in outcomes} <= {"ok", "503"} | {o[2] for o in outcomes if o[2].startswith("refused")}
    s.admin.close()


def _grpc(port):
    pb = grpc_api.messages()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(method, request, response, token=None):
        md = (("authorization", f"Bearer {token}"),) if token else ()
        rpc = channel.unary_unary(f"/{grpc_api.SERVICE}/{method}", request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=response.FromString)
        return rpc(request, metadata=md)

    return pb, call, channel


def test_grpc_endpoint(server, reference):
    """The gRPC service with stubs from the project's own proto (the default
    run's cover when the tritonclient environment cannot be made)."""
    pb, call, channel = _grpc(server.grpc_port)
    try:
        assert call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse).live
        load = pb.RepositoryModelLoadRequest(model_name="g")
        load.parameters["file:m.onnx"].bytes_param = MODELS["flat"]().SerializeToString()
        buf = io.BytesIO()
        np.save(buf, CALIBRATION)
        load.parameters["file:c.npy"].bytes_param = buf.getvalue()
        load.parameters["config"].string_param = '{"cores": 1, "calibration": "c.npy"}'
        _, info = channel.unary_unary(f"/{grpc_api.SERVICE}/RepositoryModelLoad",
                                      request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=pb.RepositoryModelLoadResponse.FromString).with_call(
            load, metadata=(("authorization", f"Bearer {ADMIN}"),))
        token = dict(info.trailing_metadata())["vfpga-token"]
        x = inputs(1, seed=32)[0]
        req = pb.ModelInferRequest(model_name="g", id="r1")
        req.inputs.add(name="input", datatype="FP32", shape=list(x.shape)).contents.fp32_contents.extend(x.ravel())
        r = call("ModelInfer", req, pb.ModelInferResponse, token)
        assert r.id == "r1" and r.outputs[0].datatype == "FP32"
        got = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(r.outputs[0].shape)
        np.testing.assert_array_equal(got, reference("flat", [x])[0])
        with pytest.raises(grpc.RpcError) as e:
            call("ModelInfer", req, pb.ModelInferResponse, "wrong-token-0123456789")
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        req.raw_input_contents.append(b"\0" * 12)
        with pytest.raises(grpc.RpcError) as e:
            call("ModelInfer", req, pb.ModelInferResponse, token)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "12 bytes of data" in e.value.details()
        call("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="g"),
             pb.RepositoryModelUnloadResponse, ADMIN)
    finally:
        channel.close()


def test_a_faulting_tenant_is_reported_to_its_clients_only(server, tmp_path):
    """An IFP whose program writes outside its segment: its clients get the
    fault with its code, the neighbour runs on, the admin resets it."""
    from harness import corrupt, random_inputs

    from vfpga.runtime.compiler import ifp, static
    from vfpga.runtime.hw import golden
    from vfpga.runtime.models import small

    good, bad = small.conv_graph(1), small.conv_graph(2)
    for name, graph, how in (("good", good, None), ("bad", bad, "past-end")):
        compiled = static.compile_graph(graph, "u200")
        if how:
            compiled = corrupt(compiled, how)[0]
        ifp.save(compiled, str(tmp_path / f"{name}.ifp"))
    tokens = {n: server.load(n, (tmp_path / f"{n}.ifp").read_bytes()) for n in ("good", "bad")}
    assert tokens["bad"]["platform"] == "vfpga_ifp" and tokens["bad"]["inputs"][0]["datatype"] == "INT8"
    x = random_inputs(good, 1, seed=33)[0]

    def infer(name):
        doc = {"inputs": [{"name": tokens[name]["inputs"][0]["name"], "datatype": "INT8", "shape": list(x.shape),
                           "data": x.ravel().tolist()}]}
        return server.client(tokens[name]["token"]).post(f"/v2/models/{name}/infer", json=doc)

    r = infer("bad")
    assert r.status_code == 500 and "FAULT: SEGMENT" in r.json()["error"], r.text
    r = infer("bad")
    assert r.status_code == 409 and "stopped by an earlier fault" in r.json()["error"]
    r = infer("good")
    out = r.json()["outputs"][0]
    np.testing.assert_array_equal(np.asarray(out["data"], np.int8).reshape(out["shape"]),
                                  golden.run_graph(good, x)[good.outputs[0]])
    assert server.admin.get("/v2/models/bad/ready").status_code == 503
    assert server.admin.post("/v2/repository/models/bad/reset").status_code == 200
    assert "fault model=bad" in server.log() and "reset model=bad" in server.log()
    for n in ("good", "bad"):
        assert server.admin.post(f"/v2/repository/models/{n}/unload").status_code == 200


@pytest.mark.slow
def test_soak_memory_stays_flat(tmp_path, reference):
    """10,000 requests (binary, four keep-alive clients): server RSS grows
    by less than 16 MiB after a 1,000-request warm-up."""
    s = ServerProcess(tmp_path / "serve.log")
    try:
        token = s.load("soak", MODELS["flat"](), {"cores": 2}, calibration=CALIBRATION)["token"]
        xs = inputs(4, seed=34)
        want = reference("flat", xs)
        counts, errors = [0], []

        def client(i, n):
            c = s.client(token)
            for k in range(n):
                j = (i + k) % 4
                body, headers = infer_binary(xs[j])
                r = c.post("/v2/models/soak/infer", content=body, headers=headers)
                try:
                    np.testing.assert_array_equal(output_of(r), want[j])
                except AssertionError as e:
                    errors.append(str(e))
                counts[0] += 1

        def burst(n):
            threads = [threading.Thread(target=client, args=(i, n // 4)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)

        burst(1_000)
        before = s.rss_kib()
        burst(9_000)
        after = s.rss_kib()
        print(f"soak: server RSS {before} KiB after 1,000 requests, {after} KiB after 10,000")
        assert not errors and counts[0] == 10_000
        assert after - before < 16 * 1024, f"RSS grew from {before} KiB to {after} KiB over 9,000 requests"
        metrics = s.admin.get("/metrics").text
        assert 'vfpga_requests_total{model="soak",outcome="ok"} 10000.0' in metrics
    finally:
        assert s.stop() == 0


def test_serve_refuses_a_bad_quota_file(tmp_path, capsys):
    from vfpga.runtime.cli import main

    bad = tmp_path / "quotas.json"
    bad.write_text('{"default": {"max_gpus": 2}}')
    assert main(["serve", "--port", "0", "--quotas", str(bad)]) == 2
    assert "unknown keys ['max_gpus']" in capsys.readouterr().err
