"""Quantization with onnxruntime's static QDQ quantizer, and the Concat
scale sharing that makes Concat free (address placement)."""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import onnx
from onnx import numpy_helper

from .cleanup import simplify
from .errors import FrontendError
from .load import drop_initializer_inputs, is_qdq, load_model, real_inputs, reinfer_shapes, sum_to_add
from .ops import QOPERATOR_OPS, RANGE_OPS, attrs, consumers, onnx_opset, prune_initializers, static_dims


def share_concat_scales(model: onnx.ModelProto, float_model: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Give the inputs of a channel Concat the Concat output's quantization
    where that is free, in place on a QDQ model from onnxruntime (which
    calibrates every Concat input on its own): the input's QuantizeLinear and
    the DequantizeLinears reading it switch to the output's scale/zero point,
    so the accelerator places the input as a slice of the output without a
    requantizing copy. Concats are visited last first so nested ones
    (DenseNet) share down the chain.

    Only where the output's real range covers the input's (MinMax
    calibration makes the Concat's range the union of its inputs'), so the
    wider quantization clamps nothing the input's did not -- except where
    onnxruntime removed a Relu/Clip because the input's range itself does
    the clamping: float_model (the float model that was quantized) tells
    which tensors those are. A removed Relu needs the zero point to stay at
    int8 min; after a removed Clip nothing is shared. Without float_model
    any input may hide a removed activation: only inputs with the output's
    zero point and a smaller scale share then (which still drops a removed
    Clip's upper bound, so pass float_model for models with Clip)."""
    g = model.graph
    removed = None
    if float_model is not None:
        producers = {o: n for n in g.node for o in n.output}
        removed = {}
        for n in float_model.graph.node:
            if n.op_type in ("Relu", "Clip") and n.output and n.output[0]:
                p = producers.get(n.output[0])
                if p is None or p.op_type != n.op_type:
                    removed[n.output[0]] = n.op_type
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers_of = consumers(g)

    def qdq_params(node):
        if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
            return None
        s, z = inits[node.input[1]], inits[node.input[2]]
        if s.size != 1 or z.dtype != np.int8:
            return None
        return float(s.reshape(-1)[0]), int(z.reshape(-1)[0])

    for cat in reversed([n for n in g.node if n.op_type == "Concat" and n.domain in ("", "ai.onnx")]):
        if attrs(cat).get("axis") not in (1, -3):
            continue
        readers = readers_of.get(cat.output[0], [])
        if len(readers) != 1 or readers[0][0].op_type != "QuantizeLinear":
            continue
        q_out = readers[0][0]
        p_out = qdq_params(q_out)
        if p_out is None:
            continue
        for x in cat.input:
            dq = producer.get(x)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or qdq_params(dq) != qdq_params(q):
                continue
            p_in = qdq_params(q)
            if p_in is None or p_in == p_out:
                continue
            act = "Relu" if removed is None else removed.get(q.input[0])
            if act == "Clip":
                continue
            if act == "Relu" and (p_in[1] != p_out[1] or p_in[0] > p_out[0]):
                continue  # equal zero points: the wider range has the larger scale
            lo_in, hi_in = (-128 - p_in[1]) * p_in[0], (127 - p_in[1]) * p_in[0]
            lo_out, hi_out = (-128 - p_out[1]) * p_out[0], (127 - p_out[1]) * p_out[0]
            tol = 1e-6 * (hi_out - lo_out)
            if lo_out > lo_in + tol or hi_out < hi_in - tol:
                continue
            readers_q = [n for n, _ in readers_of.get(q.output[0], [])]
            if not all(n.op_type == "DequantizeLinear" and qdq_params(n) == p_in for n in readers_q):
                continue
            for n in [q] + readers_q:
                n.input[1], n.input[2] = q_out.input[1], q_out.input[2]
    prune_initializers(g)
    return model


# ---------------------------------------------------------------- quantization


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes the quantizer leaves in float: RANGE_OPS (squares,
    roots: an int8 per-tensor scale on either side loses most values -- a
    spectrogram's magnitude sqrt(re^2 + im^2) keeps 0.73 of its cosine
    quantized, 0.96 in float) and the element-wise arithmetic whose inputs
    all come from nodes left in float. They run on the host."""
    produced_by = {o: n for n in model.graph.node for o in n.output if o}
    inits = {t.name for t in model.graph.initializer}
    out, floating = [], set()
    for n in model.graph.node:
        acts = [i for i in n.input if i and i not in inits]
        joins = n.op_type in ("Add", "Sub", "Mul", "Div") and acts and all(
            i in produced_by and produced_by[i].name in floating for i in acts)
        if n.op_type in RANGE_OPS or joins:
            if not n.name:
                n.name = f"{n.op_type}__{n.output[0]}"
            floating.add(n.name)
            out.append(n.name)
    return out


def _calibration_samples(calibration, name: str, shape: list[int]) -> list[dict]:
    """Normalise user calibration data to a list of {input: float32 [1,C,H,W]}."""
    if isinstance(calibration, np.ndarray):
        arr = calibration
        # One sample (with or without the batch axis), or N samples stacked on the batch axis.
        items = [arr] if arr.ndim < len(shape) or arr.shape[0] == 1 else list(arr)
    else:
        items = list(calibration)
    if not items:
        raise FrontendError("calibration data is empty")
    out = []
    for k, item in enumerate(items):
        x = item[name] if isinstance(item, dict) else item
        x = np.asarray(x)
        if x.ndim == len(shape) - 1:
            x = x[None]
        if not np.issubdtype(x.dtype, np.floating) or tuple(x.shape) != tuple(shape):
            raise FrontendError(
                f"calibration sample {k} has {x.dtype} shape {tuple(x.shape)}; expected float32 {list(shape)}"
            )
        out.append({name: np.ascontiguousarray(x, dtype=np.float32)})
    return out


def quantize(
    model,
    calibration=None,
    seed: int = 0,
    *,
    input_shape=None,
    num_random: int = 16,
    extra_options: dict | None = None,
    share_scales: bool = True,
    calibrate_method: str = "minmax",
) -> onnx.ModelProto:
    """Static int8 quantization to QDQ with onnxruntime.

    Weights int8 symmetric per output channel, activations int8 asymmetric
    (MinMax calibration). calibration: an array of one sample or N samples
    stacked on the batch axis, an iterable of arrays or {input: array} dicts,
    or None for num_random generated inputs (with a warning: int8 accuracy
    depends on representative data). Models that already hold
    QuantizeLinear/DequantizeLinear are returned as loaded. extra_options are
    merged over the defaults and passed to onnxruntime's quantize_static.

    Before quantization the float graph is cleaned up (:func:`simplify`:
    constant subgraphs folded, Identity/Dropout dropped, BatchNormalization
    and per-channel Mul/Add chains folded into the preceding Conv or turned
    into a depthwise 1x1 Conv). share_scales: afterwards give Concat inputs
    the Concat's quantization where that loses no range
    (:func:`share_concat_scales`), so Concats need no requantizing copies.
    calibrate_method: onnxruntime's activation range calibration, "minmax"
    (default), "percentile" (clips rare outliers: better int8 resolution for
    models with a few extreme activations) or "entropy"."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is not None and not isinstance(calibration, (np.ndarray, list, tuple)):
        calibration = list(calibration)  # read for its shape, then by the quantizer
    proto = load_model(model, input_shape=input_shape, calibration=calibration)
    if is_qdq(proto):
        return proto
    qop = sorted({n.op_type for n in proto.graph.node if n.op_type in QOPERATOR_OPS})
    if qop:
        raise FrontendError(
            f"the model is already quantized in QOperator format ({', '.join(qop)}); "
            f"vfpga reads QDQ models: quantize the float model with QuantFormat.QDQ"
        )
    opset = onnx_opset(proto)
    if opset < 13:  # per-channel QDQ (DequantizeLinear axis) needs opset 13
        try:
            proto = onnx.version_converter.convert_version(proto, 13)
        except Exception as e:
            raise FrontendError(
                f"cannot convert the model from opset {opset} to 13 for quantization: {e}"
            ) from e

    drop_initializer_inputs(proto)
    sum_to_add(proto)
    try:
        reinfer_shapes(proto)  # the version converter keeps value_info of the old opset
        simplify(proto)
    except (onnx.shape_inference.InferenceError, FrontendError) as e:
        raise FrontendError(f"ONNX shape inference failed on the float model: {e}") from e
    inp = real_inputs(proto)[0]
    shape = static_dims(inp)
    if calibration is None:
        warnings.warn(
            f"no calibration data given: quantizing with {num_random} random inputs; the int8 model's "
            f"accuracy depends on representative data, pass calibration= with real inputs",
            UserWarning,
            stacklevel=2,
        )
        rng = np.random.default_rng(seed)
        samples = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(num_random)]
    else:
        samples = _calibration_samples(calibration, inp.name, shape)

    class QdqReader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibrate_method not in methods:
        raise FrontendError(f"calibrate_method {calibrate_method!r} is not one of {sorted(methods)}")
    method = methods[calibrate_method]
    options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    options.update(extra_options or {})
    with tempfile.TemporaryDirectory(prefix="vfpga-quant-") as tmp:
        src, pre, out = (os.path.join(tmp, f) for f in ("float.onnx", "pre.onnx", "qdq.onnx"))
        onnx.save(proto, src)
        # Shape inference + basic graph optimisations (constant folding,
        # Conv+BatchNorm folding, Identity/Dropout removal); symbolic shape
        # inference is for transformers and would need sympy. (Given the model
        # in memory, onnxruntime 1.32 moves its initializers out, Reshape's
        # shape too, and then cannot infer: so a file.)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        if not os.path.isfile(pre):
            raise FrontendError("onnxruntime quantization pre-processing failed (see the log above)")
        named = onnx.load(pre)
        unnamed = sum(not n.name for n in named.graph.node)
        keep_float = float_nodes(named)  # (names the nodes it picks when they have none)
        if sum(not n.name for n in named.graph.node) != unnamed:  # else the file is the model already
            onnx.save(named, pre)
        try:
            quantize_static(
                pre,
                out,
                QdqReader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                nodes_to_exclude=keep_float,
                extra_options=options,
            )
        except (AssertionError, ValueError, RuntimeError) as e:  # ORT asserts on NaN/inf ranges
            raise FrontendError(
                f"onnxruntime static quantization failed: {type(e).__name__}: {e} "
                f"(non-finite activations on the calibration data give this too)"
            ) from e
        qdq = onnx.load(out)
    if share_scales:
        share_concat_scales(qdq, proto)
    return qdq
