"""One board of a cluster: the body of its Ray actor.

A :class:`Board` owns one device and the :class:`~vfpga.runtime.tenants.Accelerator`
on it, and holds the cluster's replicas as that accelerator's tenants (a
replica ``vision#2`` is tenant ``vision#2`` of its board). The controller
calls it through Ray; nothing here imports Ray, so the class also runs
in-process (the tests of this module do).

Devices (``mode``): ``"emulated"`` (the emulated board: the HLS C++ computes
every output), ``"timing"`` (the timing-only board: the same emulated device
and dispatcher with frames timed and never run, outputs answered as
:class:`NotComputed`; for timing figures only, never where a result is
checked), ``"board"`` (the card on the actor's host) or ``"auto"`` (the card
where the host has one, else emulated).

Requests come in batches (one Ray call carries every request the controller
had queued for the replica) and are answered one entry per request: the
result, or a :class:`RemoteError` (some runtime errors do not survive
pickling whole). Blocking work (deploy, re-allocation, removal) runs on the
actor's executor so the event loop keeps answering health checks.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass

from vfpga.driver.emulated import EmulatedDevice
from vfpga.runtime.errors import ClusterError, ContextError, QueueFull, TenantFault, TenantRemoved
from vfpga.runtime.tenants import Accelerator
from vfpga.runtime.tenants.accelerator import board_present

MODES = ("auto", "emulated", "timing", "board")


@dataclass(frozen=True)
class NotComputed:
    """What a timing-only board answers instead of outputs: the request ran
    through the dispatcher and the cycle model, and no arithmetic was done."""

    board: int  # the board that timed it
    modeled_cycles: int
    modeled_seconds: float

    def __repr__(self) -> str:
        return (f"NotComputed(board={self.board}, modeled {self.modeled_seconds * 1e3:.3f} ms: a timing-only board "
                "computes no outputs)")


# errors that cross back whole, by class name (ValueError covers the front end's input checks)
_ERRORS = {"QueueFull": QueueFull, "TenantRemoved": TenantRemoved, "ContextError": ContextError,
           "ValueError": ValueError}


@dataclass(frozen=True)
class RemoteError:
    """A request's error on its way from a board to the controller."""

    kind: str  # "TenantFault", "QueueFull", "TenantRemoved", "NoSuchTenant", "ValueError", ... or another class name
    message: str
    fault: object = None  # TenantFault: the fault registers
    completion: object = None  # TenantFault: the record of the request that faulted (None: stopped earlier)

    @classmethod
    def of(cls, e: BaseException) -> RemoteError:
        if isinstance(e, TenantFault):
            return cls("TenantFault", str(e), e.fault, e.completion)
        kind = next((k for k, c in _ERRORS.items() if isinstance(e, c)), type(e).__name__)
        return cls(kind, str(e))

    def rebuild(self, tenant: str, board: int) -> Exception:
        """The error the tenant's caller sees (the message names the board)."""
        if self.kind == "TenantFault":
            return TenantFault(tenant, f"on board {board}: {self.message}", self.fault, self.completion)
        cls = _ERRORS.get(self.kind)
        if cls is not None:
            return cls(f"{self.message} (board {board})")
        return ClusterError(f"tenant {tenant!r} on board {board}: {self.kind}: {self.message}")


def open_accelerator(kind: str, mode: str, bank_capacity: int | None) -> Accelerator:
    """The accelerator a board actor owns."""
    if mode not in MODES:
        raise ValueError(f"board mode {mode!r}: one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "board" if board_present() else "emulated"
    if mode in ("emulated", "timing"):
        kw = {} if bank_capacity is None else {"bank_capacity": bank_capacity}
        return Accelerator(kind, device=EmulatedDevice(kind, compute=mode == "emulated", **kw))
    return Accelerator(kind, emulate=False)


def _actor_id() -> str | None:
    """This actor's Ray id (None when the board runs outside Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_actor_id()


class Board:
    """Board ``index`` of kind ``kind`` (a board config name)."""

    def __init__(self, index: int, kind: str, mode: str = "auto", bank_capacity: int | None = None):
        self.index = index
        self.kind = kind
        self.accel = open_accelerator(kind, mode, bank_capacity)
        self.mode = "timing" if mode == "timing" else self.accel.mode
        self.boot = uuid.uuid4().hex  # a restarted actor is a new board with nothing on it
        self.started = time.time()

    # ---- what the controller asks -------------------------------------------------------------------
    def info(self) -> dict:
        """Who and what this board is (the controller's health check)."""
        a = self.accel
        return {"index": self.index, "kind": self.kind, "mode": self.mode, "boot": self.boot, "pid": os.getpid(),
                "actor_id": _actor_id(),
                "host": socket.gethostname(), "cores": {"cnn": a.n_cores, "rnn": a.n_rnn},
                "contexts": a.dispatcher.n_tenants, "tenants": {n: list(t.cores) for n, t in a.tenants.items()},
                "throughput": {n: {"max_batch": getattr(t, "max_batch", 1), "max_inflight": getattr(t, "max_inflight", 1)}
                               for n, t in a.tenants.items()}}

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def deploy(self, name: str, compiled, cores: int, max_pending: int, options: dict | None = None) -> dict:
        """Deploys replica ``name`` of a compiled model (shipped from the object
        store): the dynamic stage for ``cores`` cores, a context, a segment;
        ``options``: the tenant's max_batch, max_delay_us, max_inflight."""
        t0 = time.perf_counter()
        tenant = await self._blocking(lambda: self.accel.deploy(compiled, cores=cores, name=name,
                                                                max_pending=max_pending, **(options or {})))
        return {"cores": list(tenant.cores), "seconds": time.perf_counter() - t0}

    async def infer_batch(self, name: str, items: list, quantized: bool) -> list:
        """Runs a batch of requests of replica ``name``: int8 HWC inputs
        (``quantized``: a CNN replica) or float inputs/feeds (an RNN replica).
        One (ok, value) per request: value is (outputs, RunInfo) -- the
        outputs NotComputed on a timing-only board -- or a RemoteError."""
        tenant = self.accel.tenants.get(name)
        if tenant is None:
            err = RemoteError("NoSuchTenant", f"board {self.index} (boot {self.boot[:8]}) holds no replica "
                                              f"{name!r}")
            return [(False, err)] * len(items)
        futures = []
        for x in items:
            try:
                futures.append(tenant.submit_quantized(x) if quantized else tenant.submit_with_info(x))
            except Exception as e:  # noqa: BLE001 - answered to that request
                futures.append(e)
        out = []
        for f in futures:
            if isinstance(f, Exception):
                out.append((False, RemoteError.of(f)))
                continue
            try:
                outs, info = await asyncio.wrap_future(f)
            except Exception as e:  # noqa: BLE001 - answered to that request
                out.append((False, RemoteError.of(e)))
                continue
            if self.mode == "timing":  # the outputs were never written
                outs = NotComputed(self.index, info.modeled_cycles, info.modeled_seconds)
            out.append((True, (outs, info)))
        return out

    async def reallocate(self, name: str, cores: int) -> dict:
        """Replica ``name`` to ``cores`` cores of this board, live."""
        r = await self._blocking(self.accel.reallocate, {name: cores})
        return {"cores": r.after[name], "seconds": r.total_s}

    async def remove(self, name: str) -> None:
        """Removes replica ``name`` (its queued requests fail, the one in flight finishes)."""
        if name in self.accel.tenants:
            await self._blocking(self.accel.remove, name)

    async def reset(self, name: str) -> None:
        """Re-enables replica ``name`` after a fault."""
        tenant = self.accel.tenants.get(name)
        if tenant is None:
            raise TenantRemoved(f"board {self.index} holds no replica {name!r}")
        await self._blocking(tenant.reset)

    def stats(self) -> dict:
        """Per replica the accelerator's figures, and the board's clock (modeled
        on emulated and timing-only boards, measured on a card)."""
        a = self.accel
        cycles = a.dispatcher.read("cycles")
        hz = float(a.config["clock_mhz"]) * 1e6
        return {"index": self.index, "boot": self.boot, "tenants": a.stats(), "cycles": cycles,
                "seconds": cycles / hz, "source": "modeled" if a.emulated else "measured",
                "pending": {n: t.pending for n, t in a.tenants.items()}}

    def close(self) -> None:
        self.accel.close()
