"""Folding the first convolution's stride and kernel columns into channels:
exact (the golden model on the folded graph and the folded input equals it on
the original), chosen only where it saves MAC-array steps, and run by the
emulated cores bit-exactly through the ordinary request path."""

from __future__ import annotations

import numpy as np
import pytest
from harness import emulated_accelerator, random_inputs

from vfpga.runtime.compiler import input_fold, ir, static
from vfpga.runtime.hw import fixed_point, golden


def stem_graph(seed: int, shape, cout: int, k: int, stride: int, pads, then_pool: bool = False) -> ir.Graph:
    rng = np.random.default_rng(seed)
    h, w, c = shape
    oh = (h + pads[0] + pads[2] - k) // stride + 1
    ow = (w + pads[1] + pads[3] - k) // stride + 1
    t = {"x": ir.Tensor("x", shape, 0.05, int(rng.integers(-30, 30))),
         "y": ir.Tensor("y", (oh, ow, cout), 0.04, int(rng.integers(-20, 20)))}
    wgt = rng.integers(-127, 128, size=(cout, c, k, k), dtype=np.int8)
    mult, shift = fixed_point.quantize_multipliers(30.0 / (np.sqrt(c * k * k) * 74 * 74) * rng.uniform(0.5, 2, cout))
    layers = [ir.Conv("stem", "x", "y", wgt, np.round(rng.normal(0, 500, cout)).astype(np.int32), mult, shift,
                      (stride, stride), tuple(pads), 1, (-128, 127))]
    outputs = ["y"]
    if then_pool:  # the input read twice: no fold
        t["p"] = ir.Tensor("p", (h // 2, w // 2, c), 0.05, t["x"].zero_point)
        layers.append(ir.Pool("pool", "x", "p", "max", (2, 2), (2, 2)))
        outputs.append("p")
    return ir.Graph(t, layers, ["x"], outputs, name=f"stem{seed}")


CASES = [  # shape, cout, kernel, stride, pads, icp
    ((32, 32, 3), 16, 7, 2, (3, 3, 3, 3), 16),
    ((33, 29, 3), 24, 7, 2, (3, 2, 3, 1), 64),
    ((20, 20, 4), 8, 3, 2, (1, 1, 1, 1), 16),
    ((17, 21, 1), 8, 5, 1, (2, 2, 2, 2), 8),
    ((24, 24, 3), 16, 4, 4, (0, 0, 0, 0), 16),
    ((15, 15, 2), 8, 3, 3, (1, 0, 0, 1), 16),
]


@pytest.mark.parametrize("shape, cout, k, stride, pads, icp", CASES)
def test_the_fold_is_exact(shape, cout, k, stride, pads, icp):
    g = stem_graph(k * 7 + stride, shape, cout, k, stride, pads)
    fold = input_fold.choose(g, icp)
    assert fold is not None
    folded = input_fold.fold_graph(g, fold)
    for x in random_inputs(g, 3, seed=k):
        want = golden.run_graph(g, x)["y"]
        got = golden.run_graph(folded, fold.apply(x, g.tensors["x"].zero_point))["y"]
        np.testing.assert_array_equal(got, want)


def test_the_fold_is_chosen_where_it_saves_steps():
    stem = stem_graph(1, (32, 32, 3), 16, 7, 2, (3, 3, 3, 3))
    small, big = input_fold.choose(stem, 16), input_fold.choose(stem, 64)
    # 7x7 over 3 channels: 49 steps; space-to-depth 4x4 over 12: 16; and the columns too 4x1 over 48: 4 or 12
    assert small.stride == 2 and small.cols == 4 and small.folded_shape == (19, 16, 48)  # 16 output rows + 3 kernel rows
    assert big.stride == 2 and big.cols == 4
    assert input_fold.choose(stem_graph(2, (8, 8, 64), 16, 3, 1, (1, 1, 1, 1)), 16) is None  # lanes already full
    assert input_fold.choose(stem_graph(3, (32, 32, 3), 16, 7, 2, (3, 3, 3, 3), then_pool=True), 16) is None
    one_by_one = stem_graph(4, (8, 8, 3), 16, 1, 1, (0, 0, 0, 0))
    assert input_fold.choose(one_by_one, 16) is None  # nothing to fold


@pytest.mark.parametrize("board", ["u200", "pynq_z2"])
def test_a_folded_model_runs_bit_exactly_through_requests(board):
    g = stem_graph(5, (40, 36, 3), 24, 7, 2, (3, 3, 3, 3))
    compiled = static.compile_graph(g, board)
    assert compiled.input_fold is not None and compiled.input_shape == (40, 36, 3)
    assert compiled.input.shape == compiled.input_fold.folded_shape  # what the segment holds
    assert sum(li.macs for li in compiled.layers) == 18 * 20 * 24 * 3 * 7 * 7  # the model's work, not the fold's
    accel = emulated_accelerator(board)
    try:
        tenant = accel.deploy(compiled, cores=1)
        for x in random_inputs(g, 2, seed=9):
            (y,), _ = tenant.run_quantized(x)
            np.testing.assert_array_equal(y, golden.run_graph(g, x)["y"])
        with pytest.raises(ValueError, match=r"input of shape \(40, 36, 3\)"):
            tenant.run_quantized(np.zeros(compiled.input.shape, np.int8))
    finally:
        accel.close()
