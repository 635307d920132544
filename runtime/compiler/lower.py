"""Lowering: one quantized layer -> frames of CNN-core instructions.

A frame is the complete instruction group of one output tile (loads,
compute, save), independent of every other frame of its layer, so frames can
go to any core in any order. Inside a frame the input-channel chunks of a
convolution are double-buffered: chunk k+1 loads while chunk k computes,
handed over with dependency tokens (the C-sim and the cycle model both follow
them).

Tiles are sized from the core geometry of the board config; among the
tilings that fit, the one with the lowest estimated frame cost is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vfpga import overlay
from vfpga.driver import isa
from vfpga.runtime.compiler import ir

DEP = isa.DEP


@dataclass(frozen=True)
class Geometry:
    """What lowering needs to know about one CNN core (from the board config)."""

    icp: int
    ocp: int
    axi_bytes: int
    ibuf_bytes: int
    wbuf_bytes: int
    acc_words: int
    obuf_bytes: int
    param_entries: int
    bank_bytes_per_cycle: float  # what the tenant's DDR banks move per core cycle (all of a striped segment's)

    @classmethod
    def from_config(cls, cfg: dict) -> Geometry:
        core = cfg["cnn_core"]
        return cls(core["icp"], core["ocp"], overlay.config.core_bus_bytes(cfg), core["ibuf_bytes"],
                   core["wbuf_bytes"], core["acc_words"], core["obuf_bytes"], core["param_entries"],
                   overlay.config.segment_bytes_per_cycle(cfg))


@dataclass(frozen=True)
class View:
    """An int8 HWC tensor in the segment (pixel_stride > channels when it is
    a channel slice of a wider tensor)."""

    addr: int
    height: int
    width: int
    channels: int
    pixel_stride: int

    def channel_slice(self, c0: int, n: int) -> View:
        return View(self.addr + c0, self.height, self.width, n, self.pixel_stride)


class LoweringError(ValueError):
    """A layer that the core cannot execute with this board's buffers."""


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _mem(op, view: View, buf_addr, y0, x0, tile_h, tile_w, deps=0, tag=0, pad=0, step=(0, 0)) -> bytes:
    return isa.encode(op, deps=deps, tag=tag, dram_addr=view.addr, buf_addr=buf_addr,
                      height=view.height, width=view.width, pixel_stride=view.pixel_stride,
                      channels=view.channels, y0=y0, x0=x0, tile_h=tile_h, tile_w=tile_w, pad_value=pad,
                      step_y=step[0], step_x=step[1])


TABLE_BYTES = isa.LUT_ENTRIES


def table_geometry(layer, geo: Geometry) -> Geometry:
    """The geometry a layer's tiles may use: with an activation table, the
    top TABLE_BYTES of WBUF hold the table (at ``wbuf_bytes`` of the result)."""
    if getattr(layer, "table", None) is None:
        return geo
    return replace(geo, wbuf_bytes=geo.wbuf_bytes - TABLE_BYTES)


def table_bytes(table) -> np.ndarray:
    t = np.asarray(table)
    if t.shape != (TABLE_BYTES,) or t.dtype != np.int8:
        raise LoweringError(f"an activation table is int8 [{TABLE_BYTES}], got {t.dtype} {t.shape}")
    return t


def lut_insn(length: int, table_addr: int, tag: int, deps: int, in_addr: int = 0, out_addr: int = 0,
             src_obuf: bool = True) -> bytes:
    """LUT over ``length`` bytes (in place on OBUF by default)."""
    return isa.encode("LUT", deps=deps, flags=isa.LUT_SRC_OBUF if src_obuf else 0, tag=tag, in_addr=in_addr,
                      out_addr=out_addr, table_addr=table_addr, length=length)


def wbuf_half(geo: Geometry) -> int:
    """Start of WBUF's second half (chunked convolutions alternate halves):
    half the bytes, rounded down to a CONV weight word (wgt_addr alignment)."""
    word = isa.conv_word_bytes(geo.icp, geo.ocp)
    return geo.wbuf_bytes // 2 // word * word


def conv_weight_bytes(groups: int, cin_g: int, cout_g: int, kh: int, kw: int, geo: Geometry) -> int:
    """WBUF (and DDR) bytes of one CONV instruction's weights, padded to its beat words."""
    return isa.conv_weight_bytes(groups, cin_g, cout_g, kh, kw, geo.icp, geo.ocp)


def _frame(frame_id: int, layer: int) -> bytes:
    return isa.encode("FRAME", tag=layer, frame_id=frame_id, layer=layer)


def _load_beats(tile_h, tile_w, channels, pixel_stride, axi):
    if channels == pixel_stride:
        return tile_h * _ceil(tile_w * channels, axi)
    return tile_h * tile_w * _ceil(channels, axi)


# ---------------------------------------------------------------- convolution

@dataclass(frozen=True)
class ConvTiling:
    group_tile: int  # groups per tile (1 when groups == 1)
    toc: int  # output channels per tile (within the group tile)
    tic: int  # input channels per chunk
    toh: int
    tow: int
    cost: float  # estimated cycles of the whole layer on one core
    frames: int
    widest: bool = False  # the largest tiles of its channel split (what one core runs)
    ddr_beats: int = 0  # estimated bus words the whole layer moves (loads and saves)
    ddr_cycles: float = 0.0  # those words at the tenant's DDR bank's bandwidth

    def makespan(self, k: int) -> float:
        """Estimated cycles on k cores: frames are near-uniform, so the
        busiest core runs ceil(frames / k) of them; and no faster than the
        tenant's DDR bank moves the layer's words, which bounds it on many
        cores: tiles narrow enough to keep 16 cores busy can read the
        layer's weights once per tile."""
        return max(_ceil(self.frames, k) * self.cost / self.frames, self.ddr_cycles)

    def describe(self) -> str:
        return f"oc {self.toc * self.group_tile} ic {self.tic} rows {self.toh} cols {self.tow}"


def _conv_dims(layer: ir.Conv, in_shape):
    h, w, c = in_shape
    oc, icg, kh, kw = layer.weight.shape
    sh, sw = layer.stride
    pt, pl, pb, pr = layer.pads
    oh = (h + pt + pb - kh) // sh + 1
    ow = (w + pl + pr - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise LoweringError(f"{layer.name}: kernel {kh}x{kw} is larger than the padded input {h}x{w}")
    return oh, ow, oc, icg, kh, kw, sh, sw


def _splits(n: int, most: int) -> list[int]:
    """Tile extents of at most ``most``: the largest, then halvings."""
    out, t = [], min(n, most)
    while t >= 1 and (not out or t < out[-1]):
        out.append(t)
        t = _ceil(n, _ceil(n, t) * 2) if t > 1 else 0
    return out


def _most_rows(tow, oh, kh, kw, sh, sw, in_ch, out_ch, ibuf, accumulates, geo) -> int:
    """The most output rows of conv tiles ``tow`` wide that fit every buffer."""
    tiw = (tow - 1) * sw + kw
    if tiw * in_ch * kh > ibuf:
        return 0
    rows = min(oh, (ibuf // (tiw * in_ch) - kh) // sh + 1, geo.obuf_bytes // (tow * out_ch))
    return min(rows, geo.acc_words // (tow * out_ch)) if accumulates else rows


def conv_tilings(layer: ir.Conv, in_shape, in_stride: int, geo: Geometry) -> list[ConvTiling]:
    """Every tiling of the convolution that fits the core's buffers: channel
    splits, and for each the widest tiles plus successive halvings (more
    frames, for balancing over more cores)."""
    oh, ow, oc, icg, kh, kw, sh, sw = _conv_dims(layer, in_shape)
    geo = table_geometry(layer, geo)
    groups = layer.groups
    ocg = oc // groups
    if kh > 255 or kw > 255 or sh > 255 or sw > 255:
        raise LoweringError(f"{layer.name}: kernel/stride above 255 is not encodable")
    # one group at a time (every ordinary conv), chunked over input channels
    per_group = [(1, toc, tic) for toc in _channel_options(ocg, geo.ocp) for tic in _channel_options(icg, geo.icp)]
    if groups > 1 and (icg == 1 or conv_weight_bytes(1, icg, ocg, kh, kw, geo) * 2 <= geo.wbuf_bytes):
        # whole groups per tile: depthwise and small grouped convolutions; one
        # group at a time when no number of whole groups fits the buffers
        # (a few groups with a large kernel)
        candidates = [[(tg, ocg, icg) for tg in _channel_options(groups, geo.ocp)], per_group]
    else:
        candidates = [per_group]
    found: list[ConvTiling] = []
    for shapes in candidates:
        for tg, toc, tic in shapes:
            chunks = _ceil(icg, tic) if tg == 1 else 1
            in_ch = tg * tic if tg > 1 else tic
            out_ch = tg * toc if tg > 1 else toc
            ibuf = geo.ibuf_bytes // 2 if chunks > 1 else geo.ibuf_bytes
            wbuf = wbuf_half(geo) if chunks > 1 else geo.wbuf_bytes
            wbytes = conv_weight_bytes(1, tic, toc, kh, kw, geo) if tg == 1 else \
                conv_weight_bytes(tg, icg, ocg, kh, kw, geo)
            if wbytes > wbuf or out_ch > geo.param_entries:
                continue
            fit = (oh, kh, kw, sh, sw, in_ch, out_ch, ibuf, chunks > 1, geo)
            widest = next((t for t in _spatial_options(ow) if _most_rows(t, *fit) >= 1), 0)
            for i, tow in enumerate(_splits(ow, widest) if widest else []):
                for j, toh in enumerate(_splits(oh, _most_rows(tow, *fit))):
                    cost, beats = _conv_cost(oh, ow, oc, icg, kh, kw, sh, sw, groups, tg, toc, tic, toh, tow,
                                             in_stride, geo)
                    per_job = _ceil(oh, toh) * _ceil(ow, tow)
                    jobs = _ceil(groups, tg) if tg > 1 else groups * _ceil(ocg, toc)
                    found.append(ConvTiling(tg, toc, tic, toh, tow, cost, per_job * jobs, i == 0 and j == 0,
                                            beats, beats * geo.axi_bytes / geo.bank_bytes_per_cycle))
        if found:
            break
    if not found:
        raise LoweringError(
            f"{layer.name}: no tiling of this convolution fits the core's buffers "
            f"(ibuf {geo.ibuf_bytes} B, wbuf {geo.wbuf_bytes} B)")
    return found


def choose_conv_tiling(layer: ir.Conv, in_shape, in_stride: int, geo: Geometry) -> ConvTiling:
    """The tiling one core runs: among the widest tiles of each channel
    split, the cheapest. (Narrower tiles only pay off spread over cores.)"""
    return min((t for t in conv_tilings(layer, in_shape, in_stride, geo) if t.widest), key=lambda t: t.cost)


# A variant with its own channel split (a second copy of the weights) must
# beat the best one sharing the one-core split by this factor.
SPLIT_GAIN = 1.1


def conv_variants(layer: ir.Conv, in_shape, in_stride: int, geo: Geometry, core_counts) -> list[ConvTiling]:
    """The tilings the dynamic stage chooses among: for each core count, the
    one with the smallest estimated makespan (the first is the 1-core one)."""
    tilings = conv_tilings(layer, in_shape, in_stride, geo)
    base = min((t for t in tilings if t.widest), key=lambda t: t.cost)
    same_split = [t for t in tilings if (t.group_tile, t.toc, t.tic) == (base.group_tile, base.toc, base.tic)]
    out: list[ConvTiling] = [base]
    for k in core_counts:
        best = min(tilings, key=lambda t: (t.makespan(k), t.cost))
        # another channel split packs the weights again: only worth it when clearly better
        shared = min(same_split, key=lambda t: (t.makespan(k), t.cost))
        if shared.makespan(k) <= SPLIT_GAIN * best.makespan(k):
            best = shared
        if best not in out:
            out.append(best)
    return sorted(out, key=lambda t: (t is not base, t.frames))


def _channel_options(n: int, lane: int) -> list[int]:
    """Channel tile sizes to try: everything, then halves rounded to lanes."""
    opts = {n}
    t = n
    while t > lane:
        t = _ceil(_ceil(t, 2), lane) * lane
        opts.add(min(t, n))
    opts.add(min(lane, n))
    return sorted(opts, reverse=True)


def _spatial_options(n: int) -> list[int]:
    return sorted({_ceil(n, k) for k in range(1, n + 1)}, reverse=True)


def _conv_cost(oh, ow, oc, icg, kh, kw, sh, sw, groups, tg, toc, tic, toh, tow, in_stride, geo):
    """(Estimated cycles of the whole layer on one core: per frame, loads
    overlap compute; bus words it moves)."""
    tih, tiw = (toh - 1) * sh + kh, (tow - 1) * sw + kw
    spatial = _ceil(oh, toh) * _ceil(ow, tow)
    if tg > 1:
        frames = spatial * _ceil(groups, tg)
        lanes = _ceil(tg * toc, geo.ocp) if icg == 1 else tg * _ceil(icg, geo.icp) * _ceil(toc, geo.ocp)
        compute = toh * tow * kh * kw * lanes
        load = (_load_beats(tih, tiw, tg * icg, in_stride, geo.axi_bytes)
                + _ceil(conv_weight_bytes(tg, icg, toc, kh, kw, geo), geo.axi_bytes))
        chunks = 1
    else:
        frames = spatial * _ceil(oc // groups, toc) * groups
        chunks = _ceil(icg, tic)
        compute = chunks * toh * tow * kh * kw * _ceil(tic, geo.icp) * _ceil(toc, geo.ocp)
        load = chunks * (_load_beats(tih, tiw, tic, in_stride, geo.axi_bytes)
                         + _ceil(conv_weight_bytes(1, tic, toc, kh, kw, geo), geo.axi_bytes))
    save = toh * _ceil(tow * toc * tg, geo.axi_bytes)
    fixed = 64 * (2 * chunks + 3)  # per-instruction start-up, dominated by DDR latency
    return frames * (max(compute, load) + save + fixed), frames * (load + save)


def _pack_params(bias, mult, shift) -> np.ndarray:
    return np.stack([bias, mult, shift], axis=1).astype("<i4")


def lower_conv(layer: ir.Conv, index: int, src: View, dst: View, in_zp: int, out_zp: int,
               const_base: int, geo: Geometry, tiling: ConvTiling | None = None,
               packing: dict | None = None, phase: tuple[int, int, int, int] | None = None,
               fid0: int = 0) -> tuple[list[bytes], bytes, ConvTiling]:
    """Frames of one convolution. Packed weights and params are returned as
    one byte block that the caller places at segment offset const_base.
    ``packing`` (one dict per layer, kept by the caller) lets tiling variants
    with the same channel split share their packed weights. ``phase``
    (sy, sx, dy, dx): output pixel (oy, ox) goes to (oy * sy + dy, ox * sx + dx)
    of ``dst`` (a phase of a transposed convolution); frame ids from ``fid0``."""
    oh, ow, oc, icg, kh, kw, sh, sw = _conv_dims(layer, (src.height, src.width, src.channels))
    pt, pl, _, _ = layer.pads
    groups = layer.groups
    ocg = oc // groups
    psy, psx, pdy, pdx = phase or (1, 1, 0, 0)
    if phase is None and (dst.height, dst.width, dst.channels) != (oh, ow, oc):
        raise LoweringError(f"{layer.name}: output view {dst} does not match {oh}x{ow}x{oc}")
    if phase is not None and ((oh - 1) * psy + pdy >= dst.height or (ow - 1) * psx + pdx >= dst.width
                              or dst.channels != oc or max(psy, psx) > 255):
        raise LoweringError(f"{layer.name}: phase {phase} of {oh}x{ow}x{oc} does not fit the output view {dst}")
    t = tiling or choose_conv_tiling(layer, (src.height, src.width, src.channels), src.pixel_stride, geo)
    table = None if getattr(layer, "table", None) is None else table_bytes(layer.table)
    geo = table_geometry(layer, geo)
    w = layer.weight.astype(np.int8)
    # Padding is loaded as in_zp, so the hardware sums x*w; fold -in_zp*sum(w) into the bias.
    bias = (layer.bias.astype(np.int64) - in_zp * w.reshape(oc, -1).astype(np.int64).sum(axis=1))
    bias = ((bias + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)  # int32 wrap, as the core
    params = _pack_params(bias, layer.mult, layer.shift)
    blob = bytearray()

    def place(arr: np.ndarray) -> int:
        off = const_base + len(blob)
        blob.extend(arr.tobytes())
        blob.extend(b"\0" * (-len(blob) % 64))
        return off

    frames = []
    lo, hi = layer.clip
    ibuf_half = geo.ibuf_bytes // 2
    whalf = wbuf_half(geo)
    tg = t.group_tile
    key = (t.group_tile, t.toc, t.tic)
    if packing is not None and key in packing:
        jobs = packing[key]
    elif tg > 1:
        # whole groups per tile; channel slice [g0*icg, (g0+ng)*icg)
        jobs = []
        for g0 in range(0, groups, tg):
            ng = min(tg, groups - g0)
            wblk = place(isa.pack_conv_weights(w[g0 * ocg:(g0 + ng) * ocg].transpose(0, 2, 3, 1), ng,
                                               geo.icp, geo.ocp))
            pblk = place(params[g0 * ocg:(g0 + ng) * ocg])
            nbytes = conv_weight_bytes(ng, icg, ocg, kh, kw, geo)
            jobs.append((g0 * icg, ng * icg, g0 * ocg, ng * ocg, ng, [(0, icg, wblk, nbytes)], pblk))
    else:
        jobs = []
        for g in range(groups):
            for oc0 in range(0, ocg, t.toc):
                noc = min(t.toc, ocg - oc0)
                chunks = []
                for ic0 in range(0, icg, t.tic):
                    nic = min(t.tic, icg - ic0)
                    blk = w[g * ocg + oc0:g * ocg + oc0 + noc, ic0:ic0 + nic].transpose(0, 2, 3, 1)
                    chunks.append((ic0, nic, place(isa.pack_conv_weights(blk, 1, geo.icp, geo.ocp)),
                                   conv_weight_bytes(1, nic, noc, kh, kw, geo)))
                pblk = place(params[g * ocg + oc0:g * ocg + oc0 + noc])
                jobs.append((g * icg, icg, g * ocg + oc0, noc, 1, chunks, pblk))
    if packing is not None:
        packing[key] = jobs
    tblk = None
    if table is not None:
        tblk = packing.get("table") if packing is not None else None
        if tblk is None:
            tblk = place(table)
            if packing is not None:
                packing["table"] = tblk

    fid = fid0
    for in_c0, _in_n, out_c0, out_n, ng, chunks, pblk in jobs:
        nchunks = len(chunks)
        for oy0 in range(0, oh, t.toh):
            toh = min(t.toh, oh - oy0)
            tih = (toh - 1) * sh + kh
            for ox0 in range(0, ow, t.tow):
                tow = min(t.tow, ow - ox0)
                tiw = (tow - 1) * sw + kw
                insns = [_frame(fid, index)]
                for k, (ic0, nic, wblk, wbytes) in enumerate(chunks):
                    half = k % 2 if nchunks > 1 else 0
                    in_ch = ng * nic if ng > 1 else nic
                    view = src.channel_slice(in_c0 + (ic0 if ng == 1 else 0), in_ch)
                    load_deps = DEP["POP_NEXT"] if k >= 2 else 0
                    insns.append(_mem("LOAD_TILE", view, half * ibuf_half, oy0 * sh - pt, ox0 * sw - pl,
                                      tih, tiw, deps=load_deps, tag=index, pad=in_zp))
                    linear = [(wblk, half * whalf, wbytes, isa.BUF_WGT)]
                    if k == 0:
                        linear.append((pblk, 0, out_n * isa.PARAM_ENTRY_WORDS * 4, isa.BUF_PARAM))
                        if tblk is not None:
                            linear.append((tblk, geo.wbuf_bytes, TABLE_BYTES, isa.BUF_WGT))
                    for j, (addr, buf_addr, nbytes, buffer) in enumerate(linear):
                        # the chunk's last load hands the buffers to compute
                        insns.append(isa.encode("LOAD_LINEAR", tag=index, dram_addr=addr, buf_addr=buf_addr,
                                                nbytes=nbytes, buffer=buffer,
                                                deps=DEP["PUSH_NEXT"] if j == len(linear) - 1 else 0))
                    first, last = k == 0, k == nchunks - 1
                    deps = DEP["POP_PREV"]
                    if k + 2 < nchunks:
                        deps |= DEP["PUSH_PREV"]
                    if last and tblk is None:
                        deps |= DEP["PUSH_NEXT"]
                    flags = (isa.CONV_ACC_INIT if first else 0) | (isa.CONV_ACC_FINAL if last else 0)
                    insns.append(isa.encode(
                        "CONV", deps=deps, flags=flags, tag=index, in_addr=half * ibuf_half,
                        wgt_addr=half * whalf, out_addr=0, acc_addr=0, param_addr=0,
                        in_h=tih, in_w=tiw, out_h=toh, out_w=tow, groups=ng, cin_g=nic if ng == 1 else icg,
                        cout_g=out_n if ng == 1 else ocg, kh=kh, kw=kw, sh=sh, sw=sw,
                        out_zp=out_zp, clip_lo=lo, clip_hi=hi))
                if tblk is not None:  # the activation table on the tile, in place, before it is saved
                    insns.append(lut_insn(toh * tow * out_n, geo.wbuf_bytes, index, DEP["PUSH_NEXT"]))
                out_view = dst.channel_slice(out_c0, out_n)
                insns.append(_mem("SAVE", out_view, 0, oy0 * psy + pdy, ox0 * psx + pdx, toh, tow,
                                  deps=DEP["POP_PREV"], tag=index, step=(psy, psx) if phase else (0, 0)))
                frames.append(b"".join(insns))
                fid += 1
    return frames, bytes(blob), t


# ---------------------------------------------------------------- pooling

def lower_pool(layer: ir.Pool, index: int, src: View, dst: View, in_zp: int, out_zp: int,
               geo: Geometry, max_rows: int | None = None) -> list[bytes]:
    """Frames of one pooling layer; ``max_rows`` caps the output rows per
    frame (more, smaller frames: a variant for several cores)."""
    h, w, c = src.height, src.width, src.channels
    kh, kw = layer.kernel
    sh, sw = layer.stride
    pt, pl, pb, pr = layer.pads
    oh = (h + pt + pb - kh) // sh + 1
    ow = (w + pl + pr - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise LoweringError(f"{layer.name}: pooling window {kh}x{kw} is larger than the padded input {h}x{w}")
    if (dst.height, dst.width, dst.channels) != (oh, ow, c):
        raise LoweringError(f"{layer.name}: output view does not match {oh}x{ow}x{c}")
    if sh > 255 or sw > 255 or kh > 65535 or kw > 65535:
        raise LoweringError(f"{layer.name}: pooling window/stride not encodable")
    if layer.shift > 30:
        raise LoweringError(f"{layer.name}: pooling shift {layer.shift} > 30")
    # Channel tiles narrower than the lanes come last: a large window (global
    # pooling) may fit the input buffer only a few channels at a time.
    channel_tiles = _channel_options(c, geo.ocp)
    while channel_tiles[-1] > 1:
        channel_tiles.append(_ceil(channel_tiles[-1], 2))
    tiling = None
    for tc in channel_tiles:
        for tow in _spatial_options(ow):
            tiw = (tow - 1) * sw + kw
            rows_in = geo.ibuf_bytes // (tiw * tc)
            toh = min(oh, (rows_in - kh) // sh + 1 if rows_in >= kh else 0, geo.obuf_bytes // (tow * tc))
            if toh >= 1:
                tiling = (tc, toh, tow)
                break
        if tiling:
            break
    if tiling is None:
        raise LoweringError(f"{layer.name}: pooling window {kh}x{kw} does not fit the input buffer")
    tc, t_oh, t_ow = tiling
    t_oh = min(t_oh, max_rows or t_oh)
    flags = (isa.POOL_AVG if layer.mode == "avg" else 0) | (isa.POOL_COUNT_PAD if layer.count_include_pad else 0)
    lo, hi = layer.clip
    frames = []
    fid = 0
    for c0 in range(0, c, tc):
        nc = min(tc, c - c0)
        for oy0 in range(0, oh, t_oh):
            toh = min(t_oh, oh - oy0)
            tih = (toh - 1) * sh + kh
            y0 = oy0 * sh - pt
            for ox0 in range(0, ow, t_ow):
                tow = min(t_ow, ow - ox0)
                tiw = (tow - 1) * sw + kw
                x0 = ox0 * sw - pl
                insns = [
                    _frame(fid, index),
                    _mem("LOAD_TILE", src.channel_slice(c0, nc), 0, y0, x0, tih, tiw,
                         deps=DEP["PUSH_NEXT"], tag=index, pad=in_zp),
                    isa.encode("POOL", deps=DEP["POP_PREV"] | DEP["PUSH_NEXT"], flags=flags, tag=index,
                               in_addr=0, out_addr=0, mult=layer.mult, in_h=tih, in_w=tiw, out_h=toh,
                               out_w=tow, channels=nc, kh=kh, kw=kw, sh=sh, sw=sw,
                               valid_y0=max(0, -y0), valid_y1=max(0, min(tih, h - y0)),
                               valid_x0=max(0, -x0), valid_x1=max(0, min(tiw, w - x0)),
                               shift=layer.shift, in_zp=in_zp, out_zp=out_zp, clip_lo=lo, clip_hi=hi),
                    _mem("SAVE", dst.channel_slice(c0, nc), 0, oy0, ox0, toh, tow, deps=DEP["POP_PREV"], tag=index),
                ]
                frames.append(b"".join(insns))
                fid += 1
    return frames


# ---------------------------------------------------------------- element-wise add

def lower_add(layer: ir.Add, index: int, a: View, b: View, dst: View, a_zp: int, b_zp: int, out_zp: int,
              geo: Geometry, max_rows: int | None = None) -> list[bytes]:
    """Frames of one element-wise add; ``max_rows`` as in lower_pool."""
    h, w, c = dst.height, dst.width, dst.channels
    for v in (a, b):
        if (v.height, v.width, v.channels) != (h, w, c):
            raise LoweringError(f"{layer.name}: operands {a} and {b} differ from output {dst}")
    half = geo.ibuf_bytes // 2
    tiling = None
    for tc in _channel_options(c, geo.ocp):
        for tw in _spatial_options(w):
            th = min(h, half // (tw * tc), geo.obuf_bytes // (tw * tc))
            if th >= 1:
                tiling = (tc, th, tw)
                break
        if tiling:
            break
    tc, t_h, t_w = tiling
    t_h = min(t_h, max_rows or t_h)
    lo, hi = layer.clip
    frames = []
    fid = 0
    for c0 in range(0, c, tc):
        nc = min(tc, c - c0)
        for y0 in range(0, h, t_h):
            th = min(t_h, h - y0)
            for x0 in range(0, w, t_w):
                tw = min(t_w, w - x0)
                insns = [
                    _frame(fid, index),
                    _mem("LOAD_TILE", a.channel_slice(c0, nc), 0, y0, x0, th, tw, tag=index),
                    _mem("LOAD_TILE", b.channel_slice(c0, nc), half, y0, x0, th, tw, deps=DEP["PUSH_NEXT"], tag=index),
                    isa.encode("ADD", deps=DEP["POP_PREV"] | DEP["PUSH_NEXT"], tag=index, a_addr=0, b_addr=half,
                               out_addr=0, length=th * tw * nc, a_mult=layer.a_mult, b_mult=layer.b_mult,
                               shift=layer.shift, a_zp=a_zp, b_zp=b_zp, out_zp=out_zp, clip_lo=lo, clip_hi=hi),
                    _mem("SAVE", dst.channel_slice(c0, nc), 0, y0, x0, th, tw, deps=DEP["POP_PREV"], tag=index),
                ]
                frames.append(b"".join(insns))
                fid += 1
    return frames


def conv_output_shape(layer: ir.Conv, in_shape) -> tuple[int, int, int]:
    oh, ow, oc, *_ = _conv_dims(layer, in_shape)
    return oh, ow, oc


def pool_output_shape(layer: ir.Pool, in_shape) -> tuple[int, int, int]:
    h, w, c = in_shape
    kh, kw = layer.kernel
    sh, sw = layer.stride
    pt, pl, pb, pr = layer.pads
    return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1, c
