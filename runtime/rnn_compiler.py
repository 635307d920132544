"""RNN compiler: ONNX LSTM / GRU -> RNN core frames, a tenant segment image
and, for any core count, a level-1 dispatch program.

Why it looks like this
----------------------
The RNN core (hls/rnn_core.cpp, RNN section of vfpga_isa.h) runs one frame
per call: loads, matrix-vector products, the gate unit, saves. A recurrent
layer is sequential in time but parallel along the hidden units, so the
static stage splits the hidden dimension into ``v`` slices for every
``v`` in :func:`vfpga.runtime.compiler.core_counts` (the "variants") and
emits, per timestep, one frame per slice; a barrier separates timesteps
because every slice needs the whole h_{t-1} (exchanged through DDR). GRU with
linear_before_reset = 0 needs r * h_{t-1} of *all* units before its
candidate gate, so its timestep is two phases (r * h, then the rest), each
with its own barrier. :func:`plan_rnn` (the dynamic stage) picks per layer
the variant that is fastest on k cores by the cycle model and writes the
vf_dispatch_t program; nothing is recompiled for a new k (a variant with
more slices than cores folds onto them, slot = frame index mod k).

Weights: per row symmetric int8 (runtime/rnn_golden.quantize), x and h parts
of every gate with their own PARAM entry. A variant whose slice (weights,
PARAM, tables) fits the core's buffers keeps them *resident*: one preload
frame per slot at the start of each layer and direction, then timestep frames
that move only x_t, h_{t-1}, the state and the outputs. Otherwise the
variant *streams*: every frame loads its slice's weights in chunks through
the two halves of WBUF (load of chunk q+1 overlaps the products of chunk q).
Resident plans assume a slot stays on the same physical core for the whole
request (see ``RnnPlan.resident``); ``compile_rnn(resident=False)`` makes
every frame self-contained.

Numerics: inputs int8 (scale from calibration), h int8 for the products
(scale max|h| / 127 from calibration), Q.15 state; the last layer's outputs
are read from the Q.15 state history, so int8 rounding of h only affects the
products, not the reported Y / Y_h / Y_c.

Segment layout (every address a segment offset, 64-byte aligned):

    [ constants: tables, per layer and direction W, R, PARAM x / h
    | request data: x, per layer h0 (int8 and Q.15), c0
    | work: per layer Y int8 [T, B, D, H], Y_h / Y_c Q.15 [D, B, H],
      r*h scratch and saved accumulators (GRU), h history [T, B, D, H]
    | frames of every variant ]

Supported: LSTM and GRU (opsets 7-22), forward / reverse / bidirectional,
initial_h / initial_c, sequence_lens (a constant: frames are per timestep),
batch >= 1, layout 0 and 1, GRU linear_before_reset 0 and 1, stacked layers
joined by layout-only ops (Squeeze, Transpose, Reshape, ...), anything after
the last layer (Gemm / MatMul heads ...) on the host CPU through onnxruntime.
Not supported (RnnCompileError naming node and attribute): peepholes that are
not all zero, activations other than the defaults, activation_alpha/beta,
clip, input_forget, ops before the first layer.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vfpga import overlay
from vfpga.driver import isa

from . import rnn_golden as rg
from .compiler import core_counts

ALIGN = 64
L = isa.lib
CELLS = {"LSTM": "lstm", "GRU": "gru"}
_DEFAULT_ACTS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
FRAME_DTYPE = np.dtype([("variant", np.int16), ("phase", np.int32), ("slot", np.int16), ("offset", np.int64),
                        ("n_insns", np.int32), ("cycles", np.int64)])


class RnnCompileError(ValueError):
    """A model, node or size the RNN compiler cannot map onto the RNN cores."""


def _align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


# ----------------------------------------------------------------- encoding

def _flat_dtype(name: str) -> np.dtype:
    return isa._insn_dtype(name)


_FMT = {"mem": _flat_dtype("vf_insn_rnn_mem_t"), "matvec": _flat_dtype("vf_insn_rnn_matvec_t"),
        "gates": _flat_dtype("vf_insn_rnn_gates_t"), "marker": isa.FORMATS["marker"]}


class Emitter:
    """Collects instructions as field tuples and encodes them in bulk with
    the numpy dtypes derived from vfpga_isa.h (no field table here)."""

    def __init__(self):
        self.rows: dict[str, list] = {k: [] for k in _FMT}
        self.pos: dict[str, list] = {k: [] for k in _FMT}
        self.n = 0

    def _add(self, fmt, opcode, deps, flags, tag, fields):
        self.rows[fmt].append(((opcode, deps, flags, tag), *fields))
        self.pos[fmt].append(self.n)
        self.n += 1

    def marker(self, op, frame_id=0, layer=0):
        self._add("marker", op, 0, 0, layer, (frame_id, layer))

    def mem(self, op, buffer, dram, buf, row_bytes, rows=1, planes=1, row_stride=0, plane_stride=0, deps=0, tag=0):
        self._add("mem", op, deps, 0, tag, (dram, row_stride, plane_stride, buf, row_bytes, rows, planes, buffer,
                                            (0, 0, 0)))

    def matvec(self, wgt, stride, vec, acc, param, rows, cols, deps=0, tag=0):
        self._add("matvec", L.VF_RNN_OP_MATVEC, deps, L.VF_RNN_MV_INIT, tag, (wgt, stride, vec, acc, param, rows, cols))

    def gates(self, g: dict, deps=0, tag=0):
        self._add("gates", L.VF_RNN_OP_GATES, deps, 0, tag, (
            g["acc_x"], g["acc_h"], g["param_x"], g["param_h"], g["state_c"], g["state_h"], g["out_addr"], g["n"],
            g["gate_stride"], g["sig_addr"], g["tanh_addr"], g["out_mult"], g["out_shift"], g["out_zp"], g["cell"], 0))

    def encode(self) -> np.ndarray:
        out = np.zeros((self.n, isa.INSN_BYTES), np.uint8)
        for fmt, rows in self.rows.items():
            if rows:
                arr = np.array(rows, dtype=_FMT[fmt])
                out[np.array(self.pos[fmt])] = arr.view(np.uint8).reshape(-1, isa.INSN_BYTES)
        return out


# ----------------------------------------------------------------- front end

@dataclass
class RnnLayer:
    """One ONNX LSTM/GRU node as the compiler sees it (ONNX values)."""

    node: str
    op: str  # "LSTM" | "GRU"
    hidden: int
    input_size: int
    directions: int  # 1 or 2
    reverse: bool  # direction == "reverse"
    layout: int
    lbr: int
    w: np.ndarray  # [D, G*H, I]
    r: np.ndarray  # [D, G*H, H]
    b: np.ndarray  # [D, 2*G*H]
    seq_lens: np.ndarray | None  # [B] int or None
    h0_name: str | None  # runtime input name or None
    c0_name: str | None
    h0: np.ndarray | None  # constant initial state [D, B, H] or None
    c0: np.ndarray | None
    x_name: str
    outputs: list  # ONNX output names (Y, Y_h, Y_c), '' if unused
    # quantization, filled by calibration
    x_scale: float = 1 / 127
    h_scale: float = 1 / 127
    params: list = field(default_factory=list)  # rg.RnnParams per direction
    # placement, filled by compile_rnn
    seq_steps: int = 0
    seq_batch: int = 0
    addr: dict = field(default_factory=dict)
    history: bool = False  # the Q.15 h of every step is saved (Y read at full precision)

    @property
    def cell(self) -> str:
        return CELLS[self.op]

    @property
    def gates(self) -> int:
        return rg.LSTM_GATES if self.op == "LSTM" else rg.GRU_GATES

    def direction_reversed(self, d: int) -> bool:
        return d == 1 or self.reverse


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(model: onnx.ModelProto) -> dict:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            a = _attrs(n)
            if "value" in a:
                out[n.output[0]] = numpy_helper.to_array(a["value"])
    return out


def _shape_of(model: onnx.ModelProto, name: str):
    for vi in list(model.graph.input) + list(model.graph.value_info):
        if vi.name == name:
            dims = vi.type.tensor_type.shape.dim
            return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return None


def _check_node(node, consts, model, x_shape) -> RnnLayer:
    """Validates one LSTM/GRU node and returns its layer record."""
    op, name = node.op_type, node.name or node.output[0]
    a = _attrs(node)
    where = f"{op} node {name!r}"
    for bad in ("activation_alpha", "activation_beta", "clip"):
        if bad in a:
            raise RnnCompileError(f"{where}: attribute {bad!r} is not supported (the RNN core has no clip and "
                                  f"only the default activations)")
    if a.get("input_forget", 0):
        raise RnnCompileError(f"{where}: attribute 'input_forget'=1 (coupled input/forget gate) is not supported")
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise RnnCompileError(f"{where}: attribute 'direction'={direction!r} is not an ONNX direction")
    d = 2 if direction == "bidirectional" else 1
    acts = [x.decode().lower() if isinstance(x, bytes) else str(x).lower() for x in a.get("activations", [])]
    if acts and acts != _DEFAULT_ACTS[op] * d:
        raise RnnCompileError(f"{where}: attribute 'activations'={acts} is not supported; the RNN core runs "
                              f"only the defaults {_DEFAULT_ACTS[op] * d}")
    layout = int(a.get("layout", 0))
    if layout not in (0, 1):
        raise RnnCompileError(f"{where}: attribute 'layout'={layout} is not 0 or 1")
    g = 4 if op == "LSTM" else 3
    ins = list(node.input) + [""] * (8 - len(node.input))
    for idx, what in ((1, "W"), (2, "R"), (3, "B")):
        if ins[idx] and ins[idx] not in consts:
            raise RnnCompileError(f"{where}: input {what} ({ins[idx]!r}) must be a constant (weights are placed in "
                                  f"the segment at compile time)")
    w = consts[ins[1]].astype(np.float64)
    r = consts[ins[2]].astype(np.float64)
    if w.ndim != 3 or w.shape[0] != d or w.shape[1] % g:
        raise RnnCompileError(f"{where}: input W has shape {w.shape}, expected [{d}, {g}*hidden, input]")
    hidden = w.shape[1] // g
    if "hidden_size" in a and int(a["hidden_size"]) != hidden:
        raise RnnCompileError(f"{where}: attribute hidden_size={a['hidden_size']} but W has {g}*{hidden} rows")
    inp = w.shape[2]
    if r.shape != (d, g * hidden, hidden):
        raise RnnCompileError(f"{where}: input R has shape {r.shape}, expected {(d, g * hidden, hidden)}")
    bias = consts[ins[3]].astype(np.float64) if ins[3] else np.zeros((d, 2 * g * hidden))
    if bias.shape != (d, 2 * g * hidden):
        raise RnnCompileError(f"{where}: input B has shape {bias.shape}, expected {(d, 2 * g * hidden)}")
    if x_shape is None or len(x_shape) != 3 or any(v is None or v < 1 for v in x_shape):
        raise RnnCompileError(f"{where}: input X ({ins[0]!r}) needs a static 3-D shape, got {x_shape} "
                              f"(pass input_shape= to compile_rnn)")
    steps, batch = (x_shape[0], x_shape[1]) if layout == 0 else (x_shape[1], x_shape[0])
    if x_shape[2] != inp:
        raise RnnCompileError(f"{where}: input X has shape {tuple(x_shape)}: {x_shape[2]} features, but W expects "
                              f"{inp}")
    seq = None
    if ins[4]:
        if ins[4] not in consts:
            raise RnnCompileError(f"{where}: input sequence_lens ({ins[4]!r}) must be a constant: frames are "
                                  f"emitted per timestep")
        seq = consts[ins[4]].astype(np.int64).reshape(-1)
        if seq.shape != (batch,):
            raise RnnCompileError(f"{where}: input sequence_lens has {seq.size} entries for batch {batch}")
        if seq.min() < 1 or seq.max() > steps:
            raise RnnCompileError(f"{where}: input sequence_lens {seq.tolist()} outside [1, {steps}]")
        if (seq == steps).all():
            seq = None
    state_shape = (d, batch, hidden) if layout == 0 else (batch, d, hidden)
    states = []
    for idx, what in ((5, "initial_h"), (6, "initial_c")):
        if idx == 6 and op == "GRU" and ins[idx]:
            raise RnnCompileError(f"{where}: GRU has no input {idx}")
        nm = ins[idx] or None
        val = consts.get(nm) if nm else None
        if nm and val is None:
            shp = _shape_of(model, nm)
            if shp is not None and tuple(shp) != state_shape:
                raise RnnCompileError(f"{where}: input {what} has shape {shp}, expected {state_shape}")
        if val is not None and val.shape != state_shape:
            raise RnnCompileError(f"{where}: input {what} has shape {val.shape}, expected {state_shape}")
        states.append((nm if val is None else None, val))
    if op == "LSTM" and ins[7]:
        p = consts.get(ins[7])
        if p is None or np.any(p != 0):
            raise RnnCompileError(f"{where}: input P (peepholes) is not supported unless all zero")
    outs = list(node.output) + [""] * (3 - len(node.output))
    return RnnLayer(node=name, op=op, hidden=hidden, input_size=inp, directions=d, reverse=direction == "reverse",
                    layout=layout, lbr=int(a.get("linear_before_reset", 0)) if op == "GRU" else 0, w=w, r=r,
                    b=bias, seq_lens=seq, h0_name=states[0][0], c0_name=states[1][0], h0=states[0][1],
                    c0=states[1][1], x_name=ins[0], outputs=outs[:3])


# ---------------------------------------------------------------- compiled model

@dataclass
class Geometry:
    """The RNN core's buffers and arrays (board config "rnn_core")."""

    rows: int
    cols: int
    lanes: int
    wbuf: int
    vbuf: int
    acc: int
    param: int
    state: int
    act: int
    segments: int
    step_log2: int
    count: int

    @classmethod
    def of(cls, cfg: dict) -> Geometry:
        r = cfg.get("rnn_core")
        if not r or not r.get("count"):
            raise RnnCompileError(f"board {cfg.get('name')!r} has no RNN cores")
        return cls(r["rows"], r["cols"], r["lanes"], r["wbuf_bytes"], r["vbuf_bytes"], r["acc_words"],
                   r["param_entries"], r["state_words"], r["act_words"], r["act_segments"], r["act_step_log2"],
                   r["count"])


@dataclass
class Tiling:
    """How one frame of a v-slice variant uses the core: sub-slices of m
    units, batch groups of bg items, resident or streamed weights."""

    v: int
    cuts: list
    m: int
    bg: int
    resident: bool


@dataclass
class Phase:
    """One barrier-delimited group of frames (a layer-direction preload, or
    one timestep / GRU half-step): per variant, the frames' rows in
    ``CompiledRnn.frames``."""

    layer: int
    direction: int
    step: int  # -1: preload
    kind: str  # "preload" | "step" | "rh" (GRU first half) | "gru2"
    frames: dict = field(default_factory=dict)  # variant v -> array of frame row indices


@dataclass
class CompiledRnn:
    board: str
    config: dict
    model: onnx.ModelProto
    layers: list
    tilings: list  # per layer: {v: Tiling}
    phases: list
    frames: np.ndarray  # FRAME_DTYPE
    program: np.ndarray  # uint8 [n, 64]
    program_offset: int
    consts: bytes
    const_offset: int
    addr: dict  # named segment offsets
    steps: int
    batch: int
    input_name: str
    input_scale: float
    post: onnx.ModelProto | None  # host subgraph after the RNN chain
    post_inputs: list
    outputs: list
    segment_size: int
    variants: list

    def segment_image(self) -> dict[int, bytes]:
        """Bytes uploaded once at deploy: {segment offset: bytes}."""
        return {self.const_offset: self.consts, self.program_offset: self.program.tobytes()}

    @property
    def n_insns(self) -> int:
        return self.program.shape[0]


def _tiling(layer: RnnLayer, geo: Geometry, v: int, batch: int, resident_ok: bool) -> Tiling | None:
    hh, ii, g = layer.hidden, layer.input_size, layer.gates
    if v > hh:
        return None
    unit = geo.rows if hh >= geo.rows * v else 1
    cuts = sorted({min(hh, round(i * hh / (v * unit)) * unit) for i in range(v)} | {hh})
    if len(cuts) != v + 1 or cuts[0] != 0 or cuts[-1] != hh:
        return None
    n = max(b - a for a, b in zip(cuts[:-1], cuts[1:]))
    table = 2 * (geo.segments + 1)
    if table > geo.act:
        raise RnnCompileError(f"ACT holds {geo.act} words, two tables need {table}")

    def fits(m, bg, resident):
        param = 2 * g * (n if resident else m) * (1 if resident else 2)
        return (param <= geo.param and 4 * g * m * bg <= geo.acc and 4 * m * bg <= geo.state
                and 2 * bg * (ii + hh + m) <= geo.vbuf)

    if resident_ok and g * n * (ii + hh) <= geo.wbuf:
        for bg in range(batch, 0, -1):
            if fits(n, bg, True):
                return Tiling(v, cuts, n, bg, True)
    if max(ii, hh) > geo.wbuf // 2:
        raise RnnCompileError(f"{layer.op} node {layer.node!r}: a weight row of {max(ii, hh)} bytes does not fit "
                              f"half of WBUF ({geo.wbuf // 2})")
    for bg in range(batch, 0, -1):
        m = n
        while m > 0 and not fits(m, bg, False):
            m = m - geo.rows if m > geo.rows else m - 1
        if m > 0 and (m >= min(n, 4 * geo.rows) or bg == 1):
            return Tiling(v, cuts, m, bg, False)
    raise RnnCompileError(f"{layer.op} node {layer.node!r}: input {ii} + hidden {hh} does not fit the RNN core's "
                          f"vector buffer ({geo.vbuf} bytes) even one unit at a time")


# ------------------------------------------------------------------ frames

POP_PREV, POP_NEXT, PUSH_PREV, PUSH_NEXT = (isa.DEP[k] for k in ("POP_PREV", "POP_NEXT", "PUSH_PREV", "PUSH_NEXT"))


class _Group:
    """Loads, products/gates and saves that hand over one set of buffers."""

    def __init__(self):
        self.loads, self.computes, self.saves = [], [], []


def _emit_groups(em: Emitter, groups: list, tag: int):
    """Emits the groups of one frame with their dependency tokens:
    load group q waits for the first compute of group q-1 (so it never
    overwrites a WBUF half or buffer region still read two groups back),
    compute group q waits for its loads and for the saves of group q-1, saves
    wait for their computes. Leftover tokens end with the frame."""
    n = len(groups)
    for q, g in enumerate(groups):
        assert g.loads and g.computes, "every group loads and computes"
        for units in (g.loads, g.computes, g.saves):
            for item in units:
                item[2].setdefault("deps", 0)
        g.loads[-1][2]["deps"] |= PUSH_NEXT
        if q >= 2:
            g.loads[0][2]["deps"] |= POP_NEXT
        g.computes[0][2]["deps"] |= POP_PREV
        if q >= 1:
            g.computes[0][2]["deps"] |= PUSH_PREV
            if groups[q - 1].saves:
                g.computes[0][2]["deps"] |= POP_NEXT
        if g.saves:
            g.computes[-1][2]["deps"] |= PUSH_NEXT
            g.saves[0][2]["deps"] |= POP_PREV
            if q + 1 < n:
                g.saves[-1][2]["deps"] |= PUSH_PREV
        for units in (g.loads, g.computes, g.saves):
            for method, args, kw in units:
                getattr(em, method)(*args, tag=tag, **kw)


def _load(buffer, dram, buf, row_bytes, **kw):
    return ("mem", (L.VF_RNN_OP_LOAD, buffer, dram, buf, row_bytes), kw)


def _save(buffer, dram, buf, row_bytes, **kw):
    return ("mem", (L.VF_RNN_OP_SAVE, buffer, dram, buf, row_bytes), kw)


@dataclass
class _Ctx:
    """Everything a frame of one layer-direction needs."""

    li: int
    lay: RnnLayer
    d: int
    p: rg.RnnParams
    geo: Geometry
    a: dict  # segment addresses of this layer
    x_addr: int  # the layer's input [T, B, I] int8
    batch: int
    history: bool


def _pieces(ctx: _Ctx, kind: str):
    """(matrix, first gate, gates, cols, vector, ACC part) products of a frame kind."""
    g, ii, hh = ctx.lay.gates, ctx.lay.input_size, ctx.lay.hidden
    if kind == "gru2":
        return [("R", 2, 1, hh, "hin", "h")]
    return [("W", 0, g, ii, "x", "x"), ("R", 0, 2 if kind == "rh" else g, hh, "hin", "h")]


def _preload_frame(em: Emitter, ctx: _Ctx, s: int, e: int, fid: int):
    """Resident variant: tables, PARAM and the slice's weights, once per
    layer-direction and slot."""
    g, ii, hh, geo, a, d = ctx.lay.gates, ctx.lay.input_size, ctx.lay.hidden, ctx.geo, ctx.a, ctx.d
    ns = e - s
    em.marker(L.VF_OP_FRAME, fid, ctx.li)
    t = ctx.li
    em.mem(L.VF_RNN_OP_LOAD, L.VF_RNN_BUF_ACT, a["tab"], 0, 8 * (geo.segments + 1), tag=t)
    em.mem(L.VF_RNN_OP_LOAD, L.VF_RNN_BUF_PARAM, a["px"][d] + 12 * s, 0, 12 * ns, planes=g, plane_stride=12 * hh,
           tag=t)
    em.mem(L.VF_RNN_OP_LOAD, L.VF_RNN_BUF_PARAM, a["ph"][d] + 12 * s, 3 * g * ns, 12 * ns, planes=g,
           plane_stride=12 * hh, tag=t)
    em.mem(L.VF_RNN_OP_LOAD, L.VF_RNN_BUF_WGT, a["w"][d] + s * ii, 0, ii, rows=ns, planes=g, row_stride=ii,
           plane_stride=hh * ii, tag=t)
    em.mem(L.VF_RNN_OP_LOAD, L.VF_RNN_BUF_WGT, a["r"][d] + s * hh, g * ns * ii, hh, rows=ns, planes=g, row_stride=hh,
           plane_stride=hh * hh, tag=t)


def _chunks(pieces, mm, half):
    """Streams the pieces' rows (gate-major) through WBUF halves: a list of
    chunks, each a list of (piece, gate, gates, u0, u1, wbuf offset)."""
    chunks, free, at = [[]], half, 0
    for pc in pieces:
        _, g0, gn, cols, _, _ = pc
        if gn * mm * cols <= free:
            chunks[-1].append((pc, g0, gn, 0, mm, at))
            free -= gn * mm * cols
            at += gn * mm * cols
            continue
        for gate in range(g0, g0 + gn):
            u = 0
            while u < mm:
                fit = free // cols
                if fit == 0:
                    chunks.append([])
                    free, at = half, 0
                    continue
                take = min(mm - u, fit)
                chunks[-1].append((pc, gate, 1, u, u + take, at))
                free -= take * cols
                at += take * cols
                u += take
    return [c for c in chunks if c]


def _step_frame(em: Emitter, ctx: _Ctx, tl: Tiling, kind: str, s: int, e: int, items: list, fid: int):
    """One timestep (or GRU half-step) of hidden units [s, e) for the active
    batch items [(b, t, t_prev or None)]."""
    lay, geo, a, d, p = ctx.lay, ctx.geo, ctx.a, ctx.d, ctx.p
    g, ii, hh, nb, nd = lay.gates, lay.input_size, lay.hidden, ctx.batch, lay.directions
    lstm = lay.op == "LSTM"
    em.marker(L.VF_OP_FRAME, fid, ctx.li)
    m = tl.m
    vstride = ii + hh + m
    half = geo.wbuf // 2
    cell = {"step": L.VF_RNN_CELL_LSTM if lstm else L.VF_RNN_CELL_GRU_LBR if lay.lbr else L.VF_RNN_CELL_GRU,
            "rh": L.VF_RNN_CELL_GRU_RH, "gru2": L.VF_RNN_CELL_GRU}[kind]
    if kind == "rh":
        omult, oshift, ozp = p.rh_mult, p.rh_shift, p.rh_zp
    else:
        omult, oshift, ozp = p.out_mult, p.out_shift, p.out_zp
    pieces = _pieces(ctx, kind)
    groups: list[_Group] = []
    stage = 0
    for u0 in range(s, e, m if not tl.resident else e - s):
        mm = min(m, e - u0) if not tl.resident else e - s
        for j0 in range(0, len(items), tl.bg):
            grp_items = items[j0:j0 + tl.bg]
            r = stage % 2
            stage += 1
            first = _Group()
            if not groups and not tl.resident:
                first.loads.append(_load(L.VF_RNN_BUF_ACT, a["tab"], 0, 8 * (geo.segments + 1)))
            if tl.resident:
                px, ph = 0, g * mm
            else:
                px = r * 2 * g * m
                ph = px + g * mm
                first.loads.append(_load(L.VF_RNN_BUF_PARAM, a["px"][d] + 12 * u0, 3 * px, 12 * mm, planes=g,
                                         plane_stride=12 * hh))
                first.loads.append(_load(L.VF_RNN_BUF_PARAM, a["ph"][d] + 12 * u0, 3 * ph, 12 * mm, planes=g,
                                         plane_stride=12 * hh))
            slots = []
            for j, (b, t, tp) in enumerate(grp_items):
                acc = r * 2 * g * m * tl.bg + j * 2 * g * mm
                st = r * 2 * m * tl.bg + j * 2 * mm
                vb = r * tl.bg * vstride + j * vstride
                sv = {"acc_x": acc, "acc_h": acc + g * mm, "c": st, "h": st + mm, "x": vb, "hin": vb + ii,
                      "out": vb + ii + hh}
                slots.append(sv)
                db = d * nb + b
                if kind != "gru2":
                    first.loads.append(_load(L.VF_RNN_BUF_VEC, ctx.x_addr + (t * nb + b) * ii, sv["x"], ii))
                    hsrc = (a["h0q"] + db * hh if tp is None else a["y"] + ((tp * nb + b) * nd + d) * hh)
                else:
                    hsrc = a["rh"] + db * hh
                    first.loads.append(_load(L.VF_RNN_BUF_ACC, a["accs"] + 4 * (db * 5 * hh + 5 * u0), acc, 20 * mm))
                first.loads.append(_load(L.VF_RNN_BUF_VEC, hsrc, sv["hin"], hh))
                first.loads.append(_load(L.VF_RNN_BUF_STATE, a["hs"] + 4 * (db * hh + u0), sv["h"], 4 * mm))
                if lstm:
                    first.loads.append(_load(L.VF_RNN_BUF_STATE, a["c"] + 4 * (db * hh + u0), sv["c"], 4 * mm))
            # products
            if tl.resident:
                ns = e - s
                chunk_list = [[(pc, pc[1], pc[2], 0, mm, (0 if pc[0] == "W" else g * ns * ii) + pc[1] * ns * pc[3])
                               for pc in pieces]]
            else:
                chunk_list = _chunks(pieces, mm, half)
            for ci, chunk in enumerate(chunk_list):
                grp = first if ci == 0 else _Group()
                wbase = 0 if tl.resident else (len(groups) % 2) * half
                if not tl.resident:
                    for (mat, _, _, cols, _, _), gate, gn, ua, ub, at in chunk:
                        src = a["w" if mat == "W" else "r"][d] + (gate * hh + u0 + ua) * cols
                        grp.loads.append(_load(L.VF_RNN_BUF_WGT, src, wbase + at, cols, rows=ub - ua, planes=gn,
                                               row_stride=cols, plane_stride=hh * cols))
                for (_, _, _, cols, vec, part), gate, gn, ua, ub, at in chunk:
                    for sv in slots:
                        accb = sv["acc_x"] if part == "x" else sv["acc_h"]
                        parb = px if part == "x" else ph
                        rows = gn * (ub - ua) if gn > 1 else ub - ua
                        grp.computes.append(("matvec", (wbase + at, cols, sv[vec], accb + gate * mm + ua,
                                                        parb + gate * mm + ua, rows, cols), {}))
                groups.append(grp)
            last = groups[-1]
            for (b, t, _), sv in zip(grp_items, slots):
                db = d * nb + b
                last.computes.append(("gates", ({
                    "acc_x": sv["acc_x"], "acc_h": sv["acc_h"], "param_x": px, "param_h": ph, "state_c": sv["c"],
                    "state_h": sv["h"], "out_addr": sv["out"], "n": mm, "gate_stride": mm, "sig_addr": 0,
                    "tanh_addr": geo.segments + 1, "out_mult": omult, "out_shift": oshift, "out_zp": ozp,
                    "cell": cell},), {}))
                if kind == "rh":
                    last.saves.append(_save(L.VF_RNN_BUF_VEC, a["rh"] + db * hh + u0, sv["out"], mm))
                    last.saves.append(_save(L.VF_RNN_BUF_ACC, a["accs"] + 4 * (db * 5 * hh + 5 * u0), sv["acc_x"],
                                            20 * mm))
                    continue
                yi = (t * nb + b) * nd + d
                last.saves.append(_save(L.VF_RNN_BUF_VEC, a["y"] + yi * hh + u0, sv["out"], mm))
                last.saves.append(_save(L.VF_RNN_BUF_STATE, a["hs"] + 4 * (db * hh + u0), sv["h"], 4 * mm))
                if lstm:
                    last.saves.append(_save(L.VF_RNN_BUF_STATE, a["c"] + 4 * (db * hh + u0), sv["c"], 4 * mm))
                if ctx.history:
                    last.saves.append(_save(L.VF_RNN_BUF_STATE, a["hh"] + 4 * (yi * hh + u0), sv["h"], 4 * mm))
    _emit_groups(em, groups, ctx.li)


# ------------------------------------------------------------------ graph

def _producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output if o}


def _glue_nodes(model, prod, src: str, dst: str, node_name: str) -> list:
    """Nodes between ``src`` (a layer's Y) and ``dst`` (the next layer's X)."""
    out, todo, seen = [], [dst], set()
    consts = {t.name for t in model.graph.initializer}
    while todo:
        name = todo.pop()
        if name == src or name in seen or name in consts or not name:
            continue
        seen.add(name)
        n = prod.get(name)
        if n is None:
            raise RnnCompileError(f"node {node_name!r}: its input X depends on {name!r}, which is not the previous "
                                  f"RNN layer's output Y")
        if n.op_type in CELLS:
            raise RnnCompileError(f"node {node_name!r}: its input X comes from output {name!r} of {n.op_type} "
                                  f"{n.name!r}; stacked layers must be joined through Y")
        out.append(n)
        todo.extend(n.input)
    return out[::-1]


def _dev_to_onnx_y(y, layout):
    """[T, B, D, H] -> ONNX Y ([T, D, B, H], or [B, T, D, H] for layout 1)."""
    return y.transpose(0, 2, 1, 3) if layout == 0 else y.transpose(1, 0, 2, 3)


def _check_glue(model, glue, prev: RnnLayer, nxt: RnnLayer, steps, batch):
    """The ops joining two layers must only re-lay Y [T, B, D, H] as the next
    X [T, B, D*H]; checked by running them on an index tensor."""
    import onnxruntime as ort

    y_name = prev.outputs[0]
    if not glue:
        if nxt.x_name != y_name:
            raise RnnCompileError(f"node {nxt.node!r}: input X is not the output of {prev.node!r}")
        raise RnnCompileError(f"node {nxt.node!r}: reads the 4-D Y of {prev.node!r} directly; expected a "
                              f"Squeeze/Transpose/Reshape to 3-D")
    idx = np.arange(steps * batch * prev.directions * prev.hidden, dtype=np.float32)
    idx = idx.reshape(steps, batch, prev.directions, prev.hidden)
    y = np.ascontiguousarray(_dev_to_onnx_y(idx, prev.layout))
    inits = [t for t in model.graph.initializer if any(t.name in n.input for n in glue)]
    g = helper.make_graph(glue, "glue", [helper.make_tensor_value_info(y_name, onnx.TensorProto.FLOAT, y.shape)],
                          [helper.make_tensor_value_info(nxt.x_name, onnx.TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        (x,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {y_name: y})
    except Exception as e:  # noqa: BLE001 - any failure means the glue is not a layout op we understand
        raise RnnCompileError(f"ops between {prev.node!r} and {nxt.node!r} "
                              f"({', '.join(n.op_type for n in glue)}) failed on Y's shape: {e}") from e
    want = idx.reshape(steps, batch, -1)
    got = x if nxt.layout == 0 else (x.transpose(1, 0, 2) if x.ndim == 3 else x)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise RnnCompileError(f"ops between {prev.node!r} and {nxt.node!r} ({', '.join(n.op_type for n in glue)}) "
                              f"do not map Y to X as [T, B, directions*hidden]; only layout changes can join layers")


def _post_model(model, rnn_nodes, keep_outputs):
    """The host subgraph computing the graph outputs from the RNN layers'
    outputs (heads), or None when the graph outputs are RNN outputs."""
    rnn_out = {o for n in rnn_nodes for o in n.output if o}
    prod = _producers(model)
    outs = [o.name for o in model.graph.output]
    need_nodes, inputs, todo, seen = [], [], [o for o in outs if o not in rnn_out], set()
    consts = {t.name for t in model.graph.initializer}
    while todo:
        name = todo.pop()
        if name in seen or not name or name in consts:
            continue
        seen.add(name)
        if name in rnn_out:
            inputs.append(name)
            continue
        n = prod.get(name)
        if n is None:
            raise RnnCompileError(f"graph output depends on {name!r}, which is neither an RNN output nor computed "
                                  f"from one (ops before the first RNN layer are not supported)")
        if n in need_nodes:
            continue
        need_nodes.append(n)
        todo.extend(n.input)
    if not need_nodes:
        return None, []
    order = [n for n in model.graph.node if n in need_nodes]
    vi = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    ins = [vi.get(i) or helper.make_tensor_value_info(i, onnx.TensorProto.FLOAT, None) for i in inputs]
    used = {i for n in order for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    g = helper.make_graph(order, "post", ins, [o for o in model.graph.output if o.name not in rnn_out], inits)
    return helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version), inputs


# -------------------------------------------------------------- calibration

def layout0_equivalent(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every layout=1 LSTM/GRU rewritten as layout 0 between
    Transposes. onnxruntime (1.2x) refuses batchwise recurrent ops, so this
    is what calibration and tests run on the host as the float reference."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = []
    for n in m.graph.node:
        a = _attrs(n)
        if n.op_type not in CELLS or int(a.get("layout", 0)) != 1:
            nodes.append(n)
            continue
        pre = f"{n.name or n.output[0]}__l0"
        ins = list(n.input)
        for idx, perm in ((0, [1, 0, 2]), (5, [1, 0, 2]), (6, [1, 0, 2])):
            if idx < len(ins) and ins[idx]:
                nodes.append(helper.make_node("Transpose", [ins[idx]], [f"{pre}_in{idx}"], perm=perm))
                ins[idx] = f"{pre}_in{idx}"
        outs = list(n.output)
        new_outs = [f"{pre}_out{i}" if o else "" for i, o in enumerate(outs)]
        attrs = {k: v for k, v in a.items() if k != "layout"}
        nodes.append(helper.make_node(n.op_type, ins, new_outs, name=n.name, **attrs))
        for i, o in enumerate(outs):
            if o:
                nodes.append(helper.make_node("Transpose", [new_outs[i]], [o],
                                              perm=[2, 0, 1, 3] if i == 0 else [1, 0, 2]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def _calibrate(model, layers, feeds_list):
    """x scale of the model input and h scale of every layer from float
    onnxruntime runs (max |value| / 127)."""
    import onnxruntime as ort

    m = layout0_equivalent(model)
    have = {o.name for o in m.graph.output}
    for lay in layers:
        for o in lay.outputs[:2]:
            if o and o not in have:
                m.graph.output.append(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    hmax = [0.0] * len(layers)
    xmax = 0.0
    for feeds in feeds_list:
        res = dict(zip(names, sess.run(None, feeds)))
        xmax = max(xmax, float(np.abs(feeds[layers[0].x_name]).max()))
        for i, lay in enumerate(layers):
            for o in lay.outputs[:2]:
                if o:
                    hmax[i] = max(hmax[i], float(np.abs(res[o]).max()))
            for nm in (lay.h0_name,):
                if nm and nm in feeds:
                    hmax[i] = max(hmax[i], float(np.abs(feeds[nm]).max()))
            if lay.h0 is not None:
                hmax[i] = max(hmax[i], float(np.abs(lay.h0).max()))
    x_scale = (xmax or 1.0) / 127
    return x_scale, [(h or 1.0) / 127 for h in hmax]


def random_feeds(model, shapes: dict, seed: int = 0) -> dict:
    """U(-1, 1) values for every runtime float input (calibration default)."""
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-1, 1, s).astype(np.float32) for n, s in shapes.items()}


# -------------------------------------------------------------------- compile

def _load_model(model) -> onnx.ModelProto:
    m = onnx.load(model) if isinstance(model, str) else model
    try:
        return onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - shape inference is best effort
        return m


def compile_rnn(model, board: str | dict = "u200", calibration=None, input_shape=None, resident: bool = True,
                variants=None) -> CompiledRnn:
    """Static stage: ``model`` (path or ModelProto) with LSTM/GRU nodes ->
    CompiledRnn for ``board``. ``calibration``: list of feed dicts for the
    float model (default: 4 runs of U(-1, 1) inputs, with a warning);
    ``input_shape``: the data input's shape when the model leaves it dynamic;
    ``variants``: slice counts to prepare (default core_counts(RNN cores))."""
    model = _load_model(model)
    cfg = overlay.load(board) if isinstance(board, str) else board
    geo = Geometry.of(cfg)
    consts = _constants(model)
    nodes = [n for n in model.graph.node if n.op_type in CELLS]
    if not nodes:
        raise RnnCompileError("the model has no LSTM or GRU node")
    for n in model.graph.node:
        if n.op_type in ("RNN",):
            raise RnnCompileError(f"node {n.name!r}: op RNN (the simple Elman cell) is not supported; LSTM and GRU are")
    x_name = nodes[0].input[0]
    init_names = {t.name for t in model.graph.initializer}
    runtime_inputs = [i for i in model.graph.input if i.name not in init_names]
    if x_name not in {i.name for i in runtime_inputs}:
        raise RnnCompileError(f"node {nodes[0].name!r}: input X ({x_name!r}) must be a graph input; ops before the "
                              f"first RNN layer are not supported")
    x_shape = tuple(input_shape) if input_shape is not None else _shape_of(model, x_name)
    layers = []
    prod = _producers(model)
    for i, n in enumerate(nodes):
        if i == 0:
            shape = x_shape
        else:
            prev = layers[-1]
            steps_, batch_ = layers[0].seq_steps, layers[0].seq_batch
            shape = (steps_, batch_, prev.directions * prev.hidden)
            if n.op_type and _attrs(n).get("layout", 0) == 1:
                shape = (batch_, steps_, prev.directions * prev.hidden)
        lay = _check_node(n, consts, model, shape)
        lay.seq_steps, lay.seq_batch = ((shape[0], shape[1]) if lay.layout == 0 else (shape[1], shape[0]))
        if i:
            prev = layers[-1]
            if (lay.seq_steps, lay.seq_batch) != (prev.seq_steps, prev.seq_batch):
                raise RnnCompileError(f"node {lay.node!r}: sequence {lay.seq_steps} x batch {lay.seq_batch} differs "
                                      f"from the previous layer's")
            if lay.seq_lens is not None or prev.seq_lens is not None:
                a_ = lay.seq_lens if lay.seq_lens is not None else np.full(lay.seq_batch, lay.seq_steps)
                b_ = prev.seq_lens if prev.seq_lens is not None else np.full(prev.seq_batch, prev.seq_steps)
                if not np.array_equal(a_, b_):
                    raise RnnCompileError(f"node {lay.node!r}: sequence_lens differ from the previous layer's")
            glue = _glue_nodes(model, prod, prev.outputs[0], lay.x_name, lay.node)
            _check_glue(model, glue, prev, lay, lay.seq_steps, lay.seq_batch)
        layers.append(lay)
    steps, batch = layers[0].seq_steps, layers[0].seq_batch
    shapes = {}
    for i in runtime_inputs:
        shp = x_shape if i.name == x_name else _shape_of(model, i.name)
        if shp is None or any(v is None for v in shp):
            raise RnnCompileError(f"graph input {i.name!r} needs a static shape")
        shapes[i.name] = shp
    if calibration is None:
        warnings.warn("compile_rnn: no calibration data; scales come from U(-1, 1) inputs", UserWarning,
                      stacklevel=2)
        calibration = [random_feeds(model, shapes, seed) for seed in range(4)]
    x_scale, h_scales = _calibrate(model, layers, calibration)
    for i, lay in enumerate(layers):
        lay.x_scale = x_scale if i == 0 else layers[i - 1].h_scale
        lay.h_scale = h_scales[i]
        g, hh = lay.gates, lay.hidden
        lay.params = []
        for d in range(lay.directions):
            p = rg.quantize(lay.cell, lay.w[d], lay.r[d], lay.b[d, :g * hh], lay.b[d, g * hh:], x_scale=lay.x_scale,
                            h_scale=lay.h_scale, linear_before_reset=lay.lbr, step_log2=geo.step_log2)
            p.sig = rg.act_table("sigmoid", geo.segments, geo.step_log2)
            p.tanh = rg.act_table("tanh", geo.segments, geo.step_log2)
            lay.params.append(p)

    post, post_inputs = _post_model(model, nodes, None)
    needed = set(post_inputs) | {o.name for o in model.graph.output}
    # ------------------------------------------------------------ segment layout
    top = 0

    def alloc(nbytes):
        nonlocal top
        at = top
        top = _align(top + max(nbytes, 1))
        return at

    consts_img: list[tuple[int, bytes]] = []

    def put(data: bytes):
        at = alloc(len(data))
        consts_img.append((at, data))
        return at

    tables = np.concatenate([rg.act_table("sigmoid", geo.segments, geo.step_log2),
                             rg.act_table("tanh", geo.segments, geo.step_log2)]).astype("<i4")
    addr: dict = {"tab": put(tables.tobytes())}
    for lay in layers:
        a = lay.addr = {"tab": addr["tab"], "w": [], "r": [], "px": [], "ph": []}
        for p in lay.params:
            a["w"].append(put(p.w.tobytes()))
            a["r"].append(put(p.r.tobytes()))
            a["px"].append(put(np.stack([p.bias_x, p.mult_x, p.shift_x], 1).astype("<i4").tobytes()))
            a["ph"].append(put(np.stack([p.bias_h, p.mult_h, p.shift_h], 1).astype("<i4").tobytes()))
    const_end = top
    addr["x"] = alloc(steps * batch * layers[0].input_size)
    for i, lay in enumerate(layers):
        a, dbh = lay.addr, lay.directions * batch * lay.hidden
        a["h0q"], a["hs"] = alloc(dbh), alloc(4 * dbh)
        a["c"] = alloc(4 * dbh) if lay.op == "LSTM" else a["hs"]
        a["y"] = alloc(steps * dbh)
        if lay.op == "GRU" and not lay.lbr:
            a["rh"], a["accs"] = alloc(dbh), alloc(4 * 5 * dbh)
        else:
            a["rh"] = a["accs"] = a["y"]
        lay.history = i == len(layers) - 1 or lay.outputs[0] in needed
        a["hh"] = alloc(4 * steps * dbh) if lay.history else a["y"]
    work_end = top
    # ------------------------------------------------------------ frames
    ks = sorted(set(variants)) if variants else core_counts(geo.count)
    tilings = [{v: t for v in ks if (t := _tiling(lay, geo, v, batch, resident)) is not None} for lay in layers]
    usable = [v for v in ks if all(v in t for t in tilings)]
    if not usable:
        raise RnnCompileError("no slice count fits every layer")
    em = Emitter()
    frames, phases = [], []
    fid = 0
    lens_all = layers[0].seq_lens if layers[0].seq_lens is not None else np.full(batch, steps)
    for li, lay in enumerate(layers):
        x_addr = addr["x"] if li == 0 else layers[li - 1].addr["y"]
        kinds = ["rh", "gru2"] if lay.op == "GRU" and not lay.lbr else ["step"]
        for d in range(lay.directions):
            ctx = _Ctx(li, lay, d, lay.params[d], geo, lay.addr, x_addr, batch, lay.history)
            rev = lay.direction_reversed(d)
            plan_steps = [(-1, "preload")] + [(st, k) for st in range(int(lens_all.max())) for k in kinds]
            for st, kind in plan_steps:
                ph = Phase(li, d, st, kind)
                if st >= 0:
                    items = []
                    for b in range(batch):
                        lb = int(lens_all[b])
                        if st < lb:
                            t = lb - 1 - st if rev else st
                            tp = None if st == 0 else (t + 1 if rev else t - 1)
                            items.append((b, t, tp))
                for v in usable:
                    tl = tilings[li][v]
                    if st < 0 and not tl.resident:
                        continue
                    rows = []
                    for si, (s, e) in enumerate(zip(tl.cuts[:-1], tl.cuts[1:])):
                        start = em.n
                        if st < 0:
                            _preload_frame(em, ctx, s, e, fid)
                        else:
                            _step_frame(em, ctx, tl, kind, s, e, items, fid)
                        fid += 1
                        rows.append(len(frames))
                        frames.append((v, len(phases), si, start, em.n - start, 0))
                    ph.frames[v] = np.array(rows, np.int64)
                if ph.frames:
                    phases.append(ph)
    program = em.encode()
    program_offset = _align(work_end)
    fr = np.array(frames, dtype=FRAME_DTYPE)
    fr["offset"] = program_offset + fr["offset"] * isa.INSN_BYTES
    seg_size = _align(program_offset + program.nbytes)
    bank = int(cfg["ddr"]["bank_bytes"])
    if seg_size > bank:
        raise RnnCompileError(f"segment of {seg_size} bytes exceeds a DDR bank ({bank})")
    consts_bytes = bytearray(const_end)
    for at, data in consts_img:
        consts_bytes[at:at + len(data)] = data
    from . import rnn_cycle_model

    fr["cycles"] = rnn_cycle_model.frames_cycles(program, fr["offset"] - program_offset, fr["n_insns"], cfg)
    out_names = [o.name for o in model.graph.output]
    return CompiledRnn(board=cfg.get("name", str(board)), config=cfg, model=model, layers=layers, tilings=tilings,
                       phases=phases, frames=fr, program=program, program_offset=program_offset,
                       consts=bytes(consts_bytes), const_offset=0, addr=addr, steps=steps, batch=batch,
                       input_name=x_name, input_scale=layers[0].x_scale, post=post, post_inputs=post_inputs,
                       outputs=out_names, segment_size=seg_size, variants=usable)


# ------------------------------------------------------------ dynamic stage

FRAME_OP, BARRIER_OP, END_OP = (isa.DISPATCH_OPS[k] for k in ("FRAME", "BARRIER", "END"))


@dataclass
class RnnPlan:
    """A dispatch program of a CompiledRnn on k RNN cores.

    ``resident``: some layer keeps weights in its cores between frames, so a
    slot must stay on one physical core from the layer's preload frame to its
    last timestep (re-mapping mid-request needs the preload replayed)."""

    k: int
    program: np.ndarray  # isa.DISPATCH
    variants: list  # chosen slice count per (layer, direction), in phase order
    modeled_cycles: int  # sum over phases of the busiest slot (frame estimates, no bank sharing)
    resident: bool


def _makespan(cycles: np.ndarray, k: int) -> int:
    if len(cycles) <= k:
        return int(cycles.max()) if len(cycles) else 0
    load = np.zeros(k, np.int64)
    np.add.at(load, np.arange(len(cycles)) % k, cycles)
    return int(load.max())


def plan_rnn(compiled: CompiledRnn, k: int, variant: int | None = None) -> RnnPlan:
    """The level-1 dispatch program on k cores: per layer-direction the
    variant with the smallest modeled time (sum over its phases of the
    busiest slot, frame i of a phase on slot i mod k), frames then a BARRIER
    per phase, END last. ``variant`` forces a slice count (must exist)."""
    if k < 1 or k > 255:
        raise ValueError(f"a tenant holds 1..255 RNN cores, not {k}")
    if variant is not None and variant not in compiled.variants:
        raise ValueError(f"variant {variant} not compiled; have {compiled.variants}")
    fr = compiled.frames
    groups: dict = {}
    for ph in compiled.phases:
        groups.setdefault((ph.layer, ph.direction), []).append(ph)
    entries, chosen, total, resident = [], [], 0, False
    for key, phs in groups.items():
        cands = [variant] if variant is not None else compiled.variants
        # a resident variant keeps one slice's weights per core: never fold it
        cands = [v for v in cands if v <= k or not compiled.tilings[key[0]][v].resident]
        if not cands:
            raise ValueError(f"variant {variant} keeps its weights resident in {variant} cores; it cannot fold onto "
                             f"{k}")
        best = None
        for v in cands:
            cost = sum(_makespan(fr["cycles"][ph.frames[v]], k) for ph in phs if v in ph.frames)
            if best is None or cost < best[0]:
                best = (cost, v)
        cost, v = best
        chosen.append(v)
        total += cost
        resident |= compiled.tilings[key[0]][v].resident
        for ph in phs:
            rows = ph.frames.get(v)
            if rows is None:
                continue
            for i, r in enumerate(rows.tolist()):
                entries.append((int(fr["offset"][r]), int(fr["n_insns"][r]), i % k, FRAME_OP))
            entries.append((0, 0, 0, BARRIER_OP))
    entries.append((0, 0, 0, END_OP))
    prog = np.zeros(len(entries), isa.DISPATCH)
    arr = np.array(entries, dtype=np.int64)
    if (arr[:, 1] > np.iinfo(np.uint16).max).any():
        raise RnnCompileError("a frame has more than 65535 instructions")
    prog["frame_offset"], prog["n_insns"], prog["slot"], prog["op"] = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
    return RnnPlan(k, prog, chosen, total, resident)


# ------------------------------------------------------------ host side

def _to_dev_states(val, lay: RnnLayer, batch):
    """ONNX initial state ([D, B, H], layout 1: [B, D, H]) -> [D, B, H] float."""
    if val is None:
        return np.zeros((lay.directions, batch, lay.hidden))
    v = np.asarray(val, dtype=np.float64)
    return v if lay.layout == 0 else v.transpose(1, 0, 2)


def request_image(compiled: CompiledRnn, feeds: dict) -> dict[int, bytes]:
    """The per-request bytes: quantized input, initial states (Q.15 and int8)."""
    lay0 = compiled.layers[0]
    if compiled.input_name not in feeds:
        raise RnnCompileError(f"missing input {compiled.input_name!r}")
    x = np.asarray(feeds[compiled.input_name], dtype=np.float64)
    want = ((compiled.steps, compiled.batch, lay0.input_size) if lay0.layout == 0
            else (compiled.batch, compiled.steps, lay0.input_size))
    if x.shape != want:
        raise RnnCompileError(f"input {compiled.input_name!r} has shape {x.shape}, the model was compiled for {want}")
    if lay0.layout == 1:
        x = x.transpose(1, 0, 2)
    img = {compiled.addr["x"]: rg.quantize_input(x, lay0.x_scale).tobytes()}
    for lay in compiled.layers:
        a = lay.addr
        h0 = feeds.get(lay.h0_name) if lay.h0_name else lay.h0
        c0 = feeds.get(lay.c0_name) if lay.c0_name else lay.c0
        h = _to_dev_states(h0, lay, compiled.batch)
        hq = np.clip(np.round(h * rg.ONE), rg.INT32_MIN, rg.INT32_MAX).astype("<i4")
        img[a["hs"]] = hq.tobytes()
        img[a["h0q"]] = np.stack([lay.params[d].h_to_q8(hq[d]) for d in range(lay.directions)]).tobytes()
        if lay.op == "LSTM":
            c = _to_dev_states(c0, lay, compiled.batch)
            img[a["c"]] = np.clip(np.round(c * rg.ONE), rg.INT32_MIN, rg.INT32_MAX).astype("<i4").tobytes()
    return img


def read_outputs(compiled: CompiledRnn, seg: np.ndarray) -> list[np.ndarray]:
    """The graph outputs from a segment after the request: RNN outputs
    dequantized (Y masked past sequence_lens), heads run on onnxruntime."""
    steps, batch = compiled.steps, compiled.batch
    mem = np.asarray(seg).view(np.int8)
    values = {}
    for lay in compiled.layers:
        a, nd, hh = lay.addr, lay.directions, lay.hidden
        n = steps * batch * nd * hh
        if lay.history:
            y = mem[a["hh"]:a["hh"] + 4 * n].view("<i4").astype(np.float64) / rg.ONE
        else:
            y = mem[a["y"]:a["y"] + n].astype(np.float64) * lay.h_scale
        y = y.reshape(steps, batch, nd, hh)
        if lay.seq_lens is not None:
            t = np.arange(steps)[:, None]
            y = np.where((t < lay.seq_lens[None, :])[:, :, None, None], y, 0.0)
        values[lay.outputs[0]] = _dev_to_onnx_y(y, lay.layout)
        for name, key in ((lay.outputs[1], "hs"), (lay.outputs[2] if lay.op == "LSTM" else "", "c")):
            if name:
                s = mem[a[key]:a[key] + 4 * nd * batch * hh].view("<i4").astype(np.float64) / rg.ONE
                s = s.reshape(nd, batch, hh)
                values[name] = s if lay.layout == 0 else s.transpose(1, 0, 2)
    values = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in values.items() if k}
    if compiled.post is not None:
        import onnxruntime as ort

        sess = getattr(compiled, "_post_session", None)
        if sess is None:
            sess = ort.InferenceSession(compiled.post.SerializeToString(), providers=["CPUExecutionProvider"])
            compiled._post_session = sess
        names = [o.name for o in sess.get_outputs()]
        values.update(zip(names, sess.run(None, {k: values[k] for k in compiled.post_inputs})))
    return [values[o] for o in compiled.outputs]


# ------------------------------------------------------ C-simulation executor

_MODULES: dict = {}


def core_module(board: str = "u200", build_dir: str | None = None):
    """hls/rnn_core.cpp compiled for ``board`` into a cffi module (cached per
    source, board and process; built under the temp dir by default). The
    RNN core is not yet part of the installed emulation library."""
    import hashlib
    import importlib.util
    import os
    import tempfile

    from cffi import FFI

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    hls = os.path.join(root, "hls")
    if not os.path.isdir(hls):  # installed package: the sources stay in the repository
        raise RnnCompileError("the RNN core executor needs the repository's hls/ sources")
    macros = overlay.c_macros(overlay.load(board))
    srcs = [os.path.join(hls, "rnn_core.cpp")] + [os.path.join(hls, "include", f) for f in
                                                  ("vfpga_isa.h", "vfpga_core.h", "vfpga_rnn_core.h",
                                                   "vfpga_unit_scheduler.h")]
    h = hashlib.sha256(repr(sorted(macros.items())).encode())
    for s in srcs:
        with open(s, "rb") as f:
            h.update(f.read())
    key = h.hexdigest()[:16]
    if key in _MODULES:
        return _MODULES[key]
    spec = importlib.util.spec_from_file_location("_vfpga_cffi_build_rnn", os.path.join(hls, "cffi_build.py"))
    cb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cb)
    name = f"_vfpga_rnn_core_{key}"
    build = build_dir or os.path.join(tempfile.gettempdir(), f"vfpga_rnn_core_{os.getuid()}_{key}")
    os.makedirs(build, exist_ok=True)
    found = [f for f in os.listdir(build) if f.startswith(name) and f.endswith((".so", ".pyd"))]
    if found:
        path = os.path.join(build, found[0])
    else:
        ffi = FFI()
        ffi.cdef(cb.cdef_text("vfpga_isa.h", "vfpga_rnn_core.h"))
        ffi.set_source(name, '#include "vfpga_rnn_core.h"', sources=[srcs[0]], source_extension=".cpp",
                       include_dirs=[os.path.join(hls, "include")],
                       define_macros=[(k, str(v)) for k, v in macros.items()],
                       extra_compile_args=["-std=c++14", "-O3", "-Wno-unknown-pragmas"])
        path = ffi.compile(tmpdir=build)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _MODULES[key] = mod
    return mod


class RnnCoreSim:
    """k C-simulated RNN cores walking a dispatch program on one segment,
    frame by frame in program order (a phase's frames, then its barrier):
    the functional behaviour of the level-1 dispatcher for one RNN tenant,
    without its timing. For tests, scripts and the accuracy figures."""

    def __init__(self, board: str = "u200", seed: int | None = 0):
        self.mod = core_module(board)
        self.ffi, self.lib = self.mod.ffi, self.mod.lib
        self.geo = self.ffi.new("vf_rnn_geometry_t *")
        self.lib.vf_rnn_core_geometry(self.geo)
        self.rng = np.random.default_rng(seed)
        self.cores: list = []

    def _core(self):
        g, rng = self.geo, self.rng
        arrays = {"wbuf": rng.integers(-128, 128, g.wbuf_bytes, dtype=np.int8),
                  "vbuf": rng.integers(-128, 128, g.vbuf_bytes, dtype=np.int8),
                  "acc": rng.integers(-2**31, 2**31, g.acc_words, dtype=np.int32),
                  "param": rng.integers(-2**31, 2**31, g.param_entries * 3, dtype=np.int32),
                  "state": rng.integers(-2**31, 2**31, g.state_words, dtype=np.int32),
                  "act": rng.integers(-2**31, 2**31, g.act_words, dtype=np.int32)}
        bufs = self.ffi.new("vf_rnn_buffers_t *")
        keep = []
        for name, arr in arrays.items():
            ptr = self.ffi.from_buffer("int8_t[]" if arr.dtype == np.int8 else "int32_t[]", arr)
            keep.append(ptr)
            setattr(bufs, name, ptr)
        return {"arrays": arrays, "bufs": bufs, "keep": keep, "counters": self.ffi.new("vf_rnn_counters_t *")}

    def run(self, compiled: CompiledRnn, plan: RnnPlan, feeds: dict, seg: np.ndarray | None = None,
            iters: dict | None = None) -> list[np.ndarray]:
        """One request: uploads the image (unless ``seg`` is given, already
        deployed), writes the request data, walks ``plan`` and returns the
        graph outputs. ``iters`` (a dict) receives {frame offset: per
        instruction C-sim iteration counts} of every frame run."""
        if seg is None:
            seg = np.zeros(compiled.segment_size, np.int8)
            for at, data in compiled.segment_image().items():
                seg[at:at + len(data)] = np.frombuffer(data, np.int8)
        for at, data in request_image(compiled, feeds).items():
            seg[at:at + len(data)] = np.frombuffer(data, np.int8)
        while len(self.cores) < plan.k:
            self.cores.append(self._core())
        self.seg = seg
        ptr = self.ffi.from_buffer("int8_t[]", seg)
        state = self.ffi.new("vf_rnn_state_t *")
        for e in plan.program.tolist():
            off, n, slot, op = e
            if op != FRAME_OP:
                continue
            c = self.cores[slot]
            self.ffi.memmove(state, bytes(self.ffi.sizeof("vf_rnn_state_t")), self.ffi.sizeof("vf_rnn_state_t"))
            it = self.ffi.NULL
            buf = None
            if iters is not None:
                buf = np.zeros(n, np.uint32)
                it = self.ffi.from_buffer("uint32_t[]", buf)
            r = self.lib.vf_rnn_core_step(ptr, seg.size, off, n, c["bufs"], state, c["counters"], it)
            if r == self.lib.VF_RNN_STEP_FAULT or state.fault:
                raise RuntimeError(f"RNN core slot {slot}: fault {isa.FAULT_NAMES.get(state.fault, state.fault)} at "
                                   f"instruction {state.fault_insn} of the frame at {off}, addr {state.fault_addr}")
            if r != self.lib.VF_RNN_STEP_END:
                raise RuntimeError(f"frame at {off} did not run to its end (step result {r})")
            if buf is not None:
                iters[off] = buf
        return read_outputs(compiled, seg)

    def counters(self) -> dict:
        """Summed C-sim counters of every core so far."""
        keys = ("insns", "frames", "load_iters", "compute_iters", "save_iters", "load_bytes", "save_bytes", "macs")
        return {k: sum(int(getattr(c["counters"], k)) for c in self.cores) for k in keys}


def random_model(op: str, hidden: int, input_size: int, steps: int, batch: int = 1, lbr: int = 0,
                 direction: str = "forward", seed: int = 0) -> onnx.ModelProto:
    """One LSTM/GRU node with DeepBench-style random weights
    U(-1/sqrt(H), 1/sqrt(H)) (the PyTorch/ONNX initialisation range), for
    the accuracy and benchmark scripts."""
    rng = np.random.default_rng(seed)
    g = 4 if op == "LSTM" else 3
    d = 2 if direction == "bidirectional" else 1
    k = 1 / math.sqrt(hidden)
    u = lambda *s: rng.uniform(-k, k, s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(u(d, g * hidden, input_size), "W"),
             numpy_helper.from_array(u(d, g * hidden, hidden), "R"), numpy_helper.from_array(u(d, 2 * g * hidden), "B")]
    attrs = {"hidden_size": hidden, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = lbr
    outs = ["Y", "Y_h"]
    node = helper.make_node(op, ["X", "W", "R", "B"], outs, name=op.lower(), **attrs)
    graph = helper.make_graph([node], op.lower(), [helper.make_tensor_value_info(
        "X", onnx.TensorProto.FLOAT, [steps, batch, input_size])],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
