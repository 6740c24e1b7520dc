"""Private channels as @supabase/realtime-js sees them, on vsn 2.0.0 and 1.0.0 (docs/protocol.md §4.4, §7)."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest
from conftest import MS, make_token
from jsclient import JsDriver
from psycopg import sql

pytestmark = [pytest.mark.js, pytest.mark.pg]
VSNS = pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])


def read_and_write_policies(db: psycopg.Connection[Any], prefix: str) -> None:
    for command, clause in (("select", "using"), ("insert", "with check")):
        db.execute(
            sql.SQL(
                "create policy {} on realtime.messages for "
                + command
                + " to authenticated "
                + clause
                + " (realtime.topic() like {} and "
                "current_setting('request.jwt.claims', true)::jsonb ->> 'sub' <> 'mallory')"
            ).format(sql.Identifier(f"{prefix}_{command}"), sql.Literal(f"{prefix}:%"))
        )


async def private(js: JsDriver, name: str, url: str, token: str, topic: str, vsn: str) -> dict[str, Any]:
    await js.client(name, url, token, vsn)
    await js.channel(name, name, topic, private=True)
    await js.on(name, "broadcast", event="*")
    return await js.subscribe(name)


@VSNS
async def test_a_private_channel_joins_broadcasts_and_gets_database_messages(cdc, db, vsn):
    prefix = f"js{secrets.token_hex(3)}"
    topic = f"{prefix}:room"
    read_and_write_policies(db, prefix)
    async with JsDriver() as js:
        for name, sub in (("alice", "alice"), ("bob", "bob")):
            status = await private(js, name, cdc.ws_url, make_token("authenticated", sub=sub), topic, vsn)
            assert (status["status"], status["error"]) == ("SUBSCRIBED", None)
        mark = js.mark()
        message = {"type": "broadcast", "event": "hello", "payload": {"from": "alice"}}
        assert await js.request({"op": "send", "channel": "alice", "message": message}) == "ok"
        got = await js.wait_for(lambda e: e["ev"] == "broadcast" and e["channel"] == "bob", 5_000 * MS, mark)
        assert got["payload"] == message

        mark = js.mark()
        db.execute("select realtime.send(jsonb_build_object('n', 1), 'from_db', %s)", (topic,))
        got = await js.wait_for(lambda e: e["ev"] == "broadcast" and e["channel"] == "bob", 5_000 * MS, mark)
        assert got["payload"]["event"] == "from_db"
        assert got["payload"]["payload"]["n"] == 1
        assert got["payload"]["meta"]["id"] == got["payload"]["payload"]["id"]


@VSNS
async def test_a_user_the_policy_excludes_gets_channel_error(cdc, db, vsn):
    prefix = f"js{secrets.token_hex(3)}"
    read_and_write_policies(db, prefix)
    async with JsDriver() as js:
        status = await private(js, "m", cdc.ws_url, make_token("authenticated", sub="mallory"), f"{prefix}:room", vsn)
        assert status["status"] == "CHANNEL_ERROR"
        assert status["error"] == (
            f"Unauthorized: You do not have permissions to read from this Channel topic: {prefix}:room"
        )
