"""onnxruntime as the oracle: runs the same quantized (QDQ) model on the CPU
and returns any of its int8 activations in the accelerator's HWC layout."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from .marshal import to_hwc


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

    @classmethod
    def for_model(cls, model_bytes: bytes) -> OrtReference:
        """A session over a serialized model as it is (CPU-fallback subgraphs),
        evaluated as written (QDQ semantics, no kernel fusion), as the golden
        model evaluates it."""
        return cls(onnx.load_from_string(model_bytes), optimize=False)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs (model outputs and exposed tensors) by name, as returned."""
        values = self.session.run(None, {self.input_name: x})
        return dict(zip(self.output_names, values))

    def run_hwc(self, x: np.ndarray, names) -> dict[str, np.ndarray]:
        out = self.run(x)
        return {n: to_hwc(out[n]) for n in names}
