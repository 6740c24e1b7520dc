"""The Postgres Changes visibility check: `POST /admin/v1/tenants/{id}/postgres-changes/check`.

"Why didn't this client get that event?": for a subscriber (JWT, or role and claims), a
subscription (schema, table, event, filter) and a row (by primary key, or given), it answers
whether live delivery would send the change and, if not, why: the table is not published, the
filter fails (which condition), RLS hides the row (the table's SELECT policies for the role) or
a policy raised (its error). A delivered change carries the `errors` a live one would (401
without SELECT privilege on the key, 413 for an oversize record). The decision is live
delivery's own (postgres_changes/visibility.py), in a transaction that is rolled back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from pydantic import BaseModel, Field

from ..postgres_changes import visibility
from .endpoints import AdminApi, ApiError, Call, Model, invalid, tenant_of
from .rls_tester import Policy, list_policies, subject_claims

if TYPE_CHECKING:
    from ..app import App

__all__ = ["ChangeCheck", "ChangeCheckResult", "routes"]


class ChangeCheck(Model):
    """A subscriber, its subscription, and the row: `primary_key` (a current row) or `row` (values)."""

    schema_name: str = Field("public", alias="schema", min_length=1)
    table: str = Field(min_length=1)
    event: Literal["INSERT", "UPDATE", "DELETE"] = "INSERT"
    filter: str = ""
    role: str | None = Field(None, min_length=1)
    claims: dict[str, Any] = Field(default_factory=dict)
    jwt: str | None = Field(None, min_length=1)
    primary_key: dict[str, Any] | None = None
    row: dict[str, Any] | None = None


class ChangeCheckResult(BaseModel):
    """Delivered or not, why not, a delivery's errors, the SELECT policies of the table for the role."""

    delivered: bool
    reason: Literal["publication", "filter", "rls", "rls_error"] | None
    detail: str | None
    errors: list[str]
    policies: list[Policy]
    duration_ms: float


def routes(api: AdminApi, app: App) -> None:
    @api.route(
        "POST",
        "/admin/v1/tenants/:id/postgres-changes/check",
        body=ChangeCheck,
        response=ChangeCheckResult,
        action="postgres_changes.check",
    )
    async def postgres_changes_check(call: Call) -> ChangeCheckResult:
        """Whether a subscriber would get a change of a row, by live delivery's own decision."""
        tenant = tenant_of(app.tenants, call)
        body: ChangeCheck = call.body
        if (body.primary_key is None) == (body.row is None):
            raise invalid("primary_key", "give either primary_key or row")
        claims = subject_claims(app, tenant, body.jwt, body.role, body.claims)
        role = claims.get("role") if isinstance(claims.get("role"), str) else ""
        call.detail.update(schema=body.schema_name, table=body.table, event=body.event, role=role)
        services = app.services.get(tenant.external_id)
        cdc = services.cdc if services is not None else None
        if cdc is None:
            raise ApiError(503, {"message": "Postgres Changes is not running for this tenant"})
        started = time.perf_counter()
        try:
            async with cdc.pool.connection() as conn:
                result = await visibility.check(
                    conn,
                    tenant=tenant,
                    hub=app.hub,
                    now=app.now,
                    publication=cdc.settings.publication,
                    max_record_bytes=cdc.settings.max_record_bytes,
                    schema=body.schema_name,
                    table=body.table,
                    event=body.event,
                    filter_text=body.filter,
                    role=str(role),
                    claims=claims,
                    primary_key=body.primary_key,
                    row=body.row,
                )
                duration_ms = (time.perf_counter() - started) * 1000
                policies = await list_policies(conn, body.schema_name, body.table, str(role), ["SELECT", "ALL"])
        except visibility.CheckInputError as exc:
            raise invalid(exc.field, exc.message) from None
        except psycopg.errors.QueryCanceled:
            raise ApiError(504, {"message": f"the check took longer than {visibility.STATEMENT_TIMEOUT}"}) from None
        except psycopg.OperationalError as exc:
            raise ApiError(503, {"message": f"the tenant's database is unreachable: {exc}"}) from None
        return ChangeCheckResult(
            delivered=result.delivered,
            reason=result.reason,  # type: ignore[arg-type]
            detail=result.detail,
            errors=result.errors,
            policies=policies,
            duration_ms=duration_ms,
        )
