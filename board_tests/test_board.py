"""The host scenarios on a board: correctness against onnxruntime,
multi-tenant sharing, live re-allocation, isolation, and the hardware cycle
counters against the cycle model (error reported per layer)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from vfpga.runtime.compiler import static
from vfpga.runtime.errors import TenantFault
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small

# the cycle model's stated accuracy on the board (per request; per layer it is reported)
CYCLE_MODEL_TOLERANCE = 0.25


def tiny_graph(seed: int):
    return small.conv_graph(seed, shape=(16, 16, 16), cout=32, pool=False)


def x_for(graph, seed):
    return np.random.default_rng(seed).integers(-128, 128, size=graph.tensors["x"].shape, dtype=np.int8)


def check(tenant, seed):
    x = x_for(tenant.graph, seed)
    (y,), info = tenant.run_quantized(x)
    np.testing.assert_array_equal(y, golden.run_graph(tenant.graph, x)[tenant.graph.outputs[0]])
    return info


def test_the_board_is_used(accel):
    assert accel.mode == "board"
    assert accel.dispatcher.read("cores") == accel.config["cnn_core"]["count"]


def test_small_cnn_against_onnxruntime(accel, tmp_path):
    """Bit-exact with the golden model on the quantized input, and close to
    onnxruntime on the float model (the quantization's own error)."""
    import onnx
    import onnxruntime as ort

    from vfpga.runtime.compiler import frontend

    path = tmp_path / "small_cnn.onnx"
    onnx.save(small.small_cnn(seed=0), str(path))
    net = accel.deploy(str(path), cores=min(2, accel.n_cores), calibration=small.calibration_inputs(16, seed=1))
    graph = net.graph
    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x in small.calibration_inputs(8, seed=100):
        y = net.run(x)
        want = frontend.dequantize_output(golden.run_graph(graph, frontend.quantize_input(x, inp))[graph.outputs[0]],
                                          out)
        np.testing.assert_array_equal(y, want)
        ref = session.run(None, {"input": x})[0]
        assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.98


def test_tenants_share_the_board_concurrently(accel):
    k = max(1, accel.n_cores // 2)
    a = accel.deploy(tiny_graph(1), cores=k, name="a")
    b = accel.deploy(tiny_graph(2), cores=max(1, min(k, accel.n_cores - k)), name="b") if accel.n_cores > 1 else None
    errors = []

    def loop(t, base):
        try:
            for i in range(20):
                check(t, base + i)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(t, 100 * i)) for i, t in enumerate(x for x in (a, b) if x)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors


def test_live_reallocation_loses_nothing(accel):
    if accel.n_cores < 2:
        pytest.skip("re-allocation needs at least 2 CNN cores")
    a = accel.deploy(tiny_graph(3), cores=1, name="a")
    futures = [a.submit_quantized(x_for(a.graph, i)) for i in range(16)]
    accel.reallocate({"a": accel.n_cores})
    accel.reallocate({"a": 1})
    for i, f in enumerate(futures):
        (y,), _ = f.result()
        np.testing.assert_array_equal(y, golden.run_graph(a.graph, x_for(a.graph, i))["y"])


def test_out_of_segment_tenant_faults_alone(accel):
    from vfpga.driver import isa
    from vfpga.runtime.compiler.segment import segment_layout

    good = static.compile_graph(tiny_graph(4), accel.board)
    program = good.program.copy()
    limit = segment_layout(good).size
    for i in np.flatnonzero(isa.opcodes_of(program) == isa.OPCODES["SAVE"]):
        f = isa.decode(program[i * isa.INSN_BYTES:(i + 1) * isa.INSN_BYTES])
        f["dram_addr"] = limit
        head = {k: f.pop(k) for k in ("deps", "flags", "tag")}
        program[i * isa.INSN_BYTES:(i + 1) * isa.INSN_BYTES] = np.frombuffer(
            isa.encode(f.pop("opcode"), **head, **f), dtype=np.uint8)
    neighbour = accel.deploy(tiny_graph(5), name="neighbour")
    bad = accel.deploy(dataclasses.replace(good, program=program), name="bad")
    with pytest.raises(TenantFault, match="SEGMENT"):
        bad.run_quantized(x_for(bad.graph, 0))
    check(neighbour, 1)
    bad.reset()
    assert bad.context.status == "IDLE"
    check(neighbour, 2)


def test_cycle_counters_against_the_cycle_model(accel):
    """The dispatcher's measured request cycles against the model, with the
    error per layer printed (run with -s to see it)."""
    t = accel.deploy(tiny_graph(6), cores=1, name="timed")
    info = check(t, 0)
    # on a board the records' cycles come from the overlay's cycle counter (RunInfo keeps the field name)
    measured = info.modeled_cycles
    modeled = t.modeled_cycles
    per_layer = t.layer_cycles()
    for c in info.completions:
        print(f"request {c.request_id}: {c.cycles} cycles measured, {c.frames} frames")
    for layer, cycles in sorted(per_layer.items()):
        print(f"layer {layer} ({t.graph.layers[layer].name}): {cycles} cycles modeled")
    err = abs(measured - modeled) / modeled
    print(f"request: measured {measured} cycles, modeled {modeled}: error {err:.1%}")
    assert err <= CYCLE_MODEL_TOLERANCE


def test_resnet50_per_layer_model_against_counters(accel):
    """The cycle model against the board's cycle stamps per layer of
    ResNet-50 on one core: each layer's frames run as one request (table
    printed; run with -s). Its per-request accuracy is the bound asserted;
    `vfpga calibrate --board <board>` fits the model where it is off."""
    from vfpga.runtime.cli.calibrate import format_layer_table, layer_table
    from vfpga.runtime.models import zoo

    model = zoo.load("resnet50")
    compiled = accel.compile(model, calibration=zoo.random_inputs(model, 2, seed=1))
    rows = layer_table(accel, compiled)
    print(f"ResNet-50 on {accel.board}, one core (cycles measured by the dispatcher's stamps):")
    print(format_layer_table(rows))
    modeled, measured = sum(r.modeled for r in rows), sum(r.measured for r in rows)
    assert abs(modeled - measured) / measured <= CYCLE_MODEL_TOLERANCE
