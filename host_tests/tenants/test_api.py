"""The public API end to end, its error paths, and tenant isolation.

vfpga.open / Accelerator.deploy / Tenant.run / run_quantized / remove on the
emulated boards: a float ONNX model deployed from a file with calibration
data, every user mistake named clearly, deployment limits, and a tenant whose
program writes outside its segment faulting alone while its neighbours in the
same DDR bank keep their bytes and their results.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from harness import assert_runs_correctly, corrupt, emulated_accelerator, random_inputs

import vfpga
from vfpga.driver import isa
from vfpga.runtime import tenants
from vfpga.runtime.compiler import frontend, static
from vfpga.runtime.compiler.frontend import FrontendError, UnsupportedOperatorError
from vfpga.runtime.hw import golden
from vfpga.runtime.models import small
from vfpga.runtime.tenants import DeployError, TenantFault, TenantRemoved

TINY_BANK = 1 << 20  # the isolation tests compare a whole bank, twice per run





# ---------------------------------------------------------------- small_cnn through an ONNX file


@pytest.fixture(scope="module")
def deployed(small_cnn_path):
    """small_cnn deployed on an emulated u200 from its float ONNX file."""
    accel = emulated_accelerator("u200")
    tenant = accel.deploy(str(small_cnn_path), name="vision", calibration=small.calibration_inputs(16, seed=1))
    yield accel, tenant
    accel.close()


def test_board_mode_without_an_overlay_names_the_build_step():
    with pytest.raises(DeployError, match=r"board mode: no overlay at .*vfpga_zcu104\.bit: build it with make -C "
                                          r"overlay BOARD=zcu104"):
        tenants.open("zcu104", emulate=False)


def test_open_gives_an_emulated_accelerator():
    accel = vfpga.open("pynq_z2")
    try:
        assert accel.mode == "emulated" and accel.board == "pynq_z2"
        assert len(accel.cores) == accel.config["cnn_core"]["count"] == 1
    finally:
        accel.close()


def test_small_cnn_float_onnx_end_to_end(deployed, small_cnn_path):
    accel, tenant = deployed
    graph = tenant.graph
    assert tenant.name == "vision" and accel.tenants == {"vision": tenant}
    assert {layer.kind for layer in tenant.compiled.layers} == {"conv", "pool", "add"}
    session = ort.InferenceSession(str(small_cnn_path), providers=["CPUExecutionProvider"])
    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    for x in small.calibration_inputs(4, seed=100):
        y = tenant.run(x)
        assert isinstance(y, np.ndarray) and y.shape == (1, 10) and y.dtype == np.float32
        # what the accelerator must compute: the golden model on the quantized input, dequantized
        x_q = frontend.quantize_input(x, inp)
        want = frontend.dequantize_output(golden.run_graph(graph, x_q)[graph.outputs[0]], out)
        np.testing.assert_array_equal(y, want)
        # and the quantized model still means what the float model means
        ref = session.run(None, {"input": x})[0]
        assert np.corrcoef(y.ravel(), ref.ravel())[0, 1] > 0.98
        assert np.abs(y - ref).max() < 0.15 * np.abs(ref).max() + 4 * out.scale
    assert tenant.requests >= 4


def test_run_quantized_reports_the_run(deployed):
    _, tenant = deployed
    x = random_inputs(tenant.graph, 1, 7)[0]
    (y,), info = tenant.run_quantized(x)
    assert y.dtype == np.int8 and y.shape == tenant.compiled.outputs[0].shape
    assert all(c.ok for c in info.completions) and info.modeled_cycles > 0 and info.modeled_seconds > 0 and info.host_seconds > 0


@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (1, 32, 32, 3), (2, 3, 32, 32), (3, 32, 32)])
def test_wrong_input_shape_names_the_expected_shape(deployed, shape):
    _, tenant = deployed
    with pytest.raises(FrontendError, match=r"expected float32 NCHW \[1, 3, 32, 32\], got shape "
                                            + r"\[" + ", ".join(map(str, shape)) + r"\]"):
        tenant.run(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int8, bool])
def test_wrong_input_dtype_names_the_expected_dtype(deployed, dtype):
    _, tenant = deployed
    with pytest.raises(FrontendError, match=rf"expected float32 NCHW \[1, 3, 32, 32\], got dtype {np.dtype(dtype)}"):
        tenant.run(np.zeros((1, 3, 32, 32), dtype=dtype))


@pytest.mark.parametrize("dtype, shape", [(np.uint8, (32, 32, 3)), (np.float32, (32, 32, 3)),
                                          (np.int8, (3, 32, 32)), (np.int8, (1, 32, 32, 3))])
def test_run_quantized_names_the_expected_layout(deployed, dtype, shape):
    _, tenant = deployed
    got = np.dtype(dtype).name
    with pytest.raises(ValueError, match=rf"int8 HWC input of shape \(32, 32, 3\), got {got} "
                                         + r"\(" + ", ".join(map(str, shape)) + r",?\)"):
        tenant.run_quantized(np.zeros(shape, dtype=dtype))


# ---------------------------------------------------------------- model files


def test_missing_model_file(tmp_path):
    accel = emulated_accelerator("pynq_z2")
    missing = tmp_path / "no_such_model.onnx"
    with pytest.raises(FrontendError, match=r"no such model file: .*no_such_model\.onnx"):
        accel.deploy(str(missing))
    assert not accel.tenants
    assert_runs_correctly(accel.deploy(small.conv_graph(0)), 1)  # the only core is still free


@pytest.mark.parametrize("content", [b"\x08\x07garbage\xff\xfe not protobuf \x00" * 7,
                                     bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
                                     b"", b"this is a text file, not a model\n"],
                         ids=["junk", "random", "empty", "text"])
def test_garbage_model_file(tmp_path, content):
    accel = emulated_accelerator("pynq_z2")
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    with pytest.raises(FrontendError, match=r"garbage\.onnx' is not (a valid |an )ONNX model"):
        accel.deploy(str(path), calibration=small.calibration_inputs(1))
    with pytest.raises(FrontendError, match=r"given bytes (are|is) not (a valid |an )ONNX model"):
        accel.deploy(content)  # the same bytes in memory
    assert not accel.tenants
    assert_runs_correctly(accel.deploy(small.conv_graph(0)), 1)


@pytest.mark.parametrize("op_type, attrs", [("Softmax", {"axis": 1}), ("LRN", {"size": 3})])
def test_unsupported_operator_names_op_and_node(tmp_path, op_type, attrs):
    path = tmp_path / f"{op_type}.onnx"
    onnx.save(small.with_op(op_type, **attrs), str(path))
    accel = emulated_accelerator("pynq_z2")
    with pytest.raises(UnsupportedOperatorError, match=rf"{op_type} \(node 'the_{op_type.lower()}'\)") as e:
        accel.deploy(str(path), calibration=small.calibration_inputs(2), fallback=False)
    assert (e.value.op_type, e.value.node_name) == (op_type, f"the_{op_type.lower()}")
    assert isinstance(e.value, FrontendError)
    assert not accel.tenants
    assert_runs_correctly(accel.deploy(small.conv_graph(0)), 1)


@pytest.mark.parametrize("op_type, attrs", [("Softmax", {"axis": 1}), ("LRN", {"size": 3})])
def test_unsupported_operator_runs_on_the_cpu_by_default(tmp_path, op_type, attrs):
    path = tmp_path / f"{op_type}.onnx"
    onnx.save(small.with_op(op_type, **attrs), str(path))
    accel = emulated_accelerator("pynq_z2")
    tenant = accel.deploy(str(path), calibration=small.calibration_inputs(4))
    graph = tenant.graph
    assert [layer.kind for layer in graph.layers].count("cpu") == 1
    assert [p.kind for p in tenant.compiled.parts] == ["accel", "cpu", "accel"]
    cpu = next(layer for layer in graph.layers if layer.kind == "cpu")
    assert f"the_{op_type.lower()}" in cpu.onnx_nodes
    for x in small.calibration_inputs(2, seed=9):
        x_q = frontend.quantize_input(x, graph.tensors[graph.inputs[0]])
        (got,), _ = tenant.run_quantized(x_q)
        assert np.array_equal(got, golden.run_graph(graph, x_q)[graph.outputs[0]])


# ---------------------------------------------------------------- deployment limits


def test_more_tenants_than_cores():
    accel = emulated_accelerator("zcu104")
    tenants = [accel.deploy(small.conv_graph(i), name=f"t{i}") for i in range(4)]
    assert sorted(c for t in tenants for c in t.cores) == [0, 1, 2, 3]
    free = accel.device.get_memory_by_idx(0).free_bytes
    with pytest.raises(DeployError, match=r"asked for 1 CNN cores, 0 free \(4 held by \['t0', 't1', 't2', 't3'\]\)"):
        accel.deploy(small.conv_graph(9), name="fifth")
    assert "fifth" not in accel.tenants and accel.device.get_memory_by_idx(0).free_bytes == free
    for i, t in enumerate(tenants):
        assert_runs_correctly(t, 10 + i)
    accel.remove("t2")
    fifth = accel.deploy(small.conv_graph(9), name="fifth")
    assert fifth.cores == [2]
    assert_runs_correctly(fifth, 20)
    assert_runs_correctly(tenants[3], 21)


def test_duplicate_tenant_name():
    accel = emulated_accelerator("zcu104")
    first = accel.deploy(small.conv_graph(1), name="vision")
    with pytest.raises(DeployError, match=r"a tenant named 'vision' is already deployed"):
        accel.deploy(small.conv_graph(2), name="vision")
    assert accel.tenants == {"vision": first}
    assert_runs_correctly(first, 3)
    other = accel.deploy(small.conv_graph(2), name="other")
    assert other.cores == [1]  # the refused deploy did not keep a core
    assert_runs_correctly(other, 4)


def test_removed_tenant_cannot_run():
    accel = emulated_accelerator("pynq_z2")
    bank = accel.device.get_memory_by_idx(0)
    free = bank.free_bytes
    tenant = accel.deploy(small.conv_graph(1), name="gone")
    x = random_inputs(tenant.graph, 1, 0)[0]
    accel.remove(tenant)
    assert bank.free_bytes == free and not accel.tenants
    with pytest.raises(TenantRemoved, match=r"tenant 'gone' has been removed"):
        tenant.run_quantized(x)
    with pytest.raises(TenantRemoved, match=r"tenant 'gone' has been removed"):
        tenant.run(np.zeros((1, 16, 8, 8), dtype=np.float32))
    with pytest.raises(DeployError, match=r"no tenant named 'gone'"):
        accel.remove("gone")
    assert_runs_correctly(accel.deploy(small.conv_graph(2), name="gone"), 5)  # the name and the core are free again


@pytest.mark.parametrize("cores, message", [(0, r"cores must be a positive integer, not 0"),
                                            (17, r"asked for 17 CNN cores; the u200 pool has 16"),
                                            ("2", r"cores must be a positive integer, not '2'")])
def test_impossible_core_counts_are_refused_clearly(cores, message):
    accel = emulated_accelerator("u200")
    with pytest.raises(DeployError, match=message):
        accel.deploy(small.conv_graph(1), cores=cores, name="multi")
    assert not accel.tenants and accel.free_cores == list(range(16))
    multi = accel.deploy(small.conv_graph(1), cores=16, name="multi")
    assert multi.cores == list(range(16))
    assert_runs_correctly(multi, 6)


def test_model_compiled_for_another_board_is_refused():
    compiled = static.compile_graph(small.conv_graph(1), "zcu104")
    with pytest.raises(DeployError, match=r"compiled for zcu104, this accelerator is pynq_z2"):
        emulated_accelerator("pynq_z2").deploy(compiled)


def test_segment_larger_than_the_bank_keeps_no_core():
    accel = emulated_accelerator("pynq_z2", bank_capacity=TINY_BANK)
    big = small.conv_graph(1, shape=(200, 200, 16))
    assert static.compile_graph(big, "pynq_z2").segment_size > TINY_BANK
    with pytest.raises((DeployError, MemoryError), match=r"cannot allocate|memory|segment"):
        accel.deploy(big, name="big")
    assert not accel.tenants
    assert_runs_correctly(accel.deploy(small.conv_graph(2), name="small"), 7)


# ---------------------------------------------------------------- isolation


def _frame_of(compiled: static.CompiledModel, insn: int) -> int:
    """Index inside its frame of program instruction ``insn`` (one-core tiling)."""
    at = compiled.program_offset + insn * isa.INSN_BYTES
    f = compiled.frames[compiled.frames["variant"] == 0]
    row = f[(f["offset"] <= at) & (at < f["offset"] + f["n_insns"] * isa.INSN_BYTES)]
    assert len(row) == 1
    return (at - int(row["offset"][0])) // isa.INSN_BYTES


@pytest.mark.parametrize("how", ["past-end", "straddle", "near-4g", "load-neighbour"])
def test_out_of_segment_tenant_faults_alone(how):
    accel = emulated_accelerator("zcu104", bank_capacity=TINY_BANK)  # 4 cores, all on bank 0
    dev = accel.device
    left = accel.deploy(small.conv_graph(1), name="left")
    bad_model, bad_insn, fault_addr = corrupt(static.compile_graph(small.conv_graph(2), "zcu104"), how)
    in_frame = _frame_of(bad_model, bad_insn)
    bad = accel.deploy(bad_model, name="bad")
    right = accel.deploy(small.conv_graph(3), name="right")
    assert {t.segment.bank for t in (left, bad, right)} == {0}
    # the neighbours sit right before and right after the bad segment
    base = dev.get_memory_by_idx(0).base_address
    lo, hi = bad.segment.physical_address - base, bad.segment.physical_address - base + bad.segment.size
    assert left.segment.physical_address - base + left.segment.size == lo
    assert right.segment.physical_address - base == hi

    for t, seed in ((left, 1), (right, 2)):
        assert_runs_correctly(t, seed)
    x = random_inputs(bad.graph, 1, 3)[0]
    for attempt in range(2):  # faulting again after a reset is just as clean
        if how == "straddle":  # the faulting SAVE's one in-segment byte: must stay as it is
            dev.bank_array(0)[hi - 1] = (0x5A, 0xA5)[attempt]
        before = dev.bank_array(0).copy()
        with pytest.raises(TenantFault, match=rf"tenant 'bad': request \d+ FAULT: SEGMENT on core {bad.cores[0]}, "
                                              rf"address 0x{fault_addr:x}, instruction {in_frame} ") as e:
            bad.run_quantized(x)
        f = e.value.fault
        assert (e.value.tenant, f.name, f.addr, f.insn, f.core) == ("bad", "SEGMENT", fault_addr, in_frame,
                                                                    bad.cores[0])
        assert bad.context.status == "FAULTED"
        # a stopped tenant refuses new work, naming the fault, until it is reset
        with pytest.raises(TenantFault, match=r"stopped by an earlier fault .* call reset\(\)"):
            bad.submit_quantized(x)
        after = dev.bank_array(0)
        changed = np.flatnonzero(before != after)
        assert changed.size == 0 or (changed.min() >= lo and changed.max() < hi), (
            f"bytes outside the bad segment [{lo:#x}, {hi:#x}) changed: {changed[(changed < lo) | (changed >= hi)][:8]}")
        if how == "straddle":  # the faulting SAVE is checked whole before it moves a byte
            assert after[hi - 1] == (0x5A, 0xA5)[attempt]
        for t, seed in ((left, 4 + attempt), (right, 6 + attempt)):
            assert_runs_correctly(t, seed)
        bad.reset()
        assert bad.context.status == "IDLE" and bad.context.fault() is None
    assert bad.requests == 0 and bad.failed == 2

    cores = bad.cores
    accel.remove(bad)
    again = accel.deploy(small.conv_graph(4), name="again")
    assert again.cores == cores
    assert_runs_correctly(again, 8)
    for t, seed in ((left, 9), (right, 10)):
        assert_runs_correctly(t, seed)


def test_corrupted_program_is_otherwise_the_same():
    """The isolation cases change exactly one field of one instruction."""
    compiled = static.compile_graph(small.conv_graph(2), "zcu104")
    bad, i, _ = corrupt(compiled, "past-end")
    words, bad_words = (m.program.reshape(-1, isa.INSN_BYTES) for m in (compiled, bad))
    differs = np.flatnonzero((words != bad_words).any(axis=1))
    assert differs.tolist() == [i]
    a, b = isa.decode(words[i]), isa.decode(bad_words[i])
    assert {k for k in a if a[k] != b[k]} == {"dram_addr"} and a["opcode"] == "SAVE"
    assert compiled.program is not bad.program and not np.shares_memory(compiled.program, bad.program)


def test_bank_choice_without_per_bank_free_memory():
    """A PYNQ device that does not report free memory per bank: the bank with
    the fewest bytes of this accelerator's tenants is chosen."""
    from types import SimpleNamespace

    def tenant(bank, size):
        return SimpleNamespace(segment=SimpleNamespace(bank=bank, size=size))

    # segments in one bank each (u200 striping every segment over its four banks: always bank 0)
    u200 = vfpga.overlay.load("u200")
    striped = vfpga.overlay.config.segment_stripe(u200)
    assert tenants.Accelerator._pick_bank(SimpleNamespace(config=u200, device=object(), stripe=striped,
                                                          tenants={"a": tenant(0, 100)})) == 0
    fake = SimpleNamespace(config=u200, device=object(), stripe=None,
                           tenants={"a": tenant(0, 100), "b": tenant(1, 50), "c": tenant(3, 10)})
    assert tenants.Accelerator._pick_bank(fake) == 2
    fake.tenants["d"] = tenant(2, 10)
    assert tenants.Accelerator._pick_bank(fake) == 2  # ties go to the lower bank: 2 and 3 both hold 10
    fake.tenants["e"] = tenant(2, 1)
    assert tenants.Accelerator._pick_bank(fake) == 3


def test_utilisation_counts_the_cores_held_since_they_last_changed():
    """stats().utilisation divides busy core-cycles by the request cycles
    times the cores held: after a tenant shrinks from 8 cores to 2, the
    requests it ran on 8 no longer count against 2 (they made it read 3-4x,
    e.g. 113% in the demo)."""
    accel = emulated_accelerator()
    try:
        t = accel.deploy(static.compile_graph(small.conv_graph(4), "u200"), cores=8, name="t")
        xs = random_inputs(t.graph, 3, 11)
        for x in xs:
            t.run_quantized(x)
        wide = accel.stats()["t"].utilisation
        accel.reallocate({"t": 2})
        assert accel.stats()["t"].utilisation is None  # no request on 2 cores yet
        for x in xs:
            t.run_quantized(x)
        narrow = accel.stats()["t"].utilisation
        assert 0 < wide <= 1 and 0 < narrow <= 1
        assert narrow > wide  # fewer cores idle at the layer barriers
    finally:
        accel.close()
