"""The Phoenix wire protocol end to end, frame by frame, against `realtime-core serve`.

Raw `websockets` clients (wire.RawClient) send hand-built V1 objects, V2 arrays
and binary frames, and compare the server's frames as decoded JSON (or parsed
bytes for binary kinds). Sections follow docs/protocol.md §1.4, §1.5, §2, §3, §4.1, §5 and §8
(connect-time answers, heartbeat and idle, framing and refs, joins, broadcast,
presence, tokens)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import jwt as pyjwt
import pytest
from conftest import BUCKET_WAIT, MS, make_token, server_ms
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode
from wire import V1, V2, Frame, RawClient, connect_refused, kind3, metric, parse_kind4

pytestmark = pytest.mark.pg

BOTH = pytest.mark.parametrize("vsn", [V1, V2])
V1_KEYS = {"topic", "event", "payload", "ref"}


def rt(topic: str) -> str:
    return f"realtime:{topic}"


async def open_client(server, vsn: str = V2, token: str | None = None) -> RawClient:
    return await RawClient.open(server.socket_url(token or make_token(), vsn), vsn)


async def joined(server, topic: str, vsn: str = V2, config: dict | None = None, **payload) -> tuple[RawClient, str]:
    """A client that has joined realtime:<topic>; returns it and the join_ref."""
    client = await open_client(server, vsn)
    reply = await client.join(rt(topic), config, **payload)
    return client, reply.ref


def is_marker(frame: object) -> bool:
    return isinstance(frame, Frame) and frame.event == "broadcast" and frame.payload.get("event") == "marker"


async def send_marker(sender: RawClient, join_ref: str, topic: str, *receivers: RawClient) -> None:
    """A JSON broadcast "marker" from `sender` on its channel; each receiver must get it with
    nothing before: a broadcast the sender sent earlier would be delivered first."""
    await sender.send(
        [join_ref, "marker", rt(topic), "broadcast", {"type": "broadcast", "event": "marker", "payload": {}}]
    )
    for receiver in receivers:
        await receiver.expect_nothing_before(is_marker)


def system(topic: str, message: str, status: str = "error") -> dict:
    return {"extension": "system", "status": status, "message": message, "channel": topic}


async def assert_shut_down(client: RawClient, join_ref: str, topic: str, text: str) -> None:
    """docs/protocol.md §3.6: the channel's next frames are a system error with `text`, then phx_close."""
    assert (await client.recv()).raw == [join_ref, None, rt(topic), "system", system(topic, text)]
    assert (await client.recv()).raw == [join_ref, join_ref, rt(topic), "phx_close", {}]


# -- docs/protocol.md §1.4 connect-time checks ---------------------------------------------------


async def test_connect_without_apikey_is_refused_with_401_api_key_missing(server):
    refused = await connect_refused(server.socket_url(None, V2))
    assert refused.status == 401
    assert refused.json() == {"error": "API key is missing"}


@pytest.mark.parametrize(
    ("token", "text"),
    [
        pytest.param(make_token(exp_in=-60), "Token has expired", id="expired"),
        pytest.param(
            make_token(secret="another-secret-" + "y" * 32), "Failed to validate JWT signature", id="signature"
        ),
        pytest.param("not-a-jwt", "The token provided is not a valid JWT", id="malformed"),
        pytest.param(make_token(role=None), "Fields `role` and `exp` are required in JWT", id="no-role"),
        pytest.param(make_token(exp_in=None), "Fields `role` and `exp` are required in JWT", id="no-exp"),
        pytest.param(
            pyjwt.encode({"role": "anon", "exp": int(time.time()) + 3600}, key=None, algorithm="none"),
            "Failed to generate JWT signer, check your JWT secret or JWKS configuration",
            id="alg-none",
        ),
    ],
)
async def test_connect_with_a_bad_token_is_refused_with_401_and_the_upstream_text(server, token, text):
    refused = await connect_refused(server.socket_url(token, V2))
    assert refused.status == 401
    assert refused.json() == {"error": text}


async def test_x_api_key_header_overrides_the_apikey_parameter(server):
    async with await RawClient.open(server.socket_url("not-a-jwt", V2), headers={"x-api-key": make_token()}) as client:
        assert (await client.heartbeat()).status == "ok"

    refused = await connect_refused(server.socket_url(make_token(), V2), headers={"x-api-key": "not-a-jwt"})
    assert refused.status == 401
    assert refused.json() == {"error": "The token provided is not a valid JWT"}


async def test_failing_connect_is_answered_only_after_connect_error_backoff(server_factory):
    srv = server_factory({"CONNECT_ERROR_BACKOFF_MS": server_ms(400)})
    refused = await connect_refused(srv.socket_url("not-a-jwt", V2))
    assert refused.status == 401
    assert refused.elapsed >= 400 * MS


async def test_unsupported_vsn_is_refused_with_403_empty_body_without_backoff(server_factory):
    srv = server_factory({"CONNECT_ERROR_BACKOFF_MS": server_ms(400)})
    refused = await connect_refused(srv.socket_url(make_token(), "3.0.0"))
    assert refused.status == 403
    assert refused.body == b""
    assert refused.elapsed < 400 * MS


@pytest.mark.parametrize(
    ("vsn", "speaks"),
    [("1.0.0", V1), ("1.0.7", V1), ("2.0.0", V2), ("2.0.3", V2), ("2.0.1-beta", V2)],
)
async def test_vsn_is_negotiated_by_version_requirement(server, vsn, speaks):
    """Upstream's serializers are chosen by `~> 1.0.0` / `~> 2.0.0` (RT endpoint.ex; PHX negotiate_serializer)."""
    async with await RawClient.open(server.socket_url(make_token(), vsn), speaks) as client:
        await client.push("phoenix", "heartbeat", {}, ref="1")
        reply = {"status": "ok", "response": {}}
        assert (await client.recv()).raw == client.encode(None, "1", "phoenix", "phx_reply", reply)


@pytest.mark.parametrize("vsn", ["", "2", "2.0", "2.1.0", "1.1.0", "3.0.0", "2.0.0-rc.1", "v2.0.0", "two"])
async def test_vsn_outside_the_requirements_is_refused_with_403(server, vsn):
    refused = await connect_refused(server.socket_url(make_token(), vsn))
    assert refused.status == 403
    assert refused.body == b""


async def test_missing_vsn_means_v1(server):
    async with await RawClient.open(server.socket_url(make_token()), V1) as client:
        await client.send({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "7"})
        frame = await client.recv()
        assert frame.raw == {
            "topic": "phoenix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": "7",
        }


async def test_connect_beyond_max_concurrent_users_is_refused_with_429(server_factory, topic):
    srv = server_factory({"TENANT_MAX_CONCURRENT_USERS": "1"})
    first, _ = await joined(srv, topic)  # a socket counts as a user once it joined
    async with first:
        refused = await connect_refused(srv.socket_url(make_token(), V2))
        assert refused.status == 429
        assert refused.json() == {"error": "Too many connected users"}
    # The user is released once the server has seen the socket close: retry until then.
    deadline = time.monotonic() + 3000 * MS
    while True:
        try:
            again = await open_client(srv)
            break
        except InvalidStatus as exc:
            assert exc.response.status_code == 429 and time.monotonic() < deadline, exc
            await asyncio.sleep(10 * MS)
    async with again:
        await again.join(rt(topic))


async def test_join_beyond_max_concurrent_users_is_refused(server_factory, topic):
    srv = server_factory({"TENANT_MAX_CONCURRENT_USERS": "1"})
    async with await open_client(srv) as first, await open_client(srv) as second:
        await first.join(rt(topic))
        reply = await second.join(rt(topic), expect_ok=False)
        assert reply.payload == {
            "status": "error",
            "response": {"reason": "ConnectionRateLimitReached: Too many connected users"},
        }
        # A socket already counted may join more channels.
        await first.join(rt(topic + "-2"))


async def test_connect_with_a_failing_claim_validator_is_refused_with_500(server_factory):
    srv = server_factory({"JWT_CLAIM_VALIDATORS": json.dumps({"iss": "supabase"})})
    refused = await connect_refused(srv.socket_url(make_token(iss="someone-else"), V2))
    assert refused.status == 500
    assert refused.json() == {"error": "Error connecting to Realtime"}
    async with await open_client(srv, V2, make_token(iss="supabase")) as client:
        assert (await client.heartbeat()).status == "ok"


async def test_apikey_is_url_decoded_and_stripped_of_whitespace(server):
    token = make_token()
    spaced = "%20" + token[:10] + "%0A" + token[10:] + "%20"
    async with await RawClient.open(f"{server.ws_url}/websocket?apikey={spaced}&vsn=2.0.0") as client:
        assert (await client.heartbeat()).status == "ok"


@pytest.mark.parametrize("level", ["info", "warning", "error", "warn", "bogus"])
async def test_any_log_level_is_accepted(server, level):
    async with await RawClient.open(server.socket_url(make_token(), V2) + f"&log_level={level}") as client:
        assert (await client.heartbeat()).status == "ok"


@pytest.mark.parametrize("path", ["/socket/websocket", "/realtime/v1/websocket"])
async def test_both_socket_paths_accept_connections(server, path, topic):
    url = f"ws://127.0.0.1:{server.port}{path}?apikey={make_token()}&vsn=2.0.0"
    async with await RawClient.open(url) as client:
        assert (await client.heartbeat()).status == "ok"
        await client.join(rt(topic))


# -- docs/protocol.md §1.5 heartbeat and idle ------------------------------------------------------


async def test_heartbeat_reply_v2_is_an_array_on_phoenix_with_the_ref_and_null_join_ref(server):
    async with await open_client(server, V2) as client:
        await client.send([None, "42", "phoenix", "heartbeat", {}])
        frame = await client.recv()
        assert frame.raw == [None, "42", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


async def test_heartbeat_reply_v1_is_an_object_with_the_ref_and_no_join_ref(server):
    async with await open_client(server, V1) as client:
        await client.send({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "42", "join_ref": None})
        frame = await client.recv()
        assert frame.raw == {
            "topic": "phoenix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": "42",
        }


async def test_heartbeat_with_a_null_ref_is_answered_with_a_null_ref(server):
    """realtime-py sends its heartbeats with ref null (docs/protocol.md §1.5)."""
    async with await open_client(server, V1) as client:
        await client.send({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": None, "join_ref": None})
        frame = await client.recv()
        assert frame.raw == {
            "topic": "phoenix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": None,
        }


async def test_v2_array_elements_after_the_fifth_are_ignored(server):
    async with await open_client(server, V2) as client:
        await client.send([None, "3", "phoenix", "heartbeat", {}, "extra", 1])
        assert (await client.recv()).raw == [None, "3", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


async def test_idle_connection_is_closed_after_idle_timeout(server_factory):
    srv = server_factory({"REALTIME_IDLE_TIMEOUT_MS": server_ms(300)})
    started = time.monotonic()  # before the upgrade: the server's idle clock starts after it
    async with await open_client(srv) as client:
        closed = await client.closed(timeout=3000 * MS)
        assert time.monotonic() - started >= 300 * MS
        assert closed.rcvd is not None, "the server sends a close frame"
        assert closed.rcvd.code == CloseCode.NORMAL_CLOSURE


async def test_connection_sending_heartbeats_is_not_closed_for_idleness(server_factory):
    srv = server_factory({"REALTIME_IDLE_TIMEOUT_MS": server_ms(300)})
    async with await open_client(srv) as client:
        for _ in range(10):  # 1 s, three idle timeouts
            assert (await client.heartbeat()).status == "ok"
            await asyncio.sleep(100 * MS)
        assert (await client.heartbeat()).status == "ok"


# -- docs/protocol.md §2 framing and refs ----------------------------------------------------------


async def test_v2_refs_reply_echoes_join_ref_push_carries_join_ref_fanout_has_none_close_uses_join_ref(server, topic):
    other, _ = await joined(server, topic)
    async with other, await open_client(server, V2) as client:
        await client.send(["j1", "j1", rt(topic), "phx_join", {"config": {"presence": {"enabled": True}}}])
        reply = await client.recv()
        assert reply.raw == ["j1", "j1", rt(topic), "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}]
        state = await client.recv()
        assert state.raw == ["j1", None, rt(topic), "presence_state", {}]

        await other.push(rt(topic), "broadcast", {"type": "broadcast", "event": "e", "payload": {"n": 1}})
        fanout = await client.recv()
        assert fanout.raw == [
            None,
            None,
            rt(topic),
            "broadcast",
            {"type": "broadcast", "event": "e", "payload": {"n": 1}},
        ]

        await client.send(["j1", "r9", rt(topic), "phx_leave", {}])
        assert (await client.recv()).raw == ["j1", "r9", rt(topic), "phx_reply", {"status": "ok", "response": {}}]
        assert (await client.recv()).raw == ["j1", "j1", rt(topic), "phx_close", {}]


async def test_v1_frames_never_carry_a_join_ref_key(server, topic):
    other, _ = await joined(server, topic)
    async with other, await open_client(server, V1) as client:
        frames: list[Frame] = []
        await client.send({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"})
        frames.append(await client.recv())
        await client.send(
            {
                "topic": rt(topic),
                "event": "phx_join",
                "payload": {"config": {"presence": {"enabled": True, "key": "k"}}},
                "ref": "2",
                "join_ref": "2",
            }
        )
        frames.append(await client.recv())  # reply
        frames.append(await client.recv())  # presence_state
        await client.send(
            {
                "topic": rt(topic),
                "event": "presence",
                "payload": {"type": "presence", "event": "track", "payload": {"a": 1}},
                "ref": "3",
                "join_ref": "2",
            }
        )
        frames.append(await client.expect(lambda f: f.event == "phx_reply"))
        frames.append(await client.expect(lambda f: f.event == "presence_diff"))
        await other.push(rt(topic), "broadcast", {"type": "broadcast", "event": "e", "payload": {}})
        frames.append(await client.expect(lambda f: f.event == "broadcast"))
        await client.send({"topic": rt(topic), "event": "phx_leave", "payload": {}, "ref": "4", "join_ref": "2"})
        frames.append(await client.recv())
        frames.append(await client.recv())

        assert [f.event for f in frames] == [
            "phx_reply",
            "phx_reply",
            "presence_state",
            "phx_reply",
            "presence_diff",
            "broadcast",
            "phx_reply",
            "phx_close",
        ]
        for frame in frames:
            assert set(frame.raw) == V1_KEYS, frame.raw
        assert frames[1].raw["ref"] == "2"
        assert frames[2].raw["ref"] is None
        assert frames[5].raw["ref"] is None
        assert frames[7].raw == {"topic": rt(topic), "event": "phx_close", "payload": {}, "ref": "2"}


@BOTH
async def test_message_to_an_unjoined_topic_gets_unmatched_topic_with_null_join_ref(server, vsn, topic):
    async with await open_client(server, vsn) as client:
        await client.push(
            rt(topic), "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, ref="5", join_ref="3"
        )
        frame = await client.recv()
        assert frame.topic == rt(topic)
        assert frame.ref == "5"
        assert frame.join_ref is None
        assert frame.payload == {"status": "error", "response": {"reason": "unmatched topic"}}


@BOTH
@pytest.mark.parametrize("bad_topic", ["room1", "realtime", "phoenix"])
async def test_join_on_a_topic_outside_realtime_gets_unmatched_topic(server, vsn, bad_topic):
    async with await open_client(server, vsn) as client:
        await client.push(bad_topic, "phx_join", {"config": {}}, ref="8", join_ref="8")
        frame = await client.recv()
        assert (frame.topic, frame.event, frame.ref, frame.join_ref) == (bad_topic, "phx_reply", "8", None)
        assert frame.payload == {"status": "error", "response": {"reason": "unmatched topic"}}
        if vsn == V2:
            assert frame.raw[0] is None


@BOTH
async def test_join_on_realtime_colon_requires_a_topic_name(server, vsn):
    async with await open_client(server, vsn) as client:
        reply = await client.join("realtime:", expect_ok=False)
        assert reply.payload == {
            "status": "error",
            "response": {"reason": "TopicNameRequired: You must provide a topic name"},
        }


@BOTH
async def test_leave_on_a_joined_topic_replies_ok_then_closes(server, vsn, topic):
    client, join_ref = await joined(server, topic, vsn)
    async with client:
        ref = await client.push(rt(topic), "phx_leave", {}, join_ref=join_ref)
        reply = await client.recv()
        assert (reply.event, reply.ref, reply.payload) == ("phx_reply", ref, {"status": "ok", "response": {}})
        close = await client.recv()
        assert (close.event, close.ref, close.payload) == ("phx_close", join_ref, {})
        # The topic is no longer joined.
        await client.push(rt(topic), "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, ref="x")
        frame = await client.recv()
        assert frame.payload == {"status": "error", "response": {"reason": "unmatched topic"}}


@BOTH
async def test_leave_on_an_unjoined_topic_replies_ok_only(server, vsn, topic):
    async with await open_client(server, vsn) as client:
        ref = await client.push(rt(topic), "phx_leave", {}, join_ref="4")
        reply = await client.recv()
        assert (reply.event, reply.ref, reply.payload) == ("phx_reply", ref, {"status": "ok", "response": {}})
        if vsn == V2:
            assert reply.join_ref == "4"  # PHX socket.ex echoes the leave's join_ref
        await client.nothing_pending()  # no phx_close


async def test_duplicate_join_closes_the_old_join_ref_then_answers_the_new_one(server, topic):
    async with await open_client(server, V2) as client:
        await client.join(rt(topic), join_ref="1")
        await client.send(["5", "5", rt(topic), "phx_join", {"config": {}}])
        assert (await client.recv()).raw == ["1", "1", rt(topic), "phx_close", {}]
        assert (await client.recv()).raw == [
            "5",
            "5",
            rt(topic),
            "phx_reply",
            {"status": "ok", "response": {"postgres_changes": []}},
        ]


async def test_messages_with_a_stale_join_ref_are_dropped(server, topic):
    config = {"broadcast": {"ack": True, "self": True}}
    async with await open_client(server, V2) as client:
        await client.join(rt(topic), config, join_ref="1")
        await client.send(["2", "2", rt(topic), "phx_join", {"config": config}])
        assert (await client.recv()).event == "phx_close"
        assert (await client.recv()).status == "ok"
        msg = {"type": "broadcast", "event": "e", "payload": {"n": 1}}
        await client.send(["1", "10", rt(topic), "broadcast", msg])
        # The next message is the marker: a delivery or a reply for the stale one would come first.
        await client.send(["2", "11", rt(topic), "broadcast", msg])
        frames = [await client.recv(), await client.recv()]
        events = sorted((f.event, f.ref) for f in frames)
        assert events == [("broadcast", None), ("phx_reply", "11")]
        # A null join_ref is accepted (the V1 path).
        await client.send([None, "12", rt(topic), "broadcast", msg])
        frames = [await client.recv(), await client.recv()]
        assert sorted((f.event, f.ref) for f in frames) == [("broadcast", None), ("phx_reply", "12")]


async def test_frames_up_to_several_megabytes_are_read(server):
    async with await open_client(server, V2) as client:
        await client.send([None, "1", "phoenix", "heartbeat", {}, "x" * 4_000_000])
        assert (await client.recv()).raw == [None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


async def test_fragmented_messages_are_reassembled(server, topic):
    receiver, _ = await joined(server, topic)
    sender, join_ref = await joined(server, topic)
    async with receiver, sender:
        text = json.dumps(
            [join_ref, "2", rt(topic), "broadcast", {"type": "broadcast", "event": "frag", "payload": {}}]
        )
        await sender.ws.send([text[:10], text[10:30], text[30:]])
        assert (await receiver.recv()).payload["event"] == "frag"
        body = kind3(rt(topic), "bin", b"\x00\x01\x02", join_ref=join_ref, ref="3", encoding=0)
        await sender.ws.send([body[:4], body[4:]])
        assert parse_kind4(await receiver.recv()).payload == b"\x00\x01\x02"


@BOTH
async def test_malformed_frames_are_dropped_and_the_connection_stays_usable(server, vsn):
    if vsn == V2:
        bad = [
            "not json",
            json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}),  # V1 shape on V2
            json.dumps([None, "1", "phoenix"]),  # too short
            json.dumps([None, "1", 5, "heartbeat", {}]),  # topic not a string
            bytes([9, 0, 0, 0]),  # unknown binary kind
            bytes([3, 1, 1, 14]),  # truncated kind 3
            kind3("realtime:room1", "e", b"{", join_ref="1", ref="2"),  # JSON encoding, not JSON
        ]
    else:
        bad = [
            "not json",
            json.dumps([None, "1", "phoenix", "heartbeat", {}]),  # V2 shape on V1
            json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}}),  # no ref
            json.dumps({"topic": "phoenix", "event": 3, "payload": {}, "ref": "1"}),
            kind3("realtime:room1", "e", b"{}", join_ref="1", ref="2"),  # V1 has no binary frames
        ]
    before = metric(server.http_url, "realtime_malformed_messages_total")
    async with await open_client(server, vsn) as client:
        for frame in bad:
            await client.send(frame)
        await client.nothing_pending()
    assert metric(server.http_url, "realtime_malformed_messages_total") == before + len(bad)


# -- docs/protocol.md §3 joins ---------------------------------------------------------------------


async def test_third_channel_beyond_max_channels_per_client_is_refused(server_factory, topic):
    srv = server_factory({"TENANT_MAX_CHANNELS_PER_CLIENT": "2"})
    async with await open_client(srv) as client:
        await client.join(rt(topic + "-a"))
        await client.join(rt(topic + "-b"))
        reply = await client.join(rt(topic + "-c"), expect_ok=False)
        assert reply.payload == {
            "status": "error",
            "response": {"reason": "ChannelRateLimitReached: Too many channels"},
        }
        # Leaving a channel frees its slot.
        await client.push(rt(topic + "-a"), "phx_leave", {})
        await client.expect_event(rt(topic + "-a"), "phx_close")
        await client.join(rt(topic + "-c"))
    # The limit is per socket.
    async with await open_client(srv) as other:
        await other.join(rt(topic + "-c"))


@pytest.mark.slow
async def test_tenant_over_its_joins_per_second_refuses_joins_and_connects(server_factory, topic):
    """Rate counters average 5 s buckets (docs/protocol.md §9.2), so this waits one bucket."""
    srv = server_factory({"TENANT_MAX_JOINS_PER_SECOND": "1"})
    async with await open_client(srv) as client:
        for i in range(10):  # 10 joins in the first bucket: 2 joins/s once it closes
            await client.join(rt(f"{topic}-{i}"))
        await asyncio.sleep(BUCKET_WAIT)
        reply = await client.join(rt(topic), expect_ok=False)
        assert reply.payload == {
            "status": "error",
            "response": {"reason": "ClientJoinRateLimitReached: Too many joins per second"},
        }
        closed = await client.closed()
        assert closed.rcvd is not None and closed.rcvd.code == CloseCode.GOING_AWAY
    refused = await connect_refused(srv.socket_url(make_token(), V2))
    assert refused.status == 429
    assert refused.json() == {"error": "Too many joins per second"}


async def test_join_error_reply_waits_channel_error_backoff(server_factory):
    srv = server_factory({"CHANNEL_ERROR_BACKOFF_MS": server_ms(400)})
    async with await open_client(srv) as client:
        started = time.monotonic()
        reply = await client.join("realtime:", expect_ok=False)
        assert time.monotonic() - started >= 400 * MS
        assert reply.status == "error"


async def test_public_join_on_a_private_only_tenant_is_refused(server_factory, topic):
    srv = server_factory({"TENANT_PRIVATE_ONLY": "true"})
    async with await open_client(srv) as client:
        reply = await client.join(rt(topic), expect_ok=False)
        assert reply.payload == {
            "status": "error",
            "response": {"reason": "PrivateOnly: This project only allows private channels"},
        }


async def test_private_join_without_read_permission_is_unauthorized(server, topic):
    async with await open_client(server) as client:
        reply = await client.join(rt(topic), {"private": True}, expect_ok=False)
        assert reply.payload == {
            "status": "error",
            "response": {
                "reason": f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"
            },
        }


@pytest.mark.parametrize(
    "payload",
    [{"config": "nonsense"}, {"config": {"broadcast": 5, "presence": [], "postgres_changes": None}}, []],
    ids=["config-string", "wrong-types", "payload-list"],
)
async def test_join_with_an_invalid_payload_still_joins(server, topic, payload):
    async with await open_client(server) as client:
        await client.send(["1", "1", rt(topic), "phx_join", payload])
        reply = await client.recv()
        assert reply.ref == "1"
        assert reply.status == "ok"


async def test_join_config_booleans_accept_strings_in_any_case(server, topic):
    async with await open_client(server) as client:
        await client.send(["1", "1", rt(topic), "phx_join", {"config": {"broadcast": {"self": "TRUE", "ack": "True"}}}])
        assert (await client.recv()).status == "ok"
        msg = {"type": "broadcast", "event": "e", "payload": {}}
        await client.send(["1", "2", rt(topic), "broadcast", msg])
        frames = [await client.recv(), await client.recv()]
        assert sorted((f.event, f.ref) for f in frames) == [("broadcast", None), ("phx_reply", "2")]


async def test_join_reply_lists_postgres_changes_in_request_order_with_stable_integer_ids(server, topic):
    changes = [
        {"event": "INSERT", "schema": "public", "table": "todos"},
        {"event": "*", "schema": "public", "table": "notes", "filter": "id=eq.1"},
        {"event": "INSERT", "schema": "public", "table": "todos"},
    ]
    async with await open_client(server) as client:
        reply = await client.join(rt(topic), {"postgres_changes": changes})
        listed = reply.response["postgres_changes"]
        assert [{k: v for k, v in c.items() if k != "id"} for c in listed] == changes
        ids = [c["id"] for c in listed]
        assert all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        assert ids[0] == ids[2] != ids[1]


async def test_join_with_an_expired_access_token_is_refused(server, topic):
    async with await open_client(server) as client:
        made = time.time()
        reply = await client.join(rt(topic), access_token=make_token(exp_in=-30), expect_ok=False)
        assert reply.status == "error"
        reason = reply.response["reason"]
        assert reason.startswith("InvalidJWTToken: Token has expired ") and reason.endswith(" seconds ago")
        # exp is whole seconds: the age is 30 s plus what the join took, give or take one.
        assert 29 <= int(reason.split()[-3]) <= 31 + int(time.time() - made)


# -- docs/protocol.md §4.1 broadcast over the socket ---------------------------------------------------


async def test_oversize_broadcast_with_ack_gets_a_bare_string_error(server_factory, topic):
    srv = server_factory({"TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1"})
    receiver, _ = await joined(srv, topic)
    sender, join_ref = await joined(srv, topic, config={"broadcast": {"ack": True}})
    async with receiver, sender:
        big = {"type": "broadcast", "event": "e", "payload": {"blob": "x" * 2000}}
        await sender.send([join_ref, "7", rt(topic), "broadcast", big])
        assert (await sender.recv()).raw == [
            join_ref,
            "7",
            rt(topic),
            "phx_reply",
            {"status": "error", "response": "payload_size_exceeded"},
        ]
        await send_marker(sender, join_ref, topic, receiver)


async def test_oversize_broadcast_without_ack_is_dropped_silently(server_factory, topic):
    srv = server_factory({"TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1"})
    receiver, _ = await joined(srv, topic)
    sender, join_ref = await joined(srv, topic)
    async with receiver, sender:
        big = {"type": "broadcast", "event": "big", "payload": {"blob": "x" * 2000}}
        await sender.send([join_ref, "7", rt(topic), "broadcast", big])
        await sender.nothing_pending()
        # "small" is the marker: the receiver's next frame.
        small = {"type": "broadcast", "event": "small", "payload": {}}
        await sender.send([join_ref, "8", rt(topic), "broadcast", small])
        assert (await receiver.recv()).payload == small


async def test_oversize_binary_broadcast_with_ack_gets_a_bare_string_error(server_factory, topic):
    srv = server_factory({"TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1"})
    receiver, _ = await joined(srv, topic)
    sender, join_ref = await joined(srv, topic, config={"broadcast": {"ack": True}})
    async with receiver, sender:
        await sender.send(kind3(rt(topic), "e", b"\x01" * 2000, join_ref=join_ref, ref="7", encoding=0))
        assert (await sender.recv()).raw == [
            join_ref,
            "7",
            rt(topic),
            "phx_reply",
            {"status": "error", "response": "payload_size_exceeded"},
        ]
        await send_marker(sender, join_ref, topic, receiver)


async def test_broadcast_ack_replies_ok_with_an_empty_response(server, topic):
    sender, join_ref = await joined(server, topic, config={"broadcast": {"ack": True}})
    async with sender:
        await sender.send([join_ref, "3", rt(topic), "broadcast", {"type": "broadcast", "event": "e", "payload": {}}])
        assert (await sender.recv()).raw == [join_ref, "3", rt(topic), "phx_reply", {"status": "ok", "response": {}}]


async def test_binary_kind3_json_broadcast_reaches_v2_as_kind4_and_v1_as_json(server, topic):
    v2_receiver, _ = await joined(server, topic, V2)
    v1_receiver, _ = await joined(server, topic, V1)
    sender, join_ref = await joined(server, topic, V2)
    async with v2_receiver, v1_receiver, sender:
        body = b'{"text":"hi","n":[1,2]}'
        await sender.send(kind3(rt(topic), "chat", body, join_ref=join_ref, ref="9"))

        frame = parse_kind4(await v2_receiver.recv())
        assert (frame.topic, frame.event, frame.metadata, frame.encoding) == (rt(topic), "chat", b"", 1)
        assert frame.payload == body

        json_frame = await v1_receiver.recv()
        assert json_frame.raw == {
            "topic": rt(topic),
            "event": "broadcast",
            "payload": {"event": "chat", "payload": {"text": "hi", "n": [1, 2]}, "type": "broadcast"},
            "ref": None,
        }
        await sender.nothing_pending()  # self is false and there is no ack


async def test_binary_kind3_binary_broadcast_reaches_v2_only(server, topic):
    v2_receiver, _ = await joined(server, topic, V2)
    v1_receiver, _ = await joined(server, topic, V1)
    sender, join_ref = await joined(server, topic, V2)
    async with v2_receiver, v1_receiver, sender:
        body = bytes(range(256))
        await sender.send(kind3(rt(topic), "bin", body, join_ref=join_ref, ref="9", encoding=0))
        frame = parse_kind4(await v2_receiver.recv())
        assert (frame.topic, frame.event, frame.metadata, frame.encoding, frame.payload) == (
            rt(topic),
            "bin",
            b"",
            0,
            body,
        )
        await send_marker(sender, join_ref, topic, v1_receiver)


async def test_binary_kind3_with_self_and_ack_reaches_the_sender_and_is_acked(server, topic):
    sender, join_ref = await joined(server, topic, V2, config={"broadcast": {"ack": True, "self": True}})
    async with sender:
        await sender.send(kind3(rt(topic), "e", b"{}", join_ref=join_ref, ref="9"))
        frames = [await sender.recv(), await sender.recv()]
        binary = [f for f in frames if isinstance(f, bytes)]
        replies = [f for f in frames if isinstance(f, Frame)]
        assert parse_kind4(binary[0]).event == "e"
        assert replies[0].raw == [join_ref, "9", rt(topic), "phx_reply", {"status": "ok", "response": {}}]


@pytest.mark.slow
async def test_deliveries_while_over_the_events_per_second_limit_shut_the_receiver(server_factory, topic):
    """Rate counters average 5 s buckets (docs/protocol.md §9.2), so this waits one bucket."""
    srv = server_factory({"TENANT_MAX_EVENTS_PER_SECOND": "1"})
    receiver, receiver_ref = await joined(srv, topic)
    sender, sender_ref = await joined(srv, topic)
    async with receiver, sender:
        msg = {"type": "broadcast", "event": "e", "payload": {}}
        for i in range(10):  # 20 events in the first bucket (a send and a delivery each)
            await sender.send([sender_ref, str(i), rt(topic), "broadcast", msg])
            assert (await receiver.recv()).event == "broadcast"
        await asyncio.sleep(BUCKET_WAIT)
        await sender.send([sender_ref, "99", rt(topic), "broadcast", msg])
        await assert_shut_down(receiver, receiver_ref, topic, "Too many messages per second")


# -- docs/protocol.md §5 presence ------------------------------------------------------------------


async def test_presence_calls_beyond_the_per_channel_limit_shut_the_channel(server_factory, topic):
    srv = server_factory({"CLIENT_PRESENCE_MAX_CALLS": "2"})
    client, join_ref = await joined(srv, topic)
    async with client:
        for i in range(2):
            ref = await client.push(
                rt(topic), "presence", {"type": "presence", "event": "track", "payload": {"i": i}}, join_ref=join_ref
            )
            assert (await client.reply_to(ref, rt(topic))).status == "ok"
        await client.push(
            rt(topic), "presence", {"type": "presence", "event": "track", "payload": {"i": 9}}, join_ref=join_ref
        )
        sys_frame = await client.expect_event(rt(topic), "system")
        assert sys_frame.raw == [
            join_ref,
            None,
            rt(topic),
            "system",
            system(topic, "Client presence rate limit exceeded"),
        ]
        assert (await client.recv()).raw == [join_ref, join_ref, rt(topic), "phx_close", {}]


@pytest.mark.parametrize("payload", [["a"], "text", 3])
async def test_presence_track_with_a_non_object_payload_is_an_error(server, topic, payload):
    client, join_ref = await joined(server, topic)
    async with client:
        await client.send(
            [join_ref, "4", rt(topic), "presence", {"type": "presence", "event": "track", "payload": payload}]
        )
        assert (await client.recv()).raw == [
            join_ref,
            "4",
            rt(topic),
            "phx_reply",
            {"status": "error", "response": {"reason": "Presence track payload must be a map"}},
        ]


async def test_presence_state_then_diffs_for_track_update_and_leave(server, topic):
    config = {"presence": {"enabled": True, "key": "alice"}}
    alice, alice_ref = await joined(server, topic, config=config)
    watcher, _ = await joined(server, topic, config={"presence": {"enabled": True, "key": "bob"}})
    async with alice, watcher:
        assert (await alice.expect_event(rt(topic), "presence_state")).payload == {}
        assert (await watcher.expect_event(rt(topic), "presence_state")).payload == {}

        await alice.push(
            rt(topic), "presence", {"type": "presence", "event": "track", "payload": {"s": 1}}, join_ref=alice_ref
        )
        join = await watcher.expect_event(rt(topic), "presence_diff")
        assert join.raw[:2] == [None, None]
        [meta] = join.payload["joins"]["alice"]["metas"]
        assert join.payload["leaves"] == {}
        assert meta["s"] == 1 and isinstance(meta["phx_ref"], str)

        await alice.push(
            rt(topic), "presence", {"type": "presence", "event": "track", "payload": {"s": 2}}, join_ref=alice_ref
        )
        update = await watcher.expect_event(rt(topic), "presence_diff")
        [new] = update.payload["joins"]["alice"]["metas"]
        assert update.payload["leaves"] == {"alice": {"metas": [meta]}}
        assert new["s"] == 2 and new["phx_ref_prev"] == meta["phx_ref"]

        late, _ = await joined(server, topic, config={"presence": {"enabled": True}})
        async with late:
            state = await late.expect_event(rt(topic), "presence_state")
            assert state.payload == {"alice": {"metas": [new]}}

        await alice.close()
        leave = await watcher.expect_event(rt(topic), "presence_diff")
        assert leave.payload == {"joins": {}, "leaves": {"alice": {"metas": [new]}}}


async def test_presence_diff_reaches_channels_that_did_not_enable_presence(server, topic):
    plain, _ = await joined(server, topic)
    tracker, tracker_ref = await joined(server, topic, config={"presence": {"key": "t"}})
    async with plain, tracker:
        await tracker.push(
            rt(topic), "presence", {"type": "presence", "event": "track", "payload": {}}, join_ref=tracker_ref
        )
        diff = await plain.recv()
        assert diff.event == "presence_diff" and list(diff.payload["joins"]) == ["t"]
        # The tracker gets its own diff too, after the reply.
        assert (await tracker.recv()).event == "phx_reply"
        assert (await tracker.recv()).event == "presence_diff"


async def test_duplicate_join_removes_the_old_joins_presence(server, topic):
    watcher, _ = await joined(server, topic, config={"presence": {"key": "w"}})
    tracker, join_ref = await joined(server, topic, config={"presence": {"key": "t"}})
    async with watcher, tracker:
        track = {"type": "presence", "event": "track", "payload": {"a": 1}}
        await tracker.send([join_ref, "1", rt(topic), "presence", track])
        joined_diff = await watcher.expect_event(rt(topic), "presence_diff")
        assert list(joined_diff.payload["joins"]) == ["t"]
        await tracker.send(["9", "9", rt(topic), "phx_join", {"config": {"presence": {"key": "t"}}}])
        leave = await watcher.expect_event(rt(topic), "presence_diff")
        assert leave.payload == {"joins": {}, "leaves": {"t": joined_diff.payload["joins"]["t"]}}


async def test_no_presence_state_without_presence_enabled(server, topic):
    client, _ = await joined(server, topic)
    async with client:
        await client.nothing_pending()  # presence_state would follow the join reply at once


async def test_presence_key_defaults_to_a_uuid_v1_per_join(server, topic):
    tracker, join_ref = await joined(server, topic, config={"presence": {"enabled": True}})
    async with tracker:
        await tracker.expect_event(rt(topic), "presence_state")
        await tracker.push(
            rt(topic), "presence", {"type": "presence", "event": "track", "payload": {}}, join_ref=join_ref
        )
        diff = await tracker.expect_event(rt(topic), "presence_diff")
        [key] = diff.payload["joins"]
        assert uuid.UUID(key).version == 1


async def test_presence_track_with_an_unchanged_payload_is_ok_without_a_diff(server, topic):
    client, join_ref = await joined(server, topic, config={"presence": {"key": "k"}})
    async with client:
        track = {"type": "presence", "event": "track", "payload": {"a": 1}}
        await client.send([join_ref, "1", rt(topic), "presence", track])
        assert (await client.recv()).status == "ok"
        assert (await client.recv()).event == "presence_diff"
        await client.send([join_ref, "2", rt(topic), "presence", track])
        assert (await client.recv()).raw == [join_ref, "2", rt(topic), "phx_reply", {"status": "ok", "response": {}}]
        await client.nothing_pending()


async def test_presence_untrack_replies_ok_and_sends_a_leave(server, topic):
    client, join_ref = await joined(server, topic, config={"presence": {"key": "k"}})
    async with client:
        await client.send(
            [join_ref, "1", rt(topic), "presence", {"type": "presence", "event": "track", "payload": {"a": 1}}]
        )
        await client.expect_event(rt(topic), "presence_diff")
        await client.send([join_ref, "2", rt(topic), "presence", {"type": "presence", "event": "UNTRACK"}])
        assert (await client.recv()).raw == [join_ref, "2", rt(topic), "phx_reply", {"status": "ok", "response": {}}]
        leave = await client.recv()
        assert (
            leave.event == "presence_diff" and leave.payload["joins"] == {} and list(leave.payload["leaves"]) == ["k"]
        )


async def test_presence_unknown_event_is_an_error_and_missing_event_is_ok(server, topic):
    client, join_ref = await joined(server, topic)
    async with client:
        await client.send([join_ref, "1", rt(topic), "presence", {"type": "presence", "event": "dance"}])
        assert (await client.recv()).raw == [join_ref, "1", rt(topic), "phx_reply", {"status": "error", "response": {}}]
        await client.send([join_ref, "2", rt(topic), "presence", {"type": "presence"}])
        assert (await client.recv()).raw == [join_ref, "2", rt(topic), "phx_reply", {"status": "ok", "response": {}}]
        await client.nothing_pending()


async def test_presence_track_over_the_payload_limit_shuts_the_channel(server_factory, topic):
    srv = server_factory({"TENANT_MAX_PAYLOAD_SIZE_IN_KB": "1"})
    client, join_ref = await joined(srv, topic)
    async with client:
        await client.send(
            [join_ref, "1", rt(topic), "presence", {"type": "presence", "event": "track", "payload": {"b": "x" * 2000}}]
        )
        await assert_shut_down(client, join_ref, topic, "Track message size exceeded")


async def test_unknown_client_event_on_a_joined_topic_gets_no_reply(server, topic):
    client, join_ref = await joined(server, topic)
    async with client:
        await client.send([join_ref, "1", rt(topic), "whatever", {}])
        await client.nothing_pending()


# -- docs/protocol.md §8 tokens --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["same", "sb_publishable_abc", None], ids=["unchanged", "sb-key", "null"])
async def test_access_token_refresh_that_is_ignored_gets_no_reply_and_keeps_the_channel(server, topic, value):
    token = make_token()
    client = await open_client(server, V2, token)
    async with client:
        join_ref = (await client.join(rt(topic), {"broadcast": {"ack": True}}, access_token=token)).ref
        await client.send(
            [join_ref, "5", rt(topic), "access_token", {"access_token": token if value == "same" else value}]
        )
        # The acked broadcast is the marker: its reply must be the next frame.
        await client.send([join_ref, "6", rt(topic), "broadcast", {"type": "broadcast", "event": "e", "payload": {}}])
        assert (await client.recv()).raw == [join_ref, "6", rt(topic), "phx_reply", {"status": "ok", "response": {}}]


async def test_access_token_refresh_with_a_new_valid_token_gets_no_reply_and_keeps_the_channel(server, topic):
    client, join_ref = await joined(server, topic, config={"broadcast": {"ack": True}})
    async with client:
        await client.send(
            [join_ref, "5", rt(topic), "access_token", {"access_token": make_token(sub=str(uuid.uuid4()))}]
        )
        # The acked broadcast is the marker: its reply must be the next frame.
        await client.send([join_ref, "6", rt(topic), "broadcast", {"type": "broadcast", "event": "e", "payload": {}}])
        assert (await client.recv()).raw == [join_ref, "6", rt(topic), "phx_reply", {"status": "ok", "response": {}}]


@pytest.mark.parametrize(
    ("new_token", "text"),
    [
        ("not-a-jwt", "The token provided is not a valid JWT"),
        (make_token(secret="other-secret-" + "z" * 32), "Failed to validate JWT signature"),
        (make_token(role=None), "Fields `role` and `exp` are required in JWT"),
    ],
    ids=["malformed", "signature", "no-role"],
)
async def test_access_token_refresh_with_an_invalid_token_shuts_the_channel(server, topic, new_token, text):
    client, join_ref = await joined(server, topic)
    async with client:
        await client.send([join_ref, "5", rt(topic), "access_token", {"access_token": new_token}])
        await assert_shut_down(client, join_ref, topic, text)
        # The channel is gone: the topic is no longer joined.
        await client.send([join_ref, "6", rt(topic), "broadcast", {"type": "broadcast", "event": "e", "payload": {}}])
        assert (await client.recv()).raw == [
            None,
            "6",
            rt(topic),
            "phx_reply",
            {"status": "error", "response": {"reason": "unmatched topic"}},
        ]


async def test_access_token_refresh_with_an_expired_token_shuts_the_channel(server, topic):
    client, join_ref = await joined(server, topic)
    async with client:
        await client.send([join_ref, "5", rt(topic), "access_token", {"access_token": make_token(exp_in=-10)}])
        frame = await client.recv()
        assert frame.event == "system" and frame.join_ref == join_ref
        message = frame.payload["message"]
        assert message.startswith("Token has expired ") and message.endswith(" seconds ago")
        assert frame.payload == system(topic, message)
        assert (await client.recv()).raw == [join_ref, join_ref, rt(topic), "phx_close", {}]


@BOTH
async def test_channel_whose_token_expires_is_shut_with_token_has_expired(server, vsn, topic):
    client = await open_client(server, vsn)
    async with client:
        reply = await client.join(rt(topic), access_token=make_token(exp_in=2))
        frame = await client.expect_event(rt(topic), "system", timeout=4000 * MS)
        message = frame.payload["message"]
        assert message.startswith("Token has expired ") and message.endswith(" seconds ago"), message
        assert int(message.split()[3]) <= 1
        assert frame.payload == system(topic, message)
        assert frame.ref is None
        close = await client.recv()
        assert (close.event, close.ref) == ("phx_close", reply.ref)


# -- isolation ----------------------------------------------------------------------


async def test_misbehaving_client_does_not_affect_another_connection(server, topic):
    good, good_ref = await joined(server, topic, config={"broadcast": {"self": True}})
    bad = await open_client(server, V2)
    async with good, bad:
        await bad.join(rt(topic))
        for frame in ["{{{", bytes([7]), b"\x03\xff\xff\xff", json.dumps([None, None, None, None, None])]:
            await bad.send(frame)
        with contextlib.suppress(ConnectionClosed):  # the server may close before the send ends
            await bad.send(b"\x00" * 5_000_001)  # over the 5 MB frame limit (docs/protocol.md §1.1)
        closed = await bad.closed()
        assert closed.rcvd is not None and closed.rcvd.code == CloseCode.MESSAGE_TOO_BIG

        assert (await good.heartbeat()).status == "ok"
        msg = {"type": "broadcast", "event": "still", "payload": {"ok": True}}
        await good.send([good_ref, "3", rt(topic), "broadcast", msg])
        assert (await good.recv()).raw == [None, None, rt(topic), "broadcast", msg]
