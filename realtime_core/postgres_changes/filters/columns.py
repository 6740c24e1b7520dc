"""The columns of a table as the filters need them, read from the catalog."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import psycopg
from psycopg import sql

__all__ = ["ColumnInfo", "Row", "load_columns"]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column of a table, with its type as the filters need it."""

    name: str
    type_oid: int
    type_schema: str  # pg_namespace.nspname of the type
    typname: str  # pg_type.typname: int4, _int4, timestamptz, ... (a payload column's `type`)
    type_name: str  # format_type(oid, NULL): integer, integer[], timestamp with time zone, ...
    category: str  # pg_type.typcategory
    attnum: int = 0

    @property
    def type_sql(self) -> sql.Composable:
        """The type for a cast, e.g. "pg_catalog"."int4"; no typmod, so nothing is truncated or rounded."""
        return sql.Identifier(self.type_schema, self.typname)

    @property
    def array_type_sql(self) -> sql.Composable:
        """The array of the type, e.g. "pg_catalog"."int4"[] (an array of an array is the array itself)."""
        return sql.SQL("{}[]").format(self.type_sql)

    @property
    def is_text_like(self) -> bool:
        """Whether like/ilike/match/imatch apply: string types and domains over them."""
        return self.typname in _TEXT_TYPES or self.category == "S"

    @property
    def is_bool(self) -> bool:
        return self.type_oid == BOOL


_TEXT_TYPES = frozenset(("text", "varchar", "bpchar", "name", "citext"))
# The oids of the types the Python fast path (fast_path.py) reads.
BOOL, INT2, INT4, INT8, TEXT, VARCHAR, UUID = 16, 21, 23, 20, 25, 1043, 2950

_COLUMNS = sql.SQL(
    """select a.attname, a.atttypid::int8, n.nspname, t.typname,
       format_type(a.atttypid, null), t.typcategory::text, a.attnum
from pg_catalog.pg_attribute a
join pg_catalog.pg_type t on t.oid = a.atttypid
join pg_catalog.pg_namespace n on n.oid = t.typnamespace
where a.attrelid = %s::oid and a.attnum > 0 and not a.attisdropped
order by a.attnum"""
)


async def load_columns(conn: psycopg.AsyncConnection[Any], relid: int) -> dict[str, ColumnInfo]:
    """Read the live columns of table `relid`, by name, in attnum order."""
    cur = await conn.execute(_COLUMNS, (relid,))
    return {
        name: ColumnInfo(name, oid, nsp, typname, type_name, category, attnum)
        for name, oid, nsp, typname, type_name, category, attnum in await cur.fetchall()
    }


# One change: its WAL text values by column name (None for SQL NULL).
Row: TypeAlias = Mapping[str, "str | None"]
