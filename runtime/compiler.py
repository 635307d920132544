"""Compiler: a quantized layer graph -> the program and segment image of one
tenant for one board.

Segment layout (byte offsets inside the tenant segment, 64-byte aligned):

    [ activations (reused by liveness) | weights + params | program ]

Activations come first so lowering knows every tensor's address; constants
are appended as layers are lowered; the program is placed last, once its
length is known. Every address in the program is a segment offset, so the
segment can live anywhere in any bank without patching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from vfpga import overlay
from vfpga.driver import isa

from . import ir, lower

ALIGN = 64


def _align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


class CompileError(ValueError):
    """A graph the compiler cannot place or lower for this board."""


@dataclass(frozen=True)
class Placement:
    """Where a tensor lives in the segment and how it is quantized."""

    name: str
    addr: int
    shape: tuple[int, int, int]  # (H, W, C)
    pixel_stride: int
    scale: float
    zero_point: int

    @property
    def nbytes(self) -> int:
        h, w, _ = self.shape
        return h * w * self.pixel_stride

    def view(self) -> lower.View:
        h, w, c = self.shape
        return lower.View(self.addr, h, w, c, self.pixel_stride)


@dataclass
class LayerInfo:
    index: int
    name: str
    kind: str
    inputs: list[str]
    output: str
    out_shape: tuple[int, int, int]
    frames: int
    insns: int
    macs: int
    tiling: str
    onnx_nodes: list[str] = field(default_factory=list)


@dataclass
class CompiledModel:
    board: str
    graph: ir.Graph
    tensors: dict[str, Placement]
    layers: list[LayerInfo]
    program: np.ndarray  # uint8 [n_insns * INSN_BYTES]
    program_offset: int
    consts: bytes
    const_offset: int
    activation_bytes: int
    segment_size: int
    compile_seconds: float

    @property
    def n_insns(self) -> int:
        return len(self.program) // isa.INSN_BYTES

    def segment_image(self) -> dict[int, bytes]:
        """The bytes to upload once at deploy: {segment offset: bytes}."""
        return {self.const_offset: self.consts, self.program_offset: self.program.tobytes()}

    @property
    def input(self) -> Placement:
        return self.tensors[self.graph.inputs[0]]

    @property
    def outputs(self) -> list[Placement]:
        return [self.tensors[n] for n in self.graph.outputs]


def _lifetimes(graph: ir.Graph) -> dict[str, tuple[int, int]]:
    """(first, last) layer index during which each tensor must stay intact."""
    end = len(graph.layers)
    life = {name: (-1, -1) for name in graph.inputs}
    for i, layer in enumerate(graph.layers):
        life[layer.output] = (i, i)
        for name in graph.layer_inputs(layer):
            if name not in life:
                raise CompileError(f"layer {layer.name} reads {name!r} before anything produces it")
            first, _ = life[name]
            life[name] = (first, i)
    for name in graph.outputs:
        if name not in life:
            raise CompileError(f"graph output {name!r} is produced by no layer")
        life[name] = (life[name][0], end)
    return life


def place_activations(graph: ir.Graph) -> tuple[dict[str, Placement], int]:
    """First-fit placement of activations; tensors whose lifetimes do not
    overlap share memory. Returns the placements and the arena size."""
    life = _lifetimes(graph)
    placed: list[tuple[int, int, int, int]] = []  # (first, last, addr, size)
    out = {}
    arena = 0
    for name in sorted(life, key=lambda n: (life[n][0], n)):
        t = graph.tensors[name]
        h, w, c = t.shape
        size = _align(h * w * c)
        first, last = life[name]
        busy = sorted((a, a + s) for f, l_, a, s in placed if not (l_ < first or f > last))
        addr = 0
        for lo, hi in busy:
            if addr + size <= lo:
                break
            addr = max(addr, _align(hi))
        placed.append((first, last, addr, size))
        arena = max(arena, addr + size)
        out[name] = Placement(name, addr, t.shape, c, t.scale, t.zero_point)
    return out, arena


def compile_graph(graph: ir.Graph, board: str | dict = "u200") -> CompiledModel:
    """Static stage for one core: lower every layer into frames, lay out the
    segment. (Multi-core dispatch programs come from the dynamic stage.)"""
    start = time.perf_counter()
    cfg = overlay.load(board) if isinstance(board, str) else board
    geo = lower.Geometry.from_config(cfg)
    if len(graph.inputs) != 1:
        raise CompileError(f"the accelerator path takes one input tensor, the graph has {len(graph.inputs)}")
    tensors, arena = place_activations(graph)
    const_offset = _align(arena, 4096)
    consts = bytearray()
    program: list[bytes] = []
    layers: list[LayerInfo] = []
    for index, layer in enumerate(graph.layers):
        out = tensors[layer.output]
        ins = [tensors[n] for n in graph.layer_inputs(layer)]
        try:
            if layer.kind == "conv":
                frames, blob, tiling = lower.lower_conv(
                    layer, index, ins[0].view(), out.view(), ins[0].zero_point, out.zero_point,
                    const_offset + len(consts), geo)
                consts.extend(blob)
                oc, icg, kh, kw = layer.weight.shape
                macs = out.shape[0] * out.shape[1] * oc * icg * kh * kw
                desc = f"oc {tiling.toc * tiling.group_tile} ic {tiling.tic} rows {tiling.toh} cols {tiling.tow}"
            elif layer.kind == "pool":
                frames = lower.lower_pool(layer, index, ins[0].view(), out.view(), ins[0].zero_point,
                                          out.zero_point, geo)
                macs, desc = 0, f"{layer.mode} {layer.kernel[0]}x{layer.kernel[1]}"
            elif layer.kind == "add":
                frames = lower.lower_add(layer, index, ins[0].view(), ins[1].view(), out.view(),
                                         ins[0].zero_point, ins[1].zero_point, out.zero_point, geo)
                macs, desc = 0, "element-wise"
            else:
                raise CompileError(f"layer {layer.name}: unknown layer kind {layer.kind!r}")
        except lower.LoweringError as e:
            raise CompileError(str(e)) from e
        program.extend(frames)
        program.append(isa.encode("BARRIER", tag=index, layer=index))
        n = sum(len(f) for f in frames) // isa.INSN_BYTES
        layers.append(LayerInfo(index, layer.name, layer.kind, graph.layer_inputs(layer), layer.output,
                                out.shape, len(frames), n, macs, desc, list(layer.onnx_nodes)))
    program.append(isa.encode("END"))
    code = np.frombuffer(b"".join(program), dtype=np.uint8)
    program_offset = _align(const_offset + len(consts), 4096)
    size = _align(program_offset + len(code), 4096)
    if size >= 1 << 32:
        raise CompileError(f"the segment would be {size} bytes; segment offsets are 32-bit")
    return CompiledModel(board=cfg["name"], graph=graph, tensors=tensors, layers=layers, program=code,
                         program_offset=program_offset, consts=bytes(consts), const_offset=const_offset,
                         activation_bytes=arena, segment_size=size,
                         compile_seconds=time.perf_counter() - start)
