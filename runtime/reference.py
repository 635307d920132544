"""onnxruntime as the oracle: runs the same quantized (QDQ) model on the CPU
and returns any of its int8 activations in the accelerator's HWC layout."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def to_hwc(a: np.ndarray) -> np.ndarray:
    """ONNX NCHW (or [1, N]) batch-1 tensor -> HWC."""
    if a.ndim == 4:
        return np.ascontiguousarray(a[0].transpose(1, 2, 0))
    if a.ndim == 2:
        return a.reshape(1, 1, -1)
    raise ValueError(f"cannot map a tensor of shape {a.shape} to HWC")


class OrtReference:
    """One onnxruntime session over a QDQ model that also exposes the named
    intermediate tensors (the int8 outputs of its QuantizeLinear nodes)."""

    def __init__(self, qdq_model: onnx.ModelProto, tensors=(), optimize: bool = True):
        model = onnx.ModelProto()
        model.CopyFrom(qdq_model)
        present = {o.name for o in model.graph.output}
        for name in tensors:
            if name not in present:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        opts = ort.SessionOptions()
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs (model outputs and exposed tensors) by name, as returned."""
        values = self.session.run(None, {self.input_name: x})
        return dict(zip(self.output_names, values))

    def run_hwc(self, x: np.ndarray, names) -> dict[str, np.ndarray]:
        out = self.run(x)
        return {n: to_hwc(out[n]) for n in names}
