"""The numpy golden model against brute-force loops written straight from the
formulas in runtime/ir.py and hls/include/vfpga_isa.h (Python ints, the
int32 accumulator wrapped after every single addition, as the hardware does)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from vfpga.runtime.compiler import ir
from vfpga.runtime.hw import golden

# ---------------------------------------------------------------- brute force


def ref_rshift_round(v: int, s: int) -> int:
    return v if s == 0 else (v + (1 << (s - 1))) >> s  # Python >> floors: arithmetic shift


def ref_rdiv(n: int, d: int) -> int:
    q = (abs(n) + d // 2) // d
    return -q if n < 0 else q


def ref_wrap32(v: int) -> int:
    return (v + (1 << 31)) % (1 << 32) - (1 << 31)


def ref_clamp(v: int, clip) -> int:
    return min(max(v, clip[0]), clip[1])


def ref_conv(x, layer, in_zp, out_zp):
    h, w, _ = x.shape
    oc_n, cin_g, kh, kw = layer.weight.shape
    cout_g = oc_n // layer.groups
    sh, sw = layer.stride
    pt, pl, pb, pr = layer.pads
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    out = np.zeros((oh, ow, oc_n), dtype=np.int8)
    for oy in range(oh):
        for ox in range(ow):
            for oc in range(oc_n):
                g = oc // cout_g
                acc = int(layer.bias[oc])
                for ky in range(kh):
                    for kx in range(kw):
                        iy, ix = oy * sh + ky - pt, ox * sw + kx - pl
                        inside = 0 <= iy < h and 0 <= ix < w
                        for i in range(cin_g):
                            xv = int(x[iy, ix, g * cin_g + i]) if inside else in_zp
                            acc = ref_wrap32(acc + (xv - in_zp) * int(layer.weight[oc, i, ky, kx]))
                r = ref_rshift_round(acc * int(layer.mult[oc]), int(layer.shift[oc]))
                out[oy, ox, oc] = ref_clamp(out_zp + r, layer.clip)
    return out


def ref_pool(x, layer, in_zp, out_zp):
    h, w, c = x.shape
    kh, kw = layer.kernel
    sh, sw = layer.stride
    pt, pl, pb, pr = layer.pads
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    out = np.zeros((oh, ow, c), dtype=np.int8)
    for oy in range(oh):
        for ox in range(ow):
            for ch in range(c):
                vals = [int(x[iy, ix, ch]) - in_zp
                        for iy in range(oy * sh - pt, oy * sh - pt + kh)
                        for ix in range(ox * sw - pl, ox * sw - pl + kw)
                        if 0 <= iy < h and 0 <= ix < w]
                if layer.mode == "max":
                    v, count = (max(vals) if vals else 0), 1
                else:
                    v = sum(vals)
                    count = kh * kw if layer.count_include_pad else len(vals)
                y = out_zp if count == 0 else out_zp + ref_rdiv(v * layer.mult, count << layer.shift)
                out[oy, ox, ch] = ref_clamp(y, layer.clip)
    return out


def ref_add(a, b, layer, a_zp, b_zp, out_zp):
    out = np.zeros(a.shape, dtype=np.int8)
    for idx in np.ndindex(a.shape):
        v = (int(a[idx]) - a_zp) * layer.a_mult + (int(b[idx]) - b_zp) * layer.b_mult
        out[idx] = ref_clamp(out_zp + ref_rshift_round(v, layer.shift), layer.clip)
    return out


# ---------------------------------------------------------------- helpers


def rand_i8(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8)


def make_conv(rng, cin, cout, k, stride=(1, 1), pads=(0, 0, 0, 0), groups=1, clip=(-128, 127),
              shift_offset=0):
    """Random layer whose requantization maps typical sums onto roughly +-48,
    so outputs spread over int8 (shift_offset < 0 makes them saturate)."""
    kh, kw = k if isinstance(k, tuple) else (k, k)
    weight = rand_i8(rng, (cout, cin // groups, kh, kw))
    bias = rng.integers(-1000, 1001, size=cout).astype(np.int32)
    mult = rng.integers(1 << 29, 1 << 31, size=cout).astype(np.int32)
    terms = (cin // groups) * kh * kw
    base = 30 + int(round(np.log2(5500 * np.sqrt(terms) / 48)))  # sum std ~ 5500 * sqrt(terms)
    shift = np.clip(base + shift_offset + rng.integers(-2, 3, size=cout), 0, 62).astype(np.int32)
    return ir.Conv("c", "x", "y", weight, bias, mult, shift, stride=stride, pads=pads, groups=groups, clip=clip)


def check_conv(x, layer, in_zp, out_zp):
    got = golden.conv(x, layer, in_zp, out_zp)
    want = ref_conv(x, layer, in_zp, out_zp)
    assert got.dtype == np.int8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return got


# ---------------------------------------------------------------- arithmetic


def test_rshift_round_ties_go_towards_plus_infinity():
    v = np.array([3, -3, 5, -5, 1, -1, 2, -2, 7, -7], dtype=np.int64)
    assert golden.rshift_round(v, 1).tolist() == [2, -1, 3, -2, 1, 0, 1, -1, 4, -3]
    assert golden.rshift_round(v, 0).tolist() == v.tolist()
    assert golden.rshift_round(-6, 2) == -1  # -1.5 -> -1
    assert golden.rshift_round(6, 2) == 2  # 1.5 -> 2


def test_rshift_round_extremes_and_per_element_shifts():
    rng = np.random.default_rng(1)
    v = rng.integers(-(1 << 62), 1 << 62, size=2000, dtype=np.int64)
    s = rng.integers(0, 63, size=2000)
    got = golden.rshift_round(v, s)
    assert got.tolist() == [ref_rshift_round(int(a), int(b)) for a, b in zip(v, s)]
    edge = np.array([(1 << 62), -(1 << 62)], dtype=np.int64)
    assert golden.rshift_round(edge, 62).tolist() == [1, -1]
    with pytest.raises(ValueError):
        golden.rshift_round(1, 63)
    with pytest.raises(ValueError):
        golden.rshift_round(1, -1)


def test_rdiv_rounds_half_away_from_zero():
    n = np.array([3, -3, 5, -5, 6, -6, 7, -7, 0], dtype=np.int64)
    assert golden.rdiv(n, 2).tolist() == [2, -2, 3, -3, 3, -3, 4, -4, 0]
    assert golden.rdiv(n, 4).tolist() == [1, -1, 1, -1, 2, -2, 2, -2, 0]
    rng = np.random.default_rng(2)
    nn = rng.integers(-(1 << 50), 1 << 50, size=1000)
    dd = rng.integers(1, 1 << 40, size=1000)
    assert golden.rdiv(nn, dd).tolist() == [ref_rdiv(int(a), int(b)) for a, b in zip(nn, dd)]
    with pytest.raises(ValueError):
        golden.rdiv(1, 0)


def test_wrap_int32():
    v = np.array([(1 << 31), (1 << 31) - 1, -(1 << 31) - 1, (1 << 33) + 5], dtype=np.int64)
    assert golden.wrap_int32(v).tolist() == [-(1 << 31), (1 << 31) - 1, (1 << 31) - 1, 5]


# ---------------------------------------------------------------- convolution

CONV_CASES = [
    # (H, W, Cin, Cout, kernel, stride, pads, groups)
    (5, 6, 3, 5, 3, (1, 1), (1, 1, 1, 1), 1),
    (7, 7, 17, 19, 3, (2, 2), (1, 0, 0, 1), 1),  # channels not multiples of 16, asymmetric pads
    (1, 1, 20, 33, 1, (1, 1), (0, 0, 0, 0), 1),  # 1x1 spatial
    (1, 1, 4, 6, 3, (1, 1), (1, 1, 1, 1), 1),  # 1x1 spatial, 3x3 all-padding ring
    (12, 11, 3, 4, 11, (4, 4), (2, 1, 3, 0), 1),  # 11x11, stride 4
    (10, 9, 5, 7, (3, 2), (3, 2), (0, 2, 1, 0), 1),  # rectangular kernel, stride 3/2
    (6, 5, 18, 18, 3, (1, 1), (1, 1, 1, 1), 18),  # depthwise
    (6, 5, 6, 12, 3, (2, 1), (0, 1, 2, 1), 6),  # depthwise, channel multiplier 2
    (5, 5, 10, 14, 3, (1, 2), (1, 1, 0, 0), 2),  # groups = 2
    (4, 4, 12, 6, 1, (3, 3), (0, 0, 2, 2), 3),  # 1x1 stride 3 with bottom/right padding
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_brute_force(case):
    h, w, cin, cout, k, stride, pads, groups = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    layer = make_conv(rng, cin, cout, k, stride, pads, groups)
    x = rand_i8(rng, (h, w, cin))
    for in_zp, out_zp in ((0, 0), (-7, 12), (127, -128), (-128, 5)):
        check_conv(x, layer, in_zp, out_zp)


def test_conv_output_is_not_all_saturated():
    # guards the brute-force comparison against being trivially all +-127/-128
    rng = np.random.default_rng(3)
    layer = make_conv(rng, 16, 16, 3, pads=(1, 1, 1, 1))
    y = check_conv(rand_i8(rng, (6, 6, 16)), layer, 3, -2)
    assert len(np.unique(y)) > 50


def test_conv_padding_is_real_zero():
    # x == in_zp everywhere: every product is zero, so the output is bias only
    layer = ir.Conv("c", "x", "y", np.full((2, 1, 3, 3), 100, np.int8), np.array([5, -5], np.int32),
                    np.array([1 << 30, 1 << 30], np.int32), np.array([30, 30], np.int32), pads=(1, 1, 1, 1))
    y = golden.conv(np.full((3, 3, 1), 9, np.int8), layer, 9, 0)
    assert (y[..., 0] == 5).all() and (y[..., 1] == -5).all()


def test_conv_rounding_ties():
    # acc * mult / 2**shift lands exactly on .5: rounds towards +inf
    w = np.ones((4, 1, 1, 1), np.int8)
    bias = np.array([1, -1, 3, -3], np.int32)
    layer = ir.Conv("c", "x", "y", w, bias, np.ones(4, np.int32), np.ones(4, np.int32))
    y = golden.conv(np.zeros((1, 1, 1), np.int8), layer, 0, 0)
    assert y.ravel().tolist() == [1, 0, 2, -1]
    check_conv(np.zeros((1, 1, 1), np.int8), layer, 0, 0)


def test_conv_saturation_and_clip():
    rng = np.random.default_rng(4)
    layer = make_conv(rng, 8, 8, 3, pads=(1, 1, 1, 1), shift_offset=-20)  # huge gain: saturates
    x = rand_i8(rng, (4, 4, 8))
    y = check_conv(x, layer, 0, 0)
    assert set(np.unique(y).tolist()) <= {-128, 127} and len(np.unique(y)) == 2
    layer.clip = (-3, 100)  # e.g. ReLU6-style tighter bounds
    y = check_conv(x, layer, 0, -3)
    assert y.min() == -3 and y.max() == 100


def test_conv_int32_wraparound():
    # bias near INT32_MAX plus a positive sum wraps to negative, as the int32 accumulator does
    w = np.full((2, 4, 1, 1), 127, np.int8)
    bias = np.array([(1 << 31) - 100, -(1 << 31) + 100], np.int32)
    layer = ir.Conv("c", "x", "y", w, bias, np.array([1, 1], np.int32), np.array([24, 24], np.int32))
    x = np.full((1, 1, 4), 127, np.int8)
    # channel 0: INT32_MAX - 99 + 4*127*(127+128) wraps to ~ -2**31 -> -128 after >> 24
    # channel 1: INT32_MIN + 100 + 4*127*255 stays ~ -2**31 -> -128
    y = check_conv(x, layer, -128, 0)
    acc0 = ref_wrap32((1 << 31) - 100 + 4 * 127 * 255)
    assert acc0 < 0 and y[0, 0, 0] == ref_clamp(ref_rshift_round(acc0, 24), (-128, 127))
    # a large reduction that overflows on the way: 11x11x64 taps of 127 * 255 with a large bias
    rng = np.random.default_rng(5)
    big = ir.Conv("c", "x", "y", np.full((3, 64, 11, 11), 127, np.int8),
                  np.array([(1 << 31) - 1, 0, -(1 << 31)], np.int32),
                  np.full(3, 1 << 30, np.int32), np.full(3, 50, np.int32))
    xb = np.full((11, 11, 64), 127, np.int8)
    xb[rng.integers(0, 11, 40), rng.integers(0, 11, 40)] = -128
    check_conv(xb, big, -128, 0)


def test_conv_negative_multiplier_and_zero_shift():
    w = np.array([[[[2]]], [[[3]]]], np.int8)
    layer = ir.Conv("c", "x", "y", w, np.array([0, 0], np.int32), np.array([-1, 1], np.int32),
                    np.array([0, 0], np.int32))
    x = np.array([[[10]]], np.int8)
    assert golden.conv(x, layer, 0, 1).ravel().tolist() == [-19, 31]


def test_conv_rejects_bad_layers():
    rng = np.random.default_rng(6)
    layer = make_conv(rng, 4, 4, 3)
    with pytest.raises(ValueError):
        golden.conv(rand_i8(rng, (5, 5, 3)), layer, 0, 0)  # channel mismatch
    with pytest.raises(ValueError):
        golden.conv(rand_i8(rng, (2, 2, 4)), layer, 0, 0)  # kernel larger than input
    with pytest.raises(ValueError):
        golden.conv(rand_i8(rng, (5, 5, 4)).astype(np.int16), layer, 0, 0)  # not int8
    layer.shift = layer.shift.copy()
    layer.shift[0] = 63
    with pytest.raises(ValueError):
        golden.conv(rand_i8(rng, (5, 5, 4)), layer, 0, 0)


# ---------------------------------------------------------------- pooling

POOL_CASES = [
    # (H, W, C, mode, kernel, stride, pads, count_include_pad)
    (6, 6, 5, "max", (3, 3), (2, 2), (1, 1, 1, 1), False),
    (7, 5, 17, "max", (2, 3), (1, 2), (0, 1, 1, 0), False),
    (6, 6, 5, "avg", (3, 3), (2, 2), (1, 1, 1, 1), False),
    (6, 6, 5, "avg", (3, 3), (2, 2), (1, 1, 1, 1), True),
    (7, 8, 19, "avg", (3, 2), (3, 1), (0, 2, 1, 0), False),
    (5, 5, 3, "avg", (5, 5), (1, 1), (0, 0, 0, 0), False),  # global
    (1, 1, 20, "max", (1, 1), (1, 1), (0, 0, 0, 0), False),
    (11, 11, 2, "avg", (11, 11), (4, 4), (2, 2, 2, 2), True),
    (4, 4, 3, "avg", (3, 3), (3, 3), (0, 0, 6, 6), False),  # windows entirely in padding
    (4, 4, 3, "max", (3, 3), (3, 3), (0, 0, 6, 6), False),
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_matches_brute_force(case):
    h, w, c, mode, kernel, stride, pads, cip = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rand_i8(rng, (h, w, c))
    for mult, shift, in_zp, out_zp, clip in (
        (1 << 30, 30, 0, 0, (-128, 127)),
        (1 << 30, 30, -9, 20, (-128, 127)),
        (1_431_655_765, 31 - 1, 100, -100, (-128, 127)),  # 4/3 scale: saturates sometimes
        (1_000_000_007, 29, -128, 127, (0, 90)),
        (-(1 << 29), 0, 5, 0, (-128, 127)),
    ):
        layer = ir.Pool("p", "x", "y", mode, kernel, stride, pads, cip, mult, shift, clip)
        got = golden.pool(x, layer, in_zp, out_zp)
        np.testing.assert_array_equal(got, ref_pool(x, layer, in_zp, out_zp))


def test_pool_empty_windows_give_out_zp():
    x = np.full((2, 2, 1), 50, np.int8)
    for mode in ("max", "avg"):
        layer = ir.Pool("p", "x", "y", mode, (2, 2), (3, 3), (0, 0, 3, 3))
        y = golden.pool(x, layer, 0, 7)
        assert y.shape == (2, 2, 1)
        assert y[1, 1, 0] == 7 and y[0, 0, 0] == 57


def test_pool_avg_rounding_ties():
    # sums of -1 and -3 over 2 valid positions: -0.5 -> -1 and -1.5 -> -2 (away from zero)
    x = np.array([[[0], [-1]], [[-1], [-2]]], np.int8)
    layer = ir.Pool("p", "x", "y", "avg", (1, 2), (1, 1), (0, 0, 0, 0), mult=1, shift=0)
    assert golden.pool(x, layer, 0, 0).ravel().tolist() == [-1, -2]


def test_pool_rejects_large_shift():
    layer = ir.Pool("p", "x", "y", "avg", (2, 2), shift=31)
    with pytest.raises(ValueError):
        golden.pool(np.zeros((2, 2, 1), np.int8), layer, 0, 0)


# ---------------------------------------------------------------- add


def test_add_matches_brute_force():
    rng = np.random.default_rng(7)
    a, b = rand_i8(rng, (5, 3, 19)), rand_i8(rng, (5, 3, 19))
    for a_mult, b_mult, shift, zps, clip in (
        (1 << 30, 1 << 30, 31, (0, 0, 0), (-128, 127)),
        (1_500_000_000, 700_000_000, 31, (-5, 17, 3), (-128, 127)),
        (2_000_000_000, 2_000_000_000, 30, (-128, 127, 0), (-128, 127)),  # saturates
        (-3, 5, 0, (1, 2, 3), (-128, 127)),
        (1 << 30, -(1 << 30), 62, (0, 0, 0), (-128, 127)),
        (1 << 30, 1 << 29, 30, (0, 0, -128), (-128, -28)),  # ReLU-like clip
    ):
        layer = ir.Add("s", ("a", "b"), "y", a_mult, b_mult, shift, clip)
        got = golden.add(a, b, layer, *zps)
        np.testing.assert_array_equal(got, ref_add(a, b, layer, *zps))


def test_add_rounding_ties():
    layer = ir.Add("s", ("a", "b"), "y", 1, 0, 1)
    a = np.array([[[1, -1, 3, -3]]], np.int8)
    assert golden.add(a, np.zeros_like(a), layer, 0, 0, 0).ravel().tolist() == [1, 0, 2, -1]


def test_add_rejects_shape_mismatch():
    layer = ir.Add("s", ("a", "b"), "y", 1, 1, 0)
    with pytest.raises(ValueError):
        golden.add(np.zeros((2, 2, 3), np.int8), np.zeros((2, 2, 4), np.int8), layer, 0, 0, 0)


# ---------------------------------------------------------------- graphs


def small_graph(rng):
    """conv(stride 2) -> maxpool, a depthwise branch, and a residual add."""
    t = {
        "x": ir.Tensor("x", (9, 8, 5), 0.1, -3),
        "c1": ir.Tensor("c1", (5, 4, 8), 0.2, 4),
        "p1": ir.Tensor("p1", (5, 4, 8), 0.2, 4),
        "d1": ir.Tensor("d1", (5, 4, 8), 0.15, -1),
        "y": ir.Tensor("y", (5, 4, 8), 0.3, 2),
    }
    c1 = make_conv(rng, 5, 8, 3, (2, 2), (1, 1, 1, 1))
    c1.name, c1.input, c1.output = "conv1", "x", "c1"
    p1 = ir.Pool("pool1", "c1", "p1", "max", (3, 3), (1, 1), (1, 1, 1, 1))
    d1 = make_conv(rng, 8, 8, 3, (1, 1), (1, 1, 1, 1), groups=8)
    d1.name, d1.input, d1.output = "dw1", "p1", "d1"
    s = ir.Add("add1", ("c1", "d1"), "y", 1_200_000_000, 900_000_000, 31)
    return ir.Graph(t, [c1, p1, d1, s], ["x"], ["y"], "small")


def test_run_graph_matches_layer_by_layer_brute_force():
    rng = np.random.default_rng(8)
    g = small_graph(rng)
    x = rand_i8(rng, (9, 8, 5))
    out = golden.run_graph(g, x)
    zp = {n: t.zero_point for n, t in g.tensors.items()}
    c1 = ref_conv(x, g.layers[0], zp["x"], zp["c1"])
    p1 = ref_pool(c1, g.layers[1], zp["c1"], zp["p1"])
    d1 = ref_conv(p1, g.layers[2], zp["p1"], zp["d1"])
    y = ref_add(c1, d1, g.layers[3], zp["c1"], zp["d1"], zp["y"])
    for name, want in (("c1", c1), ("p1", p1), ("d1", d1), ("y", y)):
        np.testing.assert_array_equal(out[name], want, err_msg=name)
    assert set(out) == set(g.tensors)
    np.testing.assert_array_equal(golden.run_graph(g, {"x": x})["y"], y)


def test_run_graph_checks_shapes_and_order():
    rng = np.random.default_rng(9)
    g = small_graph(rng)
    with pytest.raises(ValueError, match="shape"):
        golden.run_graph(g, rand_i8(rng, (9, 8, 4)))
    g.layers = g.layers[::-1]
    with pytest.raises(ValueError, match="before it is produced"):
        golden.run_graph(g, rand_i8(rng, (9, 8, 5)))
    g2 = small_graph(rng)
    g2.tensors["c1"] = ir.Tensor("c1", (5, 5, 8), 0.2, 4)
    with pytest.raises(ValueError, match="produces"):
        golden.run_graph(g2, rand_i8(rng, (9, 8, 5)))
