"""Tiling variants and frames: per timestep, one frame per hidden-dimension
slice, resident or streamed weights."""

from __future__ import annotations

from dataclasses import dataclass

from vfpga.driver import isa
from vfpga.runtime.hw import rnn_golden as rg

from .emit import Emitter
from .model import Geometry, L, RnnCompileError, RnnLayer, Tiling


def tiling_for(layer: RnnLayer, geo: Geometry, v: int, batch: int, resident_ok: bool) -> Tiling | None:
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


def step_frame(em: Emitter, ctx: FrameContext, tl: Tiling, kind: str, s: int, e: int, items: list, fid: int):
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
