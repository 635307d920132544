"""What the host tests share beyond fixtures (conftest.py): small emulated
boards and accelerators on them, random int8 inputs, quantized test models
with their golden outputs, and the check that a tenant computes what the
golden model does. Test graphs themselves live in vfpga.runtime.models.small."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from vfpga.driver import isa
from vfpga.driver.emulated import EmulatedDevice
from vfpga.runtime import tenants
from vfpga.runtime.compiler import ir, static
from vfpga.runtime.compiler.segment import segment_layout
from vfpga.runtime.hw import golden

# The repository (the HLS sources, build flows and notebooks the tests read).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small emulated banks: cheap to build, and small enough to compare whole.
SMALL_BANK = 16 << 20


def emulated_accelerator(board: str = "u200", bank_capacity: int = SMALL_BANK) -> tenants.Accelerator:
    """A fresh Accelerator on a fresh emulated board (close it when done)."""
    return tenants.Accelerator(board, device=EmulatedDevice(board, bank_capacity=bank_capacity))


def random_inputs(graph: ir.Graph, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` random int8 inputs of the graph's input shape (HWC)."""
    shape = graph.tensors[graph.inputs[0]].shape
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(n)]


def assert_runs_correctly(tenant: tenants.Tenant, seed: int) -> None:
    """One request of a deployed tenant equals the golden model's output."""
    (x,) = random_inputs(tenant.graph, 1, seed)
    (y,), info = tenant.run_quantized(x)
    assert info.completions and all(c.ok for c in info.completions)
    np.testing.assert_array_equal(y, golden.run_graph(tenant.graph, x)[tenant.graph.outputs[0]])


@dataclasses.dataclass
class Model:
    """A compiled test model with inputs and the golden model's outputs for them."""

    name: str
    graph: ir.Graph
    compiled: static.CompiledModel
    inputs: list  # int8 HWC
    wants: list  # golden outputs

    def check(self, outs, i: int) -> None:
        (y,) = outs
        np.testing.assert_array_equal(y, self.wants[i], err_msg=f"{self.name} input {i}")


def make_model(name: str, graph: ir.Graph, n_inputs: int = 4, seed: int = 0, board: str = "u200") -> Model:
    """Compile ``graph`` (all on the cores) with ``n_inputs`` random inputs and their golden outputs."""
    c = static.compile_graph(graph, board)
    assert [p.kind for p in c.parts] == ["accel"]
    xs = random_inputs(graph, n_inputs, seed)
    return Model(name, graph, c, xs, [golden.run_graph(graph, x)[graph.outputs[0]] for x in xs])


def find_instruction(program: np.ndarray, opcode: str, nth_layer: int) -> int:
    """Index of the first ``opcode`` instruction of layer ``nth_layer``."""
    words = program.reshape(-1, isa.INSN_BYTES)
    for i in np.flatnonzero(isa.opcodes_of(program) == isa.OPCODES[opcode]):
        if isa.decode(words[i])["tag"] == nth_layer:
            return int(i)
    raise AssertionError(f"no {opcode} in layer {nth_layer}")


def corrupt(compiled: static.CompiledModel, how: str) -> tuple[static.CompiledModel, int, int]:
    """A copy of ``compiled`` whose first SAVE of layer 1 (or LOAD_LINEAR of
    layer 2) reaches outside the segment. Returns it, the index of the bad instruction and the
    fault address the core must report (the lowest offending offset)."""
    program = compiled.program.copy()
    limit = segment_layout(compiled).size  # the deployed segment: the model's bytes, then the driver's areas
    op = "LOAD_LINEAR" if how == "load-neighbour" else "SAVE"
    i = find_instruction(program, op, 1 if op == "SAVE" else 2)
    fields = isa.decode(program[i * isa.INSN_BYTES:(i + 1) * isa.INSN_BYTES])
    if op == "SAVE":
        origin = (fields["y0"] * fields["width"] + fields["x0"]) * fields["pixel_stride"]
        assert fields["tile_w"] * fields["channels"] >= 2
        addr, fault_addr = {
            "past-end": (limit, limit + origin),  # the next segment's first bytes
            "straddle": (limit - 1 - origin, limit),  # first byte inside, the rest not
            "near-4g": (2**32 - 64, min(2**32 - 64 + origin, 2**32 - 1)),  # wraps if offsets were 32-bit
        }[how]
    else:
        addr, fault_addr = limit, limit
    fields["dram_addr"] = addr
    head = {k: fields.pop(k) for k in ("deps", "flags", "tag")}
    program[i * isa.INSN_BYTES:(i + 1) * isa.INSN_BYTES] = np.frombuffer(
        isa.encode(fields.pop("opcode"), **head, **fields), dtype=np.uint8)
    return dataclasses.replace(compiled, program=program), i, fault_addr


def compare_with_golden(accel: tenants.Accelerator, graph: ir.Graph, board: str, seed: int,
                        inputs: int = 1) -> static.CompiledModel:
    """Compiles ``graph`` for ``board``, deploys it, runs ``inputs`` random
    int8 inputs and checks every graph output against the golden model bit
    for bit (the first differing element named). Returns the compiled model."""
    import pytest

    compiled = static.compile_graph(graph, board)
    tenant = accel.deploy(compiled)
    rng = np.random.default_rng(seed)
    try:
        for n in range(inputs):
            x = rng.integers(-128, 128, size=graph.tensors[graph.inputs[0]].shape, dtype=np.int8)
            outs, info = tenant.run_quantized(x)
            assert info.ok
            want = golden.run_graph(graph, x)
            for name, got in zip(graph.outputs, outs):
                ref = want[name]
                if not np.array_equal(got, ref):
                    bad = np.argwhere(got != ref)
                    y, xx, ch = bad[0]
                    pytest.fail(f"input {n}, tensor {name} {ref.shape}: {len(bad)} of {ref.size} values differ; "
                                f"first at (y={y}, x={xx}, c={ch}): C-sim {got[y, xx, ch]}, golden {ref[y, xx, ch]}")
    finally:
        accel.remove(tenant)
    return compiled
