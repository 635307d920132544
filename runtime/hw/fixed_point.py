"""Fixed-point requantization helpers shared by the front end and lowering.

A real multiplier M > 0 is represented as (mult, shift) with
M ~= mult * 2**-shift; see vfpga_isa.h for how the core applies them.
"""

from __future__ import annotations

import math

import numpy as np

INT8_MIN, INT8_MAX = -128, 127


def quantize_multiplier(m: float, max_shift: int = 62) -> tuple[int, int]:
    """(mult, shift) with mult in [2**30, 2**31) where possible and
    0 <= shift <= max_shift, nearest to m."""
    if not m > 0 or not math.isfinite(m):
        raise ValueError(f"requantization multiplier must be positive and finite, got {m}")
    mant, exp = math.frexp(m)  # m = mant * 2**exp, mant in [0.5, 1)
    shift = 31 - exp
    if shift > max_shift:  # too small to represent with full precision
        shift = max_shift
    if shift < 0:
        raise ValueError(f"requantization multiplier {m} is too large (>= 2**31)")
    mult = round(m * (1 << shift)) if shift <= 62 else 0
    if mult >= 1 << 31:  # rounding carried into the next power of two
        mult >>= 1
        shift -= 1
    return int(mult), int(shift)


def quantize_multipliers(ms: np.ndarray, max_shift: int = 62) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(m), max_shift) for m in np.asarray(ms, dtype=np.float64).ravel()]
    mult = np.array([p[0] for p in pairs], dtype=np.int32)
    shift = np.array([p[1] for p in pairs], dtype=np.int32)
    return mult, shift


def pair_multipliers(ma: float, mb: float, max_shift: int = 62) -> tuple[int, int, int]:
    """(a_mult, b_mult, shift) sharing one shift, the larger multiplier at
    full 31-bit precision."""
    big = max(ma, mb)
    _, shift = quantize_multiplier(big, max_shift)
    a = round(ma * (1 << shift))
    b = round(mb * (1 << shift))
    while max(a, b) >= 1 << 31:
        shift -= 1
        a = round(ma * (1 << shift))
        b = round(mb * (1 << shift))
    return int(a), int(b), int(shift)


def relu_clip(zero_point: int, scale: float, upper: float | None = None) -> tuple[int, int]:
    """int8 clip bounds of ReLU (upper=None) or of Clip(0, upper) for a tensor
    with the given quantization."""
    lo = max(INT8_MIN, zero_point)
    hi = INT8_MAX if upper is None else min(INT8_MAX, zero_point + round(upper / scale))
    return lo, hi
