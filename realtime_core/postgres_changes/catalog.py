"""What dispatch needs to know about a table and a role, read from the catalog and cached.

dispatch.Dispatcher calls Catalog.relations() once per batch for the tables of
its changes (RLS can be switched on at any time, so that flag is re-read per
batch: one query), and selectable() per (role, table), cached for a few seconds
because grants rarely change."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

__all__ = ["Catalog", "TableInfo"]

PRIVILEGE_TTL = 5.0  # seconds a role's column privileges are trusted


@dataclass(slots=True, frozen=True)
class TableInfo:
    """One table: its primary key columns with their types, and whether RLS applies."""

    oid: int
    primary_key: tuple[str, ...]
    key_types: tuple[tuple[str, str], ...]  # (type schema, type name) per key column
    rls: bool


_TABLES = "select c.oid, c.relrowsecurity from pg_class c where c.oid = any(%s)"

_KEYS = """
select i.indrelid, a.attname::text, tn.nspname::text, t.typname::text
from pg_index i
join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
join pg_type t on t.oid = a.atttypid
join pg_namespace tn on tn.oid = t.typnamespace
where i.indrelid = any(%s) and i.indisprimary
order by i.indrelid, array_position(i.indkey, a.attnum)
"""

_SELECTABLE = """
select a.attname::text from pg_attribute a
where a.attrelid = %s and a.attnum > 0 and not a.attisdropped
  and has_column_privilege(%s, a.attrelid, a.attname, 'SELECT')
"""


class Catalog:
    """Cached table facts and column privileges of one database."""

    def __init__(self) -> None:
        self._selectable: dict[tuple[str, int], tuple[float, frozenset[str]]] = {}

    async def tables(self, conn: AsyncConnection[Any], oids: list[int]) -> dict[int, TableInfo]:
        cur = await conn.execute(_TABLES, (oids,))
        rls = {oid: bool(flag) for oid, flag in await cur.fetchall()}
        cur = await conn.execute(_KEYS, (oids,))
        keys: dict[int, list[tuple[str, str, str]]] = {}
        for oid, name, type_schema, type_name in await cur.fetchall():
            keys.setdefault(oid, []).append((name, type_schema, type_name))
        return {
            oid: TableInfo(
                oid,
                tuple(k[0] for k in keys.get(oid, ())),
                tuple((k[1], k[2]) for k in keys.get(oid, ())),
                flag,
            )
            for oid, flag in rls.items()
        }

    async def selectable(self, conn: AsyncConnection[Any], role: str, oid: int) -> frozenset[str] | None:
        """Column names `role` may SELECT on table `oid`; None when the role does not exist."""
        key = (role, oid)
        now = time.monotonic()
        cached = self._selectable.get(key)
        if cached is not None and now - cached[0] < PRIVILEGE_TTL:
            return cached[1]
        if not role:
            return None
        try:
            async with conn.transaction():  # a savepoint when the caller is in a transaction
                cur = await conn.execute("select to_regrole(%s) is not null", (role,))
                row = await cur.fetchone()
        except psycopg.errors.InvalidName:
            return None  # PostgreSQL < 16 raises for names it cannot parse
        if row is None or not row[0]:
            return None
        cur = await conn.execute(_SELECTABLE, (oid, role))
        names = frozenset(r[0] for r in await cur.fetchall())
        self._selectable[key] = (now, names)
        return names

    def forget(self, oid: int) -> None:
        """Drop cached privileges of a table whose definition changed."""
        for key in [k for k in self._selectable if k[1] == oid]:
            del self._selectable[key]
