"""Tests for realtime_core.postgres_changes.cdc: the poll transport end to end, subscription rows, slot health.

tests/test_postgres_changes.py covers delivery in the default "stream" mode;
here a server runs with REALTIME_REPLICATION_MODE=poll (for poolers that
cannot stream) and the same wire behaviour is expected. The rows written to
realtime.subscription (docs/protocol.md §6.1–6.2) are read back directly, and slot health
is read both from /metrics and from PostgresChanges.read_slot_health()."""

from __future__ import annotations

import asyncio
import secrets
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt as pyjwt
import psycopg
import pytest
from conftest import JWT_SECRET, MS, ServerProcess, make_token, scratch_database, serving
from psycopg import sql
from test_postgres_changes import TIMESTAMP, new_table, next_change, no_change_before, run, subscribe
from wire import V2, RawClient

from realtime_core.hub import Hub
from realtime_core.metrics import parse_samples
from realtime_core.postgres_changes.cdc import PostgresChanges
from realtime_core.postgres_changes.pgoutput import parse_lsn
from realtime_core.postgres_changes.settings import CdcSettings

pytestmark = pytest.mark.pg

POLL_ENV = {"REALTIME_POSTGRES_CHANGES": "true", "REALTIME_REPLICATION_MODE": "poll"}


@pytest.fixture(scope="module")
def poll_server(pg_dsn: str) -> Iterator[ServerProcess]:
    """One poll-mode server for the module (as server_factory(POLL_ENV) would start it)."""
    with serving(pg_dsn, POLL_ENV) as server:
        yield server


@pytest.fixture(scope="module")
def db(poll_server: ServerProcess) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(poll_server.database_url, autocommit=True) as conn:
        yield conn


async def wait_for_rows(db: psycopg.Connection[Any], query: str, params: tuple[Any, ...], check: Any) -> list[Any]:
    """Re-run `query` every 20 MS until check(rows) holds; return the rows."""
    for _ in range(250):
        rows = db.execute(query, params).fetchall()
        if check(rows):
            return rows
        await asyncio.sleep(20 * MS)
    raise AssertionError(f"rows never matched: {rows!r}")


def subscription_rows(db: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "select subscription_id, entity::text, claims, claims_role::text, action_filter, selected_columns,"
        " array(select row((f).column_name, (f).op::text, (f).value, (f).negate)::text"
        "       from unnest(filters) f order by 1)"
        " from realtime.subscription where entity = %s::regclass",
        (table,),
    ).fetchall()


class TestPollMode:
    async def test_insert_update_delete_arrive_as_in_stream_mode(self, poll_server, db):
        table = new_table(db, "id int primary key, title text, done bool, meta jsonb")
        async with await RawClient.open(poll_server.socket_url(make_token(), V2)) as client:
            _, [sub_id] = await subscribe(client, "poll", [{"event": "*", "schema": "public", "table": table}])
            run(db, "insert into {t} values (1, 'a', false, '{{\"k\": [1]}}')", table)
            insert = await next_change(client)
            assert insert["ids"] == [sub_id]
            data = insert["data"]
            assert TIMESTAMP.match(data.pop("commit_timestamp"))
            assert data == {
                "schema": "public",
                "table": table,
                "type": "INSERT",
                "columns": [
                    {"name": "id", "type": "int4"},
                    {"name": "title", "type": "text"},
                    {"name": "done", "type": "bool"},
                    {"name": "meta", "type": "jsonb"},
                ],
                "record": {"id": 1, "title": "a", "done": False, "meta": {"k": [1]}},
                "errors": None,
            }
            run(db, "update {t} set title = 'b' where id = 1", table)
            update = (await next_change(client))["data"]
            assert update["type"] == "UPDATE"
            assert update["record"]["title"] == "b" and update["old_record"] == {"id": 1}
            run(db, "delete from {t} where id = 1", table)
            delete = (await next_change(client))["data"]
            assert delete["type"] == "DELETE" and delete["old_record"] == {"id": 1} and "record" not in delete

    async def test_commit_order_is_kept_across_many_transactions(self, poll_server, db):
        table = new_table(db, "id int primary key")
        async with await RawClient.open(poll_server.socket_url(make_token(), V2)) as client:
            await subscribe(client, "order", [{"event": "INSERT", "schema": "public", "table": table}])
            for i in range(31):  # row 30 is the marker: a repeat of any earlier one would come before it
                run(db, "insert into {t} values (%s)", table, i)
            got = [(await next_change(client))["data"]["record"]["id"] for _ in range(30)]
            assert got == list(range(30))
            await no_change_before(client, 30)

    async def test_filters_and_event_apply(self, poll_server, db):
        table = new_table(db, "id int primary key, v int")
        async with await RawClient.open(poll_server.socket_url(make_token(), V2)) as client:
            await subscribe(
                client, "filt", [{"event": "UPDATE", "schema": "public", "table": table, "filter": "v=gt.5"}]
            )
            run(db, "insert into {t} values (1, 1), (2, 2)", table)
            run(db, "update {t} set v = 3 where id = 1", table)
            run(db, "update {t} set v = 9 where id = 2", table)
            run(db, "insert into {t} values (3, 1)", table)
            run(db, "update {t} set v = 7 where id = 3", table)  # the marker
            data = (await next_change(client))["data"]
            assert (data["type"], data["record"]) == ("UPDATE", {"id": 2, "v": 9})
            await no_change_before(client, 3)


class TestSubscriptionRows:
    async def test_rows_carry_claims_entity_filters_and_action_filter(self, poll_server, db):
        table = new_table(db, "id int primary key, v text, w text")
        token = make_token("authenticated", sub="alice")
        claims = pyjwt.decode(token, JWT_SECRET, algorithms=["HS256"])
        async with await RawClient.open(poll_server.socket_url(token, V2)) as client:
            await subscribe(
                client,
                "rows",
                [
                    {
                        "event": "insert",
                        "schema": "public",
                        "table": table,
                        "filter": 'id=eq.1,v=not.in.(a,"b,c")',
                        "select": ["w"],
                    }
                ],
                token=token,
            )
            [(subscription_id, entity, row_claims, role, action, selected, filters)] = subscription_rows(db, table)
            assert isinstance(subscription_id, uuid.UUID) and subscription_id.version == 1
            assert entity == table
            assert row_claims == claims
            assert role == "authenticated"
            assert action == "INSERT"
            assert selected == ["w"]
            assert filters == ["(id,eq,1,f)", '(v,in,"{a,""b,c""}",t)']

    async def test_a_wildcard_writes_one_row_per_published_table_with_one_subscription_id(self, poll_server, db):
        schema = f"s_{secrets.token_hex(4)}"
        db.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        db.execute(sql.SQL("grant usage on schema {} to anon").format(sql.Identifier(schema)))
        names = [f"w_{i}" for i in range(2)]
        for name in names:
            ident = sql.Identifier(schema, name)
            db.execute(sql.SQL("create table {} (id int primary key)").format(ident))
            db.execute(sql.SQL("grant select on {} to anon").format(ident))
            db.execute(sql.SQL("alter publication supabase_realtime add table {}").format(ident))
        async with await RawClient.open(poll_server.socket_url(make_token(), V2)) as client:
            await subscribe(client, "wild", [{"event": "*", "schema": schema, "table": "*"}])
            rows = db.execute(
                "select subscription_id, entity::text, action_filter, filters::text from realtime.subscription"
                " where entity::text like %s order by 2",
                (schema + ".%",),
            ).fetchall()
            assert [r[1] for r in rows] == [f"{schema}.{name}" for name in names]
            assert len({r[0] for r in rows}) == 1
            assert {(r[2], r[3]) for r in rows} == {("*", "{}")}

    async def test_an_access_token_refresh_rewrites_the_claims_of_the_rows(self, poll_server, db):
        table = new_table(db, "id int primary key")
        alice = make_token("authenticated", sub="alice")
        bob = make_token("authenticated", sub="bob")
        async with await RawClient.open(poll_server.socket_url(alice, V2)) as client:
            reply, _ = await subscribe(
                client,
                "refresh",
                [
                    {"event": "INSERT", "schema": "public", "table": table},
                    {"event": "DELETE", "schema": "public", "table": table},
                ],
                token=alice,
            )
            [first_id, second_id] = sorted(r[0] for r in subscription_rows(db, table))
            await client.push("realtime:refresh", "access_token", {"access_token": bob}, join_ref=reply.join_ref)
            rows = await wait_for_rows(
                db,
                "select subscription_id, claims from realtime.subscription where entity = %s::regclass",
                (table,),
                lambda rows: len(rows) == 2 and all(r[1]["sub"] == "bob" for r in rows),
            )
            assert sorted(r[0] for r in rows) == [first_id, second_id]  # the same rows, rewritten
            assert all(r[1] == pyjwt.decode(bob, JWT_SECRET, algorithms=["HS256"]) for r in rows)

    async def test_leaving_deletes_the_rows(self, poll_server, db):
        table = new_table(db, "id int primary key")
        async with await RawClient.open(poll_server.socket_url(make_token(), V2)) as client:
            await subscribe(client, "gone", [{"event": "*", "schema": "public", "table": table}])
            assert len(subscription_rows(db, table)) == 1
        # Closing the socket (not phx_leave) is enough.
        await wait_for_rows(
            db, "select 1 from realtime.subscription where entity = %s::regclass", (table,), lambda rows: not rows
        )


def replication_values(text: str) -> dict[str, float]:
    """The realtime_replication_* samples of a /metrics text, by name (one tenant here)."""
    return {s.name: s.value for s in parse_samples(text) if s.name.startswith("realtime_replication_")}


class TestSlotHealth:
    async def test_metrics_show_the_poll_transport_and_the_slot(self, poll_server, db):
        table = new_table(db, "id int primary key")
        async with await RawClient.open(poll_server.socket_url(make_token(), V2)) as client:
            await subscribe(client, "health", [{"event": "INSERT", "schema": "public", "table": table}])
            run(db, "insert into {t} values (1)", table)
            await next_change(client)
        # The slot is read once it exists, not only after the 10 s health interval.
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                values = replication_values((await http.get(f"{poll_server.http_url}/metrics")).text)
                if "realtime_replication_slot_lag_bytes" in values:
                    break
                await asyncio.sleep(20 * MS)
        assert values["realtime_replication_connected"] == 1
        assert values["realtime_replication_slot_lag_alert"] == 0
        assert values["realtime_replication_slot_lag_bytes"] >= 0
        assert values["realtime_replication_slot_retained_wal_bytes"] >= 0


@pytest.fixture
async def cdc(pg_dsn: str) -> AsyncIterator[PostgresChanges]:
    """A PostgresChanges on a database of its own, pool open, stream not started."""
    slot = f"rt_cdc_health_{secrets.token_hex(4)}"
    tenant = types.SimpleNamespace(external_id="health")  # the dispatcher only keeps it
    with scratch_database(pg_dsn) as dsn:
        cdc = PostgresChanges(tenant, dsn, CdcSettings(slot_name=slot, mode="stream"), lambda: 0.0, Hub())  # type: ignore[arg-type]
        await cdc.pool.open(wait=True, timeout=30)
        yield cdc
        await cdc.stream.stop()
        await cdc.pool.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(100):
                row = conn.execute("select active from pg_replication_slots where slot_name = %s", (slot,)).fetchone()
                if row is None or not row[0]:
                    break
                await asyncio.sleep(20 * MS)
            conn.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s", (slot,)
            )


async def test_read_slot_health_reports_a_missing_slot(cdc):
    assert await cdc.read_slot_health() == {"slot": cdc.settings.slot, "exists": False}


async def test_read_slot_health_reports_the_streaming_slot(cdc):
    cdc.stream.start()
    await asyncio.wait_for(cdc.stream.ready.wait(), 5000 * MS)
    for _ in range(250):
        health = await cdc.read_slot_health()
        if health["active"] and health["streaming"]:
            break
        await asyncio.sleep(20 * MS)
    assert set(health) == {
        "slot",
        "exists",
        "active",
        "wal_status",
        "safe_wal_size",
        "lag_bytes",
        "retained_wal_bytes",
        "confirmed_flush_lsn",
        "restart_lsn",
        "streaming",
        "mode",
        "last_error",
    }
    assert health["slot"] == cdc.settings.slot and health["exists"] is True
    assert health["active"] is True and health["streaming"] is True
    assert health["mode"] == "stream" and health["last_error"] is None
    assert health["wal_status"] in ("reserved", "extended")
    assert isinstance(health["lag_bytes"], int) and health["lag_bytes"] >= 0
    assert health["retained_wal_bytes"] >= health["lag_bytes"]
    assert parse_lsn(health["restart_lsn"]) <= parse_lsn(health["confirmed_flush_lsn"])


async def test_read_slot_health_shows_the_lag_shrinking_once_idle(cdc):
    cdc.stream.start()
    await asyncio.wait_for(cdc.stream.ready.wait(), 5000 * MS)
    async with cdc.pool.connection() as conn:
        await conn.execute("create table busy (id int primary key, v text)")
        await conn.execute("insert into busy select g, repeat('x', 100) from generate_series(1, 2000) g")
    # Nothing is published, so keepalives alone let the slot catch up.
    for _ in range(250):
        health = await cdc.read_slot_health()
        if health["lag_bytes"] is not None and health["lag_bytes"] < 1024:
            break
        await asyncio.sleep(20 * MS)
    assert health["lag_bytes"] < 1024, health
