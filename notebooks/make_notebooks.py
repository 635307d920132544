"""Writes the vfpga notebooks (nbformat 4 JSON) from the cell sources below,
so that they are reviewed as code and never carry stale outputs. Run it after
editing: python3 notebooks/make_notebooks.py"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''import numpy as np  # noqa: F401 - used by the cells below in some notebooks

import vfpga

BOARD = "u200"   # on a board: the board's config name (zcu104, ultra96v2, pynq_z2, u200, u50)
ov = vfpga.open(BOARD)
print(ov.mode, ov.board, len(ov.cores), "CNN cores")'''

NOTEBOOKS = {
    "1_getting_started.ipynb": [
        ("md", "# vfpga: getting started\n\nOne FPGA shared by many DNN tenants. `vfpga.open` picks the board "
               "where one is loaded and the emulated board elsewhere; `ov.mode` says which. Every figure below "
               "says whether it is *modeled* (emulation) or *measured* (board counters)."),
        ("code", SETUP),
        ("md", "## Deploy a float ONNX CNN\n\nIt is quantized with onnxruntime, compiled once (static stage) and "
               "placed on 2 cores (dynamic stage)."),
        ("code", '''import os
import tempfile

import onnx
import onnxruntime as ort

from vfpga.runtime.models import small

path = os.path.join(tempfile.mkdtemp(), "small_cnn.onnx")
onnx.save(small.small_cnn(seed=0), path)
net = ov.deploy(path, cores=2, name="vision", calibration=small.calibration_inputs(16, seed=1))
net.cores'''),
        ("code", '''x = small.calibration_inputs(1, seed=7)[0]
y = net.run(x)
ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
print("accelerator:", y.ravel()[:5])
print("onnxruntime:", ref.ravel()[:5])
print("correlation:", float(np.corrcoef(y.ravel(), ref.ravel())[0, 1]))
assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.98'''),
        ("code", '''s = ov.stats()["vision"]
print(f"{s.requests} requests, device latency {s.latency_ms:.3f} ms ({s.source}), host {s.host_latency_ms}")'''),
        ("code", "ov.close()"),
    ],
    "2_multi_tenant_sharing.ipynb": [
        ("md", "# Multi-tenant sharing with live re-allocation\n\nTwo tenants stream requests from their own "
               "threads while their cores are re-allocated twice; every result is checked against the golden "
               "model, so a request lost or computed wrong would show."),
        ("code", SETUP),
        ("code", '''import threading

from vfpga.runtime.compiler import frontend
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small

tenants = {"vision": ov.deploy(small.small_cnn(0), cores=8, name="vision",
                               calibration=small.calibration_inputs(8, seed=1)),
           "flat": ov.deploy(small.flatten_cnn(1), cores=4, name="flat",
                             calibration=small.calibration_inputs(8, seed=2))}
{n: t.cores for n, t in tenants.items()}'''),
        ("code", '''def stream(t, n, seed, out):
    g = t.graph
    for x in small.calibration_inputs(n, seed):
        xq = frontend.quantize_input(x, g.tensors[g.inputs[0]])
        (y,), _ = t.run_quantized(xq)
        out.append(np.array_equal(y, golden.run_graph(g, xq)[g.outputs[0]]))

results = {n: [] for n in tenants}
threads = [threading.Thread(target=stream, args=(t, 12, i, results[n])) for i, (n, t) in enumerate(tenants.items())]
for th in threads:
    th.start()
moves = [ov.reallocate({"vision": 4, "flat": 8}), ov.reallocate({"flat": [8, 9, 10, 11, 12, 13, 14, 15]})]
for th in threads:
    th.join()
for m in moves:
    print(m.describe())
print({n: f"{sum(r)}/{len(r)} correct" for n, r in results.items()})
assert all(all(r) and len(r) == 12 for r in results.values())'''),
        ("code", '''for name, s in ov.stats().items():
    print(f"{name}: cores {s.cores}, {s.requests} requests, utilisation "
          f"{s.utilisation if s.utilisation is None else round(s.utilisation, 2)} ({s.source})")
ov.close()'''),
    ],
    "3_benchmarks.ipynb": [
        ("md", "# Benchmarks\n\nModeled latency (emulation: the cycle model; on a board: measured counters) "
               "of one model against the number of cores, and the cost of re-targeting it (the dynamic stage)."),
        ("code", SETUP),
        ("code", '''import time

import matplotlib.pyplot as plt

from vfpga.runtime.compiler import frontend
from vfpga.runtime.models import small

net = ov.deploy(small.small_cnn(0), cores=1, name="bench", calibration=small.calibration_inputs(8, seed=1))
g = net.graph
xq = frontend.quantize_input(small.calibration_inputs(1, seed=3)[0], g.tensors[g.inputs[0]])
cores, latency_ms, retarget_ms = [], [], []
for k in (1, 2, 4, 8):
    if k > len(ov.cores):
        break
    t0 = time.perf_counter()
    ov.reallocate({"bench": k})
    retarget_ms.append((time.perf_counter() - t0) * 1e3)
    _, info = net.run_quantized(xq)
    cores.append(k)
    latency_ms.append(info.modeled_seconds * 1e3)
list(zip(cores, latency_ms))'''),
        ("code", '''fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
a.plot(cores, latency_ms, "o-")
a.set(xlabel="CNN cores", ylabel=f"latency (ms, {ov.stats()['bench'].source})", title="one request")
b.bar([str(c) for c in cores], retarget_ms)
b.set(xlabel="CNN cores", ylabel="reallocate (ms, host)", title="live re-targeting")
fig.tight_layout()
assert latency_ms[-1] <= latency_ms[0]'''),
        ("code", "ov.close()"),
    ],
}


def notebook(cells):
    def cell(i, kind, src):
        lines = src.splitlines(keepends=True)
        if kind == "md":
            return {"cell_type": "markdown", "id": f"cell-{i}", "metadata": {}, "source": lines}
        return {"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "execution_count": None, "outputs": [],
                "source": lines}

    return {"cells": [cell(i, k, s) for i, (k, s) in enumerate(cells)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def main():
    for name, cells in NOTEBOOKS.items():
        with open(os.path.join(HERE, name), "w") as f:
            json.dump(notebook(cells), f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
