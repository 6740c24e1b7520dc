"""Egress metering and cost attribution end to end: the bytes a tenant is metered are the bytes
its clients read from their sockets (raw clients counting at the TCP level, vsn 1.0.0 and
2.0.0, and a raw HTTP client for the REST API); attribution by topic, client and role adds up
to the tenant's totals; advice on a crafted mix; the endpoints' errors."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from conftest import MS, admin_headers, make_token, serving
from wire import V1, V2, RawClient, eventually, kind3

from realtime_core.admin.egress_api import envelope_saving
from realtime_core.net.frames import text_frame
from realtime_core.protocol import JSON, UserBroadcast
from realtime_core.protocol import V2 as V2_CODEC

TENANT = "realtime-dev"
pytestmark = pytest.mark.pg


def admin_get(server: Any, path: str, **query: str) -> dict[str, Any]:
    response = httpx.get(f"{server.http_url}/admin/v1/tenants/{TENANT}/{path}", params=query, headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()


async def raw_http(server: Any, request: bytes) -> bytes:
    """Send one HTTP request on a fresh TCP connection and read the whole answer (the server
    closes after it: `connection: close`): every byte the client received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 3000 * MS)
    writer.close()
    await writer.wait_closed()
    return answer


def rest_request(server: Any, body: bytes) -> bytes:
    token = make_token("service_role")
    return (
        f"POST /api/broadcast HTTP/1.1\r\nhost: 127.0.0.1:{server.port}\r\nauthorization: Bearer {token}\r\n"
        f"x-client-info: raw-rest/3.0.0\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


async def open_client(server: Any, vsn: str, info: str, role: str = "authenticated") -> RawClient:
    return await RawClient.open(server.socket_url(make_token(role), vsn), vsn, headers={"x-client-info": info})


async def test_metered_egress_is_what_raw_clients_read_and_attribution_adds_up(pg_dsn):
    with serving(pg_dsn) as server:
        a = await open_client(server, V1, "raw-one/1.0.0")
        b = await open_client(server, V2, "raw-two/2.0.0")
        c = await open_client(server, V2, "raw-two/2.0.0", role="anon")
        config = {"broadcast": {"self": False, "ack": True}, "presence": {"key": "", "enabled": True}}
        for client in (a, b, c):
            await client.join("realtime:room", config)
        # Presence: a tracks; everyone gets the diff.
        track = a.next_ref()
        await a.push(
            "realtime:room", "presence", {"type": "presence", "event": "track", "payload": {"n": 1}}, ref=track
        )
        for client in (a, b, c):
            await client.expect_event("realtime:room", "presence_diff")
        # A JSON broadcast from b (acknowledged), a binary one from c (a V1 receiver gets it as JSON).
        ref = b.next_ref()
        await b.push("realtime:room", "broadcast", {"type": "broadcast", "event": "m", "payload": {"n": 1}}, ref=ref)
        await b.reply_to(ref, "realtime:room")
        await c.send(kind3("realtime:room", "bin", b'{"k":2}', join_ref="1"))
        for client in (a, c):
            await client.expect_event("realtime:room", "broadcast")
        await b.expect_binary()
        # REST: a batch of two to the room, answered 202, and a refused one (422).
        body = (
            b'{"messages":[' + b",".join(b'{"topic":"room","event":"r","payload":{"i":%d}}' % i for i in (1, 2)) + b"]}"
        )
        rest_bytes = len(await raw_http(server, rest_request(server, body)))
        rest_bytes += len(await raw_http(server, rest_request(server, b'{"messages":7}')))
        for client in (a, b, c):
            for _ in range(2):
                await client.expect_event("realtime:room", "broadcast")
        # Heartbeats, a WebSocket ping (pong), a reply to an unjoined topic, then every client closes.
        for client in (a, b, c):
            await client.heartbeat()
        await (await a.ws.ping())
        await b.push("realtime:nowhere", "broadcast", {}, ref="99")
        await b.reply_to("99", "realtime:nowhere")
        # a untracks while everyone is open: no leave diff races the closes below (a frame the
        # hub offers a connection already closing is metered but never sent: README).
        await a.push("realtime:room", "presence", {"type": "presence", "event": "untrack"})
        for client in (a, b, c):
            await client.expect_event("realtime:room", "presence_diff")
        for client in (a, b, c):
            await client.close()
        received = {"a": a.received_bytes, "b": b.received_bytes, "c": c.received_bytes}
        assert all(received.values())

        def totals() -> dict[str, Any]:
            return admin_get(server, "usage")["total"]

        expected = sum(received.values()) + rest_bytes
        await eventually(lambda: totals()["egress_bytes"]["all"] == expected, what="the egress of the clients")
        total = totals()
        egress = total["egress_bytes"]
        assert egress["all"] == expected, (egress, received, rest_bytes)
        assert min(egress["broadcast"], egress["presence"], egress["rest"], egress["protocol"]) > 0
        assert egress["postgres_changes"] == egress["db_broadcast"] == 0
        hours = admin_get(server, "usage", granularity="hour")["hours"]
        assert sum(hour["egress_bytes"]["all"] for hour in hours) == expected

        answer = admin_get(server, "attribution", period="day")
        assert answer["exact"] is True and answer["error_bound"]["usd"] == 0
        # Per client: what each client library's connections read, exactly.
        clients = {(row["client"], row["version"]): row for row in answer["clients"]}
        assert clients[("raw-one", "1.0.0")]["egress_bytes"] == received["a"]
        assert clients[("raw-one", "1.0.0")]["connections"] == 1
        assert clients[("raw-two", "2.0.0")]["egress_bytes"] == received["b"] + received["c"]
        assert clients[("raw-two", "2.0.0")]["connections"] == 2
        assert clients[("raw-rest", "3.0.0")]["egress_bytes"] == rest_bytes
        assert clients[("raw-rest", "3.0.0")]["messages"] == 2  # the accepted REST messages
        # Every dimension adds up to the tenant's totals; rows are sorted by cost.
        messages = total["messages"]["all"]
        for rows in (answer["topics"], answer["clients"], answer["roles"]):
            assert sum(row["egress_bytes"] for row in rows) == expected
            assert sum(row["messages"] for row in rows) == messages
            assert [row["usd"] for row in rows] == sorted((row["usd"] for row in rows), reverse=True)
        assert answer["total"]["egress_bytes"] == expected and answer["total"]["messages"] == messages
        roles = {row["role"]: row["egress_bytes"] for row in answer["roles"]}
        assert roles["anon"] == received["c"] and roles["service_role"] == rest_bytes
        topics = {(row["topic"], row["private"]) for row in answer["topics"]}
        # The unmatched reply to "nowhere" is the socket's, under "phoenix" (a topic never joined).
        assert topics == {("room", False), ("phoenix", False), ("(rest responses)", False)}
        cycle = admin_get(server, "attribution", period="cycle")  # the cycle holds today
        assert cycle["total"] == answer["total"] and cycle["period"] == "cycle"
        room = next(row for row in answer["topics"] if row["topic"] == "room")
        assert round(room["usd"], 12) == round(room["messages"] * 2.5e-6 + room["egress_bytes"] * 0.09e-9, 12)


async def test_advice_names_the_channel_and_the_figures_from_the_counters(pg_dsn):
    with serving(pg_dsn) as server:
        # Presence-heavy: three clients track on "lobby"; each join gets a presence_state.
        lobby = [await open_client(server, V2, "raw-two/2.0.0") for _ in range(3)]
        state_bytes = 0
        for client in lobby:
            join_ref = client.next_ref()
            await client.push(
                "realtime:lobby",
                "phx_join",
                {"config": {"presence": {"key": "", "enabled": True}}},
                ref=join_ref,
                join_ref=join_ref,
            )
            while True:  # the join reply, then the presence_state: measured as written
                text = await asyncio.wait_for(client.ws.recv(), 3000 * MS)
                if '"presence_state"' in text:
                    state_bytes += len(text_frame(text.encode()))
                    break
        for i, client in enumerate(lobby):
            await client.push("realtime:lobby", "presence", {"type": "presence", "event": "track", "payload": {"i": i}})
        for client in lobby:
            for _ in range(3):
                await client.expect_event("realtime:lobby", "presence_diff")
        # A vsn 1.0.0 receiver of twelve broadcasts on "feed".
        old = await open_client(server, V1, "raw-one/1.0.0")
        sender = await open_client(server, V2, "raw-two/2.0.0")
        await old.join("realtime:feed", {"broadcast": {"self": False}})
        await sender.join("realtime:feed", {"broadcast": {"self": False}})
        saved = 0
        for i in range(12):
            payload = {"type": "broadcast", "event": "tick", "payload": {"i": i}}
            await sender.push("realtime:feed", "broadcast", payload)
            text = await asyncio.wait_for(old.ws.recv(), 3000 * MS)
            binary = V2_CODEC.user_broadcast("realtime:feed", UserBroadcast("tick", b'{"i":%d}' % i, JSON))
            assert binary is not None
            saved += len(text_frame(text.encode())) - len(binary)

        answer = admin_get(server, "advice")
        by_kind = {item["kind"]: item for item in answer["advice"]}
        presence = by_kind["presence_state"]
        assert presence["channel"] == "lobby" and presence["private"] is False
        assert presence["saving"]["messages"] == 3
        assert presence["saving"]["egress_bytes"] == state_bytes
        assert presence["based_on"]["presence_egress_bytes"] * 2 >= presence["based_on"]["channel_egress_bytes"]
        binary = by_kind["binary_broadcast"]
        assert binary["channel"] == "feed" and binary["based_on"]["messages_received"] == 12
        assert binary["saving"]["egress_bytes"] == saved == 12 * envelope_saving("realtime:feed")
        assert "postgres_changes_filter" not in by_kind
        assert answer["not_detectable"]
        for client in (*lobby, old, sender):
            await client.close()


async def test_attribution_and_advice_answer_404_422_and_403_as_the_admin_api_does(server):
    for path in ("attribution", "advice"):
        url = f"{server.http_url}/admin/v1/tenants/{TENANT}/{path}"
        assert httpx.get(url).status_code == 403
        assert httpx.get(url, headers={"authorization": f"Bearer {make_token('anon')}"}).status_code == 403
        assert httpx.get(url, headers=admin_headers(admin="read")).status_code == 200
        response = httpx.get(url, params={"period": "week"}, headers=admin_headers())
        assert response.status_code == 422 and "period" in response.json()["errors"]
        response = httpx.get(url, params={"limit": "0"}, headers=admin_headers())
        assert response.status_code == 422 and "limit" in response.json()["errors"]
        missing = f"{server.http_url}/admin/v1/tenants/nobody/{path}"
        assert httpx.get(missing, headers=admin_headers()).status_code == 404
    assert (
        "/admin/v1/tenants/{id}/advice"
        in httpx.get(f"{server.http_url}/admin/v1/openapi.json", headers=admin_headers()).json()["paths"]
    )
