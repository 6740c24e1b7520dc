"""Row-level security for Postgres Changes, checked in batches (docs/design.md §3).

A subscriber sees an INSERT or UPDATE on an RLS-enabled table only if its role,
with its JWT claims, can select the current row by primary key (docs/protocol.md §6.4).
Upstream runs one query per subscriber per row; we group subscribers by
(role, claims) and check every key of a batch with one query per group:
100–400k checks/s on one connection instead of ~9k/s. A policy that raises
affects only its own group."""

from __future__ import annotations

from typing import Any

import orjson
from psycopg import AsyncConnection, sql

from .catalog import TableInfo, as_text, select_by_keys

__all__ = ["group_query", "visible_keys", "visible_keys_by_group"]


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


def group_query(schema: str, table: str, info: TableInfo) -> sql.Composed:
    """The lookup realtime.visible_keys_by_group() runs per group: ($1 = group index, $2 = keys).

    Single-column primary keys only; the key array is cast to the key's type as a
    whole so the primary key index is used under RLS (see catalog.select_by_keys)."""
    [column] = [sql.Identifier(c) for c in info.primary_key]
    [type_name] = info.key_types
    return sql.SQL("select $1::int, {out}, null::text from {table} t where t.{c} = any($2::text[]::{t}[])").format(
        out=as_text(sql.SQL("t.{}").format(column), for_execute=False),
        table=sql.Identifier(schema, table),
        c=column,
        t=sql.Identifier(*type_name),
    )


async def visible_keys_by_group(
    conn: AsyncConnection[Any], query: str, keys: list[str], groups: list[tuple[str, dict[str, Any]]]
) -> list[set[str] | str]:
    """For each (role, claims) group, the keys among `keys` it may select, or the text of
    the error its policy raised. One statement for all groups (sql/0004_rls_batches.sql)."""
    payload = orjson.dumps(
        [
            {"role": role, "claims": orjson.dumps(claims).decode(), "sub": str(claims.get("sub") or "")}
            for role, claims in groups
        ]
    ).decode()
    results: list[set[str] | str] = [set() for _ in groups]
    async with conn.transaction():  # role and settings are transaction-local
        cur = await conn.execute(
            "select group_index, key, error from realtime.visible_keys_by_group(%s, %s::text[], %s::jsonb)",
            (query, keys, payload),
        )
        for index, key, error in await cur.fetchall():
            if error is not None:
                results[index] = error
            else:
                found = results[index]
                if isinstance(found, set):
                    found.add(key)
    return results
