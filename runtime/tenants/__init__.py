"""The user's view of one board: open it, deploy models as tenants, run
them, re-allocate cores live.

:mod:`.accelerator` holds :func:`open` and :class:`Accelerator` (deploy,
reallocate, stats, remove); :mod:`.tenant` a CNN tenant (its segment, host
queue, submit/run, CPU fallback parts); :mod:`.rnn_tenant` an LSTM/GRU
tenant on the RNN cores; :mod:`.layout` how a tenant's segment is laid out
(the compiler's image plus the driver's ring, records and dispatch programs).

Imports: the compiler, the hardware models and the driver.
"""

from vfpga.runtime.errors import (
    ContextError,
    DeployError,
    MaskRejected,
    QueueFull,
    TenantFault,
    TenantRemoved,
)

from .accelerator import Accelerator, Reallocation, TenantStats, compile_model, open
from .rnn_tenant import RnnTenant
from .tenant import RunInfo, Tenant

__all__ = ["Accelerator", "ContextError", "DeployError", "MaskRejected", "QueueFull", "Reallocation", "RnnTenant",
           "RunInfo", "Tenant", "TenantFault", "TenantRemoved", "TenantStats", "compile_model", "open"]
