"""The prepared model (:class:`VfpgaRep`): runs inputs on its tenant, recompiles
when parameters given as inputs change, says where every node ran."""

from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import BackendRep, namedtupledict

from vfpga.runtime import tenants
from vfpga.runtime.compiler import ir

from .devices import BackendError, TenantSlot, _deferred, accelerator
from .engines import IntegerEngine, QuantEngine, batch_samples
from .models import (
    BATCH_OPS,
    ELEMENTWISE_OPS,
    anchor_input,
    bind_inputs,
    content_key,
    normalize_gemm,
    reshape_io,
    runtime_inputs,
    split_inputs,
    static_shape,
)

# Parameter sets a rep keeps compiled (models whose weights come as inputs).
_CACHE_SIZE = 4


class VfpgaRep(BackendRep):
    """A model prepared for one vfpga board.

    kind: "integer", "qdq", "float" (run on the accelerator) or "cpu" (the
    whole model on onnxruntime, only with cpu_fallback=True). ``compiled``
    and ``tenant`` are those of the last parameter set run (None before the
    first run when parameters come as inputs). ``placement()`` says where
    each ONNX node ran."""

    def __init__(self, model, board, kind, calibration=None, quant_options=None, reason="", fallback=False):
        self.model = model
        self.fallback = fallback
        self.board = board
        self.kind = kind
        self.fallback_reason = reason
        self.input_names = [i.name for i in runtime_inputs(model)]
        self.output_names = [o.name for o in model.graph.output]
        self._calibration = calibration
        self._quant_options = quant_options
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._engine = None
        self._key = None
        self._closed = False
        self._session = None
        if kind == "cpu":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            self._slot = None
            return
        self.accel = accelerator(board)
        while _deferred:
            _deferred.pop().release()
        self._slot = TenantSlot(self.accel)
        self._finalizer = weakref.finalize(self, self._slot.on_collect)
        self.activation_inputs, self.param_inputs = split_inputs(model)
        if len(self.activation_inputs) != 1:
            raise BackendError(
                f"the model has {len(self.activation_inputs)} activation inputs ({', '.join(self.activation_inputs)}); "
                f"the accelerator path takes exactly one input tensor per model"
            )
        if not self.param_inputs and (kind != "float" or calibration is not None):
            self._select({}, None)

    # -- building

    def _build(self, params: dict, x) -> object:
        model = bind_inputs(self.model, params) if params else self.model
        if self.kind == "integer":
            return IntegerEngine(model, self.accel)
        return self._build_quant(model, x)

    def _build_quant(self, model, x):
        (inp,) = runtime_inputs(model)
        shape = static_shape(inp)
        if shape is None:
            raise BackendError(f"input '{inp.name}' has no static shape; the accelerator compiles for fixed shapes")
        ops = {n.op_type for n in model.graph.node}
        out_shapes = []
        for o in model.graph.output:
            s = static_shape(o)
            if s is None:
                inferred = onnx.shape_inference.infer_shapes(model)
                s = next((static_shape(v) for v in inferred.graph.output if v.name == o.name), None)
            out_shapes.append(s)
        if ops <= ELEMENTWISE_OPS and not (len(shape) in (2, 4) and shape[0] == 1):
            layout = "flat"
            size = int(np.prod(shape))
            model = reshape_io(model, (1, size, 1, 1), {o.name: (1, size, 1, 1) for o in model.graph.output})
        elif len(shape) >= 2 and shape[0] > 1:
            bad = sorted(ops - BATCH_OPS)
            if bad:
                raise BackendError(
                    f"input '{inp.name}' has batch {shape[0]}; the accelerator runs batch 1 and would run the "
                    f"batch as {shape[0]} requests, but {', '.join(bad)} may mix the batch axis"
                )
            for n in model.graph.node:
                if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2]:
                    c = next((numpy_helper.to_array(t) for t in model.graph.initializer if t.name == n.input[2]), None)
                    if c is not None and c.ndim == 2 and c.shape[0] > 1:
                        raise BackendError(
                            f"Gemm '{n.name}': bias C of shape {list(c.shape)} differs per row; the batch of "
                            f"{shape[0]} rows cannot run as independent requests"
                        )
            layout = "batch"
            model = reshape_io(model, (1,) + tuple(shape[1:]), None)
        else:
            layout = "same"
        calibration = None
        if self.kind == "float":
            model = normalize_gemm(model)
            model = anchor_input(model)
            raw = self._calibration
            if raw is None:
                warnings.warn(
                    "no calibration= given to prepare(): the float model is quantized on the input of its first "
                    "run; pass representative calibration data for a model you run on other inputs",
                    UserWarning,
                    stacklevel=4,
                )
                raw = [x]
                self._calibration = raw
            items = [raw] if isinstance(raw, np.ndarray) else list(raw)
            calibration = [s for item in items for s in batch_samples(np.asarray(item, dtype=np.float32), layout)]
        return QuantEngine(model, self.accel, self.kind, layout, inp.name, out_shapes, calibration,
                            self._quant_options, self.fallback)

    def _select(self, params: dict, x) -> None:
        key = content_key(params)
        if key == self._key:
            return
        engine = self._cache.pop(key, None) or self._build(params, x)
        self._cache[key] = engine
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        self._slot.deploy(engine.compiled)
        self._engine, self._key = engine, key

    # -- running

    def _feeds(self, inputs) -> dict:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        elif isinstance(inputs, np.ndarray) or np.isscalar(inputs):
            feeds = {self.input_names[0]: inputs}
        else:
            inputs = list(inputs)
            if len(inputs) != len(self.input_names):
                raise BackendError(f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}")
            feeds = dict(zip(self.input_names, inputs))
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BackendError(f"no value for input(s) {', '.join(missing)}")
        return {k: np.asarray(v) for k, v in feeds.items()}

    def run(self, inputs, **kwargs):
        """Inputs (a list in graph-input order, a dict by name, or one array)
        -> the outputs as a namedtuple, in ONNX layout and dtype."""
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        if self._closed:
            raise BackendError("this rep has been closed")
        feeds = self._feeds(inputs)
        if self.kind == "cpu":
            values = self._session.run(self.output_names, feeds)
        else:
            x = feeds[self.activation_inputs[0]]
            self._select({n: feeds[n] for n in self.param_inputs}, x)
            values = self._engine.execute(self._slot.tenant, feeds)
        return namedtupledict("Outputs", self.output_names)(*values)

    # -- reporting and lifetime

    @property
    def compiled(self):
        return self._engine.compiled if self._engine is not None else None

    @property
    def graph(self) -> ir.Graph | None:
        return self._engine.compiled.graph if self._engine is not None else None

    @property
    def tenant(self) -> tenants.Tenant | None:
        return self._slot.tenant if self._slot is not None else None

    def placement(self) -> dict[str, str]:
        """ONNX node name -> "accelerator", "cpu" (onnxruntime), "host" (the
        boundary QuantizeLinear/DequantizeLinear of an integer model, applied
        by the host as it writes the input / reads the outputs) or, for
        float/QDQ models, "folded" (frontend.placement_report: absorbed at
        compile time). Float models list the QDQ model's nodes."""
        if self.kind == "cpu":
            return {n.name or f"{n.op_type}_{i}": "cpu" for i, n in enumerate(self.model.graph.node)}
        if self._engine is None:
            raise BackendError("not built yet: parameters given as inputs are bound at the first run")
        return self._engine.placement()

    def close(self) -> None:
        """Remove the tenant (frees its core and segment)."""
        self._closed = True
        if self._slot is not None:
            self._finalizer.detach()
            self._slot.release()
        self._cache.clear()
        self._engine = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
