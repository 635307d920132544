"""The Open Inference Protocol endpoint in front of a cluster: `vfpga serve
--ray --boards u200:2` starts its own local Ray with two emulated boards;
Triton's standard client loads a model with two replicas and infers over
HTTP and gRPC (answers equal the in-process run); re-allocation by
replicas; /metrics per board; the same tokens; SIGTERM stops it all."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import onnx
from harness import ADMIN, ServerProcess, emulated_accelerator

from vfpga.runtime.models import small

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_endpoint_in_front_of_a_cluster(tmp_path, triton_python):
    model = small.small_cnn(seed=3)
    calibration = np.concatenate(small.calibration_inputs(4))
    xs = np.concatenate(small.calibration_inputs(4, seed=9))
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calibration.npy", calibration)
    np.save(tmp_path / "inputs.npy", xs)
    ray_tmp = tempfile.mkdtemp(prefix="vfpga-ray-", dir="/tmp")  # the server's own Ray keeps its files here
    s = ServerProcess(tmp_path / "serve.log", "--ray", "--boards", "u200:2", timeout=180, env={"RAY_TMPDIR": ray_tmp})
    try:
        r = subprocess.run([triton_python, os.path.join(HERE, "triton_cluster_client.py"), f"127.0.0.1:{s.port}",
                            f"127.0.0.1:{s.grpc_port}", ADMIN, str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr + s.log()[-3000:]
        report = json.loads(r.stdout.strip().splitlines()[-1])
        assert report == {"ready": True, "grpc_ready": True}
        accel = emulated_accelerator()
        try:
            alone = accel.deploy(model.SerializeToString(), cores=2, calibration=list(calibration[:, None]))
            want = [alone.run(x[None]) for x in xs]
        finally:
            accel.close()
        with np.load(tmp_path / "outputs.npz") as got:
            assert len(got.files) == 2 * len(xs)
            for key in got.files:
                np.testing.assert_array_equal(got[key], want[int(key[-1])], err_msg=key)
        meta = s.admin.get("/v2").json()
        assert meta["board"] == "u200x2"
        metrics = s.admin.get("/metrics").text
        assert 'vfpga_board_up{board="0",kind="u200"} 1.0' in metrics
        assert 'vfpga_board_up{board="1",kind="u200"} 1.0' in metrics
        assert 'vfpga_replicas{model="pooled"} 2.0' in metrics
        served = sum(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("vfpga_board_requests_total{"))
        assert served == 2 * len(xs)
        assert 'vfpga_board_clock_seconds{board="0",source="modeled"}' in metrics
        r = s.admin.post("/v2/repository/models/pooled/reallocate", json={"replicas": 1, "cores": 4})
        assert r.status_code == 200, r.text
        assert len(r.json()["replicas"]) == 1 and len(r.json()["replicas"][0]["cores"]) == 4
        r = s.admin.post("/v2/repository/models/pooled/reallocate", json={"replicas": 0})
        assert r.status_code == 400 and "replicas must be a count >= 1" in r.json()["error"]
        with s.client("pooled-token-0123456789abc") as c:  # the model's own token, not the admin's, for inference
            assert c.get("/v2/models/pooled").status_code == 200
            assert c.get("/metrics").status_code == 403
        r = s.admin.post("/v2/repository/models/more/load", json={"parameters": {
            "config": json.dumps({"replicas": 3, "cores": 16}),
            "file:1/model.onnx": base64.b64encode(model.SerializeToString()).decode()}})
        assert r.status_code == 409 and "room for 1" in r.json()["error"], r.text
    finally:
        rc = s.stop(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert rc == 0, s.log()[-3000:]
    log = s.log()
    assert "load model=pooled" in log and "stopped: every tenant unloaded, the boards released" in log
