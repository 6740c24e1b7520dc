"""The RLS policy tester: `POST /admin/v1/tenants/{id}/authorization/check`.

Given a subject (a client JWT, verified with the tenant's keys as a connect is, or a role with
claims), a topic and an action, it answers whether the policies on `realtime.messages` let
that subject read (join) or write (broadcast, track) there, which policies apply, how long
the check took and, when a policy raised, its error. It runs Authorizer.read() or write(),
the very probe a join or a send runs (authorization.py), so its answer is the one a client
gets; it never changes data (the probe's transaction is rolled back)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from pydantic import BaseModel, Field

from ..authorization import BROADCAST, Authorizer
from ..errors import JwtError, RealtimeError, Unauthorized
from .endpoints import AdminApi, ApiError, Call, Model, invalid, tenant_of

if TYPE_CHECKING:
    from ..app import App
    from ..tenants import Tenant

__all__ = ["AuthorizationCheck", "AuthorizationResult", "Policy", "list_policies", "routes", "subject_claims"]

# The commands whose policies a check runs: ALL policies apply to every command.
_COMMANDS = {"read": ["SELECT", "ALL"], "write": ["INSERT", "ALL"]}

_POLICIES = """
select policyname::text, cmd, permissive = 'PERMISSIVE', roles::text[], qual, with_check
from pg_policies
where schemaname = %s and tablename = %s and cmd = any(%s) and roles && array[%s, 'public']::name[]
order by policyname
"""


class Policy(BaseModel):
    """One row-level security policy (pg_policies)."""

    name: str
    command: str
    permissive: bool
    roles: list[str]
    using: str | None
    with_check: str | None


class AuthorizationCheck(Model):
    """What a client would do: `jwt` (verified with the tenant's keys), or else `role` with `claims`."""

    topic: str = Field(min_length=1, description="the channel's topic, without `realtime:`")
    private: bool = True
    action: Literal["read", "write"] = "read"
    extension: Literal["broadcast", "presence"] = BROADCAST
    role: str | None = Field(None, min_length=1)
    claims: dict[str, Any] = Field(default_factory=dict)
    jwt: str | None = Field(None, min_length=1)
    headers: dict[str, str] = Field(default_factory=dict, description="the client's `x-` headers")


class AuthorizationResult(BaseModel):
    """The probe's answer, the policies that took part, its time, and the error of a raising policy."""

    allowed: bool
    policies: list[Policy]
    duration_ms: float
    error: str | None


def subject_claims(
    app: App, tenant: Tenant, jwt: str | None, role: str | None, claims: dict[str, Any]
) -> dict[str, Any]:
    """The claims a check runs with: the verified `jwt`'s, or `claims` with `role` set. Raises
    ApiError (422) for an invalid JWT (naming upstream's reason) or no subject at all."""
    if jwt is not None:
        if role is not None or claims:
            raise invalid("jwt", "give either jwt, or role with claims, not both")
        try:
            return app.verify_token(tenant, jwt)
        except JwtError as exc:
            raise invalid("jwt", exc.reason) from None
    if role is None:
        raise invalid("role", "can't be blank without jwt")
    return {**claims, "role": role}


async def list_policies(
    conn: psycopg.AsyncConnection[Any], schema: str, table: str, role: str, commands: list[str]
) -> list[Policy]:
    """The policies on `schema.table` for one of `commands` that apply to `role` (or to public)."""
    cur = await conn.execute(_POLICIES, (schema, table, commands, role))
    return [
        Policy(name=name, command=cmd, permissive=permissive, roles=roles, using=using, with_check=check)
        for name, cmd, permissive, roles, using, check in await cur.fetchall()
    ]


async def check(
    authorizer: Authorizer, topic: str, action: str, extension: str, claims: dict[str, Any], headers: dict[str, str]
) -> tuple[bool, float, str | None]:
    """Run the probe a client's join (read) or send (write) runs: (allowed, ms, error). A policy
    that raised is not allowed, with the client's error text and the database's message."""
    probe = authorizer.read if action == "read" else authorizer.write
    started = time.perf_counter()
    error: str | None = None
    try:
        allowed = (await probe(topic, claims, headers, (extension,), measure=False))[extension]
    except RealtimeError as exc:
        allowed = False
        error = exc.reason
        if isinstance(exc, Unauthorized) and exc.policy_error:
            error = f"{error} (policy error: {exc.policy_error})"
    return allowed, (time.perf_counter() - started) * 1000, error


def routes(api: AdminApi, app: App) -> None:
    @api.route(
        "POST",
        "/admin/v1/tenants/:id/authorization/check",
        body=AuthorizationCheck,
        response=AuthorizationResult,
        action="authorization.check",
    )
    async def authorization_check(call: Call) -> AuthorizationResult:
        """Whether a subject may read or write a topic, by the probe a client's join or send runs."""
        tenant = tenant_of(app.tenants, call)
        body: AuthorizationCheck = call.body
        bad = sorted(name for name in body.headers if not name.lower().startswith("x-"))
        if bad:
            raise invalid("headers", f"only x- headers reach the policies: {', '.join(bad)}")
        claims = subject_claims(app, tenant, body.jwt, body.role, body.claims)
        role = claims.get("role") if isinstance(claims.get("role"), str) else ""
        call.detail.update(topic=body.topic, action=body.action, extension=body.extension, role=role)
        if not body.private:
            # A public channel runs no policy; a private-only tenant refuses it (docs/protocol.md §3.3).
            refused = "PrivateOnly: This project only allows private channels" if tenant.private_only else None
            return AuthorizationResult(allowed=refused is None, policies=[], duration_ms=0.0, error=refused)
        authorizer = app.authorizer_for(tenant)
        if authorizer is None:
            raise ApiError(503, {"message": "the tenant's database is not connected"})
        headers = {name.lower(): value for name, value in body.headers.items()}
        allowed, duration_ms, error = await check(authorizer, body.topic, body.action, body.extension, claims, headers)
        try:
            async with authorizer.pool.connection() as conn:
                policies = await list_policies(conn, "realtime", "messages", str(role), _COMMANDS[body.action])
        except psycopg.Error as exc:
            raise ApiError(503, {"message": f"could not list the policies: {exc}"}) from None
        return AuthorizationResult(allowed=allowed, policies=policies, duration_ms=duration_ms, error=error)
