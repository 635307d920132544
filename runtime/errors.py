"""Errors the runtime API raises, in one place so every module names the same classes."""

from __future__ import annotations

from vfpga.driver.tenant_context import ContextError, MaskRejected, QueueFull  # noqa: F401 - re-exported


class DeployError(RuntimeError):
    """The accelerator cannot host this tenant (cores, contexts, memory, names)."""


class TenantRemoved(RuntimeError):
    """The tenant was removed before (or while) the request could run."""


class TenantFault(RuntimeError):
    """A tenant's program faulted on the hardware. ``fault`` names the
    code, core and address; the tenant stays stopped (its queued requests
    fail with this error too) until :meth:`Tenant.reset`."""

    def __init__(self, tenant: str, message: str, fault=None, completion=None):
        self.tenant = tenant
        self.fault = fault
        self.completion = completion
        super().__init__(f"tenant {tenant!r}: {message}")
