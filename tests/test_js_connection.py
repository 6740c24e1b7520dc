"""The socket's life as @supabase/realtime-js lives it (docs/protocol.md §1.5, §10.3–10.4), on vsn 2.0.0 and 1.0.0.

realtime-js keeps its socket open with heartbeats; the server closes a socket
that sends nothing for REALTIME_IDLE_TIMEOUT_MS. A client whose heartbeats are
rarer than that is cut off, reconnects and rejoins its channels by itself."""

from __future__ import annotations

import asyncio

import pytest
from conftest import MS, make_token, server_ms
from jsclient import JsDriver

pytestmark = [pytest.mark.js, pytest.mark.pg]

VSNS = pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
IDLE_TIMEOUT_MS = 1_500
DELIVERY = 3_000 * MS


@VSNS
async def test_client_heartbeats_keep_the_socket_open_past_the_idle_timeout(server_factory, token, topic, vsn):
    srv = server_factory({"REALTIME_IDLE_TIMEOUT_MS": server_ms(IDLE_TIMEOUT_MS)})
    async with JsDriver() as js:
        options = {"heartbeatIntervalMs": round(300 * MS * 1000)}
        await js.join("a", srv.ws_url, token, topic, vsn=vsn, client_options=options)
        await js.join("b", srv.ws_url, token, topic, vsn=vsn, client_options=options)
        start = js.mark()
        # The idle close is due at a known time, IDLE_TIMEOUT_MS after a's last input. Once twice
        # that has passed, a broadcast to a is the marker: a close would come before it.
        await asyncio.sleep(2 * IDLE_TIMEOUT_MS * MS)
        message = {"type": "broadcast", "event": "still-here", "payload": {}}
        await js.request({"op": "send", "channel": "b", "message": message})
        found = await js.expect_nothing_before(
            lambda ev: ev["ev"] == "broadcast" and ev["channel"] == "a",
            lambda ev: ev["ev"] == "socket",
            since=start,
            timeout=DELIVERY,
        )
        assert found["payload"] == message
        beats = js.matching(lambda ev: ev["ev"] == "heartbeat" and ev["client"] == "a", start)
        assert {ev["status"] for ev in beats} == {"sent", "ok"}
        assert len([ev for ev in beats if ev["status"] == "ok"]) >= 5
        assert await js.request({"op": "raw", "client": "a", "expr": "client.isConnected()"}) is True


@VSNS
async def test_client_silent_past_the_idle_timeout_is_disconnected_then_reconnects_and_rejoins(
    server_factory, token, topic, vsn
):
    srv = server_factory({"REALTIME_IDLE_TIMEOUT_MS": server_ms(IDLE_TIMEOUT_MS)})
    async with JsDriver() as js:
        await js.join("a", srv.ws_url, token, topic, vsn=vsn)  # heartbeats every 25 s
        start = js.mark()
        closed = await js.wait_for(lambda ev: ev["ev"] == "socket", (IDLE_TIMEOUT_MS + 1_000) * MS, start)
        assert closed["state"] == "close"
        await js.wait_for(lambda ev: ev["ev"] == "status" and ev["status"] == "CHANNEL_ERROR", DELIVERY, start)
        # realtime-js reconnects after 1 s and rejoins the channel.
        await js.wait_for(lambda ev: ev["ev"] == "socket" and ev["state"] == "open", DELIVERY, start)
        await js.wait_for(lambda ev: ev["ev"] == "status" and ev["status"] == "SUBSCRIBED", DELIVERY, start)
        await js.client("b", srv.ws_url, make_token(), vsn)
        await js.channel("b", "b", topic)
        await js.subscribed("b")
        message = {"type": "broadcast", "event": "welcome-back", "payload": {}}
        await js.request({"op": "send", "channel": "b", "message": message})
        found = await js.wait_for(lambda ev: ev["ev"] == "broadcast" and ev["channel"] == "a", DELIVERY, start)
        assert found["payload"] == message


@VSNS
async def test_unsubscribe_leaves_the_channel_and_stops_delivery(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.join("a", server.ws_url, token, topic, vsn=vsn)
        await js.join("b", server.ws_url, token, topic, vsn=vsn, broadcast={"ack": True})
        start = js.mark()
        assert await js.request({"op": "unsubscribe", "channel": "a"}) == "ok"
        closed = await js.wait_for(lambda ev: ev["ev"] == "status" and ev["channel"] == "a", DELIVERY, start)
        assert closed["status"] == "CLOSED"
        message = {"type": "broadcast", "event": "gone", "payload": {}}
        assert await js.request({"op": "send", "channel": "b", "message": message}) == "ok"
        # b's ack follows the publish, which queues every subscriber's copy at once: a copy for a
        # would come before the reply to a heartbeat a sends now.
        await js.nothing_pending("a", lambda ev: ev["ev"] == "broadcast", start)
        # The socket stays open for the client's other channels.
        assert await js.request({"op": "raw", "client": "a", "expr": "client.isConnected()"}) is True
