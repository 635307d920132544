"""The runtime beneath the server survives what a long-running process
meets: an exception in the completion thread or in a tenant's request
thread fails one request at most, never the ones after it; latency
statistics stay bounded however many requests a tenant serves."""

from __future__ import annotations

import numpy as np
import pytest
from harness import emulated_accelerator, random_inputs

from vfpga.runtime.hw import golden
from vfpga.runtime.models import small
from vfpga.runtime.tenants import tenant as tenant_module


@pytest.fixture
def accel():
    a = emulated_accelerator()
    yield a
    a.close()


def _check(t, x, outs):
    np.testing.assert_array_equal(outs[0], golden.run_graph(t.graph, x)[t.graph.outputs[0]])


def test_a_failing_completion_callback_strands_no_later_request(accel):
    """The completion thread hands records to the tenants' callbacks; one
    that raises is logged, and every later record still arrives (before,
    the thread died and each later request waited for its 600 s timeout)."""
    t = accel.deploy(small.conv_graph(1), name="a")
    other = accel.deploy(small.conv_graph(2), name="b")
    deliver = t.context.on_completion
    calls = []

    def flaky(c):
        deliver(c)
        calls.append(c.request_id)
        if len(calls) == 1:
            raise RuntimeError("a callback bug")

    t.context.on_completion = flaky
    xs = random_inputs(t.graph, 3, seed=1)
    for x in xs:
        outs, _ = t.submit_quantized(x).result(timeout=30)
        _check(t, x, outs)
    (y,) = random_inputs(other.graph, 1, seed=2)
    outs, _ = other.submit_quantized(y).result(timeout=30)
    _check(other, y, outs)
    assert len(calls) == 3 and accel.completions._thread.is_alive()


def test_the_completion_thread_survives_an_exception_in_service(accel, monkeypatch):
    t = accel.deploy(small.conv_graph(1), name="a")
    service = accel.completions.service
    failures = []

    def broken_once():
        if not failures:
            failures.append(1)
            raise OSError("a register read failed")
        service()

    monkeypatch.setattr(accel.completions, "service", broken_once)
    for x in random_inputs(t.graph, 2, seed=3):
        outs, _ = t.submit_quantized(x).result(timeout=30)
        _check(t, x, outs)
    assert failures and accel.completions._thread.is_alive()


def test_a_failing_result_fails_one_request_and_the_tenant_goes_on(accel, monkeypatch):
    """The request thread turns outputs into the caller's result inside its
    try: an exception there fails that request only (before, the thread died
    and every later request of the tenant hung)."""
    t = accel.deploy(small.conv_graph(1), name="a")
    result = t._result
    seen = []

    def failing_once(outs, info, float_io):
        seen.append(1)
        if len(seen) == 1:
            raise ValueError("dequantization failed")
        return result(outs, info, float_io)

    monkeypatch.setattr(t, "_result", failing_once)
    x, x2 = random_inputs(t.graph, 2, seed=4)
    with pytest.raises(ValueError, match="dequantization failed"):
        t.submit_quantized(x).result(timeout=30)
    outs, _ = t.submit_quantized(x2).result(timeout=30)
    _check(t, x2, outs)
    assert (t.requests, t.failed) == (1, 1)


def test_latency_statistics_are_bounded(accel, monkeypatch):
    monkeypatch.setattr(tenant_module, "LATENCY_WINDOW", 5)
    t = accel.deploy(small.conv_graph(1), name="a")
    for x in random_inputs(t.graph, 8, seed=5):
        t.run_quantized(x)
    host, modeled = t.latencies()
    assert len(host) == len(modeled) == 5 and len(t.overheads()) == 5 and t.requests == 8
    s = accel.stats()["a"]
    assert s.requests == 8 and s.latency_ms > 0 and s.host_latency_ms["p99"] >= s.host_latency_ms["p50"] > 0
    # the host overhead on the driver's path: submit -> doorbell, completion record read -> result
    for key in ("submit_to_doorbell", "completion_to_result", "input_marshal"):
        assert s.host_overhead_us[key]["p99"] >= s.host_overhead_us[key]["p50"] > 0
    (x,) = random_inputs(t.graph, 1, seed=6)
    _, info = t.run_quantized(x)
    assert 0 < info.submit_to_doorbell_s and 0 < info.completion_to_result_s
    assert 0 < info.input_marshal_s < info.submit_to_doorbell_s  # the input's marshalling is part of the first half
