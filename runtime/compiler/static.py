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

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.compiler import input_fold, ir, lower, lower_ops, placement, steps
from vfpga.runtime.hw import cycle_model, frame_timing

ALIGN = 64
PAGE = 4096  # segment areas that the host allocates or copies whole start on a page


def align(n: int, a: int = ALIGN) -> int:
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
    outputs: list[str]
    out_shape: tuple[int, int, int]
    frames: int
    insns: int
    macs: int
    tiling: str
    onnx_nodes: list[str] = field(default_factory=list)
    variants: list[tuple[str, int]] = field(default_factory=list)  # (tiling, frames), 1-core first

    @property
    def output(self) -> str:
        return self.outputs[0]


@dataclass(frozen=True)
class Part:
    """One step of a request: an accelerator program (instructions at
    ``insn_offset`` in the segment, ending with END) or a CPU layer."""

    kind: str  # "accel" | "cpu"
    insn_offset: int = 0
    n_insns: int = 0
    layer: int = -1


# One row per frame, in program order: what the dynamic stage schedules.
# Variant 0 of every layer is the one-core tiling, in the linear program;
# the others live after it and are reached only through dispatch programs.
# ``cycles``: the frame alone on a core; ``ddr_bytes``: what it moves (both
# from the cycle model; the pool timeline and the dynamic stage derive its
# bank sharing from them, vfpga.runtime.hw.frame_timing).
FRAME_DTYPE = np.dtype([("layer", np.int32), ("variant", np.int16), ("offset", np.int64),
                        ("n_insns", np.int32), ("cycles", np.int64), ("ddr_bytes", np.int64)])


@dataclass
class CompiledModel:
    board: str
    graph: ir.Graph
    tensors: dict[str, Placement]
    layers: list[LayerInfo]
    parts: list[Part]
    frames: np.ndarray  # FRAME_DTYPE
    program: np.ndarray  # uint8 [n_insns * INSN_BYTES], all accelerator parts
    program_offset: int
    consts: bytes
    const_offset: int
    activation_bytes: int
    segment_size: int
    compile_seconds: float
    # the first convolution's stride/columns folded into channels by the host (None: not folded)
    input_fold: input_fold.InputFold | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """HWC shape of a request's int8 input (the graph input)."""
        return tuple(self.graph.tensors[self.graph.inputs[0]].shape)

    def device_input(self, x_q: np.ndarray) -> np.ndarray:
        """The int8 tensor a request's input becomes in the segment: the
        input itself, or rearranged for the folded first convolution."""
        if self.input_fold is None:
            return x_q
        return self.input_fold.apply(x_q, self.input.zero_point)

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
        for name in graph.layer_inputs(layer):
            if name not in life:
                raise CompileError(f"layer {layer.name} reads {name!r} before anything produces it")
            first, _ = life[name]
            life[name] = (first, i)
        for name in graph.layer_outputs(layer):
            life[name] = (i, i)
    for name in graph.outputs:
        if name not in life:
            raise CompileError(f"graph output {name!r} is produced by no layer")
        life[name] = (life[name][0], end)
    return life


def _identity_copy(graph: ir.Graph, name: str, suffix: str) -> tuple[ir.Pool, str]:
    """A 1x1 max pool that copies ``name`` bit for bit into a new tensor."""
    t = graph.tensors[name]
    new, n = f"{name}@{suffix}", 1
    while new in graph.tensors:  # the same tensor may feed one concat twice
        n += 1
        new = f"{name}@{suffix}#{n}"
    graph.tensors[new] = ir.Tensor(new, t.shape, t.scale, t.zero_point, t.onnx_shape)
    return ir.Pool(f"copy:{new}", name, new, "max", (1, 1), mult=1 << 30, shift=30), new


def resolve_concats(graph: ir.Graph) -> tuple[ir.Graph, dict[str, tuple[str, int]]]:
    """Concat is address placement: each input is written straight into its
    channel slice of the output. Returns a graph in which every Concat input
    can alias (inputs that cannot -- graph inputs or outputs, CPU results,
    inputs of two concats -- get an exact copy layer first) and the alias map
    {tensor: (concat output, channel offset)}."""
    if not any(layer.kind == "concat" for layer in graph.layers):
        return graph, {}
    g = ir.Graph(dict(graph.tensors), [], list(graph.inputs), list(graph.outputs), graph.name,
                 list(graph.onnx_nodes))
    producer_kind = {}
    for layer in graph.layers:
        for o in graph.layer_outputs(layer):
            producer_kind[o] = layer.kind
    uses = {}
    for layer in graph.layers:
        if layer.kind == "concat":
            for n in layer.inputs:
                uses[n] = uses.get(n, 0) + 1
    alias = {}
    for layer in graph.layers:
        if layer.kind != "concat":
            g.layers.append(layer)
            continue
        inputs = []
        for n in layer.inputs:
            if (n in graph.inputs or n in graph.outputs or producer_kind.get(n) == "cpu" or uses[n] > 1
                    or n in alias):
                copy, n = _identity_copy(g, n, layer.name)
                g.layers.append(copy)
            inputs.append(n)
        out = g.tensors[layer.output]
        c0 = 0
        for n in inputs:
            t = g.tensors[n]
            if t.shape[:2] != out.shape[:2] or (t.scale, t.zero_point) != (out.scale, out.zero_point):
                raise CompileError(f"concat {layer.name}: input {n} has shape {t.shape} / quantization "
                                   f"({t.scale}, {t.zero_point}), the output {out.shape} / ({out.scale}, "
                                   f"{out.zero_point})")
            alias[n] = (layer.output, c0)
            c0 += t.shape[2]
        if c0 != out.shape[2]:
            raise CompileError(f"concat {layer.name}: inputs have {c0} channels, the output {out.shape[2]}")
        g.layers.append(ir.Concat(layer.name, tuple(inputs), layer.output, list(layer.onnx_nodes)))
    return g, alias


def _root(name: str, alias: dict) -> tuple[str, int]:
    offset = 0
    while name in alias:
        name, c0 = alias[name]
        offset += c0
    return name, offset


def place_activations(graph: ir.Graph, alias: dict | None = None) -> tuple[dict[str, Placement], int]:
    """First-fit placement of activations; tensors whose lifetimes do not
    overlap share memory, concat inputs live inside their output. Returns
    the placements and the arena size."""
    alias = alias or {}
    life = _lifetimes(graph)
    span = {}  # root tensor -> lifetime covering all its aliases
    host_only = {n for n in life if graph.tensors[n].dtype != "int8"}  # float CPU results stay on the host
    for name, (first, last) in life.items():
        if name in host_only:
            continue
        root, _ = _root(name, alias)
        f0, l0 = span.get(root, (first, last))
        span[root] = (min(f0, first), max(l0, last))
    placed: list[tuple[int, int, int, int]] = []  # (first, last, addr, size)
    base = {}
    arena = 0
    for root in sorted(span, key=lambda n: (span[n][0], n)):
        h, w, c = graph.tensors[root].shape
        size = align(h * w * c)
        first, last = span[root]
        busy = sorted((a, a + s) for f, l_, a, s in placed if not (l_ < first or f > last))
        addr = 0
        for lo, hi in busy:
            if addr + size <= lo:
                break
            addr = max(addr, align(hi))
        placed.append((first, last, addr, size))
        arena = max(arena, addr + size)
        base[root] = addr
    out = {}
    for name in life:
        t = graph.tensors[name]
        if name in host_only:
            out[name] = Placement(name, -1, t.shape, t.shape[2], t.scale, t.zero_point)
            continue
        root, c0 = _root(name, alias)
        out[name] = Placement(name, base[root] + c0, t.shape, graph.tensors[root].shape[2], t.scale,
                              t.zero_point)
    return out, arena


def core_counts(n_cores: int) -> list[int]:
    """Core counts the static stage prepares tiling variants for."""
    ks, k = [], 1
    while k < n_cores:
        ks.append(k)
        k *= 2
    return ks + [n_cores]


def _lower_layer(layer, index, tensors, graph, const_base, geo, ks):
    """Tiling variants of one layer (frames and description each; the
    one-core variant first) and its constant block."""
    ins = [tensors[n] for n in graph.layer_inputs(layer)]
    out = tensors[layer.output]
    if getattr(layer, "requant_zp", None) is not None:  # requantized to the zero point its table reads
        out = dataclasses.replace(out, zero_point=layer.requant_zp)
    if layer.kind == "conv":
        src = ins[0].view()
        tilings = lower.conv_variants(layer, (src.height, src.width, src.channels), src.pixel_stride, geo, ks)
        blob, packing, variants = bytearray(), {}, []
        for t in tilings:
            frames, b, _ = lower.lower_conv(layer, index, src, out.view(), ins[0].zero_point, out.zero_point,
                                            const_base + len(blob), geo, tiling=t, packing=packing)
            blob.extend(b)
            variants.append((frames, t.describe()))
        return variants, bytes(blob)
    if layer.kind == "convtranspose":
        src = ins[0].view()
        frames, blob, desc = lower_ops.lower_conv_transpose(layer, index, src, out.view(), ins[0].zero_point,
                                                            out.zero_point, const_base, geo)
        return [(frames, desc)], blob
    if layer.kind in ("lut", "mul", "upsample"):
        return _lower_elementwise(layer, index, ins, out, const_base, geo, ks)
    if layer.kind in ("pool", "add"):
        if layer.kind == "pool":
            def emit(rows):
                return lower.lower_pool(layer, index, ins[0].view(), out.view(), ins[0].zero_point,
                                        out.zero_point, geo, max_rows=rows)
            desc = f"{layer.mode} {layer.kernel[0]}x{layer.kernel[1]}"
        else:
            def emit(rows):
                return lower.lower_add(layer, index, ins[0].view(), ins[1].view(), out.view(),
                                       ins[0].zero_point, ins[1].zero_point, out.zero_point, geo, max_rows=rows)
            desc = "element-wise"
        variants = [(emit(None), desc)]
        rows = out.shape[0]
        for k in ks[1:]:
            frames = emit(-(-rows // k))
            if len(frames) > len(variants[-1][0]):
                variants.append((frames, f"{desc}, rows {-(-rows // k)}"))
        return variants, b""
    if layer.kind == "concat":
        return [([], "placement (no copy)")], b""
    raise CompileError(f"layer {layer.name}: unknown layer kind {layer.kind!r}")


def _lower_elementwise(layer, index, ins, out, const_base, geo, ks):
    """LUT, MUL and upsampling layers: the widest tiles, then row splits for more cores."""
    blob = b""
    if layer.kind == "lut":
        def emit(rows):
            nonlocal blob
            frames, blob = lower_ops.lower_lut(layer, index, ins[0].view(), out.view(), const_base, geo, rows)
            return frames
        desc = "activation table"
    elif layer.kind == "mul":
        def emit(rows):
            return lower_ops.lower_mul(layer, index, ins[0].view(), ins[1].view(), out.view(), ins[0].zero_point,
                                       ins[1].zero_point, out.zero_point, geo, rows)
        desc = "per-channel scale" if layer.broadcast else "element-wise product"
    else:
        def emit(rows):
            nonlocal blob
            frames, blob = lower_ops.lower_upsample(layer, index, ins[0].view(), out.view(), ins[0].zero_point,
                                                    out.zero_point, geo, rows, const_base)
            return frames
        desc = f"{layer.mode} x{layer.scale[0]}x{layer.scale[1]}"
        if layer.mode == "linear":
            return [(emit(None), desc)], blob
    variants = [(emit(None), desc)]
    rows = ins[0].shape[0]
    for k in ks[1:]:
        frames = emit(-(-rows // k))
        if len(frames) > len(variants[-1][0]):
            variants.append((frames, f"{desc}, rows {-(-rows // k)}"))
    return variants, blob


def compile_graph(graph: ir.Graph, board: str | dict = "u200", progress=None) -> CompiledModel:
    """Static stage: lower every layer into frames (with tiling variants for
    several core counts) and lay out the segment. Accelerator layers between
    CPU layers form one part each; a request runs the parts in order.
    ``progress``, if given, is called after each layer with (layers done,
    layers in all, layer name)."""
    start = time.perf_counter()
    cfg = overlay.load(board) if isinstance(board, str) else board
    geo = lower.Geometry.from_config(cfg)
    ks = core_counts(cfg["cnn_core"]["count"])
    if len(graph.inputs) != 1:
        raise CompileError(f"the accelerator path takes one input tensor, the graph has {len(graph.inputs)}")
    graph, alias = resolve_concats(graph)
    fold = input_fold.choose(graph, geo.icp)
    lowered = input_fold.fold_graph(graph, fold) if fold is not None else graph
    tensors, arena = place_activations(lowered, alias)
    const_offset = align(arena, PAGE)
    consts = bytearray()
    program: list[bytes] = []  # the linear (one-core) program
    alt: list[bytes] = []  # frames of the other variants
    pos = alt_pos = 0  # lengths so far, in instructions
    parts: list[tuple[str, int, int, int]] = []  # (kind, first insn, n_insns, layer)
    part_start = 0
    frame_rows = []  # (layer, variant, in alt region?, first insn, n_insns)
    layers: list[LayerInfo] = []

    def close_part():
        nonlocal pos, part_start
        if pos > part_start:
            program.append(isa.encode("END"))
            pos += 1
            parts.append(("accel", part_start, pos - part_start, -1))
        part_start = pos

    for index, layer in enumerate(lowered.layers):
        outs = graph.layer_outputs(layer)
        if layer.kind == "cpu":
            close_part()
            parts.append(("cpu", 0, 0, index))
            layers.append(LayerInfo(index, layer.name, "cpu", graph.layer_inputs(layer), outs,
                                    tensors[outs[0]].shape, 0, 0, 0, "onnxruntime on the host",
                                    list(layer.onnx_nodes)))
            if progress is not None:
                progress(index + 1, len(graph.layers), layer.name)
            continue
        try:
            variants, blob = _lower_layer(layer, index, tensors, lowered, const_offset + len(consts), geo, ks)
            macs = placement.layer_macs(graph.layers[index], tensors)  # the model's work, not the fold's padding
        except lower.LoweringError as e:
            raise CompileError(str(e)) from e
        consts.extend(blob)
        for v, (frames, _) in enumerate(variants):
            for f in frames:
                n = len(f) // isa.INSN_BYTES
                if v == 0:
                    frame_rows.append((index, v, 0, pos, n))
                    program.append(f)
                    pos += n
                else:
                    frame_rows.append((index, v, 1, alt_pos, n))
                    alt.append(f)
                    alt_pos += n
        frames0 = variants[0][0]
        if frames0:
            program.append(isa.encode("BARRIER", tag=index, layer=index))
            pos += 1
        layers.append(LayerInfo(index, layer.name, layer.kind, graph.layer_inputs(layer), outs,
                                tensors[outs[0]].shape, len(frames0), sum(len(f) for f in frames0) // isa.INSN_BYTES,
                                macs, variants[0][1], list(layer.onnx_nodes),
                                [(desc, len(frames)) for frames, desc in variants]))
        if progress is not None:
            progress(index + 1, len(graph.layers), layer.name)
    close_part()
    code = np.frombuffer(b"".join(program + alt), dtype=np.uint8)
    # every step fits the core's instruction queues (else it faults FRAME_SIZE)
    frame_starts = [r[3] + r[2] * pos for r in frame_rows]
    steps.check_steps(code, cfg["cnn_core"]["frame_insns"], f"{cfg['name']} CNN program", CompileError,
                      starts=frame_starts)
    program_offset = align(const_offset + len(consts), PAGE)
    size = align(program_offset + len(code), PAGE)
    if size >= 1 << 32:
        raise CompileError(f"the segment would be {size} bytes; segment offsets are 32-bit")
    if size > cfg["ddr"]["bank_bytes"]:
        raise CompileError(f"the segment would be {size} bytes, more than a {cfg['name']} DDR bank "
                           f"({cfg['ddr']['bank_bytes']} bytes)")
    parts_out = [Part(k, program_offset + first * isa.INSN_BYTES, n, li) if k == "accel" else Part(k, layer=li)
                 for k, first, n, li in parts]
    frames = np.zeros(len(frame_rows), FRAME_DTYPE)
    if frame_rows:
        rows = np.array(frame_rows, dtype=np.int64)
        frames["layer"], frames["variant"], frames["n_insns"] = rows[:, 0], rows[:, 1], rows[:, 4]
        first = rows[:, 3] + rows[:, 2] * pos  # alternative frames follow the linear program
        frames["offset"] = program_offset + first * isa.INSN_BYTES
        frames["cycles"], frames["ddr_bytes"] = frame_profiles(code, first, frames["n_insns"], cfg)
    return CompiledModel(board=cfg["name"], graph=graph, tensors=tensors, layers=layers, parts=parts_out,
                         frames=frames, program=code, program_offset=program_offset, consts=bytes(consts),
                         const_offset=const_offset, activation_bytes=arena, segment_size=size,
                         compile_seconds=time.perf_counter() - start, input_fold=fold)


def part_programs(code: np.ndarray, program_offset: int, parts) -> list[np.ndarray]:
    """The instructions of each accelerator part (uint8 views of ``code``)."""
    out = []
    for p in parts:
        if p.kind == "accel":
            first = p.insn_offset - program_offset
            out.append(code[first:first + p.n_insns * isa.INSN_BYTES])
    return out


def schedule_parts(compiled: CompiledModel, cfg: dict) -> list:
    """Cycle-model schedule of each accelerator part run on one core."""
    return [cycle_model.schedule(p, cfg)
            for p in part_programs(compiled.program, compiled.program_offset, compiled.parts)]


def frame_profiles(code: np.ndarray, first: np.ndarray, n_insns: np.ndarray, cfg: dict) -> tuple:
    """The dynamic stage's knowledge of each frame: (cycles alone [n], DDR
    bytes [n]). The cycles are exactly what the pool timeline charges the
    frame alone: the cycle model's schedule of its own instructions
    (``first``/``n_insns`` index ``code`` in instructions)."""
    insns = np.asarray(code, np.uint8).reshape(-1, isa.INSN_BYTES)
    cache: dict = {}
    rows = [frame_timing.frame_profile(insns[f:f + n], cfg, cache)
            for f, n in zip(np.asarray(first).tolist(), np.asarray(n_insns).tolist())]
    return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64)
