"""Fixtures of the serving tests: a real `vfpga serve` process on localhost
(an emulated u200 with small banks underneath), clients for it, the models
it serves and what the in-process runtime computes for them.

tritonclient (the standard client) lives in an environment of its own,
``.venv-client/`` at the repository's root (its gRPC extra needs a newer
grpcio and protobuf than pynq allows here); the ``triton_python`` fixture
creates it on first use (about 20 s) and skips, saying why, where it cannot.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import onnx
import pytest
from harness import REPO_ROOT, emulated_accelerator

from vfpga.runtime.models import small
from vfpga.runtime.serving import protocol

ADMIN = "admin-token-for-the-serving-tests"
READY = re.compile(r"ready: http://127\.0\.0\.1:(\d+) (?:grpc 127\.0\.0\.1:(\d+)|no grpc)")
CLIENT_VENV = os.path.join(REPO_ROOT, ".venv-client")
CLIENT_PACKAGES = ["tritonclient[http,grpc]"]


class ServerProcess:
    """`vfpga serve` in a subprocess; its log goes to a file."""

    def __init__(self, log_path, *args: str, timeout: float = 60.0):
        self.log_path = str(log_path)
        env = {**os.environ, "VFPGA_ADMIN_TOKEN": ADMIN}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from vfpga.runtime.cli import main; sys.exit(main())", "serve",
                 "--port", "0", "--grpc-port", "0",
                 "--bank-mib", "16", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout
        while True:
            m = READY.search(self.log())
            if m:
                self.port, self.grpc_port = int(m[1]), m[2] and int(m[2])
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"vfpga serve did not come up:\n{self.log()}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("VmRSS:")))

    def load(self, name: str, model: onnx.ModelProto | bytes, config: dict | None = None,
             calibration: np.ndarray | None = None) -> dict:
        """Loads through the repository extension as Triton's HTTP client does; returns the reply."""
        params = {"file:1/model.onnx": base64.b64encode(
            model if isinstance(model, bytes) else model.SerializeToString()).decode()}
        config = dict(config or {})
        if calibration is not None:
            buf = io.BytesIO()
            np.save(buf, calibration)
            params["file:calibration.npy"] = base64.b64encode(buf.getvalue()).decode()
            config["calibration"] = "calibration.npy"
        params["config"] = json.dumps(config)
        r = self.admin.post(f"/v2/repository/models/{name}/load", json={"parameters": params})
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            self.admin.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("serve") / "serve.log")
    yield s
    assert s.stop() == 0, s.log()


# ---- models and what the runtime computes for them in-process

CALIBRATION = np.concatenate(small.calibration_inputs(4))
MODELS = {"cnn0": lambda: small.small_cnn(seed=0), "cnn1": lambda: small.small_cnn(seed=1),
          "flat": lambda: small.flatten_cnn(seed=0)}


def inputs(n: int, seed: int) -> list[np.ndarray]:
    return small.calibration_inputs(n, seed=seed)


@pytest.fixture(scope="session")
def reference():
    """reference(kind, xs) -> the in-process runtime's outputs for ``xs`` on
    the model ``kind`` deployed with the same calibration as the server's."""
    accel = emulated_accelerator()
    tenants = {}

    def run(kind: str, xs):
        if kind not in tenants:
            tenants[kind] = accel.deploy(MODELS[kind]().SerializeToString(), cores=1, name=kind,
                                         calibration=list(CALIBRATION[:, None]))
        return [tenants[kind].run(x) for x in xs]

    yield run
    accel.close()


def infer_json(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.ravel().tolist()}]}


def infer_binary(x: np.ndarray) -> tuple[bytes, dict]:
    """(body, headers) of a binary-extension request asking for binary outputs."""
    return protocol.encode_binary_request({"input": x})


def output_of(r: httpx.Response) -> np.ndarray:
    """The single output of an inference reply (JSON or binary)."""
    assert r.status_code == 200, r.text
    (y,) = protocol.decode_response(r.content, r.headers.get("inference-header-content-length")).values()
    return y


# ---- the standard client, in its own environment


@pytest.fixture(scope="session")
def triton_python():
    """The python of .venv-client with tritonclient[http,grpc] (created on first use)."""
    py = os.path.join(CLIENT_VENV, "bin", "python")
    probe = [py, "-c", "import tritonclient.http, tritonclient.grpc"]
    if os.path.exists(py) and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    t0 = time.monotonic()
    steps = [[sys.executable, "-m", "venv", "--clear", CLIENT_VENV],
             [py, "-m", "pip", "install", "--quiet", *CLIENT_PACKAGES]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"cannot create the tritonclient environment ({' '.join(cmd[:4])}): "
                        f"{(r.stderr or r.stdout)[-500:]}")
    print(f"created {CLIENT_VENV} in {time.monotonic() - t0:.1f} s")
    return py
