"""Device strings and the process-wide accelerators the backend's models
share, one tenant per prepared model."""

from __future__ import annotations

import gc
import itertools
import threading

from vfpga import overlay
from vfpga.runtime import tenants

DEFAULT_BOARD = "u200"


class BackendError(ValueError):
    """The backend cannot take this model, device or input as given."""


# ---------------------------------------------------------------- devices and accelerators

_accels: dict[str, tenants.Accelerator] = {}
_accel_lock = threading.Lock()
_tenant_ids = itertools.count()


def parse_device(device: str) -> str:
    """Board name for a device string: "FPGA", "FPGA:<board>", "CPU"[":0"]."""
    if not isinstance(device, str) or not device:
        raise BackendError(f"device must be a string such as 'FPGA' or 'FPGA:u200', got {device!r}")
    kind, _, arg = device.partition(":")
    kind = kind.upper()
    if kind == "FPGA":
        board = arg or DEFAULT_BOARD
        if board not in overlay.available():
            raise BackendError(f"unknown board {board!r} in device {device!r}; known: {', '.join(overlay.available())}")
        return board
    if kind == "CPU":
        if arg and not arg.isdigit():
            raise BackendError(f"device {device!r}: CPU takes a numeric id (the host), not {arg!r}")
        return DEFAULT_BOARD
    raise BackendError(
        f"vfpga does not run on device {device!r}; use 'FPGA', 'FPGA:<board>' "
        f"({', '.join(overlay.available())}) or 'CPU' (the emulated board on this host)"
    )


def accelerator(board: str = DEFAULT_BOARD) -> tenants.Accelerator:
    """The process-wide accelerator of ``board`` (opened on first use)."""
    with _accel_lock:
        if board not in _accels:
            _accels[board] = tenants.open(board)
        return _accels[board]


_deferred: list = []  # slots whose rep was collected while the accelerator was busy


def release_unused() -> int:
    """Collect dropped reps and remove their tenants now; returns how many
    tenants were removed. (prepare() does this by itself.)"""
    gc.collect()
    n = 0
    while _deferred:
        slot = _deferred.pop()
        n += slot.tenant is not None
        slot.release()
    return n


class TenantSlot:
    """The tenant a rep holds; released when the rep is closed or collected
    (a weakref.finalize callback, so it must not refer to the rep)."""

    def __init__(self, accel: tenants.Accelerator):
        self.accel = accel
        self.tenant: tenants.Tenant | None = None

    def on_collect(self) -> None:
        # The cyclic GC may run this while this very thread holds the
        # accelerator's lock (inside deploy/remove); removing then would
        # deadlock, so it is deferred to the next prepare/release_unused.
        lock = getattr(self.accel, "_lock", None)
        if lock is not None and not lock.acquire(blocking=False):
            _deferred.append(self)
            return
        if lock is not None:
            lock.release()
        self.release()

    def deploy(self, compiled) -> tenants.Tenant:
        self.release()
        name = f"onnx{next(_tenant_ids)}"
        try:
            self.tenant = self.accel.deploy(compiled, name=name)
        except tenants.DeployError:
            release_unused()  # reps dropped but not yet collected still hold cores
            self.tenant = self.accel.deploy(compiled, name=name)
        return self.tenant

    def release(self) -> None:
        t, self.tenant = self.tenant, None
        if t is not None and t.name in self.accel.tenants:
            self.accel.remove(t)
