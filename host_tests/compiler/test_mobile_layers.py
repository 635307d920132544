"""The mobile-network layers on the emulated cores, bit for bit against the
golden model: activation tables (standalone LUT and fused after a CONV),
per-channel and element-wise products (MUL), nearest-neighbour upsampling
and transposed convolutions (phases saved with steps). Every case also
checks that the SAVEs of each layer write every output element exactly once
(steps included), and the golden transposed convolution is checked against
onnxruntime's float ConvTranspose on integer data."""

from __future__ import annotations

import zlib

import numpy as np
import onnxruntime as ort
import pytest
from harness import compare_with_golden
from onnx import TensorProto, helper, numpy_helper

from vfpga.driver import isa
from vfpga.runtime.compiler import ir, lower_ops, static
from vfpga.runtime.hw import fixed_point, golden


class Builder:
    def __init__(self, case: str, shape):
        self.rng = np.random.default_rng(zlib.crc32(case.encode()))
        self.tensors = {"x": ir.Tensor("x", tuple(shape), 0.05, int(self.rng.integers(-30, 30)))}
        self.layers = []

    def out(self, shape, scale=None, zp=None):
        name = f"t{len(self.layers)}"
        self.tensors[name] = ir.Tensor(name, tuple(int(v) for v in shape),
                                       float(scale or self.rng.uniform(0.02, 0.08)),
                                       int(self.rng.integers(-40, 40) if zp is None else zp))
        return name

    def table(self):
        return self.rng.integers(-128, 128, size=256, dtype=np.int8)

    def conv(self, src, cout, k=3, pads=(1, 1, 1, 1), groups=1, table=False):
        h, w, c = self.tensors[src].shape
        wt = self.rng.integers(-128, 128, size=(cout, c // groups, k, k), dtype=np.int8)
        bias = self.rng.integers(-20000, 20000, size=cout).astype(np.int32)
        mult, shift = fixed_point.quantize_multipliers(
            50.0 / (np.sqrt(c // groups * k * k) * 74 * 74) * self.rng.uniform(0.5, 2, cout))
        out = self.out(((h + pads[0] + pads[2] - k) + 1, (w + pads[1] + pads[3] - k) + 1, cout))
        self.layers.append(ir.Conv(f"conv{len(self.layers)}", src, out, wt, bias, mult, shift, pads=pads,
                                   groups=groups, table=self.table() if table else None))
        return out

    def lut(self, src):
        out = self.out(self.tensors[src].shape)
        self.layers.append(ir.Lut(f"lut{len(self.layers)}", src, out, self.table()))
        return out

    def mul(self, a, b, broadcast):
        out = self.out(self.tensors[a].shape)
        mult, shift = fixed_point.quantize_multiplier(float(self.rng.uniform(0.002, 0.02)))
        self.layers.append(ir.Mul(f"mul{len(self.layers)}", (a, b), out, mult, shift, broadcast))
        return out

    def pool_to(self, src, shape):  # a global average pool: the per-channel vector of an SE block
        out = self.out(shape)
        h, w, _ = self.tensors[src].shape
        self.layers.append(ir.Pool(f"gap{len(self.layers)}", src, out, "avg", (h, w)))
        return out

    def upsample(self, src, scale, requant):
        h, w, c = self.tensors[src].shape
        s = self.tensors[src]
        out = self.out((h * scale[0], w * scale[1], c), None if requant else s.scale, None if requant else s.zero_point)
        mult, shift = (fixed_point.quantize_multiplier(s.scale / self.tensors[out].scale, max_shift=30)
                       if requant else (1 << 30, 30))
        self.layers.append(ir.Upsample(f"up{len(self.layers)}", src, out, scale, mult, shift))
        return out

    def convt(self, src, cout, k, stride, pads=(0, 0, 0, 0), out_pad=(0, 0), groups=1, table=False):
        h, w, c = self.tensors[src].shape
        wt = self.rng.integers(-128, 128, size=(c, cout // groups, k[0], k[1]), dtype=np.int8)
        bias = self.rng.integers(-20000, 20000, size=cout).astype(np.int32)
        mult, shift = fixed_point.quantize_multipliers(
            50.0 / (np.sqrt(c // groups * k[0] * k[1] / (stride[0] * stride[1])) * 74 * 74)
            * self.rng.uniform(0.5, 2, cout))
        layer = ir.ConvTranspose(f"convt{len(self.layers)}", src, "", wt, bias, mult, shift, stride, pads, out_pad,
                                 groups, table=self.table() if table else None)
        oh, ow = lower_ops.transpose_output_hw(layer, (h, w, c))
        layer.output = self.out((oh, ow, cout))
        self.layers.append(layer)
        return layer.output

    def graph(self, outputs):
        return ir.Graph(dict(self.tensors), list(self.layers), ["x"], list(outputs), name="case")


def saved_once(compiled, index):
    """Every element of layer ``index``'s output is written by exactly one SAVE."""
    info = compiled.layers[index]
    out = compiled.tensors[info.output]
    h, w, c = out.shape
    words = np.concatenate(static.part_programs(compiled.program, compiled.program_offset, compiled.parts))
    written = np.zeros((h, w, c), np.int32)
    current = False
    for raw in words.reshape(-1, isa.INSN_BYTES):
        i = isa.decode(raw)
        if i["opcode"] == "FRAME":
            current = i["layer"] == index
        elif i["opcode"] in ("BARRIER", "END"):
            current = False
        elif current and i["opcode"] == "SAVE":
            sy, sx = max(i["step_y"], 1), max(i["step_x"], 1)
            c0 = i["dram_addr"] - out.addr
            written[i["y0"]:i["y0"] + i["tile_h"] * sy:sy, i["x0"]:i["x0"] + i["tile_w"] * sx:sx,
                    c0:c0 + i["channels"]] += 1
    assert (written == 1).all(), f"layer {index}: elements saved {written.min()}..{written.max()} times"


def run_case(accelerators, board, graph, seed=0, inputs=2):
    compiled = compare_with_golden(accelerators(board), graph, board, seed, inputs)
    x = np.random.default_rng(seed).integers(-128, 128, size=graph.tensors["x"].shape, dtype=np.int8)
    for name in graph.outputs:
        assert len(np.unique(golden.run_graph(graph, x)[name])) >= 3, "degenerate case"
    for i, layer in enumerate(graph.layers):
        if layer.kind != "concat":
            saved_once(compiled, i)
    return compiled


BOARDS = ["u200", "pynq_z2"]


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("shape", [(7, 9, 5), (20, 33, 40), (3, 300, 17)])
def test_lut(accelerators, board, shape):
    b = Builder(f"lut{shape}{board}", shape)
    y = b.lut("x")
    compiled = run_case(accelerators, board, b.graph([y]))
    assert compiled.layers[0].kind == "lut"


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("case, shape, cout, groups", [("dense", (9, 8, 20), 24, 1), ("dw", (10, 10, 32), 32, 32),
                                                      ("chunks", (6, 6, 300), 40, 1)])
def test_conv_with_table(accelerators, board, case, shape, cout, groups):
    """The table runs on the CONV's tile in OBUF (one LUT per frame) before the SAVE."""
    b = Builder(f"ct{case}{board}", shape)
    y = b.conv("x", cout, groups=groups, table=True)
    compiled = run_case(accelerators, board, b.graph([y]))
    progs = np.concatenate(static.part_programs(compiled.program, compiled.program_offset, compiled.parts))
    ops = [isa.decode(r)["opcode"] for r in progs.reshape(-1, isa.INSN_BYTES)]
    assert ops.count("LUT") == compiled.layers[0].frames


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("shape", [(6, 7, 16), (14, 14, 120), (2, 50, 600)])
def test_se_block(accelerators, board, shape):
    """Squeeze-and-excitation: x * table(GAP(x)) broadcast per channel, then an element-wise product."""
    b = Builder(f"se{shape}{board}", shape)
    s = b.lut(b.pool_to("x", (1, 1, shape[2])))
    y = b.mul("x", s, broadcast=True)
    z = b.mul(y, b.lut(y), broadcast=False)  # hard-swish as x * hsig(x)
    run_case(accelerators, board, b.graph([z]))


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("shape, scale, requant", [((5, 6, 8), (2, 2), False), ((9, 7, 33), (3, 1), True),
                                                   ((40, 40, 24), (2, 2), True), ((1, 1, 5), (4, 4), False)])
def test_upsample(accelerators, board, shape, scale, requant):
    b = Builder(f"up{shape}{scale}{board}", shape)
    y = b.upsample(b.conv("x", shape[2]), scale, requant)
    run_case(accelerators, board, b.graph([y]))


CONVT_CASES = [
    ("k2s2", (6, 5, 16), 8, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), 1),
    ("k3s2p1-op1", (5, 6, 8), 12, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    ("k4s2p1", (7, 7, 20), 16, (4, 4), (2, 2), (1, 1, 1, 1), (0, 0), 1),
    ("k1s2", (4, 4, 5), 6, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    ("k3s1p1", (8, 8, 10), 10, (3, 3), (1, 1), (1, 1, 1, 1), (0, 0), 1),
    ("k5x3s3x2-asym", (4, 6, 7), 9, (5, 3), (3, 2), (2, 0, 1, 1), (0, 1), 1),
    ("dw-k4s2", (6, 6, 16), 16, (4, 4), (2, 2), (1, 1, 1, 1), (0, 0), 16),
    ("g2-k2s2", (5, 5, 8), 12, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), 2),
    ("big-k2s2", (40, 40, 96), 24, (2, 2), (2, 2), (0, 0, 0, 0), (0, 0), 1),
]


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("case, shape, cout, k, stride, pads, out_pad, groups", CONVT_CASES,
                         ids=[c[0] for c in CONVT_CASES])
def test_conv_transpose(accelerators, board, case, shape, cout, k, stride, pads, out_pad, groups):
    b = Builder(f"convt{case}{board}", shape)
    y = b.convt("x", cout, k, stride, pads, out_pad, groups, table=case == "k4s2p1")
    run_case(accelerators, board, b.graph([y]), inputs=1)


@pytest.mark.parametrize("case, shape, cout, k, stride, pads, out_pad, groups", CONVT_CASES[:8],
                         ids=[c[0] for c in CONVT_CASES[:8]])
def test_golden_conv_transpose_is_onnx(case, shape, cout, k, stride, pads, out_pad, groups):
    """The golden ConvTranspose (before requantization) is onnxruntime's on integer data."""
    b = Builder(f"g{case}", shape)
    b.convt("x", cout, k, stride, pads, out_pad, groups)
    layer = b.layers[0]
    layer.mult = np.ones(cout, np.int32)
    layer.shift = np.zeros(cout, np.int32)
    layer.bias = np.zeros(cout, np.int32)
    h, w, c = shape
    x = b.rng.integers(-3, 4, size=shape, dtype=np.int8)  # small: the int8 clamp stays out of the way
    layer.weight = b.rng.integers(-2, 3, size=layer.weight.shape, dtype=np.int8)
    got = golden.conv_transpose(x, layer, 0, 0).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=list(k), strides=list(stride),
                            pads=list(pads), output_padding=list(out_pad), group=groups)
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(layer.weight.astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    (want,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.transpose(2, 0, 1)[None].astype(np.float32)})
    np.testing.assert_array_equal(got, np.clip(want[0].transpose(1, 2, 0), -128, 127))


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("shape, scale, transform", [((5, 6, 8), (2, 2), "half_pixel"),
                                                     ((4, 7, 20), (3, 2), "asymmetric"),
                                                     ((9, 9, 33), (4, 4), "half_pixel"),
                                                     ((1, 6, 3), (2, 1), "half_pixel")])
def test_bilinear(accelerators, board, shape, scale, transform):
    """Bilinear upsampling as depthwise convolutions per phase and edge run,
    saved with steps, bit for bit against the golden model's direct sum."""
    b = Builder(f"bi{shape}{scale}{board}", shape)
    src = b.conv("x", shape[2])
    den = [2 * f if transform == "half_pixel" else f for f in scale]
    out = b.out((shape[0] * scale[0], shape[1] * scale[1], shape[2]))
    mult, shift = fixed_point.quantize_multiplier(b.tensors[src].scale / (b.tensors[out].scale * den[0] * den[1]))
    b.layers.append(ir.Upsample("bilinear", src, out, scale, mult, shift, mode="linear", transform=transform))
    run_case(accelerators, board, b.graph([out]), inputs=1)


@pytest.mark.parametrize("transform", ["half_pixel", "asymmetric"])
def test_golden_bilinear_is_onnx(transform):
    """The golden bilinear sum (before rounding) is onnxruntime's Resize on integer data."""
    x = np.random.default_rng(0).integers(-20, 20, size=(5, 7, 3), dtype=np.int8)
    for scale in ((2, 2), (3, 2), (4, 4)):
        den = [2 * f if transform == "half_pixel" else f for f in scale]
        layer = ir.Upsample("u", "x", "y", scale, 1, 0, mode="linear", transform=transform)
        got = golden.upsample(x, layer, 0, 0).astype(np.int64)  # sums of weights * x, clamped to int8
        node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear",
                                coordinate_transformation_mode=transform)
        g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([1, 1, *scale], np.float32), "s")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        (want,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x.transpose(2, 0, 1)[None].astype(np.float32)})
        want = np.clip(np.rint(want[0].transpose(1, 2, 0) * den[0] * den[1]), -128, 127)
        np.testing.assert_array_equal(got, want)
