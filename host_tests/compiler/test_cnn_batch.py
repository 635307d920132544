"""Batch-aware CNN programs (runtime/compiler/cnn_batch.py): B requests in
one run, each convolution's weights loaded once per tile for all of them.

The functional runs execute every frame on the C-simulated cores when the
timeline retires it, through the simulator's real dispatcher; each item's
output must be bit-identical to the model's unbatched run of its input."""

from __future__ import annotations

import numpy as np
import pytest
from harness import FrameExecutingSimulator

from vfpga.driver import isa
from vfpga.runtime.compiler import cnn_batch, dynamic, ir, static
from vfpga.runtime.hw import fixed_point
from vfpga.runtime.sim import simulator


def run_items(board, compiled, inputs, arena, cores):
    """Outputs of one request of ``compiled`` on ``cores`` cores, with item
    b's input at its placement moved by ``arena(b)``; and the latency."""
    sim = FrameExecutingSimulator(board)
    t = sim.deploy("a", compiled, list(range(cores)))
    x, y = compiled.input, compiled.outputs[0]
    for b, data in enumerate(inputs):
        sim.write_segment(t.seg_win, x.addr + arena(b), compiled.device_input(data).reshape(-1).view(np.uint8))
    (done,) = sim.run({"a": [0]})["a"]
    outs = [sim.read_segment(t.seg_win, y.addr + arena(b), y.nbytes).tobytes() for b in range(len(inputs))]
    return outs, done.latency


def net(seed=3, hw=12, c=32, wide=256):
    """conv 3x3 -> conv 3x3 (+ residual add) -> max pool -> 1x1 conv to
    ``wide`` channels -> 3x3 conv back to c (input chunked on small cores)."""
    rng = np.random.default_rng(seed)
    shapes = {"x": (hw, hw, c), "a": (hw, hw, c), "b": (hw, hw, c), "s": (hw, hw, c), "p": (hw // 2, hw // 2, c),
              "w": (hw // 2, hw // 2, wide), "y": (hw // 2, hw // 2, c)}
    t = {n: ir.Tensor(n, s, 0.05, 0) for n, s in shapes.items()}

    def conv(name, src, dst, cin, cout, k):
        mult, shift = fixed_point.quantize_multipliers(np.full(cout, 0.002))
        pad = k // 2
        return ir.Conv(name, src, dst, rng.integers(-100, 100, (cout, cin, k, k), dtype=np.int8),
                       rng.integers(-500, 500, cout).astype(np.int32), mult, shift, pads=(pad,) * 4)

    layers = [conv("c0", "x", "a", c, c, 3), conv("c1", "a", "b", c, c, 3),
              ir.Add("add", ("a", "b"), "s", 1 << 14, 1 << 14, 15), ir.Pool("pool", "s", "p", "max", (2, 2), (2, 2)),
              conv("c2", "p", "w", c, wide, 1), conv("c3", "w", "y", wide, c, 3)]
    return ir.Graph(t, layers, ["x"], ["y"], name="batchnet")


def _inputs(compiled, n, seed=7):
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, compiled.input_shape, dtype=np.int16).astype(np.int8) for _ in range(n)]


@pytest.fixture(scope="module")
def models():
    return {b: static.compile_graph(net(), b) for b in ("u200", "pynq_z2", "zcu104")}


@pytest.mark.parametrize("board, cores", [("u200", 1), ("u200", 8), ("pynq_z2", 1), ("zcu104", 4)])
@pytest.mark.parametrize("batch", [2, 3, 4])  # pynq_z2 at 4: c3's chunks no longer fit side by side
def test_each_item_is_bit_identical_to_its_unbatched_run(models, board, cores, batch):
    c = models[board]
    xs = _inputs(c, batch)
    want = [run_items(board, c, [x], lambda b: 0, cores)[0][0] for x in xs]
    assert len(set(want)) == batch  # distinct inputs, distinct outputs: a mix-up would show
    bc = cnn_batch.compile_batched(c, batch)
    assert bc.sizes[-1] == batch and bc.weight_frames[batch] > 0
    if board == "pynq_z2":  # c3's 256 input channels come in chunks there: its items share each chunk's weights
        insns = c.program.reshape(-1, isa.INSN_BYTES)
        chunked = [cnn_batch._chunked(insns[(o - c.program_offset) // isa.INSN_BYTES:][:n], c.activation_bytes)
                   for o, n in zip(c.frames["offset"].tolist(), c.frames["n_insns"].tolist())]
        assert any(x is not None and len(x[0]) >= 2 for x in chunked)
    got, _ = run_items(board, bc.variants[batch], xs, bc.arena, cores)
    assert got == want


def test_weights_are_read_once_per_batch(models):
    """Shared-weight frames load their constants once: a convolution's frames
    of a batch of 4 move fewer bytes than 4 times its unbatched frames (the
    other layers exactly 4 times), in every tiling variant."""
    c = models["u200"]
    one = dynamic.DispatchTable(c)
    bc = cnn_batch.compile_batched(c, 4).variants[4]
    f1, f4 = c.frames, bc.frames
    for li in c.layers:
        for v in range(len(li.variants)):
            a = f1["ddr_bytes"][(f1["layer"] == li.index) & (f1["variant"] == v)].sum()
            b = f4["ddr_bytes"][(f4["layer"] == li.index) & (f4["variant"] == v)].sum()
            if li.kind == "conv":
                assert b < 4 * a, (li.name, v)
            else:
                assert b <= 4 * a, (li.name, v)
    # every layer and variant is still there, so the dynamic stage plans it as the model
    four = dynamic.DispatchTable(bc)
    assert [len(p) for p in four.parts] == [len(p) for p in one.parts]
    assert [li.macs for li in bc.layers] == [4 * li.macs for li in c.layers]


def test_a_batch_runs_faster_than_its_items_one_at_a_time(models):
    """Modeled on 8 u200 cores (the simulator): a batch of 4 takes less time
    than 4 requests one after another (weights loaded once per tile)."""
    c = models["u200"]
    bc = cnn_batch.compile_batched(c, 4).variants[4]

    def latency(compiled):
        sim = simulator.Simulator("u200")
        sim.deploy("a", compiled, list(range(8)))
        return sim.run({"a": [0]})["a"][0].latency

    assert latency(bc) < 4 * latency(c)


def test_sizes_share_the_arenas_and_follow_one_another(models):
    """max_batch 5: sizes 1, 2, 4, 5; size 1 is the model; the others' programs
    lie one after another past the items' arenas, inside the batched bytes."""
    c = models["u200"]
    bc = cnn_batch.compile_batched(c, 5)
    assert bc.sizes == [1, 2, 4, 5] and bc.variants[1] is c
    assert [bc.size_for(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 5]
    ends = [bc.items.end]
    for b in bc.sizes[1:]:
        v = bc.variants[b]
        assert v.program_offset >= ends[-1] and v.program_offset + len(v.program) <= v.segment_size
        ends.append(v.segment_size)
    assert ends[-1] == bc.end
    assert bc.arena(0) == 0 and bc.arena(1) >= c.segment_size and bc.arena(4) + c.activation_bytes <= bc.items.end
    image = bc.segment_image()
    assert all(a + len(d) <= bc.end for a, d in image.items())


def test_bad_batch_sizes(models):
    for bad in (0, -1, 2.0, True):
        with pytest.raises(cnn_batch.BatchError, match="batch must be >= 1"):
            cnn_batch.compile_batched(models["u200"], bad)
    with pytest.raises(ValueError, match="a batch of 6"):
        cnn_batch.compile_batched(models["u200"], 4).size_for(6)
