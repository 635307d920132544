#!/usr/bin/env python3
"""What `vfpga serve` adds to a request, and how many it answers at saturation.

Starts `vfpga serve` on localhost (the emulated board), loads a small model
through the repository extension, then

* latency: one client, requests back to back over a kept-alive connection,
  for HTTP JSON, HTTP binary tensor data and gRPC (raw contents); the same
  model deployed in this process gives the in-process call's latency.
  Server overhead = wire percentile - in-process percentile (p50 and p99,
  microseconds, host-measured; the client's own work counts in the wire
  figures, as it does for any user);
* saturation: several client processes for a few seconds each way;
  requests answered per second, all of them checked.

    python scripts/bench_serving.py                  # flatten_cnn, 2000 requests per transport
    python scripts/bench_serving.py --model small_cnn --requests 500 --clients 4 --seconds 5

Figures are host wall times on this machine (the device underneath is
emulated: its own time is the C-simulation's). Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from vfpga.runtime import tenants
from vfpga.runtime.models import small
from vfpga.runtime.serving import protocol

ADMIN = "bench-admin-token-0123456789"
READY = re.compile(r"ready: http://127\.0\.0\.1:(\d+) grpc 127\.0\.0\.1:(\d+)")
MODELS = {"flatten_cnn": small.flatten_cnn, "small_cnn": small.small_cnn}


def start_server(log_path: str) -> tuple[subprocess.Popen, int, int]:
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from vfpga.runtime.cli import main; sys.exit(main())",
                             "serve", "--port", "0", "--grpc-port", "0", "--bank-mib", "64"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VFPGA_ADMIN_TOKEN": ADMIN})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = READY.search(open(log_path).read())
        if m:
            return proc, int(m[1]), int(m[2])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"vfpga serve did not start:\n{open(log_path).read()}")


class Http:
    """One kept-alive HTTP/1.1 connection with TCP_NODELAY (what a tuned client does)."""

    def __init__(self, port: int, token: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.auth = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        self.conn.request("POST", path, body=body, headers={**self.auth, **headers})
        r = self.conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()


def json_request(x: np.ndarray) -> tuple[bytes, dict]:
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def http_output(status: int, headers: dict, body: bytes) -> np.ndarray:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    n = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
    (y,) = protocol.decode_response(body, n).values()
    return y


def grpc_client(port: int, token: str):
    """A function x -> output over gRPC ModelInfer (raw contents), with the project's message classes."""
    import grpc

    from vfpga.runtime.serving import grpc_api

    pb = grpc_api.messages()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    rpc = channel.unary_unary(f"/{grpc_api.SERVICE}/ModelInfer", request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=pb.ModelInferResponse.FromString)
    md = (("authorization", f"Bearer {token}"),)

    def infer(x: np.ndarray) -> np.ndarray:
        req = pb.ModelInferRequest(model_name="bench")
        req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        r = rpc(req, metadata=md)
        return np.frombuffer(r.raw_output_contents[0], np.float32).reshape(r.outputs[0].shape)

    return infer


def transport(kind: str, port: int, grpc_port: int, token: str):
    """x -> output over one transport (one connection)."""
    if kind == "grpc":
        return grpc_client(grpc_port, token)
    c = Http(port, token)
    make = json_request if kind == "http-json" else lambda x: protocol.encode_binary_request({"input": x})

    def infer(x):
        body, headers = make(x)
        return http_output(*c.post("/v2/models/bench/infer", body, headers))

    return infer


def percentiles(ts: list[float]) -> tuple[float, float]:
    a = np.sort(np.asarray(ts)) * 1e6
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def timed(fn, xs, want, n: int) -> list[float]:
    for i in range(min(50, n)):  # warm-up
        fn(xs[i % len(xs)])
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        y = fn(xs[i % len(xs)])
        out.append(time.perf_counter() - t0)
        if not np.array_equal(y, want[i % len(xs)]):
            raise SystemExit(f"request {i}: a wrong result")
    return out


def _saturate(args) -> tuple[int, int]:
    kind, port, grpc_port, token, xs, want, seconds = args
    fn = transport(kind, port, grpc_port, token)
    done = wrong = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i = done % len(xs)
        if not np.array_equal(fn(xs[i]), want[i]):
            wrong += 1
        done += 1
    return done, wrong


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="flatten_cnn")
    p.add_argument("--requests", type=int, default=2000, help="latency requests per transport (default 2000)")
    p.add_argument("--clients", type=int, default=4, help="client processes at saturation (default 4)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds of saturation per transport (default 5)")
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()

    model = MODELS[args.model](0)
    calibration = small.calibration_inputs(8, seed=1)
    xs = small.calibration_inputs(4, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, grpc_port = start_server(os.path.join(tmp, "serve.log"))
        try:
            buf = io.BytesIO()
            np.save(buf, np.concatenate(calibration))
            admin = Http(port, ADMIN)
            status, _, body = admin.post("/v2/repository/models/bench/load", json.dumps({"parameters": {
                "config": json.dumps({"cores": args.cores, "calibration": "c.npy"}),
                "file:1/model.onnx": base64.b64encode(model.SerializeToString()).decode(),
                "file:c.npy": base64.b64encode(buf.getvalue()).decode()}}).encode(), {})
            if status != 200:
                raise SystemExit(f"load failed: {status} {body!r}")
            token = json.loads(body)["token"]

            accel = tenants.open("u200", emulate=True)
            local = accel.deploy(model.SerializeToString(), cores=args.cores, calibration=calibration, name="bench")
            want = [local.run(x) for x in xs]
            inproc = percentiles(timed(local.run, xs, want, args.requests))
            accel.close()

            print(f"vfpga serve overhead, {args.model} on {args.cores} emulated cores, {args.requests} sequential "
                  f"requests per transport, {os.cpu_count()}-core host (host-measured)")
            print(f"{'':14s}{'p50 us':>10s}{'p99 us':>10s}{'overhead p50':>14s}{'overhead p99':>14s}")
            print(f"{'in-process':14s}{inproc[0]:10.0f}{inproc[1]:10.0f}")
            for kind in ("http-json", "http-binary", "grpc"):
                w = percentiles(timed(transport(kind, port, grpc_port, token), xs, want, args.requests))
                print(f"{kind:14s}{w[0]:10.0f}{w[1]:10.0f}{w[0] - inproc[0]:14.0f}{w[1] - inproc[1]:14.0f}")

            print(f"\nsaturation: {args.clients} client processes x {args.seconds:.0f} s, every result checked")
            with mp.get_context("spawn").Pool(args.clients) as pool:
                for kind in ("http-binary", "grpc"):
                    res = pool.map(_saturate, [(kind, port, grpc_port, token, xs, want, args.seconds)] * args.clients)
                    done, wrong = sum(r[0] for r in res), sum(r[1] for r in res)
                    print(f"{kind:14s}{done / args.seconds:10.0f} requests/s  ({done} answered, {wrong} wrong)")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    main()
