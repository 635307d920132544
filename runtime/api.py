"""The user's view: open an accelerator, deploy models as tenants, run them.

    ov = vfpga.open("u200")          # the emulated board here, a real one where there is one
    net = ov.deploy("model.onnx", name="vision")
    y = net.run(x)                   # float in, float out, like onnxruntime

A tenant owns a segment of device memory in the DDR bank of its core and
the core itself; its program, weights and activations live in that segment.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pynq

from vfpga import overlay
from vfpga.driver import cnn_core, emulated
from vfpga.driver.segment import Segment

from . import cache as compile_cache
from . import compiler, cycle_model, frontend, ir
from .reference import OrtReference, from_onnx_layout, to_onnx_layout


class DeployError(RuntimeError):
    """The accelerator cannot host this tenant (cores, memory, names)."""


class TenantFault(RuntimeError):
    """A tenant's program stopped its core with a hardware fault."""

    def __init__(self, tenant: str, result: cnn_core.CoreResult):
        self.tenant = tenant
        self.result = result
        super().__init__(
            f"tenant {tenant!r} faulted: {result.fault_name} at instruction {result.fault_insn}, "
            f"address 0x{result.fault_addr:x}")


@dataclass
class RunInfo:
    """What one request did on the core."""

    result: cnn_core.CoreResult
    host_seconds: float
    modeled_cycles: int
    modeled_seconds: float


def _pick_device(board: str, emulate: bool | None):
    if emulate is None:
        real = [d for d in pynq.Device.devices if not isinstance(d, emulated.EmulatedDevice)]
        if real:
            raise DeployError(
                f"found PYNQ device {real[0].name if hasattr(real[0], 'name') else real[0]!r}, but loading the "
                "vfpga overlay on a board is not available yet; pass emulate=True to use the emulated board")
        emulate = True
    if not emulate:
        raise DeployError("board mode (emulate=False) needs the vfpga overlay, which is not available yet")
    return emulated.EmulatedDevice(board)


class Accelerator:
    """One vfpga overlay (emulated or on a board) shared by tenants."""

    def __init__(self, board: str = "u200", emulate: bool | None = None, device=None):
        self.config = overlay.load(board)
        self.board = self.config["name"]
        self.device = device if device is not None else _pick_device(board, emulate)
        self.emulated = isinstance(self.device, emulated.EmulatedDevice)
        self.cores = cnn_core.cores(self.device)
        if len(self.cores) != self.config["cnn_core"]["count"]:
            raise DeployError(f"the device shows {len(self.cores)} CNN cores, the {self.board} config "
                              f"{self.config['cnn_core']['count']}")
        self._lock = threading.RLock()  # re-entrant: a tenant's release may run inside deploy/remove
        self._owner: dict[int, str] = {}
        self.tenants: dict[str, Tenant] = {}

    @property
    def mode(self) -> str:
        return "emulated" if self.emulated else "board"

    def compile(self, model, calibration=None, input_shape=None, *, cache=None, progress=None,
                fallback: bool = True) -> compiler.CompiledModel:
        """Static stage: ONNX model (path, bytes or proto, float or QDQ), layer graph or IFP file
        -> program. ONNX models go through the compile cache (cache=False skips it); see
        :func:`compile_model`."""
        if isinstance(model, compiler.CompiledModel):
            if model.board != self.board:
                raise DeployError(f"model compiled for {model.board}, this accelerator is {self.board}")
            return model
        return compile_model(model, self.config, calibration, input_shape, cache=cache, progress=progress,
                             fallback=fallback)

    def deploy(self, model, cores: int = 1, name: str | None = None, calibration=None,
               input_shape=None, fallback: bool = True) -> Tenant:
        """Compiles ``model`` (or takes it compiled) and gives it a core and a
        segment. Ops the accelerator lacks run on the host through
        onnxruntime unless ``fallback=False``, which rejects them instead."""
        if cores != 1:
            raise DeployError(
                f"asked for {cores} cores: multi-core tenants need the level-1 dispatcher, which is not "
                "built yet; deploy with cores=1")
        compiled = self.compile(model, calibration, input_shape, fallback=fallback)
        with self._lock:
            name = name or f"tenant{len(self.tenants)}"
            if name in self.tenants:
                raise DeployError(f"a tenant named {name!r} is already deployed")
            free = [i for i in range(len(self.cores)) if i not in self._owner]
            if not free:
                raise DeployError(f"all {len(self.cores)} cores are taken by {sorted(set(self._owner.values()))}")
            core = free[0]
            self._owner[core] = name
        try:
            tenant = Tenant(self, name, compiled, core)
        except BaseException:
            with self._lock:
                del self._owner[core]
            raise
        with self._lock:
            self.tenants[name] = tenant
        return tenant

    def remove(self, tenant) -> None:
        name = tenant if isinstance(tenant, str) else tenant.name
        with self._lock:
            if name not in self.tenants:
                raise DeployError(f"no tenant named {name!r}")
            t = self.tenants.pop(name)
            self._owner = {c: n for c, n in self._owner.items() if n != name}
        t._release()

    def close(self) -> None:
        for name in list(self.tenants):
            self.remove(name)


def compile_model(model, board="u200", calibration=None, input_shape=None, *, cache=None, progress=None,
                  fallback: bool = True) -> compiler.CompiledModel:
    """Static stage without an accelerator: ONNX model (path, bytes or proto), ir.Graph or IFP
    file -> CompiledModel for ``board`` (name or config). cache: None (the default cache,
    VFPGA_CACHE=0 turns it off), False, a directory or a cache.CompileCache. progress: None
    (a bar on a terminal), False, or a callable (done, total, name). fallback: ops the
    accelerator lacks run on the host CPU instead of raising UnsupportedOperatorError."""
    return compile_cache.compile_with_cache(model, board, calibration, input_shape, cache=cache,
                                            progress=progress, fallback=fallback).compiled


class Tenant:
    """A deployed model: its segment, its core and its compiled program."""

    def __init__(self, accel: Accelerator, name: str, compiled: compiler.CompiledModel, core: int):
        self.accel = accel
        self.name = name
        self.compiled = compiled
        self.core_index = core
        self.core = accel.cores[core]
        self._lock = threading.Lock()
        try:
            self.segment = Segment(compiled.segment_size, bank=self.core.bank, device=accel.device)
        except MemoryError as e:
            raise DeployError(f"tenant {name!r} needs a {compiled.segment_size}-byte segment in DDR bank "
                              f"{self.core.bank}, which cannot hold it: {e}") from e
        for offset, data in compiled.segment_image().items():
            self.segment.write(offset, np.frombuffer(data, dtype=np.uint8))
        # The whole segment goes down once, so no earlier tenant's bytes remain in it.
        self.segment.sync_to_device()
        self.schedules = compiler.schedule_parts(compiled, accel.config)
        self.modeled_cycles = sum(s.total_cycles for s in self.schedules)
        self._cpu = {p.layer: OrtReference.for_model(compiled.graph.layers[p.layer].model)
                     for p in compiled.parts if p.kind == "cpu"}
        self._host: dict[str, np.ndarray] = {}  # float CPU results of the current request
        self.requests = 0

    @property
    def graph(self) -> ir.Graph:
        return self.compiled.graph

    def layer_cycles(self) -> dict[int, int]:
        """Modeled cycles per layer index (accelerator layers)."""
        out: dict[int, int] = {}
        for s in self.schedules:
            for k, v in s.layer_cycles.items():
                out[k] = out.get(k, 0) + v
        return out

    def _read(self, p: compiler.Placement) -> np.ndarray:
        """A tensor's int8 HWC value from device memory (slices of a wider
        concat tensor included)."""
        h, w, c = p.shape
        span = (h * w - 1) * p.pixel_stride + c
        self.segment.sync_from_device(p.addr, span)
        raw = np.zeros(h * w * p.pixel_stride, np.uint8)
        raw[:span] = self.segment.read(p.addr, span)
        return raw.view(np.int8).reshape(h, w, p.pixel_stride)[:, :, :c].copy()

    def _write(self, p: compiler.Placement, value: np.ndarray) -> None:
        """Writes a tensor's int8 HWC value into device memory (as a channel
        slice of a wider tensor where it is one)."""
        h, w, c = p.shape
        if p.pixel_stride == c:
            self.segment.write(p.addr, value)
            self.segment.sync_to_device(p.addr, value.nbytes)
            return
        span = (h * w - 1) * p.pixel_stride + c
        self.segment.sync_from_device(p.addr, span)
        raw = np.zeros(h * w * p.pixel_stride, np.uint8)
        raw[:span] = self.segment.read(p.addr, span)
        raw.view(np.int8).reshape(h, w, p.pixel_stride)[:, :, :c] = value
        self.segment.write(p.addr, raw[:span])
        self.segment.sync_to_device(p.addr, span)

    def _run_cpu(self, index: int) -> None:
        layer = self.graph.layers[index]
        tensors = self.graph.tensors
        session = self._cpu[index].session
        shapes = {i.name: i.shape for i in session.get_inputs()}
        feeds = {}
        for n in layer.inputs:
            # the subgraph's own input shape says how the HWC tensor is laid out for it
            shape = shapes.get(n)
            static = shape is not None and all(isinstance(d, int) for d in shape)
            feeds[n] = to_onnx_layout(self._read(self.compiled.tensors[n]),
                                      tuple(shape) if static else tensors[n].onnx_shape)
        values = session.run(list(layer.outputs), feeds)
        for n, v in zip(layer.outputs, values):
            p = self.compiled.tensors[n]
            if tensors[n].dtype != "int8":  # a float graph output: it never goes back to the device
                self._host[n] = from_onnx_layout(v, p.shape).astype(np.float32)
            else:
                self._write(p, from_onnx_layout(v, p.shape).astype(np.int8))

    def run_quantized(self, x_q: np.ndarray) -> tuple[list[np.ndarray], RunInfo]:
        """int8 HWC input -> int8 HWC outputs, as the accelerator computes them."""
        inp = self.compiled.input
        x_q = np.asarray(x_q)
        if x_q.dtype != np.int8 or x_q.shape != inp.shape:
            raise ValueError(f"tenant {self.name!r} expects an int8 HWC input of shape {inp.shape}, "
                             f"got {x_q.dtype} {x_q.shape}")
        with self._lock:
            if self.segment.freed:
                raise DeployError(f"tenant {self.name!r} has been removed")
            self._write(inp, x_q)
            t0 = time.perf_counter()
            result = None
            for part in self.compiled.parts:
                if part.kind == "cpu":
                    self._run_cpu(part.layer)
                    continue
                result = self.core.run(self.segment.physical_address, self.segment.size,
                                       part.insn_offset, part.n_insns)
                if not result.ok:
                    raise TenantFault(self.name, result)
            elapsed = time.perf_counter() - t0
            outs = [self._host.pop(p.name) if p.name in self._host else self._read(p) for p in self.compiled.outputs]
            self.requests += 1
        cycles = self.modeled_cycles
        return outs, RunInfo(result, elapsed, cycles, cycle_model.seconds(cycles, self.accel.config))

    def run(self, x: np.ndarray) -> list[np.ndarray] | np.ndarray:
        """Float input in the model's own layout -> float output(s), like onnxruntime."""
        tensors = self.graph.tensors
        x_q = frontend.quantize_input(x, tensors[self.graph.inputs[0]])
        outs, _ = self.run_quantized(x_q)
        ys = [frontend.dequantize_output(q, tensors[n]) for q, n in zip(outs, self.graph.outputs)]
        return ys[0] if len(ys) == 1 else ys

    def _release(self) -> None:
        with self._lock:
            self.segment.free()


def open(board: str = "u200", emulate: bool | None = None) -> Accelerator:  # noqa: A001 - the API name
    """The vfpga accelerator for ``board``: the emulated board on a host
    without one."""
    return Accelerator(board, emulate=emulate)
