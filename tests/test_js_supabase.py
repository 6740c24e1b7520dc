"""supabase-js, the README's first example, against `realtime-core serve`.

`createClient(url, key)` takes the server's HTTP URL and connects to
/realtime/v1/websocket; every channel here is made by `supabase.channel()`, as
an application makes it. tests/js/driver.mjs runs the client (op "supabase")."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest
from conftest import MS, make_token
from jsclient import JsDriver
from psycopg import sql

pytestmark = [pytest.mark.js, pytest.mark.pg]

README_CONFIG = {"broadcast": {"self": True, "ack": True}}


async def supabase(js: JsDriver, name: str, http_url: str, key: str) -> str:
    """createClient(http_url, key) registered as client `name`; returns its realtime endpoint."""
    return await js.request({"op": "supabase", "name": name, "url": http_url, "key": key})


def presences(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Every presence in a presence event's presenceState(), without its presence_ref."""
    return sorted(
        ({k: v for k, v in meta.items() if k != "presence_ref"} for metas in event["state"].values() for meta in metas),
        key=lambda p: p["user"],
    )


async def test_the_readme_example_broadcasts_to_itself_with_ack_and_syncs_presence(server, topic):
    anon = make_token("anon")
    async with JsDriver() as js:
        endpoint = await supabase(js, "alice", server.http_url, anon)
        assert endpoint.startswith(f"ws://127.0.0.1:{server.port}/realtime/v1/websocket?"), endpoint
        await supabase(js, "bob", server.http_url, anon)
        for name in ("alice", "bob"):
            await js.request({"op": "channel", "client": name, "name": name, "topic": topic, "config": README_CONFIG})
            await js.on(name, "broadcast", event="cursor")
            await js.on(name, "presence", event="sync")
            await js.subscribed(name)
        mark = js.mark()
        assert await js.request({"op": "track", "channel": "alice", "payload": {"user": "alice"}}) == "ok"
        message = {"type": "broadcast", "event": "cursor", "payload": {"x": 1, "y": 2}}
        assert await js.request({"op": "send", "channel": "alice", "message": message}) == "ok"

        for name in ("alice", "bob"):  # self: true, so the sender gets its own broadcast too
            got = await js.wait_for(lambda e, n=name: e["ev"] == "broadcast" and e["channel"] == n, 5_000 * MS, mark)
            assert got["payload"] == message
            synced = await js.wait_for(
                lambda e, n=name: e["ev"] == "presence" and e["channel"] == n and presences(e), 5_000 * MS, mark
            )
            assert presences(synced) == [{"user": "alice"}]
        assert [e["channel"] for e in js.matching(lambda e: e["ev"] == "broadcast", mark)] in (
            ["alice", "bob"],
            ["bob", "alice"],
        )


async def test_postgres_changes_insert_reaches_a_supabase_js_channel(cdc, db: psycopg.Connection[Any]):
    table = f"todos_{secrets.token_hex(4)}"
    db.execute(
        sql.SQL("create table {} (id bigint generated always as identity primary key, title text, done bool)").format(
            sql.Identifier(table)
        )
    )
    db.execute(sql.SQL("alter publication supabase_realtime add table {}").format(sql.Identifier(table)))
    db.execute(sql.SQL("grant select on {} to anon, authenticated").format(sql.Identifier(table)))
    async with JsDriver() as js:
        await supabase(js, "app", cdc.http_url, make_token("anon"))
        await js.request({"op": "channel", "client": "app", "name": "todos", "topic": "todos", "config": {}})
        await js.on("todos", "postgres_changes", event="*", schema="public", table=table, filter="done=eq.false")
        await js.on("todos", "system")
        mark = js.mark()
        await js.subscribed("todos")
        system = await js.wait_for(lambda e: e["ev"] == "system" and e["channel"] == "todos", 10_000 * MS, mark)
        assert system["payload"]["message"] == "Subscribed to PostgreSQL", system
        assert system["payload"]["status"] == "ok", system

        mark = js.mark()
        db.execute(sql.SQL("insert into {} (title, done) values ('done already', true)").format(sql.Identifier(table)))
        db.execute(sql.SQL("insert into {} (title, done) values ('write tests', false)").format(sql.Identifier(table)))
        change = await js.wait_for(lambda e: e["ev"] == "postgres_changes", 5_000 * MS, mark)
        payload = change["payload"]
        assert (payload["eventType"], payload["schema"], payload["table"]) == ("INSERT", "public", table)
        assert payload["new"] == {"id": 2, "title": "write tests", "done": False}
        assert payload["old"] == {}
        assert payload["errors"] is None
        # The row the filter excludes was committed first, so it would have arrived first.
        assert len(js.matching(lambda e: e["ev"] == "postgres_changes", mark)) == 1
