"""Lowering of the mobile-network layers: activation tables (LUT),
element-wise and per-channel products (MUL), nearest-neighbour upsampling
and transposed convolutions. Frames follow :mod:`lower`'s rules: one output
tile each, loads -> compute -> save handed over by dependency tokens.

Upsampling and transposed convolution write their output through SAVEs with
steps: an output phase (dy, dx) is a tile saved at every sy-th row and
sx-th pixel from (dy, dx), so the phases interleave in DDR with no copy.
"""

from __future__ import annotations

import numpy as np

from vfpga.driver import isa
from vfpga.runtime.compiler import ir
from vfpga.runtime.compiler.lower import (
    DEP,
    TABLE_BYTES,
    Geometry,
    LoweringError,
    View,
    _channel_options,
    _frame,
    _mem,
    _spatial_options,
    choose_conv_tiling,
    conv_output_shape,
    lower_conv,
    lut_insn,
    table_bytes,
)


def _tiles(h: int, w: int, c: int, per_pixel: int, ibuf: int, obuf: int, ocp: int, max_rows: int | None):
    """(channel tile, rows, cols) of an element-wise layer: the widest tile
    whose ``per_pixel`` input bytes per channel fit ``ibuf`` and whose output
    fits ``obuf``."""
    for tc in _channel_options(c, ocp):
        for tw in _spatial_options(w):
            th = min(h, ibuf // (tw * tc * per_pixel), obuf // (tw * tc))
            if th >= 1:
                return tc, min(th, max_rows or th), tw
    raise LoweringError(f"an element-wise tile of {c} channels does not fit the buffers")


def _row_tiles(h, w, c, tiling):
    tc, t_h, t_w = tiling
    for c0 in range(0, c, tc):
        for y0 in range(0, h, t_h):
            for x0 in range(0, w, t_w):
                yield c0, min(tc, c - c0), y0, min(t_h, h - y0), x0, min(t_w, w - x0)


def lower_lut(layer: ir.Lut, index: int, src: View, dst: View, const_base: int, geo: Geometry,
              max_rows: int | None = None) -> tuple[list[bytes], bytes]:
    """Frames of a standalone activation table; the table (placed at
    ``const_base``) is loaded into WBUF 0 by every frame."""
    h, w, c = dst.height, dst.width, dst.channels
    if (src.height, src.width, src.channels) != (h, w, c):
        raise LoweringError(f"{layer.name}: input {src} and output {dst} differ")
    blob = table_bytes(layer.table).tobytes()
    tiling = _tiles(h, w, c, 1, geo.ibuf_bytes, geo.obuf_bytes, geo.ocp, max_rows)
    frames = []
    for fid, (c0, nc, y0, th, x0, tw) in enumerate(_row_tiles(h, w, c, tiling)):
        frames.append(b"".join([
            _frame(fid, index),
            isa.encode("LOAD_LINEAR", tag=index, dram_addr=const_base, buf_addr=0, nbytes=TABLE_BYTES,
                       buffer=isa.BUF_WGT),
            _mem("LOAD_TILE", src.channel_slice(c0, nc), 0, y0, x0, th, tw, deps=DEP["PUSH_NEXT"], tag=index),
            lut_insn(th * tw * nc, 0, index, DEP["POP_PREV"] | DEP["PUSH_NEXT"], src_obuf=False),
            _mem("SAVE", dst.channel_slice(c0, nc), 0, y0, x0, th, tw, deps=DEP["POP_PREV"], tag=index),
        ]))
    return frames, blob


def lower_mul(layer: ir.Mul, index: int, a: View, b: View, dst: View, a_zp: int, b_zp: int, out_zp: int,
              geo: Geometry, max_rows: int | None = None) -> list[bytes]:
    """Frames of an element-wise product (b one pixel when broadcast)."""
    h, w, c = dst.height, dst.width, dst.channels
    want_b = (1, 1, c) if layer.broadcast else (h, w, c)
    if (a.height, a.width, a.channels) != (h, w, c) or (b.height, b.width, b.channels) != want_b:
        raise LoweringError(f"{layer.name}: operands {a} and {b} do not fit the output {dst}")
    if layer.shift > 62:
        raise LoweringError(f"{layer.name}: shift {layer.shift} > 62")
    half = geo.ibuf_bytes // 2
    tiling = _tiles(h, w, c, 1, half, geo.obuf_bytes, geo.ocp, max_rows)
    lo, hi = layer.clip
    frames = []
    for fid, (c0, nc, y0, th, x0, tw) in enumerate(_row_tiles(h, w, c, tiling)):
        load_b = (_mem("LOAD_TILE", b.channel_slice(c0, nc), half, 0, 0, 1, 1, deps=DEP["PUSH_NEXT"], tag=index)
                  if layer.broadcast else
                  _mem("LOAD_TILE", b.channel_slice(c0, nc), half, y0, x0, th, tw, deps=DEP["PUSH_NEXT"], tag=index))
        frames.append(b"".join([
            _frame(fid, index),
            _mem("LOAD_TILE", a.channel_slice(c0, nc), 0, y0, x0, th, tw, tag=index),
            load_b,
            isa.encode("MUL", deps=DEP["POP_PREV"] | DEP["PUSH_NEXT"], flags=isa.MUL_BCAST if layer.broadcast else 0,
                       tag=index, a_addr=0, b_addr=half, out_addr=0, pixels=th * tw, channels=nc,
                       mult=layer.mult, shift=layer.shift, a_zp=a_zp, b_zp=b_zp, out_zp=out_zp, clip_lo=lo,
                       clip_hi=hi),
            _mem("SAVE", dst.channel_slice(c0, nc), 0, y0, x0, th, tw, deps=DEP["POP_PREV"], tag=index),
        ]))
    return frames


def _linear_segments(n: int, s: int, transform: str, d: int):
    """Phase d of a bilinear axis: runs [(q0, q1, offset, weights)] of the
    input positions q whose output q * s + d reads positions offset + k of q
    with the integer weights[k] (edge taps merged where the coordinate clamps)."""
    den = 2 * s if transform == "half_pixel" else s
    runs = []
    for q in range(n):
        # the source coordinate of output q * s + d, times den, inside [0, n - 1]
        num = min(max(2 * (q * s + d) + 1 - s if transform == "half_pixel" else q * s + d, 0), (n - 1) * den)
        lo, a = divmod(num, den)
        taps: dict[int, int] = {}
        for i, w in ((lo, den - a), (min(lo + 1, n - 1), a)):
            if w:
                taps[i - q] = taps.get(i - q, 0) + w
        off = min(taps)
        key = (off, tuple(taps.get(off + k, 0) for k in range(max(taps) - off + 1)))
        if runs and runs[-1][2:] == key and runs[-1][1] == q:
            runs[-1] = (runs[-1][0], q + 1, *key)
        else:
            runs.append((q, q + 1, *key))
    return runs


def bilinear_regions(layer: ir.Upsample, in_shape) -> list[tuple[ir.Conv, tuple[int, int, int, int]]]:
    """A bilinear upsampling as depthwise convolutions: per output phase
    (dy, dx) and per run of rows / columns with the same taps (the interior,
    and the edges where the coordinate clamps), one convolution with the
    product of the two axes' integer weights, saved with steps."""
    h, w, c = in_shape
    sy, sx = layer.scale
    out = []
    for dy in range(sy):
        for ya, yb, offy, wy in _linear_segments(h, sy, layer.transform, dy):
            for dx in range(sx):
                for xa, xb, offx, wx in _linear_segments(w, sx, layer.transform, dx):
                    k = np.outer(wy, wx)
                    if k.max() > 127:
                        raise LoweringError(f"{layer.name}: bilinear weights {k.max()} exceed int8 (factor too large)")
                    ky, kx = k.shape
                    pt, pl = -(ya + offy), -(xa + offx)
                    pb, pr = (yb - ya) - 1 + ky - h - pt, (xb - xa) - 1 + kx - w - pl
                    weight = np.broadcast_to(k.astype(np.int8), (c, 1, ky, kx)).copy()
                    conv = ir.Conv(f"{layer.name}@{dy},{dx}:{ya},{xa}", layer.input, layer.output, weight,
                                   np.zeros(c, np.int32), np.full(c, layer.mult, np.int32),
                                   np.full(c, layer.shift, np.int32), pads=(pt, pl, pb, pr), groups=c,
                                   clip=layer.clip)
                    out.append((conv, (sy, sx, dy + ya * sy, dx + xa * sx)))
    return out


def lower_upsample(layer: ir.Upsample, index: int, src: View, dst: View, in_zp: int, out_zp: int,
                   geo: Geometry, max_rows: int | None = None, const_base: int = 0) -> tuple[list[bytes], bytes]:
    """Frames of an upsampling. nearest: each input tile is requantized once
    (a 1x1 POOL) and saved sy * sx times with steps. linear: the depthwise
    convolutions of :func:`bilinear_regions` (weights placed at const_base)."""
    h, w, c = src.height, src.width, src.channels
    sy, sx = layer.scale
    if (dst.height, dst.width, dst.channels) != (h * sy, w * sx, c):
        raise LoweringError(f"{layer.name}: output {dst} is not {sy}x{sx} times the input {src}")
    if layer.mode == "linear":
        frames, blob = [], bytearray()
        for conv, where in bilinear_regions(layer, (h, w, c)):
            t = choose_conv_tiling(conv, (h, w, c), src.pixel_stride, geo)
            f, b, _ = lower_conv(conv, index, src, dst, in_zp, out_zp, const_base + len(blob), geo, tiling=t,
                                 phase=where, fid0=len(frames))
            frames += f
            blob.extend(b)
        return frames, bytes(blob)
    if not (1 <= sy <= 255 and 1 <= sx <= 255) or layer.shift > 30:
        raise LoweringError(f"{layer.name}: factors {layer.scale} / shift {layer.shift} not encodable")
    tiling = _tiles(h, w, c, 1, geo.ibuf_bytes, geo.obuf_bytes, geo.ocp, max_rows)
    lo, hi = layer.clip
    frames = []
    for fid, (c0, nc, y0, th, x0, tw) in enumerate(_row_tiles(h, w, c, tiling)):
        insns = [
            _frame(fid, index),
            _mem("LOAD_TILE", src.channel_slice(c0, nc), 0, y0, x0, th, tw, deps=DEP["PUSH_NEXT"], tag=index),
            isa.encode("POOL", deps=DEP["POP_PREV"] | DEP["PUSH_NEXT"], tag=index, in_addr=0, out_addr=0,
                       mult=layer.mult, in_h=th, in_w=tw, out_h=th, out_w=tw, channels=nc, kh=1, kw=1, sh=1,
                       sw=1, valid_y0=0, valid_y1=th, valid_x0=0, valid_x1=tw, shift=layer.shift, in_zp=in_zp,
                       out_zp=out_zp, clip_lo=lo, clip_hi=hi),
        ]
        out = dst.channel_slice(c0, nc)
        for dy in range(sy):
            for dx in range(sx):
                first = dy == 0 and dx == 0  # the SAVEs after the first run behind it in the save unit
                insns.append(_mem("SAVE", out, 0, y0 * sy + dy, x0 * sx + dx, th, tw,
                                  deps=DEP["POP_PREV"] if first else 0, tag=index, step=(sy, sx)))
        frames.append(b"".join(insns))
    return frames, b""


# ---------------------------------------------------------------- transposed convolution

def _phase_1d(n_in: int, k: int, s: int, p_begin: int, n_out: int, d: int):
    """One output phase d of a 1-D transposed convolution as an ordinary
    correlation: outputs o = q * s + d (q < count) equal
    sum_m x[q + m - pad_begin] * w[taps[m]] over the zero-extended input.
    Returns (count, taps, pad_begin, pad_end); taps may be empty."""
    count = -(-(n_out - d) // s)
    if count <= 0:
        return 0, [], 0, 0
    r, c = (d + p_begin) % s, (d + p_begin) // s
    j = -(-(k - r) // s) if r < k else 0
    taps = [r + (j - 1 - m) * s for m in range(j)]
    width = max(j, 1)
    pad_begin = width - 1 - c if j else -c
    pad_end = count - 1 + width - n_in - pad_begin
    return count, taps, pad_begin, pad_end


def conv_transpose_phases(layer: ir.ConvTranspose, in_shape) -> list[tuple[ir.Conv, tuple[int, int, int, int]]]:
    """The sh * sw ordinary convolutions of a transposed convolution, one per
    output phase, each with (sy, sx, dy, dx): its output pixel (q, r) is
    output pixel (q * sy + dy, r * sx + dx). Phases without taps are
    convolutions with zero weights (bias only); empty phases are left out."""
    h, w, c = in_shape
    ic, ocg, kh, kw = layer.weight.shape
    g = layer.groups
    icg, oc = ic // g, ocg * g
    sy, sx = layer.stride
    pt, pl, pb, pr = layer.pads
    oh, ow = transpose_output_hw(layer, in_shape)
    wt = layer.weight.reshape(g, icg, ocg, kh, kw).transpose(0, 2, 1, 3, 4).reshape(oc, icg, kh, kw)
    out = []
    for dy in range(sy):
        ny, ty, pby, pey = _phase_1d(h, kh, sy, pt, oh, dy)
        for dx in range(sx):
            nx, tx, pbx, pex = _phase_1d(w, kw, sx, pl, ow, dx)
            if ny == 0 or nx == 0:
                continue
            wp = np.zeros((oc, icg, max(len(ty), 1), max(len(tx), 1)), np.int8)
            if ty and tx:
                wp[:] = wt[:, :, ty][:, :, :, tx]
            phase = ir.Conv(f"{layer.name}@{dy},{dx}", layer.input, layer.output, wp, layer.bias, layer.mult,
                            layer.shift, stride=(1, 1), pads=(pby, pbx, pey, pex), groups=g, clip=layer.clip,
                            table=layer.table)
            if conv_output_shape(phase, in_shape) != (ny, nx, oc):
                raise LoweringError(f"{layer.name}: phase ({dy}, {dx}) computes "
                                    f"{conv_output_shape(phase, in_shape)}, expected {(ny, nx, oc)}")
            out.append((phase, (sy, sx, dy, dx)))
    return out


def transpose_output_hw(layer: ir.ConvTranspose, in_shape) -> tuple[int, int]:
    h, w, _ = in_shape
    _, _, kh, kw = layer.weight.shape
    sy, sx = layer.stride
    pt, pl, pb, pr = layer.pads
    return ((h - 1) * sy + kh + layer.output_padding[0] - pt - pb,
            (w - 1) * sx + kw + layer.output_padding[1] - pl - pr)


def lower_conv_transpose(layer: ir.ConvTranspose, index: int, src: View, dst: View, in_zp: int, out_zp: int,
                         const_base: int, geo: Geometry) -> tuple[list[bytes], bytes, str]:
    """Frames of every phase of a transposed convolution, saved interleaved."""
    in_shape = (src.height, src.width, src.channels)
    oh, ow = transpose_output_hw(layer, in_shape)
    if (dst.height, dst.width) != (oh, ow):
        raise LoweringError(f"{layer.name}: output view {dst} is not {oh}x{ow}")
    frames, blob, desc = [], bytearray(), []
    for phase, where in conv_transpose_phases(layer, in_shape):
        t = choose_conv_tiling(phase, in_shape, src.pixel_stride, geo)
        f, b, _ = lower_conv(phase, index, src, dst, in_zp, out_zp, const_base + len(blob), geo, tiling=t,
                             phase=where, fid0=len(frames))
        frames += f
        blob.extend(b)
        desc.append(t.describe())
    sy, sx = layer.stride
    return frames, bytes(blob), f"{sy}x{sx} phases: {desc[0] if desc else '-'}"
