"""A CNN tenant deployed with max_inflight > 1 on the emulated board (real
C-sim cores, the HLS dispatcher): several requests in flight, each on its
own activation slot, results bit-identical to one at a time, nothing lost
or duplicated under live re-allocation, a deploy that does not fit says
how many slots would."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from harness import bank_bytes_for, emulated_accelerator, wait_for
from test_multitenant import BOARD, _reallocation_stress, accel, result, tiny  # noqa: F401 - fixtures

from vfpga.driver import isa
from vfpga.runtime.compiler.segment import segment_layout
from vfpga.runtime.tenants import DeployError, TenantFault


def test_results_are_bit_identical_to_one_at_a_time(accel, tiny):  # noqa: F811
    one = accel.deploy(tiny.compiled, cores=4, name="one")
    many = accel.deploy(tiny.compiled, cores=4, name="many", max_inflight=3)
    assert many.context.max_inflight == 3 and len(many._workers) == 3
    xs = [tiny.inputs[i % len(tiny.inputs)] for i in range(10)]
    futs = [(one.submit_quantized(x), many.submit_quantized(x)) for x in xs]
    seqs = []
    for i, (f1, fm) in enumerate(futs):
        (y1,), _ = result(f1)
        (ym,), info = result(fm)
        np.testing.assert_array_equal(ym, y1)
        tiny.check((ym,), i % len(tiny.inputs))
        seqs += [c.seq for c in info.completions]
    assert sorted(seqs) == list(range(len(xs)))  # one record each, none twice
    regs = many.context.counters()
    assert regs["requests"] == len(xs) and regs["failed"] == 0


def test_a_context_reused_after_several_in_flight_holds_one_again(accel, tiny):  # noqa: F811
    """The dispatcher latches max_inflight at enable from a register that
    outlives the tenant: the next tenant on the context sets it again."""
    many = accel.deploy(tiny.compiled, cores=2, name="many", max_inflight=3)
    index = many.context.index
    assert accel.dispatcher.tenant_read(index, "max_inflight") == 3
    accel.remove(many)
    one = accel.deploy(tiny.compiled, cores=2, name="one")
    assert one.context.index == index
    assert accel.dispatcher.tenant_read(index, "max_inflight") == 1
    (y,), _ = result(one.submit_quantized(tiny.inputs[0]))
    tiny.check((y,), 0)


def test_live_reallocations_with_requests_in_flight_lose_nothing(accel, tiny):  # noqa: F811
    assert _reallocation_stress(accel, tiny, 30, seed=3, max_inflight=3) >= 50


def test_a_reallocation_waits_for_a_free_program_half_then_goes_on(monkeypatch, accel, tiny):  # noqa: F811
    """New programs go into a half no posted request walks: with requests
    in flight on both halves, retarget() waits until one half's requests
    have their records, and those requests' results are right."""
    t = accel.deploy(tiny.compiled, cores=2, name="t", max_inflight=2)
    monkeypatch.setattr(t, "_direct", False)  # each request on its own request thread's slot
    mask = t.context.active_mask
    t.context.set_mask(0)  # posted requests stay in flight until the cores come back
    first = t.submit_quantized(tiny.inputs[0])
    wait_for("the first request's doorbell", lambda: t._half_users[t._active_half] == 1)
    t.retarget(t.k)  # the other half is free: no wait
    second = t.submit_quantized(tiny.inputs[1])
    wait_for("the second request's doorbell", lambda: t._half_users == [1, 1])
    waiting = threading.Thread(target=t.retarget, args=(t.k,), daemon=True)
    waiting.start()
    wait_for("the reallocation to wait", lambda: t._retargets_waiting == 1)
    assert waiting.is_alive() and not first.done() and not second.done()
    t.context.set_mask(mask)
    waiting.join(60.0)
    assert not waiting.is_alive() and t._retargets_waiting == 0
    for i, f in enumerate((first, second)):
        tiny.check(result(f)[0], i)
    tiny.check(result(t.submit_quantized(tiny.inputs[2]))[0], 2)  # on the new programs


def test_a_deploy_that_does_not_fit_says_how_many_slots_would(tiny):  # noqa: F811
    sizes = {m: segment_layout(tiny.compiled, max_inflight=m).size for m in (1, 2, 4)}
    a = emulated_accelerator(BOARD, bank_bytes_for(BOARD, sizes[2]) + 4096)
    try:
        with pytest.raises(DeployError, match=r"max_inflight [12] would fit"):
            a.deploy(tiny.compiled, cores=2, name="big", max_inflight=4)
        with pytest.raises(DeployError, match="max_inflight must be 1..4"):
            a.deploy(tiny.compiled, cores=2, name="big", max_inflight=9)
        assert a.deploy(tiny.compiled, cores=2, name="ok", max_inflight=2).max_inflight == 2
    finally:
        a.close()


def test_a_fault_in_one_slot_fails_its_request_and_stops_the_tenant_alone(accel, tiny):  # noqa: F811
    """Slot 1's instruction copy loads past the segment: the request on it
    is FAULT, the ones behind it in flight ABORTED with the fault (older ones
    complete), the queued ones refused; another tenant's requests all
    complete correctly; reset() brings the tenant back."""
    other = accel.deploy(tiny.compiled, cores=4, name="other", max_inflight=2)
    t = accel.deploy(tiny.compiled, cores=4, name="t", max_inflight=3)
    at, n = t.slots.program(1), len(tiny.compiled.program)
    good = t.segment.read(at, n).copy()
    bad = good.copy().reshape(-1, isa.INSN_BYTES)
    loads = isa.opcodes_of(bad) == isa.OPCODES["LOAD_TILE"]  # every variant's
    rows = bad[loads].copy().view(isa.FORMATS["mem"])
    rows["dram_addr"] = t.segment.size  # the first byte past the segment
    bad[loads] = rows.view(np.uint8).reshape(-1, isa.INSN_BYTES)
    t.segment.write(at, bad.reshape(-1))
    t.segment.sync_to_device(at, n)
    futs = [t.submit_quantized(tiny.inputs[j % len(tiny.inputs)]) for j in range(9)]
    theirs = [other.submit_quantized(tiny.inputs[j % len(tiny.inputs)]) for j in range(9)]
    statuses = []
    for f in futs:
        e = f.exception(timeout=60)
        if e is None:
            statuses.append("OK")
            continue
        assert isinstance(e, TenantFault)
        statuses.append(e.completion.status if e.completion is not None else "refused")
        if e.completion is not None and e.completion.status != "OK":
            assert e.completion.fault_name == "SEGMENT"
    assert statuses.count("FAULT") == 1
    for j, (f, st) in enumerate(zip(futs, statuses)):
        if st == "OK":  # recorded before the fault's stop: correct
            tiny.check(f.result()[0], j % len(tiny.inputs))
    assert "ABORTED" in statuses or "refused" in statuses
    assert t.fault is not None and t.context.status == "FAULTED"
    for j, f in enumerate(theirs):
        tiny.check(result(f)[0], j % len(tiny.inputs))
    # fixed and reset: every slot runs again
    t.segment.write(at, good)
    t.segment.sync_to_device(at, n)
    t.reset()
    for j, f in enumerate([t.submit_quantized(tiny.inputs[j % len(tiny.inputs)]) for j in range(6)]):
        tiny.check(result(f)[0], j % len(tiny.inputs))
