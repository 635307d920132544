"""The ONNX front end: from a user's model to the integer layer graph
(:mod:`vfpga.runtime.compiler.ir`) the static stage lowers.

A float model is loaded and checked (:mod:`.load`), cleaned up (:mod:`.cleanup`:
constant subgraphs folded, Identity/Dropout dropped; :mod:`.affine`:
BatchNormalization and per-channel affine chains folded into convolutions),
quantized by onnxruntime's static QDQ quantizer (:mod:`.quantize`, which also
gives Concat inputs the Concat's quantization where that is free) and read
into the IR (:mod:`.qdq_reader`). The QDQ model is the single source of the
quantization: every int8 tensor of the IR is the output of one
QuantizeLinear, every layer one compute node between DequantizeLinear(s) and
a QuantizeLinear, its integer parameters derived from those scales exactly as
onnxruntime's integer kernels would use them. With ``fallback=True`` the ops
the cores lack run on the host (:mod:`.cpu_regions`: each maximal connected
run of them becomes one ir.CpuOp, an ONNX model cut out of the QDQ graph with
int8 tensors at its boundary). Integer (QOperator) models are read by
:mod:`.qlinear`. :mod:`.marshal` converts tensors between ONNX's float NCHW
and the cores' int8 HWC; :mod:`.reference` runs a QDQ model in onnxruntime as
the oracle.

Imports: :mod:`vfpga.runtime.compiler.ir` and :mod:`vfpga.runtime.hw` only.
"""

from .affine import fold_affine
from .cleanup import fold_constants, remove_no_ops, simplify
from .errors import FrontendError, UnsupportedOperatorError
from .load import OPSETS, is_qdq, load_model
from .marshal import dequantize_output, from_onnx_layout, quantize_input, to_hwc, to_onnx_layout
from .ops import ACCELERATOR_OPS, QDQ_OPS, QOPERATOR_OPS, VIEW_OPS, resolve_pads
from .qdq_reader import placement_report, to_graph
from .quantization import quantize, share_concat_scales

__all__ = [
    "ACCELERATOR_OPS", "OPSETS", "QDQ_OPS", "QOPERATOR_OPS", "VIEW_OPS", "FrontendError", "UnsupportedOperatorError",
    "dequantize_output", "fold_affine", "fold_constants", "from_onnx_layout", "is_qdq", "load_model",
    "placement_report", "quantize", "quantize_input", "remove_no_ops", "resolve_pads", "share_concat_scales",
    "simplify", "to_graph", "to_hwc", "to_onnx_layout",
]
