"""Reading a QDQ model into the integer layer graph (:mod:`vfpga.runtime.compiler.ir`)."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vfpga.runtime.compiler import ir
from vfpga.runtime.hw import fixed_point

from .cleanup import fold_constants
from .cpu_regions import CpuRegions
from .errors import FrontendError, UnsupportedOperatorError
from .load import drop_initializer_inputs, is_qdq, load_model, real_inputs, static_dims
from .ops import QDQ_OPS, VIEW_OPS, attrs, infer_shapes
from .qdq_layers import LayerHandlers
from .qdq_mobile import MobileHandlers
from .qdq_values import (
    INT32_MAX,
    INT32_MIN,
    Pending,
    QConst,
    Ref,
    clip_bounds,
    hwc,
    layer_inputs,
    layer_outputs,
    quantize_array,
    round_half_even,
)


class QdqReader(CpuRegions, LayerHandlers, MobileHandlers):
    """One pass over the (topologically ordered) QDQ graph."""

    def __init__(self, model: onnx.ModelProto, fallback: bool = False):
        self.model = model
        g = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and len(n.attribute) == 1:
                a = n.attribute[0]
                v = (
                    numpy_helper.to_array(a.t)
                    if a.name == "value"
                    else np.asarray(helper.get_attribute_value(a))
                )
                self.consts[n.output[0]] = v
        self.shapes = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            d = static_dims(vi)
            if d is not None and None not in d:
                self.shapes[vi.name] = tuple(d)
        self.input_name = real_inputs(model)[0].name
        self.tensors: dict[str, ir.Tensor] = {}
        self.layers: list = []
        self.qref: dict[str, Ref] = {}  # int8 value -> IR tensor
        self.fref: dict[str, Ref] = {}  # float value == dequantized IR tensor
        self.qconst: dict[str, QConst] = {}  # float value == dequantized constant
        self.int_consts: dict[str, tuple] = {}  # int8 value == quantized constant
        self.pending: dict[str, Pending] = {}
        self.forked: dict[str, str] = {}  # pending value -> the fused op that took it
        self.input_q: str | None = None
        self.names: set[str] = set()
        self.concat_inputs: set[str] = set()  # tensors placed as a slice of some Concat output
        # CPU fallback state: regions (union-find over ids) of ONNX node indices.
        self.fallback = fallback
        self.initializer_names = {t.name for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.node_index = {id(n): k for k, n in enumerate(g.node)}
        self.parent: dict[int, int] = {}
        self.region_nodes: dict[int, set] = {}
        self.region_inputs: dict[int, set] = {}  # IR tensors read at the boundary
        self.region_seq: dict[int, int] = {}
        self.cpu_val: dict[str, int] = {}  # ONNX value computed inside a region -> region
        self.cpu_q: dict[str, tuple] = {}  # int8 per-tensor values in regions -> (scale, zp)
        self.cpu_dq: dict[str, str] = {}  # float value = DequantizeLinear(int8 region value)
        self.materialized: dict[str, int] = {}  # region int8 values that are IR tensors
        self.cpu_node: dict[str, int] = {}  # Q/DQ on region values -> node index
        self.float_outputs: dict[str, int] = {}  # float graph outputs computed on the CPU
        # element-wise chains: value -> the one int8 IR tensor it is a function of
        self.ewise: dict[str, str] = {}
        self.ewise_q: dict[str, tuple] = {}  # int8 values in chains -> (scale, zp)
        self.cpu_reasons: dict[str, str] = {}  # node -> why it runs on the host

    # ---- helpers

    def unsupported(self, node, name, reason=""):
        """The single exit for ops the core lacks. CPU fallback hook: the
        partitioner will catch UnsupportedOperatorError here and cut the
        node out instead."""
        raise UnsupportedOperatorError(node.op_type, name, reason)

    def const(self, name, node, nname, what):
        if name not in self.consts:
            self.unsupported(node, nname, f"{what} '{name}' must be a constant")
        return self.consts[name]

    def qparams(self, node, nname):
        scale = np.asarray(self.const(node.input[1], node, nname, "scale"), dtype=np.float64)
        if len(node.input) > 2 and node.input[2]:
            zp = self.const(node.input[2], node, nname, "zero point")
        else:
            zp = np.zeros(scale.shape, dtype=np.uint8)  # ONNX default: uint8, zero 0
        if "block_size" in attrs(node) and attrs(node)["block_size"]:
            self.unsupported(node, nname, "blocked quantization")
        return scale, np.asarray(zp)

    def act(self, node, nname, i) -> Ref:
        """The IR tensor behind activation input i of a compute node."""
        name = node.input[i]
        if name in self.ewise:
            return self.ewise_ref(name, node, nname)
        if name in self.fref:
            return self.fref[name]
        if name in self.pending or name == self.input_name:
            raise FrontendError(
                f"{node.op_type} '{nname}' reads the float tensor '{name}', which is not quantized "
                f"(no QuantizeLinear/DequantizeLinear in between); the accelerator computes in int8 only"
            )
        if name in self.consts or name in self.qconst:
            self.unsupported(node, nname, f"constant operand '{name}' where an activation is expected")
        raise FrontendError(f"{node.op_type} '{nname}' reads '{name}', which is not a quantized activation")

    def spatial_ok(self, ref: Ref, node, nname):
        h, w, _ = self.tensors[ref.q].shape
        if ref.flat and h * w > 1:
            self.unsupported(
                node,
                nname,
                "it reads a flattened HxWxC tensor with HxW > 1; flattening is a layout "
                "no-op in HWC only when it feeds Gemm/MatMul",
            )

    def weight(self, name, node, nname) -> QConst:
        if name not in self.qconst:
            self.unsupported(
                node, nname, f"weight '{name}' is not an int8 constant behind a DequantizeLinear"
            )
        w = self.qconst[name]
        if w.values.dtype != np.int8 or np.any(w.zero_point != 0):
            self.unsupported(node, nname, f"weight '{name}' must be int8 with zero point 0 (symmetric)")
        return w

    def bias(self, name, node, nname, n, acc_scale, beta=1.0) -> np.ndarray:
        """int32 bias (times beta) in accumulator units (acc_scale, which is
        in_scale * w_scale, times Gemm's alpha)."""
        if not name:
            return np.zeros(n, dtype=np.int32)
        size = self.qconst[name].values.size if name in self.qconst else np.size(self.consts.get(name, 0))
        if size not in (1, n):
            raise FrontendError(f"{node.op_type} '{nname}': bias '{name}' has {size} values for {n} outputs")
        if name in self.qconst:
            b = self.qconst[name]
            vals = np.broadcast_to(b.values.reshape(-1), (n,))
            bscale = np.broadcast_to(np.asarray(b.scale, dtype=np.float64).ravel(), (n,))
            bzp = np.broadcast_to(np.asarray(b.zero_point, dtype=np.int64).ravel(), (n,))
            if (
                b.values.dtype == np.int32
                and not np.any(bzp)
                and np.allclose(beta * bscale, acc_scale, rtol=1e-6, atol=0)
            ):
                return np.asarray(vals, dtype=np.int32).copy()  # onnxruntime's own int32 bias
            real = (vals.astype(np.float64) - bzp) * bscale
        elif name in self.consts:
            real = np.broadcast_to(np.asarray(self.consts[name], dtype=np.float64).reshape(-1), (n,))
        else:
            self.unsupported(node, nname, f"bias '{name}' must be a constant")
        q = round_half_even(beta * real / acc_scale)
        return np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)

    def layer_name(self, node, idx):
        name = node.name or f"{node.op_type}_{idx}"
        base, k = name, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def add_tensor(self, name, shape, scale, zp):
        self.tensors[name] = ir.Tensor(name, tuple(int(v) for v in shape), float(scale), int(zp))

    # ---- the walk

    def read(self) -> ir.Graph:
        handlers = {
            "QuantizeLinear": self.on_quantize,
            "DequantizeLinear": self.on_dequantize,
            "Conv": self.on_conv,
            "Gemm": self.on_gemm,
            "MatMul": self.on_matmul,
            "MaxPool": self.on_pool,
            "AveragePool": self.on_pool,
            "GlobalAveragePool": self.on_pool,
            "GlobalMaxPool": self.on_pool,
            "Add": self.on_add,
            "Sum": self.on_add,  # two-input Sum (Caffe2 exports) is Add
            "Sub": self.on_add,  # by a constant only
            "Mul": self.on_mul,  # by a per-channel constant only
            "BatchNormalization": self.on_batchnorm,
            "Concat": self.on_concat,
            "Relu": self.on_activation,
            "Clip": self.on_activation,
            "Resize": self.on_resize,
            "ConvTranspose": self.on_conv_transpose,
        }
        for v in VIEW_OPS:
            handlers[v] = self.on_view
        for idx, node in enumerate(self.model.graph.node):
            if node.op_type == "Constant":
                continue
            nname = node.name or f"{node.op_type}_{idx}"
            if self.fallback and any(i in self.cpu_val for i in node.input if i):
                self.on_cpu_reader(node, nname, idx, handlers)
                continue
            try:
                self.dispatch(node, nname, idx, handlers)
            except UnsupportedOperatorError as e:
                if not self.fallback:
                    raise
                self.cpu_reasons[nname] = e.reason or "no accelerator mapping"
                self.to_cpu(node, nname, idx)
        return self.finish()

    def dispatch(self, node, nname, idx, handlers):
        if self.ewise_step(node, nname, idx):
            return
        handler = handlers.get(node.op_type) if node.domain in ("", "ai.onnx", "com.microsoft") else None
        if handler is None or (node.domain == "com.microsoft" and node.op_type not in QDQ_OPS):
            self.unsupported(node, nname, f"the cores have no {node.op_type} (nor a fusion that absorbs it)")
        handler(node, nname, idx)

    # ---- CPU fallback: regions of ONNX nodes cut out into ir.CpuOp layers



    def on_quantize(self, node, nname, idx):
        x, out = node.input[0], node.output[0]
        scale, zp = self.qparams(node, nname)
        if x in self.consts:  # weight kept as float + Q/DQ pair (AddQDQPairToWeight)
            axis = attrs(node).get("axis", 1)
            vals = quantize_array(self.consts[x], scale, zp, axis)
            self.int_consts[out] = (vals, scale, zp, axis)
            return
        if zp.dtype != np.int8 or scale.size != 1:
            raise FrontendError(
                f"QuantizeLinear '{nname}' quantizes '{x}' to {zp.dtype} with {scale.size} scale(s); vfpga "
                f"activations are int8 per tensor (quantize with activation_type=QInt8, per-tensor activations)"
            )
        s, z = float(scale.ravel()[0]), int(zp.ravel()[0])
        if x == self.input_name:
            if self.input_q is None:
                self.input_q = out
                self.add_tensor(out, hwc(self.shapes[x], f"input '{x}'"), s, z)
                self.qref[out] = Ref(out)
                return
            ref = Ref(self.input_q)
        elif x in self.fref:
            ref = self.fref[x]
        elif x in self.pending:
            self.finalize(self.pending[x], out, s, z, nname)
            return
        elif x in self.forked:
            raise FrontendError(
                f"QuantizeLinear '{nname}' reads '{x}', which also feeds '{self.forked[x]}'; "
                f"the accelerator cannot fork a float value"
            )
        else:
            raise FrontendError(
                f"QuantizeLinear '{nname}' reads '{x}', which the accelerator path cannot produce"
            )
        src = self.tensors[ref.q]
        if (src.scale, src.zero_point) == (s, z):  # Q(DQ(q)) with equal params: the same int8 data
            self.qref[out] = ref
            return
        # Requantization to other params: a 1x1 pool applies the multiplier.
        name = self.layer_name(node, idx)
        mult, shift = fixed_point.quantize_multiplier(src.scale / s, max_shift=30)
        self.add_tensor(out, src.shape, s, z)
        self.layers.append(
            ir.Pool(name, ref.q, out, "max", (1, 1), mult=mult, shift=shift, onnx_nodes=ref.nodes + [nname])
        )
        self.qref[out] = Ref(out, ref.flat)

    def on_dequantize(self, node, nname, idx):
        x, out = node.input[0], node.output[0]
        scale, zp = self.qparams(node, nname)
        axis = attrs(node).get("axis", 1)
        if x in self.consts:
            self.qconst[out] = QConst(np.asarray(self.consts[x]), scale, zp, axis)
        elif x in self.int_consts:
            self.qconst[out] = QConst(*self.int_consts[x])
        elif x in self.qref:
            ref = self.qref[x]
            t = self.tensors[ref.q]
            if scale.size != 1 or (t.scale, t.zero_point) != (float(scale.ravel()[0]), int(zp.ravel()[0])):
                raise FrontendError(
                    f"DequantizeLinear '{nname}' reads '{x}' with other parameters than its QuantizeLinear wrote"
                )
            self.fref[out] = ref
        else:
            raise FrontendError(
                f"DequantizeLinear '{nname}' reads '{x}', which is neither a constant nor a quantized tensor"
            )

    def on_view(self, node, nname, idx):
        x, out = node.input[0], node.output[0]
        if x in self.ewise:  # a reshape of an element-wise result: its table first
            if x in self.ewise_q:
                if x not in self.tensors:
                    self.build_lut(x)
            else:
                self.fref[x] = self.ewise_ref(x, node, nname)
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            self.unsupported(node, nname, "Dropout mask output")
        if out not in self.shapes:
            raise FrontendError(f"{node.op_type} '{nname}': output shape unknown after shape inference")
        new = self.shapes[out]

        def view(hwc, flat_in):
            h, w, c = hwc
            if node.op_type in ("Identity", "Dropout"):
                return flat_in
            if list(new) == [1, c, h, w]:  # also un-flattening back: same HWC data
                return False
            if h * w == 1 and int(np.prod(new)) == c and (len(new) == 2 or len(new) == 4) and new[0] == 1:
                return len(new) == 2
            if list(new) == [1, h * w * c]:
                return True
            self.unsupported(node, nname, f"reshape of HWC {hwc} to {list(new)} changes the memory layout")

        if x in self.fref or x in self.qref:
            table = self.fref if x in self.fref else self.qref
            ref = table[x]
            table[out] = Ref(ref.q, view(self.tensors[ref.q].shape, ref.flat), ref.nodes + [nname])
        elif x in self.pending:
            flat = view(self.pending[x].shape, self.pending[x].flat)
            p = self.take_pending(x, node, nname)
            p.flat = flat
            p.nodes.append(nname)
            self.pending[out] = p
        else:
            raise FrontendError(f"{node.op_type} '{nname}' reads '{x}', which is not a quantized activation")

    def on_activation(self, node, nname, idx):
        x, out = node.input[0], node.output[0]
        if node.op_type == "Relu":
            lo, hi = 0.0, math.inf
        else:
            a = attrs(node)
            lo, hi = a.get("min", -math.inf), a.get("max", math.inf)  # opset < 11
            if len(node.input) > 1 and node.input[1]:
                lo = float(self.const(node.input[1], node, nname, "Clip min"))
            if len(node.input) > 2 and node.input[2]:
                hi = float(self.const(node.input[2], node, nname, "Clip max"))
        if x in self.pending:  # Conv -> Relu -> Q: fold into the producer's clamp
            p = self.take_pending(x, node, nname)
            p.lo, p.hi = max(p.lo, lo), min(p.hi, hi)
            p.nodes.append(nname)
            self.pending[out] = p
            return
        ref = self.act(node, nname, 0)
        t = self.tensors[ref.q]
        name = self.layer_name(node, idx)

        # DQ -> Relu -> Q: a standalone 1x1 max pool (requantizing, clamping);
        # finish() folds it into the producer when the params make that exact.
        def build(out_t, clip):
            mult, shift = fixed_point.quantize_multiplier(t.scale / out_t.scale, max_shift=30)
            return ir.Pool(
                name,
                ref.q,
                out_t.name,
                "max",
                (1, 1),
                mult=mult,
                shift=shift,
                clip=clip,
                onnx_nodes=ref.nodes + [nname],
            )

        self.pending[out] = Pending(build, t.shape, [], nname, ref.flat, lo, hi)

    def take_pending(self, x, node, nname) -> Pending:
        """Move a pending float value on through a fused op (view, Relu)."""
        p = self.pending[x]
        if p.done is not None:
            raise FrontendError(
                f"{node.op_type} '{nname}' reads the float output of '{p.producer}', which is also quantized "
                f"as it is; the accelerator cannot fork a float value"
            )
        del self.pending[x]
        self.forked[x] = nname
        return p

    def finalize(self, p: Pending, out: str, scale: float, zp: int, qname: str):
        if p.done is not None:  # one Q per consumer (DedicatedQDQPair): the same int8 data
            first, s0, z0 = p.done
            if (s0, z0) != (scale, zp):
                raise FrontendError(
                    f"the float output of '{p.producer}' is quantized twice with different parameters ('{qname}')"
                )
            self.qref[out] = Ref(first, p.flat)
            return
        p.done = (out, scale, zp)
        if out in self.shapes:
            got = hwc(self.shapes[out], f"'{out}'")
            if got != tuple(p.shape):
                raise FrontendError(
                    f"'{p.producer}': computed output shape {p.shape} (HWC) but ONNX infers {got}"
                )
        self.add_tensor(out, p.shape, scale, zp)
        try:
            built = p.build(self.tensors[out], clip_bounds(p.lo, p.hi, scale, zp))
        except ValueError as e:  # e.g. a requantization multiplier >= 2**31
            raise FrontendError(f"'{p.producer}' cannot be requantized to '{out}': {e}") from e
        built = built if isinstance(built, list) else [built]
        layer = built[-1]  # the one writing `out`
        layer.onnx_nodes = list(layer.onnx_nodes) + [n for n in p.nodes if n not in layer.onnx_nodes]
        self.layers.extend(built)
        self.qref[out] = Ref(out, p.flat)


    # ---- wrap-up

    def finish(self) -> ir.Graph:
        g = self.model.graph
        if self.input_q is None:
            raise FrontendError(f"the graph input '{self.input_name}' is not quantized by a QuantizeLinear")
        outputs = []
        for o in g.output:
            name = self.graph_output(o.name)
            outputs.append(name)
            if o.name in self.shapes:
                self.tensors[name].onnx_shape = tuple(self.shapes[o.name])
        self.tensors[self.input_q].onnx_shape = tuple(self.shapes[self.input_name])
        if self.region_nodes:
            self.layers = self.order(self.build_cpu_ops(outputs))
        self.fold_activations(outputs)
        self.fold_tables(outputs)
        used = {self.input_q, *outputs}
        for layer in self.layers:
            used.update(layer_inputs(layer))
            used.update(layer_outputs(layer))
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        graph = ir.Graph(tensors, self.layers, [self.input_q], outputs, name=g.name or "model")
        graph.onnx_nodes = [
            (n.name or f"{n.op_type}_{k}", n.op_type) for k, n in enumerate(g.node)
        ]
        return graph

    def graph_output(self, name: str) -> str:
        """The IR tensor holding graph output `name`."""
        if name in self.ewise:
            dq = self.producer.get(name)
            v = dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else name
            if v in self.ewise_q:
                if v not in self.tensors:
                    self.build_lut(v)
                return v
            if not self.fallback:
                raise FrontendError(f"graph output '{name}' is a float result of element-wise ops that is not "
                                    f"quantized; the accelerator's outputs are int8 (fallback=True runs it on the host)")
            self.ewise_to_cpu(name)
        if name in self.cpu_val:
            q = self.cpu_dq.get(name, name)
            if self.materializable(q):  # int8 from the CPU, dequantized on the host
                self.materialize(q)
                return q
            if name not in self.shapes:
                raise FrontendError(f"graph output '{name}' (computed on the CPU) has no static shape")
            self.add_tensor(name, hwc(self.shapes[name], f"graph output '{name}'"), 1.0, 0)
            elem = next(o for o in self.model.graph.output if o.name == name).type.tensor_type.elem_type
            if elem != TensorProto.FLOAT:
                raise FrontendError(
                    f"graph output '{name}' (computed on the CPU) is {TensorProto.DataType.Name(elem)}; "
                    f"outputs are int8 tensors or float32 ones"
                )
            self.tensors[name].dtype = "float32"
            self.float_outputs[name] = self.cpu_val[name]
            return name
        ref = self.fref.get(name) or self.qref.get(name)
        if ref is None:
            p = self.pending.get(name)
            src = f"float output of '{p.producer}'" if p else "not produced through QuantizeLinear/DequantizeLinear"
            raise FrontendError(f"graph output '{name}' is {src}; the accelerator's outputs are int8 tensors")
        return ref.q

    def fold_activations(self, outputs):
        """Fold identity-requantizing 1x1 max pools (a Relu/Clip that ORT
        kept between Q/DQ pairs with unchanged params) into the layer that
        produces their input: max(clamp(v, lo1, hi1), lo2) ... is exactly
        clamp(v, max(lo), min(hi)) when the int8 data means the same."""
        changed = True
        while changed:
            changed = False
            producers = {o: layer for layer in self.layers for o in layer_outputs(layer)}
            readers: dict[str, int] = {}
            for layer in self.layers:
                for i in layer_inputs(layer):
                    readers[i] = readers.get(i, 0) + 1
            for p in self.layers:
                if not (p.kind == "pool" and p.mode == "max" and p.kernel == (1, 1) and p.stride == (1, 1)):
                    continue
                if p.pads != (0, 0, 0, 0) or (p.mult, p.shift) != (1 << 30, 30):
                    continue
                src, dst = self.tensors[p.input], self.tensors[p.output]
                prod = producers.get(p.input)
                if prod is None or prod.kind not in ("conv", "pool", "add") or getattr(prod, "table", None) is not None:
                    continue
                if readers.get(p.input) != 1 or p.input in outputs:
                    continue
                if (src.scale, src.zero_point) != (dst.scale, dst.zero_point):
                    continue
                lo, hi = max(prod.clip[0], p.clip[0]), min(prod.clip[1], p.clip[1])
                if lo > hi:
                    continue
                prod.clip = (lo, hi)
                prod.output = p.output
                prod.onnx_nodes = list(prod.onnx_nodes) + [
                    n for n in p.onnx_nodes if n not in prod.onnx_nodes
                ]
                self.layers.remove(p)
                changed = True
                break





def to_graph(model, fallback: bool = False, *, input_shape=None) -> ir.Graph:
    """Read a QDQ model (path, bytes or ModelProto) into the layer IR.

    fallback=False: raises UnsupportedOperatorError for the first op or
    attribute the accelerator does not have. fallback=True: every maximal
    connected run of such nodes becomes one ir.CpuOp (an ONNX model cut out
    of the QDQ graph, its boundary DequantizeLinear/QuantizeLinear nodes
    included, so it reads and writes int8 tensors; a float graph output
    computed on the CPU is a float32 output of it, ir.Tensor.dtype
    "float32"). FrontendError for anything else that cannot be mapped
    exactly. Constant subgraphs (Constant, Shape of static shapes,
    ConstantOfShape, ...) are folded first. The graph's ``onnx_nodes`` list
    (name, op_type) of every node of the QDQ model feeds placement_report."""
    proto = load_model(model, input_shape=input_shape)
    if not is_qdq(proto):
        raise FrontendError(
            "the model holds no QuantizeLinear/DequantizeLinear: quantize it first (frontend.quantize)"
        )
    drop_initializer_inputs(proto)
    try:
        fold_constants(proto)
        proto = infer_shapes(proto)
    except Exception as e:
        raise FrontendError(f"ONNX shape inference failed on the quantized model: {e}") from e
    return QdqReader(proto, fallback=fallback).read()


def placement_report(graph: ir.Graph) -> list[tuple[str, str, str]]:
    """Where each node of the QDQ model the graph was read from runs:
    (node name, op_type, "accelerator" | "cpu" | "folded"), in model order.
    "folded": absorbed at compile time (Quantize/DequantizeLinear pairs,
    views, Relu/Clip fused into a clamp, constants) -- no work of its own."""
    nodes = getattr(graph, "onnx_nodes", None)
    if not nodes:
        raise FrontendError("the graph carries no ONNX node list (it was not read by frontend.to_graph)")
    op_of = dict(nodes)
    plumbing = QDQ_OPS | VIEW_OPS | {"Concat"}
    where = {}
    for layer in graph.layers:
        if layer.kind == "cpu":
            for n in layer.onnx_nodes:
                where[n] = "cpu"
            continue
        names = list(layer.onnx_nodes)
        compute = [n for n in names if op_of.get(n) not in plumbing]
        # A layer made of plumbing only (a requantizing QuantizeLinear, a
        # Concat's copy) is that plumbing's work; otherwise plumbing is folded.
        for n in compute or [n for n in names if op_of.get(n) not in VIEW_OPS]:
            where.setdefault(n, "accelerator")
    return [(name, op, where.get(name, "folded")) for name, op in nodes]
