"""Bearer tokens: the admin's and one per tenant.

Tokens are kept as SHA-256 digests and compared in constant time. A request
names its token in ``Authorization: Bearer <token>`` (HTTP header or gRPC
metadata). What a reply says never tells one tenant anything about another
tenant's model: a model that is not the caller's is "not found or not
yours", whether it exists or not.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading

from .protocol import ServingError

MIN_TOKEN_CHARS = 16


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return secrets.token_urlsafe(24)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None if absent)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ServingError(401, "the Authorization header must be 'Bearer <token>'")
    return token.strip()


def not_yours(model: str) -> ServingError:
    return ServingError(403, f"model {model!r} not found or not yours")


class Tokens:
    """Which model each tenant token opens, and the admin token."""

    def __init__(self, admin_token: str | None):
        self._admin = digest(admin_token) if admin_token else None
        self._owner: dict[bytes, str] = {}  # token digest -> model name
        self._lock = threading.Lock()

    def is_admin(self, token: str | None) -> bool:
        return self._admin is not None and token is not None and hmac.compare_digest(digest(token), self._admin)

    def require_admin(self, token: str | None) -> None:
        if self._admin is None:
            raise ServingError(403, "model control is disabled: the server was started without an admin token "
                                    "(--admin-token or VFPGA_ADMIN_TOKEN)")
        if token is None:
            raise ServingError(401, "model control needs the admin token (Authorization: Bearer <token>)")
        if not self.is_admin(token):
            raise ServingError(403, "model control needs the admin token; this one is not it")

    def owner(self, token: str) -> str | None:
        """The model ``token`` opens (None for an unknown token)."""
        return self._owner.get(digest(token))

    def check(self, model: str, token: str | None) -> None:
        """Lets the admin and ``model``'s own tenant in; raises 401/403 otherwise."""
        if token is None:
            raise ServingError(401, f"model {model!r}: a bearer token is needed (Authorization: Bearer <token>)")
        if self.is_admin(token):
            return
        owner = self.owner(token)
        if owner is None:
            raise ServingError(401, "invalid token")
        if not hmac.compare_digest(owner.encode(), model.encode()):
            raise not_yours(model)

    def add(self, model: str, token: str) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ServingError(400, f"config.token must have at least {MIN_TOKEN_CHARS} characters")
        d = digest(token)
        with self._lock:
            if d in self._owner or (self._admin is not None and hmac.compare_digest(d, self._admin)):
                raise ServingError(409, "config.token is already in use; choose another or let the server make one")
            self._owner[d] = model

    def remove(self, model: str) -> None:
        with self._lock:
            self._owner = {d: m for d, m in self._owner.items() if m != model}
