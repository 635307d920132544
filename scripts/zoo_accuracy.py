#!/usr/bin/env python3
"""Accuracy of whole CNNs on the emulated accelerator against onnxruntime.

For networks of the ONNX light model zoo (random weights, fixed seed):
quantize with onnxruntime, compile (CPU fallback for what the cores lack),
deploy on one emulated core, then
  * per layer: every accelerator layer runs alone on the emulated core, fed
    onnxruntime's own int8 input(s) of that layer, and its output is compared
    with onnxruntime's (max LSB difference, fraction identical);
  * end to end on N random inputs: the emulator against the golden model
    (bit-exact count) and against onnxruntime on the same QDQ model (max LSB
    difference of the int8 output, cosine similarity, top-1 agreement).
onnxruntime runs the QDQ graph as written (graph optimizations off); its
fused int8 kernels round differently on some CPUs.

    python scripts/zoo_accuracy.py [--models resnet50 vgg19 squeezenet inception_v1] [--inputs 8]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def layer_agreement(tenant, graph, ort_values):
    """(layers compared, layers skipped, worst LSB, fraction identical)."""
    c = tenant.compiled
    worst, same, total, compared, skipped = 0, 0, 0, 0, 0
    for li in c.layers:
        if li.kind not in ("conv", "pool", "add"):
            continue
        names = li.inputs + [li.output]
        if not all(n in ort_values for n in names):
            skipped += 1  # a tensor the compiler made (exact copy) has no onnxruntime twin
            continue
        for n in li.inputs:
            tenant._write(c.tensors[n], ort_values[n])
        rows = c.frames[(c.frames["layer"] == li.index) & (c.frames["variant"] == 0)]
        for r in rows:
            res = tenant.core.run(tenant.segment.physical_address, tenant.segment.size, int(r["offset"]),
                                  int(r["n_insns"]))
            if not res.ok:
                raise RuntimeError(f"layer {li.name}: {res.fault_name}")
        got = tenant._read(c.tensors[li.output]).astype(np.int32)
        want = ort_values[li.output].astype(np.int32)
        d = np.abs(got - want)
        worst = max(worst, int(d.max()))
        same += int((d == 0).sum())
        total += d.size
        compared += 1
    return compared, skipped, worst, same / max(total, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "vgg19", "squeezenet", "inception_v1"])
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--board", default="u200")
    a = p.parse_args(argv)

    from vfpga.runtime import tenants
    from vfpga.runtime.compiler import frontend, static
    from vfpga.runtime.compiler.frontend.reference import OrtReference
    from vfpga.runtime.hw import golden
    from vfpga.runtime.models import zoo

    ov = tenants.open(a.board)
    print("| model | layers (cpu) | per-layer max LSB | identical | emulator = golden | e2e max LSB | "
          "cosine (min) | top-1 | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    status = 0
    for name in a.models:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = zoo.load(name, seed=0)
            xs = zoo.random_inputs(model, a.inputs + 2, seed=1)
            qdq = frontend.quantize(model, xs[:2])
        graph = frontend.to_graph(qdq, fallback=True)
        compiled = static.compile_graph(graph, ov.config)
        tenant = ov.deploy(compiled, name=name)
        int8_names = [n for n, t in graph.tensors.items() if t.dtype == "int8"]
        ref = OrtReference(qdq, tensors=int8_names, optimize=False)
        known = set(ref.output_names)
        out = graph.outputs[0]
        exact, worst, cos_min, top1 = 0, 0, 1.0, 0
        layer_stats = None
        for i, x in enumerate(xs[2:]):
            ort_all = ref.run(x)
            ort_hwc = {n: np.ascontiguousarray(ort_all[n][0].transpose(1, 2, 0)) if ort_all[n].ndim == 4
                       else ort_all[n].reshape(graph.tensors[n].shape) for n in int8_names if n in known}
            if i == 0:
                layer_stats = layer_agreement(tenant, graph, ort_hwc)
            x_q = frontend.quantize_input(x, graph.tensors[graph.inputs[0]])
            (y,), _ = tenant.run_quantized(x_q)
            exact += bool(np.array_equal(y, golden.run_graph(graph, x_q)[out]))
            theirs = ort_hwc[out].astype(np.float64).ravel()
            ours = y.astype(np.float64).ravel()
            worst = max(worst, int(np.abs(ours - theirs).max()))
            cos_min = min(cos_min, float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs) or 1)))
            top1 += int(ours.argmax() == theirs.argmax())
        compared, skipped, lw, frac = layer_stats
        n_cpu = sum(layer.kind == "cpu" for layer in graph.layers)
        print(f"| {name} | {len(graph.layers)} ({n_cpu}) | {lw} ({compared} layers, {skipped} copies skipped) | "
              f"{frac:.4%} | {exact}/{a.inputs} | {worst} | {cos_min:.6f} | {top1}/{a.inputs} | "
              f"{time.perf_counter() - t0:.0f} |")
        if lw > 1 or exact != a.inputs:
            status = 1
        ov.remove(tenant)
    ov.close()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
