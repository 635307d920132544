"""The emulated dispatcher's C++ loop (hls/emu/emu_loop.cpp) against its
Python reference (EmulatedDispatcher loop="python").

The two loops are compared from the same state: a board with the Python
loop is set up through the runtime (tenants deployed and run, one of them
with a program that faults), its dispatcher is stopped, requests of several
tenants are posted and core masks changed (a re-allocation that lands while
the requests run, onto cores another tenant used); then its whole state (registers, dispatcher state, device
memory, core buffers, clock and counters) is copied into a board with the
C++ loop, both are started and run until idle, and everything must be equal:
completion records and outputs in memory, every register (the clock, the
tenants' core_cycles / request_cycles, the fault registers), the dispatcher
state, the modeled clock and the timeline's per-core and per-tenant cycles.
The C++ loop starts with no knowledge of clean frames, so each tenant's
first request is run and waited for at issue and its later ones run ahead
(timed at issue, waited for at retire), on several cores, next to the
faulting tenant and the re-allocation.

A frame's fault can depend on data: the PARAM shifts a CONV checks. The
loops agree when a program that ran cleanly has a shift corrupted in memory
(the C++ loop's knowledge is keyed on the PARAM load bytes), and the C++
loop's check at retire fires when its knowledge is corrupted on purpose.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from harness import SMALL_BANK, add_chain_graph, corrupt, random_inputs

from vfpga.driver import emulated_dispatcher, isa
from vfpga.driver.cnn_core import AP_START, AUTO_RESTART
from vfpga.driver.emulated import EmulatedDevice
from vfpga.driver.segment import Segment
from vfpga.runtime import tenants
from vfpga.runtime.compiler import static
from vfpga.runtime.errors import TenantFault
from vfpga.runtime.models import small

BOARD = "u200"


def _device(monkeypatch, loop: str, compute: bool) -> EmulatedDevice:
    monkeypatch.setenv("VFPGA_EMU_LOOP", loop)
    dev = EmulatedDevice(BOARD, bank_capacity=SMALL_BANK, compute=compute)
    assert dev.dispatcher.loop == loop
    return dev


def _treg_offset(config, t: int, name: str) -> int:
    disp = config["dispatcher"]
    return (int(disp["registers"]["file"]) + int(disp["tenant_base"]) + t * int(disp["tenant_stride"])
            + int(disp["tenant_registers"][name]))


def _copy_state(src, dst, ffi) -> None:
    """Everything the loop reads and writes, from the stopped dispatcher ``src`` into the fresh ``dst``."""
    for bank in range(len(src.device.banks)):  # the emulated banks (the window between them is a hole)
        dst.device.bank_array(bank)[:] = src.device.bank_array(bank)
    ffi.buffer(dst.regs)[:] = ffi.buffer(src.regs)
    ffi.buffer(dst.state)[:] = ffi.buffer(src.state)
    regs = src.config["dispatcher"]["registers"]
    for name, value in src.scalars.items():  # the window registers (the native loop learns its window from them)
        dst.write_word(int(regs[name]), value & 0xFFFFFFFF)
        dst.write_word(int(regs[name]) + 4, value >> 32)
    for name in ("core_busy_cycles", "tenant_frame_cycles", "tenant_solo_cycles"):
        np.copyto(getattr(dst.timeline, name), getattr(src.timeline, name))
    assert dst.lib.vf_emu_set_clock(dst._emu, src.now) == 1
    for core, bufs in enumerate(src._buffers):
        if bufs is not None:
            dst._buffers_of(core)
            for key, array in bufs[1].items():
                ffi.buffer(dst._buffers[core][1][key])[:] = ffi.buffer(array)


def _run_until(dev, heads: dict[int, int], timeout: float = 60.0) -> None:
    """Starts the dispatcher; returns once every context in ``heads`` has that
    ring head (its records written) and the loop has gone idle."""
    disp = dev.dispatcher
    disp.write_word(int(dev.config["dispatcher"]["registers"]["ctrl"]), AP_START | AUTO_RESTART)
    deadline = time.monotonic() + timeout
    while any(disp.read_word(_treg_offset(dev.config, t, "ring_head")) != h for t, h in heads.items()):
        assert time.monotonic() < deadline, "the requests did not complete"
        time.sleep(0.005)
    last = None
    while True:  # idle: the clock and the registers stay as they are
        time.sleep(0.05)
        now = (disp.now, bytes(disp.ffi.buffer(disp.regs)))
        if now == last:
            return
        last = now
        assert time.monotonic() < deadline, "the dispatcher did not go idle"


def _snapshot(dev) -> dict:
    d = dev.dispatcher
    return {"regs": bytes(d.ffi.buffer(d.regs)), "state": bytes(d.ffi.buffer(d.state)), "now": d.now,
            "frames": d.timeline.frames, "memory": [dev.bank_array(b).tobytes() for b in range(len(dev.banks))],
            **{n: getattr(d.timeline, n).tolist() for n in ("core_busy_cycles", "tenant_frame_cycles",
                                                           "tenant_solo_cycles")}}


@pytest.mark.parametrize("striped", [True, False], ids=["striped", "one-bank"])
@pytest.mark.parametrize("compute", [True, False], ids=["compute", "timing-only"])
def test_native_loop_matches_the_python_loop(monkeypatch, compute, striped):
    ref_dev = _device(monkeypatch, "python", compute)
    accel = tenants.Accelerator(BOARD, device=ref_dev, stripe_segments=striped)
    nat_dev = None
    try:
        # every segment striped over the four banks (the frames' key and bank as the stripe has them),
        # or every one in bank 0, so that the adds' frames (DDR-bound) share its bandwidth
        walls = [] if striped else [Segment(SMALL_BANK, bank=bank, device=ref_dev) for bank in (1, 2, 3)]
        a = accel.deploy(static.compile_graph(add_chain_graph(), BOARD), cores=4, name="a")
        b = accel.deploy(static.compile_graph(add_chain_graph(c=32), BOARD), cores=3, name="b")
        c = accel.deploy(static.compile_graph(small.conv_graph(4), BOARD), cores=1, name="c")
        bad = accel.deploy(corrupt(static.compile_graph(small.conv_graph(3), BOARD), "past-end")[0], cores=1,
                           name="bad") if compute else None
        for t in (a, b, c):
            t.run_quantized(random_inputs(t.graph, 1, 7)[0])
        # cores another tenant used: whoever gets them next has them scrubbed first
        tmp = accel.deploy(static.compile_graph(small.conv_graph(5), BOARD), cores=4, name="tmp")
        tmp.run_quantized(random_inputs(tmp.graph, 1, 8)[0])
        used = list(tmp.cores)
        accel.remove("tmp")
        # the host side stops: no completion thread, then no dispatcher
        accel.completions.stop()
        with ref_dev.dispatcher.lock:  # wakes it (the Python loop's line is raised under its lock)
            ref_dev.dispatcher.irq_line.raise_()
        accel.completions._thread.join(10)
        ref = ref_dev.dispatcher
        ref.write_word(int(ref_dev.config["dispatcher"]["registers"]["ctrl"]), 0)
        time.sleep(0.05)

        # requests of several tenants, posted while the dispatcher is stopped
        posts = {a: 3, b: 2, c: 4} | ({bad: 1} if bad else {})
        for i, (t, n) in enumerate(posts.items()):
            t._write(t.compiled.input, t.compiled.device_input(random_inputs(t.graph, 1, i)[0]))
            at = t.program_halves[t._active_half]
            for r in range(n):
                t.context.post(at, len(t.plan.programs[0]), 1000 * (i + 1) + r)
        # re-allocation in flight: b moves to other cores, a grows by one (a frame boundary applies them)
        moves = ((b, used[:3]), (a, a.cores + used[3:]))
        for t, cores in moves:
            t.context._w("core_mask", sum(1 << core for core in cores))
            t.context._w("mask_seq", (t.context._r("mask_done") + 1) & 0xFFFFFFFF)
        heads = {t.context.index: t.context._tail & 0xFFFFFFFF for t in posts}

        nat_dev = _device(monkeypatch, "native", compute)
        _copy_state(ref, nat_dev.dispatcher, ref.ffi)
        start = _snapshot(ref_dev)
        assert _snapshot(nat_dev) == start | {"frames": 0}  # the same starting point (the count starts again)

        _run_until(ref_dev, heads)
        _run_until(nat_dev, heads)
        ahead = int(nat_dev.lib.vf_emu_frames_ahead(nat_dev.dispatcher._emu))
        want, got = _snapshot(ref_dev), _snapshot(nat_dev)
        want["frames"] -= start["frames"]
        assert want["frames"] > 0 and want["now"] > 0
        for key in want:
            assert got[key] == want[key], f"{key} differs between the C++ and the Python loop"

        # the scenario did what it is meant to: masks applied in flight, DDR shared, a fault
        for t, cores in moves:
            assert nat_dev.dispatcher.read_word(_treg_offset(nat_dev.config, t.context.index, "active_mask")) \
                == sum(1 << core for core in cores)
        if bad is not None:
            status = nat_dev.dispatcher.read_word(_treg_offset(nat_dev.config, bad.context.index, "status"))
            assert isa.TENANT_STATUS[status] == "FAULTED"
        assert all(t.segment.striped == striped for t in posts)
        if compute:  # the later requests ran ahead, the first ones (and the faulting frames) did not
            assert 0 < ahead < got["frames"], (ahead, got["frames"])
        if not striped:  # a's frames in the run shared bank 0 beyond its bandwidth (stretched)
            i = a.context.index
            assert (got["tenant_frame_cycles"][i] - start["tenant_frame_cycles"][i]
                    > got["tenant_solo_cycles"][i] - start["tenant_solo_cycles"][i]), "no frame was slowed by its bank"
        for t in posts:
            t.context.collect()  # acknowledged, so that the tenants can be removed
        for w in walls:
            w.free()
    finally:
        if nat_dev is not None:
            nat_dev.close()
        accel.close()


def test_native_loop_times_a_program_once(monkeypatch):
    """After its first request, a deployed program's frames are timed without Python."""
    dev = _device(monkeypatch, "native", True)
    accel = tenants.Accelerator(BOARD, device=dev)
    try:
        t = accel.deploy(static.compile_graph(small.conv_graph(1), BOARD), cores=2, name="a")
        x = random_inputs(t.graph, 1, 0)[0]
        t.run_quantized(x)
        asked = sum(dev.dispatcher.questions.values())
        assert asked > 0 and dev.lib.vf_emu_cache_entries(dev.dispatcher._emu) > 0
        for _ in range(3):
            t.run_quantized(x)
        assert sum(dev.dispatcher.questions.values()) == asked
    finally:
        accel.close()


def test_unknown_loop_is_refused(monkeypatch):
    monkeypatch.setenv("VFPGA_EMU_LOOP", "fortran")
    with pytest.raises(ValueError, match="emulated dispatcher loop 'fortran': not one of native, python"):
        EmulatedDevice(BOARD, bank_capacity=SMALL_BANK)
    assert emulated_dispatcher.LOOPS == ("native", "python")


def test_native_bank_sharing_is_frame_timing_s():
    """The one model rule the C++ loop computes itself: bank_stretches, float for float."""
    from vfpga.driver import host_isa
    from vfpga.runtime.hw import frame_timing

    lib, ffi = host_isa.emulation_module(BOARD).lib, host_isa.emulation_module(BOARD).ffi
    rng = np.random.default_rng(5)
    cases = [[], [0.5], [0.5, 0.5], [0.5, 0.5000001], [2.0, 2.0], [0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 1e-12]]
    cases += [list(rng.uniform(0, 2, rng.integers(1, 12))) for _ in range(500)]
    cases += [list(rng.choice([0.125, 0.25, 0.5, 1.0, 2.0], rng.integers(1, 12))) for _ in range(200)]
    for demands in cases:
        out = ffi.new("double[]", max(1, len(demands)))
        lib.vf_emu_bank_stretches(ffi.new("double[]", demands or [0.0]), len(demands), out)
        assert list(out)[:len(demands)] == frame_timing.bank_stretches(demands), demands


def _param_shift(t) -> int:
    """Segment offset of a PARAM shift word the program loads (its first LOAD_LINEAR into PARAM)."""
    program = t.compiled.program
    words = program.reshape(-1, isa.INSN_BYTES)
    for i in np.flatnonzero(isa.opcodes_of(program) == isa.OPCODES["LOAD_LINEAR"]):
        f = isa.decode(words[i])
        if f["buffer"] == isa.BUF_PARAM:
            return f["dram_addr"] + ((2 - f["buf_addr"] // 4) % 3) * 4  # word 2 of an entry: its shift
    raise AssertionError("no PARAM load")


def _shift_fault_run(monkeypatch, loop: str, trust: bool = False):
    """A tenant runs a request cleanly, then one of its PARAM shifts is set
    out of range in memory (the same instructions) and it runs again."""
    dev = _device(monkeypatch, loop, True)
    accel = tenants.Accelerator(BOARD, device=dev)
    try:
        t = accel.deploy(static.compile_graph(small.conv_graph(4), BOARD), cores=2, name="a")
        x = random_inputs(t.graph, 1, 0)[0]
        t.run_quantized(x)
        t.run_quantized(x)
        at = _param_shift(t)
        t.segment.write(at, np.array([99], dtype=np.int32))
        t.segment.sync_to_device(at, 4)
        disp = dev.dispatcher
        if trust:  # the loop stops on its error: the request never completes
            dev.lib.vf_emu_test_trust_cached(disp._emu, 1)
            t.submit_quantized(x)
            deadline = time.monotonic() + 60
            while disp.error is None:
                assert time.monotonic() < deadline, "the loop did not stop on its error"
                time.sleep(0.01)
            return disp, None, None
        try:
            t.run_quantized(x)
            fault = None
        except TenantFault as e:
            fault = e

        def reg(name):
            return disp.read_word(_treg_offset(dev.config, t.context.index, name))
        # the driver acknowledges the records after answering the request: wait for it
        deadline = time.monotonic() + 60
        while reg("cpl_ack") != reg("ring_head"):
            assert time.monotonic() < deadline, "the record was never acknowledged"
            time.sleep(0.001)
        regs = {name: reg(name) for name in dev.config["dispatcher"]["tenant_registers"]}
        return disp, fault, (regs, disp.now)
    finally:
        if dev.dispatcher.error is None:
            accel.close()
        else:  # the host side cannot finish its requests: the device alone closes
            dev.close()


def test_a_corrupted_param_shift_faults_alike_in_both_loops(monkeypatch):
    """The fault a PARAM shift causes is data: the C++ loop must not run the
    frame ahead on what it knew of the instructions."""
    ref, ref_fault, want = _shift_fault_run(monkeypatch, "python")
    nat, nat_fault, got = _shift_fault_run(monkeypatch, "native")
    assert ref_fault is not None and "FIELD" in str(ref_fault)
    assert nat.error is None and nat_fault is not None
    assert got == want
    assert nat.lib.vf_emu_frames_ahead(nat._emu) > 0  # the second request ran ahead


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_corrupted_knowledge_is_an_internal_error(monkeypatch):
    """A frame run ahead that faults anyway stops the loop with an error naming it."""
    disp, _, _ = _shift_fault_run(monkeypatch, "native", trust=True)
    assert isinstance(disp.error, RuntimeError)
    message = str(disp.error)
    assert "known to run without a fault faulted" in message and "tenant 0 request" in message
    with pytest.raises(RuntimeError, match="internal error.*known to run without a fault"):
        disp.read_word(0)


@pytest.mark.parametrize("ahead", ["1", "0"])
def test_later_requests_run_ahead_unless_turned_off(monkeypatch, ahead):
    """A tenant's second request runs ahead (all its frames), or none with VFPGA_EMU_AHEAD=0; the same outputs."""
    monkeypatch.setenv("VFPGA_EMU_AHEAD", ahead)
    dev = _device(monkeypatch, "native", True)
    accel = tenants.Accelerator(BOARD, device=dev)
    try:
        t = accel.deploy(static.compile_graph(small.conv_graph(4), BOARD), cores=2, name="a")
        x = random_inputs(t.graph, 1, 0)[0]
        first, _ = t.run_quantized(x)
        frames = dev.dispatcher.timeline.frames
        assert dev.lib.vf_emu_frames_ahead(dev.dispatcher._emu) == 0  # nothing known yet
        again, _ = t.run_quantized(x)
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        n_ahead = dev.lib.vf_emu_frames_ahead(dev.dispatcher._emu)
        assert n_ahead == (dev.dispatcher.timeline.frames - frames if ahead == "1" else 0)
    finally:
        accel.close()


def _three_requests(monkeypatch, poll: str):
    """Outputs, record cycles and the modeled clock of three requests with the idle poll set to ``poll`` us."""
    monkeypatch.setenv("VFPGA_EMU_POLL_US", poll)
    dev = _device(monkeypatch, "native", True)
    accel = tenants.Accelerator(BOARD, device=dev)
    try:
        t = accel.deploy(static.compile_graph(small.conv_graph(5), BOARD), cores=2, name="a")
        runs = [t.run_quantized(x) for x in random_inputs(t.graph, 3, 1)]
        return [outs for outs, _ in runs], [info.modeled_cycles for _, info in runs], dev.dispatcher.now
    finally:
        accel.close()


def test_the_idle_poll_changes_no_modeled_figure(monkeypatch):
    """The loop's poll for a host write (VFPGA_EMU_POLL_US) is wall time only: the same outputs, records and clock."""
    (outs_a, cycles_a, now_a), (outs_b, cycles_b, now_b) = (_three_requests(monkeypatch, p) for p in ("0", "2000"))
    assert all(np.array_equal(x, y) for a, b in zip(outs_a, outs_b) for x, y in zip(a, b))
    assert cycles_a == cycles_b and now_a == now_b


@pytest.mark.parametrize("value", ["-1", "abc", "2000000"])
def test_a_bad_idle_poll_is_refused(monkeypatch, value):
    monkeypatch.setenv("VFPGA_EMU_POLL_US", value)
    with pytest.raises(ValueError, match="VFPGA_EMU_POLL_US must be"):
        _device(monkeypatch, "native", True)
