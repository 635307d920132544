"""Runs in the tritonclient environment (.venv-client), not under pytest:
loads a model with replicas (two requests in flight each) into a `vfpga serve --ray` cluster with
Triton's standard HTTP client, infers over HTTP and gRPC, and reports what
happened as JSON on stdout (outputs into WORKDIR/outputs.npz).

    python triton_cluster_client.py HTTP_URL GRPC_URL ADMIN_TOKEN WORKDIR
"""

import json
import os
import sys

import numpy as np


def main():
    http_url, grpc_url, admin, work = sys.argv[1:5]
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    h = httpclient.InferenceServerClient(http_url)
    g = grpcclient.InferenceServerClient(grpc_url)
    name, token = "pooled", "pooled-token-0123456789abc"
    with open(os.path.join(work, "model.onnx"), "rb") as f:
        model = f.read()
    with open(os.path.join(work, "calibration.npy"), "rb") as f:
        calibration = f.read()
    config = json.dumps({"cores": 2, "replicas": 2, "token": token, "calibration": "calibration.npy",
                         "max_inflight": 2})  # each replica holds two requests in flight
    h.load_model(name, headers={"Authorization": f"Bearer {admin}"}, config=config,
                 files={"file:1/model.onnx": model, "file:calibration.npy": calibration})
    report = {"ready": h.is_model_ready(name, headers={"Authorization": f"Bearer {token}"}),
              "grpc_ready": g.is_model_ready(name, headers={"authorization": f"Bearer {token}"})}
    xs = np.load(os.path.join(work, "inputs.npy"))
    outs = {}
    for i, x in enumerate(xs):
        x = x[None]
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        r = h.infer(name, [inp], headers={"Authorization": f"Bearer {token}"})
        outs[f"http{i}"] = r.as_numpy("fc")
        ginp = grpcclient.InferInput("input", list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        r = g.infer(name, [ginp], headers={"authorization": f"Bearer {token}"})
        outs[f"grpc{i}"] = r.as_numpy("fc")
    np.savez(os.path.join(work, "outputs.npz"), **outs)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
