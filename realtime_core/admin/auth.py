"""Admin authentication: who may call the tenant API and `/admin/v1`, and what they may do.

As upstream (router.ex `:check_auth`): a Bearer JWT signed with API_JWT_SECRET or
API_JWT_SECRET_NEXT (HS algorithms), not listed in API_TOKEN_BLOCKLIST, whose `exp`,
when present, lies in the future. Stricter than upstream:

- a token whose `role` is `anon` or `authenticated` is refused. Supabase's self-hosted
  stack sets API_JWT_SECRET to the project's JWT secret, which makes every anon key an
  admin token there; here it is not;
- the claim `"admin": "read"` makes a read-only token (GET only); `"admin": "write"` or no
  `admin` claim may do everything; any other value is refused.

Every failure is a 403 with an empty body (upstream's answer), so the caller learns
nothing about which check failed; the reason is logged at INFO without the token."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import JwtError
from ..jwt import KeySet, clean_token, verify
from ..net.http import Request

__all__ = ["AdminAuth", "Identity", "Refused"]

log = logging.getLogger(__name__)

# Client roles of a Supabase project: their tokens are handed to browsers.
_CLIENT_ROLES = frozenset({"anon", "authenticated"})
_READ = "read"
_WRITE = "write"


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of an admin request, as its token names it (for the audit log)."""

    sub: str | None
    iat: int | None
    read_only: bool
    claims: dict[str, Any]


class Refused(Exception):
    """The request is not allowed (answered 403, empty body); the message says why, for the log."""


class AdminAuth:
    """Checks admin tokens against the configured secrets and blocklist."""

    __slots__ = ("_blocklist", "_keys")

    def __init__(self, secrets: list[str], blocklist: tuple[str, ...] = ()) -> None:
        self._keys = [KeySet(secret=s) for s in secrets if s]
        self._blocklist = frozenset(clean_token(t) for t in blocklist)

    @classmethod
    def from_settings(cls, settings: Settings) -> AdminAuth:
        """API_JWT_SECRET (or the generated one in the data dir), API_JWT_SECRET_NEXT, API_TOKEN_BLOCKLIST."""
        secrets = [settings.resolve_api_jwt_secret(), settings.api_jwt_secret_next]
        return cls([s for s in secrets if s], settings.api_token_blocklist)

    @property
    def enabled(self) -> bool:
        """False when no secret is configured: every admin request is refused."""
        return bool(self._keys)

    def identify(self, request: Request, *, write: bool) -> Identity:
        """The caller of `request`, allowed to read, or to write too when `write`. Raises Refused."""
        if not self._keys:
            raise Refused("no API_JWT_SECRET is configured")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused("no Bearer token")
        token = clean_token(token)
        if token in self._blocklist:
            raise Refused("the token is in API_TOKEN_BLOCKLIST")
        claims = self._verify(token)
        role = claims.get("role")
        if isinstance(role, str) and role in _CLIENT_ROLES:
            raise Refused(f"a token of role {role!r} is a client's, never an admin's")
        admin = claims.get("admin", _WRITE)
        if admin not in (_READ, _WRITE):
            raise Refused("the admin claim is neither 'read' nor 'write'")
        if write and admin == _READ:
            raise Refused("a read-only token (admin: read) may only GET")
        sub = claims.get("sub")
        iat = claims.get("iat")
        return Identity(
            sub=sub if isinstance(sub, str) else None,
            iat=iat if isinstance(iat, int) else None,
            read_only=admin == _READ,
            claims=claims,
        )

    def _verify(self, token: str) -> dict[str, Any]:
        now = time.time()
        error: JwtError | None = None
        for keys in self._keys:
            try:
                return verify(token, keys, now=now, require_role_exp=False)
            except JwtError as exc:
                error = exc
        raise Refused(f"the token does not verify: {error}")
