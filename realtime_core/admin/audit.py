"""The audit log of admin writes, in the server's database (`_realtime.admin_audit`), and
`GET /admin/v1/audit` to read it, newest first."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from .auth import Identity
from .endpoints import AdminApi, ApiError, AuditSink, Call, Page, invalid

__all__ = ["AuditEntry", "AuditLog", "routes"]


class AuditEntry(BaseModel):
    id: int
    at: datetime
    sub: str | None
    iat: int | None
    action: str
    target: str
    status: int
    detail: dict[str, Any]


class AuditQuery(BaseModel):
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, description="the next_cursor of the previous page")
    action: str | None = Field(None, description="only entries of this action")
    target: str | None = Field(None, description="only entries of this target")


class AuditLog(AuditSink):
    """Appends to and reads `_realtime.admin_audit` through the control pool (None while the
    server has not started: nothing to record yet)."""

    def __init__(self, pool: Callable[[], AsyncConnectionPool | None]) -> None:
        self._pool = pool

    async def append(self, identity: Identity, action: str, target: str, status: int, detail: dict[str, Any]) -> None:
        pool = self._pool()
        if pool is None:
            return
        async with pool.connection() as conn:
            await conn.execute(
                "insert into _realtime.admin_audit (sub, iat, action, target, status, detail)"
                " values (%s, %s, %s, %s, %s, %s)",
                (identity.sub, identity.iat, action, target, status, Jsonb(detail)),
            )

    async def page(self, query: AuditQuery) -> dict[str, Any]:
        """Entries newest first, `query.limit` of them, before the cursor's id."""
        pool = self._pool()
        if pool is None:
            raise ApiError(503, {"message": "the server's database is not open yet"})
        before: int | None = None
        if query.cursor:
            try:
                before = int(query.cursor)
            except ValueError:
                raise invalid("cursor", "is not a cursor of this list") from None
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "select id, at, sub, iat, action, target, status, detail from _realtime.admin_audit"
                " where (%(before)s::bigint is null or id < %(before)s)"
                " and (%(action)s::text is null or action = %(action)s)"
                " and (%(target)s::text is null or target = %(target)s)"
                " order by id desc limit %(limit)s",
                {"before": before, "action": query.action, "target": query.target, "limit": query.limit + 1},
            )
            rows = await cur.fetchall()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        data = [AuditEntry.model_validate(row).model_dump(mode="json") for row in rows]
        return {"data": data, "next_cursor": str(rows[-1]["id"]) if more and rows else None}


def routes(api: AdminApi) -> None:
    log = api.audit

    @api.route("GET", "/admin/v1/audit", query=AuditQuery, response=Page[AuditEntry])
    async def audit(call: Call) -> dict[str, Any]:
        """The audit log of admin writes, newest first."""
        if not isinstance(log, AuditLog):
            raise ApiError(503, {"message": "no audit log"})
        return await log.page(call.query)
