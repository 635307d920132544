"""HLS C-sim output equals the golden model bit for bit, layer by layer.

Each case builds a small quantized ir.Graph directly (random int8 weights,
int32 biases, per-channel multipliers from realistic scales, random zero
points and clips), compiles it for a board with the real compiler, runs it on
the emulated board (which executes the HLS C++ of the CNN core) and compares
the int8 result with golden.run_graph bit for bit.

Besides the numbers, every case checks the program's structure: the SAVE
tiles of each layer cover its output exactly once, and cases built to force
the lowering to split (output rows / columns / channels, input-channel
chunks accumulated through ACC) assert that the split really happened, so no
case can pass vacuously on a trivial tiling. The small-buffer boards
(pynq_z2: an 8x16 core with 32 KiB buffers; zcu104) force splits at small
MAC counts.

Shapes are written out for the named cases; their contents (weights, zero
points, inputs) come from a seed derived from the case id. Randomly drawn
shapes add more cases, many more under ``-m slow``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest
from harness import compare_with_golden

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.compiler import ir, lower, static
from vfpga.runtime.hw import fixed_point, golden

SD_INT8 = 74.0  # standard deviation of a uniform int8 value


# ---------------------------------------------------------------- graph building


class Net:
    """Builds a quantized ir.Graph with random but realistic parameters."""

    def __init__(self, rng: np.random.Generator, shape, zp: int | None = None):
        self.rng = rng
        self.tensors = {"x": ir.Tensor("x", tuple(shape), self._scale(), self._zp() if zp is None else zp)}
        self.layers: list = []

    # -- quantization of new tensors
    def _scale(self) -> float:
        return float(self.rng.uniform(0.01, 0.1))

    def _zp(self) -> int:
        # mostly near the middle, sometimes at the int8 edges (ReLU outputs sit at -128)
        r = self.rng.random()
        if r < 0.1:
            return -128
        if r < 0.15:
            return 127
        return int(self.rng.integers(-40, 41))

    def _clip(self, clip, zp: int, scale: float) -> tuple[int, int]:
        if clip == "random":
            kinds = ["none", "relu", "relu6", "narrow"] if zp <= 60 else ["none", "narrow"]
            clip = kinds[self.rng.choice(len(kinds), p=[0.4, 0.3, 0.2, 0.1][:len(kinds)] if zp <= 60 else None)]
        if clip == "none":
            return -128, 127
        if clip == "relu":
            return fixed_point.relu_clip(zp, scale)
        if clip == "relu6":
            lo, hi = fixed_point.relu_clip(zp, scale, upper=6.0 * float(self.rng.uniform(0.1, 0.5)))
            return lo, max(lo, hi)
        if clip == "narrow":  # some other Clip(lo, hi) around the zero point
            lo = max(-128, zp - int(self.rng.integers(10, 80)))
            return lo, min(127, zp + int(self.rng.integers(10, 80)))
        return tuple(clip)

    def _out(self, shape) -> str:
        name = f"t{len(self.layers)}"
        self.tensors[name] = ir.Tensor(name, tuple(int(v) for v in shape), self._scale(), self._zp())
        return name

    # -- layers
    def conv(self, src: str, cout: int, k=(3, 3), stride=(1, 1), pads=(0, 0, 0, 0), groups: int = 1,
             clip="random", bias_bits: int | None = None) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        h, w, cin = self.tensors[src].shape
        assert cin % groups == 0 and cout % groups == 0
        assert all(p < kk for p, kk in zip(pads, (kh, kw, kh, kw))), "ONNX limits: pad < kernel"
        cin_g = cin // groups
        k_terms = cin_g * kh * kw
        weight = self.rng.integers(-128, 128, size=(cout, cin_g, kh, kw), dtype=np.int8)
        sd_acc = math.sqrt(k_terms) * SD_INT8 * SD_INT8
        if bias_bits is None:
            bias = np.round(self.rng.normal(0.0, 0.3 * sd_acc, size=cout))
        else:  # near the int32 limits: the accumulator wraps
            bias = self.rng.integers(-(1 << bias_bits), 1 << bias_bits, size=cout)
        bias = np.clip(bias, -(1 << 31), (1 << 31) - 1).astype(np.int32)
        # real multiplier in_scale * w_scale / out_scale, chosen so that the
        # outputs spread over the int8 range (and saturate now and then)
        m = 50.0 / sd_acc * self.rng.uniform(0.3, 3.0, size=cout)
        mult, shift = fixed_point.quantize_multipliers(m)
        oh = (h + pads[0] + pads[2] - kh) // sh + 1
        ow = (w + pads[1] + pads[3] - kw) // sw + 1
        out = self._out((oh, ow, cout))
        t = self.tensors[out]
        self.layers.append(ir.Conv(f"conv{len(self.layers)}", src, out, weight, bias, mult, shift,
                                   (sh, sw), tuple(pads), groups, self._clip(clip, t.zero_point, t.scale)))
        return out

    def pool(self, src: str, mode: str, k, stride=(1, 1), pads=(0, 0, 0, 0), count_include_pad=False,
             clip="random", same_quant: bool | None = None) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        h, w, c = self.tensors[src].shape
        oh = (h + pads[0] + pads[2] - kh) // sh + 1
        ow = (w + pads[1] + pads[3] - kw) // sw + 1
        out = self._out((oh, ow, c))
        t, s = self.tensors[out], self.tensors[src]
        if same_quant is None:
            same_quant = mode == "max" and self.rng.random() < 0.5
        if same_quant:  # what a max pool usually is: the output keeps the input's quantization
            self.tensors[out] = t = ir.Tensor(out, t.shape, s.scale, s.zero_point)
            mult, shift = 1 << 30, 30
        else:
            mult, shift = fixed_point.quantize_multiplier(float(self.rng.uniform(0.4, 2.5)), max_shift=30)
        self.layers.append(ir.Pool(f"pool{len(self.layers)}", src, out, mode, (kh, kw), (sh, sw),
                                   tuple(pads), count_include_pad, mult, shift,
                                   self._clip(clip, t.zero_point, t.scale)))
        return out

    def add(self, a: str, b: str, clip="random") -> str:
        assert self.tensors[a].shape == self.tensors[b].shape
        out = self._out(self.tensors[a].shape)
        t = self.tensors[out]
        ma, mb = self.rng.uniform(0.3, 1.5, size=2)
        a_mult, b_mult, shift = fixed_point.pair_multipliers(float(ma), float(mb))
        self.layers.append(ir.Add(f"add{len(self.layers)}", (a, b), out, a_mult, b_mult, shift,
                                  self._clip(clip, t.zero_point, t.scale)))
        return out

    def graph(self, outputs) -> ir.Graph:
        return ir.Graph(dict(self.tensors), list(self.layers), ["x"], list(outputs), name="case")


def rng_for(case_id: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(case_id.encode()))


# ---------------------------------------------------------------- running and checking


def frames_of(compiled: static.CompiledModel, index: int) -> list[list[dict]]:
    """The decoded instructions of every frame of layer ``index`` in the
    one-core program (the other tiling variants are checked by test_dynamic)."""
    linear = static.part_programs(compiled.program, compiled.program_offset, compiled.parts)
    words = np.concatenate(linear).reshape(-1, isa.INSN_BYTES)
    frames: list[list[dict]] = []
    current = None
    for raw in words:
        insn = isa.decode(raw)
        op = insn["opcode"]
        if op == "FRAME":
            current = [] if insn["layer"] == index else None
            if current is not None:
                frames.append(current)
        elif op in ("BARRIER", "END"):
            current = None
        elif current is not None:
            current.append(insn)
    return frames


@dataclass
class Splits:
    frames: int
    rows: bool  # some output tile has fewer rows than the output
    cols: bool
    chans: bool  # some tile holds fewer output channels than the output
    max_chunks: int  # most CONV instructions (input-channel chunks) in one frame
    saves: list = field(default_factory=list)


def check_structure(compiled: static.CompiledModel, index: int) -> Splits:
    """Asserts that the SAVE tiles of layer ``index`` cover its output tensor
    exactly once, and reports how the layer was split."""
    info = compiled.layers[index]
    out = compiled.tensors[info.output]
    h, w, c = out.shape
    frames = frames_of(compiled, index)
    assert len(frames) == info.frames >= 1
    written = np.zeros((h, w, c), dtype=np.int32)
    saves = []
    max_chunks = 0
    for f in frames:
        fs = [i for i in f if i["opcode"] == "SAVE"]
        assert len(fs) == 1, f"layer {index}: a frame must end in exactly one SAVE"
        s = fs[0]
        assert (s["height"], s["width"], s["pixel_stride"]) == (h, w, out.pixel_stride)
        c0 = s["dram_addr"] - out.addr
        assert 0 <= c0 and c0 + s["channels"] <= c
        written[s["y0"]:s["y0"] + s["tile_h"], s["x0"]:s["x0"] + s["tile_w"], c0:c0 + s["channels"]] += 1
        saves.append(s)
        max_chunks = max(max_chunks, sum(i["opcode"] == "CONV" for i in f))
    assert (written == 1).all(), f"layer {index}: output elements saved {written.min()}..{written.max()} times"
    # every CONV reads beat-major words (vfpga_isa.h) at a word-aligned WBUF offset, loaded in its
    # frame with their padding: the bytes the cycle model and the frame profiles count
    core = overlay.load(compiled.board)["cnn_core"]
    word = isa.conv_word_bytes(core["icp"], core["ocp"])
    for f in frames:
        loaded = {}  # WBUF offset -> bytes of the latest load there, in program order
        for cv in f:
            if cv["opcode"] == "LOAD_LINEAR" and cv["buffer"] == isa.BUF_WGT:
                loaded[cv["buf_addr"]] = cv["nbytes"]
            if cv["opcode"] != "CONV":
                continue
            assert cv["wgt_addr"] % word == 0, f"layer {index}: CONV weights at {cv['wgt_addr']}"
            want = isa.conv_weight_bytes(cv["groups"], cv["cin_g"], cv["cout_g"], cv["kh"], cv["kw"], core["icp"],
                                         core["ocp"])
            assert loaded.get(cv["wgt_addr"]) == want <= core["wbuf_bytes"] - cv["wgt_addr"], (index, cv, loaded)
    return Splits(len(frames), any(s["tile_h"] < h for s in saves), any(s["tile_w"] < w for s in saves),
                  any(s["channels"] < c for s in saves), max_chunks, saves)


def conv_tiling(compiled: static.CompiledModel, graph: ir.Graph, index: int, board: str) -> lower.ConvTiling:
    """The tiling the compiler chose for convolution ``index`` (the choice is deterministic)."""
    layer = graph.layers[index]
    src = compiled.tensors[layer.input]
    return lower.choose_conv_tiling(layer, src.shape, src.pixel_stride,
                                    lower.Geometry.from_config(overlay.load(board)))


def run_and_compare(accelerators, board: str, graph: ir.Graph, seed: int, inputs: int = 1):
    """Compiles, deploys, runs ``inputs`` random int8 inputs and compares every
    graph output with the golden model bit for bit; checks the SAVE coverage
    of every layer. Returns the compiled model."""
    compiled = compare_with_golden(accelerators(board), graph, board, seed, inputs)
    for i in range(len(graph.layers)):
        check_structure(compiled, i)
    return compiled


def assert_spread(graph: ir.Graph, seed: int) -> None:
    """Guards against degenerate cases whose output is (nearly) constant."""
    x = np.random.default_rng(seed).integers(-128, 128, size=graph.tensors["x"].shape, dtype=np.int8)
    y = golden.run_graph(graph, x)[graph.outputs[-1]]
    assert y.size < 8 or len(np.unique(y)) >= 3, f"output values {np.unique(y)} are degenerate"


# ---------------------------------------------------------------- convolution cases

# id, board, input HWC, cout, kernel, stride, pads (t, l, b, r), groups, expected splits
# expected: "rows"/"cols"/"chans" (output tiles smaller than the output), "chunks" (input
# channels accumulated through ACC over >= 2 chunks), "chunks3" (>= 3: every token path of
# the double buffering), "wholegroups" / "onegroup" (the two grouped tilings).
CONV_CASES = [
    # channel counts that are not multiples of the 16 lanes
    ("c1", "u200", (9, 9, 1), 16, (3, 3), (1, 1), (1, 1, 1, 1), 1, ""),
    ("c3-k5s2-asym", "pynq_z2", (13, 11, 3), 5, (5, 5), (2, 2), (2, 1, 0, 3), 1, ""),
    ("c5-1x1", "zcu104", (6, 7, 5), 17, (1, 1), (1, 1), (0, 0, 0, 0), 1, ""),
    ("c17-pad", "u200", (10, 12, 17), 33, (3, 3), (1, 1), (0, 2, 2, 1), 1, ""),
    ("c33-s2", "pynq_z2", (15, 15, 33), 100, (3, 3), (2, 2), (1, 1, 1, 1), 1, ""),
    ("c100-1x1", "zcu104", (8, 8, 100), 3, (1, 1), (1, 1), (0, 0, 0, 0), 1, ""),
    ("c100-3x3", "u200", (7, 7, 100), 100, (3, 3), (1, 1), (1, 1, 1, 1), 1, ""),
    ("c1-to-1", "pynq_z2", (5, 6, 1), 1, (2, 2), (1, 1), (0, 0, 1, 1), 1, ""),
    # 1x1 spatial inputs (fully-connected layers and all-padding windows)
    ("fc-100", "u200", (1, 1, 100), 33, (1, 1), (1, 1), (0, 0, 0, 0), 1, ""),
    ("fc-1024-pynq", "pynq_z2", (1, 1, 1024), 100, (1, 1), (1, 1), (0, 0, 0, 0), 1, "chunks"),
    ("1x1-k3-pad", "zcu104", (1, 1, 17), 5, (3, 3), (1, 1), (1, 1, 1, 1), 1, ""),
    ("1x1-k2-pad", "u200", (1, 1, 3), 16, (2, 2), (1, 1), (1, 0, 0, 1), 1, ""),
    ("1x1-k3-s3", "pynq_z2", (1, 1, 33), 17, (3, 3), (3, 3), (2, 2, 0, 0), 1, ""),
    # kernels 1..11, square and not
    ("k1-s1", "pynq_z2", (7, 9, 17), 16, (1, 1), (1, 1), (0, 0, 0, 0), 1, ""),
    ("k2-s2", "zcu104", (10, 9, 8), 17, (2, 2), (2, 2), (0, 0, 1, 0), 1, ""),
    ("k4-s2-asym", "u200", (11, 13, 5), 24, (4, 4), (2, 2), (3, 0, 1, 2), 1, ""),
    ("k5-s1", "zcu104", (12, 12, 17), 20, (5, 5), (1, 1), (2, 2, 2, 2), 1, ""),
    ("k6-s3", "pynq_z2", (16, 14, 3), 8, (6, 6), (3, 3), (5, 1, 2, 4), 1, ""),
    ("k7-s2-stem", "zcu104", (32, 32, 3), 16, (7, 7), (2, 2), (3, 3, 3, 3), 1, ""),
    ("k8-s4", "u200", (20, 21, 5), 17, (8, 8), (4, 4), (2, 3, 4, 5), 1, ""),
    ("k9-s1", "pynq_z2", (10, 11, 3), 16, (9, 9), (1, 1), (4, 4, 4, 4), 1, ""),
    ("k10-s2", "zcu104", (15, 12, 8), 5, (10, 10), (2, 2), (9, 0, 0, 9), 1, ""),
    ("k11-s4-alexnet", "u200", (63, 63, 3), 16, (11, 11), (4, 4), (2, 2, 2, 2), 1, ""),
    ("k11-chunks-pynq", "pynq_z2", (16, 16, 17), 16, (11, 11), (1, 1), (5, 5, 5, 5), 1, "chunks3"),
    ("k1x7", "u200", (9, 12, 16), 16, (1, 7), (1, 1), (0, 3, 0, 3), 1, ""),
    ("k7x1", "pynq_z2", (12, 9, 17), 24, (7, 1), (1, 1), (3, 0, 3, 0), 1, ""),
    ("k3x5-s1x2", "zcu104", (10, 15, 33), 16, (3, 5), (1, 2), (1, 2, 1, 2), 1, ""),
    ("k5x2-s3x1", "u200", (17, 8, 5), 9, (5, 2), (3, 1), (4, 1, 0, 0), 1, ""),
    ("k2x11", "pynq_z2", (6, 20, 3), 16, (2, 11), (1, 2), (1, 10, 0, 0), 1, ""),
    # strides 1..4, stride larger than the kernel
    ("s4-k1", "zcu104", (16, 16, 8), 8, (1, 1), (4, 4), (0, 0, 0, 0), 1, ""),
    ("s3-k2", "u200", (14, 13, 17), 16, (2, 2), (3, 3), (1, 1, 1, 1), 1, ""),
    ("s2x4-k3", "pynq_z2", (13, 21, 16), 17, (3, 3), (2, 4), (1, 1, 1, 1), 1, ""),
    ("s4x1-k5", "zcu104", (21, 9, 5), 16, (5, 5), (4, 1), (2, 2, 2, 2), 1, ""),
    # asymmetric pads, up to kernel - 1
    ("pad-k5-max", "u200", (6, 6, 5), 16, (5, 5), (1, 1), (4, 4, 4, 4), 1, ""),
    ("pad-k4-asym-s2", "pynq_z2", (9, 10, 17), 16, (4, 4), (2, 2), (3, 0, 1, 2), 1, ""),
    ("pad-bottom-right", "zcu104", (8, 8, 16), 16, (3, 3), (1, 1), (0, 0, 2, 2), 1, ""),
    ("pad-top-left-s3", "u200", (11, 11, 3), 17, (3, 3), (3, 3), (2, 2, 0, 0), 1, ""),
    # grouped and depthwise convolutions
    ("g2", "u200", (10, 10, 16), 32, (3, 3), (1, 1), (1, 1, 1, 1), 2, "wholegroups"),
    ("g3", "pynq_z2", (9, 9, 33), 33, (3, 3), (1, 1), (1, 1, 1, 1), 3, "wholegroups"),
    ("g3-s2-cout2", "zcu104", (8, 8, 12), 6, (3, 3), (2, 2), (0, 1, 1, 0), 3, "wholegroups"),
    ("g2-onegroup-pynq", "pynq_z2", (8, 8, 128), 128, (3, 3), (1, 1), (1, 1, 1, 1), 2, "onegroup"),
    ("g4-onegroup-chunks", "pynq_z2", (6, 6, 1024), 64, (3, 3), (1, 1), (1, 1, 1, 1), 4, "onegroup chunks3"),
    ("dw3", "u200", (14, 14, 32), 32, (3, 3), (1, 1), (1, 1, 1, 1), 32, "wholegroups"),
    ("dw3-s2-asym", "pynq_z2", (15, 16, 33), 33, (3, 3), (2, 2), (0, 0, 1, 1), 33, "wholegroups"),
    ("dw5", "zcu104", (12, 12, 17), 17, (5, 5), (1, 1), (2, 2, 2, 2), 17, "wholegroups"),
    ("dw7", "u200", (14, 14, 100), 100, (7, 7), (1, 1), (3, 3, 3, 3), 100, "wholegroups"),
    ("dw-mult2", "u200", (10, 10, 16), 32, (3, 3), (1, 1), (1, 1, 1, 1), 16, "wholegroups"),
    ("dw-mult2-odd", "pynq_z2", (9, 9, 5), 10, (3, 3), (1, 1), (1, 1, 1, 1), 5, "wholegroups"),
    ("dw-split-pynq", "pynq_z2", (56, 56, 64), 64, (3, 3), (1, 1), (1, 1, 1, 1), 64, "wholegroups rows"),
    ("dw-mult2-split-pynq", "pynq_z2", (10, 10, 200), 400, (3, 3), (1, 1), (1, 1, 1, 1), 200,
     "wholegroups chans"),
    ("dw512-split-pynq", "pynq_z2", (7, 7, 512), 512, (3, 3), (1, 1), (1, 1, 1, 1), 512, "wholegroups chans"),
    ("dw-split-cols-pynq", "pynq_z2", (4, 200, 128), 128, (3, 3), (1, 1), (1, 1, 1, 1), 128,
     "wholegroups chans cols"),
    # a few whole groups of a large kernel do not fit: one group at a time
    ("g3-k9-pergroup-pynq", "pynq_z2", (12, 12, 36), 36, (9, 9), (1, 1), (4, 4, 4, 4), 3, "onegroup"),
    ("g4-k7-pergroup-zcu", "zcu104", (37, 28, 108), 64, (7, 7), (3, 2), (0, 3, 0, 0), 4, "onegroup"),
    # layers that force the lowering to split
    ("split-rows-pynq", "pynq_z2", (64, 64, 16), 16, (3, 3), (1, 1), (1, 1, 1, 1), 1, "rows"),
    ("split-cols-pynq", "pynq_z2", (4, 300, 16), 16, (7, 7), (1, 1), (3, 3, 3, 3), 1, "cols"),
    ("split-oc-pynq", "pynq_z2", (8, 8, 64), 256, (3, 3), (1, 1), (1, 1, 1, 1), 1, "chans"),
    ("split-chunks-pynq", "pynq_z2", (8, 8, 256), 32, (3, 3), (1, 1), (1, 1, 1, 1), 1, "chunks3"),
    ("split-all-pynq", "pynq_z2", (6, 128, 400), 200, (1, 1), (2, 2), (0, 0, 0, 0), 1,
     "rows cols chans chunks3"),
    ("split-rows-zcu", "zcu104", (48, 40, 32), 48, (3, 3), (1, 1), (1, 1, 1, 1), 1, "rows"),
    ("split-chunks-zcu", "zcu104", (10, 10, 512), 64, (3, 3), (1, 1), (1, 1, 1, 1), 1, "chunks3"),
    ("split-all-zcu", "zcu104", (6, 300, 256), 96, (5, 5), (1, 1), (2, 2, 2, 2), 1,
     "rows cols chans chunks3"),
    ("split-rows-u200", "u200", (64, 64, 32), 32, (3, 3), (1, 1), (1, 1, 1, 1), 1, "rows"),
    ("split-all-u200", "u200", (16, 300, 33), 200, (5, 5), (2, 2), (2, 2, 2, 2), 1,
     "rows cols chans chunks3"),
]


def check_expected_splits(compiled, graph, board, index, expect: str):
    """Asserts the splits named in ``expect`` happened in layer ``index``."""
    splits = check_structure(compiled, index)
    wanted = set(expect.split())
    if wanted:
        assert splits.frames > 1 or wanted <= {"wholegroups", "onegroup", "chunks", "chunks3"}
    for what in ("rows", "cols", "chans"):
        if what in wanted:
            assert getattr(splits, what), f"expected the output {what} to be split: {compiled.layers[index].tiling}"
    if "chunks" in wanted:
        assert splits.max_chunks >= 2, compiled.layers[index].tiling
    if "chunks3" in wanted:
        assert splits.max_chunks >= 3, compiled.layers[index].tiling
    if "wholegroups" in wanted or "onegroup" in wanted:
        t = conv_tiling(compiled, graph, index, board)
        layer = graph.layers[index]
        assert (t.group_tile > 1) == ("wholegroups" in wanted), t
        if "wholegroups" in wanted and layer.groups > 1:
            assert max(i["groups"] for f in frames_of(compiled, index) for i in f if i["opcode"] == "CONV") > 1
    return splits


@pytest.mark.parametrize("case_id, board, shape, cout, k, stride, pads, groups, expect", CONV_CASES,
                         ids=[c[0] for c in CONV_CASES])
def test_conv(accelerators, case_id, board, shape, cout, k, stride, pads, groups, expect):
    net = Net(rng_for(case_id), shape)
    out = net.conv("x", cout, k, stride, pads, groups)
    graph = net.graph([out])
    assert_spread(graph, 1)
    compiled = run_and_compare(accelerators, board, graph, seed=zlib.crc32(case_id.encode()))
    check_expected_splits(compiled, graph, board, 0, expect)


@pytest.mark.parametrize("board", ["pynq_z2", "u200"])
def test_conv_accumulator_wraps_like_int32(accelerators, board):
    """Biases near the int32 limits: the accumulator (and the in_zp fold of
    the bias) wraps modulo 2**32 in both models, across input-channel chunks."""
    net = Net(rng_for(f"wrap-{board}"), (6, 6, 256), zp=-128)
    out = net.conv("x", 24, 3, 1, (1, 1, 1, 1), clip="none", bias_bits=31)
    graph = net.graph([out])
    compiled = run_and_compare(accelerators, board, graph, seed=5, inputs=2)
    assert check_structure(compiled, 0).max_chunks >= (3 if board == "pynq_z2" else 1)


# ---------------------------------------------------------------- pooling cases

# id, board, input HWC, mode, kernel, stride, pads, count_include_pad, expected splits
POOL_CASES = [
    ("max3-s2-p1", "u200", (15, 15, 17), "max", (3, 3), (2, 2), (1, 1, 1, 1), False, ""),
    ("max2-s2-odd", "zcu104", (9, 7, 5), "max", (2, 2), (2, 2), (0, 0, 0, 0), False, ""),
    ("max3-s1-asym", "pynq_z2", (10, 10, 33), "max", (3, 3), (1, 1), (0, 2, 2, 0), False, ""),
    ("max1x3-s1x2", "u200", (6, 11, 3), "max", (1, 3), (1, 2), (0, 1, 0, 1), False, ""),
    ("max5-s4-p4", "zcu104", (13, 13, 1), "max", (5, 5), (4, 4), (4, 3, 2, 1), False, ""),
    ("max-1x1-input", "pynq_z2", (1, 1, 100), "max", (2, 2), (1, 1), (1, 1, 0, 0), False, ""),
    ("avg3-p1-incl", "u200", (12, 12, 16), "avg", (3, 3), (1, 1), (1, 1, 1, 1), True, ""),
    ("avg3-p1-excl", "u200", (12, 12, 16), "avg", (3, 3), (1, 1), (1, 1, 1, 1), False, ""),
    ("avg2x3-asym-incl", "pynq_z2", (9, 11, 5), "avg", (2, 3), (2, 1), (1, 2, 0, 1), True, ""),
    ("avg2x3-asym-excl", "pynq_z2", (9, 11, 5), "avg", (2, 3), (2, 1), (1, 2, 0, 1), False, ""),
    ("avg5-s3-p2-incl", "zcu104", (17, 17, 100), "avg", (5, 5), (3, 3), (2, 2, 2, 2), True, ""),
    ("avg5-s3-p2-excl", "zcu104", (17, 17, 100), "avg", (5, 5), (3, 3), (2, 2, 2, 2), False, ""),
    ("avg-1x1-input-incl", "u200", (1, 1, 33), "avg", (3, 3), (1, 1), (1, 1, 1, 1), True, ""),
    ("avg-1x1-input-excl", "u200", (1, 1, 33), "avg", (3, 3), (1, 1), (1, 1, 1, 1), False, ""),
    ("gap7", "u200", (7, 7, 100), "avg", (7, 7), (1, 1), (0, 0, 0, 0), False, ""),
    ("gap7-pynq", "pynq_z2", (7, 7, 512), "avg", (7, 7), (1, 1), (0, 0, 0, 0), False, ""),
    ("gap14", "zcu104", (14, 14, 33), "avg", (14, 14), (1, 1), (0, 0, 0, 0), False, ""),
    ("gap14-split-pynq", "pynq_z2", (14, 14, 256), "avg", (14, 14), (1, 1), (0, 0, 0, 0), False, "chans"),
    ("gap-5x9", "u200", (5, 9, 17), "avg", (5, 9), (1, 1), (0, 0, 0, 0), False, ""),
    # global windows that fit the input buffer only in channel tiles narrower than the lanes
    ("gap56-narrow-pynq", "pynq_z2", (56, 56, 16), "avg", (56, 56), (1, 1), (0, 0, 0, 0), False, "chans"),
    ("gmax80-narrow-zcu", "zcu104", (80, 80, 24), "max", (80, 80), (1, 1), (0, 0, 0, 0), False, "chans"),
    ("gap112-narrow-u200", "u200", (112, 112, 32), "avg", (112, 112), (1, 1), (0, 0, 0, 0), True, "chans"),
    ("max-split-pynq", "pynq_z2", (112, 112, 64), "max", (3, 3), (2, 2), (1, 1, 1, 1), False, "rows"),
    ("avg-split-cols-incl", "pynq_z2", (3, 1100, 16), "avg", (3, 3), (1, 1), (1, 1, 1, 1), True, "cols"),
    ("avg-split-cols-excl", "pynq_z2", (3, 1100, 16), "avg", (3, 3), (1, 1), (1, 1, 1, 1), False, "cols"),
    ("avg-split-zcu", "zcu104", (40, 40, 80), "avg", (3, 3), (2, 2), (0, 0, 1, 1), True, "rows"),
]


@pytest.mark.parametrize("case_id, board, shape, mode, k, stride, pads, cip, expect", POOL_CASES,
                         ids=[c[0] for c in POOL_CASES])
def test_pool(accelerators, case_id, board, shape, mode, k, stride, pads, cip, expect):
    net = Net(rng_for(case_id), shape)
    out = net.pool("x", mode, k, stride, pads, cip)
    graph = net.graph([out])
    compiled = run_and_compare(accelerators, board, graph, seed=zlib.crc32(case_id.encode()))
    splits = check_structure(compiled, 0)
    for what in expect.split():
        assert getattr(splits, what), f"expected the output {what} to be split ({splits.frames} frames)"
    if "narrow" in case_id:
        assert max(s["channels"] for s in splits.saves) < overlay.load(board)["cnn_core"]["ocp"]


def test_count_include_pad_changes_the_border():
    """The two average-pooling conventions differ exactly at padded windows,
    so the cases above check both (not one of them twice)."""
    graphs = []
    for cip in (True, False):
        net = Net(rng_for("cip"), (6, 6, 8))
        graphs.append(net.graph([net.pool("x", "avg", 3, 1, (1, 1, 1, 1), cip)]))
    x = np.random.default_rng(0).integers(-128, 128, size=(6, 6, 8), dtype=np.int8)
    a, b = (golden.run_graph(g, x)[g.outputs[0]] for g in graphs)
    assert np.array_equal(a[1:-1, 1:-1], b[1:-1, 1:-1])
    assert not np.array_equal(a, b)


# ---------------------------------------------------------------- element-wise add and small networks


def _residual(net: Net, conv_k=3, clip="relu"):
    y = net.conv("x", net.tensors["x"].shape[2], conv_k, 1, (conv_k // 2,) * 4)
    return net.add(y, "x", clip=clip)


def _two_branches(net: Net, clip="relu"):
    c = net.tensors["x"].shape[2]
    a = net.conv("x", c, 1)
    b = net.conv("x", c, 3, 1, (1, 1, 1, 1))
    return net.add(a, b, clip=clip)


def _same_operand(net: Net, clip="none"):
    return net.add("x", "x", clip=clip)


def _conv_pool_conv(net: Net):
    y = net.conv("x", 16, 3, 1, (1, 1, 1, 1), clip="relu")
    y = net.pool(y, "max", 2, 2)
    return net.conv(y, 24, 3, 1, (1, 1, 1, 1))


def _resblock_gap(net: Net):
    c = net.tensors["x"].shape[2]
    y = net.conv("x", c, 3, 1, (1, 1, 1, 1), clip="relu")
    y = net.conv(y, c, 3, 1, (1, 1, 1, 1), clip="none")
    y = net.add(y, "x", clip="relu")
    h, w, _ = net.tensors[y].shape
    return net.pool(y, "avg", (h, w))


def _dw_separable(net: Net):
    c = net.tensors["x"].shape[2]
    y = net.conv("x", c, 3, 2, (0, 0, 1, 1), groups=c, clip="relu6")
    y = net.conv(y, 48, 1, clip="relu")
    return net.pool(y, "avg", 2, 2, (0, 0, 1, 1), count_include_pad=False)


def _stem(net: Net, input_also_pooled: bool = False):
    y = net.conv("x", 32, 7, 2, (3, 3, 3, 3), clip="relu")
    y = net.pool(y, "max", 3, 2, (1, 1, 1, 1), same_quant=True)
    if not input_also_pooled:
        return y  # the input feeds only the stem: the host folds stride and columns into channels
    z = net.conv(net.pool("x", "max", 4, 4), 32, 1)
    return net.add(y, z)


def _bottleneck(net: Net):
    c = net.tensors["x"].shape[2]
    y = net.conv("x", c // 4, 1, clip="relu")
    y = net.conv(y, c // 4, 3, 1, (1, 1, 1, 1), clip="relu")
    y = net.conv(y, c, 1, clip="none")
    return net.add("x", y, clip="relu")


# id, board, input HWC, builder, expected splits as "layer index:split"
NET_CASES = [
    ("add-residual", "u200", (8, 8, 17), _residual, ""),
    ("add-residual-1x1", "pynq_z2", (1, 1, 100), lambda n: _residual(n, 1), ""),
    ("add-branches", "pynq_z2", (10, 10, 33), _two_branches, ""),
    ("add-branches-narrow", "zcu104", (9, 7, 5), lambda n: _two_branches(n, clip="narrow"), ""),
    ("add-same-operand", "u200", (5, 6, 3), _same_operand, ""),
    ("add-split-pynq", "pynq_z2", (64, 64, 32), lambda n: _residual(n, 1), "1:rows"),
    ("add-split-cols-pynq", "pynq_z2", (2, 1200, 16), lambda n: _same_operand(n, "relu"), "0:cols"),
    ("add-split-zcu", "zcu104", (40, 40, 48), _two_branches, "2:rows"),
    ("conv-pool-conv", "pynq_z2", (20, 20, 3), _conv_pool_conv, ""),
    ("resblock-gap", "zcu104", (12, 12, 17), _resblock_gap, ""),
    ("dw-separable", "u200", (16, 16, 33), _dw_separable, ""),
    ("stem-pynq", "pynq_z2", (56, 56, 3), _stem, "0:rows"),
    ("stem-pynq-unfolded", "pynq_z2", (56, 56, 3), lambda n: _stem(n, input_also_pooled=True), "0:chans"),
    ("bottleneck-pynq", "pynq_z2", (14, 14, 256), _bottleneck, ""),
]


@pytest.mark.parametrize("case_id, board, shape, build, expect", NET_CASES, ids=[c[0] for c in NET_CASES])
def test_network(accelerators, case_id, board, shape, build, expect):
    net = Net(rng_for(case_id), shape)
    out = build(net)
    graph = net.graph([out])
    compiled = run_and_compare(accelerators, board, graph, seed=zlib.crc32(case_id.encode()), inputs=2)
    for item in expect.split():
        index, what = item.split(":")
        splits = check_structure(compiled, int(index))
        assert getattr(splits, what), f"expected layer {index}'s output {what} to be split ({splits.frames} frames)"


def test_intermediate_tensors_as_outputs(accelerators):
    """Every intermediate tensor read back (no activation memory reused) equals the golden one."""
    net = Net(rng_for("all-outputs"), (14, 14, 24))
    _resblock_gap(net)
    graph = net.graph([layer.output for layer in net.layers])
    compiled = run_and_compare(accelerators, "pynq_z2", graph, seed=3)
    assert len(compiled.outputs) == len(graph.layers) == 4


# ---------------------------------------------------------------- randomly drawn shapes

CHANNELS = (1, 3, 5, 8, 16, 17, 24, 33, 64, 100, 128, 256)
MAX_MACS = 30_000_000


def random_conv_case(rng: np.random.Generator):
    """A random convolution within ONNX's limits (pad < kernel) and a MAC budget."""
    while True:
        board = str(rng.choice(["pynq_z2", "zcu104", "u200"]))
        kh = int(rng.integers(1, 12))
        kw = kh if rng.random() < 0.6 else int(rng.integers(1, 12))
        sh = int(rng.integers(1, 5))
        sw = sh if rng.random() < 0.7 else int(rng.integers(1, 5))
        pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
        kind = rng.choice(["dense", "dense", "grouped", "depthwise"])
        cin = int(rng.choice(CHANNELS))
        if kind == "dense":
            groups, cout = 1, int(rng.choice(CHANNELS))
        elif kind == "depthwise":
            groups, cout = cin, cin * int(rng.choice([1, 1, 2]))
        else:
            groups = int(rng.choice([2, 3, 4]))
            cin = groups * int(rng.integers(1, 33))
            cout = groups * int(rng.integers(1, 33))
        h = int(rng.integers(1, 48))
        w = int(rng.integers(1, 48))
        oh = (h + pads[0] + pads[2] - kh) // sh + 1
        ow = (w + pads[1] + pads[3] - kw) // sw + 1
        if oh < 1 or ow < 1 or h + pads[0] + pads[2] < kh or w + pads[1] + pads[3] < kw:
            continue
        if oh * ow * cout * (cin // groups) * kh * kw > MAX_MACS:
            continue
        return board, (h, w, cin), cout, (kh, kw), (sh, sw), pads, groups


def random_pool_case(rng: np.random.Generator):
    while True:
        board = str(rng.choice(["pynq_z2", "zcu104", "u200"]))
        kh = int(rng.integers(1, 8))
        kw = kh if rng.random() < 0.7 else int(rng.integers(1, 8))
        sh = int(rng.integers(1, 5))
        sw = sh if rng.random() < 0.7 else int(rng.integers(1, 5))
        pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        if h + pads[0] + pads[2] < kh or w + pads[1] + pads[3] < kw:
            continue
        return (board, (h, w, int(rng.choice(CHANNELS))), str(rng.choice(["max", "avg"])), (kh, kw), (sh, sw),
                pads, bool(rng.random() < 0.5))


def _random_params(n_default: int, n_slow: int, draw, prefix: str):
    rng = np.random.default_rng(20240601 + len(prefix))
    params = []
    for i in range(n_default + n_slow):
        marks = [pytest.mark.slow] if i >= n_default else []
        params.append(pytest.param(f"{prefix}-{i}", *draw(rng), marks=marks, id=f"{prefix}-{i}"))
    return params


@pytest.mark.parametrize("case_id, board, shape, cout, k, stride, pads, groups",
                         _random_params(24, 1500, random_conv_case, "rconv"))
def test_conv_random(accelerators, case_id, board, shape, cout, k, stride, pads, groups):
    net = Net(rng_for(case_id), shape)
    graph = net.graph([net.conv("x", cout, k, stride, pads, groups)])
    run_and_compare(accelerators, board, graph, seed=zlib.crc32(case_id.encode()))


@pytest.mark.parametrize("case_id, board, shape, mode, k, stride, pads, cip",
                         _random_params(8, 500, random_pool_case, "rpool"))
def test_pool_random(accelerators, case_id, board, shape, mode, k, stride, pads, cip):
    net = Net(rng_for(case_id), shape)
    graph = net.graph([net.pool("x", mode, k, stride, pads, cip)])
    run_and_compare(accelerators, board, graph, seed=zlib.crc32(case_id.encode()))


def build_random_net(net: Net, rng: np.random.Generator) -> str:
    """2-4 random layers: convolutions (some keeping the shape so that a
    residual add can follow), pooling and adds."""
    cur = "x"
    for _ in range(int(rng.integers(2, 5))):
        h, w, c = net.tensors[cur].shape
        kind = str(rng.choice(["conv", "conv", "pool", "add"]))
        if kind == "add":
            k = int(rng.choice([1, 3, 5]))
            groups = c if rng.random() < 0.3 else 1
            other = net.conv(cur, c, k, 1, (k // 2,) * 4, groups=groups)
            cur = net.add(*((cur, other) if rng.random() < 0.5 else (other, cur)))
        elif kind == "pool" and min(h, w) >= 3:
            k = int(rng.integers(2, 4))
            pad = int(rng.integers(0, k))
            cur = net.pool(cur, str(rng.choice(["max", "avg"])), k, int(rng.integers(1, 3)), (pad,) * 4,
                           bool(rng.random() < 0.5))
        else:
            k = int(rng.choice([1, 3, 5]))
            cur = net.conv(cur, int(rng.choice(CHANNELS[:10])), k, int(rng.integers(1, 3)),
                           (k // 2,) * 4)
    return cur


def _random_net_case(rng: np.random.Generator):
    return (str(rng.choice(["pynq_z2", "zcu104", "u200"])),
            (int(rng.integers(1, 33)), int(rng.integers(1, 33)), int(rng.choice(CHANNELS[:10]))))


@pytest.mark.parametrize("case_id, board, shape", _random_params(6, 200, _random_net_case, "rnet"))
def test_network_random(accelerators, case_id, board, shape):
    net = Net(rng_for(case_id), shape)
    graph = net.graph([build_random_net(net, rng_for(case_id + "-structure"))])
    run_and_compare(accelerators, board, graph, seed=zlib.crc32(case_id.encode()))


def test_random_cases_cover_the_space():
    """The default random draw is not a handful of trivial shapes."""
    drawn = [p.values for p in _random_params(24, 0, random_conv_case, "rconv")]
    assert len({d[1] for d in drawn}) == 3  # every board
    assert max(max(d[4]) for d in drawn) >= 7  # a big kernel
    assert max(max(d[5]) for d in drawn) >= 3  # stride >= 3
    assert any(d[7] > 1 for d in drawn)  # grouped or depthwise
