"""`vfpga serve`: the board's tenants over the network, speaking the Open
Inference Protocol (KServe v2) so that standard clients (tritonclient, kserve)
work unchanged.

:mod:`.protocol` holds the protocol's data (datatypes, tensors, errors),
:mod:`.auth` the bearer tokens (admin and per tenant), :mod:`.config` the
server configuration and per-tenant quotas, :mod:`.repository` the served
models (load, unload, re-allocate, reset, inference, the same for every
transport), :mod:`.http_api` the REST endpoint (FastAPI), :mod:`.grpc_api` the
``GRPCInferenceService`` (grpcio, messages from ``oip.proto``),
:mod:`.metrics` the Prometheus metrics and :mod:`.server` the process: both
endpoints, signals and graceful shutdown.

It fronts one board, or a cluster of boards (``vfpga serve --ray``: the
same repository over :mod:`vfpga.runtime.cluster`, with replicas and
per-board metrics).

Imports: cluster (lazily, when it fronts one), tenants, the compiler,
models, errors and the driver; nothing below it imports serving.
"""

from .config import Quota, ServerConfig
from .protocol import ServingError, TensorSpec

__all__ = ["Quota", "ServerConfig", "ServingError", "TensorSpec"]
