"""Independent numpy golden model of the RNN core's fixed-point semantics.

Executes the formulas of the RNN section of hls/include/vfpga_isa.h directly
on whole layers (every hidden unit at once, no slices, tiles or
instructions), so tests can compare the C-simulation of hls/rnn_core.cpp with
it bit for bit. On top of the exact model it provides the float references
(ONNX LSTM / GRU semantics in float64) and a quantizer, to measure how far the
fixed-point cell is from float on the same dequantized weights.

Fixed point (see the header for the full contract):
  pre-activations Q8.15 clamped to [-2^23, 2^23 - 1]; activations Q.15 in
  [-2^15, 2^15] from a table of ``segments + 1`` knots 2^step_log2 Q.15 units
  apart, linearly interpolated; cell state c and hidden state h Q16.15 in
  int32; h requantized to int8 for the next step's matrix-vector product.

Exactness: matrix-vector products are float64 matrix products of integers
with |w * v| <= 2^14, exact for rows shorter than 2^38; the int32 wrap of the
accumulator is applied to the exact sum, which equals wrapping after every
addition. All other arithmetic is int64 with the header's bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vfpga.runtime.hw.fixed_point import quantize_multiplier
from vfpga.runtime.hw.golden import rshift_round, wrap_int32

FRAC_BITS = 15
ONE = 1 << FRAC_BITS
PRE_BITS = 24
PRE_MAX = (1 << (PRE_BITS - 1)) - 1
PRE_MIN = -(1 << (PRE_BITS - 1))
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
LSTM_GATES, GRU_GATES = 4, 3
# The board configs' table geometry (overlay/configs/*.json, rnn_core):
# 2048 segments of 2^9 Q.15 units (1/64), domain [-16, 16).
DEFAULT_SEGMENTS, DEFAULT_STEP_LOG2 = 2048, 9
# Max |act - f| over every pre-activation for the default geometry, as
# documented in vfpga_isa.h (measured: 3.07e-5 and 4.72e-5).
SIGMOID_ERROR_BOUND = 3.1e-5
TANH_ERROR_BOUND = 4.8e-5


class RnnGoldenError(ValueError):
    """Parameters outside the RNN core's contract."""


# ------------------------------------------------------------------ activations

def _sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    # exp of a non-positive argument only: no overflow warnings
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_FUNCS = {"sigmoid": _sigmoid, "tanh": np.tanh}


def act_table(kind: str, segments: int = DEFAULT_SEGMENTS, step_log2: int = DEFAULT_STEP_LOG2) -> np.ndarray:
    """The activation table the runtime loads into ACT: ``segments + 1`` int32
    words T[k] = floor(2^15 * f(x_k) + 1/2), x_k = (k * 2^step_log2 - HALF) / 2^15,
    HALF = segments << (step_log2 - 1); kind is "sigmoid" or "tanh"."""
    if kind not in _FUNCS:
        raise RnnGoldenError(f"unknown activation {kind!r}; the tables are {', '.join(_FUNCS)}")
    if step_log2 < 1 or segments < 2:
        raise RnnGoldenError("an activation table needs step_log2 >= 1 and segments >= 2")
    half = segments << (step_log2 - 1)
    x = (np.arange(segments + 1, dtype=np.float64) * (1 << step_log2) - half) / ONE
    return np.floor(_FUNCS[kind](x) * ONE + 0.5).astype(np.int32)


def act(table, pre, step_log2: int = DEFAULT_STEP_LOG2) -> np.ndarray:
    """act(T, p) of vfpga_isa.h: table interpolation of Q8.15 pre-activations
    (clamped to [PRE_MIN, PRE_MAX] first), Q.15 result in [-ONE, ONE]."""
    t = np.asarray(table, dtype=np.int64)
    segments = t.size - 1
    p = np.clip(np.asarray(pre, dtype=np.int64), PRE_MIN, PRE_MAX)
    u = p + (segments << (step_log2 - 1))
    k = np.clip(u >> step_log2, 0, segments - 1)
    f = u & ((1 << step_log2) - 1)
    y = t[k] + rshift_round((t[k + 1] - t[k]) * f, step_log2)
    y = np.where(u < 0, t[0], np.where(u >= (segments << step_log2), t[segments], y))
    return np.clip(y, -ONE, ONE)


_TABLES: dict = {}


def _table(kind, segments, step_log2):
    key = (kind, segments, step_log2)
    if key not in _TABLES:
        _TABLES[key] = act_table(kind, segments, step_log2)
    return _TABLES[key]


def sigmoid_q(pre, segments: int = DEFAULT_SEGMENTS, step_log2: int = DEFAULT_STEP_LOG2) -> np.ndarray:
    """Fixed-point sigmoid: Q8.15 pre-activation -> Q.15, with the standard table."""
    return act(_table("sigmoid", segments, step_log2), pre, step_log2)


def tanh_q(pre, segments: int = DEFAULT_SEGMENTS, step_log2: int = DEFAULT_STEP_LOG2) -> np.ndarray:
    """Fixed-point tanh: Q8.15 pre-activation -> Q.15, with the standard table."""
    return act(_table("tanh", segments, step_log2), pre, step_log2)


def activation_error(kind: str, segments: int = DEFAULT_SEGMENTS, step_log2: int = DEFAULT_STEP_LOG2,
                     chunk: int = 1 << 21) -> float:
    """max |act(T, p) / 2^15 - f(p / 2^15)| over every pre-activation p in
    [PRE_MIN, PRE_MAX] (exhaustive, 2^24 points)."""
    table = _table(kind, segments, step_log2)
    f = _FUNCS[kind]
    worst = 0.0
    for lo in range(PRE_MIN, PRE_MAX + 1, chunk):
        p = np.arange(lo, min(lo + chunk, PRE_MAX + 1), dtype=np.int64)
        err = np.abs(act(table, p, step_log2) / ONE - f(p / ONE))
        worst = max(worst, float(err.max()))
    return worst


# ----------------------------------------------------------------- arithmetic

def _check_shift(shift, what):
    s = np.asarray(shift, dtype=np.int64)
    if np.any((s < 0) | (s > 62)):
        raise RnnGoldenError(f"{what} shifts must lie in [0, 62]")
    return s


def requant_pre(acc, mult, shift) -> np.ndarray:
    """pre(acc, e) = clamp(rshift_round(acc * mult, shift), PRE_MIN, PRE_MAX)."""
    v = np.asarray(acc, dtype=np.int64) * np.asarray(mult, dtype=np.int64)
    return np.clip(rshift_round(v, _check_shift(shift, "PARAM")), PRE_MIN, PRE_MAX)


def q8(v, mult: int, shift: int, zp: int) -> np.ndarray:
    """q8(v) = clamp(zp + rshift_round(v * mult, shift), -128, 127)."""
    _check_shift(shift, "output")
    r = rshift_round(np.asarray(v, dtype=np.int64) * np.int64(mult), shift)
    return np.clip(np.int64(zp) + r, -128, 127).astype(np.int8)


def matvec(w, v, bias) -> np.ndarray:
    """RNN_MATVEC with INIT over whole rows: int32(bias + w @ v), wrapping."""
    w = np.asarray(w, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if w.shape[-1] >= 1 << 38:
        raise RnnGoldenError("rows too long for exact float64 sums")
    return wrap_int32(np.asarray(bias, dtype=np.int64) + (w @ v).astype(np.int64))


# ------------------------------------------------------------- layer parameters

@dataclass
class RnnParams:
    """The integer parameters of one RNN layer as the core sees them (gate
    order: LSTM i, o, f, c; GRU z, r, h -- the ONNX order).

    w: int8 [G*H, I], r: int8 [G*H, H]; x part {bias_x, mult_x, shift_x} and
    h part {bias_h, mult_h, shift_h}: int32 [G*H] (one PARAM entry per row);
    out_*: h (Q.15) -> int8; rh_*: r * h_{t-1} -> int8 (GRU,
    linear_before_reset = 0); sig/tanh: the ACT tables."""

    cell: str  # "lstm" or "gru"
    w: np.ndarray
    r: np.ndarray
    bias_x: np.ndarray
    mult_x: np.ndarray
    shift_x: np.ndarray
    bias_h: np.ndarray
    mult_h: np.ndarray
    shift_h: np.ndarray
    out_mult: int
    out_shift: int
    out_zp: int = 0
    linear_before_reset: int = 0
    rh_mult: int | None = None
    rh_shift: int | None = None
    rh_zp: int | None = None
    step_log2: int = DEFAULT_STEP_LOG2
    sig: np.ndarray | None = None
    tanh: np.ndarray | None = None
    # float scales kept by quantize() for dequantization (None if built by hand)
    w_scale: np.ndarray | None = None
    r_scale: np.ndarray | None = None
    x_scale: float | None = None
    x_zp: int = 0
    h_scale: float | None = None

    def __post_init__(self):
        if self.cell not in ("lstm", "gru"):
            raise RnnGoldenError(f"cell must be 'lstm' or 'gru', not {self.cell!r}")
        g = self.gates
        self.w = np.asarray(self.w, dtype=np.int8)
        self.r = np.asarray(self.r, dtype=np.int8)
        if self.w.ndim != 2 or self.w.shape[0] % g:
            raise RnnGoldenError(f"w must be [{g}*H, I], got {self.w.shape}")
        h = self.w.shape[0] // g
        if self.r.shape != (g * h, h):
            raise RnnGoldenError(f"r must be [{g}*{h}, {h}], got {self.r.shape}")
        for name in ("bias_x", "mult_x", "shift_x", "bias_h", "mult_h", "shift_h"):
            a = np.asarray(getattr(self, name), dtype=np.int32).reshape(-1)
            if a.size != g * h:
                raise RnnGoldenError(f"{name} needs {g * h} entries, got {a.size}")
            setattr(self, name, a)
        _check_shift(self.shift_x, "x part")
        _check_shift(self.shift_h, "h part")
        _check_shift(self.out_shift, "output")
        if self.sig is None:
            self.sig = act_table("sigmoid", DEFAULT_SEGMENTS, self.step_log2)
        if self.tanh is None:
            self.tanh = act_table("tanh", DEFAULT_SEGMENTS, self.step_log2)
        if self.rh_mult is None:
            self.rh_mult, self.rh_shift, self.rh_zp = self.out_mult, self.out_shift, self.out_zp
        _check_shift(self.rh_shift, "r*h")

    @property
    def gates(self) -> int:
        return LSTM_GATES if self.cell == "lstm" else GRU_GATES

    @property
    def hidden(self) -> int:
        return self.w.shape[0] // self.gates

    @property
    def input_size(self) -> int:
        return self.w.shape[1]

    def h_to_q8(self, h) -> np.ndarray:
        """h (Q.15) requantized to int8 as RNN_GATES does."""
        return q8(h, self.out_mult, self.out_shift, self.out_zp)


def _parts(p: RnnParams, acc_x, acc_h):
    """ax, ah: the Q8.15 terms [G, H] of every gate."""
    g, h = p.gates, p.hidden
    ax = requant_pre(acc_x, p.mult_x, p.shift_x).reshape(g, h)
    ah = requant_pre(acc_h, p.mult_h, p.shift_h).reshape(g, h)
    return ax, ah


def _act(p: RnnParams, kind, pre):
    return act(p.sig if kind == "sigmoid" else p.tanh, pre, p.step_log2)


# -------------------------------------------------------------------- one step

def lstm_step(p: RnnParams, x_q, h_q, c):
    """One LSTM timestep. x_q: int8 [I], h_q: int8 [H] (h_{t-1} as the core's
    matrix-vector array sees it), c: int32 Q.15 [H]. Returns
    (h_q_t int8 [H], h_t int32 Q.15 [H], c_t int32 Q.15 [H])."""
    if p.cell != "lstm":
        raise RnnGoldenError("lstm_step needs LSTM parameters")
    acc_x = matvec(p.w, np.asarray(x_q, dtype=np.int8), p.bias_x)
    acc_h = matvec(p.r, np.asarray(h_q, dtype=np.int8), p.bias_h)
    ax, ah = _parts(p, acc_x, acc_h)
    pre = np.clip(ax + ah, PRE_MIN, PRE_MAX)
    i = _act(p, "sigmoid", pre[0])
    o = _act(p, "sigmoid", pre[1])
    f = _act(p, "sigmoid", pre[2])
    g = _act(p, "tanh", pre[3])
    cp = np.asarray(c, dtype=np.int64)
    c_t = np.clip(rshift_round(f * cp + i * g, FRAC_BITS), INT32_MIN, INT32_MAX)
    h_t = rshift_round(o * _act(p, "tanh", c_t), FRAC_BITS)
    return p.h_to_q8(h_t), h_t.astype(np.int32), c_t.astype(np.int32)


def gru_step(p: RnnParams, x_q, h_q, h):
    """One GRU timestep (p.linear_before_reset selects the variant). x_q: int8
    [I], h_q: int8 [H] (h_{t-1} for the array), h: int32 Q.15 [H] (h_{t-1}).
    Returns (h_q_t int8 [H], h_t int32 Q.15 [H])."""
    if p.cell != "gru":
        raise RnnGoldenError("gru_step needs GRU parameters")
    hh = p.hidden
    hp = np.asarray(h, dtype=np.int64)
    acc_x = matvec(p.w, np.asarray(x_q, dtype=np.int8), p.bias_x)
    if p.linear_before_reset:
        acc_h = matvec(p.r, np.asarray(h_q, dtype=np.int8), p.bias_h)
        ax, ah = _parts(p, acc_x, acc_h)
        pre = np.clip(ax + ah, PRE_MIN, PRE_MAX)
        r = _act(p, "sigmoid", pre[1])
        pn = np.clip(ax[2] + rshift_round(r * ah[2], FRAC_BITS), PRE_MIN, PRE_MAX)
    else:
        # first half (GRU_RH): r from gates z, r of R h; then R_h (r * h)
        acc_zr = matvec(p.r[:2 * hh], np.asarray(h_q, dtype=np.int8), p.bias_h[:2 * hh])
        ax_r = requant_pre(acc_x[hh:2 * hh], p.mult_x[hh:2 * hh], p.shift_x[hh:2 * hh])
        ah_r = requant_pre(acc_zr[hh:], p.mult_h[hh:2 * hh], p.shift_h[hh:2 * hh])
        r = _act(p, "sigmoid", np.clip(ax_r + ah_r, PRE_MIN, PRE_MAX))
        rh_q = q8(rshift_round(r * hp, FRAC_BITS), p.rh_mult, p.rh_shift, p.rh_zp)
        acc_n = matvec(p.r[2 * hh:], rh_q, p.bias_h[2 * hh:])
        ax, ah = _parts(p, acc_x, np.concatenate([acc_zr, acc_n]))
        pre = np.clip(ax + ah, PRE_MIN, PRE_MAX)
        pn = pre[2]
    z = _act(p, "sigmoid", pre[0])
    n = _act(p, "tanh", pn)
    h_t = np.clip(n + rshift_round(z * (hp - n), FRAC_BITS), INT32_MIN, INT32_MAX)
    return p.h_to_q8(h_t), h_t.astype(np.int32)


# ------------------------------------------------------------------ sequences

def lstm_sequence(p: RnnParams, xs_q, h0=None, c0=None):
    """LSTM over xs_q int8 [T, I] from h0, c0 (int32 Q.15 [H], zeros if None).
    Returns (y_q int8 [T, H], h int32 Q.15 [T, H], c_T int32 Q.15 [H])."""
    hh = p.hidden
    h = np.zeros(hh, np.int32) if h0 is None else np.asarray(h0, dtype=np.int32)
    c = np.zeros(hh, np.int32) if c0 is None else np.asarray(c0, dtype=np.int32)
    h_q = p.h_to_q8(h)
    xs_q = np.asarray(xs_q, dtype=np.int8)
    ys, hs = [], []
    for x in xs_q:
        h_q, h, c = lstm_step(p, x, h_q, c)
        ys.append(h_q)
        hs.append(h)
    return np.array(ys, np.int8).reshape(-1, hh), np.array(hs, np.int32).reshape(-1, hh), c


def gru_sequence(p: RnnParams, xs_q, h0=None):
    """GRU over xs_q int8 [T, I] from h0 (int32 Q.15 [H], zeros if None).
    Returns (y_q int8 [T, H], h int32 Q.15 [T, H])."""
    hh = p.hidden
    h = np.zeros(hh, np.int32) if h0 is None else np.asarray(h0, dtype=np.int32)
    h_q = p.h_to_q8(h)
    ys, hs = [], []
    for x in np.asarray(xs_q, dtype=np.int8):
        h_q, h = gru_step(p, x, h_q, h)
        ys.append(h_q)
        hs.append(h)
    return np.array(ys, np.int8).reshape(-1, hh), np.array(hs, np.int32).reshape(-1, hh)


# ------------------------------------------------------------------ quantizer

def _per_row(w):
    w = np.asarray(w, dtype=np.float64)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _bias(b, scale, zp, wq):
    b32 = np.clip(np.round(np.asarray(b, dtype=np.float64) / scale), INT32_MIN, INT32_MAX).astype(np.int64)
    return wrap_int32(b32 - np.int64(zp) * wq.astype(np.int64).sum(axis=1))


def _multipliers(ms):
    pairs = [quantize_multiplier(float(m)) for m in ms]
    return np.array([a for a, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32)


def quantize(cell: str, w, r, wb=None, rb=None, x_scale: float = 1 / 127, x_zp: int = 0,
             h_scale: float = 1 / 128, h_zp: int = 0, linear_before_reset: int = 0,
             step_log2: int = DEFAULT_STEP_LOG2) -> RnnParams:
    """Integer parameters for float weights in ONNX layout (w [G*H, I],
    r [G*H, H], biases [G*H]): weights per row symmetric int8, x with
    (x_scale, x_zp), h with (h_scale, h_zp). Each part's PARAM entry maps its
    accumulator to Q8.15 (mult/shift of row_scale * vector_scale * 2^15) and
    carries its bias with the vector zero point folded in."""
    g = LSTM_GATES if cell == "lstm" else GRU_GATES
    w = np.asarray(w, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    hh = r.shape[1]
    wb = np.zeros(g * hh) if wb is None else np.asarray(wb, dtype=np.float64)
    rb = np.zeros(g * hh) if rb is None else np.asarray(rb, dtype=np.float64)
    wq, ws = _per_row(w)
    rq, rs = _per_row(r)
    mx, sx = _multipliers(ws * x_scale * ONE)
    mh, sh = _multipliers(rs * h_scale * ONE)
    om, osh = quantize_multiplier(1.0 / (ONE * h_scale))
    return RnnParams(cell=cell, w=wq, r=rq, bias_x=_bias(wb, ws * x_scale, x_zp, wq), mult_x=mx, shift_x=sx,
                     bias_h=_bias(rb, rs * h_scale, h_zp, rq), mult_h=mh, shift_h=sh, out_mult=om, out_shift=osh,
                     out_zp=h_zp, linear_before_reset=int(bool(linear_before_reset)), step_log2=step_log2,
                     w_scale=ws, r_scale=rs, x_scale=x_scale, x_zp=x_zp, h_scale=h_scale)


def quantize_input(x, scale: float, zp: int = 0) -> np.ndarray:
    """float -> int8 with (scale, zp), round half to even, saturating."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) / scale) + zp, -128, 127).astype(np.int8)


# ------------------------------------------------------------ float reference

def lstm_float(x, w, r, wb=None, rb=None, h0=None, c0=None):
    """ONNX LSTM (forward, default activations, no peepholes) in float64.
    x [T, I], w [4H, I], r [4H, H] in iofc order. Returns (h [T, H], c_T)."""
    hh = r.shape[1]
    wb = np.zeros(4 * hh) if wb is None else wb
    rb = np.zeros(4 * hh) if rb is None else rb
    h = np.zeros(hh) if h0 is None else np.asarray(h0, dtype=np.float64)
    c = np.zeros(hh) if c0 is None else np.asarray(c0, dtype=np.float64)
    out = []
    for xt in np.asarray(x, dtype=np.float64):
        a = (w @ xt + wb + r @ h + rb).reshape(4, hh)
        i, o, f, g = _sigmoid(a[0]), _sigmoid(a[1]), _sigmoid(a[2]), np.tanh(a[3])
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.array(out).reshape(-1, hh), c


def gru_float(x, w, r, wb=None, rb=None, h0=None, linear_before_reset: int = 0):
    """ONNX GRU (forward, default activations) in float64. x [T, I],
    w [3H, I], r [3H, H] in zrh order. Returns h [T, H]."""
    hh = r.shape[1]
    wb = np.zeros(3 * hh) if wb is None else wb
    rb = np.zeros(3 * hh) if rb is None else rb
    h = np.zeros(hh) if h0 is None else np.asarray(h0, dtype=np.float64)
    out = []
    for xt in np.asarray(x, dtype=np.float64):
        ax = (w @ xt + wb).reshape(3, hh)
        z = _sigmoid(ax[0] + r[:hh] @ h + rb[:hh])
        rr = _sigmoid(ax[1] + r[hh:2 * hh] @ h + rb[hh:2 * hh])
        if linear_before_reset:
            n = np.tanh(ax[2] + rr * (r[2 * hh:] @ h + rb[2 * hh:]))
        else:
            n = np.tanh(ax[2] + r[2 * hh:] @ (rr * h) + rb[2 * hh:])
        h = (1 - z) * n + z * h
        out.append(h)
    return np.array(out).reshape(-1, hh)


def compare(reference, got) -> dict:
    """max absolute error and cosine similarity of two arrays (flattened)."""
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(got, dtype=np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b) / denom if denom > 0 else float(np.array_equal(a, b))
    return {"max_abs": float(np.abs(a - b).max()) if a.size else 0.0, "cosine": cosine}


def float_accuracy(cell: str, hidden: int, input_size: int, steps: int, seed: int = 0,
                   linear_before_reset: int = 0, h_scale: float | None = None) -> dict:
    """Fixed-point layer vs the float layer on the same dequantized weights
    and inputs, random weights U(-1/sqrt(H), 1/sqrt(H)) (the PyTorch/ONNX
    initialisation range), inputs U(-1, 1). h_scale is the int8 scale of h
    (zero point 0); None calibrates it as a static quantizer would, from the
    float run: max |h| / 127 (1/128 when |h| reaches 1). Returns compare()
    figures for the Q.15 hidden state ("state") and for the dequantized int8
    outputs ("output"), over all timesteps."""
    rng = np.random.default_rng(seed)
    g = LSTM_GATES if cell == "lstm" else GRU_GATES
    k = 1.0 / math.sqrt(hidden)
    w = rng.uniform(-k, k, (g * hidden, input_size))
    r = rng.uniform(-k, k, (g * hidden, hidden))
    wb = rng.uniform(-k, k, g * hidden)
    rb = rng.uniform(-k, k, g * hidden)
    x = rng.uniform(-1, 1, (steps, input_size))
    x_scale = 1.0 / 127
    xq = quantize_input(x, x_scale)
    xd = xq.astype(np.float64) * x_scale
    if h_scale is None:
        p0 = quantize(cell, w, r, wb, rb, x_scale=x_scale, linear_before_reset=linear_before_reset)
        wd0 = p0.w.astype(np.float64) * p0.w_scale[:, None]
        rd0 = p0.r.astype(np.float64) * p0.r_scale[:, None]
        calib = (lstm_float(xd, wd0, rd0, wb, rb)[0] if cell == "lstm"
                 else gru_float(xd, wd0, rd0, wb, rb, linear_before_reset=linear_before_reset))
        h_scale = min(float(np.abs(calib).max()) / 127, 1.0 / 128) or 1.0 / 128
    p = quantize(cell, w, r, wb, rb, x_scale=x_scale, h_scale=h_scale, linear_before_reset=linear_before_reset)
    # the float model sees the same (dequantized) weights and inputs
    wd = p.w.astype(np.float64) * p.w_scale[:, None]
    rd = p.r.astype(np.float64) * p.r_scale[:, None]
    if cell == "lstm":
        yq, hq, _ = lstm_sequence(p, xq)
        ref, _ = lstm_float(xd, wd, rd, wb, rb)
    else:
        yq, hq = gru_sequence(p, xq)
        ref = gru_float(xd, wd, rd, wb, rb, linear_before_reset=linear_before_reset)
    state = compare(ref, hq / ONE)
    output = compare(ref, (yq.astype(np.float64) - p.out_zp) * p.h_scale)
    return {"cell": cell, "hidden": hidden, "input": input_size, "steps": steps,
            "linear_before_reset": linear_before_reset, "h_scale": h_scale, "state": state, "output": output}
