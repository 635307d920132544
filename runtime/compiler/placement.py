"""Where a compiled model's work runs: the share of its MACs on the
accelerator, the MACs of the host (CPU) parts, and why each host node is
there. MACs are counted from the model (a convolution's output pixels x
output channels x input channels per group x kernel taps; a transposed
convolution's input pixels x the same; Gemm/MatMul: M x N x K), as the
field counts work -- element-wise ops, pooling and tables count none."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class MacShare:
    accel_macs: int
    cpu_macs: int
    reasons: dict = field(default_factory=dict)  # host node -> why it runs there

    @property
    def total(self) -> int:
        return self.accel_macs + self.cpu_macs

    @property
    def share(self) -> float:
        """Fraction of the model's MACs on the accelerator (1.0 for a model without MACs)."""
        return self.accel_macs / self.total if self.total else 1.0

    def describe(self) -> str:
        return (f"{self.share * 100:.1f} % of {self.total:,} MACs on the accelerator "
                f"({self.accel_macs:,}), {self.cpu_macs:,} on the host")


def layer_macs(layer, tensors) -> int:
    """MACs of one accelerator layer of the IR."""
    if layer.kind == "conv":
        h, w, _ = tensors[layer.output].shape
        oc, icg, kh, kw = layer.weight.shape
        return h * w * oc * icg * kh * kw
    if layer.kind == "convtranspose":
        h, w, _ = tensors[layer.input].shape
        ic, ocg, kh, kw = layer.weight.shape
        return h * w * ic * ocg * kh * kw
    return 0


def onnx_macs(model: onnx.ModelProto) -> dict[str, int]:
    """MACs per Conv / ConvTranspose / Gemm / MatMul node of an ONNX model
    with static shapes (after ONNX shape inference)."""
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - count what has shapes
        pass
    shapes = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[vi.name] = dims
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    for n in model.graph.node:  # constants from Constant nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            shapes[n.output[0]] = list(numpy_helper.to_array(n.attribute[0].t).shape)
    out = {}
    for k, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{k}"
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        ws = shapes.get(n.input[1]) if len(n.input) > 1 else None
        if n.op_type == "Conv" and ws and n.output[0] in shapes:
            out[name] = int(np.prod(shapes[n.output[0]][2:])) * int(np.prod(ws))
        elif n.op_type == "ConvTranspose" and ws and n.input[0] in shapes:
            out[name] = int(np.prod(shapes[n.input[0]][2:])) * int(np.prod(ws))  # w: [IC, OC/g, kh, kw]
        elif n.op_type in ("Gemm", "MatMul") and ws and n.output[0] in shapes:
            k_dim = ws[0] if not (n.op_type == "Gemm" and a.get("transB", 0)) else ws[-1]
            out[name] = int(np.prod(shapes[n.output[0]])) * int(k_dim)
    return out


def mac_share(compiled) -> MacShare:
    """The MAC split of a compiled CNN model (static.CompiledModel)."""
    g = compiled.graph
    accel = cpu = 0
    reasons: dict = {}
    for layer in g.layers:
        if layer.kind == "cpu":
            cpu += sum(onnx_macs(onnx.load_from_string(layer.model)).values())
            reasons.update(getattr(layer, "reasons", {}) or {})
        else:
            accel += layer_macs(layer, g.tensors)
    return MacShare(accel, cpu, reasons)

