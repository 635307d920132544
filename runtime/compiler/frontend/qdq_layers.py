"""The QDQ reader's compute-node handlers: Conv, Gemm/MatMul, pools, Add,
per-channel affine ops and Concat, each becoming an IR layer once its output
QuantizeLinear fixes the requantization."""

from __future__ import annotations

import math

import numpy as np

from vfpga.runtime.compiler import ir
from vfpga.runtime.hw import fixed_point

from .affine import per_channel_const
from .errors import FrontendError
from .ops import attrs, resolve_pads
from .qdq_values import (
    INT32_MAX,
    INT32_MIN,
    Pending,
    per_channel_scales,
    round_half_even,
)


class LayerHandlers:
    """The compute-node part of :class:`~vfpga.runtime.compiler.frontend.qdq_reader.QdqReader`."""

    def conv_operands(self, node, nname, what: str):
        """(attributes, input ref, its tensor, weight, groups) of a 2-D
        convolution or transposed convolution, its shared checks done."""
        a = attrs(node)
        ref = self.act(node, nname, 0)
        self.spatial_ok(ref, node, nname)
        w = self.weight(node.input[1], node, nname)
        if w.values.ndim != 4:
            self.unsupported(node, nname, f"{w.values.ndim - 2}-D {what} (only 2-D is supported)")
        if list(a.get("dilations", [1, 1])) != [1, 1]:
            self.unsupported(node, nname, f"dilations {list(a['dilations'])} (only 1 is supported)")
        return a, ref, self.tensors[ref.q], w, int(a.get("group", 1))

    def on_conv(self, node, nname, idx):
        a, ref, t, w, groups = self.conv_operands(node, nname, "convolution")
        oc, icg, kh, kw = w.values.shape
        if icg * groups != t.shape[2] or oc % groups:
            raise FrontendError(
                f"Conv '{nname}': weight {w.values.shape} with group {groups} does not fit input channels {t.shape[2]}"
            )
        strides = tuple(a.get("strides", [1, 1]))
        h, wd, _ = t.shape
        pads = resolve_pads(node.op_type, nname, a, (h, wd), (kh, kw), strides)
        oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
        ow = (wd + pads[1] + pads[3] - kw) // strides[1] + 1
        if oh < 1 or ow < 1:
            raise FrontendError(
                f"Conv '{nname}': empty output for input {h}x{wd}, kernel {kh}x{kw}, pads {pads}"
            )
        w_scale = per_channel_scales(w.scale, oc, w.axis, 4, 0, "weight", node.op_type, nname)
        acc_scale = t.scale * w_scale
        bias = self.bias(node.input[2] if len(node.input) > 2 else "", node, nname, oc, acc_scale)
        name = self.layer_name(node, idx)
        weight = np.ascontiguousarray(w.values, dtype=np.int8)
        state = {"k": np.ones(oc), "c": np.zeros(oc)}  # a folded BatchNormalization / affine

        def affine(k, c, bn, bn_name):
            k = np.broadcast_to(np.asarray(k, dtype=np.float64), (oc,))
            c = np.broadcast_to(np.asarray(c, dtype=np.float64), (oc,))
            k_all = k * state["k"]
            if np.any(k_all == 0) or not np.all(np.isfinite(k_all)) or not np.all(np.isfinite(c)):
                raise FrontendError(
                    f"{bn.op_type} '{bn_name}' cannot be folded exactly into Conv '{nname}': a channel scale "
                    f"is zero or not finite"
                )
            neg = k_all < 0
            if np.any(weight[neg] == -128):
                raise FrontendError(
                    f"{bn.op_type} '{bn_name}' cannot be folded exactly into Conv '{nname}': it negates "
                    f"channels whose int8 weights hold -128"
                )
            state["c"] = k * state["c"] + c
            state["k"] = k_all

        def build(out_t, clip):
            k, c = state["k"], state["c"]
            sign = np.where(k < 0, -1, 1)
            wq = weight if not np.any(k < 0) else (weight.astype(np.int16) * sign[:, None, None, None]).astype(np.int8)
            scale = acc_scale * np.abs(k)
            b = bias
            if np.any(k != 1) or np.any(c):
                b64 = sign * bias.astype(np.int64) + round_half_even(c / scale).astype(np.int64)
                b = np.clip(b64, INT32_MIN, INT32_MAX).astype(np.int32)
            mult, shift = fixed_point.quantize_multipliers(scale / out_t.scale)
            return ir.Conv(
                name,
                ref.q,
                out_t.name,
                wq,
                b,
                mult,
                shift,
                stride=(int(strides[0]), int(strides[1])),
                pads=tuple(int(p) for p in pads),
                groups=groups,
                clip=clip,
                onnx_nodes=ref.nodes + [nname],
            )

        self.pending[node.output[0]] = Pending(build, (oh, ow, oc), [], nname, affine=affine)

    def fully_connected(self, node, nname, idx, ref, w_nk, w_scale, bias_name, alpha, beta):
        """Gemm/MatMul on [1, K] as a Conv whose kernel covers the whole
        HxW input; K is ONNX's NCHW flatten order, so the [N, K] weight
        reshapes to [N, C, H, W]."""
        h, wd, c = self.tensors[ref.q].shape
        n, k = w_nk.shape
        if k != h * wd * c:
            raise FrontendError(
                f"{node.op_type} '{nname}': weight has K={k} but its input holds {h}x{wd}x{c}"
            )
        t = self.tensors[ref.q]
        acc_scale = alpha * t.scale * w_scale
        bias = self.bias(bias_name, node, nname, n, acc_scale, beta=beta)
        weight = np.ascontiguousarray(w_nk.reshape(n, c, h, wd), dtype=np.int8)
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            mult, shift = fixed_point.quantize_multipliers(acc_scale / out_t.scale)
            return ir.Conv(
                name, ref.q, out_t.name, weight, bias, mult, shift, clip=clip, onnx_nodes=ref.nodes + [nname]
            )

        self.pending[node.output[0]] = Pending(build, (1, 1, n), [], nname, flat=True)

    def on_gemm(self, node, nname, idx):
        a = attrs(node)
        if a.get("transA", 0):
            self.unsupported(node, nname, "transA=1")
        ref = self.act(node, nname, 0)
        w = self.weight(node.input[1], node, nname)
        if w.values.ndim != 2:
            raise FrontendError(f"Gemm '{nname}': weight must be 2-D, got {w.values.shape}")
        trans_b = bool(a.get("transB", 0))
        n = w.values.shape[0] if trans_b else w.values.shape[1]
        w_scale = per_channel_scales(w.scale, n, w.axis, 2, 0 if trans_b else 1, "weight", node.op_type, nname)
        w_nk = w.values if trans_b else w.values.T
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        if not alpha > 0:
            self.unsupported(node, nname, f"alpha {alpha} (must be positive to fold into the multiplier)")
        bias_name = node.input[2] if len(node.input) > 2 else ""
        self.fully_connected(node, nname, idx, ref, w_nk, w_scale, bias_name, alpha, beta)

    def on_matmul(self, node, nname, idx):
        ref = self.act(node, nname, 0)
        if node.input[0] in self.shapes and len(self.shapes[node.input[0]]) != 2:
            self.unsupported(node, nname, f"input of shape {list(self.shapes[node.input[0]])} (only [1, K])")
        w = self.weight(node.input[1], node, nname)
        if w.values.ndim != 2:
            self.unsupported(node, nname, f"weight of shape {list(w.values.shape)} (only [K, N])")
        n = w.values.shape[1]
        w_scale = per_channel_scales(w.scale, n, w.axis, 2, 1, "weight", node.op_type, nname)
        self.fully_connected(node, nname, idx, ref, w.values.T, w_scale, "", 1.0, 1.0)

    def on_pool(self, node, nname, idx):
        a = attrs(node)
        ref = self.act(node, nname, 0)
        self.spatial_ok(ref, node, nname)
        t = self.tensors[ref.q]
        h, wd, c = t.shape
        mode = "max" if "Max" in node.op_type else "avg"
        if len(node.output) > 1 and node.output[1]:
            self.unsupported(node, nname, "MaxPool Indices output")
        count_pad = bool(a.get("count_include_pad", 0))
        if node.op_type.startswith("Global"):
            kernel, strides, pads = (h, wd), (1, 1), (0, 0, 0, 0)
        else:
            kernel = tuple(a["kernel_shape"])
            if len(kernel) != 2:
                self.unsupported(node, nname, f"{len(kernel)}-D pooling (only 2-D)")
            if list(a.get("dilations", [1, 1])) != [1, 1]:
                self.unsupported(node, nname, f"dilations {list(a['dilations'])} (only 1 is supported)")
            strides = tuple(a.get("strides", [1, 1]))
            pads = resolve_pads(node.op_type, nname, a, (h, wd), kernel, strides)
            if a.get("ceil_mode", 0):
                if mode == "avg" and count_pad and not any(pads):
                    # Windows are clipped to the padded extent before counting, so without
                    # explicit padding count_include_pad counts exactly the valid positions.
                    count_pad = False
                pads = self.ceil_pads(
                    node, nname, (h, wd), kernel, strides, pads, mode == "avg" and count_pad
                )
        oh = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
        ow = (wd + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            # Equal scales give mult = 2**30, shift = 30: exact.
            mult, shift = fixed_point.quantize_multiplier(t.scale / out_t.scale, max_shift=30)
            return ir.Pool(
                name,
                ref.q,
                out_t.name,
                mode,
                tuple(int(k) for k in kernel),
                stride=tuple(int(s) for s in strides),
                pads=tuple(int(p) for p in pads),
                count_include_pad=count_pad,
                mult=mult,
                shift=shift,
                clip=clip,
                onnx_nodes=ref.nodes + [nname],
            )

        self.pending[node.output[0]] = Pending(build, (oh, ow, c), [], nname)

    def ceil_pads(self, node, nname, in_hw, kernel, strides, pads, count_pad):
        """ceil_mode as extra bottom/right padding (windows never read it).

        Exact for max pooling (padding never wins a max) and for average
        pooling with count_include_pad=0 (the extra padding is not counted,
        as onnxruntime counts only valid positions). Average pooling with
        count_include_pad=1 counts the explicit padding but not the ceil
        extension (onnxruntime clips windows to the padded extent first),
        which the core's count (whole kernel) cannot express: unsupported,
        so the CPU runs it when fallback is on."""
        extra = []
        for i in range(2):
            size = in_hw[i] + pads[i] + pads[i + 2]
            out = -(-(size - kernel[i]) // strides[i]) + 1
            if (out - 1) * strides[i] >= in_hw[i] + pads[i]:  # last window must start inside
                out -= 1
            extra.append(max((out - 1) * strides[i] + kernel[i] - size, 0))
        if any(extra) and count_pad:
            self.unsupported(node, nname, "ceil_mode with count_include_pad=1")
        return (pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1])

    def on_add(self, node, nname, idx):
        if len(node.input) != 2:
            self.unsupported(node, nname, f"{len(node.input)} inputs (only 2)")
        co = self.const_operand(node)
        if co is not None:  # + per-channel constant: an affine
            i, v = co
            if node.op_type == "Sub" and i == 1:
                self.unsupported(node, nname, "constant minus activation")
            c = self.per_channel(node, nname, node.input[i], v)
            c = -c if node.op_type == "Sub" else c
            self.affine(node, nname, idx, node.input[i], np.ones_like(c), c)
            return
        if node.op_type == "Sub":
            self.unsupported(node, nname, "difference of two activations")
        ra, rb = self.act(node, nname, 0), self.act(node, nname, 1)
        ta, tb = self.tensors[ra.q], self.tensors[rb.q]
        if ta.shape != tb.shape:
            self.unsupported(node, nname, f"broadcasting Add of {ta.shape} and {tb.shape} (HWC)")
        if ra.flat != rb.flat and ta.shape[0] * ta.shape[1] > 1:
            self.unsupported(node, nname, "Add of a flattened and an unflattened tensor")
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            am, bm, shift = fixed_point.pair_multipliers(ta.scale / out_t.scale, tb.scale / out_t.scale)
            return ir.Add(
                name,
                (ra.q, rb.q),
                out_t.name,
                am,
                bm,
                shift,
                clip=clip,
                onnx_nodes=ra.nodes + rb.nodes + [nname],
            )

        self.pending[node.output[0]] = Pending(build, ta.shape, [], nname, ra.flat)

    # ---- per-channel affine (BatchNormalization, Mul/Add by constants)

    def float_const(self, name):
        """A constant operand as float64 (dequantized if behind a DequantizeLinear), or None."""
        if name in self.qconst:
            q = self.qconst[name]
            v = q.values.astype(np.float64)
            scale, zp = np.asarray(q.scale, np.float64), np.asarray(q.zero_point, np.float64)
            if scale.size > 1:
                shape = [1] * v.ndim
                shape[q.axis % v.ndim] = scale.size
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            return (v - zp) * scale
        if name in self.consts:
            return np.asarray(self.consts[name], dtype=np.float64)
        return None

    def on_batchnorm(self, node, nname, idx):
        a = attrs(node)
        if a.get("training_mode", 0) or (len(node.output) > 1 and any(node.output[1:])):
            self.unsupported(node, nname, "training mode")
        params = [self.float_const(i) for i in node.input[1:5]]
        if any(p is None for p in params):
            self.unsupported(node, nname, "scale, bias, mean and variance must be constants")
        gamma, beta, mean, var = (p.reshape(-1) for p in params)
        k = gamma / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        self.affine(node, nname, idx, node.input[0], k, beta - k * mean)

    def affine(self, node, nname, idx, x, k, c):
        """y = k * x + c per channel: folded into a pending Conv, or a
        depthwise 1x1 Conv with weights +-127 and per-channel weight scale
        |k| / 127 on a quantized activation (both exact up to the int32 bias
        rounding)."""
        out = node.output[0]
        if x in self.pending:
            p = self.pending[x]
            n = p.shape[2]
            if p.affine is None or p.done is not None or p.lo != -math.inf or p.hi != math.inf or p.flat:
                raise FrontendError(
                    f"{node.op_type} '{nname}' cannot be folded exactly: it reads the float output of "
                    f"'{p.producer}', which is not a convolution result it can fold into (quantize the "
                    f"float model with vfpga.runtime.compiler.frontend.quantize, which folds it before quantizing)"
                )
            k, c = np.broadcast_to(k, (n,)), np.broadcast_to(c, (n,))
            p = self.take_pending(x, node, nname)
            p.affine(k, c, node, nname)
            p.nodes.append(nname)
            self.pending[out] = p
            return
        ref = self.act(node, nname, 0 if node.input[0] == x else 1)
        self.spatial_ok(ref, node, nname)
        t = self.tensors[ref.q]
        ch = t.shape[2]
        if np.size(k) not in (1, ch) or np.size(c) not in (1, ch):
            self.unsupported(node, nname, "parameters are not per channel")
        k = np.broadcast_to(np.asarray(k, np.float64).reshape(-1), (ch,))
        c = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (ch,))
        if np.any(k == 0) or not np.all(np.isfinite(k)) or not np.all(np.isfinite(c)):
            self.unsupported(node, nname, "a channel scale is zero or not finite")
        # Weights +-127 with weight scale |k| / 127: the accumulator's unit is
        # 1/127 of an input step, so the int32 bias carries c with that resolution.
        weight = np.where(k < 0, -127, 127).astype(np.int8).reshape(ch, 1, 1, 1)
        acc_scale = t.scale * np.abs(k) / 127.0
        bias = np.clip(round_half_even(c / acc_scale), INT32_MIN, INT32_MAX).astype(np.int32)
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            mult, shift = fixed_point.quantize_multipliers(acc_scale / out_t.scale)
            return ir.Conv(
                name, ref.q, out_t.name, weight, bias, mult, shift, groups=ch, clip=clip,
                onnx_nodes=ref.nodes + [nname],
            )

        self.pending[out] = Pending(build, t.shape, [], nname, ref.flat)

    def const_operand(self, node):
        """(activation input index, constant values) of a binary node with one
        constant operand, or None."""
        if len(node.input) != 2:
            return None
        for i in (0, 1):
            v = self.float_const(node.input[1 - i])
            if v is not None and node.input[i] not in self.consts and node.input[i] not in self.qconst:
                return i, v
        return None

    def per_channel(self, node, nname, x, v):
        """A constant operand of a binary op on activation x as a [C] vector
        (scalar, [C, 1, 1] / [1, C, 1, 1] on 4-D, [C] / [1, C] on [1, C])."""
        if x in self.pending:
            ch = self.pending[x].shape[2]
        elif x in self.fref:
            ch = self.tensors[self.fref[x].q].shape[2]
        else:
            self.unsupported(node, nname, f"'{x}' is not a quantized activation")
        rank = len(self.shapes[x]) if x in self.shapes else 4
        v = np.asarray(v, dtype=np.float64)
        if v.size == 1:
            return np.full(ch, float(v.reshape(-1)[0]))
        vv = None
        if rank == 4:
            vv = per_channel_const(v, ch)
        elif rank == 2 and v.size == ch and v.ndim <= 2 and v.shape[0] in (1, ch):
            vv = v.reshape(ch)
        if vv is None:
            self.unsupported(node, nname, f"constant operand of shape {list(v.shape)} is not per channel")
        return vv

    def on_mul(self, node, nname, idx):
        co = self.const_operand(node)
        if co is None:
            self.mul_activations(node, nname, idx)
            return
        i, v = co
        k = self.per_channel(node, nname, node.input[i], v)
        self.affine(node, nname, idx, node.input[i], k, np.zeros_like(k))

    # ---- concatenation

    def on_concat(self, node, nname, idx):
        axis = attrs(node).get("axis", 1)
        out = node.output[0]
        rank = len(self.shapes[out]) if out in self.shapes else None
        refs = [self.act(node, nname, i) for i in range(len(node.input))]
        ts = [self.tensors[r.q] for r in refs]
        flat = all(r.flat for r in refs)
        if rank == 4 and axis in (1, -3) and not any(r.flat for r in refs):
            pass
        elif rank == 2 and axis in (1, -1) and flat and all(t.shape[:2] == (1, 1) for t in ts):
            pass
        else:
            self.unsupported(node, nname, f"concatenation on axis {axis} of rank {rank} (only channels)")
        if len({t.shape[:2] for t in ts}) != 1:
            raise FrontendError(f"Concat '{nname}': inputs of different spatial size {[t.shape for t in ts]}")
        h, w = ts[0].shape[:2]
        shape = (h, w, sum(t.shape[2] for t in ts))
        name = self.layer_name(node, idx)

        def build(out_t, clip):
            layers, inputs = [], []
            for i, (r, t) in enumerate(zip(refs, ts)):
                same = (t.scale, t.zero_point) == (out_t.scale, out_t.zero_point)
                placeable = (
                    r.q not in self.concat_inputs  # one slice per tensor
                    and r.q not in inputs
                    and r.q != self.input_q  # the graph input lives in its own buffer
                )
                if same and placeable and clip == (fixed_point.INT8_MIN, fixed_point.INT8_MAX):
                    inputs.append(r.q)
                    continue
                # A requantizing copy writes the input with the output's
                # quantization (an exact copy when the parameters are equal).
                copy = f"{out_t.name}__in{i}"
                self.add_tensor(copy, t.shape, out_t.scale, out_t.zero_point)
                mult, shift = fixed_point.quantize_multiplier(t.scale / out_t.scale, max_shift=30)
                copy_name = f"{name}__in{i}"
                self.names.add(copy_name)
                layers.append(
                    ir.Pool(
                        copy_name, r.q, copy, "max", (1, 1), mult=mult, shift=shift, clip=clip,
                        onnx_nodes=r.nodes + [nname],
                    )
                )
                inputs.append(copy)
            self.concat_inputs.update(inputs)
            layers.append(ir.Concat(name, tuple(inputs), out_t.name, onnx_nodes=[n for r in refs for n in r.nodes] + [nname]))
            return layers

        self.pending[out] = Pending(build, shape, [], nname, flat)
