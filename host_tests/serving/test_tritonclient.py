"""Triton's standard Python client (tritonclient, HTTP and gRPC) against a
live `vfpga serve`: load with files and config, metadata, inference equal
to the in-process runtime, tokens, bad requests, unload. The client runs
in its own environment (see conftest.triton_python)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import onnx
import pytest
from conftest import ADMIN, CALIBRATION, MODELS, inputs

HERE = os.path.dirname(os.path.abspath(__file__))
HTTP_STATUS = {"no token": "401", "wrong token": "401", "wrong input name": "400", "wrong shape": "400",
               "wrong datatype": "400", "unknown model": "404", "tenant loads": "403", "malformed model": "400"}
GRPC_STATUS = {"401": "StatusCode.UNAUTHENTICATED", "400": "StatusCode.INVALID_ARGUMENT",
               "404": "StatusCode.NOT_FOUND", "403": "StatusCode.PERMISSION_DENIED"}


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_the_standard_client(server, triton_python, reference, tmp_path, proto):
    onnx.save(MODELS["cnn0"](), str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calibration.npy", CALIBRATION)
    xs = np.concatenate(inputs(3, seed=21))
    np.save(tmp_path / "inputs.npy", xs)
    url = f"127.0.0.1:{server.port if proto == 'http' else server.grpc_port}"
    r = subprocess.run([triton_python, os.path.join(HERE, "triton_client.py"), proto, url, ADMIN, str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + server.log()[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    name = f"triton-{proto}"
    assert report["live"] and report["ready"] and report["model_ready"]
    assert report["metadata"] == {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32]}],
                                  "outputs": [{"name": "fc", "datatype": "FP32", "shape": [1, 10]}]}
    assert name in report["index"]
    want = reference("cnn0", [x[None] for x in xs])
    with np.load(tmp_path / f"outputs_{proto}.npz") as got:
        assert len(got.files) == (6 if proto == "http" else 3)
        for key in got.files:
            np.testing.assert_array_equal(got[key], want[int(key[-1])], err_msg=key)
    for what, status in HTTP_STATUS.items():
        e = report["errors"][what]
        assert e is not None, what
        assert e["status"] == (status if proto == "http" else GRPC_STATUS[status]), (what, e)
    assert "not found" in report["errors"]["unknown model"]["message"]
    assert "has no input 'image'" in report["errors"]["wrong input name"]["message"]
    assert "not an ONNX model" in report["errors"]["malformed model"]["message"]
    assert report["after errors"] is True
    assert report["after unload"] is not None
    assert f"load model={name}" in server.log() and f"unload model={name}" in server.log()
