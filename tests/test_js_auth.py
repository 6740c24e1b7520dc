"""Tokens as @supabase/realtime-js meets them (docs/protocol.md §1.4, §3.2, §3.5, §7, §8), on vsn 2.0.0 and 1.0.0.

A token set with `setAuth()` before `subscribe()` goes into the join payload as
`access_token` (docs/protocol.md §3.1–3.2); set on a joined channel, it is pushed as an
`access_token` message (docs/protocol.md §8.3). These tests check the statuses and the
`system` messages realtime-js reports for each outcome. The HTTP answers at
connect are checked byte for byte in test_protocol_e2e.py."""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import jwt as pyjwt
import pytest
from conftest import MS, make_token
from jsclient import JsDriver

pytestmark = [pytest.mark.js, pytest.mark.pg]

VSNS = pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
DELIVERY = 3_000 * MS

SIGNER_TEXT = "Failed to generate JWT signer, check your JWT secret or JWKS configuration"
MISSING_CLAIMS = "Fields `role` and `exp` are required in JWT"


def status_events(js: JsDriver, channel: str, since: int = 0) -> list[tuple[str, str | None]]:
    return [
        (ev["status"], ev["error"])
        for ev in js.matching(lambda ev: ev["ev"] == "status" and ev["channel"] == channel, since)
    ]


async def wait_status(js: JsDriver, channel: str, status: str, since: int = 0) -> dict:
    return await js.wait_for(
        lambda ev: ev["ev"] == "status" and ev["channel"] == channel and ev["status"] == status,
        timeout=DELIVERY,
        since=since,
    )


def assert_expired_text(text: str, prefix: str, at_least: int, at_most: int) -> None:
    """`text` is "<prefix>Token has expired N seconds ago" with N in [at_least, at_most]."""
    m = re.fullmatch(re.escape(prefix) + r"Token has expired (\d+) seconds ago", text)
    assert m is not None, text
    assert at_least <= int(m.group(1)) <= at_most, text


@VSNS
async def test_client_with_an_expired_apikey_never_subscribes(server, topic, vsn):
    async with JsDriver() as js:
        await js.client("a", server.ws_url, make_token(exp_in=-60), vsn)
        await js.channel("a", "a", topic)
        await js.request({"op": "subscribe", "channel": "a"})
        await wait_status(js, "a", "CHANNEL_ERROR")
        # realtime-js retries after 1 s. The marker is the retry's close: without an open socket
        # nothing can subscribe, and the socket events below show neither attempt opened one.
        closes = itertools.count(1)
        await js.expect_nothing_before(
            lambda ev: ev["ev"] == "socket" and ev["state"] == "close" and next(closes) == 2,
            lambda ev: ev["ev"] == "status" and ev["status"] == "SUBSCRIBED",
            timeout=DELIVERY + 1_000 * MS,
        )
        socket = [(ev["state"], ev.get("error"), ev.get("code")) for ev in js.matching(lambda ev: ev["ev"] == "socket")]
        # The upgrade is refused with HTTP 401 each time (no open); realtime-js keeps retrying.
        assert socket[:4] == [
            ("error", "Unexpected server response: 401", None),
            ("close", None, 1006),
            ("error", "Unexpected server response: 401", None),
            ("close", None, 1006),
        ]
        assert status_events(js, "a")[0] == ("CHANNEL_ERROR", "channel error: transport failure")


@VSNS
async def test_join_with_an_expired_access_token_is_refused_with_its_age(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.client("a", server.ws_url, token, vsn)
        await js.channel("a", "a", topic)
        await js.request({"op": "setAuth", "client": "a", "token": make_token(exp_in=-60)})
        status = await js.subscribe("a")
        assert status["status"] == "CHANNEL_ERROR"
        assert_expired_text(status["error"], "InvalidJWTToken: ", 60, 60 + int(DELIVERY) + 2)
        # The socket itself (connected with a valid apikey) stays up.
        assert await js.request({"op": "raw", "client": "a", "expr": "client.isConnected()"}) is True


def _alg_none_token() -> str:
    return pyjwt.encode({"role": "anon", "exp": int(time.time()) + 3600}, None, algorithm="none")


JOIN_TOKEN_FAILURES = [
    pytest.param(
        lambda: make_token(secret="another-secret-" + "y" * 32),
        "JwtSignatureError: Failed to validate JWT signature",
        id="bad-signature",
    ),
    pytest.param(lambda: make_token(role=None), f"InvalidJWTToken: {MISSING_CLAIMS}", id="no-role"),
    pytest.param(lambda: make_token(exp_in=None), f"InvalidJWTToken: {MISSING_CLAIMS}", id="no-exp"),
    pytest.param(_alg_none_token, f"JwtSignerError: {SIGNER_TEXT}", id="alg-none"),
    pytest.param(lambda: "not-a-jwt", "MalformedJWT: The token provided is not a valid JWT", id="not-a-jwt"),
]


@VSNS
@pytest.mark.parametrize(("make_bad_token", "reason"), JOIN_TOKEN_FAILURES)
async def test_join_with_a_bad_access_token_is_refused_with_the_upstream_reason(
    server, token, topic, vsn, make_bad_token, reason
):
    async with JsDriver() as js:
        await js.client("a", server.ws_url, token, vsn)
        await js.channel("a", "a", topic)
        await js.request({"op": "setAuth", "client": "a", "token": make_bad_token()})
        status = await js.subscribe("a")
        assert (status["status"], status["error"]) == ("CHANNEL_ERROR", reason)


@VSNS
async def test_set_auth_with_a_new_valid_token_keeps_the_channel(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.join(
            "a", server.ws_url, token, topic, vsn=vsn, listen=("broadcast", "system"), client_options={"logger": True}
        )
        await js.join("b", server.ws_url, token, topic, vsn=vsn)
        start = js.mark()
        new_token = make_token(role="authenticated", sub="user-1")
        await js.request({"op": "setAuth", "client": "a", "token": new_token})
        pushed = await js.wait_for(
            lambda ev: ev["ev"] == "log" and ev["kind"] == "push" and "access_token" in ev["msg"], since=start
        )
        assert pushed["data"] == {"access_token": new_token}
        payload = {"type": "broadcast", "event": "after", "payload": {"n": 1}}
        await js.request({"op": "send", "channel": "b", "message": payload})
        await js.wait_for(lambda ev: ev["ev"] == "broadcast" and ev["channel"] == "a", timeout=DELIVERY, since=start)
        # The heartbeat follows the access_token push on a's socket: a refusal would come first.
        await js.nothing_pending("a", lambda ev: ev["ev"] in ("system", "status") and ev["channel"] == "a", start)
        assert await js.request({"op": "raw", "channel": "a", "expr": "channel.state"}) == "joined"


@VSNS
async def test_set_auth_with_an_expired_token_while_joined_closes_the_channel(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.join("a", server.ws_url, token, topic, vsn=vsn, listen=("system",))
        start = js.mark()
        await js.request({"op": "setAuth", "client": "a", "token": make_token(exp_in=-30)})
        system = await js.wait_for(lambda ev: ev["ev"] == "system", timeout=DELIVERY, since=start)
        assert {k: v for k, v in system["payload"].items() if k != "message"} == {
            "extension": "system",
            "status": "error",
            "channel": topic,
        }
        assert_expired_text(system["payload"]["message"], "", 30, 30 + int(DELIVERY) + 2)
        await wait_status(js, "a", "CLOSED", since=start)
        # The heartbeat marks the end of what the server answered to the token: no error status,
        # no rejoin.
        await js.nothing_pending("a", lambda ev: ev["ev"] == "status" and ev["status"] != "CLOSED", start)
        assert status_events(js, "a", start) == [("CLOSED", None)]


@VSNS
async def test_token_expiring_while_joined_closes_the_channel(server, topic, vsn):
    async with JsDriver() as js:
        await js.join("a", server.ws_url, make_token(exp_in=2_000 * MS), topic, vsn=vsn, listen=("system",))
        start = js.mark()
        system = await js.wait_for(lambda ev: ev["ev"] == "system", timeout=4_000 * MS, since=start)
        assert system["payload"]["status"] == "error"
        assert system["payload"]["extension"] == "system"
        assert system["payload"]["channel"] == topic
        assert_expired_text(system["payload"]["message"], "", 0, max(1, int(1_000 * MS)))
        await wait_status(js, "a", "CLOSED", since=start)
        assert status_events(js, "a", start) == [("CLOSED", None)]
        # A closed channel is not rejoined: realtime-js rejoins after a phx_error, which the server
        # would have sent with the close, before the heartbeat's reply.
        await js.nothing_pending("a", lambda ev: ev["ev"] == "status" and ev["status"] != "CLOSED", start)
        assert await js.request({"op": "raw", "channel": "a", "expr": "channel.state"}) == "closed"


@VSNS
async def test_private_channel_join_without_policies_is_unauthorized(server, token, topic, vsn):
    async with JsDriver() as js:
        await js.client("a", server.ws_url, token, vsn)
        await js.channel("a", "a", topic, private=True)
        status = await js.subscribe("a")
        assert (status["status"], status["error"]) == (
            "CHANNEL_ERROR",
            f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}",
        )


@VSNS
async def test_access_token_callback_refresh_on_heartbeat_keeps_the_channel_past_the_first_expiry(
    server, token, topic, vsn
):
    async with JsDriver() as js:
        short = make_token(exp_in=2_000 * MS)
        options = {"accessToken": short, "heartbeatIntervalMs": round(400 * MS * 1000), "logger": True}
        await js.client("a", server.ws_url, token, vsn, **options)
        # Connected first, so the join already carries the callback's token.
        await js.request({"op": "connect", "client": "a"})
        await js.wait_for(lambda ev: ev["ev"] == "socket" and ev["state"] == "open", DELIVERY)
        await js.channel("a", "a", topic)
        await js.on("a", "system")
        await js.on("a", "broadcast", event="*")
        await js.subscribed("a")
        joins = js.matching(lambda ev: ev["ev"] == "log" and ev["kind"] == "push" and "phx_join" in ev["msg"])
        assert [ev["data"]["access_token"] for ev in joins] == [short]
        start = js.mark()
        fresh = make_token(exp_in=3600, sub="user-1")
        await js.request({"op": "raw", "client": "a", "expr": f"setAccessToken({fresh!r})"})
        pushed = await js.wait_for(
            lambda ev: ev["ev"] == "log" and ev["kind"] == "push" and "access_token" in ev["msg"], DELIVERY, start
        )
        assert pushed["data"] == {"access_token": fresh}
        # The first token expires meanwhile; the channel runs on the fresh one. The wrong push is
        # due at a known time, the short token's expiry: once the clock is past it (with slack for
        # the server's timer), a heartbeat sent after that is the marker. The client sends its
        # own every 400 ms; a second one of ours would count as a timeout.
        expiry = pyjwt.decode(short, options={"verify_signature": False})["exp"]
        await asyncio.sleep(max(0.0, expiry - time.time()) + 500 * MS)
        sent = js.mark()
        beat = await js.wait_for(lambda ev: ev["ev"] == "heartbeat" and ev["status"] == "sent", DELIVERY, sent)
        heartbeat_sent = js.events.index(beat, sent)
        await js.expect_nothing_before(
            lambda ev: ev["ev"] == "heartbeat" and ev["status"] == "ok",
            lambda ev: ev["ev"] in ("system", "status"),
            since=start,
            timeout=DELIVERY,
            marker_since=heartbeat_sent,
        )
        await js.join("b", server.ws_url, token, topic, vsn=vsn)
        message = {"type": "broadcast", "event": "still-joined", "payload": {}}
        await js.request({"op": "send", "channel": "b", "message": message})
        found = await js.wait_for(lambda ev: ev["ev"] == "broadcast" and ev["channel"] == "a", DELIVERY, start)
        assert found["payload"] == message


@VSNS
async def test_access_token_callback_returning_the_same_token_lets_the_channel_expire(server, token, topic, vsn):
    async with JsDriver() as js:
        short = make_token(exp_in=2_000 * MS)
        await js.client("a", server.ws_url, token, vsn, accessToken=short, heartbeatIntervalMs=round(400 * MS * 1000))
        await js.request({"op": "connect", "client": "a"})
        await js.wait_for(lambda ev: ev["ev"] == "socket" and ev["state"] == "open", DELIVERY)
        await js.channel("a", "a", topic)
        await js.on("a", "system")
        await js.subscribed("a")
        system = await js.wait_for(lambda ev: ev["ev"] == "system", 4_000 * MS)
        assert_expired_text(system["payload"]["message"], "", 0, max(1, int(1_000 * MS)))
        await wait_status(js, "a", "CLOSED")
