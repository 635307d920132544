"""The errors a user of the runtime catches, in one place: every module
raises these same classes (defined here, or where the layer that detects
them lives, and re-exported here)."""

from __future__ import annotations

from vfpga.driver.tenant_context import ContextError, MaskRejected, QueueFull
from vfpga.runtime.compiler.frontend.errors import FrontendError, UnsupportedOperatorError
from vfpga.runtime.compiler.ifp import IfpError
from vfpga.runtime.compiler.rnn.model import RnnCompileError
from vfpga.runtime.compiler.static import CompileError

__all__ = ["ClusterError", "CompileError", "ContextError", "DeployError", "FrontendError", "IfpError", "MaskRejected",
           "PlacementError", "QueueFull", "RnnCompileError", "TenantFault", "TenantRemoved", "UnsupportedOperatorError"]


class DeployError(RuntimeError):
    """The accelerator cannot host this tenant (cores, contexts, memory, names)."""


class PlacementError(DeployError):
    """A cluster cannot hold this request; the message says why (what was
    asked, what each board of that kind has free, which boards are down)."""


class ClusterError(RuntimeError):
    """A cluster could not serve a request or an operation: no live replica
    (its board died and the survivors lack room), a board that does not
    start or answer, Ray missing or unreachable. The message says which."""


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
