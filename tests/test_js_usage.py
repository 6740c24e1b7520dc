"""Usage metering as @supabase/realtime-js drives it (README, Usage and quotas): broadcast with
and without `self`, presence with watchers and a disconnect, `httpSend`, counted exactly."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import MS, admin_headers, make_token
from jsclient import JsDriver
from wire import eventually, metric

pytestmark = [pytest.mark.js, pytest.mark.pg]

DELIVERY = 5_000 * MS


def usage_total(server: Any) -> dict[str, Any]:
    response = httpx.get(f"{server.http_url}/admin/v1/tenants/realtime-dev/usage", headers=admin_headers())
    assert response.status_code == 200, response.text
    return response.json()["total"]


async def broadcast_seen(js: JsDriver, channel: str, event: str, since: int) -> None:
    await js.wait_for(
        lambda ev: ev["ev"] == "broadcast" and ev["channel"] == channel and ev["payload"]["event"] == event,
        timeout=DELIVERY,
        since=since,
    )


async def presence_seen(js: JsDriver, channel: str, event: str, key: str, since: int) -> None:
    await js.wait_for(
        lambda ev: (
            ev["ev"] == "presence"
            and ev["channel"] == channel
            and ev["payload"]["event"] == event
            and ev["payload"].get("key") == key
        ),
        timeout=DELIVERY,
        since=since,
    )


async def test_realtime_js_traffic_is_counted_as_the_table_says(server_factory, topic):
    server = server_factory({"REALTIME_USAGE_FLUSH_INTERVAL_MS": "60000"})
    token = make_token()
    listen = ("broadcast", "presence")
    async with JsDriver() as js:
        # Three sockets on one stream with presence listeners: 3 presence_state frames.
        start = js.mark()
        await js.join(
            "alice", server.ws_url, token, topic, listen=listen, broadcast={"self": True}, presence={"key": "a"}
        )
        await js.join("bob", server.ws_url, token, topic, listen=listen, presence={"key": "b"})
        await js.join("carol", server.ws_url, token, topic, listen=listen, presence={"key": "c"})
        for name in ("alice", "bob", "carol"):
            await js.wait_for(
                lambda ev, name=name: (
                    ev["ev"] == "presence" and ev["channel"] == name and ev["payload"]["event"] == "sync"
                ),
                timeout=DELIVERY,
                since=start,
            )
        presence = 3

        # alice (self: true) → alice, bob, carol: 1 + 3. bob → alice, carol: 1 + 2.
        mark = js.mark()
        assert await js.request({"op": "send", "channel": "alice", "message": {"type": "broadcast", "event": "a"}})
        assert await js.request({"op": "send", "channel": "bob", "message": {"type": "broadcast", "event": "b"}})
        for name, event in (("alice", "a"), ("bob", "a"), ("carol", "a"), ("alice", "b"), ("carol", "b")):
            await broadcast_seen(js, name, event, mark)
        broadcast = 1 + 3 + 1 + 2

        # alice tracks: 1 + a diff to each of the three.
        mark = js.mark()
        assert await js.request({"op": "track", "channel": "alice", "payload": {"s": 1}}) == "ok"
        for name in ("alice", "bob", "carol"):
            await presence_seen(js, name, "join", "a", mark)
        presence += 1 + 3

        # carol (not tracked) disconnects: 0. Then alice untracks: 1 + a diff to alice and bob.
        await js.request({"op": "disconnect", "client": "carol"})
        await eventually(lambda: metric(server.http_url, "realtime_connections_connected") == 2, what="carol gone")
        mark = js.mark()
        assert await js.request({"op": "untrack", "channel": "alice"}) == "ok"
        for name in ("alice", "bob"):
            await presence_seen(js, name, "leave", "a", mark)
        presence += 1 + 2

        # httpSend over REST: 1 accepted + alice and bob.
        mark = js.mark()
        result = await js.request({"op": "httpSend", "channel": "bob", "event": "h", "payload": {"n": 1}})
        assert result == {"success": True}
        for name in ("alice", "bob"):
            await broadcast_seen(js, name, "h", mark)
        rest = 1 + 2

        expected = {
            "broadcast": broadcast,
            "presence": presence,
            "postgres_changes": 0,
            "db_broadcast": 0,
            "rest": rest,
        }
        expected["all"] = sum(expected.values())
        total = usage_total(server)
        egress = total.pop("egress_bytes")
        assert total == {"messages": expected, "peak_connections": 3}
        assert egress["all"] == sum(n for kind, n in egress.items() if kind != "all")
        assert min(egress["broadcast"], egress["presence"], egress["rest"], egress["protocol"]) > 0
        # Attribution adds up. realtime-js under Node tells nothing of itself here (no
        # x-client-info, no join `version` without setAuth, no User-Agent on its WebSocket):
        # its three sockets are one unnamed client; Node's fetch names itself for REST.
        response = httpx.get(f"{server.http_url}/admin/v1/tenants/realtime-dev/attribution", headers=admin_headers())
        clients = response.json()["clients"]
        by_client = {row["client"]: row for row in clients}
        assert by_client[None]["connections"] == 3 and by_client["node"]["connections"] == 0, clients
        assert sum(row["messages"] for row in clients) == expected["all"]
        assert sum(row["egress_bytes"] for row in clients) == egress["all"]
