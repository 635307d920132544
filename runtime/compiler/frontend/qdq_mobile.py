"""The QDQ reader's handlers for mobile-network ops: element-wise chains as
activation tables, products of two activations, nearest-neighbour Resize
and ConvTranspose.

Element-wise chains. A value computed only by element-wise ops (HardSigmoid,
Sigmoid, Tanh, Div by a scalar, Clip, Mul of x by something computed from x,
QuantizeLinear/DequantizeLinear, ...) from one int8 tensor q and scalar
constants is a function of q's 256 codes. Where such a chain ends in a
QuantizeLinear that a non-element-wise consumer reads, the reader runs the
chain's own nodes in onnxruntime on the 256 codes and the result is the
core's activation table (ir.Lut, fused after the producing convolution where
it can be): exactly the quantized graph's values, whatever the chain holds
-- hard-swish written out as Mul/Clip/Div as much as HardSwish or x *
HardSigmoid(x), SiLU as x * Sigmoid(x)."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from vfpga.runtime.compiler import ir
from vfpga.runtime.hw import fixed_point

from .errors import FrontendError
from .ops import attrs, resolve_pads
from .qdq_values import Pending, Ref, per_channel_scales

# Element-wise ops of any number of inputs (shape-preserving for scalar operands).
ELEMENTWISE = frozenset({
    "Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Softplus",
    "Softsign", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Erf", "Gelu", "Mish", "Add", "Sub", "Mul",
    "Div", "Pow", "Min", "Max", "Floor", "Ceil", "Round", "Sign", "PRelu", "ThresholdedRelu", "Celu",
    "QuantizeLinear", "DequantizeLinear",
})
# Ops with a handler of their own when they read a plain quantized activation
# (a clamp fused into the producer, a per-channel affine): a chain starts at
# them only when one of their inputs already is an element-wise value.
HANDLED = frozenset({"Relu", "Clip", "Add", "Sub", "Mul"})


class MobileHandlers:
    """Part of :class:`~vfpga.runtime.compiler.frontend.qdq_reader.QdqReader`."""

    # ---- element-wise chains -> activation tables

    def ewise_step(self, node, nname, idx) -> bool:
        """Records ``node`` as part of an element-wise chain of one int8
        tensor if it is one; returns whether it did."""
        if node.domain not in ("", "ai.onnx") or node.op_type not in ELEMENTWISE:
            return False
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if node.input[0] not in self.ewise:
                return False
            if node.op_type == "QuantizeLinear":
                scale, zp = self.qparams(node, nname)
                if zp.dtype != np.int8 or scale.size != 1:
                    return False
                self.ewise_q[node.output[0]] = (float(scale.ravel()[0]), int(zp.ravel()[0]))
            self.ewise[node.output[0]] = self.ewise[node.input[0]]
            return True
        srcs, chained = set(), False
        for i in node.input:
            if not i:
                continue
            if i in self.ewise:
                srcs.add(self.ewise[i])
                chained = True
            elif i in self.fref and not self.fref[i].flat:
                srcs.add(self.fref[i].q)
            elif i in self.consts or i in self.qconst:
                v = self.float_const(i)
                if v is None or np.size(v) != 1:
                    return False  # per-channel operands make one table per channel
            else:
                return False
        if len(srcs) != 1:
            return False
        if node.op_type in HANDLED and not chained:
            same = len([i for i in node.input if i in self.fref]) >= 2  # x * x, x + x: one source twice
            if not same:
                return False
        self.ewise[node.output[0]] = srcs.pop()
        return True

    def ewise_ref(self, name, node, nname) -> Ref:
        """The IR tensor behind an element-wise value a non-element-wise node
        reads: the table of the chain up to its last QuantizeLinear."""
        dq = self.producer.get(name)
        v = dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else None
        if v is None or v not in self.ewise_q:
            self.unsupported(node, nname, f"it reads '{name}', an element-wise result that is not quantized")
        if v not in self.tensors:
            self.build_lut(v)
        return Ref(v)

    def build_lut(self, v: str) -> None:
        src = self.ewise[v]
        chain: list[int] = []
        self.chain_to(v, chain)
        g = self.model.graph
        nodes = [g.node[k] for k in sorted(chain)]
        if any(n.op_type not in ELEMENTWISE for n in nodes):
            bad = next(n for n in nodes if n.op_type not in ELEMENTWISE)
            self.unsupported(bad, bad.name or bad.op_type, "it reshapes inside an element-wise chain")
        produced = {o for n in nodes for o in n.output}
        inits = {t.name: t for t in g.initializer}
        ext = sorted({i for n in nodes for i in n.input if i and i not in produced and i not in inits})
        if any(self.qref.get(i, Ref("")).q != src for i in ext):
            raise FrontendError(f"internal error: the element-wise chain of '{v}' reads {ext}, not only '{src}'")
        used = [inits[i] for i in sorted({i for n in nodes for i in n.input if i in inits})]
        sub = helper.make_graph(nodes, "table", [helper.make_tensor_value_info(i, TensorProto.INT8, [256]) for i in ext],
                                [helper.make_tensor_value_info(v, TensorProto.INT8, None)], used)
        model = helper.make_model(sub, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        codes = np.arange(-128, 128, dtype=np.int8)
        (table,) = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
            None, {i: codes for i in ext})
        names = [n.name or f"{n.op_type}_{k}" for n, k in zip(nodes, sorted(chain))]
        if table.shape != (256,) or table.dtype != np.int8:
            raise FrontendError(f"the element-wise chain {names} maps 256 codes to {table.dtype} {table.shape}")
        s, z = self.ewise_q[v]
        self.add_tensor(v, self.tensors[src].shape, s, z)
        name = self.layer_name(helper.make_node("Lut", [], [], name=f"table:{names[-1]}"), 0)
        self.layers.append(ir.Lut(name, src, v, table.astype(np.int8), onnx_nodes=names))
        self.qref[v] = Ref(v)

    def ewise_to_cpu(self, name: str) -> None:
        """An element-wise value the cores cannot hand over (a float graph
        output, a float read by the CPU): its chain runs on the host."""
        chain: list[int] = []
        self.chain_to(name, chain)
        for k in sorted(chain):
            n = self.model.graph.node[k]
            if all(o not in self.cpu_val for o in n.output if o):
                self.to_cpu(n, n.name or f"{n.op_type}_{k}", k)

    def fold_tables(self, outputs) -> None:
        """An activation table read only by itself after a convolution runs
        in that convolution's frames (after its clamp); tables in a row compose."""
        changed = True
        while changed:
            changed = False
            producers = {o: layer for layer in self.layers for o in self.graph_outputs_of(layer)}
            readers: dict[str, int] = {}
            for layer in self.layers:
                for i in self.graph_inputs_of(layer):
                    readers[i] = readers.get(i, 0) + 1
            for t in self.layers:
                if t.kind != "lut":
                    continue
                prod = producers.get(t.input)
                if prod is None or prod.kind not in ("conv", "convtranspose", "lut"):
                    continue
                if readers.get(t.input) != 1 or t.input in outputs:
                    continue
                first = prod.table
                if first is None and prod.kind != "lut":  # the requantization keeps its own zero point
                    prod.requant_zp = self.tensors[prod.output].zero_point
                prod.table = t.table if first is None else t.table[first.astype(np.int64) + 128]
                prod.output = t.output
                prod.onnx_nodes = list(prod.onnx_nodes) + [n for n in t.onnx_nodes if n not in prod.onnx_nodes]
                self.layers.remove(t)
                changed = True
                break

    @staticmethod
    def graph_inputs_of(layer):
        return list(layer.inputs) if hasattr(layer, "inputs") else [layer.input]

    @staticmethod
    def graph_outputs_of(layer):
        return list(layer.outputs) if hasattr(layer, "outputs") else [layer.output]

    # ---- products of two activations (squeeze-and-excitation, gating)

    def mul_activations(self, node, nname, idx):
        ra, rb = self.act(node, nname, 0), self.act(node, nname, 1)
        ta, tb = self.tensors[ra.q], self.tensors[rb.q]
        if ta.shape != tb.shape and ta.shape[:2] == (1, 1) and tb.shape[2] == ta.shape[2]:
            ra, rb, ta, tb = rb, ra, tb, ta  # the full tensor first
        broadcast = ta.shape != tb.shape
        if broadcast and not (tb.shape == (1, 1, ta.shape[2]) and not rb.flat):
            self.unsupported(node, nname, f"product of {ta.shape} and {tb.shape} (HWC): only equal shapes or "
                                          f"a per-channel [1, C, 1, 1] operand")
        if ra.flat and ta.shape[0] * ta.shape[1] > 1:
            self.unsupported(node, nname, "product of a flattened tensor")
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            mult, shift = fixed_point.quantize_multiplier(ta.scale * tb.scale / out_t.scale)
            return ir.Mul(name, (ra.q, rb.q), out_t.name, mult, shift, broadcast, clip=clip,
                          onnx_nodes=ra.nodes + rb.nodes + [nname])

        self.pending[node.output[0]] = Pending(build, ta.shape, [], nname, ra.flat)

    # ---- Resize (nearest, integer factors)

    def on_resize(self, node, nname, idx):
        a = attrs(node)
        mode = _s(a.get("mode", b"nearest"))
        ref = self.act(node, nname, 0)
        self.spatial_ok(ref, node, nname)
        t = self.tensors[ref.q]
        h, w, c = t.shape
        out = node.output[0]
        if out not in self.shapes or len(self.shapes[out]) != 4:
            self.unsupported(node, nname, "output shape unknown after shape inference")
        n, oc, oh, ow = self.shapes[out]
        if (n, oc) != (1, c) or oh % h or ow % w:
            self.unsupported(node, nname, f"resize of {h}x{w} to {oh}x{ow}: only integer upsampling factors")
        sy, sx = oh // h, ow // w
        opset = max((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        ctm = _s(a.get("coordinate_transformation_mode", b"half_pixel" if opset >= 11 else b"asymmetric"))
        if mode in ("linear", "bilinear"):
            self.bilinear(node, nname, idx, ref, t, (oh, ow, c), (sy, sx), ctm)
            return
        if mode != "nearest":
            self.unsupported(node, nname, f"mode '{mode}': the cores run nearest and bilinear upsampling")
        nearest = _s(a.get("nearest_mode", b"round_prefer_floor"))
        for n_in, n_out in ((h, oh), (w, ow)):
            src = [_nearest_source(o, n_in, n_out, ctm, nearest) for o in range(n_out)]
            if src is None or src != [o // (n_out // n_in) for o in range(n_out)]:
                self.unsupported(node, nname, f"coordinate_transformation_mode '{ctm}' with nearest_mode "
                                              f"'{nearest}' does not repeat each pixel {n_out // n_in} times")
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            mult, shift = fixed_point.quantize_multiplier(t.scale / out_t.scale, max_shift=30)
            return ir.Upsample(name, ref.q, out_t.name, (sy, sx), mult, shift, clip, onnx_nodes=ref.nodes + [nname])

        self.pending[out] = Pending(build, (oh, ow, c), [], nname)

    def bilinear(self, node, nname, idx, ref, t, shape, scale, ctm):
        if ctm == "pytorch_half_pixel" and min(shape[:2]) > 1:
            ctm = "half_pixel"  # the same for outputs longer than one pixel
        if ctm not in ("half_pixel", "asymmetric"):
            self.unsupported(node, nname, f"bilinear with coordinate_transformation_mode '{ctm}' (the cores take "
                                          f"half_pixel and asymmetric)")
        den = [2 * f if ctm == "half_pixel" else f for f in scale]
        if max(scale) > 5:
            self.unsupported(node, nname, f"bilinear by {scale}: the integer weights exceed int8 beyond 5x")
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            mult, shift = fixed_point.quantize_multiplier(t.scale / (out_t.scale * den[0] * den[1]))
            return ir.Upsample(name, ref.q, out_t.name, scale, mult, shift, clip, onnx_nodes=ref.nodes + [nname],
                               mode="linear", transform=ctm)

        self.pending[node.output[0]] = Pending(build, shape, [], nname)

    # ---- ConvTranspose

    def on_conv_transpose(self, node, nname, idx):
        a, ref, t, w, g = self.conv_operands(node, nname, "transposed convolution")
        ic, ocg, kh, kw = w.values.shape
        if "output_shape" in a:
            self.unsupported(node, nname, "output_shape (give pads and output_padding instead)")
        if ic != t.shape[2] or ic % g:
            raise FrontendError(f"ConvTranspose '{nname}': weight {w.values.shape} with group {g} does not fit "
                                f"input channels {t.shape[2]}")
        oc = ocg * g
        strides = tuple(int(v) for v in a.get("strides", [1, 1]))
        auto = _s(a.get("auto_pad", b"NOTSET"))
        if auto not in ("NOTSET", "VALID"):
            self.unsupported(node, nname, f"auto_pad {auto}")
        pads = tuple(int(v) for v in resolve_pads(node.op_type, nname, a, t.shape[:2], (kh, kw), strides))
        out_pad = tuple(int(v) for v in a.get("output_padding", [0, 0]))
        oh = (t.shape[0] - 1) * strides[0] + kh + out_pad[0] - pads[0] - pads[2]
        ow = (t.shape[1] - 1) * strides[1] + kw + out_pad[1] - pads[1] - pads[3]
        s = np.asarray(w.scale, np.float64).ravel()
        if s.size == ocg and g > 1 and w.axis % 4 == 1:
            s = np.tile(s, g)
        w_scale = per_channel_scales(s, oc, w.axis if s.size > 1 else 1, 4, 1, "weight", node.op_type, nname)
        acc_scale = t.scale * w_scale
        bias = self.bias(node.input[2] if len(node.input) > 2 else "", node, nname, oc, acc_scale)
        weight = np.ascontiguousarray(w.values, dtype=np.int8)
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            mult, shift = fixed_point.quantize_multipliers(acc_scale / out_t.scale)
            return ir.ConvTranspose(name, ref.q, out_t.name, weight, bias, mult, shift, strides, pads, out_pad, g,
                                    clip, onnx_nodes=ref.nodes + [nname])

        self.pending[node.output[0]] = Pending(build, (oh, ow, oc), [], nname)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _nearest_source(o: int, n_in: int, n_out: int, ctm: str, mode: str):
    """ONNX Resize (nearest): the input index output index o reads, or None
    for a transformation this check does not model."""
    scale = n_out / n_in
    if ctm == "half_pixel":
        x = (o + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        x = (o + 0.5) / scale - 0.5 if n_out > 1 else 0.0
    elif ctm == "asymmetric":
        x = o / scale
    elif ctm == "tf_half_pixel_for_nn":
        x = (o + 0.5) / scale
    elif ctm == "align_corners":
        x = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        return None
    if mode == "floor":
        i = math.floor(x)
    elif mode == "ceil":
        i = math.ceil(x)
    elif mode == "round_prefer_ceil":
        i = math.floor(x + 0.5)
    else:  # round_prefer_floor
        i = math.ceil(x - 0.5)
    return min(max(int(i), 0), n_in - 1)

