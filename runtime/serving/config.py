"""The server's configuration: where it listens, the admin token and the
per-tenant quotas (a default, and overrides by model name).

A quota file is JSON:

    {"default": {"max_cores": 4, "max_pending": 64, "max_request_bytes": 4194304},
     "models": {"vision": {"max_cores": 8}}}
"""

from __future__ import annotations

import dataclasses
import json
import os

ADMIN_TOKEN_ENV = "VFPGA_ADMIN_TOKEN"


@dataclasses.dataclass(frozen=True)
class Quota:
    """What one tenant may hold: cores, requests waiting in its host queue,
    bytes in one inference request body."""

    max_cores: int | None = None  # None: the whole pool
    max_pending: int = 64
    max_request_bytes: int = 16 << 20

    def __post_init__(self):
        for f in ("max_cores", "max_pending", "max_request_bytes"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"quota {f} must be a positive integer, not {v!r}")


@dataclasses.dataclass
class ServerConfig:
    board: str = "u200"
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = 8001  # None: no gRPC endpoint
    admin_token: str | None = None
    quota: Quota = dataclasses.field(default_factory=Quota)
    model_quotas: dict[str, Quota] = dataclasses.field(default_factory=dict)
    max_model_bytes: int = 256 << 20  # a load request's body (the model and calibration, base64)
    request_timeout_s: float = 120.0  # an inference that takes longer answers 503
    shutdown_grace_s: float = 30.0  # SIGTERM: how long in-flight requests may take to finish
    emulate: bool | None = None  # None: a real board where there is one
    bank_capacity: int | None = None  # emulated boards: bytes per DDR bank (None: the default)
    boards: dict[str, int] | None = None  # a cluster of boards ({kind: count}); None: the one board above
    ray_address: str | None = None  # the cluster's Ray: None (start one here), "auto" or HOST:PORT

    @property
    def cluster(self) -> bool:
        return self.boards is not None

    def quota_for(self, model: str) -> Quota:
        return self.model_quotas.get(model, self.quota)

    def resolved_admin_token(self) -> str | None:
        return self.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None


def _quota(d: dict, base: Quota, where: str) -> Quota:
    if not isinstance(d, dict):
        raise ValueError(f"quota file: {where} must be an object, not {type(d).__name__}")
    unknown = set(d) - {f.name for f in dataclasses.fields(Quota)}
    if unknown:
        raise ValueError(f"quota file: {where} has unknown keys {sorted(unknown)}; known: max_cores, max_pending, "
                         "max_request_bytes")
    return dataclasses.replace(base, **d)


def read_quotas(path: str, base: Quota) -> tuple[Quota, dict[str, Quota]]:
    """(default quota, per-model quotas) from a quota file; keys not given keep ``base``'s values."""
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"quota file {path}: not JSON: {e}") from None
    if not isinstance(doc, dict) or set(doc) - {"default", "models"}:
        raise ValueError(f"quota file {path}: expected an object with 'default' and/or 'models'")
    default = _quota(doc.get("default", {}), base, "default")
    models = {n: _quota(q, default, f"models.{n}") for n, q in doc.get("models", {}).items()}
    return default, models
