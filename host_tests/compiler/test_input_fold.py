"""Folding the first convolution's stride and kernel columns into channels:
exact (the golden model on the folded graph and the folded input equals it on
the original), chosen only where it saves MAC-array steps, and run by the
emulated cores bit-exactly through the ordinary request path."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from harness import emulated_accelerator, random_inputs

from vfpga import overlay
from vfpga.driver import host_isa
from vfpga.driver.emulated import EmulatedDevice
from vfpga.driver.segment import Segment, SegmentBoundsError
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


@pytest.mark.parametrize("options", [{"max_inflight": 2}, {"max_batch": 3, "max_delay_us": 20000}])
def test_folded_inputs_of_requests_in_flight_and_batched_stay_apart(options):
    """Each request thread folds into its own slot's (or batch item's) input with its own writer."""
    g = stem_graph(6, (33, 29, 3), 16, 7, 2, (3, 2, 3, 1))
    compiled = static.compile_graph(g, "u200")
    assert compiled.input_fold is not None
    accel = emulated_accelerator("u200")
    try:
        tenant = accel.deploy(compiled, cores=2, **options)
        xs = random_inputs(g, 6, seed=11)
        futures = [tenant.submit_quantized(x) for x in xs]
        for x, f in zip(xs, futures):
            (y,), _ = f.result(timeout=120)
            np.testing.assert_array_equal(y, golden.run_graph(g, x)["y"])
        if "max_batch" in options:
            assert max(tenant.run_batches) > 1  # some requests really ran as one batch
    finally:
        accel.close()


def gather_reference(fold: input_fold.InputFold, x_q: np.ndarray, zero_point: int) -> np.ndarray:
    """The fold as it was first written: one np.take of an index built
    element by element from x''[I, J, (V, a, b, c)] = x_pad[s*I + a, s*(J + V) + b, c]."""
    s, (h, w, c), (fh, fw, _) = fold.stride, fold.shape, fold.folded_shape
    top, left = fold.pads[0], fold.pads[1]
    i, j, v, a, b, ch = np.ix_(np.arange(fh), np.arange(fw), np.arange(fold.cols), np.arange(s), np.arange(s),
                               np.arange(c))
    r, q = s * i + a - top, s * (j + v) + b - left
    inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
    index = np.where(inside, (r * w + q) * c + ch, h * w * c).reshape(fh, fw, -1)
    src = np.append(x_q.reshape(-1), np.int8(zero_point))
    return np.take(src, index)


def fold_of(shape, k: int, s: int, pads, cols_folded: bool) -> input_fold.InputFold:
    """The fold ``choose`` gives for a k x k, stride-s convolution, in either form."""
    h, w, c = shape
    kh2 = -(-k // s)
    oh, ow = (h + pads[0] + pads[2] - k) // s + 1, (w + pads[1] + pads[3] - k) // s + 1
    cols = kh2 if cols_folded else 1
    return input_fold.InputFold(shape, s, tuple(pads), (k, k), cols,
                                (oh + kh2 - 1, ow + (0 if cols_folded else kh2 - 1), c * s * s * cols))


FORMS = [  # shape, kernel, stride, pads: odd sizes, asymmetric and zero pads, pads past the stride, C of 1..4
    ((32, 32, 3), 7, 2, (3, 3, 3, 3)),
    ((33, 29, 3), 7, 2, (3, 2, 3, 1)),
    ((20, 20, 4), 3, 2, (1, 1, 1, 1)),
    ((17, 21, 1), 5, 1, (2, 2, 2, 2)),
    ((24, 24, 3), 4, 4, (0, 0, 0, 0)),
    ((15, 15, 2), 3, 3, (1, 0, 0, 1)),
    ((23, 19, 3), 5, 2, (4, 0, 1, 5)),
    ((9, 11, 3), 11, 4, (2, 2, 2, 2)),
    ((13, 8, 2), 3, 1, (0, 1, 2, 0)),
    ((224, 224, 3), 7, 2, (3, 3, 3, 3)),  # ResNet-50's conv1
    ((21, 22, 3), 3, 2, (0, 0, 0, 0)),  # SqueezeNet's conv1 at an odd height: the last block row half past the image
    ((22, 21, 3), 3, 2, (0, 0, 1, 1)),  # the last column's block half image, half zero point
    ((20, 18, 3), 3, 1, (1, 1, 1, 1)),  # VGG's conv1
    ((9, 14, 3), 3, 1, (0, 1, 2, 0)),  # the same, pads uneven
    # AVX2's 32-byte chunks: a row shorter than a chunk (27 bytes, its second half past the row; 12 and 16
    # bytes, one half), rows of whole chunks but not whole 64-byte words (160 and 288 bytes: into a striped
    # segment's parts through the row scratch, not straight)
    ((6, 3, 3), 3, 1, (1, 1, 1, 1)),
    ((7, 3, 1), 3, 2, (1, 1, 1, 1)),
    ((18, 18, 4), 3, 2, (1, 1, 1, 1)),
    # plans refused at stride 1 or 2 (REFUSED): a pixel of 36 bytes ends in a 16-byte half holding the next
    # one's first bytes, 32 apart (the 64-byte window holds them); 33-byte pixels, a period of 33 chunks;
    # 1056-byte pixels whose windows all fit, a period of 33 chunks (and of 3 with the columns not folded)
    ((10, 12, 4), 9, 1, (4, 4, 4, 4)),
    ((12, 40, 3), 11, 1, (5, 5, 5, 5)),
    ((25, 25, 24), 22, 2, (0, 0, 0, 0)),
]

# (form, cols folded) -> the plans vf_fold_plan refuses for it, though its stride is 1 or 2
REFUSED = {
    (((10, 12, 4), 9, 1, (4, 4, 4, 4)), True): {"avx2"},
    (((12, 40, 3), 11, 1, (5, 5, 5, 5)), True): {"vbmi", "avx2"},
    (((25, 25, 24), 22, 2, (0, 0, 0, 0)), True): {"vbmi", "avx2"},
}

HAS_VBMI = "avx512vbmi" in host_isa.cpu_flags()
HAS_AVX2 = "avx2" in host_isa.cpu_flags()


def expected_path(form, cols_folded: bool, path: str) -> str:
    """The fold path a writer on ``path`` takes on this CPU: the best plan
    it has that the form's stride (1 or 2) and REFUSED allow, else the copies."""
    refused = REFUSED.get((form, cols_folded), set())
    if path != "vector" or form[2] > 2:
        return "scalar"
    return next((kind for kind, has in (("vbmi", HAS_VBMI), ("avx2", HAS_AVX2)) if has and kind not in refused),
                "scalar")


def _fold_case(shape, k: int, s: int, pads, cols_folded: bool, seed: int, path: str = "vector"):
    """(fold, its writer, the zero point, an rng for the inputs) of one tested
    form, the writer on ``path`` (vector: the byte permutations where this CPU
    has them, VBMI's or else AVX2's); skips a form that folds nothing."""
    fold = fold_of(shape, k, s, pads, cols_folded)
    if fold.stride == 1 and fold.cols == 1:
        pytest.skip("not a fold")
    rng = np.random.default_rng(seed)
    zp = int(rng.integers(-128, 128))
    writer = fold.writer(zp, vector=path == "vector")
    # a plan refused where it should not be, or made where it should not, fails here
    assert writer.path == expected_path((shape, k, s, pads), cols_folded, path)
    assert writer.vector == (writer.path != "scalar")
    return fold, writer, zp, rng


@pytest.mark.parametrize("path", ["vector", "scalar"])
@pytest.mark.parametrize("build", ["this host's", "portable"])
@pytest.mark.parametrize("cols_folded", [False, True])
@pytest.mark.parametrize("shape, k, s, pads", FORMS)
def test_the_strided_fold_equals_the_gather(monkeypatch, shape, k, s, pads, cols_folded, build, path):
    """Both builds of the C fold (the host's ISA level, loaded by default, and
    the portable one), each on both paths (the byte permutations and the copies)."""
    if build == "portable":
        monkeypatch.setattr(input_fold, "_marshal", importlib.import_module("vfpga.driver._marshal"))
    fold, writer, zp, rng = _fold_case(shape, k, s, pads, cols_folded, seed=k * 31 + s, path=path)
    segment = np.full(writer.nbytes + 64, 0x5A, np.uint8)  # a host copy around the input's bytes
    for _ in range(3):  # the writer's scratch is reused: nothing of a request stays in the next
        x_q = rng.integers(-128, 128, size=shape, dtype=np.int8)
        want = gather_reference(fold, x_q, zp)
        np.testing.assert_array_equal(fold.apply(x_q, zp), want)
        got = writer.write(x_q, segment[32:32 + writer.nbytes])
        np.testing.assert_array_equal(got, want)
        assert (segment[:32] == 0x5A).all() and (segment[32 + writer.nbytes:] == 0x5A).all()


@pytest.fixture(scope="module")
def striped_device():
    return EmulatedDevice("u200")  # its segments are striped over the four banks


@pytest.mark.parametrize("at", [4 * 64 + 23, 4 * 64])
@pytest.mark.parametrize("path", ["vector", "scalar"])
@pytest.mark.parametrize("cols_folded", [False, True])
@pytest.mark.parametrize("shape, k, s, pads", FORMS)
def test_the_fold_straight_into_a_striped_segments_parts_equals_the_gather(striped_device, shape, k, s, pads,
                                                                         cols_folded, path, at):
    """write_parts: each output row into the four parts as it is made; the
    device's bytes are the gather's, and no byte around the input moves. At
    an offset off the words, partial words at both ends; on a word, the
    vector path stores each chunk straight into its part where the rows are
    whole words (ResNet's stem, the first form's)."""
    fold, writer, zp, rng = _fold_case(shape, k, s, pads, cols_folded, seed=k * 17 + s, path=path)
    stripe = overlay.config.segment_stripe(overlay.load("u200"))
    with Segment(at + writer.nbytes + 100, device=striped_device, stripe=stripe) as seg:
        seg.write(0, np.full(seg.size, 0x5A, np.uint8))
        seg.sync_to_device()
        for _ in range(2):  # the writer's scratches are reused: nothing of a request stays in the next
            x_q = rng.integers(-128, 128, size=shape, dtype=np.int8)
            writer.write_parts(x_q, seg.stripe_target(at, writer.nbytes), at)
            seg.sync_parts_to_device(at, writer.nbytes)
            seg.sync_from_device()
            got = seg.read(0, seg.size)
            np.testing.assert_array_equal(got[at:at + writer.nbytes].view(np.int8).reshape(fold.folded_shape),
                                          gather_reference(fold, x_q, zp))
            assert (got[:at] == 0x5A).all() and (got[at + writer.nbytes:] == 0x5A).all()


def test_a_stripe_target_is_for_a_range_inside_a_striped_segment(striped_device):
    stripe = overlay.config.segment_stripe(overlay.load("u200"))
    with Segment(1000, device=striped_device, stripe=stripe) as seg:
        with pytest.raises(SegmentBoundsError, match=r"\[900, 1100\) is outside the segment"):
            seg.stripe_target(900, 200)
    with Segment(1000, device=striped_device) as seg, pytest.raises(ValueError, match="contiguous"):
        seg.stripe_target(0, 10)


@pytest.mark.parametrize("shape, cout, k, stride, pads, icp", CASES)
def test_the_folds_choose_gives_are_the_tested_forms(shape, cout, k, stride, pads, icp):
    fold = input_fold.choose(stem_graph(k * 7 + stride, shape, cout, k, stride, pads), icp)
    assert fold in (fold_of(shape, k, stride, pads, False), fold_of(shape, k, stride, pads, True))


def test_the_fold_writer_refuses_bad_input():
    fold = fold_of((32, 32, 3), 7, 2, (3, 3, 3, 3), True)
    writer = fold.writer(-3)
    out = np.empty(writer.nbytes, np.uint8)
    with pytest.raises(ValueError, match=r"int8 HWC input of shape \(32, 32, 3\)"):
        writer.write(np.zeros((32, 32, 3), np.uint8), out)
    with pytest.raises(ValueError, match=r"int8 HWC input of shape \(32, 32, 3\)"):
        writer.write(np.zeros((3, 32, 32), np.int8), out)
    with pytest.raises(ValueError, match=f"contiguous buffer of {writer.nbytes} one-byte items"):
        writer.write(np.zeros((32, 32, 3), np.int8), out[:-1])
    with pytest.raises(ValueError, match="contiguous buffer"):
        writer.write(np.zeros((32, 32, 3), np.int8), np.empty(2 * writer.nbytes, np.uint8)[::2])
    with pytest.raises(ValueError, match="zero point is in"):
        fold.writer(200)
