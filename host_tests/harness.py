"""What the host tests share beyond fixtures (conftest.py): small emulated
boards and accelerators on them, random int8 inputs, quantized test models
with their golden outputs, the check that a tenant computes what the
golden model does, and a `vfpga serve` process (serving and cluster tests).
Test graphs themselves live in vfpga.runtime.models.small."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import onnx

from vfpga import overlay
from vfpga.driver import isa
from vfpga.driver.emulated import EmulatedDevice
from vfpga.runtime import tenants
from vfpga.runtime.compiler import ir, static
from vfpga.runtime.compiler.segment import segment_layout
from vfpga.runtime.hw import golden
from vfpga.runtime.sim import simulator

# The repository (the HLS sources, build flows and notebooks the tests read).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small emulated banks: cheap to build, and small enough to compare whole.
SMALL_BANK = 16 << 20


# Zoo models whose quantization needs most of a 24 GB host (VGG-19's 143 M
# parameters: onnxruntime's calibration and quantization peak at about 8 GB).
MEMORY_HEAVY_MODELS = frozenset({"vgg19"})


@contextlib.contextmanager
def one_at_a_time_on_this_host(what: str):
    """Holds a host-wide lock named ``what`` (a file lock in the temporary
    directory): tests on other xdist workers, or in another pytest run, that
    ask for the same name wait. For the few steps that need most of the
    host's memory, so that two workers never run them at once."""
    path = os.path.join(tempfile.gettempdir(), f"vfpga-tests-{what}.lock")
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def wait_for(what: str, done, timeout: float = 60.0) -> None:
    """Polls ``done()`` until it is true; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1e-3)


def emulated_accelerator(board: str = "u200", bank_capacity: int = SMALL_BANK,
                         stripe_segments: bool = True) -> tenants.Accelerator:
    """A fresh Accelerator on a fresh emulated board (close it when done)."""
    return tenants.Accelerator(board, device=EmulatedDevice(board, bank_capacity=bank_capacity),
                               stripe_segments=stripe_segments)


def bank_bytes_for(board: str, segment_bytes: int) -> int:
    """The bytes each bank of ``board`` needs to hold a segment of
    ``segment_bytes`` as the runtime lays it out by default: a striped
    segment's part on boards that stripe (u200), else the whole segment."""
    stripe = overlay.config.segment_stripe(overlay.load(board))
    return segment_bytes if stripe is None else stripe.part_bytes(segment_bytes)


def add_chain_graph(hw: int = 32, c: int = 64, n: int = 3) -> ir.Graph:
    """A chain of element-wise adds: little compute per DDR byte, so frames of
    several cores in flight on one bank ask more than its bandwidth (the cycle
    model then slows them; conv stacks stay compute-bound)."""
    t = {"x": ir.Tensor("x", (hw, hw, c), 0.05, 0)}
    layers, prev = [], "x"
    for i in range(n):
        t[f"s{i}"] = ir.Tensor(f"s{i}", (hw, hw, c), 0.05, 0)
        layers.append(ir.Add(f"add{i}", (prev, "x"), f"s{i}", 1 << 14, 1 << 14, 15))
        prev = f"s{i}"
    return ir.Graph(t, layers, ["x"], [prev], name="adds")


def submit_through_reallocations(accel, tenant, submit, want, same, allocations, threads_n: int = 4,
                                 per: int = 8) -> list:
    """``threads_n`` threads each submit ``per`` requests (``submit(i, j)``:
    a future of (result, RunInfo)) while ``accel`` re-allocates ``tenant``
    through ``allocations``; asserts every request is answered exactly once,
    ok, with ``same(result, want(i, j))``. Returns the RunInfos."""
    import threading

    results: dict = {}
    errors: list = []

    def submitter(i):
        try:
            futs = [(j, submit(i, j)) for j in range(per)]
            for j, f in futs:
                results.setdefault((i, j), []).append(f.result(300))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(threads_n)]
    for th in threads:
        th.start()
    for cores in allocations:
        accel.reallocate({tenant.name: cores})
    for th in threads:
        th.join(300)
    assert not errors, errors
    assert sorted(results) == [(i, j) for i in range(threads_n) for j in range(per)]  # none lost
    assert all(len(v) == 1 for v in results.values())  # none answered twice
    for (i, j), [(got, info)] in results.items():
        assert info.ok and same(got, want(i, j)), f"request {(i, j)} wrong"
    assert tenant.requests == threads_n * per and tenant.failed == 0
    return [info for [(_, info)] in results.values()]


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


# ---- `vfpga serve` in a subprocess (the serving and the cluster tests)

ADMIN = "admin-token-for-the-serving-tests"
READY = re.compile(r"ready: http://127\.0\.0\.1:(\d+) (?:grpc 127\.0\.0\.1:(\d+)|no grpc)")
# tritonclient (the standard client) lives in an environment of its own, .venv-client/ at the
# repository's root (its gRPC extra needs a newer grpcio and protobuf than pynq allows here)
CLIENT_VENV = os.path.join(REPO_ROOT, ".venv-client")
CLIENT_PACKAGES = ["tritonclient[http,grpc]"]


class ServerProcess:
    """`vfpga serve` in a subprocess (an emulated u200 with small banks unless
    ``args`` say otherwise); its log goes to a file."""

    def __init__(self, log_path, *args: str, timeout: float = 60.0, env: dict | None = None):
        self.log_path = str(log_path)
        env = {**os.environ, "VFPGA_ADMIN_TOKEN": ADMIN, **(env or {})}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from vfpga.runtime.cli import main; sys.exit(main())", "serve",
                 "--port", "0", "--grpc-port", "0",
                 "--bank-mib", "16", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout
        while True:
            m = READY.search(self.log())
            if m:
                self.port, self.grpc_port = int(m[1]), m[2] and int(m[2])
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"vfpga serve did not come up:\n{self.log()}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("VmRSS:")))

    def load(self, name: str, model: onnx.ModelProto | bytes, config: dict | None = None,
             calibration: np.ndarray | None = None) -> dict:
        """Loads through the repository extension as Triton's HTTP client does; returns the reply."""
        params = {"file:1/model.onnx": base64.b64encode(
            model if isinstance(model, bytes) else model.SerializeToString()).decode()}
        config = dict(config or {})
        if calibration is not None:
            buf = io.BytesIO()
            np.save(buf, calibration)
            params["file:calibration.npy"] = base64.b64encode(buf.getvalue()).decode()
            config["calibration"] = "calibration.npy"
        params["config"] = json.dumps(config)
        r = self.admin.post(f"/v2/repository/models/{name}/load", json={"parameters": params})
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        finally:
            self.admin.close()


class FrameExecutingSimulator(simulator.Simulator):
    """The timing simulator with every CNN frame run on its C-simulated core
    when the timeline retires it (frames of different requests interleave
    as the modeled schedule has them), through the simulator's real
    dispatcher; deploy also writes the model's constants."""

    def __init__(self, board):
        super().__init__(board)
        self.bufs = [self._new_buffers() for _ in range(self.n_cores)]
        self.frames = {}

    def _new_buffers(self):
        ffi, lib = self.ffi, self.lib
        geo = ffi.new("vf_cnn_geometry_t *")
        lib.vf_cnn_core_geometry(geo)
        keep = {"ibuf": ffi.new("int8_t[]", geo.ibuf_bytes), "wbuf": ffi.new("int8_t[]", geo.wbuf_bytes),
                "acc": ffi.new("int32_t[]", geo.acc_words), "obuf": ffi.new("int8_t[]", geo.obuf_bytes),
                "param": ffi.new("int32_t[]", geo.param_entries * isa.PARAM_ENTRY_WORDS)}
        return ffi.new("vf_cnn_buffers_t *", keep), keep

    def deploy(self, name, compiled, cores, bank=None, max_inflight=1):
        t = super().deploy(name, compiled, cores, bank, max_inflight)
        self.write_segment(t.seg_win, compiled.const_offset, np.frombuffer(compiled.consts, np.uint8))
        return t

    def _advance(self):
        progress = super()._advance()
        for c in range(self.n_cores):
            if self._report.issued_cores >> c & 1:
                f = self.ffi.new("vf_disp_frame_t *")
                self.ffi.memmove(f, self.ffi.addressof(self._issued, c), self.ffi.sizeof("vf_disp_frame_t"))
                self.frames[c] = f
        return progress

    def _retire(self):
        ffi, lib = self.ffi, self.lib
        core, _, _ = self.timeline.pop()
        res, cnt = ffi.new("vf_core_state_t *"), ffi.new("vf_core_counters_t *")
        lib.vf_dispatch_run_frame(self.mem, self.mem_bytes, self.frames.pop(core), self.bufs[core][0], res, cnt,
                                  ffi.NULL)
        assert res.fault == 0, isa.FAULT_NAMES.get(res.fault)
        self.regs.g.cycles = self.now
        lib.vf_dispatch_retire(self.regs, self.state, core, res, cnt, ffi.NULL)
