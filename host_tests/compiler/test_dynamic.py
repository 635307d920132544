"""Dynamic stage: tiling variants, LPT assignment and dispatch programs,
executed frame by frame on several emulated cores."""

import numpy as np
import pytest

from vfpga.driver import isa
from vfpga.runtime import tenants
from vfpga.runtime.compiler import dynamic, frontend, ir, static
from vfpga.runtime.hw import fixed_point, golden
from vfpga.runtime.models import small

FRAME, BARRIER, END = (isa.DISPATCH_OPS[k] for k in ("FRAME", "BARRIER", "END"))


@pytest.fixture(scope="module")
def small_net():
    qdq = frontend.quantize(small.small_cnn(3), small.calibration_inputs(8, 4))
    graph = frontend.to_graph(qdq)
    return graph, static.compile_graph(graph, "u200")


def _frames_of_layer(c, layer, variant):
    f = c.frames
    return f[(f["layer"] == layer) & (f["variant"] == variant)]


def test_static_stage_prepares_more_frames_for_more_cores(small_net):
    _, c = small_net
    conv = [li for li in c.layers if li.kind == "conv" and li.out_shape[0] >= 8]
    assert any(len(li.variants) > 1 for li in conv)
    for li in c.layers:
        counts = [n for _, n in li.variants]
        assert counts == sorted(counts) and len(set(counts)) == len(counts)
        for v, (_, n) in enumerate(li.variants):
            assert len(_frames_of_layer(c, li.index, v)) == n
    assert (c.frames["cycles"] > 0).all()


@pytest.mark.parametrize("k", [1, 2, 3, 4, 16])
def test_dispatch_program_covers_every_layer_once(small_net, k):
    _, c = small_net
    p = dynamic.plan(c, k)
    (prog,) = p.programs
    assert prog["op"][-1] == END and (prog["op"][:-1] != END).all()
    layers_with_frames = [li for li in c.layers if li.frames]
    assert (prog["op"] == BARRIER).sum() == len(layers_with_frames)
    frames = prog[prog["op"] == FRAME]
    assert frames["slot"].max() < k
    # every entry points at a FRAME marker of the right layer, with the frame's own length
    insns = c.program.reshape(-1, isa.INSN_BYTES)
    layer_of = []
    for e in frames:
        first = (int(e["frame_offset"]) - c.program_offset) // isa.INSN_BYTES
        head = isa.decode(insns[first].tobytes())
        assert head["opcode"] == "FRAME"
        n = 1
        while first + n < len(insns) and isa.OPCODE_NAMES[int(insns[first + n][0])] not in ("FRAME", "BARRIER", "END"):
            n += 1
        assert int(e["n_insns"]) == n
        layer_of.append(head["layer"])
    # the layers in order, each followed by its barrier: per layer, all frames of one of its variants, once
    entries = [int(o) for o in frames["frame_offset"]]
    assert len(set(entries)) == len(entries)
    assert layer_of == sorted(layer_of) and set(layer_of) == {li.index for li in layers_with_frames}
    for li in layers_with_frames:
        mine = {o for o, layer in zip(entries, layer_of) if layer == li.index}
        variants = [set(_frames_of_layer(c, li.index, v)["offset"].tolist()) for v in range(len(li.variants))]
        assert mine in variants


def test_more_cores_never_model_slower_and_lpt_respects_the_bound(small_net):
    _, c = small_net
    table = dynamic.DispatchTable(c)
    spans = [dynamic.plan(table, k).modeled_cycles for k in (1, 2, 4, 8, 16)]
    assert all(a >= b for a, b in zip(spans, spans[1:]))
    assert spans[0] > spans[-1]
    # on one core the plan is never slower than the linear one-core program
    assert spans[0] <= dynamic.plan(table, 1, variant=0).modeled_cycles
    cycles = np.array([9, 7, 6, 5, 5, 4, 1])
    slots, span = dynamic._lpt(cycles, 3)
    loads = np.bincount(slots, weights=cycles, minlength=3)
    assert span == loads.max() == 13 and span >= max(cycles[0], -(-cycles.sum() // 3))


def test_plans_only_read_the_frame_index(small_net):
    _, c = small_net
    before = c.program.copy()
    for k in range(1, 17):
        dynamic.plan(c, k)
    assert np.array_equal(before, c.program)


@pytest.mark.parametrize("k,variant", [(1, None), (2, None), (3, None), (4, None), (4, 1), (2, 3)])
def test_plans_run_bit_exact_on_k_cores(small_net, k, variant):
    graph, c = small_net
    ov = tenants.open("u200")
    try:
        tenant = ov.deploy(c, cores=k, name="dyn")
        if variant is not None:
            tenant.retarget(k, variant=variant)
        assert tenant.plan.k == k
        rng = np.random.default_rng(k)
        for _ in range(2):
            x_q = rng.integers(-128, 128, size=c.input_shape, dtype=np.int8)
            (got,), info = tenant.run_quantized(x_q)
            assert all(r.ok for r in info.completions)
            assert np.array_equal(got, golden.run_graph(graph, x_q)[graph.outputs[0]])
        assert ov.stats()["dyn"].frames == 2 * sum(int((p["op"] == dynamic.FRAME).sum()) for p in tenant.plan.programs)
    finally:
        ov.close()


def test_every_variant_of_a_split_layer_is_exact():
    rng = np.random.default_rng(5)
    w = rng.integers(-100, 100, (48, 32, 3, 3), dtype=np.int8)
    mult, shift = fixed_point.quantize_multipliers(np.full(48, 0.002))
    t = {"x": ir.Tensor("x", (20, 20, 32), 0.05, 3), "y": ir.Tensor("y", (20, 20, 48), 0.04, -7)}
    g = ir.Graph(t, [ir.Conv("c", "x", "y", w, rng.integers(-500, 500, 48).astype(np.int32), mult, shift,
                             pads=(1, 1, 1, 1))], ["x"], ["y"])
    c = static.compile_graph(g, "zcu104")
    assert len(c.layers[0].variants) >= 3
    ov = tenants.open("zcu104")
    try:
        tenant = ov.deploy(c, cores=4)
        x_q = rng.integers(-128, 128, size=(20, 20, 32), dtype=np.int8)
        want = golden.run_graph(g, x_q)["y"]
        for v in range(len(c.layers[0].variants)):
            tenant.retarget(4, variant=v)
            tenant.segment.write(c.outputs[0].addr, np.zeros(20 * 20 * 48, np.int8))
            tenant.segment.sync_to_device(c.outputs[0].addr, 20 * 20 * 48)
            (got,), _ = tenant.run_quantized(x_q)
            assert np.array_equal(got, want), f"variant {v}"
    finally:
        ov.close()


def test_bad_core_counts():
    with pytest.raises(ValueError, match="1..255"):
        dynamic.plan(static.compile_graph(ir.Graph(
            {"x": ir.Tensor("x", (4, 4, 8), 0.1, 0), "y": ir.Tensor("y", (4, 4, 8), 0.1, 0)},
            [ir.Pool("p", "x", "y", "max", (1, 1))], ["x"], ["y"]), "u200"), 0)


def test_a_segment_larger_than_a_bank_is_refused():
    from vfpga import overlay

    cfg = overlay.load("pynq_z2")
    cfg["ddr"]["bank_bytes"] = 1 << 16
    rng = np.random.default_rng(0)
    w = rng.integers(-5, 5, (64, 64, 3, 3), dtype=np.int8)
    mult, shift = fixed_point.quantize_multipliers(np.full(64, 0.01))
    t = {"x": ir.Tensor("x", (64, 64, 64), 0.05, 0), "y": ir.Tensor("y", (64, 64, 64), 0.05, 0)}
    g = ir.Graph(t, [ir.Conv("c", "x", "y", w, np.zeros(64, np.int32), mult, shift, pads=(1, 1, 1, 1))],
                 ["x"], ["y"])
    with pytest.raises(static.CompileError, match="more than a pynq_z2 DDR bank"):
        static.compile_graph(g, cfg)


def test_many_core_variants_are_chosen_within_the_bank_bandwidth():
    """A late ResNet-style layer (7x7, 512 -> 512, 3x3) on 16 cores: the tiles
    that would balance the MACs best read the 2.4 MB of weights once per
    spatial tile, more than one DDR bank moves in their compute time. The
    variant offered for 16 cores is bounded by the bank instead: no slower by
    the estimate, and it moves fewer words than the compute-only pick."""
    from vfpga import overlay
    from vfpga.runtime.compiler import lower

    rng = np.random.default_rng(2)
    layer = ir.Conv("c", "x", "y", rng.integers(-100, 100, (512, 512, 3, 3), dtype=np.int8),
                    np.zeros(512, np.int32), *fixed_point.quantize_multipliers(np.full(512, 0.002)),
                    pads=(1, 1, 1, 1))
    import copy
    one_bank = copy.deepcopy(overlay.load("u200"))
    one_bank["ddr"]["segment_banks"] = 1  # the tenant's segment in one bank, not striped over four
    geo = lower.Geometry.from_config(one_bank)
    tilings = lower.conv_tilings(layer, (7, 7, 512), 512, geo)
    compute_only = min(tilings, key=lambda t: (lower._ceil(t.frames, 16) * t.cost / t.frames, t.cost))
    assert compute_only.ddr_cycles > lower._ceil(compute_only.frames, 16) * compute_only.cost / compute_only.frames
    # u200: one 64-byte bus word a cycle is the bank's 19.2 GB/s at 300 MHz
    assert compute_only.ddr_cycles == pytest.approx(compute_only.ddr_beats)
    picked = [t for t in lower.conv_variants(layer, (7, 7, 512), 512, geo, [16]) if not t.widest or t.frames > 1]
    best = min(picked, key=lambda t: t.makespan(16))
    assert best.makespan(16) <= compute_only.makespan(16)
    assert best.ddr_beats < compute_only.ddr_beats
    # u200 as configured stripes the segment over four banks: four words a cycle, the compute-only pick fits
    striped = lower.conv_tilings(layer, (7, 7, 512), 512, lower.Geometry.from_config(overlay.load("u200")))[0]
    assert striped.ddr_cycles == pytest.approx(striped.ddr_beats / 4)
    # a bank that moves more than a bus word a cycle (u50's HBM: 333 B against a 32-byte bus) bounds it less
    hbm = lower.Geometry.from_config(overlay.load("u50"))
    t50 = lower.conv_tilings(layer, (7, 7, 512), 512, hbm)[0]
    assert t50.ddr_cycles == pytest.approx(t50.ddr_beats * 32 / (100e9 / 300e6))
