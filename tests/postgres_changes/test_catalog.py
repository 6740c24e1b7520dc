"""Tests for realtime_core.postgres_changes.catalog: table facts and cached column privileges.

Runs against a database of this module's own; its roles are cluster-wide, so
they get unique names and are dropped at the end."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from conftest import scratch_database
from psycopg import sql

from realtime_core.postgres_changes import catalog as catalog_module
from realtime_core.postgres_changes.catalog import PRIVILEGE_TTL, Catalog, TableInfo

pytestmark = pytest.mark.pg

READER = f"rt_cat_reader_{secrets.token_hex(4)}"
PARTIAL = f"rt_cat_partial_{secrets.token_hex(4)}"
NOBODY = f"rt_cat_nobody_{secrets.token_hex(4)}"

SCHEMA = f"""
create schema extra;
create domain extra.positive as int check (value > 0);
create table pk_order (a int, b text, c int, d text, primary key (b, a));
create table by_domain (id extra.positive primary key, v text);
create table secured (id uuid primary key, owner text);
alter table secured enable row level security;
create table no_key (v text);
create table wide (id int primary key, gone text, a text, b text);
alter table wide drop column gone;
create role {READER} nologin;
create role {PARTIAL} nologin;
create role {NOBODY} nologin;
grant select on wide to {READER};
grant select (id, b) on wide to {PARTIAL};
"""


@pytest.fixture(scope="module")
def db_dsn(pg_dsn: str) -> Iterator[str]:
    with scratch_database(pg_dsn, "rt_catalog") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        yield dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for role in (READER, PARTIAL, NOBODY):
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as c:
        yield c


async def oid(conn: psycopg.AsyncConnection[Any], table: str) -> int:
    cur = await conn.execute("select %s::regclass::oid::int8", (table,))
    row = await cur.fetchone()
    assert row is not None
    return row[0]


class FakeClock:
    """Stands in for the catalog module's `time`, so the TTL can pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class TestTables:
    async def test_composite_primary_key_in_index_order_with_types(self, conn):
        table = await oid(conn, "pk_order")
        assert await Catalog().tables(conn, [table]) == {
            table: TableInfo(table, ("b", "a"), (("pg_catalog", "text"), ("pg_catalog", "int4")), False)
        }

    async def test_a_domain_key_keeps_its_own_type(self, conn):
        table = await oid(conn, "by_domain")
        info = (await Catalog().tables(conn, [table]))[table]
        assert info.primary_key == ("id",)
        assert info.key_types == (("extra", "positive"),)

    async def test_rls_flag(self, conn):
        secured, plain = await oid(conn, "secured"), await oid(conn, "pk_order")
        tables = await Catalog().tables(conn, [secured, plain])
        assert tables[secured].rls is True
        assert tables[secured].key_types == (("pg_catalog", "uuid"),)
        assert tables[plain].rls is False

    async def test_rls_is_read_fresh_on_every_call(self, conn):
        catalog = Catalog()
        table = await oid(conn, "no_key")
        assert (await catalog.tables(conn, [table]))[table].rls is False
        await conn.execute("alter table no_key enable row level security")
        try:
            assert (await catalog.tables(conn, [table]))[table].rls is True
        finally:
            await conn.execute("alter table no_key disable row level security")

    async def test_a_table_without_primary_key_has_an_empty_key(self, conn):
        table = await oid(conn, "no_key")
        assert await Catalog().tables(conn, [table]) == {table: TableInfo(table, (), (), False)}

    async def test_unknown_oids_are_left_out(self, conn):
        table = await oid(conn, "pk_order")
        tables = await Catalog().tables(conn, [table, 4_000_000_000])
        assert list(tables) == [table]
        assert await Catalog().tables(conn, []) == {}


class TestSelectable:
    async def test_a_table_grant_covers_every_live_column(self, conn):
        assert await Catalog().selectable(conn, READER, await oid(conn, "wide")) == {"id", "a", "b"}

    async def test_column_grants_cover_only_those_columns(self, conn):
        assert await Catalog().selectable(conn, PARTIAL, await oid(conn, "wide")) == {"id", "b"}

    async def test_a_role_without_grants_may_select_nothing(self, conn):
        assert await Catalog().selectable(conn, NOBODY, await oid(conn, "wide")) == frozenset()

    @pytest.mark.parametrize("role", ["rt_no_such_role", ""])
    async def test_an_unknown_role_is_none(self, conn, role):
        assert await Catalog().selectable(conn, role, await oid(conn, "wide")) is None

    async def test_privileges_are_cached_for_the_ttl(self, conn, monkeypatch):
        clock = FakeClock()
        monkeypatch.setattr(catalog_module, "time", clock)
        catalog = Catalog()
        table = await oid(conn, "pk_order")
        assert await catalog.selectable(conn, NOBODY, table) == frozenset()
        await conn.execute(sql.SQL("grant select (a) on pk_order to {}").format(sql.Identifier(NOBODY)))
        try:
            clock.now += PRIVILEGE_TTL - 0.5
            assert await catalog.selectable(conn, NOBODY, table) == frozenset()  # still cached
            assert await Catalog().selectable(conn, NOBODY, table) == {"a"}  # another catalog reads afresh
            clock.now += 0.5
            assert await catalog.selectable(conn, NOBODY, table) == {"a"}
        finally:
            await conn.execute(sql.SQL("revoke select (a) on pk_order from {}").format(sql.Identifier(NOBODY)))

    async def test_the_cache_is_per_role_and_table(self, conn, monkeypatch):
        monkeypatch.setattr(catalog_module, "time", FakeClock())
        catalog = Catalog()
        wide = await oid(conn, "wide")
        assert await catalog.selectable(conn, READER, wide) == {"id", "a", "b"}
        assert await catalog.selectable(conn, PARTIAL, wide) == {"id", "b"}
        assert await catalog.selectable(conn, READER, await oid(conn, "pk_order")) == frozenset()

    async def test_forget_drops_the_cached_privileges_of_one_table(self, conn, monkeypatch):
        monkeypatch.setattr(catalog_module, "time", FakeClock())
        catalog = Catalog()
        wide, other = await oid(conn, "wide"), await oid(conn, "by_domain")
        assert await catalog.selectable(conn, NOBODY, wide) == frozenset()
        assert await catalog.selectable(conn, NOBODY, other) == frozenset()
        grant = "grant select on {} to {}"
        for table in ("wide", "by_domain"):
            await conn.execute(sql.SQL(grant).format(sql.Identifier(table), sql.Identifier(NOBODY)))
        try:
            catalog.forget(wide)
            assert await catalog.selectable(conn, NOBODY, wide) == {"id", "a", "b"}
            assert await catalog.selectable(conn, NOBODY, other) == frozenset()  # still cached
        finally:
            for table in ("wide", "by_domain"):
                await conn.execute(
                    sql.SQL("revoke select on {} from {}").format(sql.Identifier(table), sql.Identifier(NOBODY))
                )
