"""realtime.messages in a real database: migration 0003 and realtime_core.messages.

One fresh database per module with every migration applied (db.migrate) and
the current partitions made (ensure_partitions). Tests that need other
partitions use dates far from today, so they do not touch the current ones."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
from conftest import MS, scratch_database
from psycopg import sql

from realtime_core import db, messages
from realtime_core.postgres_changes import pgoutput

pytestmark = pytest.mark.pg

PUBLICATION = "supabase_realtime_messages_publication"
MIGRATION = (resources.files("realtime_core") / "sql" / "0003_messages.sql").read_text()


async def _connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


@pytest.fixture(scope="module")
async def dsn(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh database with every migration applied and today's partitions."""
    with scratch_database(pg_dsn) as url:
        async with await _connect(url) as conn:
            await db.migrate(conn)
            await messages.ensure_partitions(conn)
        yield url


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection (as the migrating superuser) that records its warnings."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.warnings = []  # type: ignore[attr-defined]
        c.add_notice_handler(lambda d: _record_warning(c.warnings, d))  # type: ignore[attr-defined]
        yield c


@pytest.fixture
async def aconn(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await _connect(dsn) as c:
        yield c


def _record_warning(out: list[str], diag: psycopg.errors.Diagnostic) -> None:
    # A Diagnostic is readable only inside the handler: copy what we need.
    if diag.severity_nonlocalized == "WARNING":
        out.append(diag.message_primary or "")


def warnings_of(c: psycopg.Connection[Any]) -> list[str]:
    return c.warnings  # type: ignore[attr-defined, no-any-return]


def new_topic(prefix: str = "room") -> str:
    return f"{prefix}:{secrets.token_hex(4)}"


def rows_of(c: psycopg.Connection[Any], topic: str) -> list[tuple[Any, ...]]:
    """(id, payload, binary_payload, event, private, extension) of `topic`'s rows, oldest first."""
    return c.execute(
        "select id, payload, binary_payload, event, private, extension from realtime.messages"
        " where topic = %s order by inserted_at",
        (topic,),
    ).fetchall()


# The migration


async def test_migration_applies_twice(dsn: str) -> None:
    async with await _connect(dsn) as c:
        assert await db.migrate(c) == []  # recorded once
        warnings: list[str] = []
        c.add_notice_handler(lambda d: _record_warning(warnings, d))
        for _ in range(2):  # and the file itself is idempotent
            async with c.transaction():
                await c.execute(MIGRATION.encode())
    assert warnings == []


def test_migration_has_the_documented_table(conn: psycopg.Connection[Any]) -> None:
    columns = conn.execute(
        "select attname, format_type(atttypid, atttypmod), attnotnull, pg_get_expr(adbin, adrelid)"
        " from pg_attribute left join pg_attrdef on adrelid = attrelid and adnum = attnum"
        " where attrelid = 'realtime.messages'::regclass and attnum > 0 and not attisdropped order by attnum"
    ).fetchall()
    assert columns == [
        ("topic", "text", True, None),
        ("extension", "text", True, None),
        ("payload", "jsonb", False, None),
        ("event", "text", False, None),
        ("private", "boolean", False, "false"),
        ("updated_at", "timestamp without time zone", True, "timezone('utc'::text, now())"),
        ("inserted_at", "timestamp without time zone", True, "timezone('utc'::text, now())"),
        ("id", "uuid", True, "gen_random_uuid()"),
        ("binary_payload", "bytea", False, None),
    ]
    owner, rls, kind = conn.execute(
        "select relowner::regrole::text, relrowsecurity, relkind from pg_class"
        " where oid = 'realtime.messages'::regclass"
    ).fetchone()
    assert (owner, rls, kind) == ("supabase_realtime_admin", True, "p")
    assert conn.execute("select pg_get_partkeydef('realtime.messages'::regclass)").fetchone() == (
        "RANGE (inserted_at)",
    )
    constraints = dict(
        conn.execute(
            "select conname, pg_get_constraintdef(oid) from pg_constraint"
            " where conrelid = 'realtime.messages'::regclass"
        ).fetchall()
    )
    assert constraints["messages_pkey"] == "PRIMARY KEY (id, inserted_at)"
    assert constraints["messages_payload_exclusive"] == "CHECK (((payload IS NULL) OR (binary_payload IS NULL)))"
    [indexdef] = conn.execute(
        "select indexdef from pg_indexes"
        " where schemaname = 'realtime' and indexname = 'messages_inserted_at_topic_index'"
    ).fetchone()
    assert "(inserted_at DESC, topic) WHERE ((extension = 'broadcast'::text) AND (private IS TRUE))" in indexdef
    for role in ("anon", "authenticated", "service_role"):
        for privilege in ("INSERT", "SELECT", "UPDATE"):
            assert conn.execute(
                "select has_table_privilege(%s, 'realtime.messages', %s)", (role, privilege)
            ).fetchone() == (True,)
        assert conn.execute(
            "select has_function_privilege(%s, 'realtime.send(jsonb, text, text, boolean)', 'execute')", (role,)
        ).fetchone() == (True,)
    owners = conn.execute(
        "select distinct proowner::regrole::text from pg_proc"
        " where pronamespace = 'realtime'::regnamespace"
        " and proname in ('topic', 'send', 'send_binary', 'broadcast_changes')"
    ).fetchall()
    assert owners == [("supabase_realtime_admin",)]
    assert conn.execute(
        "select count(*) from pg_proc where proname = 'send' and pronamespace = 'realtime'::regnamespace"
    ).fetchone() == (1,)  # no overload: untyped literals must resolve


async def test_migration_upgrades_an_upstream_database(pg_dsn: str, fresh_database) -> None:
    """A database with an older upstream realtime.messages, send() and publication is brought up to date."""
    url = fresh_database
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            """
            create schema realtime;
            create table realtime.messages (
                topic text not null, extension text not null, payload jsonb, event text,
                private boolean default false,
                updated_at timestamp without time zone default now() not null,
                inserted_at timestamp without time zone default now() not null,
                id uuid default gen_random_uuid() not null,
                constraint messages_pkey primary key (id, inserted_at)
            ) partition by range (inserted_at);
            create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
                returns void language plpgsql as $$
            begin
                insert into realtime.messages (payload, event, topic, private, extension)
                values (payload, event, topic, private, 'broadcast');
            exception when others then raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
            end $$;
            create table public.other (id int primary key);
            create publication supabase_realtime_messages_publication for table realtime.messages, public.other;
            """
        )
    async with await _connect(url) as c:
        assert "0003_messages" in await db.migrate(c)
    with psycopg.connect(url, autocommit=True) as c:
        assert c.execute(
            "select format_type(atttypid, atttypmod) from pg_attribute"
            " where attrelid = 'realtime.messages'::regclass and attname = 'binary_payload'"
        ).fetchone() == ("bytea",)
        assert c.execute(
            "select count(*) from pg_constraint where conname = 'messages_payload_exclusive'"
        ).fetchone() == (1,)
        [src] = c.execute(
            "select prosrc from pg_proc where oid = 'realtime.send(jsonb,text,text,boolean)'::regprocedure"
        ).fetchone()
        assert "WarnSendingBroadcastMessage" in src
        assert c.execute(
            "select pubviaroot, puballtables from pg_publication where pubname = %s", (PUBLICATION,)
        ).fetchone() == (True, False)
        assert c.execute(
            "select schemaname, tablename from pg_publication_tables where pubname = %s", (PUBLICATION,)
        ).fetchall() == [("realtime", "messages")]


async def test_migration_by_a_non_superuser_warns_and_goes_on(pg_dsn: str, dsn: str, fresh_database) -> None:
    """A database owner that may not hand objects to supabase_realtime_admin keeps them itself."""
    role = f"rt_migrator_{secrets.token_hex(4)}"
    password = secrets.token_hex(16)  # for a DATABASE_URL server that wants one; trust ignores it
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        # Before PostgreSQL 16, CREATEROLE may grant itself any role, so the
        # owner can hand realtime.messages over; from 16 on it cannot.
        can_hand_over = admin.info.server_version < 160000
        # 0001 runs `create role service_role ... bypassrls` and relies on
        # duplicate_object, which PostgreSQL checks after these attributes.
        admin.execute(
            sql.SQL("create role {} login createrole bypassrls password {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        url = fresh_database
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        admin.execute(sql.SQL("alter database {} owner to {}").format(sql.Identifier(name), sql.Identifier(role)))
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["user"] = role
    params["password"] = password
    c = await psycopg.AsyncConnection.connect(psycopg.conninfo.make_conninfo(**params), autocommit=True)
    warnings: list[str] = []
    async with c:
        c.add_notice_handler(lambda d: _record_warning(warnings, d))
        assert "0003_messages" in await db.migrate(c)
        assert len(await messages.ensure_partitions(c)) == len(messages.PARTITION_DAYS)
        topic = new_topic()
        await c.execute("select realtime.send('{}', 'e', %s)", (topic,))
        cur = await c.execute(
            "select (select relowner::regrole::text from pg_class where oid = 'realtime.messages'::regclass),"
            " (select count(*) from realtime.messages where topic = %s),"
            " (select pubviaroot from pg_publication where pubname = %s)",
            (topic, PUBLICATION),
        )
        owner = "supabase_realtime_admin" if can_hand_over else role
        assert await cur.fetchone() == (owner, 1, True)
    warned = any(
        w.startswith("realtime: could not make supabase_realtime_admin the owner of realtime.messages")
        for w in warnings
    )
    assert warned is not can_hand_over, warnings
    assert not any(w.startswith("WarnSendingBroadcastMessage") for w in warnings), warnings


def test_publication_is_realtime_messages_via_root(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute(
        "select pubviaroot, puballtables, pubinsert from pg_publication where pubname = %s", (PUBLICATION,)
    ).fetchone() == (True, False, True)
    assert conn.execute(
        "select prrelid::regclass::text from pg_publication_rel r join pg_publication p on p.oid = r.prpubid"
        " where p.pubname = %s",
        (PUBLICATION,),
    ).fetchall() == [("realtime.messages",)]
    # With publish_via_partition_root the root is listed, not the daily partitions.
    assert conn.execute(
        "select schemaname, tablename from pg_publication_tables where pubname = %s", (PUBLICATION,)
    ).fetchall() == [("realtime", "messages")]


# realtime.send, send_binary, topic


def test_send_adds_the_message_id_and_defaults_to_private(conn: psycopg.Connection[Any]) -> None:
    topic = new_topic()
    conn.execute("select realtime.send('{\"body\": \"hi\"}', 'shout', %s)", (topic,))
    [(id_, payload, binary, event, private, extension)] = rows_of(conn, topic)
    assert payload == {"body": "hi", "id": str(id_)}
    assert (binary, event, private, extension) == (None, "shout", True, "broadcast")
    assert warnings_of(conn) == []


def test_send_keeps_an_id_in_the_payload(conn: psycopg.Connection[Any]) -> None:
    topic = new_topic()
    conn.execute('select realtime.send(\'{"id": "mine", "n": 1}\', \'e\', %s, false)', (topic,))
    [(id_, payload, _, _, private, _)] = rows_of(conn, topic)
    assert payload == {"id": "mine", "n": 1}
    assert isinstance(id_, uuid.UUID)
    assert private is False


def test_send_sets_the_topic_for_the_transaction(conn: psycopg.Connection[Any]) -> None:
    topic = new_topic()
    with conn.transaction():
        conn.execute("select realtime.send('{}', 'e', %s)", (topic,))
        assert conn.execute("select realtime.topic()").fetchone() == (topic,)
    assert conn.execute("select realtime.topic()").fetchone() == (None,)


def test_send_failure_warns_and_the_caller_commits(conn: psycopg.Connection[Any]) -> None:
    """No partition for today: the insert fails inside send, which only warns."""
    today = datetime.now(UTC).date()
    table = f"t_{secrets.token_hex(4)}"
    topic = new_topic()
    conn.execute(sql.SQL("create table {} (n int)").format(sql.Identifier(table)))
    conn.execute(sql.SQL("drop table realtime.{}").format(sql.Identifier(messages.partition_name(today))))
    try:
        with conn.transaction():
            conn.execute(sql.SQL("insert into {} values (1)").format(sql.Identifier(table)))
            conn.execute("select realtime.send('{\"a\": 1}', 'e', %s)", (topic,))
            conn.execute(sql.SQL("insert into {} values (2)").format(sql.Identifier(table)))
        [warning] = warnings_of(conn)
        assert warning.startswith('WarnSendingBroadcastMessage: no partition of relation "messages" found for row')
        assert conn.execute(sql.SQL("select n from {} order by n").format(sql.Identifier(table))).fetchall() == [
            (1,),
            (2,),
        ]
        assert rows_of(conn, topic) == []
    finally:
        conn.execute(
            sql.SQL("create table realtime.{} partition of realtime.messages for values from ({}) to ({})").format(
                sql.Identifier(messages.partition_name(today)),
                sql.Literal(today.isoformat()),
                sql.Literal((today + timedelta(days=1)).isoformat()),
            )
        )


def test_send_runs_with_the_callers_rights(conn: psycopg.Connection[Any]) -> None:
    """Not SECURITY DEFINER (as upstream): without an insert policy an API role's send only warns."""
    topic = new_topic()
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select realtime.send('{}', 'e', %s)", (topic,))
    [warning] = warnings_of(conn)
    assert warning.startswith("WarnSendingBroadcastMessage: new row violates row-level security policy")
    assert rows_of(conn, topic) == []


def test_send_binary_writes_binary_payload(conn: psycopg.Connection[Any]) -> None:
    topic = new_topic()
    conn.execute("select realtime.send_binary('\\x0001ff'::bytea, 'bin', %s)", (topic,))
    [(_, payload, binary, event, private, extension)] = rows_of(conn, topic)
    assert (payload, binary, event, private, extension) == (None, b"\x00\x01\xff", "bin", True, "broadcast")


def test_topic_reads_the_transaction_local_setting(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute("select realtime.topic()").fetchone() == (None,)
    with conn.transaction():
        conn.execute("select set_config('realtime.topic', 'room:1', true)")
        assert conn.execute("select realtime.topic()").fetchone() == ("room:1",)
    assert conn.execute("select realtime.topic()").fetchone() == (None,)
    assert conn.execute("select provolatile from pg_proc where oid = 'realtime.topic()'::regprocedure").fetchone() == (
        "s",
    )


def test_policies_see_the_topic(conn: psycopg.Connection[Any]) -> None:
    """The read check of docs/protocol.md §7: a probe row is visible only when the policy accepts the topic."""
    conn.execute(
        "create policy read_rooms on realtime.messages for select to authenticated"
        " using (realtime.topic() like 'room:%')"
    )
    try:
        for topic, visible in (("room:1", True), ("other", False)):
            probe = uuid.uuid4()
            with conn.transaction(force_rollback=True):
                conn.execute(
                    "insert into realtime.messages (id, topic, extension) values (%s, %s, 'broadcast')", (probe, topic)
                )
                conn.execute(
                    "select set_config('role', 'authenticated', true), set_config('realtime.topic', %s, true)", (topic,)
                )
                found = conn.execute("select id from realtime.messages where id = %s", (probe,)).fetchall()
            assert found == ([(probe,)] if visible else []), topic
    finally:
        conn.execute("drop policy read_rooms on realtime.messages")


# realtime.broadcast_changes


def test_broadcast_changes_from_a_row_trigger(conn: psycopg.Connection[Any]) -> None:
    table = f"items_{secrets.token_hex(4)}"
    topic = new_topic("items")
    conn.execute(
        sql.SQL(
            """
            create table {t} (id int primary key, name text);
            create function {f}() returns trigger language plpgsql as $$
            begin
                perform realtime.broadcast_changes(
                    {topic}, TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL
                );
                return null;
            end $$;
            create trigger broadcast after insert or update or delete on {t}
                for each row execute function {f}();
            """
        ).format(t=sql.Identifier(table), f=sql.Identifier(f"{table}_fn"), topic=sql.Literal(topic))
    )
    for statement in ("insert into {} values (1, 'a')", "update {} set name = 'b'", "delete from {}"):
        conn.execute(sql.SQL(statement).format(sql.Identifier(table)))
    rows = rows_of(conn, topic)
    assert [(event, private, extension) for _, _, _, event, private, extension in rows] == [
        ("INSERT", True, "broadcast"),
        ("UPDATE", True, "broadcast"),
        ("DELETE", True, "broadcast"),
    ]
    base = {"table": table, "schema": "public"}
    a, b = {"id": 1, "name": "a"}, {"id": 1, "name": "b"}
    assert [payload for _, payload, _, _, _, _ in rows] == [
        {**base, "operation": "INSERT", "record": a, "old_record": None, "id": str(rows[0][0])},
        {**base, "operation": "UPDATE", "record": b, "old_record": a, "id": str(rows[1][0])},
        {**base, "operation": "DELETE", "record": None, "old_record": b, "id": str(rows[2][0])},
    ]


def test_broadcast_changes_refuses_statement_level(conn: psycopg.Connection[Any]) -> None:
    table = f"items_{secrets.token_hex(4)}"
    conn.execute(
        sql.SQL(
            """
            create table {t} (id int);
            create function {f}() returns trigger language plpgsql as $$
            begin
                perform realtime.broadcast_changes(
                    'x', TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL
                );
                return null;
            end $$;
            create trigger broadcast after insert on {t} for each statement execute function {f}();
            """
        ).format(t=sql.Identifier(table), f=sql.Identifier(f"{table}_fn"))
    )
    with pytest.raises(psycopg.errors.RaiseException) as exc:
        conn.execute(sql.SQL("insert into {} values (1)").format(sql.Identifier(table)))
    assert exc.value.diag.message_primary == (
        "Failed to process the row: function can only be triggered for each row, not for each statement"
    )
    assert conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone() == (0,)


def test_broadcast_changes_refuses_other_operations(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.RaiseException) as exc:
        conn.execute("select realtime.broadcast_changes('x', 'e', 'TRUNCATE', 't', 'public', row(1), row(1))")
    assert exc.value.diag.message_primary == "Failed to process the row: Unexpected operation type: TRUNCATE"


# Partitions


async def test_ensure_partitions_creates_five_days_once(aconn: psycopg.AsyncConnection[Any]) -> None:
    today = date(2001, 1, 10)
    names = [
        "messages_2001_01_09",
        "messages_2001_01_10",
        "messages_2001_01_11",
        "messages_2001_01_12",
        "messages_2001_01_13",
    ]
    try:
        assert await messages.ensure_partitions(aconn, today) == names
        assert await messages.ensure_partitions(aconn, today) == []
        cur = await aconn.execute(
            "select c.relname, c.relowner::regrole::text, pg_get_expr(c.relpartbound, c.oid) from pg_class c"
            " where c.relnamespace = 'realtime'::regnamespace and c.relkind = 'r'"
            " and c.relname like 'messages_2001_01_%' order by 1"
        )
        rows = await cur.fetchall()
        assert [name for name, _, _ in rows] == names
        assert {owner for _, owner, _ in rows} == {"supabase_realtime_admin"}
        assert rows[0][2] == "FOR VALUES FROM ('2001-01-09 00:00:00') TO ('2001-01-10 00:00:00')"
    finally:
        for name in names:
            await aconn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier("realtime", name)))


async def test_drop_old_partitions_drops_only_expired_days(aconn: psycopg.AsyncConnection[Any]) -> None:
    await messages.ensure_partitions(aconn, date(2001, 1, 10))  # 2001-01-09 … 2001-01-13
    await aconn.execute(  # not a daily partition: never dropped
        "create table realtime.messages_other partition of realtime.messages"
        " for values from ('1990-01-01') to ('1990-02-01')"
    )
    try:
        # 2001-01-14 12:00 − 72 h = 2001-01-11 12:00: days before 2001-01-11 go.
        dropped = await messages.drop_old_partitions(aconn, now=datetime(2001, 1, 14, 12, tzinfo=UTC))
        assert dropped == ["messages_2001_01_09", "messages_2001_01_10"]
        dropped = await messages.drop_old_partitions(aconn, now=datetime(2001, 1, 15, 1), retention=timedelta(days=2))
        assert dropped == ["messages_2001_01_11", "messages_2001_01_12"]
        cur = await aconn.execute(
            "select to_regclass('realtime.messages_2001_01_13') is not null,"
            " to_regclass('realtime.messages_other') is not null,"
            " to_regclass(%s) is not null",
            ("realtime." + messages.partition_name(datetime.now(UTC).date()),),
        )
        assert await cur.fetchone() == (True, True, True)
    finally:
        await aconn.execute("drop table if exists realtime.messages_2001_01_13, realtime.messages_other")


async def test_janitor_runs_at_start_and_then_periodically(dsn: str) -> None:
    class Source:
        @contextlib.asynccontextmanager
        async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
            async with await _connect(dsn) as c:
                yield c

    janitor = messages.Janitor(Source(), interval=50 * MS)
    janitor.start()
    try:
        for _ in range(200):
            if janitor.runs >= 2:
                break
            await asyncio.sleep(10 * MS)
        assert janitor.runs >= 2
        assert janitor.last_created == []  # the fixture made today's partitions
    finally:
        await janitor.stop()
    # Stopped means no janitor task is left to run again (checked directly, not by waiting).
    assert [t for t in asyncio.all_tasks() if t.get_name() == "realtime-janitor"] == []


# Replay


async def test_replay_returns_the_newest_private_broadcasts_oldest_first(aconn: psycopg.AsyncConnection[Any]) -> None:
    topic = new_topic("replay")
    now = datetime.now(UTC).replace(tzinfo=None)

    async def insert(
        minutes: float, *, t: str = topic, ext: str = "broadcast", private: bool = True, **values: Any
    ) -> None:
        await aconn.execute(
            "insert into realtime.messages (topic, extension, private, event, payload, binary_payload, inserted_at)"
            " values (%s, %s, %s, %s, %s::jsonb, %s, %s)",
            (
                t,
                ext,
                private,
                values.get("event", "e"),
                values.get("payload"),
                values.get("binary"),
                now + timedelta(minutes=minutes),
            ),
        )

    await insert(-120, payload='{"n": "too old"}')
    for n in range(1, 5):
        await insert(-6 + n, event=f"e{n}", payload=f'{{"n": {n}, "text": "é"}}')
    await insert(-1, event="bin", binary=b"\x00\xff")
    await insert(-1.5, private=False, payload='{"n": "public"}')
    await insert(-1.5, ext="presence", payload='{"n": "presence"}')
    await insert(-1.5, t=topic + "x", payload='{"n": "other topic"}')
    await insert(+5, payload='{"n": "future"}')

    since_ms = int((now - timedelta(minutes=10)).replace(tzinfo=UTC).timestamp() * 1000)
    rows = await messages.replay(aconn, topic, since_ms, 25)
    assert [r.event for r in rows] == ["e1", "e2", "e3", "e4", "bin"]
    cur = await aconn.execute(
        "select id::text, payload::text from realtime.messages where topic = %s and event like 'e_'", (topic,)
    )
    stored = dict(await cur.fetchall())
    for row in rows[:4]:
        assert row.payload_json == stored[row.id].encode()
        assert row.binary_payload is None
    assert rows[4].payload_json is None and rows[4].binary_payload == b"\x00\xff"
    assert all(a.inserted_at < b.inserted_at for a, b in itertools.pairwise(rows))

    limited = await messages.replay(aconn, topic, since_ms, 2)
    assert [r.event for r in limited] == ["e4", "bin"]
    later = await messages.replay(
        aconn, topic, int((now - timedelta(minutes=3, seconds=30)).replace(tzinfo=UTC).timestamp() * 1000), 25
    )
    assert [r.event for r in later] == ["e3", "e4", "bin"]


# Logical decoding


def test_send_is_decoded_from_the_publication_as_realtime_messages(conn: psycopg.Connection[Any]) -> None:
    slot = f"test_messages_{secrets.token_hex(4)}"
    topic = new_topic("logical")
    conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    try:
        conn.execute("select realtime.send('{\"x\": 1}', 'ev', %s)", (topic,))
        changes = conn.execute(
            "select data from pg_logical_slot_get_binary_changes(%s, null, null,"
            " 'proto_version', '1', 'publication_names', %s)",
            (slot, PUBLICATION),
        ).fetchall()
    finally:
        conn.execute("select pg_drop_replication_slot(%s)", (slot,))
    decoded = [pgoutput.decode(data) for (data,) in changes]
    relations = {m.oid: m for m in decoded if isinstance(m, pgoutput.Relation)}
    [insert] = [m for m in decoded if isinstance(m, pgoutput.Insert)]
    # pgoutput also describes the partition the row went to, but the Insert
    # names the root: publish_via_partition_root.
    relation = relations[insert.relation_oid]
    assert (relation.namespace, relation.name) == ("realtime", "messages")
    row = dict(zip([c.name for c in relation.columns], insert.new, strict=True))
    assert (row["topic"], row["event"], row["private"], row["extension"]) == (topic, "ev", "t", "broadcast")
    assert isinstance(row["payload"], str)
    assert row["payload"] == f'{{"x": 1, "id": "{row["id"]}"}}'
    assert row["binary_payload"] is None
