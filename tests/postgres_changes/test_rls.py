"""Tests for realtime_core.postgres_changes.rls: which primary keys a role with its claims may select
(docs/protocol.md §6.4).

visible_keys runs against a database of this module's own. Its roles are
cluster-wide, so they get unique names and are dropped at the end."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from conftest import scratch_database
from psycopg import sql

from realtime_core.postgres_changes.catalog import TableInfo
from realtime_core.postgres_changes.replication import SESSION_OPTIONS
from realtime_core.postgres_changes.rls import visible_keys

pytestmark = pytest.mark.pg

ROLE = f"rt_rls_{secrets.token_hex(4)}"
OWNER = "current_setting('request.jwt.claims', true)::jsonb ->> 'sub'"

SCHEMA = f"""
create table items (id int primary key, owner text);
create table pairs (org int, name text, owner text, primary key (name, org));
create table words (key text primary key, owner text);
create table flags (flag bool primary key, owner text);
create table things (id uuid primary key, owner text);
create table boom (id int primary key, owner text);
create table plain (id int primary key);
create table legacy (id int primary key, owner text);
insert into items values (1, 'alice'), (2, 'bob'), (3, 'alice'), (4, null);
insert into pairs values (1, 'a', 'alice'), (1, 'b', 'bob'), (2, 'a', 'alice');
insert into words values ('it''s "quoted"', 'alice'), ('a,b', 'alice'), ('{{x}}', 'alice'), ('plain', 'bob');
insert into flags values (true, 'alice'), (false, 'bob');
insert into things values ('6f9619ff-8b86-d011-b42d-00cf4fc964ff', 'alice'),
                          ('00000000-0000-0000-0000-000000000001', 'bob');
insert into boom values (1, 'alice'), (2, 'mallory');
insert into plain values (1), (2);
insert into legacy values (1, 'alice'), (2, 'bob');
create role {ROLE} nologin;
grant select on all tables in schema public to {ROLE};
"""


@pytest.fixture(scope="module")
def db_dsn(pg_dsn: str) -> Iterator[str]:
    with scratch_database(pg_dsn, "rt_rls") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
            for table in ("items", "pairs", "words", "flags", "things"):
                conn.execute(sql.SQL("alter table {} enable row level security").format(sql.Identifier(table)))
                conn.execute(
                    sql.SQL("create policy own on {} for select using (owner = " + OWNER + ")").format(
                        sql.Identifier(table)
                    )
                )
            conn.execute("alter table boom enable row level security")
            conn.execute(
                "create policy boom on boom for select using ("
                f" case when {OWNER} = 'mallory' then id / (id - id) = 1 else owner = {OWNER} end)"
            )
            conn.execute("alter table legacy enable row level security")
            conn.execute(
                "create policy legacy on legacy for select using ("
                " owner = current_setting('request.jwt.claim.sub', true)"
                f" and current_setting('request.jwt.claim.role', true) = '{ROLE}')"
            )
        yield dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(ROLE)))


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    # As the dispatcher's pool opens them.
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True, options=SESSION_OPTIONS) as c:
        yield c


async def visible(conn, table: str, key: list[tuple[str, str, str]], sub: str, keys: list[tuple[str, ...]]):
    """visible_keys for `table` whose key is [(column, type schema, type name), ...]."""
    return await visible_keys(
        conn,
        schema="public",
        table=table,
        info=TableInfo(0, tuple(c for c, _, _ in key), tuple((s, t) for _, s, t in key), True),
        role=ROLE,
        claims={"role": ROLE, "sub": sub},
        keys=keys,
    )


INT4 = [("id", "pg_catalog", "int4")]


class TestVisibleKeys:
    async def test_only_the_subscribers_own_rows_are_visible(self, conn):
        keys = [("1",), ("2",), ("3",), ("4",)]
        assert await visible(conn, "items", INT4, "alice", keys) == {("1",), ("3",)}
        assert await visible(conn, "items", INT4, "bob", keys) == {("2",)}
        assert await visible(conn, "items", INT4, "carol", keys) == set()

    async def test_keys_not_in_the_table_are_left_out(self, conn):
        assert await visible(conn, "items", INT4, "alice", [("1",), ("99",)]) == {("1",)}

    async def test_no_keys_asked_none_returned(self, conn):
        assert await visible(conn, "items", INT4, "alice", []) == set()

    async def test_a_table_without_rls_shows_every_row_the_role_may_select(self, conn):
        assert await visible(conn, "plain", INT4, "nobody", [("1",), ("2",), ("3",)]) == {("1",), ("2",)}

    async def test_composite_primary_key_in_key_order(self, conn):
        key = [("name", "pg_catalog", "text"), ("org", "pg_catalog", "int4")]
        keys = [("a", "1"), ("b", "1"), ("a", "2"), ("b", "2")]
        assert await visible(conn, "pairs", key, "alice", keys) == {("a", "1"), ("a", "2")}
        assert await visible(conn, "pairs", key, "bob", keys) == {("b", "1")}

    async def test_text_keys_travel_as_they_are(self, conn):
        key = [("key", "pg_catalog", "text")]
        keys = [('it\'s "quoted"',), ("a,b",), ("{x}",), ("plain",), ("missing",)]
        assert await visible(conn, "words", key, "alice", keys) == {('it\'s "quoted"',), ("a,b",), ("{x}",)}

    async def test_bool_keys_come_back_as_postgres_prints_them(self, conn):
        # The WAL carries a bool as 't' / 'f' (the type's output function), not 'true'.
        key = [("flag", "pg_catalog", "bool")]
        assert await visible(conn, "flags", key, "alice", [("t",), ("f",)]) == {("t",)}
        assert await visible(conn, "flags", key, "bob", [("t",), ("f",)]) == {("f",)}

    async def test_uuid_keys_come_back_as_postgres_prints_them(self, conn):
        key = [("id", "pg_catalog", "uuid")]
        assert await visible(conn, "things", key, "alice", [("6f9619ff-8b86-d011-b42d-00cf4fc964ff",)]) == {
            ("6f9619ff-8b86-d011-b42d-00cf4fc964ff",)
        }
        # The lookup casts, so any spelling finds the row; the answer is the canonical text.
        assert await visible(conn, "things", key, "alice", [("6F9619FF8B86D011B42D00CF4FC964FF",)]) == {
            ("6f9619ff-8b86-d011-b42d-00cf4fc964ff",)
        }

    async def test_policies_may_read_the_per_claim_settings_too(self, conn):
        # Older policies read request.jwt.claim.sub / .role instead of the claims JSON.
        assert await visible(conn, "legacy", INT4, "alice", [("1",), ("2",)]) == {("1",)}
        assert await visible(conn, "legacy", INT4, "bob", [("1",), ("2",)]) == {("2",)}


class TestIsolation:
    async def test_a_raising_policy_raises_and_leaves_the_connection_usable(self, conn):
        with pytest.raises(psycopg.errors.DivisionByZero):
            await visible(conn, "boom", INT4, "mallory", [("1",), ("2",)])
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        cur = await conn.execute("select 1")
        assert await cur.fetchone() == (1,)
        assert await visible(conn, "boom", INT4, "alice", [("1",), ("2",)]) == {("1",)}

    async def test_role_and_claims_are_transaction_local(self, conn):
        cur = await conn.execute("select current_user::text")
        [(user,)] = await cur.fetchall()
        await visible(conn, "items", INT4, "alice", [("1",)])
        cur = await conn.execute(
            "select current_user::text, coalesce(current_setting('request.jwt.claims', true), ''),"
            " coalesce(current_setting('request.jwt.claim.sub', true), '')"
        )
        assert await cur.fetchone() == (user, "", "")
        assert user != ROLE

    async def test_role_is_reset_after_a_failure_too(self, conn):
        cur = await conn.execute("select current_user::text")
        [(user,)] = await cur.fetchall()
        with pytest.raises(psycopg.errors.DivisionByZero):
            await visible(conn, "boom", INT4, "mallory", [("2",)])
        cur = await conn.execute("select current_user::text, coalesce(current_setting('request.jwt.claims', true), '')")
        assert await cur.fetchone() == (user, "")

    async def test_a_role_name_is_quoted_as_an_identifier(self, conn):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match='role "no such; role" does not exist'):
            await visible_keys(
                conn,
                schema="public",
                table="items",
                info=TableInfo(0, ("id",), (("pg_catalog", "int4"),), True),
                role="no such; role",
                claims={},
                keys=[("1",)],
            )
