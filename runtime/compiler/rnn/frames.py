"""Tiling variants and frames: per timestep, one frame per hidden-dimension
slice, resident or streamed weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfpga.driver import isa
from vfpga.runtime.hw import rnn_golden as rg

from .emit import Emitter
from .model import Geometry, L, RnnCompileError, RnnLayer, Tiling

# ------------------------------------------------------------------ weight tiles

def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tile_bytes(geo: Geometry) -> int:
    """One RNN_MATVEC beat's weights, a WBUF word: ROWS x COLS bytes (vfpga_isa.h, RNN_MATVEC)."""
    return geo.rows * geo.cols


def block_bytes(geo: Geometry, cols: int) -> int:
    """A row block of a matrix with ``cols`` columns: its ceil(cols / COLS) tiles."""
    return _cdiv(cols, geo.cols) * tile_bytes(geo)


def pack_tiles(mat: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``mat`` [R, K] int8 in RNN_MATVEC's beat-major order: its rows x cols
    tiles row block by row block, column blocks in order, each tile row-major
    and zero-padded where partial (int8, ceil(R / rows) * ceil(K / cols)
    tiles)."""
    mat = np.asarray(mat, np.int8)
    r, k = mat.shape
    nrb, ncb = _cdiv(r, rows), _cdiv(k, cols)
    out = np.zeros((nrb * rows, ncb * cols), np.int8)
    out[:r, :k] = mat
    return np.ascontiguousarray(out.reshape(nrb, rows, ncb, cols).transpose(0, 2, 1, 3)).ravel()


def pack_gates(mat: np.ndarray, gates: int, geo: Geometry) -> np.ndarray:
    """A gate-major weight matrix [gates * H, K] as the segment holds it: per
    gate, its H rows packed (:func:`pack_tiles`), so the row blocks of any
    unit range [u, u') with u a multiple of ROWS are one contiguous run and
    the gates lie ceil(H / ROWS) row blocks apart."""
    hh = mat.shape[0] // gates
    return np.concatenate([pack_tiles(mat[k * hh:(k + 1) * hh], geo.rows, geo.cols) for k in range(gates)])


def tiling_for(layer: RnnLayer, geo: Geometry, v: int, batch: int, resident_ok: bool) -> Tiling | None:
    """Slice cuts, sub-slice size, batch group and residency of a v-slice
    variant, or None if the hidden units do not split into v slices. Every
    unit range a frame multiplies starts at a multiple of ROWS (slice cuts,
    sub-slices and streamed chunks), where the packed weights' row blocks
    start, so its tiles are one contiguous run of each gate's."""
    hh, ii, g = layer.hidden, layer.input_size, layer.gates
    if v > hh:
        return None
    unit = geo.rows
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

    blocks = _cdiv(n, geo.rows)
    if resident_ok and g * blocks * (block_bytes(geo, ii) + block_bytes(geo, hh)) <= geo.wbuf:
        for bg in range(batch, 0, -1):
            if fits(n, bg, True):
                return Tiling(v, cuts, n, bg, True)
    widest = max(block_bytes(geo, ii), block_bytes(geo, hh))
    if widest > _half(geo):
        raise RnnCompileError(f"{layer.op} node {layer.node!r}: a row block of weights ({geo.rows} rows of "
                              f"{max(ii, hh)} bytes, {widest} bytes as tiles) does not fit half of WBUF "
                              f"({_half(geo)})")
    for bg in range(batch, 0, -1):
        m = n  # sub-slices below n are whole row blocks
        while m > 0 and not fits(m, bg, False):
            m = (m - 1) // geo.rows * geo.rows
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
class FrameContext:
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


def _pieces(ctx: FrameContext, kind: str):
    """(matrix, first gate, gates, cols, vector, ACC part) products of a frame kind."""
    g, ii, hh = ctx.lay.gates, ctx.lay.input_size, ctx.lay.hidden
    if kind == "gru2":
        return [("R", 2, 1, hh, "hin", "h")]
    return [("W", 0, g, ii, "x", "x"), ("R", 0, 2 if kind == "rh" else g, hh, "hin", "h")]


def preload_frame(em: Emitter, ctx: FrameContext, s: int, e: int, fid: int):
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
    nb, hb = _cdiv(ns, geo.rows), _cdiv(hh, geo.rows)  # the slice's row blocks, a gate's
    bi, bh = block_bytes(geo, ii), block_bytes(geo, hh)
    em.mem(L.VF_RNN_OP_LOAD, L.VF_RNN_BUF_WGT, a["w"][d] + s // geo.rows * bi, 0, nb * bi, planes=g,
           plane_stride=hb * bi, tag=t)
    em.mem(L.VF_RNN_OP_LOAD, L.VF_RNN_BUF_WGT, a["r"][d] + s // geo.rows * bh, g * nb * bi, nb * bh, planes=g,
           plane_stride=hb * bh, tag=t)


def _half(geo: Geometry) -> int:
    """A streaming half of WBUF, whole tiles (a MATVEC's weights start on a tile)."""
    return geo.wbuf // 2 // tile_bytes(geo) * tile_bytes(geo)


def _chunks(pieces, mm, half, geo):
    """Streams the pieces' row blocks (gate-major) through WBUF halves: a list
    of chunks, each a list of (piece, gate, gates, u0, u1, wbuf offset); u0 is
    a multiple of ROWS and each gate's rows [u0, u1) take ceil((u1 - u0) /
    ROWS) row blocks."""
    chunks, free, at = [[]], half, 0
    for pc in pieces:
        _, g0, gn, cols, _, _ = pc
        blk = block_bytes(geo, cols)
        size = gn * _cdiv(mm, geo.rows) * blk
        if size <= free:
            chunks[-1].append((pc, g0, gn, 0, mm, at))
            free -= size
            at += size
            continue
        for gate in range(g0, g0 + gn):
            u = 0
            while u < mm:
                fit = free // blk * geo.rows
                if fit == 0:
                    chunks.append([])
                    free, at = half, 0
                    continue
                take = min(mm - u, fit)
                chunks[-1].append((pc, gate, 1, u, u + take, at))
                free -= _cdiv(take, geo.rows) * blk
                at += _cdiv(take, geo.rows) * blk
                u += take
    return [c for c in chunks if c]


def _products(grp, geo, wgt, cols, gate, gn, ua, ub, mm, vec, accb, parb):
    """The RNN_MATVECs of gates [gate, gate + gn), units [ua, ub) of the
    sub-slice, whose tiles start at WBUF ``wgt`` (gate after gate,
    ceil((ub - ua) / ROWS) row blocks each): one over all gates when their
    rows meet at row-block boundaries, else one per gate."""
    n, ncb = ub - ua, _cdiv(cols, geo.cols)
    if gn == 1 or n % geo.rows == 0:
        grp.computes.append(("matvec", (wgt, ncb, vec, accb + gate * mm + ua, parb + gate * mm + ua, gn * n, cols),
                             {}))
        return
    step = _cdiv(n, geo.rows) * block_bytes(geo, cols)
    for k in range(gn):
        grp.computes.append(("matvec", (wgt + k * step, ncb, vec, accb + (gate + k) * mm + ua,
                                        parb + (gate + k) * mm + ua, n, cols), {}))


def step_frame(em: Emitter, ctx: FrameContext, tl: Tiling, kind: str, s: int, e: int, items: list, fid: int):
    """One timestep (or GRU half-step) of hidden units [s, e) for the active
    batch items [(b, t, t_prev or None)]."""
    lay, geo, a, d, p = ctx.lay, ctx.geo, ctx.a, ctx.d, ctx.p
    g, ii, hh, nb, nd = lay.gates, lay.input_size, lay.hidden, ctx.batch, lay.directions
    lstm = lay.op == "LSTM"
    em.marker(L.VF_OP_FRAME, fid, ctx.li)
    m = tl.m
    vstride = ii + hh + m
    half = _half(geo)
    hb = _cdiv(hh, geo.rows)  # row blocks of a gate in the packed weights
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
            if tl.resident:  # preload_frame's WBUF layout: W's gates, then R's
                sb = _cdiv(e - s, geo.rows)  # the slice's row blocks per gate
                chunk_list = [[(pc, pc[1], pc[2], 0, mm, (0 if pc[0] == "W" else g * sb * block_bytes(geo, ii))
                                + pc[1] * sb * block_bytes(geo, pc[3])) for pc in pieces]]
            else:
                chunk_list = _chunks(pieces, mm, half, geo)
            for ci, chunk in enumerate(chunk_list):
                grp = first if ci == 0 else _Group()
                wbase = 0 if tl.resident else (len(groups) % 2) * half
                if not tl.resident:
                    for (mat, _, _, cols, _, _), gate, gn, ua, ub, at in chunk:
                        blk = block_bytes(geo, cols)
                        src = a["w" if mat == "W" else "r"][d] + (gate * hb + (u0 + ua) // geo.rows) * blk
                        grp.loads.append(_load(L.VF_RNN_BUF_WGT, src, wbase + at, _cdiv(ub - ua, geo.rows) * blk,
                                               planes=gn, plane_stride=hb * blk))
                for (_, _, _, cols, vec, part), gate, gn, ua, ub, at in chunk:
                    for sv in slots:
                        _products(grp, geo, wbase + at, cols, gate, gn, ua, ub, mm, sv[vec],
                                  sv["acc_x"] if part == "x" else sv["acc_h"], px if part == "x" else ph)
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
