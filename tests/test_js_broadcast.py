"""Broadcast as @supabase/realtime-js sees it (docs/protocol.md §2.3, §4.1–4.3, §10.5), on vsn 2.0.0 and 1.0.0.

Each test drives real realtime-js clients through tests/js/driver.mjs against a
`realtime-core serve` process and checks what the library hands to the app:
subscribe statuses, the payloads given to `.on('broadcast')` callbacks, and the
values `send()` / `httpSend()` resolve to."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import MS
from jsclient import JsDriver, JsError, binary

pytestmark = [pytest.mark.js, pytest.mark.pg]

VSNS = pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
DELIVERY = 3_000 * MS  # an expected event arrives within this

BINARY = bytes(range(256))


def arraybuffer(data: bytes) -> dict[str, str]:
    """How the driver reports an ArrayBuffer handed to a callback."""
    return {**binary(data), "class": "ArrayBuffer"}


def message(event: str, payload: Any) -> dict[str, Any]:
    return {"type": "broadcast", "event": event, "payload": payload}


async def send(js: JsDriver, channel: str, event: str, payload: Any, **opts: Any) -> Any:
    return await js.request({"op": "send", "channel": channel, "message": message(event, payload), "opts": opts})


def got(channel: str, event: str) -> Any:
    """A predicate: broadcast `event` reached channel `channel`."""
    return lambda ev: ev["ev"] == "broadcast" and ev["channel"] == channel and ev["payload"].get("event") == event


async def receive(js: JsDriver, channel: str, event: str, since: int = 0) -> dict[str, Any]:
    """The payload of the first broadcast `event` channel `channel` got after `since`."""
    found = await js.wait_for(
        lambda ev: ev["ev"] == "broadcast" and ev["channel"] == channel and ev["payload"].get("event") == event,
        timeout=DELIVERY,
        since=since,
    )
    return found["payload"]


@VSNS
async def test_subscribe_reports_subscribed_and_joins_the_channel(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.join("a", server.ws_url, token, topic, vsn=vsn)
        state = await js.request({"op": "raw", "client": "a", "channel": "a", "expr": "[client.vsn, channel.state]"})
        assert state == [vsn, "joined"]
        assert [ev["status"] for ev in js.events if ev["ev"] == "status"] == ["SUBSCRIBED"]


@VSNS
async def test_broadcast_reaches_other_subscribers_but_not_the_sender_by_default(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.join("sender", server.ws_url, token, topic, vsn=vsn)
        await js.join("receiver", server.ws_url, token, topic, vsn=vsn)
        assert await send(js, "sender", "hi", {"a": 1}) == "ok"
        assert await receive(js, "receiver", "hi") == message("hi", {"a": 1})
        # One publish queues every subscriber's copy: the sender's would precede the receiver's marker.
        assert await send(js, "receiver", "marker", {}) == "ok"
        await js.expect_nothing_before(got("sender", "marker"), got("sender", "hi"), timeout=DELIVERY)
        assert js.received("receiver") == [message("hi", {"a": 1})]


@VSNS
async def test_broadcast_with_self_true_reaches_the_sender_too(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.join("sender", server.ws_url, token, topic, vsn=vsn, broadcast={"self": True})
        await js.join("receiver", server.ws_url, token, topic, vsn=vsn)
        assert await send(js, "sender", "hi", {"a": 1}) == "ok"
        assert await receive(js, "sender", "hi") == message("hi", {"a": 1})
        assert await receive(js, "receiver", "hi") == message("hi", {"a": 1})
        # A second copy of "hi" would come before the marker the sender sends next.
        assert await send(js, "sender", "marker", {}) == "ok"
        for channel in ("sender", "receiver"):
            await receive(js, channel, "marker")
            assert js.received(channel) == [message("hi", {"a": 1}), message("marker", {})]


@VSNS
async def test_acked_broadcast_resolves_ok_once_the_server_replies(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.join(
            "sender", server.ws_url, token, topic, vsn=vsn, broadcast={"ack": True}, client_options={"logger": True}
        )
        await js.join("receiver", server.ws_url, token, topic, vsn=vsn)
        start = js.mark()
        assert await send(js, "sender", "hi", {"a": 1}) == "ok"
        # The value came from the server's ok reply, not from the no-ack shortcut.
        reply = js.matching(
            lambda ev: ev["ev"] == "log" and ev["kind"] == "receive" and "phx_reply" in ev["msg"], start
        )
        assert [ev["data"] for ev in reply] == [{"status": "ok", "response": {}}]
        assert await receive(js, "receiver", "hi") == message("hi", {"a": 1})


@VSNS
async def test_acked_oversize_broadcast_resolves_error_and_is_not_delivered(server_factory, token, topic, vsn):
    srv = server_factory({"TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1"})  # payloads up to 1500 bytes
    async with JsDriver() as js:
        await js.join("sender", srv.ws_url, token, topic, vsn=vsn, broadcast={"ack": True, "self": True})
        await js.join("receiver", srv.ws_url, token, topic, vsn=vsn)
        assert await send(js, "sender", "big", {"blob": "x" * 2_000}) == "error"
        assert await send(js, "sender", "small", {"blob": "x" * 100}) == "ok"
        # "small" is the marker: sent after "big" on the same channel, it is delivered after it.
        for channel in ("receiver", "sender"):
            found = await js.expect_nothing_before(got(channel, "small"), got(channel, "big"), timeout=DELIVERY)
            assert found["payload"] == message("small", {"blob": "x" * 100})


@VSNS
async def test_unacked_oversize_broadcast_resolves_ok_and_is_dropped(server_factory, token, topic, vsn):
    srv = server_factory({"TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1"})
    async with JsDriver() as js:
        await js.join("sender", srv.ws_url, token, topic, vsn=vsn)
        await js.join("receiver", srv.ws_url, token, topic, vsn=vsn)
        assert await send(js, "sender", "big", {"blob": "x" * 2_000}) == "ok"
        assert await send(js, "sender", "small", {"n": 1}) == "ok"
        assert await receive(js, "receiver", "small") == message("small", {"n": 1})
        assert js.received("receiver") == [message("small", {"n": 1})]
        assert await js.request({"op": "raw", "channel": "sender", "expr": "channel.state"}) == "joined"


async def test_binary_broadcast_reaches_v2_receivers_as_arraybuffer_and_skips_v1_receivers(server, token, topic):
    async with JsDriver() as js:
        await js.join("sender", server.ws_url, token, topic, vsn="2.0.0")
        await js.join("v2", server.ws_url, token, topic, vsn="2.0.0")
        await js.join("v1", server.ws_url, token, topic, vsn="1.0.0")
        assert await send(js, "sender", "bin", binary(BINARY)) == "ok"
        assert await receive(js, "v2", "bin") == message("bin", arraybuffer(BINARY))
        # A JSON message sent next reaches the V1 client first: the binary one was dropped, not delayed.
        assert await send(js, "sender", "after", {"n": 1}) == "ok"
        assert await receive(js, "v1", "after") == message("after", {"n": 1})
        assert await receive(js, "v2", "after") == message("after", {"n": 1})
        assert js.received("v1") == [message("after", {"n": 1})]
        assert js.received("v2") == [message("bin", arraybuffer(BINARY)), message("after", {"n": 1})]


@VSNS
async def test_send_before_subscribe_goes_through_the_rest_batch_endpoint(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.join("receiver", server.ws_url, token, topic, vsn=vsn)
        await js.client("rest", server.ws_url, token, vsn, logger=True)
        await js.channel("rest", "rest", topic)
        assert await send(js, "rest", "hi", {"a": 1}) == "ok"
        assert await receive(js, "receiver", "hi") == message("hi", {"a": 1})
        # The sender never opened a socket: the message went over HTTP.
        assert await js.request({"op": "raw", "client": "rest", "expr": "client.isConnected()"}) is False
        assert js.matching(lambda ev: ev["ev"] == "socket" and ev["client"] == "rest") == []
        assert js.matching(lambda ev: ev["ev"] == "log" and "falling back to REST" in ev["msg"])


@VSNS
async def test_http_send_json_reaches_subscribers(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.join("receiver", server.ws_url, token, topic, vsn=vsn)
        await js.client("rest", server.ws_url, token)
        await js.channel("rest", "rest", topic)
        result = await js.request({"op": "httpSend", "channel": "rest", "event": "hi", "payload": {"a": [1, 2]}})
        assert result == {"success": True}
        assert await receive(js, "receiver", "hi") == message("hi", {"a": [1, 2]})


async def test_http_send_arraybuffer_reaches_v2_subscribers_only(server, token, topic):
    async with JsDriver() as js:
        await js.join("v2", server.ws_url, token, topic, vsn="2.0.0")
        await js.join("v1", server.ws_url, token, topic, vsn="1.0.0")
        await js.client("rest", server.ws_url, token)
        await js.channel("rest", "rest", topic)
        http_send = {"op": "httpSend", "channel": "rest"}
        assert await js.request({**http_send, "event": "bin", "payload": binary(BINARY)}) == {"success": True}
        assert await receive(js, "v2", "bin") == message("bin", arraybuffer(BINARY))
        assert await js.request({**http_send, "event": "after", "payload": {"n": 1}}) == {"success": True}
        assert await receive(js, "v1", "after") == message("after", {"n": 1})
        assert js.received("v1") == [message("after", {"n": 1})]


async def test_http_send_on_a_private_channel_rejects_with_the_server_message(server, token, topic):
    async with JsDriver() as js:
        await js.client("rest", server.ws_url, token)
        await js.channel("rest", "rest", topic, private=True)
        with pytest.raises(JsError, match=r"^Unauthorized$"):
            await js.request({"op": "httpSend", "channel": "rest", "event": "hi", "payload": {"a": 1}})


@pytest.mark.parametrize(("sender_vsn", "receiver_vsn"), [("2.0.0", "1.0.0"), ("1.0.0", "2.0.0")])
async def test_broadcast_crosses_protocol_versions(server, token, topic, sender_vsn, receiver_vsn):
    async with JsDriver() as js:
        await js.join("sender", server.ws_url, token, topic, vsn=sender_vsn)
        await js.join("receiver", server.ws_url, token, topic, vsn=receiver_vsn)
        assert await send(js, "sender", "hi", {"a": 1, "s": "é"}) == "ok"
        assert await receive(js, "receiver", "hi") == message("hi", {"a": 1, "s": "é"})


@VSNS
async def test_client_on_the_supabase_js_path_joins_and_reaches_rest_under_it(server, token, topic, vsn):
    url = server.ws_url.removesuffix("/socket") + "/realtime/v1"  # what supabase-js hands realtime-js
    weird = f"{topic}:a/b c%é"  # the REST paths must survive URL encoding
    async with JsDriver() as js:
        await js.join("receiver", url, token, weird, vsn=vsn)
        await js.client("rest", url, token, vsn)
        await js.channel("rest", "rest", weird)
        assert await send(js, "rest", "batch", {"a": 1}) == "ok"
        assert await receive(js, "receiver", "batch") == message("batch", {"a": 1})
        result = await js.request({"op": "httpSend", "channel": "rest", "event": "single/é", "payload": {"b": 2}})
        assert result == {"success": True}
        assert await receive(js, "receiver", "single/é") == message("single/é", {"b": 2})
