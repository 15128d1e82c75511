"""Dashboard sign-in: an API key of a person is exchanged for a session cookie.

The cookie holds a random token; only its SHA-256 is stored (``review_sessions``), with the
key it was opened for, an expiry and the session's CSRF token. A session ends when it expires,
when its user signs out, or at once when its key is revoked. Every form carries a CSRF token:
the session's, or before sign-in the one in a short-lived sign-in cookie (double submit).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from index.reviews import Actor, Review
from index.store import now
from service.auth import Principal, Role, secret_digest
from service.dashboard.errors import Refused

SESSION_COOKIE = "clearance_review"
SIGN_IN_COOKIE = "clearance_sign_in"

# Roles that may sign in at all. Catalog admins see only the catalog page, where they change rights.
DASHBOARD_ROLES = (Role.reviewer, Role.catalog_admin)


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str                    # the token every form of this session must carry

    @property
    def actor(self) -> Actor:
        return self.principal.actor

    def require(self, *roles: Role) -> None:
        """Refuse (403) unless the signed-in role is one of ``roles`` (admins always pass)."""
        if not self.principal.can(*roles):
            raise Refused(403, f"a {self.principal.role.value} key cannot do this; "
                               f"it needs a {' or '.join(r.value for r in roles)} key")

    def check_csrf(self, token: str) -> None:
        verify_csrf(self.csrf, token)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def verify_csrf(expected: str | None, given: str) -> None:
    if not expected or not secrets.compare_digest(expected.encode(), given.encode()):
        raise Refused(403, "this form has expired or did not come from the dashboard; reload the page and try again")


def open_session(review: Review, principal: Principal, hours: float) -> str:
    """Open a session (for a key that ``authorize`` let in with ``DASHBOARD_ROLES``); returns
    the cookie's token."""
    token = new_token()
    review.open_session(secret_digest(token), principal.key_id, new_token(), now() + timedelta(hours=hours))
    return token


def current_session(review: Review, token: str | None) -> Session | None:
    """The live session of a cookie token, or None."""
    if not token:
        return None
    s = review.session(secret_digest(token))
    return Session(Principal(s.key_id, s.name, Role(s.role)), s.csrf) if s else None


def close_session(review: Review, token: str) -> None:
    review.close_session(secret_digest(token))
