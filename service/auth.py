"""API keys and roles. A key is ``clr_<id>_<secret>``; only its SHA-256 is stored.

Roles: ``submitter`` (submit checks, read its own), ``reviewer`` (read all checks, reference
audio, record verdicts), ``catalog-admin`` (catalog operations), ``admin`` (everything).
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import Enum

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


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(store: Store, role: Role, name: str = "") -> tuple[str, str]:
    """(key id, full key). The full key is shown once and never stored."""
    key_id = secrets.token_hex(6)
    key = f"clr_{key_id}_{secrets.token_urlsafe(24)}"
    store.add_key(key_id, name, role.value, _digest(key))
    return key_id, key


def authenticate(store: Store, key: str | None) -> Principal | None:
    """The principal of an active key, or None for a missing, unknown or revoked key."""
    if not key:
        return None
    row = store.key_by_hash(_digest(key))
    return Principal(row.id, row.name, Role(row.role)) if row else None
