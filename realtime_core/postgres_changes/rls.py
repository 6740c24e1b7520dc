"""Row-level security for Postgres Changes, checked in batches (design §3).

A subscriber sees an INSERT or UPDATE on an RLS-enabled table only if its role,
with its JWT claims, can select the current row by primary key (spec §6.4).
Upstream runs one query per subscriber per row; we group subscribers by
(role, claims) and check every key of a batch with one query per group:
100–400k checks/s on one connection instead of ~9k/s. A policy that raises
affects only its own group."""

from __future__ import annotations

from typing import Any

import orjson
from psycopg import AsyncConnection, sql

from .catalog import TableInfo, as_text, select_by_keys

__all__ = ["visible_keys"]


async def visible_keys(
    conn: AsyncConnection[Any],
    *,
    schema: str,
    table: str,
    info: TableInfo,
    role: str,
    claims: dict[str, Any],
    keys: list[tuple[str | None, ...]],
) -> set[tuple[str, ...]]:
    """The primary keys (as text tuples) among `keys` that `role` with `claims` may select.

    Runs in its own transaction on `conn` (role and settings are
    transaction-local) and raises the database error of a failing policy.
    Keys are compared as the text the WAL carries."""
    out: list[sql.Composable] = [as_text(sql.SQL("t.{}").format(sql.Identifier(c))) for c in info.primary_key]
    query = select_by_keys(schema, table, info, out)
    arrays = [[k[i] for k in keys] for i in range(len(info.primary_key))]
    claims_json = orjson.dumps(claims).decode()
    # Pipelined: BEGIN, the settings, the lookup and COMMIT cost one round trip.
    async with conn.pipeline():
        async with conn.transaction():
            await conn.execute(_SETTINGS, (role, claims_json, str(claims.get("sub", "")), role))
            cur = await conn.execute(query, arrays)
        return {tuple(row) for row in await cur.fetchall()}


# set_config('role', r, true) is SET LOCAL ROLE r.
_SETTINGS = (
    "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true),"
    " set_config('request.jwt.claim.sub', %s, true), set_config('request.jwt.claim.role', %s, true)"
)
