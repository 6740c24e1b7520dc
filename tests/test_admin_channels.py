"""The admin API's channel views and time series (realtime_core/admin/channels.py) against a
running server carrying traffic from realtime-js and the Python `realtime` client: the figures
reported equal what the clients did, lists sort and page, an operator's shutdown reaches the
clients as upstream's system message and phx_close, and read-only tokens may only read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import MS, admin_headers, make_token
from jsclient import JsDriver
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from wire import eventually

from realtime_core.hub import KINDS

pytestmark = [pytest.mark.js, pytest.mark.pg]

TENANT = "realtime-dev"
DELIVERY = 5_000 * MS
SHUTDOWN_TEXT = "Server requested disconnect"


def channels_url(topic: str | None = None) -> str:
    base = f"/admin/v1/tenants/{TENANT}/channels"
    return base if topic is None else f"{base}/{quote(topic, safe='')}"


async def get(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await http.get(path, params=params, headers=admin_headers(admin="read"))
    assert response.status_code == 200, response.text
    return response.json()


async def until(read: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float = 10_000 * MS) -> Any:
    """Call `read` every 100 MS until `done` holds for what it returns; return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        assert asyncio.get_running_loop().time() < deadline, value
        await asyncio.sleep(100 * MS)


async def python_subscriber(url: str, topic: str, got: list[Any]) -> tuple[AsyncRealtimeClient, Any]:
    client = AsyncRealtimeClient(url, make_token(), auto_reconnect=False)
    channel = client.channel(topic, {"config": {"broadcast": {"ack": True, "self": False}}})
    channel.on_broadcast("*", got.append)
    states: list[Any] = []
    await channel.subscribe(lambda state, _err: states.append(state))
    await eventually(lambda: RealtimeSubscribeStates.SUBSCRIBED in states, what="python client subscribed")
    return client, channel


async def test_channel_figures_equal_what_the_clients_did(server, topic):
    py_got: list[Any] = []
    async with JsDriver() as js, httpx.AsyncClient(base_url=server.http_url) as http:
        await js.join(
            "a", server.ws_url, make_token(), topic, listen=("broadcast", "presence"), presence={"key": "alice"}
        )
        await js.join(
            "b", server.ws_url, make_token(), topic, listen=("broadcast", "presence"), presence={"key": "bob"}
        )
        client, channel = await python_subscriber(server.ws_url, topic, py_got)
        try:
            # Two presence keys, each tracked once: each diff reaches the 3 subscribers.
            await js.request({"op": "track", "channel": "a", "payload": {"online": True}})
            await js.request({"op": "track", "channel": "b", "payload": {"online": True}})
            for n in range(3):
                msg = {"type": "broadcast", "event": "js", "payload": {"n": n}}
                await js.request({"op": "send", "channel": "a", "message": msg})
            for n in range(2):
                await channel.send_broadcast("py", {"n": n})
            # One REST message (the HTTP broadcast API), to all three.
            rest = {"messages": [{"topic": topic, "event": "rest", "payload": {}}]}
            posted = await http.post("/api/broadcast", json=rest, headers={"Authorization": f"Bearer {make_token()}"})
            assert posted.status_code == 202
            # a's 3 reach b and the Python client; the Python client's 2 reach a and b.
            await js.wait_for(lambda _: len(js.received("b")) == 6, timeout=DELIVERY)
            await js.wait_for(lambda _: len(js.received("a")) == 3, timeout=DELIVERY)
            await eventually(lambda: len(py_got) == 4, what="4 broadcasts at the Python client")
            await js.wait_for(
                lambda _: len([e for e in js.received("a", "presence") if e["event"] == "join"]) >= 2,
                timeout=DELIVERY,
            )

            page = await get(http, channels_url(), sort="topic", limit=1000)
            [row] = [r for r in page["data"] if r["topic"] == topic and not r["private"]]
            assert row["subscribers"] == 3
            assert row["presence"] == 2
            assert row["messages"] == {**dict.fromkeys(KINDS, 0), "broadcast": 5, "presence": 2, "rest": 1}
            # Presence: the two diffs to 3 subscribers, and the presence_state each of the two
            # presence joins got (a delivery too, as usage counts it).
            deliveries = {"broadcast": 3 * 2 + 2 * 2, "presence": 2 * 3 + 2, "rest": 3}
            assert row["deliveries"] == {**dict.fromkeys(KINDS, 0), **deliveries}
            assert row["messages_total"] == 8 and row["deliveries_total"] == 21
            # Receivers per publication: 8 fanned out, and the 2 presence_state frames with 1 each.
            assert row["fan_out"] == round(21 / 10, 3)
            assert row["messages_per_second"]["broadcast"] == round(5 / 60, 3)
            assert row["deliveries_per_second"]["presence"] == round(8 / 60, 3)

            detail = await get(http, channels_url(topic))
            assert {k: v for k, v in detail.items() if k != "subscriber_list"} == row
            assert len(detail["subscriber_list"]) == 3
            assert {s["role"] for s in detail["subscriber_list"]} == {"anon"}
            assert all("connection" in s and "sub" in s for s in detail["subscriber_list"])
            # The private stream of the same name is another stream: nobody is there.
            missing = await http.get(channels_url(topic), params={"private": "true"}, headers=admin_headers())
            assert missing.status_code == 404 and missing.json() == {"message": "not found"}
        finally:
            await client.close()


async def test_channels_sort_and_page(server_factory, topic):
    server = server_factory()
    async with JsDriver() as js, httpx.AsyncClient(base_url=server.http_url) as http:
        # Streams with 1, 2 and 3 subscribers.
        for count, suffix in ((1, "one"), (2, "two"), (3, "three")):
            for i in range(count):
                await js.join(f"{suffix}{i}", server.ws_url, make_token(), f"{topic}-{suffix}")
        first = await get(http, channels_url(), sort="-subscribers", limit=2)
        assert [(r["topic"], r["subscribers"]) for r in first["data"]] == [(f"{topic}-three", 3), (f"{topic}-two", 2)]
        assert first["next_cursor"]
        rest = await get(http, channels_url(), sort="-subscribers", limit=2, cursor=first["next_cursor"])
        assert [(r["topic"], r["subscribers"]) for r in rest["data"]] == [(f"{topic}-one", 1)]
        assert rest["next_cursor"] is None
        ascending = await get(http, channels_url(), sort="topic")
        assert [r["topic"] for r in ascending["data"]] == sorted(f"{topic}-{s}" for s in ("one", "two", "three"))
        bad = await http.get(channels_url(), params={"sort": "nope"}, headers=admin_headers())
        assert bad.status_code == 422 and "sort" in bad.json()["errors"]
        unknown = await http.get("/admin/v1/tenants/nobody/channels", headers=admin_headers())
        assert unknown.status_code == 404


async def test_an_operator_shuts_a_channel_down_for_every_subscriber(server, topic):
    topic = f"{topic}:a/b c%"  # percent-encoded in the path
    async with JsDriver() as js, httpx.AsyncClient(base_url=server.http_url) as http:
        for name in ("a", "b"):
            await js.join(name, server.ws_url, make_token(), topic, listen=("system",))
        refused = await http.delete(channels_url(topic), headers=admin_headers(admin="read"))
        assert refused.status_code == 403
        mark = js.mark()
        done = await http.delete(channels_url(topic), headers=admin_headers())
        assert done.status_code == 200, done.text
        assert done.json() == {"closed": 2, "message": SHUTDOWN_TEXT}
        for name in ("a", "b"):
            system = await js.wait_for(lambda ev, n=name: ev["ev"] == "system" and ev["channel"] == n, since=mark)
            assert system["payload"]["message"] == SHUTDOWN_TEXT
            assert system["payload"]["status"] == "error"
            closed = await js.wait_for(
                lambda ev, n=name: ev["ev"] == "status" and ev["channel"] == n and ev["status"] == "CLOSED", since=mark
            )
            assert closed["error"] is None
        # Nobody left (and no message was ever sent there): the stream is gone.
        after = await http.get(channels_url(topic), headers=admin_headers())
        assert after.status_code == 404
        again = await http.delete(channels_url(topic), headers=admin_headers())
        assert again.status_code == 404
        audit = await get(http, "/admin/v1/audit", limit=1000)
        assert any(e.get("action") == "channel.shutdown" for e in audit["data"]), audit


async def test_timeseries_show_the_traffic(server_factory, topic):
    server = server_factory()
    async with JsDriver() as js, httpx.AsyncClient(base_url=server.http_url) as http:
        await js.join("a", server.ws_url, make_token(), topic, presence={"key": "a"})
        await js.join("b", server.ws_url, make_token(), topic)
        await js.request({"op": "track", "channel": "a", "payload": {"n": 1}})
        await js.request({"op": "untrack", "channel": "a"})
        for _ in range(4):
            await js.request(
                {"op": "send", "channel": "a", "message": {"type": "broadcast", "event": "e", "payload": {}}}
            )
        await js.wait_for(lambda _: len(js.received("b")) == 4, timeout=DELIVERY)
        path = f"/admin/v1/tenants/{TENANT}/timeseries"
        names = "connections,joins,messages.broadcast,deliveries.broadcast,presence.joins,presence.leaves"

        async def window() -> dict[str, Any]:
            return await get(http, path, series=names, window="1m")

        # The sampler runs every second: poll until it has seen all four deliveries.
        seen = await until(window, lambda s: sum(s["series"]["deliveries.broadcast"]) == 4)
        assert sum(seen["series"]["messages.broadcast"]) == 4
        assert sum(seen["series"]["joins"]) == 2
        assert sum(seen["series"]["presence.joins"]) == 1 and sum(seen["series"]["presence.leaves"]) == 1
        assert seen["series"]["connections"][-1] == 2
        assert seen["step_seconds"] == 1
        assert len(seen["timestamps"]) == len(seen["series"]["joins"])
        assert set(seen["series"]) == set(names.split(","))
        assert "commit_to_dispatch_ms" in seen["series_names"]
        hour = await get(http, path, window="1h")
        assert hour["step_seconds"] == 60 and set(hour["series"]) == set(hour["series_names"])
        bad = await http.get(path, params={"series": "joins,nope"}, headers=admin_headers())
        assert bad.status_code == 422 and "nope" in bad.json()["errors"]["series"][0]
        bad = await http.get(path, params={"window": "2d"}, headers=admin_headers())
        assert bad.status_code == 422 and "window" in bad.json()["errors"]
        doc = (await http.get("/admin/v1/openapi.json", headers=admin_headers())).json()
        assert "/admin/v1/tenants/{id}/timeseries" in doc["paths"]
        assert "/admin/v1/tenants/{id}/channels/{topic}" in doc["paths"]
