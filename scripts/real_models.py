#!/usr/bin/env python3
"""Real exported models on the emulated board with the README's two calls:
``vfpga.open`` and ``deploy(..., input_shape=...)``. For each model: the
exporter and opset, where its MACs run, and the cosine of its output(s)
against onnxruntime on the float model (and, for the CNNs, against
onnxruntime on the same int8 QDQ model: what quantization alone costs).

    python scripts/real_models.py [--download] [--dir DIR] [--inputs N] [--board u200] [MODEL ...]

The models come from public packages' wheels (``pip download`` into DIR,
default $VFPGA_REAL_MODELS or /tmp/vfpga-real-models; --download fetches
them); nothing is written into the repository. Figures are measured on the
emulated board (the HLS C++ of the cores, C-simulated).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort

import vfpga
from vfpga.runtime.models import real


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def evaluate(ov, name: str, data: bytes, n_inputs: int, seed: int = 0, n_calibration: int = 16) -> dict:
    m = real.MODELS[name]
    proto = onnx.load_from_string(data)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    rng = np.random.default_rng(seed)
    calibration = [real.inputs(name, rng) for _ in range(n_calibration)]
    t0 = time.perf_counter()
    net = ov.deploy(data, cores=4, calibration=calibration, input_shape=m.input_shape, name=name)
    deploy_s = time.perf_counter() - t0
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    qdq = None
    if m.kind == "cnn":
        from vfpga.runtime.compiler import frontend

        q = frontend.quantize(data, calibration, input_shape=m.input_shape)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        qdq = ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    cos, cos_q, host_s = [], [], []
    for _ in range(n_inputs):
        x = real.inputs(name, rng)
        feeds = x if isinstance(x, dict) else {sess.get_inputs()[0].name: x}
        t = time.perf_counter()
        got = net.run(x)
        host_s.append(time.perf_counter() - t)
        want = sess.run(None, feeds)
        got = got if isinstance(got, list) else [got]
        cos.append([cosine(g, w) for g, w in zip(got, want)])
        if qdq is not None:
            cos_q.append(cosine(got[0], qdq.run(None, feeds)[0]))
    share = net.mac_share()
    stats = ov.stats()
    cpu_ms = [s.host_cpu_ms for k, s in stats.items() if k.split(".")[0] == name and s.host_cpu_ms is not None]
    ov.remove(net)
    return {"model": name, "exporter": f"{m.exporter} ({proto.producer_name or '?'} "
                                       f"{proto.producer_version or ''})".replace(" )", ")"),
            "opset": opset, "mac_share": share.share, "macs": share.total, "host_reasons": share.reasons,
            "cos_float": np.min(np.array(cos), axis=0).tolist(), "cos_qdq": min(cos_q) if cos_q else None,
            "deploy_s": deploy_s, "run_s": float(np.mean(host_s)),
            "host_cpu_ms": sum(cpu_ms) if cpu_ms else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=list(real.MODELS))
    ap.add_argument("--dir", default=real.DEFAULT_DIR)
    ap.add_argument("--download", action="store_true", help="pip download the packages' wheels when missing")
    ap.add_argument("--inputs", type=int, default=3)
    ap.add_argument("--board", default="u200")
    args = ap.parse_args(argv)
    directory = real.fetch(args.dir, args.download)
    with vfpga.open(args.board) as ov:
        for name in args.models:
            data = real.model_bytes(name, directory)
            if data is None:
                print(f"{name}: not found in {directory} (run with --download)")
                continue
            r = evaluate(ov, name, data, args.inputs)
            outs = ", ".join(f"{c:.4f}" for c in r["cos_float"])
            print(f"{name}: {r['exporter']}, opset {r['opset']}: {r['mac_share'] * 100:.1f} % of {r['macs']:,} MACs "
                  f"on the accelerator; cosine vs onnxruntime float (worst of {args.inputs}): {outs}"
                  + (f"; vs the int8 QDQ model: {r['cos_qdq']:.4f}" if r["cos_qdq"] is not None else "")
                  + f"; deploy {r['deploy_s']:.1f} s, request {r['run_s'] * 1e3:.0f} ms host (emulated)"
                  + (f", CPU parts {r['host_cpu_ms']:.1f} ms" if r["host_cpu_ms"] is not None else ""))
            for node, why in r["host_reasons"].items():
                print(f"    on the host: {node}: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
