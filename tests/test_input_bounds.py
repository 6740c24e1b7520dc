"""Tests for the bound on client messages held for later (realtime_core.socket, channel.py):
messages queued behind a join or a write-policy check stop the connection's
reading past max_queued_input_messages / max_queued_input_bytes, and start it
again once handled, in their order.

Driven like tests/test_socket.py: a RealtimeSocket of a real App over the
FakeConnection of tests/fakes.py, whose pause_reading()/resume_reading() are
recorded. A join or a write check is made to wait on an asyncio.Event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import TOPIC, Client, close_sockets, make_app, settle

import realtime_core.socket as socket_module
from realtime_core.app import App

MAX_MESSAGES = 10
MAX_BYTES = 2_000


def ok(join_ref: str | None, ref: str | None, topic: str, response: Any) -> list[Any]:
    return [join_ref, ref, topic, "phx_reply", {"status": "ok", "response": response}]


@pytest.fixture
async def app():
    app = make_app()
    app.settings = app.settings.replace(max_queued_input_messages=MAX_MESSAGES, max_queued_input_bytes=MAX_BYTES)
    yield app
    close_sockets(app)


@pytest.fixture
def join_gate(monkeypatch) -> asyncio.Event:
    """Joins wait until the returned event is set (a slow read policy, a wait for a pool connection)."""
    gate = asyncio.Event()
    real_join = socket_module.join

    async def slow_join(socket, msg):
        await gate.wait()
        return await real_join(socket, msg)

    monkeypatch.setattr(socket_module, "join", slow_join)
    return gate


def heartbeat(client: Client, ref: int, padding: int = 0) -> None:
    """A heartbeat of about `padding` bytes more than the smallest one."""
    client.push(None, str(ref), "phoenix", "heartbeat", {"pad": "x" * padding})


class TestInboxBound:
    """The inbox behind a running join."""

    async def test_a_flood_behind_a_join_stops_reading_and_is_handled_in_order_after_it(self, app, join_gate):
        client = Client(app)
        client.join(join_ref="1")
        for ref in range(2, 2 + MAX_MESSAGES):
            heartbeat(client, ref)
        assert not client.conn.reading_paused, "at the bound: still reading"
        heartbeat(client, 2 + MAX_MESSAGES)
        assert client.conn.reading_paused, "past the bound: reading stops"
        join_gate.set()
        await settle()
        assert not client.conn.reading_paused
        assert client.conn.pauses == 1
        assert client.received() == [ok("1", "1", TOPIC, {"postgres_changes": []})] + [
            ok(None, str(ref), "phoenix", {}) for ref in range(2, 3 + MAX_MESSAGES)
        ]

    async def test_the_byte_bound_stops_reading_too(self, app, join_gate):
        client = Client(app)
        client.join(join_ref="1")
        heartbeat(client, 2, padding=MAX_BYTES // 2)
        assert not client.conn.reading_paused
        heartbeat(client, 3, padding=MAX_BYTES // 2)
        assert client.conn.reading_paused, "two messages, but over the byte bound"
        join_gate.set()
        await settle()
        assert not client.conn.reading_paused
        assert [reply[1] for reply in client.received()] == ["1", "2", "3"]

    async def test_reading_stays_stopped_while_a_later_join_holds_too_much(self, app, join_gate):
        client = Client(app)
        client.join("realtime:a", "1")
        client.join("realtime:b", "2")
        for ref in range(3, 3 + MAX_MESSAGES):
            heartbeat(client, ref)
        assert client.conn.reading_paused
        join_gate.set()
        await settle()
        assert not client.conn.reading_paused, "released once both joins ran"
        assert [reply[1] for reply in client.received()] == [str(ref) for ref in range(1, 3 + MAX_MESSAGES)]

    async def test_messages_handled_at_once_are_not_held(self, app):
        client = Client(app)
        for ref in range(1, 3 * MAX_MESSAGES):
            heartbeat(client, ref, padding=MAX_BYTES)
        assert client.conn.pauses == 0
        assert len(client.received()) == 3 * MAX_MESSAGES - 1

    async def test_a_socket_closed_while_paused_releases_nothing_twice(self, app, join_gate):
        client = Client(app)
        client.join(join_ref="1")
        for ref in range(2, 3 + MAX_MESSAGES):
            heartbeat(client, ref)
        assert client.conn.reading_paused
        client.socket.on_close()
        join_gate.set()
        await settle()
        assert client.received() == []
        assert client.conn.reading_paused, "a closed socket never asks to read again"


class FakeAuthorizer:
    """Every policy allows; write checks wait for `write_gate`."""

    def __init__(self) -> None:
        self.write_gate = asyncio.Event()

    async def read(self, topic, claims, headers, extensions) -> dict[str, bool]:
        return dict.fromkeys(extensions, True)

    async def write(self, topic, claims, headers, extensions) -> dict[str, bool]:
        await self.write_gate.wait()
        return dict.fromkeys(extensions, True)


class TestWriteCheckBound:
    """Broadcasts held while a private channel's write policy is being checked."""

    async def test_a_flood_behind_a_write_check_stops_reading_and_is_delivered_in_order(self, app: App, monkeypatch):
        authorizer = FakeAuthorizer()
        monkeypatch.setattr(app, "authorizer_for", lambda tenant: authorizer)
        sender, receiver = Client(app), Client(app)
        for client in (sender, receiver):
            client.join(join_ref="1", config={"private": True, "broadcast": {"ack": True}})
        await settle()
        assert [reply[4]["status"] for client in (sender, receiver) for reply in client.received()] == ["ok", "ok"]
        for ref in range(2, 2 + MAX_MESSAGES):
            sender.push("1", str(ref), TOPIC, "broadcast", {"event": "e", "payload": {"n": ref}})
        assert not sender.conn.reading_paused
        sender.push("1", str(2 + MAX_MESSAGES), TOPIC, "broadcast", {"event": "e", "payload": {"n": 2 + MAX_MESSAGES}})
        assert sender.conn.reading_paused
        authorizer.write_gate.set()
        await settle()
        assert not sender.conn.reading_paused
        expected = list(range(2, 3 + MAX_MESSAGES))
        assert [reply[1] for reply in sender.received()] == [str(n) for n in expected], "acks, in order"
        pushed = [m[4]["payload"]["n"] for m in receiver.received()]
        assert pushed == expected


class TestSettings:
    def test_the_bounds_are_read_from_the_environment(self):
        from realtime_core.config import Settings

        settings = Settings.from_env(
            {"REALTIME_MAX_QUEUED_INPUT_MESSAGES": "7", "REALTIME_MAX_QUEUED_INPUT_BYTES": "65536"}
        )
        assert (settings.max_queued_input_messages, settings.max_queued_input_bytes) == (7, 65536)
        defaults = Settings.from_env({})
        assert (defaults.max_queued_input_messages, defaults.max_queued_input_bytes) == (1_000, 1024 * 1024)
