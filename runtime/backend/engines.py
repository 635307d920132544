"""The compiled forms a prepared model runs as: an integer (QOperator)
model, or a QDQ model (given, or quantized from float here)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx

from vfpga.runtime import tenants
from vfpga.runtime.compiler import frontend
from vfpga.runtime.compiler.frontend import FrontendError, qlinear

from .models import DEFAULT_QUANT_OPTIONS


class IntegerEngine:
    """An integer model as one IR graph; host does the I/O layout."""

    kind = "integer"

    def __init__(self, model: onnx.ModelProto, accel: tenants.Accelerator):
        self.im = qlinear.convert(model)
        self.compiled = accel.compile(self.im.graph)

    def execute(self, tenant: tenants.Tenant, feeds: dict) -> list[np.ndarray]:
        m = self.im.input
        results = [tenant.run_quantized(req)[0] for req in m.split(feeds[m.onnx_name])]
        return [o.join([r[k] for r in results], shape)
                for k, (o, shape) in enumerate(zip(self.im.outputs, self.im.output_shapes))]

    def placement(self) -> dict[str, str]:
        out = dict(self.im.extra_placement)
        for layer in self.compiled.graph.layers:
            for n in layer.onnx_nodes:
                out[n] = "accelerator"
        return out


class QuantEngine:
    """A QDQ model (given, or quantized from float here) through the front end.

    ``layout`` maps the ONNX input/outputs onto the batch-1 model the
    accelerator path takes: "same", "batch" (N > 1 as N requests) or "flat"
    (an elementwise model on any shape as one [1, size] request)."""

    def __init__(self, model, accel, kind, layout, in_name, out_shapes, calibration=None, quant_options=None,
                 fallback=False):
        self.kind, self.layout, self.in_name, self.out_shapes = kind, layout, in_name, out_shapes
        if kind == "float":
            opts = dict(DEFAULT_QUANT_OPTIONS)
            opts.update(quant_options or {})
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*calibration.*")
                qdq = frontend.quantize(model, calibration=calibration, extra_options=opts)
            if not frontend.is_qdq(qdq):
                ops = ", ".join(sorted({n.op_type for n in model.graph.node}))
                raise FrontendError(
                    f"onnxruntime's static quantization left every op float ({ops}: no QDQ rule applied); "
                    f"the accelerator computes in int8 only"
                )
        else:
            qdq = model
        self.qdq = qdq
        self.graph = frontend.to_graph(qdq, fallback=True) if fallback else frontend.to_graph(qdq)
        self.compiled = accel.compile(self.graph)

    def execute(self, tenant: tenants.Tenant, feeds: dict) -> list[np.ndarray]:
        results = []
        for x in batch_samples(feeds[self.in_name], self.layout):
            ys = tenant.run(x)  # quantize, run (CPU parts too), dequantize: the API's own path
            results.append(list(ys) if isinstance(ys, (list, tuple)) else [ys])
        outs = []
        for k in range(len(self.graph.outputs)):
            ys = [r[k] for r in results]
            y = np.concatenate(ys, axis=0) if self.layout == "batch" else ys[0]
            outs.append(y.reshape(self.out_shapes[k]) if self.layout == "flat" else y)
        return outs

    def placement(self) -> dict[str, str]:
        if getattr(self.graph, "onnx_nodes", None):
            return {name: where for name, _, where in frontend.placement_report(self.graph)}
        out = {}
        for layer in self.compiled.graph.layers:
            for n in layer.onnx_nodes:
                out[n] = "cpu" if layer.kind == "cpu" else "accelerator"
        return out


def batch_samples(x, layout: str) -> list[np.ndarray]:
    x = np.asarray(x)
    if layout == "batch":
        return [x[i : i + 1] for i in range(x.shape[0])]
    if layout == "flat":
        return [x.reshape(1, -1, 1, 1)]
    return [x]
