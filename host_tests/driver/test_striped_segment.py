"""Striped segments: u200_bigcore's (one core of four bank ports,
``ddr.core_ports`` 4) and u200's (one-port pool cores, every segment over the
four banks, ``ddr.segment_banks`` 4): the mapping, the driver's Segment over
four bank buffers, the dispatcher's checks of such a segment, and models end
to end on both.

The mapping is defined once in C (hls/include/vfpga_ddr.h, vf_seg_window);
overlay.config.Stripe is Python's copy of it, checked here against the C
through vf_dispatch_segment_copy, both directions, edge and random offsets."""

from __future__ import annotations

import mmap
import os
import threading

import numpy as np
import onnx
import pytest
from harness import emulated_accelerator

from vfpga import overlay
from vfpga.driver import host_isa, isa
from vfpga.driver.emulated import EmulatedDevice
from vfpga.driver.segment import Segment, SegmentBoundsError, SegmentPlacementError
from vfpga.runtime.compiler import static
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small

BOARD = "u200_bigcore"
STRIPED = (BOARD, "u200")  # both stripe every segment over their four banks, the same way
CFG = overlay.load(BOARD)
STRIPE = overlay.config.segment_stripe(CFG)
P, W = STRIPE.ports, STRIPE.word
_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


def test_the_board_numbers():
    assert (P, W, STRIPE.bank_stride) == (4, CFG["ddr"]["axi_bytes"], CFG["ddr"]["bank_stride"])
    for board in overlay.available():
        cfg = overlay.load(board)
        macros = overlay.c_macros(cfg)
        # a core's beat is one bus word per port: VF_AXI_BYTES
        assert macros["VF_AXI_BYTES"] == cfg["ddr"].get("core_ports", 1) * cfg["ddr"]["axi_bytes"]
        if board in STRIPED:
            assert overlay.config.segment_stripe(cfg) == STRIPE and macros["VF_SEG_PARTS"] == P
            assert overlay.config.segment_bytes_per_cycle(cfg) == P * overlay.config.core_bytes_per_cycle(
                overlay.load("u200"))  # four banks' bandwidth shared by the segments' frames
        else:
            assert overlay.config.segment_stripe(cfg) is None and macros["VF_SEG_PARTS"] == 1  # contiguous


def test_a_config_whose_stripe_the_big_core_cannot_read_is_refused(tmp_path):
    import json
    with open(os.path.join(overlay.config.CONFIG_DIR, BOARD + ".json")) as f:
        cfg = json.load(f)
    cfg["ddr"]["segment_banks"] = 2  # a four-port core moves one word of each of four parts per beat
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(overlay.BoardConfigError, match="segment_banks"):
        overlay.load(str(path))


EDGES = [0, 1, W - 1, W, W + 1, 2 * W - 1, (P - 1) * W, P * W - 1, P * W, P * W + 1, P * W + W,
         5 * P * W + 3 * W + 17, (1 << 32) - 1, (1 << 32) + W * 3 + 5]


@pytest.mark.parametrize("a", EDGES)
def test_place_and_its_inverse(a):
    part, off = STRIPE.place(a)
    assert (part, off) == ((a // W) % P, (a // (W * P)) * W + a % W)
    assert STRIPE.offset_of(part, off) == a


def test_place_is_a_bijection_on_whole_rows():
    n = 7 * P * W
    placed = [STRIPE.place(a) for a in range(n)]
    assert len(set(placed)) == n
    assert all(off < STRIPE.part_bytes(n) for _, off in placed)
    for p in range(P):  # each part holds n / P bytes, the words p, p + P, ...
        assert sorted(off for q, off in placed if q == p) == list(range(n // P))
    with pytest.raises(ValueError, match="parts 0..3, not 4"):
        STRIPE.offset_of(4, 0)


@pytest.mark.parametrize("size, want", [(1, W), (W, W), (W + 1, W), (P * W, W), (P * W + 1, 2 * W)])
def test_part_bytes(size, want):
    assert STRIPE.part_bytes(size) == want


@pytest.fixture(scope="module", params=STRIPED)
def window(request):
    """A window over the four banks (address space only) and a striping board's emulation library."""
    size = (P - 1) * STRIPE.bank_stride + (1 << 20)
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _NORESERVE)
    lib = host_isa.emulation_module(request.param)
    yield lib, m, np.frombuffer(m, np.uint8), lib.ffi.from_buffer("int8_t[]", m), size, overlay.load(request.param)


def test_python_mapping_agrees_with_the_c_one(window):
    """Both directions: bytes written through the C mapping are where
    Stripe/segment_runs say, and the C gathers what Python scattered."""
    module, _, arr, mem, size, _ = window
    rng = np.random.default_rng(1)
    seg_win = 3 * 4096
    for offset, n in [(0, 1), (0, P * W), (W - 1, 2), (P * W - 3, 7), (5, 3 * P * W + 11)] + [
            (int(rng.integers(0, 40000)), int(rng.integers(1, 3000))) for _ in range(20)]:
        data = rng.integers(0, 256, n, dtype=np.uint8)
        buf = module.ffi.from_buffer("int8_t[]", data.copy())
        module.lib.vf_dispatch_segment_copy(mem, size, seg_win, 1, offset, buf, n, 1)
        runs = overlay.config.segment_runs(STRIPE, seg_win, offset, n)
        assert sum(m for _, _, m in runs) == n
        for at, a, m in runs:
            part, off = STRIPE.place(a)
            assert at == part * STRIPE.bank_stride + seg_win + off
            np.testing.assert_array_equal(arr[at:at + m], data[a - offset:a - offset + m])
        back = module.ffi.new("int8_t[]", n)
        module.lib.vf_dispatch_segment_copy(mem, size, seg_win, 1, offset, back, n, 0)
        np.testing.assert_array_equal(np.frombuffer(module.ffi.buffer(back), np.uint8), data)
        # a contiguous segment: one run at seg_win + offset
        assert overlay.config.segment_runs(None, seg_win, offset, n) == [(seg_win + offset, offset, n)]


# ---------------------------------------------------------------- the driver's Segment

@pytest.fixture(params=STRIPED)
def device(request):
    dev = EmulatedDevice(request.param, bank_capacity=4 << 20)
    yield dev
    dev.close()


def test_a_striped_segment_spreads_over_the_four_banks(device):
    size = 10 * P * W + 100
    with Segment(size, device=device, stripe=STRIPE) as seg:
        assert seg.striped and len(seg.parts) == P
        base = seg.physical_address
        assert [b.physical_address for b in seg.parts] == [base + p * STRIPE.bank_stride for p in range(P)]
        assert [device._find_bank(b.physical_address, 0)[0].idx for b in seg.parts] == list(range(P))
        data = np.random.default_rng(2).integers(0, 256, size, dtype=np.uint8)
        seg.write(0, data)
        seg.sync_to_device()
        # the device bytes of each bank's part, as the mapping places them
        for p in range(P):
            mem, off = device._find_bank(seg.parts[p].physical_address, 0)
            dev_part = mem.array[off:off + STRIPE.part_bytes(size)]
            want = [data[STRIPE.offset_of(p, q)] for q in range(STRIPE.part_bytes(size))
                    if STRIPE.offset_of(p, q) < size]
            np.testing.assert_array_equal(dev_part[:len(want)], want)
            assert len(want) >= size // P - W  # every bank holds a quarter of the segment
        np.testing.assert_array_equal(seg.read(0, size), data)
        with pytest.raises(TypeError, match="one buffer per bank"):
            _ = seg.buffer


def test_segments_allocated_and_freed_at_once_stay_in_step(device):
    """Tenants deployed side by side (a cluster's board actor takes two
    deploys at once) allocate and free striped segments from several
    threads: each segment's parts still sit at one offset of their banks."""
    errors = []

    def churn(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                with Segment(int(rng.integers(1, 64)) * P * W, device=device, stripe=STRIPE) as seg:
                    base = seg.physical_address
                    assert [b.physical_address for b in seg.parts] == [base + p * STRIPE.bank_stride
                                                                      for p in range(P)]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


# ranges inside one word (a ring entry, a record: the syncs' one-word path) in each part, and across words
@pytest.mark.parametrize("offset, n", [(0, 1), (W - 1, 2), (3, W), (P * W - 1, 1), (70, 3 * P * W + 5),
                                       (P * W, P * W), (1000, 1), (W + 5, 16), (3 * W - 16, 16),
                                       (5 * W + 3, W - 3), (7 * W, W)])
def test_syncs_move_exactly_their_range(device, offset, n):
    size = 8 * P * W
    rng = np.random.default_rng(offset + n)
    with Segment(size, device=device, stripe=STRIPE) as seg:
        seg.write(0, np.zeros(size, np.uint8))
        seg.sync_to_device()
        data = rng.integers(1, 256, n, dtype=np.uint8)
        seg.write(offset, data)
        seg.write(0 if offset else offset + n, np.full(1, 7, np.uint8))  # a host byte outside: stays on the host
        seg.sync_to_device(offset, n)
        device_bytes = np.zeros(size, np.uint8)
        for at, a, m in overlay.config.segment_runs(STRIPE, seg.physical_address - device.window_base, 0, size):
            device_bytes[a:a + m] = device.window[at:at + m]
        want = np.zeros(size, np.uint8)
        want[offset:offset + n] = data
        np.testing.assert_array_equal(device_bytes, want)
        # device -> host: only the range comes back
        for at, _, m in overlay.config.segment_runs(STRIPE, seg.physical_address - device.window_base, 0, size):
            device.window[at:at + m] = 9
        seg.sync_from_device(offset, n)
        host = seg.read(0, size)
        assert np.all(host[offset:offset + n] == 9)
        outside = np.ones(size, bool)
        outside[offset:offset + n] = False
        assert not np.any(host[outside] == 9)


@pytest.mark.parametrize("striped", [False, True])
def test_a_view_writes_the_host_copy_in_place(device, striped):
    """What a writer puts into Segment.view is what Segment.write would put there: in the host copy only,
    on the device after a sync of the range."""
    size, offset, n = 6 * P * W, 3 * W + 5, 2 * P * W + 7
    data = np.random.default_rng(5).integers(1, 256, n, dtype=np.uint8)
    with Segment(size, device=device, stripe=STRIPE if striped else None) as seg, \
            Segment(size, device=device, stripe=STRIPE if striped else None) as ref:
        for s in (seg, ref):
            s.write(0, np.zeros(size, np.uint8))
            s.sync_to_device()
        view = seg.view(offset, n)
        assert view.dtype == np.uint8 and view.shape == (n,)
        view[:] = data
        ref.write(offset, data)
        np.testing.assert_array_equal(seg.read(0, size), ref.read(0, size))
        seg.sync_from_device()
        assert not seg.read(0, size).any()  # nothing reached the device without a sync
        view = seg.view(offset, n)
        view[:] = data
        seg.sync_to_device(offset, n)
        ref.sync_to_device(offset, n)
        seg.write(0, np.zeros(size, np.uint8))
        seg.sync_from_device()
        np.testing.assert_array_equal(seg.read(0, size), ref.read(0, size))
        with pytest.raises(SegmentBoundsError, match=rf"\[{size - 1}, {size + 1}\)"):
            seg.view(size - 1, 2)
    with pytest.raises(RuntimeError, match="freed"):
        seg.view(0, 1)


def test_a_striped_segment_starts_in_bank_0(device):
    with pytest.raises(ValueError, match="striped segment starts in bank 0"):
        Segment(4096, bank=2, device=device, stripe=STRIPE)


def test_banks_out_of_step_are_refused_and_nothing_leaks(device):
    filler = device.allocate((4096,), np.uint8, bank=2)  # bank 2's next free offset is no longer bank 0's
    free = [device.get_memory_by_idx(b).free_bytes for b in range(P)]
    with pytest.raises(SegmentPlacementError, match="bank 2's part is at .* out of step"):
        Segment(8192, device=device, stripe=STRIPE)
    assert [device.get_memory_by_idx(b).free_bytes for b in range(P)] == free
    filler.freebuffer()
    Segment(8192, device=device, stripe=STRIPE).free()


# ---------------------------------------------------------------- the dispatcher's checks of a striped segment

class _Regs:
    """The dispatcher's C functions on a window over the four banks."""

    def __init__(self, window):
        self.module, _, self.arr, self.mem, self.size, cfg = window
        ffi, lib = self.module.ffi, self.module.lib
        self.regs, self.state = ffi.new("vf_disp_regs_t *"), ffi.new("vf_disp_state_t *")
        lib.vf_dispatch_reset(self.regs, self.state)
        self.regs.g.mem_base = 0
        self.issued = ffi.new("vf_disp_frame_t[]", cfg["cnn_core"]["count"] + cfg["rnn_core"]["count"])

    def enable(self, t: int, seg_win: int, limit: int, striped: bool):
        r = self.regs.tenant[t]
        r.seg_base, r.seg_limit, r.ring_offset, r.ring_size, r.cpl_offset = seg_win, limit, 0, 8, 4096
        r.control = isa.TENANT_CONTROL["ENABLE"] | (isa.TENANT_CONTROL["STRIPED"] if striped else 0)
        rep = self.module.ffi.new("vf_disp_report_t *")
        self.module.lib.vf_dispatch_advance(self.regs, self.state, self.mem, self.size, self.issued, rep)
        return isa.TENANT_STATUS[r.status], isa.DISPATCH_FAULTS.get(r.fault, r.fault), r.fault_addr


def _first_out(seg_win: int, limit: int, window: int) -> int:
    """The first segment offset whose byte is outside its part's bank or
    the window, by brute force over the mapping (every byte, as numpy arrays)."""
    a = np.arange(limit, dtype=np.int64)
    w = a // STRIPE.word
    part = w % STRIPE.ports
    at = part * STRIPE.bank_stride + seg_win + (w // STRIPE.ports) * STRIPE.word + a % STRIPE.word
    end = np.where(part == CFG["ddr"]["banks"] - 1, window, np.minimum((part + 1) * STRIPE.bank_stride, window))
    out = np.flatnonzero(at >= end)
    return int(out[0]) if out.size else limit


def test_the_dispatcher_checks_each_part_in_its_bank(window):
    d = _Regs(window)
    assert d.enable(0, 0, 1 << 16, True)[0] == "IDLE"
    # parts end at the window's end in the last bank: the first segment offset out is part 3's first byte past it
    room = (1 << 20) - 8192  # part 3's bytes inside the window from seg_win = 8192
    status, fault, addr = d.enable(1, 8192, 4 * (1 << 20), True)
    assert (status, fault) == ("FAULTED", isa.DISPATCH_FAULTS["WINDOW"])
    assert addr == (room // W) * W * P + 3 * W + room % W == STRIPE.offset_of(3, room)
    # parts 0..2 reaching past their bank's stride, part 3 past the window: the lowest offset out
    status, fault, addr = d.enable(2, STRIPE.bank_stride - 4096, 1 << 16, True)
    assert (status, fault, addr) == ("FAULTED", isa.DISPATCH_FAULTS["WINDOW"], STRIPE.offset_of(3, 0))
    for t, (seg_win, limit) in enumerate([(8192, 4 << 20), (STRIPE.bank_stride - 4096, 1 << 16),
                                          ((1 << 20) - 100, 1000), ((1 << 20) - 64 * 5, 64 * 4 * 5 + 1),
                                          ((1 << 20) - 64 * 5, 64 * 4 * 5 + 64 * 3 + 1)], 5):
        _, fault, addr = d.enable(t, seg_win, limit, True)
        out = _first_out(seg_win, limit, d.size)
        assert (fault, addr) == (isa.DISPATCH_FAULTS["WINDOW"], out) if out < limit else \
            fault != isa.DISPATCH_FAULTS["WINDOW"]
    # overlapping the live striped segment of tenant 0 in bank 2 only (a contiguous segment there)
    status, fault, _ = d.enable(3, 2 * STRIPE.bank_stride + 4096, 4096, False)
    assert (status, fault) == ("FAULTED", isa.DISPATCH_FAULTS["OVERLAP"])
    # beside it: fine
    assert d.enable(4, 2 * STRIPE.bank_stride + (1 << 16) // P, 8192, False)[0] == "IDLE"


# ---------------------------------------------------------------- a model end to end

def test_a_model_on_the_big_core_is_striped_and_exact():
    """A model on u200_bigcore's big core: its segment striped over the four
    banks (the dispatcher latched it so), outputs bit-identical to the golden
    model, and its bytes really in all four banks."""
    accel = emulated_accelerator(BOARD)
    try:
        g = small.conv_graph(3, shape=(12, 12, 64), cout=128)
        t = accel.deploy(static.compile_graph(g, BOARD), name="big")
        assert t.segment.striped and t.segment.bank == 0
        assert accel.dispatcher.tenant_read(t.context.index, "control") & isa.TENANT_CONTROL["STRIPED"]
        assert accel.device.dispatcher.state.tenant[t.context.index].striped == 1  # latched at enable
        for seed in range(3):
            x = np.random.default_rng(seed).integers(-128, 128, g.tensors[g.inputs[0]].shape, dtype=np.int8)
            (y,), info = t.run_quantized(x)
            assert all(c.ok for c in info.completions)
            np.testing.assert_array_equal(y, golden.run_graph(g, x)[g.outputs[0]])
        used = [np.count_nonzero(p.view(np.ndarray)) for p in t.segment.parts]
        assert all(u > t.segment.size // (2 * P) for u in used), used
    finally:
        accel.close()


def test_qlinearconv_on_the_big_core_matches_onnx_reference():
    """An ONNX QLinearConv through the ONNX backend on u200_bigcore (its
    segment striped over four banks): bit-exact with ONNX's reference."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from vfpga.runtime import backend as vb

    rng = np.random.default_rng(5)
    c, oc, hw = 72, 80, 11  # channels past one 64-lane beat, rows of several bus words
    x = rng.integers(-128, 128, size=(1, c, hw, hw)).astype(np.int8)
    w = rng.integers(-128, 128, size=(oc, c, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(np.array(0.0173, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(-7, np.int8), "x_zero_point"),
             numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array([0.00311], np.float32), "w_scale"),
             numpy_helper.from_array(np.array([3], np.int8), "w_zero_point"),
             numpy_helper.from_array(np.array(1.37, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(11, np.int8), "y_zero_point"),
             numpy_helper.from_array(rng.integers(-5000, 5000, size=oc).astype(np.int32), "B")]
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point",
                                            "y_scale", "y_zero_point", "B"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "qconv", [helper.make_tensor_value_info("x", onnx.TensorProto.INT8, x.shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.INT8, (1, oc, hw, hw))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    with vb.prepare(model, f"FPGA:{BOARD}") as rep:
        got = rep.run([x])[0]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_an_lstm_on_the_big_rnn_core_is_striped_and_exact():
    """An LSTM tenant on u200_bigcore's big RNN core (striped segment): the
    RNN compiler's own C-sim executor (contiguous memory) bit for bit, and
    onnxruntime within the RNN tolerance."""
    import onnxruntime as ort

    from vfpga.runtime.compiler import rnn

    model = small.random_rnn_model("LSTM", hidden=96, input_size=40, steps=6, batch=2, seed=3)
    rng = np.random.default_rng(4)
    compiled = rnn.compile_rnn(model, BOARD, calibration=[
        {"X": rng.uniform(-1, 1, (6, 2, 40)).astype(np.float32)} for _ in range(2)])
    accel = emulated_accelerator(BOARD, 64 << 20)
    try:
        t = accel.deploy(compiled, cores=1, name="lstm")
        assert t.kind == "rnn" and t.segment.striped
        x = np.random.default_rng(1).uniform(-1, 1, (6, 2, 40)).astype(np.float32)
        got, info = t.run_with_info(x)
        assert info.ok
        want = rnn.RnnCoreSim(BOARD).run(compiled, rnn.plan_rnn(compiled, 1), {"X": x})
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})
        for g, r in zip(got, ref):
            assert np.abs(np.asarray(g) - r).max() < 0.03
    finally:
        accel.close()


@pytest.mark.parametrize("striped", [False, True])
def test_structs_and_kept_sync_plans_check_the_range_and_the_segment(device, striped):
    """A ring entry packed at an offset reaches the device and comes back; a
    struct past the end is refused; a range synced before (its plan kept)
    is refused once the segment is freed; the parts' sync is for a striped
    segment only."""
    fmt, size = isa.REQUEST_STRUCT, 4 * P * W
    values = tuple(range(1, len(isa.REQUEST.names) + 1))
    at = W - 4  # across a bus word: two parts when striped
    seg = Segment(size, device=device, stripe=STRIPE if striped else None)
    seg.pack_into(fmt, at, *values)
    seg.sync_to_device(at, fmt.size)
    seg.write(at, np.zeros(fmt.size, np.uint8))
    assert seg.unpack_from(fmt, at) == (0,) * len(values)
    seg.sync_from_device(at, fmt.size)
    assert seg.unpack_from(fmt, at) == values
    with pytest.raises(SegmentBoundsError, match=rf"\[{size - fmt.size + 1}, {size + 1}\)"):
        seg.pack_into(fmt, size - fmt.size + 1, *values)
    with pytest.raises(SegmentBoundsError):
        seg.unpack_from(fmt, -1)
    if not striped:
        with pytest.raises(ValueError, match="contiguous"):
            seg.sync_parts_to_device(at, fmt.size)
    seg.free()
    for call in (lambda: seg.sync_to_device(at, fmt.size), lambda: seg.sync_from_device(at, fmt.size),
                 lambda: seg.unpack_from(fmt, at), lambda: seg.pack_into(fmt, at, *values)):
        with pytest.raises(RuntimeError, match="segment has been freed"):  # (the segment's check, before any copy)
            call()
