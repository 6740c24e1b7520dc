"""Postgres Changes end to end: a real database, `realtime-core serve`, raw Phoenix clients.

Each test makes its own tables (unique names) in the module's database, adds
them to the `supabase_realtime` publication, subscribes over the wire
(docs/protocol.md §6.2) and checks the delivered frames (docs/protocol.md §6.5–6.7)."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

import psycopg
import pytest
from conftest import CDC_ENV, MS, make_token, start_server
from psycopg import sql
from wire import V1, V2, Frame, RawClient

pytestmark = pytest.mark.pg

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def new_table(db: psycopg.Connection[Any], columns: str, *, publish: bool = True, identity_full: bool = False) -> str:
    name = f"t_{secrets.token_hex(4)}"
    db.execute(sql.SQL("create table {} (" + columns + ")").format(sql.Identifier(name)))
    db.execute(sql.SQL("grant select on {} to anon, authenticated").format(sql.Identifier(name)))
    if identity_full:
        db.execute(sql.SQL("alter table {} replica identity full").format(sql.Identifier(name)))
    if publish:
        db.execute(sql.SQL("alter publication supabase_realtime add table {}").format(sql.Identifier(name)))
    return name


def run(db: psycopg.Connection[Any], query: str, table: str, *params: Any) -> None:
    db.execute(sql.SQL(query).format(t=sql.Identifier(table)), params or None)


def is_system(frame: Any) -> bool:
    return isinstance(frame, Frame) and frame.event == "system" and frame.payload.get("extension") == "postgres_changes"


async def subscribe(
    client: RawClient, topic: str, changes: list[dict[str, Any]], *, token: str | None = None, **config: Any
) -> tuple[Frame, list[int]]:
    """Join with postgres_changes and wait for `Subscribed to PostgreSQL`; return the reply and the ids."""
    payload = {"access_token": token} if token else {}
    reply = await client.join(f"realtime:{topic}", {"postgres_changes": changes, **config}, **payload)
    system = await client.expect(is_system, 10_000 * MS)
    assert system.payload == {
        "extension": "postgres_changes",
        "status": "ok",
        "message": "Subscribed to PostgreSQL",
        "channel": topic,
    }, system.payload
    assert system.ref is None
    if client.vsn == V2:
        assert system.join_ref == reply.join_ref
    return reply, [entry["id"] for entry in reply.response["postgres_changes"]]


async def next_change(client: RawClient, timeout: float = 5000 * MS) -> dict[str, Any]:
    frame = await client.expect(lambda f: isinstance(f, Frame) and f.event == "postgres_changes", timeout)
    assert frame.ref is None and frame.join_ref is None
    return frame.payload


def is_change(frame: Any) -> bool:
    return isinstance(frame, Frame) and frame.event == "postgres_changes"


async def no_change_before(client: RawClient, marker_id: int, timeout: float = 5000 * MS) -> None:
    """Assert that the next change is the insert of row `marker_id`, committed after the action
    under test: changes reach a channel in commit order, so a wrong one would come first."""
    await client.expect_nothing_before(
        lambda f: is_change(f) and (f.payload["data"].get("record") or {}).get("id") == marker_id, is_change, timeout
    )


@pytest.mark.parametrize("vsn", [V2, V1])
async def test_insert_update_delete_arrive_with_the_upstream_data_object(cdc, db, vsn):
    table = new_table(db, "id int primary key, title text, done bool, score numeric, meta jsonb")
    async with await RawClient.open(cdc.socket_url(make_token(), vsn), vsn) as client:
        reply, [sub_id] = await subscribe(client, "todos", [{"event": "*", "schema": "public", "table": table}])
        assert reply.response == {
            "postgres_changes": [{"event": "*", "schema": "public", "table": table, "id": sub_id}]
        }
        assert isinstance(sub_id, int)
        run(db, "insert into {t} values (1, 'a', false, 1.50, '{{\"k\": [1, 2]}}')", table)
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
                {"name": "score", "type": "numeric"},
                {"name": "meta", "type": "jsonb"},
            ],
            "record": {"id": 1, "title": "a", "done": False, "score": 1.50, "meta": {"k": [1, 2]}},
            "errors": None,
        }
        run(db, "update {t} set title = 'b' where id = 1", table)
        update = (await next_change(client))["data"]
        assert update["type"] == "UPDATE"
        assert update["record"]["title"] == "b"
        assert update["old_record"] == {"id": 1}  # default replica identity: the key only
        run(db, "delete from {t} where id = 1", table)
        delete = (await next_change(client))["data"]
        assert delete["type"] == "DELETE"
        assert delete["old_record"] == {"id": 1}
        assert "record" not in delete


async def test_a_change_committed_right_after_the_system_message_is_delivered(cdc, db):
    table = new_table(db, "id int primary key")
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "live", [{"event": "INSERT", "schema": "public", "table": table}])
        run(db, "insert into {t} values (7)", table)
        assert (await next_change(client))["data"]["record"] == {"id": 7}


async def test_event_filter_delivers_only_that_event(cdc, db):
    table = new_table(db, "id int primary key, v int")
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "ev", [{"event": "UPDATE", "schema": "public", "table": table}])
        run(db, "insert into {t} values (1, 1)", table)
        run(db, "update {t} set v = 2 where id = 1", table)
        change = await next_change(client)
        assert change["data"]["type"] == "UPDATE"
        run(db, "delete from {t}", table)
        run(db, "insert into {t} values (2, 1)", table)
        run(db, "update {t} set v = 2 where id = 2", table)  # the marker: an UPDATE
        await no_change_before(client, 2)


async def test_changes_keep_commit_order_across_tables(cdc, db):
    first = new_table(db, "id int primary key")
    second = new_table(db, "id int primary key")
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(
            client,
            "order",
            [{"event": "*", "schema": "public", "table": first}, {"event": "*", "schema": "public", "table": second}],
        )
        for i in range(10):
            run(db, "insert into {t} values (%s)", first if i % 2 == 0 else second, i)
        seen = [(await next_change(client))["data"] for _ in range(10)]
        assert [d["record"]["id"] for d in seen] == list(range(10))
        assert [d["table"] for d in seen] == [first if i % 2 == 0 else second for i in range(10)]


FILTER_CASES = [
    # (column type, filter, matching value, other value)
    ("int", "c=eq.5", "5", "6"),
    ("int", "c=neq.5", "6", "5"),
    ("int", "c=lt.10", "9", "10"),
    ("int", "c=lte.10", "10", "11"),
    ("int", "c=gt.10", "11", "10"),
    ("int", "c=gte.10", "10", "9"),
    ("int", "c=in.(1,2,3)", "2", "4"),
    ("int", "c=not.eq.5", "6", "5"),
    ("text", "c=eq.hello world", "hello world", "hello"),
    ("text", "c=like.ab%", "abc", "cab"),
    ("text", "c=ilike.AB%", "abc", "cab"),
    ("text", "c=match.^a.c$", "abc", "abcd"),
    ("text", "c=imatch.^A.C$", "abc", "abcd"),
    ("text", 'c=in.("a,b",c)', "a,b", "a"),
    ("bool", "c=is.true", "true", "false"),
    ("bool", "c=eq.false", "false", "true"),
    ("text", "c=is.null", None, "x"),
    ("text", "c=not.is.null", "x", None),
    ("text", "c=isdistinct.x", None, "x"),
    ("timestamptz", "c=gt.2026-01-01T08:00:00Z", "2026-01-01 10:00:01+02", "2026-01-01 10:00:00+02"),
    (
        "uuid",
        "c=eq.6F9619FF-8B86-D011-B42D-00CF4FC964FF",
        "6f9619ff-8b86-d011-b42d-00cf4fc964ff",
        "6f9619ff-8b86-d011-b42d-00cf4fc964f0",
    ),
    ("numeric", "c=eq.1.5", "1.50", "1.51"),
    ("numeric", "c=gt.9", "10", "9.0"),  # numeric, not text: '10' < '9' as strings
    ("jsonb", 'c=eq.{"a":1}', '{"a": 1}', '{"a": 2}'),
    ("int[]", 'c=eq."{1,2}"', "{1,2}", "{2,1}"),
    ("mood", "c=gt.ok", "happy", "sad"),  # enum order sad < ok < happy, not alphabetical
]


@pytest.mark.parametrize(("column_type", "filter", "matching", "other"), FILTER_CASES)
async def test_filters_use_postgres_semantics_of_the_column_type(cdc, db, column_type, filter, matching, other):
    db.execute(
        "do $$ begin create type mood as enum ('sad', 'ok', 'happy'); exception when duplicate_object then null; end $$"
    )
    table = new_table(db, f"id int primary key, c {column_type}")
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        _, [sub_id] = await subscribe(
            client, "filters", [{"event": "INSERT", "schema": "public", "table": table, "filter": filter}]
        )
        run(db, "insert into {t} values (1, %s)", table, other)
        run(db, "insert into {t} values (2, %s)", table, matching)
        run(db, "insert into {t} values (3, %s)", table, matching)  # the marker
        change = await next_change(client)
        assert change["ids"] == [sub_id]
        assert change["data"]["record"]["id"] == 2, change
        await no_change_before(client, 3)


async def test_each_subscription_of_a_channel_is_matched_separately(cdc, db):
    table = new_table(db, "id int primary key, v int")
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        _, [small, big, every] = await subscribe(
            client,
            "multi",
            [
                {"event": "INSERT", "schema": "public", "table": table, "filter": "v=lt.10"},
                {"event": "INSERT", "schema": "public", "table": table, "filter": "v=gte.10"},
                {"event": "*", "schema": "public", "table": table},
            ],
        )
        run(db, "insert into {t} values (1, 5)", table)
        assert sorted((await next_change(client))["ids"]) == sorted([small, every])
        run(db, "insert into {t} values (2, 50)", table)
        assert sorted((await next_change(client))["ids"]) == sorted([big, every])


async def test_select_limits_columns_to_the_list_plus_the_primary_key(cdc, db):
    table = new_table(db, "id int primary key, a text, b text, c text")
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "sel", [{"event": "*", "schema": "public", "table": table, "select": ["a"]}])
        run(db, "insert into {t} values (1, 'x', 'y', 'z')", table)
        data = (await next_change(client))["data"]
        assert data["record"] == {"id": 1, "a": "x"}
        assert data["columns"] == [{"name": "id", "type": "int4"}, {"name": "a", "type": "text"}]


async def test_wildcard_table_covers_every_published_table_of_the_schema(cdc, db):
    db.execute("create schema if not exists wild")
    db.execute("grant usage on schema wild to anon")
    names = []
    for _ in range(2):
        name = f"w_{secrets.token_hex(4)}"
        db.execute(sql.SQL("create table wild.{} (id int primary key)").format(sql.Identifier(name)))
        db.execute(sql.SQL("grant select on wild.{} to anon").format(sql.Identifier(name)))
        db.execute(sql.SQL("alter publication supabase_realtime add table wild.{}").format(sql.Identifier(name)))
        names.append(name)
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "wild", [{"event": "INSERT", "schema": "wild", "table": "*"}])
        for i, name in enumerate(names):
            db.execute(sql.SQL("insert into wild.{} values (%s)").format(sql.Identifier(name)), (i,))
        tables = {(await next_change(client))["data"]["table"] for _ in names}
        assert tables == set(names)


async def test_replica_identity_full_sends_the_whole_old_row(cdc, db):
    table = new_table(db, "id int primary key, v text, w text", identity_full=True)
    run(db, "insert into {t} values (1, 'old', 'keep')", table)
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "full", [{"event": "*", "schema": "public", "table": table}])
        run(db, "update {t} set v = 'new' where id = 1", table)
        data = (await next_change(client))["data"]
        assert data["old_record"] == {"id": 1, "v": "old", "w": "keep"}
        assert data["record"] == {"id": 1, "v": "new", "w": "keep"}
        run(db, "delete from {t} where id = 1", table)
        assert (await next_change(client))["data"]["old_record"] == {"id": 1, "v": "new", "w": "keep"}


async def test_delete_filters_apply_to_the_old_identity_columns(cdc, db):
    table = new_table(db, "id int primary key, v text", identity_full=True)
    run(db, "insert into {t} values (1, 'a'), (2, 'b')", table)
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "del", [{"event": "DELETE", "schema": "public", "table": table, "filter": "v=eq.b"}])
        run(db, "delete from {t} where id = 1", table)
        run(db, "delete from {t} where id = 2", table)
        assert (await next_change(client))["data"]["old_record"] == {"id": 2, "v": "b"}


@pytest.mark.parametrize("identity_full", [False, True])
async def test_unchanged_toast_values_are_filled_in(cdc, db, identity_full):
    table = new_table(db, "id int primary key, big text, n int", identity_full=identity_full)
    db.execute(sql.SQL("alter table {} alter column big set storage external").format(sql.Identifier(table)))
    big = secrets.token_hex(20_000)  # 40 kB, stored out of line
    run(db, "insert into {t} values (1, %s, 0)", table, big)
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "toast", [{"event": "UPDATE", "schema": "public", "table": table}])
        run(db, "update {t} set n = 1 where id = 1", table)
        data = (await next_change(client))["data"]
        assert data["record"] == {"id": 1, "big": big, "n": 1}


async def test_oversize_records_keep_only_small_fields(server_factory):
    server = server_factory({**CDC_ENV, "REALTIME_MAX_RECORD_BYTES": "2000"})
    with psycopg.connect(server.database_url, autocommit=True) as db:
        table = new_table(db, "id int primary key, big text, small text")
        async with await RawClient.open(server.socket_url(make_token(), V2)) as client:
            await subscribe(client, "big", [{"event": "INSERT", "schema": "public", "table": table}])
            run(db, "insert into {t} values (1, %s, 'tiny')", table, "x" * 5000)
            data = (await next_change(client))["data"]
            assert data["errors"] == ["Error 413: Payload Too Large"]
            assert data["record"] == {"id": 1, "small": "tiny"}


def rls_table(db: psycopg.Connection[Any], extra_policy: str | None = None) -> str:
    table = new_table(db, "id int primary key, owner text, body text")
    db.execute(sql.SQL("alter table {} enable row level security").format(sql.Identifier(table)))
    db.execute(
        sql.SQL(
            "create policy own on {} for select to authenticated "
            "using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')"
        ).format(sql.Identifier(table))
    )
    if extra_policy:
        db.execute(sql.SQL(extra_policy).format(t=sql.Identifier(table)))
    return table


async def test_rls_delivers_each_subscriber_only_the_rows_its_policy_shows(cdc, db):
    table = rls_table(db)
    alice = make_token("authenticated", sub="alice")
    bob = make_token("authenticated", sub="bob")
    async with (
        await RawClient.open(cdc.socket_url(alice, V2)) as a,
        await RawClient.open(cdc.socket_url(bob, V2)) as b,
    ):
        spec = [{"event": "*", "schema": "public", "table": table}]
        await subscribe(a, "rls", spec, token=alice)
        await subscribe(b, "rls", spec, token=bob)
        run(db, "insert into {t} values (1, 'alice', 'a1'), (2, 'bob', 'b1')", table)
        run(db, "insert into {t} values (3, 'alice', 'marker'), (4, 'bob', 'marker')", table)
        assert (await next_change(a))["data"]["record"]["owner"] == "alice"
        assert (await next_change(b))["data"]["record"]["owner"] == "bob"
        await no_change_before(a, 3)
        await no_change_before(b, 4)
        # DELETE skips RLS and, with RLS on, carries only the primary key (docs/protocol.md §6.4, §6.5).
        run(db, "delete from {t} where id = 1", table)
        for client in (a, b):
            data = (await next_change(client))["data"]
            assert data["type"] == "DELETE" and data["old_record"] == {"id": 1}


async def test_a_raising_policy_costs_only_its_own_group_the_change(cdc, db):
    table = rls_table(
        db,
        "create policy boom on {t} for select to authenticated using ("
        " case when current_setting('request.jwt.claims', true)::jsonb ->> 'sub' = 'mallory' and body <> 'marker'"
        # row-dependent, so the planner cannot fold the division away for everyone
        " then (id / (id - id)) = 1 else false end)",
    )
    alice = make_token("authenticated", sub="alice")
    mallory = make_token("authenticated", sub="mallory")
    async with (
        await RawClient.open(cdc.socket_url(alice, V2)) as a,
        await RawClient.open(cdc.socket_url(mallory, V2)) as m,
    ):
        spec = [{"event": "INSERT", "schema": "public", "table": table}]
        await subscribe(a, "boom", spec, token=alice)
        await subscribe(m, "boom", spec, token=mallory)
        for i in range(3):
            run(db, "insert into {t} values (%s, 'alice', 'x')", table, i)
        got = [(await next_change(a))["data"]["record"]["id"] for _ in range(3)]
        assert got == [0, 1, 2]
        # The marker is committed once alice got the rows, so that it is not in their batch: the
        # group's visibility query covers a batch's keys, and raises for all of them at once.
        run(db, "insert into {t} values (3, 'mallory', 'marker')", table)  # mallory sees it, no policy raises
        await no_change_before(m, 3)


async def test_access_token_refresh_changes_whose_rows_are_visible(cdc, db):
    table = rls_table(db)
    alice = make_token("authenticated", sub="alice")
    async with await RawClient.open(cdc.socket_url(alice, V2)) as client:
        reply, _ = await subscribe(
            client, "swap", [{"event": "INSERT", "schema": "public", "table": table}], token=alice
        )
        await client.push(
            "realtime:swap",
            "access_token",
            {"access_token": make_token("authenticated", sub="bob")},
            join_ref=reply.join_ref,
        )
        # The socket handles frames in order and the refresh replaces the claims at once: once the
        # heartbeat is answered, changes are checked with bob's.
        await client.nothing_pending()
        run(db, "insert into {t} values (1, 'alice', 'x'), (2, 'bob', 'y')", table)
        run(db, "insert into {t} values (3, 'bob', 'marker')", table)
        assert (await next_change(client))["data"]["record"]["owner"] == "bob"
        await no_change_before(client, 3)


async def test_table_without_primary_key_gets_error_400(cdc, db):
    table = new_table(db, "v int")
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "nopk", [{"event": "INSERT", "schema": "public", "table": table}])
        run(db, "insert into {t} values (1)", table)
        data = (await next_change(client))["data"]
        assert data["errors"] == ["Error 400: Bad Request, no primary key"]
        assert data["record"] == {} and data["columns"] == [] and data["commit_timestamp"] is None


async def test_role_without_select_on_the_key_gets_error_401(cdc, db):
    table = new_table(db, "id int primary key, v int")
    db.execute(sql.SQL("revoke select on {} from anon").format(sql.Identifier(table)))
    db.execute(sql.SQL("grant select (v) on {} to anon").format(sql.Identifier(table)))
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await subscribe(client, "nokey", [{"event": "INSERT", "schema": "public", "table": table}])
        run(db, "insert into {t} values (1, 2)", table)
        assert (await next_change(client))["data"]["errors"] == ["Error 401: Unauthorized"]


async def system_error(client: RawClient) -> str:
    frame = await client.expect(is_system, 10_000 * MS)
    assert frame.payload["status"] == "error", frame.payload
    return frame.payload["message"]


async def test_table_outside_the_publication_is_reported(cdc, db):
    table = new_table(db, "id int primary key", publish=False)
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await client.join("realtime:nopub", {"postgres_changes": [{"event": "*", "schema": "public", "table": table}]})
        message = await system_error(client)
        assert message == (
            "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given "
            f"connect parameters: [event: *, schema: public, table: {table}, filters: [], select: nil]"
        )


async def test_invalid_filter_column_is_reported(cdc, db):
    table = new_table(db, "id int primary key")
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await client.join(
            "realtime:badcol",
            {"postgres_changes": [{"event": "*", "schema": "public", "table": table, "filter": "nope=eq.1"}]},
        )
        message = await system_error(client)
        assert message.startswith("Unable to subscribe to changes with given parameters. An exception happened")
        assert message.endswith("Exception: invalid column for filter nope")


async def test_missing_params_are_reported(cdc):
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        await client.join("realtime:noparams", {"postgres_changes": [{"event": "*"}]})
        message = await system_error(client)
        assert message.startswith("No subscription params provided. Please provide at least a `schema` or `table`")


async def test_legacy_topic_subscribes_and_delivers_the_data_object_itself(cdc, db):
    table = new_table(db, "id int primary key")
    async with await RawClient.open(cdc.socket_url(make_token(), V1), V1) as client:
        await client.push(f"realtime:public:{table}", "phx_join", {}, ref="1")
        await client.reply_to("1", f"realtime:public:{table}")
        await client.expect(is_system, 10_000 * MS)
        run(db, "insert into {t} values (3)", table)
        frame = await client.expect(lambda f: isinstance(f, Frame) and f.event == "INSERT")
        assert frame.payload["record"] == {"id": 3} and "ids" not in frame.payload


async def test_leaving_removes_the_subscription_rows(cdc, db):
    table = new_table(db, "id int primary key")
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        reply, _ = await subscribe(client, "rows", [{"event": "*", "schema": "public", "table": table}])
        count = db.execute("select count(*) from realtime.subscription where entity = %s::regclass", (table,))
        assert count.fetchone()[0] == 1
        await client.push("realtime:rows", "phx_leave", {}, join_ref=reply.join_ref)
        for _ in range(100):
            row = db.execute("select count(*) from realtime.subscription where entity = %s::regclass", (table,))
            if row.fetchone()[0] == 0:
                break
            await asyncio.sleep(20 * MS)
        else:
            raise AssertionError("subscription rows were not deleted")


@pytest.mark.slow
async def test_a_server_restart_loses_nothing_committed_after_the_rejoin(pg_dsn, fresh_database):
    url = fresh_database
    server = start_server(url, CDC_ENV)
    with psycopg.connect(url, autocommit=True) as db:
        table = new_table(db, "id int primary key")
        spec = [{"event": "INSERT", "schema": "public", "table": table}]
        async with await RawClient.open(server.socket_url(make_token(), V2)) as client:
            await subscribe(client, "restart", spec)
            run(db, "insert into {t} select generate_series(1, 50)", table)
            assert [(await next_change(client))["data"]["record"]["id"] for _ in range(50)] == list(range(1, 51))
        server.stop()
        run(db, "insert into {t} select generate_series(51, 100)", table)  # while the server is down
        server = start_server(url, CDC_ENV)
        try:
            async with await RawClient.open(server.socket_url(make_token(), V2)) as client:
                await subscribe(client, "restart", spec)
                run(db, "insert into {t} select generate_series(101, 300)", table)
                run(db, "insert into {t} values (301)", table)  # a repeat of any row would come before this
                got = [(await next_change(client))["data"]["record"]["id"] for _ in range(200)]
                assert got == list(range(101, 301))
                await no_change_before(client, 301)
        finally:
            server.stop()
            server.drop_slots()


@pytest.mark.slow
async def test_postgres_restarting_under_the_stream_loses_nothing(tmp_path):
    from realtime_core.embedded_pg import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp_path / "pg")
    dsn = pg.start()
    server = start_server(dsn, CDC_ENV)
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            table = new_table(db, "id int primary key")
        async with await RawClient.open(server.socket_url(make_token(), V2)) as client:
            await subscribe(client, "pgrestart", [{"event": "INSERT", "schema": "public", "table": table}])
            with psycopg.connect(dsn, autocommit=True) as db:
                run(db, "insert into {t} values (1)", table)
            assert (await next_change(client))["data"]["record"] == {"id": 1}
            port = pg.port
            pg.stop()
            pg = EmbeddedPostgres(tmp_path / "pg", port=port)
            pg.start()
            with psycopg.connect(dsn, autocommit=True) as db:
                run(db, "insert into {t} select generate_series(2, 21)", table)
            got = [(await next_change(client, 15_000 * MS))["data"]["record"]["id"] for _ in range(20)]
            assert got == list(range(2, 22))
    finally:
        server.stop()
        pg.stop()
