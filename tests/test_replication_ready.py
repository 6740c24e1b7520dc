"""broadcast.replication_ready (RT realtime_channel.ex, upstream PR #1962).

A channel joined with `config.broadcast.replication_ready` set gets the system
message `Replication connection established` (extension "system", status "ok")
once the tenant's replication connection is up, checked at the join and every
500 ms; without it before the deadline (60 s, REALTIME_REPLICATION_READY_TIMEOUT_MS)
the channel is shut down with `Replication connection was not established in time`.

The unit tests drive a channel of an App built without start() and decide the
connection's state; the end-to-end ones use a real server, realtime-js and raw
clients."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest
from conftest import MS, make_token
from fakes import TOPIC, Client, close_sockets, make_app, phx_close, settle
from jsclient import JsDriver
from psycopg import sql
from wire import V2, Frame, RawClient

from realtime_core.app import App
from realtime_core.config import Settings

READY = "Replication connection established"
NOT_READY = "Replication connection was not established in time"


def system(status: str, message: str, channel: str = "room", join_ref: str | None = "1") -> list[Any]:
    return [join_ref, None, f"realtime:{channel}", "system", _payload(status, message, channel)]


def _payload(status: str, message: str, channel: str) -> dict[str, str]:
    return {"extension": "system", "status": status, "message": message, "channel": channel}


class Replication:
    """Stands for the tenant's replication connection: records when it is checked; up from
    check number `up_from` on (never when None)."""

    def __init__(self, app: App, up_from: int | None) -> None:
        self.up_from = up_from
        self.times: list[float] = []
        app.replication_connected = self.connected  # type: ignore[method-assign]

    @property
    def checks(self) -> int:
        return len(self.times)

    def connected(self, tenant: Any) -> bool:
        self.times.append(time.monotonic())
        return self.up_from is not None and self.checks >= self.up_from


async def frames_of(client: Client, timeout: float = 5000 * MS) -> list[Any]:
    """The next messages the client gets, waiting for at least one."""
    deadline = time.monotonic() + timeout
    while not (frames := client.received()):
        assert time.monotonic() < deadline, "nothing arrived"
        await asyncio.sleep(10 * MS)
    return frames


async def test_a_ready_connection_is_announced_right_after_the_join_reply_and_once(app):
    replication = Replication(app, up_from=1)
    client = Client(app)
    client.join(config={"broadcast": {"replication_ready": True}})
    await settle()
    reply, ready = client.received()
    assert (reply[3], reply[4]["status"], ready) == ("phx_reply", "ok", system("ok", READY))
    await asyncio.sleep(1200 * MS)
    assert client.received() == [] and replication.checks == 1


async def test_the_message_comes_once_the_connection_is_up_checked_every_500_ms(app):
    replication = Replication(app, up_from=3)
    client = Client(app)
    joined_at = time.monotonic()
    client.join(config={"broadcast": {"replication_ready": True}})
    await settle()
    assert [m[3] for m in client.received()] == ["phx_reply"] and replication.checks == 1  # at the join
    assert await frames_of(client) == [system("ok", READY)]
    assert replication.checks == 3
    gaps = [b - a for a, b in zip([joined_at, *replication.times], replication.times, strict=False)]
    assert gaps[0] < 0.2 and all(gap >= 0.49 for gap in gaps[1:]), gaps


async def test_without_the_connection_the_channel_is_shut_down_after_the_timeout():
    app = App(Settings(channel_error_backoff_ms=0, replication_ready_timeout_ms=50))
    app.tenants.put(make_app().tenants.get("realtime-dev"))
    replication = Replication(app, up_from=None)
    client = Client(app)
    try:
        joined_at = time.monotonic()
        client.join(config={"broadcast": {"replication_ready": True}})
        await settle()
        client.received()
        assert await frames_of(client) == [system("error", NOT_READY), phx_close("1")]
        # The deadline (50 ms) is looked at only by the next check, 500 ms after the join.
        assert time.monotonic() - joined_at >= 0.49 and replication.checks == 2
        assert TOPIC not in client.socket.channels
    finally:
        close_sockets(app)


async def test_a_channel_that_did_not_opt_in_is_never_checked(app):
    replication = Replication(app, up_from=1)
    client = Client(app)
    client.join(config={"broadcast": {"replication_ready": False}})
    await settle()
    await asyncio.sleep(600 * MS)
    assert [m[3] for m in client.received()] == ["phx_reply"] and replication.checks == 0


async def test_leaving_stops_the_checks(app):
    replication = Replication(app, up_from=None)
    client = Client(app)
    client.join(config={"broadcast": {"replication_ready": True}})
    await settle()
    client.push("1", "2", TOPIC, "phx_leave", {})
    await asyncio.sleep(700 * MS)
    assert replication.checks == 1


# End to end


def is_system(frame: Any) -> bool:
    return isinstance(frame, Frame) and frame.event == "system"


@pytest.mark.pg
async def test_a_raw_client_gets_the_message_after_its_join_reply(cdc):
    async with await RawClient.open(cdc.socket_url(make_token(), V2)) as client:
        reply = await client.join("realtime:ready", {"broadcast": {"replication_ready": True}})
        frame = await client.expect(is_system)
        assert frame.raw == [reply.join_ref, None, "realtime:ready", "system", _payload("ok", READY, "ready")]
        # Sent once: the check that would repeat it runs every 500 ms, so two periods later a
        # second copy would be on the socket before the heartbeat reply.
        await asyncio.sleep(1000 * MS)
        await client.nothing_pending(is_system)


@pytest.mark.pg
async def test_without_a_replication_connection_the_channel_is_shut_down_after_the_timeout(server_factory):
    server = server_factory({"REALTIME_DB_BROADCAST": "false", "REALTIME_REPLICATION_READY_TIMEOUT_MS": "300"})
    async with await RawClient.open(server.socket_url(make_token(), V2)) as client:
        reply = await client.join("realtime:never", {"broadcast": {"replication_ready": True}})
        joined_at = time.monotonic()
        frame = await client.expect(is_system, 3000 * MS)
        waited = time.monotonic() - joined_at
        assert frame.raw == [reply.join_ref, None, "realtime:never", "system", _payload("error", NOT_READY, "never")]
        closed = await client.recv()
        assert closed.raw == [reply.join_ref, reply.join_ref, "realtime:never", "phx_close", {}]
        # The deadline (300 ms) is noticed at the check after it: 500 ms after the join.
        assert waited >= 0.45, waited


@pytest.mark.pg
@pytest.mark.js
@pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
async def test_realtime_js_hears_the_connection_is_ready_then_gets_database_broadcasts(cdc, db, vsn):
    prefix = f"rr{secrets.token_hex(3)}"
    topic = f"{prefix}:room"
    db.execute(
        sql.SQL(
            "create policy {} on realtime.messages for select to authenticated using (realtime.topic() = {})"
        ).format(sql.Identifier(f"{prefix}_read"), sql.Literal(topic))
    )
    async with JsDriver() as js:
        await js.client("c", cdc.ws_url, make_token("authenticated"), vsn)
        await js.channel("c", "c", topic, private=True, broadcast={"replication_ready": True})
        await js.on("c", "system")
        await js.on("c", "broadcast", event="*")
        mark = js.mark()
        await js.subscribed("c")
        ready = await js.wait_for(lambda e: e["ev"] == "system" and e["channel"] == "c", 5_000 * MS, mark)
        assert ready["payload"] == _payload("ok", READY, topic)
        db.execute("select realtime.send(jsonb_build_object('n', 1), 'from_db', %s)", (topic,))
        got = await js.wait_for(lambda e: e["ev"] == "broadcast" and e["channel"] == "c", 5_000 * MS, mark)
        assert (got["payload"]["event"], got["payload"]["payload"]["n"]) == ("from_db", 1)
