"""Independent numpy golden model of the accelerator's integer semantics.

Layer-level and whole-tensor: it executes the formulas of :mod:`vfpga.runtime.compiler.ir`
(and the arithmetic contract at the top of hls/include/vfpga_isa.h) directly on
int8 HWC arrays, without tiling, instruction lowering or any code shared with
the compiler or the C++. Tests compare the C-simulation and the compiler's
output against it, so it favours obviously-correct formulas over cleverness;
numpy vectorisation keeps a ResNet-50-sized layer well under a second.

Exactness: convolution products are summed with float64 matrix products
(BLAS). Every operand is an integer with |x - zp| <= 255 and |w| <= 128, so
every partial sum is bounded by 32640 * K (K = cin_g * kh * kw) and stays far
below 2**53 -- float64 is exact here, whatever order BLAS adds in. The
int32 wrap-around of the accumulator is applied to the exact sum, which is the
same as wrapping after every addition (addition modulo 2**32 is associative).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

INT8_MIN, INT8_MAX = -128, 127

# Largest K the float64 sums stay exact for (32640 * K < 2**53), with margin.
_MAX_EXACT_K = 1 << 36
# Bytes of float64 im2col columns materialised at once (bounds peak memory).
_COLS_BUDGET = 48 << 20


class GoldenError(ValueError):
    """A layer whose parameters lie outside the accelerator's contract."""


# ---------------------------------------------------------------- arithmetic

def rshift_round(v, s):
    """s == 0 ? v : (v + (1 << (s - 1))) >> s on int64, arithmetic shift
    (rounds half towards +infinity). Elementwise; s in [0, 62] and |v| <= 2**62
    (the ISA's ranges, which keep the addition from overflowing)."""
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    if np.any((s < 0) | (s > 62)):
        raise GoldenError(f"shift must lie in [0, 62], got {np.unique(s[(s < 0) | (s > 62)])}")
    half = np.left_shift(np.int64(1), np.maximum(s - 1, 0))
    return np.where(s == 0, v, (v + half) >> s)


def rdiv(n, d):
    """sign(n) * ((|n| + d // 2) // d): integer division rounding half away
    from zero. Elementwise; d >= 1."""
    n = np.asarray(n, dtype=np.int64)
    d = np.asarray(d, dtype=np.int64)
    if np.any(d < 1):
        raise GoldenError("rdiv needs a divisor >= 1")
    q = (np.abs(n) + d // 2) // d
    return np.where(n < 0, -q, q)


def wrap_int32(v):
    """v modulo 2**32 as a signed int32 value (two's complement wrap)."""
    v = np.asarray(v, dtype=np.int64)
    return (((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)).astype(np.int32)


def _clamp_int8(v, clip) -> np.ndarray:
    lo, hi = int(clip[0]), int(clip[1])
    if not INT8_MIN <= lo <= hi <= INT8_MAX:
        raise GoldenError(f"clip bounds {clip} must satisfy -128 <= lo <= hi <= 127")
    return np.clip(v, lo, hi).astype(np.int8)


def _hwc(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3:
        raise GoldenError(f"{what} must be an HWC array, got shape {x.shape}")
    if x.dtype != np.int8:
        raise GoldenError(f"{what} must be int8, got {x.dtype}")
    return x


def _zp(z, what: str) -> int:
    z = int(z)
    if not INT8_MIN <= z <= INT8_MAX:
        raise GoldenError(f"{what} {z} is not an int8 zero point")
    return z


def _out_extent(n: int, lo: int, hi: int, k: int, s: int, layer_name: str) -> int:
    if min(lo, hi) < 0 or k < 1 or s < 1:
        raise GoldenError(f"{layer_name}: pads must be >= 0, kernel and stride >= 1")
    if n + lo + hi < k:
        raise GoldenError(f"{layer_name}: kernel {k} larger than the padded input {n + lo + hi}")
    return (n + lo + hi - k) // s + 1


# ---------------------------------------------------------------- layers

def conv(x, layer, in_zp: int, out_zp: int) -> np.ndarray:
    """Grouped 2-D convolution of an ir.Conv on int8 HWC x:
    clamp(out_zp + rshift_round(wrap32(bias + sum((x - in_zp) * w)) * mult, shift), clip)
    with x padded by real zeros (q = in_zp)."""
    x = _hwc(x, f"{layer.name} input")
    in_zp, out_zp = _zp(in_zp, "in_zp"), _zp(out_zp, "out_zp")
    w = np.asarray(layer.weight)
    if w.ndim != 4:
        raise GoldenError(f"{layer.name}: weight must be [OC, IC/groups, KH, KW], got {w.shape}")
    oc, cin_g, kh, kw = w.shape
    g = int(layer.groups)
    h, wd, c = x.shape
    if g < 1 or oc % g or c != cin_g * g:
        raise GoldenError(f"{layer.name}: {c} input channels, weight {w.shape} and groups {g} disagree")
    cout_g = oc // g
    k = cin_g * kh * kw
    if k > _MAX_EXACT_K:
        raise GoldenError(f"{layer.name}: reduction of {k} terms is beyond the exact float64 range")
    bias = np.asarray(layer.bias, dtype=np.int64).reshape(oc)
    mult = np.asarray(layer.mult, dtype=np.int64).reshape(oc)
    shift = np.asarray(layer.shift, dtype=np.int64).reshape(oc)
    sh, sw = (int(v) for v in layer.stride)
    pt, pl, pb, pr = (int(v) for v in layer.pads)
    oh = _out_extent(h, pt, pb, kh, sh, layer.name)
    ow = _out_extent(wd, pl, pr, kw, sw, layer.name)

    # Real-valued zero padding: x - in_zp padded with 0.
    xp = np.pad(x.astype(np.float64) - in_zp, ((pt, pb), (pl, pr), (0, 0)))
    win = sliding_window_view(xp, (kh, kw), axis=(0, 1))[::sh, ::sw]  # [oh, ow, C, kh, kw]
    # [G, K, cout_g] with K ordered (i, ky, kx) like the window's (C, kh, kw) tail.
    wmat = w.astype(np.float64).reshape(g, cout_g, k).transpose(0, 2, 1)

    sums = np.empty((oh, ow, oc), dtype=np.int64)
    rows = max(1, _COLS_BUDGET // max(1, ow * c * kh * kw * 8))
    for r0 in range(0, oh, rows):
        r1 = min(oh, r0 + rows)
        p = (r1 - r0) * ow
        cols = win[r0:r1].reshape(p, g, k)  # copies: the window view is strided
        if g == 1:
            acc = cols[:, 0, :] @ wmat[0]
        else:
            acc = np.matmul(cols.transpose(1, 0, 2), wmat).transpose(1, 0, 2).reshape(p, oc)
        sums[r0:r1] = acc.reshape(r1 - r0, ow, oc).astype(np.int64)

    acc32 = wrap_int32(sums + bias)
    y = out_zp + rshift_round(acc32.astype(np.int64) * mult, shift)
    return _apply_table(_clamp_int8(y, layer.clip), getattr(layer, "table", None))


def _apply_table(y: np.ndarray, table) -> np.ndarray:
    """An activation table after the clamp: table[y + 128] (None: y)."""
    if table is None:
        return y
    t = np.asarray(table)
    if t.shape != (256,) or t.dtype != np.int8:
        raise GoldenError(f"an activation table is int8 [256], got {t.dtype} {t.shape}")
    return t[y.astype(np.int64) + 128]


def conv_transpose(x, layer, in_zp: int, out_zp: int) -> np.ndarray:
    """Transposed convolution of an ir.ConvTranspose on int8 HWC x, by its
    definition (every input pixel scatters its kernel-sized contribution):
    full[oc, iy*sh + ky, ix*sw + kx] += (x - in_zp)[ic, iy, ix] * w[ic, oc_g, ky, kx],
    cropped by pads (output_padding adds rows/columns at the bottom/right),
    then bias, int32 wrap, requantization and clamp as conv."""
    x = _hwc(x, f"{layer.name} input")
    in_zp, out_zp = _zp(in_zp, "in_zp"), _zp(out_zp, "out_zp")
    w = np.asarray(layer.weight).astype(np.int64)
    ic, ocg, kh, kw = w.shape
    g = int(layer.groups)
    h, wd, c = x.shape
    if c != ic or ic % g:
        raise GoldenError(f"{layer.name}: {c} input channels, weight {w.shape} and groups {g} disagree")
    oc = ocg * g
    icg = ic // g
    sh, sw = (int(v) for v in layer.stride)
    pt, pl, pb, pr = (int(v) for v in layer.pads)
    oph, opw = (int(v) for v in layer.output_padding)
    fh, fw = (h - 1) * sh + kh + oph, (wd - 1) * sw + kw + opw
    full = np.zeros((fh, fw, oc), dtype=np.int64)
    xs = x.astype(np.int64) - in_zp
    for gi in range(g):
        xg = xs[:, :, gi * icg:(gi + 1) * icg].reshape(h * wd, icg)
        for ky in range(kh):
            for kx in range(kw):
                contrib = (xg @ w[gi * icg:(gi + 1) * icg, :, ky, kx]).reshape(h, wd, ocg)
                full[ky:ky + (h - 1) * sh + 1:sh, kx:kx + (wd - 1) * sw + 1:sw, gi * ocg:(gi + 1) * ocg] += contrib
    oh, ow = fh - pt - pb, fw - pl - pr
    if oh < 1 or ow < 1:
        raise GoldenError(f"{layer.name}: pads {layer.pads} leave no output")
    sums = full[pt:pt + oh, pl:pl + ow]
    bias = np.asarray(layer.bias, dtype=np.int64).reshape(oc)
    mult = np.asarray(layer.mult, dtype=np.int64).reshape(oc)
    shift = np.asarray(layer.shift, dtype=np.int64).reshape(oc)
    acc32 = wrap_int32(sums + bias)
    y = out_zp + rshift_round(acc32.astype(np.int64) * mult, shift)
    return _apply_table(_clamp_int8(y, layer.clip), getattr(layer, "table", None))


def lut(x, layer) -> np.ndarray:
    """An ir.Lut: table[x + 128]."""
    return _apply_table(_hwc(x, f"{layer.name} input"), layer.table)


def mul(a, b, layer, a_zp: int, b_zp: int, out_zp: int) -> np.ndarray:
    """Element-wise product of an ir.Mul (b [1, 1, C] broadcast when layer.broadcast):
    clamp(out_zp + rshift_round((a - a_zp) * (b - b_zp) * mult, shift), clip)."""
    a = _hwc(a, f"{layer.name} input a")
    b = _hwc(b, f"{layer.name} input b")
    want = (1, 1, a.shape[2]) if layer.broadcast else a.shape
    if b.shape != want:
        raise GoldenError(f"{layer.name}: operand b has shape {b.shape}, expected {want}")
    a_zp, b_zp, out_zp = _zp(a_zp, "a_zp"), _zp(b_zp, "b_zp"), _zp(out_zp, "out_zp")
    v = (a.astype(np.int64) - a_zp) * (b.astype(np.int64) - b_zp) * int(layer.mult)
    return _clamp_int8(out_zp + rshift_round(v, int(layer.shift)), layer.clip)


def linear_axis(n: int, s: int, transform: str):
    """Bilinear taps of one axis upsampled s times: (i0, i1, w0, w1, D) per
    output index, the source coordinate clamped to [0, n - 1] (ONNX Resize,
    mode linear)."""
    d = 2 * s if transform == "half_pixel" else s
    o = np.arange(n * s, dtype=np.int64)
    num = 2 * o + 1 - s if transform == "half_pixel" else o  # coordinate * D
    num = np.clip(num, 0, (n - 1) * d)
    i0 = num // d
    a = num - i0 * d
    return i0, np.minimum(i0 + 1, n - 1), d - a, a, d


def upsample(x, layer, in_zp: int, out_zp: int) -> np.ndarray:
    """Upsampling of an ir.Upsample. nearest: each input pixel, requantized
    as a 1x1 pool, repeated sy x sx times; linear: the bilinear sum of the
    ir.Upsample docstring."""
    x = _hwc(x, f"{layer.name} input")
    if getattr(layer, "mode", "nearest") == "linear":
        sy, sx = (int(v) for v in layer.scale)
        y0, y1, wy0, wy1, _ = linear_axis(x.shape[0], sy, layer.transform)
        x0, x1, wx0, wx1, _ = linear_axis(x.shape[1], sx, layer.transform)
        v = x.astype(np.int64) - int(in_zp)
        acc = (wy0[:, None, None] * (wx0[None, :, None] * v[y0][:, x0] + wx1[None, :, None] * v[y0][:, x1])
               + wy1[:, None, None] * (wx0[None, :, None] * v[y1][:, x0] + wx1[None, :, None] * v[y1][:, x1]))
        return _clamp_int8(int(out_zp) + rshift_round(acc * int(layer.mult), int(layer.shift)), layer.clip)
    one = pool(x, _OnePixel(layer), in_zp, out_zp)
    sy, sx = (int(v) for v in layer.scale)
    if sy < 1 or sx < 1:
        raise GoldenError(f"{layer.name}: upsampling factors {layer.scale} must be >= 1")
    return np.repeat(np.repeat(one, sy, axis=0), sx, axis=1)


class _OnePixel:
    """The 1x1 max pool that requantizes one pixel (upsample's arithmetic)."""

    def __init__(self, layer):
        self.name, self.mode, self.kernel, self.stride, self.pads = layer.name, "max", (1, 1), (1, 1), (0, 0, 0, 0)
        self.count_include_pad, self.mult, self.shift, self.clip = False, layer.mult, layer.shift, layer.clip


def pool(x, layer, in_zp: int, out_zp: int) -> np.ndarray:
    """Max/average pooling of an ir.Pool on int8 HWC x. Only window positions
    inside the unpadded input are valid:
      max: v = max(x - in_zp) over valid positions (0 if none), count = 1
      avg: v = sum(x - in_zp), count = kh*kw if count_include_pad else #valid
      y = clamp(out_zp + rdiv(v * mult, count << shift), clip); clamp(out_zp) if count == 0."""
    x = _hwc(x, f"{layer.name} input")
    in_zp, out_zp = _zp(in_zp, "in_zp"), _zp(out_zp, "out_zp")
    if layer.mode not in ("max", "avg"):
        raise GoldenError(f"{layer.name}: pooling mode {layer.mode!r} is neither 'max' nor 'avg'")
    shift, mult = int(layer.shift), int(layer.mult)
    if not 0 <= shift <= 30:
        raise GoldenError(f"{layer.name}: pooling shift {shift} outside [0, 30]")
    kh, kw = (int(v) for v in layer.kernel)
    sh, sw = (int(v) for v in layer.stride)
    pt, pl, pb, pr = (int(v) for v in layer.pads)
    h, wd, c = x.shape
    _out_extent(h, pt, pb, kh, sh, layer.name)
    _out_extent(wd, pl, pr, kw, sw, layer.name)

    pads = ((pt, pb), (pl, pr))
    valid = np.pad(np.ones((h, wd), dtype=np.int64), pads)
    nvalid = sliding_window_view(valid, (kh, kw))[::sh, ::sw].sum(axis=(-2, -1))[:, :, None]  # [oh, ow, 1]
    xs = x.astype(np.int64) - in_zp
    if layer.mode == "max":
        # Below any x - in_zp (>= -255): padding never wins a max over a valid position.
        xp = np.pad(xs, pads + ((0, 0),), constant_values=-(1 << 20))
        v = sliding_window_view(xp, (kh, kw), axis=(0, 1))[::sh, ::sw].max(axis=(-2, -1))
        v = np.where(nvalid > 0, v, 0)
        count = np.ones_like(nvalid)
    else:
        xp = np.pad(xs, pads + ((0, 0),))
        v = sliding_window_view(xp, (kh, kw), axis=(0, 1))[::sh, ::sw].sum(axis=(-2, -1))
        count = np.full_like(nvalid, kh * kw) if layer.count_include_pad else nvalid
    safe = np.maximum(count, 1) << shift
    y = np.where(count > 0, out_zp + rdiv(v * mult, safe), out_zp)
    return _clamp_int8(y, layer.clip)


def add(a, b, layer, a_zp: int, b_zp: int, out_zp: int) -> np.ndarray:
    """Element-wise sum of an ir.Add with one shared shift:
    clamp(out_zp + rshift_round((a - a_zp) * a_mult + (b - b_zp) * b_mult, shift), clip)."""
    a = _hwc(a, f"{layer.name} input a")
    b = _hwc(b, f"{layer.name} input b")
    if a.shape != b.shape:
        raise GoldenError(f"{layer.name}: operand shapes {a.shape} and {b.shape} differ")
    a_zp, b_zp, out_zp = _zp(a_zp, "a_zp"), _zp(b_zp, "b_zp"), _zp(out_zp, "out_zp")
    v = (a.astype(np.int64) - a_zp) * int(layer.a_mult) + (b.astype(np.int64) - b_zp) * int(layer.b_mult)
    return _clamp_int8(out_zp + rshift_round(v, int(layer.shift)), layer.clip)


def concat(xs, layer, tins=None, tout=None) -> np.ndarray:
    """Channel concatenation of an ir.Concat (HWC last axis). The inputs must
    carry the output's quantization (checked when tensors are given)."""
    xs = [_hwc(x, f"{layer.name} input {k}") for k, x in enumerate(xs)]
    if len({x.shape[:2] for x in xs}) != 1:
        raise GoldenError(f"{layer.name}: inputs of different spatial size {[x.shape for x in xs]}")
    if tins is not None and tout is not None:
        for t in tins:
            if (t.scale, t.zero_point) != (tout.scale, tout.zero_point):
                raise GoldenError(
                    f"{layer.name}: input {t.name} is quantized ({t.scale}, {t.zero_point}), the output "
                    f"({tout.scale}, {tout.zero_point}): a Concat moves no data, it cannot requantize"
                )
    return np.concatenate(xs, axis=2)


_CPU_SESSIONS: dict = {}


def cpu_op(layer, xs) -> list[np.ndarray]:
    """Runs an ir.CpuOp: its ONNX model on onnxruntime (CPU, graph
    optimizations off, i.e. the QDQ graph's own semantics), inputs given and
    outputs returned as HWC arrays (int8, or float32 for a float output)."""
    import onnxruntime as ort

    key = (layer.name, hash(layer.model))
    sess = _CPU_SESSIONS.get(key)
    if sess is None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        sess = ort.InferenceSession(layer.model, opts, providers=["CPUExecutionProvider"])
        if len(_CPU_SESSIONS) > 64:
            _CPU_SESSIONS.clear()
        _CPU_SESSIONS[key] = sess
    feeds = {}
    for info, x in zip(sess.get_inputs(), xs):
        x = np.asarray(x)
        if x.ndim != 3:
            raise GoldenError(f"{layer.name}: input {info.name} must be HWC, got {x.shape}")
        nchw = np.ascontiguousarray(x.transpose(2, 0, 1))[None]
        feeds[info.name] = nchw.reshape([int(d) for d in info.shape])  # [1, K] flattens NCHW order
    outs = []
    for arr in sess.run(None, feeds):
        arr = np.asarray(arr)
        if arr.ndim == 4 and arr.shape[0] == 1:
            outs.append(np.ascontiguousarray(arr[0].transpose(1, 2, 0)))
        elif arr.ndim == 2 and arr.shape[0] == 1:
            outs.append(arr.reshape(1, 1, -1))
        else:
            raise GoldenError(f"{layer.name}: output of shape {arr.shape} has no HWC form")
    return outs


# ---------------------------------------------------------------- graphs

def run_graph(graph, x_q) -> dict[str, np.ndarray]:
    """Executes an ir.Graph. x_q: the int8 HWC input (graphs with one input)
    or a dict {input name: array}. Returns every tensor by name, inputs
    included, so callers can compare any intermediate layer."""
    if isinstance(x_q, dict):
        values = dict(x_q)
        missing = [n for n in graph.inputs if n not in values]
        if missing:
            raise GoldenError(f"no value for graph input(s) {', '.join(missing)}")
    else:
        if len(graph.inputs) != 1:
            raise GoldenError(f"graph has inputs {graph.inputs}; pass a dict of arrays")
        values = {graph.inputs[0]: x_q}
    for name in graph.inputs:
        arr = _hwc(values[name], f"graph input {name}")
        want = tuple(graph.tensors[name].shape)
        if arr.shape != want:
            raise GoldenError(f"graph input {name} has shape {arr.shape}, the graph says {want}")

    def zp(name):
        return graph.tensors[name].zero_point

    def out_zp(layer):  # a layer with an activation table requantizes to its own zero point
        z = getattr(layer, "requant_zp", None)
        return zp(layer.output) if z is None else z

    for layer in graph.layers:
        srcs = graph.layer_inputs(layer)
        absent = [s for s in srcs if s not in values]
        if absent:
            raise GoldenError(f"layer {layer.name} reads {', '.join(absent)} before it is produced")
        if layer.kind == "conv":
            out = conv(values[layer.input], layer, zp(layer.input), out_zp(layer))
        elif layer.kind == "pool":
            out = pool(values[layer.input], layer, zp(layer.input), zp(layer.output))
        elif layer.kind == "add":
            a, b = layer.inputs
            out = add(values[a], values[b], layer, zp(a), zp(b), zp(layer.output))
        elif layer.kind == "mul":
            a, b = layer.inputs
            out = mul(values[a], values[b], layer, zp(a), zp(b), zp(layer.output))
        elif layer.kind == "lut":
            out = lut(values[layer.input], layer)
        elif layer.kind == "upsample":
            out = upsample(values[layer.input], layer, zp(layer.input), zp(layer.output))
        elif layer.kind == "convtranspose":
            out = conv_transpose(values[layer.input], layer, zp(layer.input), out_zp(layer))
        elif layer.kind == "concat":
            out = concat([values[i] for i in layer.inputs], layer, [graph.tensors[i] for i in layer.inputs],
                         graph.tensors[layer.output])
        elif layer.kind == "cpu":
            outs = cpu_op(layer, [values[i] for i in layer.inputs])
            for name, arr in zip(layer.outputs, outs):
                want = tuple(graph.tensors[name].shape)
                if arr.shape != want:
                    raise GoldenError(f"CPU op {layer.name} produces {name} of {arr.shape}, the graph says {want}")
                values[name] = arr
            continue
        else:
            raise GoldenError(f"layer {layer.name}: unknown kind {layer.kind!r}")
        want = tuple(graph.tensors[layer.output].shape)
        if out.shape != want:
            raise GoldenError(f"layer {layer.name} produces {out.shape}, the graph says {want}")
        values[layer.output] = out
    return values
