"""The ``onnx.backend`` interface: ONNX's own backend test runner (and any
tool written against onnx.backend.base) drives vfpga through it.

    from vfpga.runtime import backend
    rep = backend.prepare(model, device="FPGA:u200", calibration=samples)
    (y,) = rep.run([x])              # outputs in ONNX layout and dtype
    rep.close()                      # or let it be garbage-collected

Devices: "FPGA" (the default board, u200), "FPGA:<board>" (any board
config: u200, zcu104, pynq_z2, u200_bigcore) and "CPU". On a host without a
board every FPGA is the emulated one -- the real HLS C++ running on the host
CPU -- so "CPU" (what ONNX's runner asks for) means exactly that: the
emulated default board. It never means "run the model on onnxruntime".
"CUDA" is not supported.

One accelerator per board is opened once per process and shared by every
prepared model; each prepared model is one tenant on one CNN core, removed
when its rep is closed or garbage-collected (so a test run does not use up
the board's cores).

Three kinds of model reach the accelerator:

* integer (QOperator) models -- QLinearConv, QLinearMatMul, integer MaxPool,
  Relu/Clip and com.microsoft QGemm/QLinearAdd/QLinearAveragePool/
  QLinearGlobalAveragePool, int8 or uint8, per-tensor or per-channel weight
  scales, int32 bias, behind a QuantizeLinear/before a DequantizeLinear or
  with integer I/O -- through :mod:`vfpga.runtime.compiler.frontend.qlinear`. QLinearConv and
  QLinearMatMul are bit-exact to ONNX except on exact requantization ties
  (+1 LSB; see qlinear's docstring); pools and adds within 1 LSB.
* QDQ models, through frontend.to_graph: per layer within 1 LSB of
  onnxruntime on the same QDQ model.
* float models (Conv, Gemm, MatMul, MaxPool, AveragePool,
  GlobalAveragePool, Relu, Clip, residual Add, folded BatchNormalization,
  ...), quantized with onnxruntime's static int8 quantization
  (frontend.quantize) on calibration data given as ``calibration=`` to
  prepare -- or, without it, on the input of the first run (a UserWarning
  says so). These are approximate: ``FLOAT_TOLERANCE_LSB`` states the bound
  the tests hold single ops to.

Layout: the accelerator runs batch 1. A batch N > 1 of an NCHW (or [N, K])
input runs as N requests when every op treats the leading axis as a batch;
a model of only elementwise ops runs on any shape as one [1, size, 1, 1]
request; QLinearMatMul rows (and a 3-D batch of them) map onto the core's
spatial axes and channels. A model has exactly one activation input (a
tenant program reads one input tensor).

Parameters a model takes as graph inputs (weights, biases, scales and zero
points fed at run time, as the ONNX node tests do) are folded into the
program when they are first seen; the accelerator keeps weights in its
segment, so new parameter values mean a recompile (cached by content).

Ops without an accelerator mapping raise UnsupportedOperatorError at
prepare. ConvInteger and MatMulInteger are among them: they produce the
int32 accumulators, and the CNN core always requantizes to int8 before
anything leaves it. With ``cpu_fallback=True``: a float/QDQ model keeps its
accelerator layers and the front end cuts the other nodes out into
onnxruntime subgraphs (frontend.to_graph(fallback=True)); an integer model,
or one with no accelerator op at all, runs wholly on onnxruntime on the
host. Either way ``rep.placement()`` says where every node ran ("cpu" for
the fallback; ``rep.kind == "cpu"`` for a whole-model fallback).

The package: :mod:`.devices` (device strings, the shared accelerators),
:mod:`.models` (which ops, parameter inputs, shapes), :mod:`.engines` (the
compiled forms), :mod:`.rep` (the prepared model).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend

from vfpga.runtime.compiler import frontend
from vfpga.runtime.compiler.frontend import FrontendError, UnsupportedOperatorError, qlinear_model

from .devices import DEFAULT_BOARD, BackendError, accelerator, parse_device, release_unused
from .models import FLOAT_TOLERANCE_LSB, check_ops, split_inputs
from .rep import VfpgaRep

_PREPARE_KWARGS = {"calibration", "cpu_fallback", "quant_options"}


class VfpgaBackend(Backend):
    """onnx.backend.base.Backend for vfpga (see the module docstring)."""

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            parse_device(device)
        except BackendError:
            return False
        return True

    @classmethod
    def is_compatible(cls, model, device: str = "FPGA", **kwargs) -> bool:
        """True when prepare would put the model on the accelerator."""
        if not cls.supports_device(device):
            return False
        try:
            check_ops(model, qlinear_model.is_integer_model(model))
        except FrontendError:
            return False
        return True

    @classmethod
    def prepare(cls, model, device: str = "FPGA", **kwargs) -> VfpgaRep:
        """Compile ``model`` (ModelProto, bytes or path) for the board of
        ``device``. Keyword arguments: calibration (float models: one array
        or a list of arrays in the input's own layout), cpu_fallback (run
        the nodes the accelerator cannot take on onnxruntime, see the module
        docstring), quant_options (extra onnxruntime quantize_static
        options)."""
        unknown = set(kwargs) - _PREPARE_KWARGS
        if unknown:
            raise TypeError(f"unknown prepare() arguments: {', '.join(sorted(unknown))}")
        board = parse_device(device)
        if isinstance(model, (bytes, bytearray)):
            model = onnx.load_model_from_string(bytes(model))
        elif not isinstance(model, onnx.ModelProto):
            model = onnx.load(model)
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            raise FrontendError(f"not a valid ONNX model (onnx.checker: {e})") from e
        integer = qlinear_model.is_integer_model(model)
        kind = "integer" if integer else ("qdq" if frontend.is_qdq(model) else "float")
        calibration = kwargs.get("calibration")
        if calibration is not None and kind != "float":
            warnings.warn(f"calibration= is unused: the model is already quantized ({kind})", UserWarning, stacklevel=2)
        try:
            check_ops(model, integer)
        except UnsupportedOperatorError as e:
            if not kwargs.get("cpu_fallback"):
                raise
            some_on_core = any(n.op_type in frontend.ACCELERATOR_OPS for n in model.graph.node)
            if integer or not some_on_core:
                return VfpgaRep(model, board, "cpu", reason=str(e))
            # The front end cuts the unsupported nodes out into onnxruntime subgraphs.
            return VfpgaRep(model, board, kind, calibration, kwargs.get("quant_options"), reason=str(e), fallback=True)
        return VfpgaRep(model, board, kind, calibration, kwargs.get("quant_options"))

    @classmethod
    def run_model(cls, model, inputs, device: str = "FPGA", **kwargs):
        with cls.prepare(model, device, **kwargs) as rep:
            return rep.run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "FPGA", outputs_info=None, **kwargs):
        """One node on the accelerator: wraps it in a model whose inputs are
        the node's (typed from ``inputs``), then prepare + run.
        ``opset_version`` (kwarg) picks the opset, default 21."""
        opset = int(kwargs.pop("opset_version", 21))
        names = [i for i in node.input if i]
        if isinstance(inputs, dict):
            arrays = [np.asarray(inputs[n]) for n in names]
        else:
            arrays = [np.asarray(a) for a in inputs]
        if len(arrays) != len(names):
            raise BackendError(f"node {node.op_type} has {len(names)} inputs, got {len(arrays)} values")
        vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in zip(names, arrays)]
        if outputs_info:
            outs = [
                helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
                for o, (dt, shape) in zip(node.output, outputs_info)
            ]
        else:
            outs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        opsets = [helper.make_opsetid("", opset)]
        if node.domain == "com.microsoft":
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        graph = helper.make_graph([node], f"node_{node.op_type}", vis, outs)
        model = helper.make_model(graph, opset_imports=opsets)
        if not outputs_info:
            model = onnx.shape_inference.infer_shapes(model)
            inferred = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
            del model.graph.output[:]
            model.graph.output.extend(inferred[o] for o in node.output if o)
        with cls.prepare(model, device, **kwargs) as rep:
            return rep.run(arrays)


prepare = VfpgaBackend.prepare
run_model = VfpgaBackend.run_model
run_node = VfpgaBackend.run_node
supports_device = VfpgaBackend.supports_device
is_compatible = VfpgaBackend.is_compatible

__all__ = [
    "DEFAULT_BOARD",
    "FLOAT_TOLERANCE_LSB",
    "BackendError",
    "VfpgaBackend",
    "VfpgaRep",
    "accelerator",
    "is_compatible",
    "parse_device",
    "prepare",
    "release_unused",
    "run_model",
    "run_node",
    "split_inputs",
    "supports_device",
]
