"""Runs in the tritonclient environment (.venv-client), not under pytest:
drives a live `vfpga serve` with Triton's standard Python client, HTTP or
gRPC, and reports what happened as JSON on stdout (outputs into an .npz).

    python triton_client.py http|grpc URL ADMIN_TOKEN WORKDIR

WORKDIR holds model.onnx, calibration.npy and inputs.npy; the script
writes outputs.npz there.
"""

import json
import os
import sys

import numpy as np


def main():
    proto, url, admin, work = sys.argv[1:5]
    if proto == "http":
        import tritonclient.http as tc
    else:
        import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(url)
    name = f"triton-{proto}"
    token = f"{name}-token-0123456789"
    auth = "Authorization" if proto == "http" else "authorization"  # gRPC metadata keys are lower case
    admin_h = {auth: f"Bearer {admin}"}
    tenant_h = {auth: f"Bearer {token}"}
    report = {"live": client.is_server_live(), "ready": client.is_server_ready()}
    with open(os.path.join(work, "model.onnx"), "rb") as f:
        model = f.read()
    with open(os.path.join(work, "calibration.npy"), "rb") as f:
        calibration = f.read()
    config = json.dumps({"cores": 2, "token": token, "max_pending": 8, "calibration": "calibration.npy"})
    client.load_model(name, headers=admin_h, config=config,
                      files={"file:1/model.onnx": model, "file:calibration.npy": calibration})
    report["model_ready"] = client.is_model_ready(name, headers=tenant_h)
    meta = client.get_model_metadata(name, headers=tenant_h)
    if proto == "grpc":
        meta = {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs]}
    report["metadata"] = {"inputs": meta["inputs"], "outputs": meta["outputs"]}
    index = client.get_model_repository_index(headers=admin_h)
    report["index"] = sorted(m["name"] if proto == "http" else m.name
                             for m in (index if proto == "http" else index.models))

    xs = np.load(os.path.join(work, "inputs.npy"))

    def infer(x, headers, input_name="input", datatype="FP32", binary=True):
        inp = tc.InferInput(input_name, list(x.shape), datatype)
        if proto == "http":
            inp.set_data_from_numpy(x, binary_data=binary)
            out = [tc.InferRequestedOutput("fc", binary_data=binary)]
        else:
            inp.set_data_from_numpy(x)
            out = [tc.InferRequestedOutput("fc")]
        # a copy: tritonclient's HTTP infer adds Inference-Header-Content-Length to the dict it is given
        return client.infer(name, [inp], outputs=out, headers=dict(headers)).as_numpy("fc")

    outputs = {}
    for i, x in enumerate(xs):
        outputs[f"binary{i}"] = infer(x[None], tenant_h)
        if proto == "http":
            outputs[f"json{i}"] = infer(x[None], tenant_h, binary=False)
    np.savez(os.path.join(work, f"outputs_{proto}.npz"), **outputs)

    def error(fn):
        try:
            fn()
        except InferenceServerException as e:
            return {"status": str(e.status()), "message": e.message()}
        return None

    x = xs[0][None]
    report["errors"] = {
        "no token": error(lambda: infer(x, {})),
        "wrong token": error(lambda: infer(x, {auth: "Bearer wrong-token-0123456789"})),
        "wrong input name": error(lambda: infer(x, tenant_h, input_name="image")),
        "wrong shape": error(lambda: infer(x[..., :16], tenant_h)),
        "wrong datatype": error(lambda: infer(x.astype(np.float64), tenant_h, datatype="FP64")),
        "unknown model": error(lambda: client.get_model_metadata("nosuch", headers=admin_h)),
        "tenant loads": error(lambda: client.load_model("x", headers=tenant_h, config="{}",
                                                        files={"file:m.onnx": model})),
        "malformed model": error(lambda: client.load_model("junk", headers=admin_h, config="{}",
                                                           files={"file:m.onnx": b"\x08\x01not onnx" * 10})),
    }
    report["after errors"] = np.array_equal(infer(x, tenant_h), outputs["binary0"])
    client.unload_model(name, headers=admin_h)
    report["after unload"] = error(lambda: infer(x, tenant_h))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
