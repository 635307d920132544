"""A request as a tenant keeps it: its input checked, the job queued by
submit(), who takes its completion record (a request thread waiting, or the
completion thread answering a direct request), what it did (RunInfo) and
its float outputs."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vfpga.driver.tenant_context import Completion
from vfpga.runtime.compiler import frontend, ir, static

REQUEST_TIMEOUT_S = 600.0  # a request that gets no record in this long means the dispatcher died


@dataclass
class RunInfo:
    """What one request did."""

    completions: list[Completion]
    host_seconds: float  # measured on the host: input write to output read
    modeled_cycles: int  # the accelerator parts' record cycles (dispatcher clock)
    modeled_seconds: float
    cores: int  # cores the tenant held when the request finished
    host_cpu_seconds: float = 0.0  # measured: the CPU parts (onnxruntime on the host, glue included)
    # measured host overhead (the driver's path, as on a board): submit() to the first doorbell, and the
    # last completion record read by the driver to the result handed to the future; the model's CPU
    # parts (host_cpu_seconds) in between are not counted
    submit_to_doorbell_s: float | None = None
    completion_to_result_s: float | None = None
    # of submit_to_doorbell_s: the input's marshalling, the part that grows with the input's bytes -- a
    # float input quantized, then the int8 input folded or copied into the segment's host copy and synced
    # (a batch: all its inputs' writes; its overhead counts from its forming, after their quantization)
    input_marshal_s: float | None = None
    # perf_counter at the last completion record's read, less the CPU parts after it (the second half's start)
    collected_at: float | None = field(default=None, repr=False)
    batch: int = 1  # requests that ran together in this run (dynamic batching; RNN tenants)
    batch_size: int = 1  # the compiled batch size they ran on (the rest padding)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.completions)


@dataclass
class Job:
    """A request queued by submit()."""

    x_q: np.ndarray
    future: Future
    float_io: bool
    submitted: float = field(default_factory=time.perf_counter)  # host clock when submit() was called
    quantize_s: float = 0.0  # seconds submit() took to quantize a float input (into x_q)


class ThreadWaiter:
    """A request thread waiting for its part's record."""

    def __init__(self):
        self.done = threading.Event()
        self.record: Completion | None = None

    def deliver(self, c: Completion) -> None:
        self.record = c
        self.done.set()


@dataclass
class DirectRequest:
    """A request on the direct path: posted by its caller on ``slot``
    (whose lock it holds until answered), answered by the completion thread."""

    finish: Callable[[DirectRequest, Completion], None]  # its tenant's second half (on the completion thread)
    job: Job
    slot: int
    started: float  # perf_counter before its input was written
    half: int = 0  # the program half it walks (set under the programs' lock, before the doorbell)
    input_write_s: float = 0.0  # seconds its input's write into device memory took

    @property
    def deadline(self) -> float:
        return self.started + REQUEST_TIMEOUT_S

    def deliver(self, c: Completion) -> None:
        self.finish(self, c)


class PerRequest(threading.local):
    """What a request thread keeps about the request it runs."""

    def __init__(self):
        self.slot = 0  # its activation slot
        self.host: dict[str, np.ndarray] = {}  # float CPU results of the current request
        self.doorbell_at: float | None = None  # its first doorbell
        self.completed_at = 0.0  # its last completion record, read by the driver
        self.cpu_s = self.cpu_at_bell = self.cpu_at_done = 0.0  # its CPU parts' seconds: so far, at those
        self.stop = False  # the removal sentinel was met after some requests (RnnTenant._take)


def per_request(name: str) -> property:
    """A Tenant attribute kept per request thread (in its ``_req``)."""
    return property(lambda self: getattr(self._req, name), lambda self, v: setattr(self._req, name, v))


def quantized_input(compiled: static.CompiledModel, x_q, name: str) -> np.ndarray:
    """``x_q`` checked as tenant ``name``'s int8 HWC input (ValueError otherwise)."""
    shape = compiled.input_shape
    x_q = np.asarray(x_q)
    if x_q.dtype != np.int8 or x_q.shape != shape:
        raise ValueError(f"tenant {name!r} expects an int8 HWC input of shape {shape}, got {x_q.dtype} {x_q.shape}")
    return x_q


def float_outputs(graph: ir.Graph, outs: list[np.ndarray]):
    """A request's int8 HWC outputs -> the float output(s) in the ONNX layout, as
    ``run`` gives them (one array, or a list for several outputs)."""
    ys = [frontend.dequantize_output(q, graph.tensors[n]) for q, n in zip(outs, graph.outputs)]
    return ys[0] if len(ys) == 1 else ys
