"""The direct path (runtime/tenants/direct.py): a request to an idle CNN
tenant is posted by the submitting thread and answered by the completion
thread, with no request thread between; requests that arrive meanwhile
queue for the request threads in submission order. On the real emulated
stack; the spies below wrap the real methods and only note which thread
called them."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from harness import corrupt, emulated_accelerator, make_model, random_inputs, wait_for

from vfpga.runtime.compiler import frontend, static
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small
from vfpga.runtime.tenants import TenantFault, request

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def tiny():
    return make_model("tiny", small.conv_graph(7), seed=7)


@pytest.fixture
def accel():
    a = emulated_accelerator("u200")
    yield a
    a.close()


def _spy(monkeypatch, tenant, method: str) -> list:
    """Notes (thread name, first argument) of each call of ``tenant.method``."""
    calls, real = [], getattr(tenant, method)

    def spy(*args, **kwargs):
        calls.append((threading.current_thread().name, args[0] if args else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(tenant, method, spy)
    return calls


def test_an_idle_tenant_answers_on_the_direct_path(monkeypatch, accel, tiny):
    t = accel.deploy(tiny.compiled, cores=2, name="t")
    writes = _spy(monkeypatch, t, "_write_input")
    answers = _spy(monkeypatch, t, "_succeed")
    for i, x in enumerate(tiny.inputs):
        outs, info = t.submit_quantized(x).result(TIMEOUT)
        tiny.check(outs, i)
        assert info.ok and info.submit_to_doorbell_s > info.input_marshal_s > 0 and info.completion_to_result_s > 0
    me = threading.current_thread().name
    assert [name for name, _ in writes] == [me] * len(tiny.inputs)  # the caller wrote and rang
    assert {name for name, _ in answers} == {"vfpga-completions"}  # the completion thread answered
    assert t.requests == len(tiny.inputs) and len(t.overheads()) == len(tiny.inputs)


@pytest.mark.parametrize("path", ["direct", "request thread"])
def test_the_input_marshalling_counts_a_float_inputs_quantization(monkeypatch, accel, tiny, path):
    """RunInfo.input_marshal_s: a float input's quantization, then its write into device memory."""
    t = accel.deploy(tiny.compiled, cores=2, name="t")
    if path == "request thread":
        monkeypatch.setattr(t, "_direct", False)
    writes = _spy(monkeypatch, t, "_write_input")
    quantize, pause = frontend.quantize_input, 0.05

    def slow_quantize(x, tensor):  # the real one, after a pause the figure must include
        threading.Event().wait(pause)
        return quantize(x, tensor)

    monkeypatch.setattr(frontend, "quantize_input", slow_quantize)
    x = frontend.dequantize_output(tiny.inputs[0], t.graph.tensors[t.graph.inputs[0]])
    _, info = t.submit_float_with_info(x).result(TIMEOUT)
    assert info.submit_to_doorbell_s >= info.input_marshal_s >= pause
    _, info = t.submit_quantized(tiny.inputs[0]).result(TIMEOUT)  # an int8 input: the write alone
    assert 0 < info.input_marshal_s < pause
    assert {name for name, _ in writes} == {threading.current_thread().name if path == "direct" else "vfpga-tenant-t-0"}


def test_requests_arriving_meanwhile_queue_in_submission_order(monkeypatch, accel, tiny):
    t = accel.deploy(tiny.compiled, cores=2, name="t")
    writes = _spy(monkeypatch, t, "_write_input")
    t.context.set_mask(0)  # the first request stays in flight until the cores come back
    xs = [tiny.inputs[i % len(tiny.inputs)] for i in range(6)]
    futs = [t.submit_quantized(xs[0])]
    wait_for("the first request's doorbell", lambda: t.context.pending == 1)
    futs += [t.submit_quantized(x) for x in xs[1:]]
    assert t.pending == 5 and not futs[0].done()
    t.context.set_mask((1 << t.cores[0]) | (1 << t.cores[1]))
    for i, f in enumerate(futs):
        tiny.check(f.result(TIMEOUT)[0], i % len(tiny.inputs))
    assert [x is want for (_, x), want in zip(writes, xs)] == [True] * 6  # written in submission order
    assert writes[0][0] == threading.current_thread().name
    assert {name for name, _ in writes[1:]} == {"vfpga-tenant-t-0"}
    # idle again: the next request takes the direct path again
    tiny.check(t.submit_quantized(xs[0]).result(TIMEOUT)[0], 0)
    assert writes[-1][0] == threading.current_thread().name


def test_a_direct_request_without_a_record_stops_the_tenant_until_reset(monkeypatch, accel, tiny):
    monkeypatch.setattr(request, "REQUEST_TIMEOUT_S", 0.3)
    t = accel.deploy(tiny.compiled, cores=1, name="t")
    t.context.set_mask(0)  # no core: the dispatcher never writes its record
    fut = t.submit_quantized(tiny.inputs[0])
    with pytest.raises(TenantFault, match=r"tenant 't': no completion record after 0.3 s \(context status RUNNING\); "
                                          r"stopped until reset\(\)"):
        fut.result(TIMEOUT)
    assert t.failed == 1
    # the request may still run on the slot's memory: nothing new runs until reset() drains it
    with pytest.raises(TenantFault, match=r"stopped by an earlier fault \(no completion record in time\); call reset"):
        t.submit_quantized(tiny.inputs[1])
    t.context.set_mask(1 << t.cores[0])
    t.reset()
    for i in (1, 2):
        tiny.check(t.run_quantized(tiny.inputs[i])[0], i)


def test_requests_queued_behind_a_faulting_direct_request_are_refused():
    accel = emulated_accelerator("zcu104")
    try:
        bad_model, _, _ = corrupt(static.compile_graph(small.conv_graph(2), "zcu104"), "past-end")
        bad = accel.deploy(bad_model, name="bad")
        x = random_inputs(bad.graph, 1, 3)[0]
        bad.context.set_mask(0)
        first = bad.submit_quantized(x)
        wait_for("the first request's doorbell", lambda: bad.context.pending == 1)
        queued = [bad.submit_quantized(x) for _ in range(3)]
        bad.context.set_mask(1 << bad.cores[0])
        with pytest.raises(TenantFault, match=r"tenant 'bad': request \d+ FAULT: SEGMENT"):
            first.result(TIMEOUT)
        for f in queued:  # none of them ran on the faulted context
            with pytest.raises(TenantFault, match=r"not run: the tenant stopped on an earlier fault \(SEGMENT"):
                f.result(TIMEOUT)
        assert bad.failed == 1 and bad.requests == 0 and bad.context.counters()["failed"] == 1
    finally:
        accel.close()


def test_a_model_with_a_host_part_runs_on_its_request_thread(monkeypatch, tmp_path):
    path = tmp_path / "softmax.onnx"
    onnx.save(small.with_op("Softmax", axis=1), str(path))  # a Softmax between two convolutions
    accel = emulated_accelerator("pynq_z2")
    try:
        t = accel.deploy(str(path), calibration=small.calibration_inputs(4))
        assert [p.kind for p in t.compiled.parts] == ["accel", "cpu", "accel"]
        assert all(not kept for kept in t._host_kept.values())  # an accelerator part reads the softmax's output
        answers = _spy(monkeypatch, t, "_succeed")
        x = small.calibration_inputs(1, seed=5)[0]
        y = t.run(x)
        assert np.isfinite(y).all()
        assert [name for name, _ in answers] == ["vfpga-tenant-" + t.name + "-0"]
    finally:
        accel.close()


def test_a_classifier_s_softmax_runs_on_the_completion_thread(monkeypatch):
    accel = emulated_accelerator("u200")
    try:
        t = accel.deploy(small.classifier_with_softmax(1), calibration=small.calibration_inputs(4))
        assert [p.kind for p in t.compiled.parts] == ["accel", "cpu"]  # the host tail: the softmax
        answers = _spy(monkeypatch, t, "_succeed")
        graph = t.graph
        for x in small.calibration_inputs(3, seed=11):
            x_q = frontend.quantize_input(x, graph.tensors[graph.inputs[0]])
            (got,), info = t.run_quantized(x_q)
            assert np.array_equal(got, golden.run_graph(graph, x_q)[graph.outputs[0]])
            assert info.host_cpu_seconds > 0 and info.completion_to_result_s > 0
        assert {name for name, _ in answers} == {"vfpga-completions"}
    finally:
        accel.close()


@pytest.mark.parametrize("path", ["direct", "request thread"])
def test_a_host_tails_int8_output_goes_into_the_result_from_the_host(monkeypatch, path):
    """The tail's quantized softmax, which no later part reads, is neither
    written into device memory nor read back from it; the result is the
    golden model's, on either path."""
    accel = emulated_accelerator("u200")
    try:
        t = accel.deploy(small.classifier_with_softmax(1), calibration=small.calibration_inputs(4))
        if path == "request thread":
            monkeypatch.setattr(t, "_direct", False)
        (out,), tail = t.compiled.outputs, t.compiled.parts[-1]
        assert t._host_kept == {tail.layer: {out.name}}
        writes, reads, answers = (_spy(monkeypatch, t, m) for m in ("_write", "_read", "_succeed"))
        graph = t.graph
        for x in small.calibration_inputs(3, seed=13):
            x_q = frontend.quantize_input(x, graph.tensors[graph.inputs[0]])
            (got,), _ = t.run_quantized(x_q)
            assert np.array_equal(got, golden.run_graph(graph, x_q)[out.name])
        assert out.name not in {p.name for _, p in writes + reads}
        assert {p.name for _, p in reads} == set(graph.layers[tail.layer].inputs)  # the tail's input: from the device
        assert {name for name, _ in answers} == {"vfpga-completions" if path == "direct" else f"vfpga-tenant-{t.name}-0"}
    finally:
        accel.close()
