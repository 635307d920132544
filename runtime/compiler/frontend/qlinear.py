"""Integer ONNX models (the QOperator format) -> the layer IR.

Reads graphs built from QLinearConv, QLinearMatMul, integer MaxPool,
integer Relu/Clip, views (Flatten/Reshape/Squeeze/Unsqueeze/Identity) and the
com.microsoft QGemm / QLinearAdd / QLinearAveragePool /
QLinearGlobalAveragePool (what onnxruntime's QOperator quantization emits), with an int8/uint8 graph input (or a float input
behind one QuantizeLinear) and int8/uint8 outputs (or float ones behind a
DequantizeLinear). Every parameter (weights, scales, zero points, bias) must
be a constant; :mod:`vfpga.runtime.backend` binds the ones a model takes as
graph inputs before it calls :func:`convert`.

uint8 is the core's int8, shifted
---------------------------------
A uint8 tensor u with zero point zu is stored as s = u - 128 with zero point
zs = zu - 128, both inside [-128, 127]. Every ONNX integer formula reads a
tensor only through differences u - zu = s - zs (QLinearConv/MatMul:
sum((x - x_zp) * (w - w_zp)); pools and adds: x - x_zp; max and clip commute
with a shift), so the int32 accumulators are identical. At the output ONNX
computes y_u = clamp(r + zy_u, 0, 255) and the core
y_s = clamp(r + zy_s, -128, 127) = clamp(r + zy_u, 0, 255) - 128 = y_u - 128
for the same rounded value r. Weights shift the same way
(w_u - wzp_u = w_s - wzp_s). So the shift is exact, in both directions.

Weight zero points
------------------
The core multiplies by int8 weights and has no weight zero point; the
effective weight w - w_zp lies in [-255, 255]. When it leaves [-128, 127],
it is split into P int8 planes (w_eff = sum of planes, greedily clipped) and
the input is copied P times (exact 1x1 max-pool copies) into the channel
slices of one tensor (Concat = address placement): one convolution over the
P-fold input accumulates sum((x - x_zp) * w_eff) in the same int32
accumulator, so the result is exact. A grouped convolution with P > 1 becomes
a dense one with a block-diagonal weight (the off-diagonal zeros add
nothing).

Requantization and exactness
----------------------------
ONNX requantizes in floating point: y = saturate(round_half_even(acc * M) +
y_zp) with M = x_scale * w_scale / y_scale formed in the scales' float type
(the reference then multiplies the int32 acc by it in float64). The core
computes y = saturate(y_zp + ((acc * mult + 2**(shift-1)) >> shift)). We
form M in float32 (``REQUANT_DTYPE``, as ONNX does for float32 scales); its
24-bit mantissa fits mult's 31 bits, so mult * 2**-shift == M exactly
(for M >= 2**-31). With |acc| < 2**29 ONNX's float64 product is exact too,
so the two agree bit for bit except where acc * M is exactly halfway
between two integers: the core rounds that tie up, ONNX to even, 1 LSB
apart. A tie needs acc * mult to be an odd multiple of 2**(shift-1), which
random float scales practically never give and power-of-two scales often
do; host_tests/test_onnx_backend.py counts them (measured: every mismatch
is such a tie, +1 LSB). float16 scales are widened exactly and M is formed
in float32, not float16 (ONNX's node tests for float16 expect the same
outputs as for float32). QGemm multiplies M by alpha in float64. Pools and
QLinearAdd use the IR's own formulas (rdiv, a shared shift), within 1 LSB of
onnxruntime's float arithmetic (equal on the tests' CNNs).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vfpga.runtime.compiler import ir
from vfpga.runtime.hw import fixed_point

from .errors import FrontendError, UnsupportedOperatorError
from .ops import attrs, infer_shapes, resolve_pads
from .qlinear_model import (
    INT_TYPES,
    INTEGER_OPS,
    MS_OPS,
    NOT_ON_CORE,
    REQUANT_DTYPE,
    IntegerModel,
    IOMap,
    QValue,
    pool_geometry,
    storage_offset,
    weight_planes,
)


class QLinearReader:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                a = n.attribute[0]
                self.consts[n.output[0]] = (
                    numpy_helper.to_array(a.t) if a.name == "value" else np.asarray(helper.get_attribute_value(a))
                )
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise FrontendError(
                f"the integer model has {len(inputs)} runtime inputs ({names}); the accelerator takes one "
                f"activation tensor (parameters must be constants)"
            )
        self.graph_input = inputs[0]
        self.shapes = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        self.vals: dict[str, QValue] = {}
        self.tensors: dict[str, ir.Tensor] = {}
        self.layers: list = []
        self.names: set[str] = set()
        self.extra_placement: dict[str, str] = {}
        self.input_map: IOMap | None = None
        self.float_outputs: dict[str, tuple[str, float, int, np.dtype]] = {}

    # ---- helpers

    def const(self, name, op, nname, what) -> np.ndarray:
        if not name:
            return None
        if name not in self.consts:
            raise UnsupportedOperatorError(op, nname, f"{what} '{name}' must be a constant")
        return self.consts[name]

    def qparam(self, node, nname, i_scale, i_zp, what, n=None):
        """(scale float array, zero point int64 array in the int8 store, ONNX dtype)."""
        s = self.const(node.input[i_scale], node.op_type, nname, f"{what} scale")
        zp_raw = self.const(node.input[i_zp] if len(node.input) > i_zp else "", node.op_type, nname, f"{what} zero point")
        if zp_raw is None:
            zp_raw = np.zeros(np.shape(s), dtype=np.uint8)
        s = np.asarray(s)
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise FrontendError(f"{node.op_type} '{nname}': {what} scale must be positive and finite, got {s}")
        zp_raw = np.asarray(zp_raw)
        zp = zp_raw.astype(np.int64) - storage_offset(zp_raw.dtype)
        if n is None and (s.size != 1 or zp.size != 1):
            raise UnsupportedOperatorError(
                node.op_type, nname, f"{what} is quantized per axis; the core keeps activations per tensor"
            )
        return s, zp, zp_raw.dtype

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names or name in self.tensors:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def new_tensor(self, base, shape, scale, zp) -> str:
        name = self.unique(base)
        self.tensors[name] = ir.Tensor(name, tuple(int(v) for v in shape), float(scale), int(zp))
        return name

    def val(self, node, nname, i) -> QValue:
        name = node.input[i]
        if name in self.vals:
            return self.vals[name]
        if name in self.consts:
            raise UnsupportedOperatorError(node.op_type, nname, f"constant operand '{name}' where an activation is expected")
        raise FrontendError(f"{node.op_type} '{nname}' reads '{name}', which is not an int8/uint8 activation")

    def want_zp(self, v: QValue, zp: int, node, nname, what="input"):
        t = self.tensors[v.ir]
        if t.zero_point != zp:
            raise FrontendError(
                f"{node.op_type} '{nname}': {what} zero point {zp + storage_offset(v.dtype)} differs from the "
                f"one '{node.input[0]}' carries ({t.zero_point + storage_offset(v.dtype)}); one int8 tensor has "
                f"one zero point on the core"
            )

    def out_dtype(self, zp_dtype, node, nname):
        if np.dtype(zp_dtype) not in (np.dtype(np.int8), np.dtype(np.uint8)):
            raise UnsupportedOperatorError(node.op_type, nname, f"{zp_dtype} output (only int8/uint8)")
        return np.dtype(zp_dtype)

    # ---- the input

    def input_zp_hint(self) -> tuple[int | None, float | None]:
        """Zero point/scale the first QLinear consumer expects of the raw
        input (through zero-point-agnostic ops), in the ONNX type."""
        frontier, seen = [self.graph_input.name], set()
        consumers: dict[str, list] = {}
        for n in self.model.graph.node:
            for k, i in enumerate(n.input):
                consumers.setdefault(i, []).append((n, k))
        while frontier:
            name = frontier.pop(0)
            if name in seen:
                continue
            seen.add(name)
            for n, k in consumers.get(name, []):
                if n.op_type in ("QLinearConv", "QLinearMatMul", "QLinearAveragePool", "QLinearGlobalAveragePool"):
                    if k == 0 and len(n.input) > 2 and n.input[2] in self.consts:
                        return int(np.asarray(self.consts[n.input[2]]).ravel()[0]), float(
                            np.asarray(self.consts[n.input[1]]).ravel()[0]
                        )
                elif n.op_type == "QLinearAdd" and k in (0, 3):
                    if len(n.input) > k + 2 and n.input[k + 2] in self.consts:
                        return int(np.asarray(self.consts[n.input[k + 2]]).ravel()[0]), float(
                            np.asarray(self.consts[n.input[k + 1]]).ravel()[0]
                        )
                elif n.op_type in ("MaxPool", "Relu", "Clip", "Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze"):
                    frontier.extend(o for o in n.output if o)
        return None, None

    def grouped_input(self) -> bool:
        for n in self.model.graph.node:
            if n.op_type == "QLinearMatMul" and n.input[0] == self.graph_input.name and n.input[3] in self.consts:
                b = self.consts[n.input[3]]
                if np.ndim(b) == 3 and b.shape[0] > 1:
                    return True
        return False

    def make_input(self, raw_dtype, scale, zp_onnx, qtype, name_for_ir):
        x = self.graph_input
        shape = self.shapes.get(x.name)
        if shape is None:
            raise FrontendError(f"input '{x.name}' has no static shape; the accelerator compiles for fixed shapes")
        if len(shape) == 4:
            kind, hwc = "nchw", (shape[2], shape[3], shape[1])
            sample = (1,) + tuple(shape[1:])
        elif len(shape) == 3 and self.grouped_input():
            kind, hwc = "grouped", (1, shape[1], shape[0] * shape[2])
            sample = tuple(shape)
        elif 1 <= len(shape) <= 3:
            kind = "rows"
            hwc = tuple([1] * (3 - len(shape)) + list(shape))
            sample = tuple(shape)
        else:
            raise UnsupportedOperatorError("input", x.name, f"rank-{len(shape)} input {list(shape)}")
        store_zp = int(zp_onnx) - storage_offset(qtype)
        irn = self.new_tensor(name_for_ir, hwc, scale, store_zp)
        self.input_map = IOMap(
            x.name,
            irn,
            kind,
            hwc,
            np.dtype(raw_dtype),
            scale=None if np.issubdtype(np.dtype(raw_dtype), np.integer) else scale,
            zero_point=None if np.issubdtype(np.dtype(raw_dtype), np.integer) else int(zp_onnx),
            qtype=np.dtype(qtype),
        )
        return QValue(irn, kind, sample, np.dtype(qtype))

    # ---- the walk

    def read(self) -> IntegerModel:
        x = self.graph_input
        et = x.type.tensor_type.elem_type
        g = self.model.graph
        if et in INT_TYPES:
            zp, scale = self.input_zp_hint()
            dt = INT_TYPES[et]
            if zp is None:
                zp = storage_offset(dt)  # the value's own range: real = q (scale 1)
            self.vals[x.name] = self.make_input(dt, scale or 1.0, zp, dt, x.name)
        elif et != TensorProto.FLOAT:
            raise FrontendError(
                f"input '{x.name}' has element type {TensorProto.DataType.Name(et)}; the integer path takes "
                f"int8/uint8 (or float32 behind a QuantizeLinear)"
            )
        handlers = {
            "QLinearConv": self.on_qconv,
            "QLinearMatMul": self.on_qmatmul,
            "MaxPool": self.on_maxpool,
            "QLinearAveragePool": self.on_qavgpool,
            "QLinearGlobalAveragePool": self.on_qavgpool,
            "QLinearAdd": self.on_qadd,
            "QGemm": self.on_qgemm,
            "Relu": self.on_clip,
            "Clip": self.on_clip,
            "QuantizeLinear": self.on_quantize,
            "DequantizeLinear": self.on_dequantize,
            "Flatten": self.on_view,
            "Reshape": self.on_view,
            "Identity": self.on_view,
            "Squeeze": self.on_view,
            "Unsqueeze": self.on_view,
        }
        for idx, node in enumerate(g.node):
            if node.op_type == "Constant":
                continue
            nname = node.name or f"{node.op_type}_{idx}"
            domain_ok = node.domain in ("", "ai.onnx") and node.op_type in INTEGER_OPS
            domain_ok |= node.domain == "com.microsoft" and node.op_type in MS_OPS
            if node.op_type in NOT_ON_CORE:
                raise UnsupportedOperatorError(node.op_type, nname, NOT_ON_CORE[node.op_type])
            if not domain_ok:
                raise UnsupportedOperatorError(node.op_type, nname, "not an integer op the CNN core maps")
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                self.extra_placement[nname] = "host"
            elif node.op_type in ("Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze"):
                self.extra_placement[nname] = "accelerator"
            handlers[node.op_type](node, nname, idx)
        return self.finish()

    def finish(self) -> IntegerModel:
        g = self.model.graph
        if self.input_map is None:
            raise FrontendError(f"the float input '{self.graph_input.name}' is not quantized by a QuantizeLinear")
        outs, shapes, names = [], [], []
        for o in g.output:
            if o.name in self.float_outputs:
                vname, scale, zp, qtype = self.float_outputs[o.name]
                v = self.vals[vname]
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type))
                m = IOMap(o.name, v.ir, v.kind, self.tensors[v.ir].shape, dtype, scale, zp, qtype)
            elif o.name in self.vals:
                v = self.vals[o.name]
                m = IOMap(o.name, v.ir, v.kind, self.tensors[v.ir].shape, v.dtype)
            else:
                raise FrontendError(f"graph output '{o.name}' is not produced by an op the integer path maps")
            if v.ir == self.input_map.ir_name:
                raise FrontendError(f"graph output '{o.name}' is the input itself; nothing runs on the core")
            outs.append(m)
            shapes.append(v.onnx_shape)
            names.append(v.ir)
        graph = ir.Graph(self.tensors, self.layers, [self.input_map.ir_name], names, name=g.name or "model")
        return IntegerModel(graph, self.input_map, outs, shapes, self.extra_placement)

    # ---- boundary ops

    def on_quantize(self, node, nname, idx):
        if node.input[0] != self.graph_input.name or self.input_map is not None:
            raise UnsupportedOperatorError(
                node.op_type, nname, "QuantizeLinear is taken only on the float graph input (once)"
            )
        a = attrs(node)
        if a.get("block_size"):
            raise UnsupportedOperatorError(node.op_type, nname, "blocked quantization")
        s, zp, qtype = self.qparam(node, nname, 1, 2, "output")
        self.out_dtype(qtype, node, nname)
        zp_onnx = int(zp.ravel()[0]) + storage_offset(qtype)
        v = self.make_input(np.float32, float(s.ravel()[0]), zp_onnx, qtype, node.output[0])
        self.vals[node.output[0]] = v

    def on_dequantize(self, node, nname, idx):
        v = self.val(node, nname, 0)
        out = node.output[0]
        if out not in {o.name for o in self.model.graph.output}:
            raise UnsupportedOperatorError(
                node.op_type,
                nname,
                "a DequantizeLinear inside the graph (float ops in between are a QDQ model; pass it as one)",
            )
        s, zp, qtype = self.qparam(node, nname, 1, 2, "input")
        if np.dtype(qtype) != v.dtype:
            raise FrontendError(f"DequantizeLinear '{nname}': zero point type {qtype} differs from its input's {v.dtype}")
        self.float_outputs[out] = (node.input[0], float(s.ravel()[0]), int(zp.ravel()[0]) + storage_offset(qtype), v.dtype)

    def on_view(self, node, nname, idx):
        v = self.val(node, nname, 0)
        out = node.output[0]
        if node.op_type == "Identity":
            self.vals[out] = v
            return
        new = self.view_shape(node, nname, tuple(v.onnx_shape))
        h, w, c = self.tensors[v.ir].shape
        size = h * w * c
        if int(np.prod(new)) != size:
            raise FrontendError(f"{node.op_type} '{nname}': {list(new)} does not hold {size} values")
        if v.kind in ("nchw", "flat") and len(new) == 2 and new[0] == 1:
            self.vals[out] = QValue(v.ir, "flat", tuple(new), v.dtype)
        elif v.kind in ("nchw", "flat") and len(new) == 4 and list(new) == [1, c, h, w]:
            self.vals[out] = QValue(v.ir, "nchw", tuple(new), v.dtype)
        elif v.kind in ("nchw", "flat", "rows") and h * w == 1 and len(new) == 4 and list(new) == [1, size, 1, 1]:
            self.vals[out] = QValue(v.ir, "nchw", tuple(new), v.dtype)
        elif v.kind == "rows" and len(new) <= 3 and tuple([1] * (3 - len(new)) + list(new)) == (h, w, c):
            self.vals[out] = QValue(v.ir, "rows", tuple(new), v.dtype)
        else:
            raise UnsupportedOperatorError(
                node.op_type, nname, f"reshape of {v.kind} {list(v.onnx_shape)} to {list(new)} changes the memory layout"
            )

    def view_shape(self, node, nname, shape) -> tuple[int, ...]:
        """Output shape of Flatten/Reshape/Squeeze/Unsqueeze (ONNX shape
        inference does not see through the com.microsoft ops)."""
        a = attrs(node)
        op = node.op_type
        if op == "Flatten":
            axis = int(a.get("axis", 1)) % (len(shape) + 1) if len(shape) else 0
            return (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
        if op == "Reshape":
            target = [int(d) for d in self.const(node.input[1], op, nname, "shape")]
            dims = [shape[i] if d == 0 and not a.get("allowzero", 0) else d for i, d in enumerate(target)]
            if dims.count(-1) == 1:
                known = int(np.prod([d for d in dims if d != -1]))
                dims[dims.index(-1)] = int(np.prod(shape)) // max(known, 1)
            return tuple(dims)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node.input[1], op, nname, "axes")
        if op == "Squeeze":
            if axes is None:
                return tuple(d for d in shape if d != 1)
            drop = {int(x) % len(shape) for x in np.ravel(axes)}
            return tuple(d for i, d in enumerate(shape) if i not in drop)
        rank = len(shape) + len(np.ravel(axes))
        ins = sorted(int(x) % rank for x in np.ravel(axes))
        dims, it = [], iter(shape)
        for i in range(rank):
            dims.append(1 if i in ins else next(it))
        return tuple(dims)

    # ---- compute ops

    def add_conv(self, name, src: str, w_eff, groups, bias, m, out: str, stride, pads, nodes, out_range):
        """Conv layer(s) for an integer weight (planes when it leaves int8)."""
        planes = weight_planes(w_eff)
        if len(planes) > 1:
            oc, icg, kh, kw = w_eff.shape
            if groups > 1:  # dense with a block-diagonal weight: channel order (plane, group, i)
                dense = np.zeros((oc, icg * groups, kh, kw), dtype=np.int64)
                ocg = oc // groups
                for gi in range(groups):
                    dense[gi * ocg : (gi + 1) * ocg, gi * icg : (gi + 1) * icg] = w_eff[gi * ocg : (gi + 1) * ocg]
                planes, groups = weight_planes(dense), 1
            t = self.tensors[src]
            copies = []
            for p in range(len(planes)):
                c = self.new_tensor(f"{src}@plane{p}", t.shape, t.scale, t.zero_point)
                self.layers.append(ir.Pool(self.unique(f"{name}:copy{p}"), src, c, "max", (1, 1), onnx_nodes=list(nodes)))
                copies.append(c)
            h, w, ch = t.shape
            cat = self.new_tensor(f"{src}@planes", (h, w, ch * len(planes)), t.scale, t.zero_point)
            self.layers.append(ir.Concat(self.unique(f"{name}:planes"), tuple(copies), cat, list(nodes)))
            src, weight = cat, np.concatenate(planes, axis=1)
        else:
            weight = planes[0]
        mult, shift = fixed_point.quantize_multipliers(m)
        self.layers.append(
            ir.Conv(
                self.unique(name),
                src,
                out,
                np.ascontiguousarray(weight, dtype=np.int8),
                np.asarray(bias, dtype=np.int32),
                mult,
                shift,
                stride=tuple(int(s) for s in stride),
                pads=tuple(int(p) for p in pads),
                groups=int(groups),
                clip=out_range,
                onnx_nodes=list(nodes),
            )
        )

    def multiplier(self, x_s, w_s, y_s, n, node, nname) -> np.ndarray:
        dt = REQUANT_DTYPE
        w = np.broadcast_to(np.asarray(w_s).astype(dt).ravel(), (n,)) if np.size(w_s) in (1, n) else None
        if w is None:
            raise FrontendError(f"{node.op_type} '{nname}': {np.size(w_s)} weight scales for {n} output channels")
        m = (dt(np.asarray(x_s).ravel()[0]) * w / dt(np.asarray(y_s).ravel()[0])).astype(dt)
        if not np.all(np.isfinite(m)) or np.any(m <= 0) or np.any(m >= 2.0**31):
            raise FrontendError(f"{node.op_type} '{nname}': requantization multiplier {m} is outside (0, 2**31)")
        return m.astype(np.float64)

    def on_qconv(self, node, nname, idx):
        a = attrs(node)
        v = self.val(node, nname, 0)
        if v.kind != "nchw":
            raise UnsupportedOperatorError(node.op_type, nname, f"input of shape {list(v.onnx_shape)} (only NCHW)")
        x_s, x_zp, _ = self.qparam(node, nname, 1, 2, "input")
        self.want_zp(v, int(x_zp.ravel()[0]), node, nname)
        w = self.const(node.input[3], node.op_type, nname, "weight")
        if w.ndim != 4:
            raise UnsupportedOperatorError(node.op_type, nname, f"{w.ndim - 2}-D convolution (only 2-D)")
        oc, icg, kh, kw = w.shape
        w_s, w_zp, w_dt = self.qparam(node, nname, 4, 5, "weight", n=oc)
        if np.dtype(w.dtype) != np.dtype(w_dt) or w_zp.size not in (1, oc):
            raise FrontendError(f"QLinearConv '{nname}': weight {w.dtype} / zero point {w_dt} x{w_zp.size} do not fit")
        y_s, y_zp, y_dt = self.qparam(node, nname, 6, 7, "output")
        y_dt = self.out_dtype(y_dt, node, nname)
        groups = int(a.get("group", 1))
        h, wd, c = self.tensors[v.ir].shape
        if icg * groups != c or oc % groups:
            raise FrontendError(f"QLinearConv '{nname}': weight {w.shape} with group {groups} does not fit {c} channels")
        if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
            raise UnsupportedOperatorError(node.op_type, nname, f"dilations {list(a['dilations'])} (only 1)")
        strides = tuple(int(s) for s in a.get("strides", [1, 1]))
        pads = resolve_pads(node.op_type, nname, a, (h, wd), (kh, kw), strides)
        oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
        ow = (wd + pads[1] + pads[3] - kw) // strides[1] + 1
        if oh < 1 or ow < 1:
            raise FrontendError(f"QLinearConv '{nname}': empty output")
        w_eff = w.astype(np.int64) - (np.asarray(w_zp).reshape(-1, 1, 1, 1) + storage_offset(w_dt))
        bias = self.const(node.input[8], node.op_type, nname, "bias") if len(node.input) > 8 and node.input[8] else None
        if bias is None:
            bias = np.zeros(oc, dtype=np.int32)
        elif bias.dtype != np.int32 or bias.size != oc:
            raise FrontendError(f"QLinearConv '{nname}': bias must be int32 [{oc}], got {bias.dtype} {list(bias.shape)}")
        m = self.multiplier(x_s, w_s, y_s, oc, node, nname)
        out = self.new_tensor(node.output[0], (oh, ow, oc), float(y_s.ravel()[0]), int(y_zp.ravel()[0]))
        self.add_conv(nname, v.ir, w_eff, groups, bias.ravel(), m, out, strides, pads, [nname], (-128, 127))
        self.vals[node.output[0]] = QValue(out, "nchw", (1, oc, oh, ow), y_dt)

    def on_qmatmul(self, node, nname, idx):
        v = self.val(node, nname, 0)
        a_s, a_zp, _ = self.qparam(node, nname, 1, 2, "input")
        self.want_zp(v, int(a_zp.ravel()[0]), node, nname)
        b = self.const(node.input[3], node.op_type, nname, "B")
        y_s, y_zp, y_dt = self.qparam(node, nname, 6, 7, "output")
        self.matmul(node, nname, v, a_s, b, y_s, y_zp, y_dt)

    def on_qgemm(self, node, nname, idx):
        """com.microsoft QGemm: Y = alpha * a_s * b_s * ((A - a_zp)(B - b_zp) + C),
        C int32 in units of alpha * a_s * b_s, requantized to y."""
        a = attrs(node)
        if a.get("transA", 0):
            raise UnsupportedOperatorError(node.op_type, nname, "transA=1 (the activation must be [batch, K])")
        if len(node.input) < 8 or not node.input[7]:
            raise UnsupportedOperatorError(
                node.op_type, nname, "a float output (no y_scale): the core writes int8 only"
            )
        v = self.val(node, nname, 0)
        a_s, a_zp, _ = self.qparam(node, nname, 1, 2, "input")
        self.want_zp(v, int(a_zp.ravel()[0]), node, nname)
        b = self.const(node.input[3], node.op_type, nname, "B")
        if b.ndim != 2:
            raise FrontendError(f"QGemm '{nname}': B must be 2-D, got {list(b.shape)}")
        b = b.T if a.get("transB", 0) else b
        y_s, y_zp, y_dt = self.qparam(node, nname, 7, 8, "output")
        n = b.shape[1]
        c = self.const(node.input[6], node.op_type, nname, "C") if node.input[6] else None
        if c is not None and (c.dtype != np.int32 or not (c.size == 1 or c.shape in ((n,), (1, n)))):
            raise UnsupportedOperatorError(node.op_type, nname, f"C {c.dtype} {list(c.shape)} (int32 [N] only)")
        bias = None if c is None else np.broadcast_to(c.reshape(-1), (n,)).astype(np.int32)
        self.matmul(node, nname, v, a_s, b, y_s, y_zp, y_dt, bias, float(a.get("alpha", 1.0)))

    def matmul(self, node, nname, v, a_s, b, y_s, y_zp, y_dt, bias=None, alpha=1.0):
        y_dt = self.out_dtype(y_dt, node, nname)
        h, w, c = self.tensors[v.ir].shape
        n = b.shape[-1]
        b_s, b_zp, b_dt = self.qparam(node, nname, 4, 5, "B", n=n)
        if np.dtype(b.dtype) != np.dtype(b_dt) or b_zp.size not in (1, n) or b_s.size not in (1, n):
            raise UnsupportedOperatorError(node.op_type, nname, "B zero point/scale must be per tensor or per column")
        b_eff = b.astype(np.int64) - (b_zp.reshape(-1) + storage_offset(b_dt))  # broadcast over the last axis
        groups = 1
        if v.kind == "grouped" and b.ndim == 3:
            nb, m_rows, k = v.onnx_shape
            if b.shape[:2] != (nb, k):
                raise FrontendError(f"{node.op_type} '{nname}': B {list(b.shape)} does not fit A {list(v.onnx_shape)}")
            w_eff = b_eff.transpose(0, 2, 1).reshape(nb * n, k, 1, 1)  # [g*N + n, k]
            groups, oc = nb, nb * n
            out_shape, kind, hwc = (nb, m_rows, n), "grouped", (1, m_rows, nb * n)
            b_s = np.tile(np.broadcast_to(b_s.ravel(), (n,)), nb)
        elif b.ndim == 2 and v.kind == "rows":
            if b.shape[0] != c:
                raise FrontendError(f"{node.op_type} '{nname}': B {list(b.shape)} does not fit A {list(v.onnx_shape)}")
            w_eff, oc = b_eff.T.reshape(n, c, 1, 1), n
            out_shape, kind, hwc = tuple(v.onnx_shape[:-1]) + (n,), "rows", (h, w, n)
        elif b.ndim == 2 and v.kind == "flat":
            if b.shape[0] != h * w * c:
                raise FrontendError(f"{node.op_type} '{nname}': B {list(b.shape)} does not fit A {list(v.onnx_shape)}")
            # K is NCHW-flatten order, so B^T [N, K] reshapes to [N, C, H, W].
            w_eff, oc = b_eff.T.reshape(n, c, h, w), n
            out_shape, kind, hwc = (1, n), "flat", (1, 1, n)
        else:
            raise UnsupportedOperatorError(
                node.op_type, nname, f"A {v.kind} {list(v.onnx_shape)} with B {list(b.shape)} (batched B needs a 3-D graph input)"
            )
        if not alpha > 0:
            raise UnsupportedOperatorError(node.op_type, nname, f"alpha {alpha} (must be positive)")
        m = self.multiplier(a_s, b_s, y_s, oc, node, nname) * alpha
        if bias is None:
            bias = np.zeros(oc, np.int32)
        out = self.new_tensor(node.output[0], hwc, float(y_s.ravel()[0]), int(y_zp.ravel()[0]))
        self.add_conv(nname, v.ir, w_eff, groups, bias, m, out, (1, 1), (0, 0, 0, 0), [nname], (-128, 127))
        self.vals[node.output[0]] = QValue(out, kind, out_shape, y_dt)

    def pool(self, node, nname, v, mode, kernel, strides, pads, count_pad, m, out_s, out_zp, out_dt, clip=(-128, 127)):
        h, w, c = self.tensors[v.ir].shape
        oh = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
        ow = (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
        if oh < 1 or ow < 1:
            raise FrontendError(f"{node.op_type} '{nname}': empty output")
        mult, shift = (1 << 30, 30) if m is None else fixed_point.quantize_multiplier(m, max_shift=30)
        out = self.new_tensor(node.output[0], (oh, ow, c), out_s, out_zp)
        self.layers.append(
            ir.Pool(
                self.unique(nname),
                v.ir,
                out,
                mode,
                tuple(kernel),
                stride=tuple(strides),
                pads=tuple(pads),
                count_include_pad=count_pad,
                mult=mult,
                shift=shift,
                clip=clip,
                onnx_nodes=[nname],
            )
        )
        self.vals[node.output[0]] = QValue(out, v.kind, (1, c, oh, ow) if v.kind == "nchw" else v.onnx_shape, out_dt)

    def on_maxpool(self, node, nname, idx):
        v = self.val(node, nname, 0)
        if v.kind != "nchw":
            raise UnsupportedOperatorError(node.op_type, nname, f"input of shape {list(v.onnx_shape)} (only 2-D NCHW)")
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedOperatorError(node.op_type, nname, "the Indices output")
        a = attrs(node)
        h, w, _ = self.tensors[v.ir].shape
        kernel, strides, pads = pool_geometry(node.op_type, nname, a, (h, w))
        t = self.tensors[v.ir]
        self.pool(node, nname, v, "max", kernel, strides, pads, False, None, t.scale, t.zero_point, v.dtype)

    def on_qavgpool(self, node, nname, idx):
        v = self.val(node, nname, 0)
        a = attrs(node)
        if a.get("channels_last", 0):
            raise UnsupportedOperatorError(node.op_type, nname, "channels_last=1")
        if v.kind != "nchw":
            raise UnsupportedOperatorError(node.op_type, nname, f"input of shape {list(v.onnx_shape)} (only 2-D NCHW)")
        x_s, x_zp, _ = self.qparam(node, nname, 1, 2, "input")
        self.want_zp(v, int(x_zp.ravel()[0]), node, nname)
        y_s, y_zp, y_dt = self.qparam(node, nname, 3, 4, "output")
        y_dt = self.out_dtype(y_dt, node, nname)
        h, w, _ = self.tensors[v.ir].shape
        count_pad = bool(a.get("count_include_pad", 0))
        if node.op_type == "QLinearGlobalAveragePool":
            kernel, strides, pads = (h, w), (1, 1), (0, 0, 0, 0)
        else:
            kernel, strides, pads = pool_geometry(node.op_type, nname, a, (h, w), count_pad)
        m = float(x_s.ravel()[0]) / float(y_s.ravel()[0])
        self.pool(node, nname, v, "avg", kernel, strides, pads, count_pad, m, float(y_s.ravel()[0]), int(y_zp.ravel()[0]), y_dt)

    def on_qadd(self, node, nname, idx):
        va, vb = self.val(node, nname, 0), self.val(node, nname, 3)
        a_s, a_zp, _ = self.qparam(node, nname, 1, 2, "A")
        b_s, b_zp, _ = self.qparam(node, nname, 4, 5, "B")
        self.want_zp(va, int(a_zp.ravel()[0]), node, nname, "A")
        self.want_zp(vb, int(b_zp.ravel()[0]), node, nname, "B")
        c_s, c_zp, c_dt = self.qparam(node, nname, 6, 7, "C")
        c_dt = self.out_dtype(c_dt, node, nname)
        ta, tb = self.tensors[va.ir], self.tensors[vb.ir]
        if ta.shape != tb.shape or va.kind != vb.kind:
            raise UnsupportedOperatorError(node.op_type, nname, f"broadcasting {list(va.onnx_shape)} + {list(vb.onnx_shape)}")
        cs = float(c_s.ravel()[0])
        am, bm, shift = fixed_point.pair_multipliers(float(a_s.ravel()[0]) / cs, float(b_s.ravel()[0]) / cs)
        out = self.new_tensor(node.output[0], ta.shape, cs, int(c_zp.ravel()[0]))
        self.layers.append(ir.Add(self.unique(nname), (va.ir, vb.ir), out, am, bm, shift, onnx_nodes=[nname]))
        self.vals[node.output[0]] = QValue(out, va.kind, va.onnx_shape, c_dt)

    def on_clip(self, node, nname, idx):
        """Integer Relu/Clip: a clamp of the stored integers (ONNX integer
        semantics), as an exact 1x1 max pool with clip bounds."""
        v = self.val(node, nname, 0)
        off = storage_offset(v.dtype)
        info = np.iinfo(v.dtype)
        lo, hi = int(info.min), int(info.max)
        if node.op_type == "Relu":
            lo = max(lo, 0)
        else:
            a = attrs(node)
            if "min" in a or "max" in a:
                raise UnsupportedOperatorError(node.op_type, nname, "Clip-6 float attributes on an integer tensor")
            if len(node.input) > 1 and node.input[1]:
                lo = int(self.const(node.input[1], node.op_type, nname, "min"))
            if len(node.input) > 2 and node.input[2]:
                hi = int(self.const(node.input[2], node.op_type, nname, "max"))
        lo_s, hi_s = min(max(lo - off, -128), 127), min(max(hi - off, -128), 127)
        lo_s = min(lo_s, hi_s)  # ONNX Clip with min > max yields max
        t = self.tensors[v.ir]
        out = self.new_tensor(node.output[0], t.shape, t.scale, t.zero_point)
        self.layers.append(
            ir.Pool(self.unique(nname), v.ir, out, "max", (1, 1), clip=(lo_s, hi_s), onnx_nodes=[nname])
        )
        self.vals[node.output[0]] = QValue(out, v.kind, v.onnx_shape, v.dtype)


def convert(model: onnx.ModelProto) -> IntegerModel:
    """Read an integer (QOperator) ONNX model whose parameters are all
    constants into the layer IR plus host-side I/O maps."""
    try:
        model = infer_shapes(model)
    except Exception as e:
        raise FrontendError(f"ONNX shape inference failed on the integer model: {e}") from e
    return QLinearReader(model).read()
