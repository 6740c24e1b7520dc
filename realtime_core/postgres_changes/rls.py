"""Row-level security for Postgres Changes, checked in batches (design §3).

A subscriber sees an INSERT or UPDATE on an RLS-enabled table only if its role,
with its JWT claims, can select the current row by primary key (spec §6.4).
Upstream runs one query per subscriber per row; we group subscribers by
(role, claims) and check every key of a batch with one query per group:
100–400k checks/s on one connection instead of ~9k/s. A policy that raises
affects only its own group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from psycopg import AsyncConnection, sql

__all__ = ["visible_keys"]


async def visible_keys(
    conn: AsyncConnection[Any],
    *,
    schema: str,
    table: str,
    primary_key: Sequence[str],
    key_types: Sequence[tuple[str, str]],
    role: str,
    claims: dict[str, Any],
    keys: list[tuple[str | None, ...]],
) -> set[tuple[str, ...]]:
    """The primary keys (as text tuples) among `keys` that `role` with `claims` may select.

    Runs in its own transaction on `conn` (role and settings are
    transaction-local) and raises the database error of a failing policy."""
    columns = [sql.Identifier(name) for name in primary_key]
    # Keys travel as text arrays cast to the key's own type, so the lookup
    # uses the primary key index; rows come back as text, the form the WAL
    # values we compare them with were written in.
    arrays = [[k[i] for k in keys] for i in range(len(primary_key))]
    aliases = [sql.Identifier(f"k{i}") for i in range(len(primary_key))]
    query = sql.SQL("select {out} from {table} t join unnest({arrays}) as k({aliases}) on {join}").format(
        out=sql.SQL(", ").join(sql.SQL("format('%%s', t.{})").format(c) for c in columns),
        table=sql.Identifier(schema, table),
        arrays=sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in columns),
        aliases=sql.SQL(", ").join(aliases),
        join=sql.SQL(" and ").join(
            sql.SQL("t.{c} = k.{a}::{t}").format(c=c, a=a, t=sql.Identifier(*type_name))
            for c, a, type_name in zip(columns, aliases, key_types, strict=True)
        ),
    )
    claims_json = orjson.dumps(claims).decode()
    async with conn.transaction():
        await conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        await conn.execute(
            "select set_config('request.jwt.claims', %s, true), set_config('request.jwt.claim.sub', %s, true),"
            " set_config('request.jwt.claim.role', %s, true)",
            (claims_json, str(claims.get("sub", "")), role),
        )
        cur = await conn.execute(query, arrays)
        return {tuple(row) for row in await cur.fetchall()}
