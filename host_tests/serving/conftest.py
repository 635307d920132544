"""Fixtures of the serving tests: a real `vfpga serve` process on localhost
(an emulated u200 with small banks underneath), clients for it, the models
it serves and what the in-process runtime computes for them.

The server process and the standard client's environment (the
``triton_python`` fixture) are shared with the cluster tests: harness.py and
host_tests/conftest.py.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from harness import ADMIN, ServerProcess, emulated_accelerator  # noqa: F401 - the serving tests import them here

from vfpga.runtime.models import small
from vfpga.runtime.serving import protocol


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
