"""Postgres Changes with RLS on a table whose primary key has two columns, through realtime-js.

The live dispatcher checks each (role, claims) group's policy by the full key
(postgres_changes/rls.py visible_keys). Rows here share one key column with
each other, so a check by one column only would show a user another's row."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest
from conftest import MS, make_token
from jsclient import JsDriver
from psycopg import sql

pytestmark = [pytest.mark.js, pytest.mark.pg]

USERS = ("alice", "bob", "mallory")


def composite_table(db: psycopg.Connection[Any]) -> str:
    name = f"cpk_{secrets.token_hex(4)}"
    t = sql.Identifier(name)
    db.execute(
        sql.SQL("create table {} (org text, item int, owner text, note text, primary key (org, item))").format(t)
    )
    db.execute(sql.SQL("grant select on {} to authenticated").format(t))
    db.execute(sql.SQL("alter table {} enable row level security").format(t))
    db.execute(
        sql.SQL(
            "create policy own on {} for select to authenticated"
            " using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')"
        ).format(t)
    )
    # mallory's policy raises on every row (row-dependent, so the planner cannot fold it).
    db.execute(
        sql.SQL(
            "create policy boom on {} for select to authenticated using ("
            " case when current_setting('request.jwt.claims', true)::jsonb ->> 'sub' = 'mallory'"
            " then item / (item - item) = 1 else false end)"
        ).format(t)
    )
    db.execute(sql.SQL("alter publication supabase_realtime add table {}").format(t))
    return name


def rows_seen(js: JsDriver, user: str, since: int) -> list[tuple[str, Any, Any]]:
    return [
        (ev["payload"]["eventType"], ev["payload"]["new"], ev["payload"]["old"])
        for ev in js.matching(lambda e, u=user: e["ev"] == "postgres_changes" and e["channel"] == u, since)
    ]


async def test_rls_with_a_composite_primary_key_shows_each_user_only_its_rows(cdc, db, topic):
    table = composite_table(db)
    run = lambda query, *params: db.execute(sql.SQL(query).format(t=sql.Identifier(table)), params or None)  # noqa: E731
    async with JsDriver() as js:
        for user in USERS:
            await js.client(user, cdc.ws_url, make_token("authenticated", sub=user))
            await js.channel(user, user, topic)
            await js.on(user, "postgres_changes", event="*", schema="public", table=table)
            await js.on(user, "system")
            mark = js.mark()
            await js.subscribed(user)
            system = await js.wait_for(lambda e, u=user: e["ev"] == "system" and e["channel"] == u, 10_000 * MS, mark)
            assert system["payload"]["message"] == "Subscribed to PostgreSQL", system

        async def through_marker(since: int, item: int) -> None:
            """Commit one marker row per user and wait for both: what was committed before them was dispatched."""
            run("insert into {t} values ('z', %s, 'alice', 'end'), ('z', %s, 'bob', 'end')", item, item + 1)
            for user in ("alice", "bob"):
                await js.wait_for(
                    lambda e, u=user: (
                        e["ev"] == "postgres_changes"
                        and e["channel"] == u
                        and (e["payload"]["new"] or {}).get("note") == "end"
                        and e["payload"]["new"]["item"] in (item, item + 1)
                    ),
                    5_000 * MS,
                    since,
                )

        mark = js.mark()
        run(
            "insert into {t} values ('a', 1, 'alice', 'a1'), ('a', 2, 'bob', 'b1'), ('b', 1, 'bob', 'b2'),"
            " ('b', 2, 'carol', 'c1')"
        )
        await through_marker(mark, 10)
        # Visibility is checked against the row as it is when the change is dispatched
        # (as upstream's apply_rls does): change it only once the INSERTs are out.
        run("update {t} set owner = 'alice', note = 'given' where org = 'b' and item = 1")
        run("delete from {t} where org = 'b' and item = 2")
        await through_marker(mark, 20)
        # A last DELETE reaches all three (mallory's only marker): every socket is then drained.
        run("delete from {t} where org = 'z' and item = 20")
        for user in USERS:
            await js.wait_for(
                lambda e, u=user: (
                    e["ev"] == "postgres_changes"
                    and e["channel"] == u
                    and e["payload"]["old"] == {"org": "z", "item": 20}
                ),
                5_000 * MS,
                mark,
            )
        # DELETEs skip RLS and, with RLS on, carry only the primary key.
        deleted = ("DELETE", {}, {"org": "b", "item": 2})
        last = ("DELETE", {}, {"org": "z", "item": 20})
        assert rows_seen(js, "alice", mark) == [
            ("INSERT", {"org": "a", "item": 1, "owner": "alice", "note": "a1"}, {}),
            ("INSERT", {"org": "z", "item": 10, "owner": "alice", "note": "end"}, {}),
            ("UPDATE", {"org": "b", "item": 1, "owner": "alice", "note": "given"}, {"org": "b", "item": 1}),
            deleted,
            ("INSERT", {"org": "z", "item": 20, "owner": "alice", "note": "end"}, {}),
            last,
        ]
        assert rows_seen(js, "bob", mark) == [
            ("INSERT", {"org": "a", "item": 2, "owner": "bob", "note": "b1"}, {}),
            ("INSERT", {"org": "b", "item": 1, "owner": "bob", "note": "b2"}, {}),
            ("INSERT", {"org": "z", "item": 11, "owner": "bob", "note": "end"}, {}),
            deleted,
            ("INSERT", {"org": "z", "item": 21, "owner": "bob", "note": "end"}, {}),
            last,
        ]
        # mallory's raising policy cost mallory every INSERT and UPDATE, and nobody else anything.
        assert rows_seen(js, "mallory", mark) == [deleted, last]
