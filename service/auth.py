"""API keys and roles. A key is ``clr_<id>_<secret>``; only its SHA-256 is stored.

Roles: ``submitter`` (submit checks, read its own), ``reviewer`` (read all checks, reference
audio, record verdicts), ``catalog-admin`` (catalog operations), ``admin`` (everything).

HTTP routes ask for a role with the dependency ``require(*roles)``; keys travel as
``Authorization: Bearer KEY``. Code that finds a key elsewhere (a dashboard session) calls
``authorize`` with it.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from detector.errors import ClearanceError
from index.reviews import Actor
from index.store import Store


class Role(str, Enum):
    submitter = "submitter"
    reviewer = "reviewer"
    catalog_admin = "catalog-admin"
    admin = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's public id, its name and role."""

    key_id: str
    name: str
    role: Role

    def can(self, *roles: Role) -> bool:
        """Admins can do everything; others only what their role is listed for."""
        return self.role is Role.admin or self.role in roles

    @property
    def actor(self) -> Actor:
        """Who the audit log names for changes made with this key."""
        return Actor(self.key_id, self.name or self.key_id)

    @property
    def own_checks_only(self) -> bool:
        """Submitters see only the checks made with their own key; other roles see all."""
        return self.role is Role.submitter


def secret_digest(secret: str) -> str:
    """What is stored of a secret (an API key, a session token): its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(store: Store, role: Role, name: str = "") -> tuple[str, str]:
    """(key id, full key). The full key is shown once and never stored."""
    key_id = secrets.token_hex(6)
    key = f"clr_{key_id}_{secrets.token_urlsafe(24)}"
    store.add_key(key_id, name, role.value, secret_digest(key))
    return key_id, key


def authenticate(store: Store, key: str | None) -> Principal | None:
    """The principal of an active key, or None for a missing, unknown or revoked key."""
    if not key:
        return None
    row = store.key_by_hash(secret_digest(key))
    return Principal(row.id, row.name, Role(row.role)) if row else None


class Unauthenticated(ClearanceError):
    """No key, or a key that is unknown or revoked."""


class Forbidden(ClearanceError):
    """A valid key whose role may not do what was asked."""


def authorize(store: Store, key: str | None, roles: tuple[Role, ...]) -> Principal:
    """The principal of ``key`` if it may act in one of ``roles`` (admins may do anything);
    raises ``Unauthenticated`` or ``Forbidden``."""
    principal = authenticate(store, key)
    if principal is None:
        raise Unauthenticated("an active API key is needed: send 'Authorization: Bearer KEY' "
                              "(keys come from `clearance keys create`)" if not key else
                              "the API key is unknown or revoked")
    if not principal.can(*roles):
        allowed = ", ".join(r.value for r in dict.fromkeys((*roles, Role.admin)))
        raise Forbidden(f"a {principal.role.value} key may not do this; it needs one of: {allowed}")
    return principal


_bearer = HTTPBearer(auto_error=False, description="an API key from `clearance keys create --role ROLE`")


def require(*roles: Role) -> Callable[..., Principal]:
    """A FastAPI dependency giving the caller's ``Principal`` when its key has one of ``roles``
    (or is an admin's): ``principal: Principal = Depends(require(Role.reviewer))``. The store
    is the one of the engine in ``app.state.engine``."""

    def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> Principal:
        return authorize(request.app.state.engine.store, credentials.credentials if credentials else None, roles)

    return dependency
