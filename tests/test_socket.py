"""Tests for realtime_core.socket: Phoenix's socket routing (docs/protocol.md §2.4), the inbox, and how a
refused join is answered (docs/protocol.md §3.3, §3.5).

Each test drives a RealtimeSocket of a real App (built without start(): no
database, no listener) through a connection stand-in that records the frames
the socket sends and the close it asks for (tests/fakes.py). Joins run as
tasks, so tests let the loop turn with settle()."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import MS
from fakes import TENANT, TOPIC, Client, phx_close, settle
from websockets.frames import CloseCode

from realtime_core.app import App
from realtime_core.limits import RateCounter
from realtime_core.payloads import postgres_change_id
from realtime_core.protocol import V1

# -- harness --


def ok(join_ref: str | None, ref: str | None, topic: str, response: Any) -> list[Any]:
    return [join_ref, ref, topic, "phx_reply", {"status": "ok", "response": response}]


def error(join_ref: str | None, ref: str | None, topic: str, response: Any) -> list[Any]:
    return [join_ref, ref, topic, "phx_reply", {"status": "error", "response": response}]


@pytest.fixture
async def client(app):
    return Client(app)


async def joined(app: App, topic: str = TOPIC, join_ref: str = "1", **payload: Any) -> Client:
    """A client that joined `topic`; its join reply is already read."""
    client = Client(app)
    client.join(topic, join_ref, **payload)
    await settle()
    [reply] = client.received()
    assert reply[4]["status"] == "ok", reply
    return client


# -- tests --


class TestHeartbeat:
    """docs/protocol.md §1.5: topic phoenix, event heartbeat; reply ok {} with the same ref and a null join_ref."""

    async def test_heartbeat_is_answered_at_once(self, client):
        client.push(None, "7", "phoenix", "heartbeat", {})
        assert client.received() == [ok(None, "7", "phoenix", {})]

    async def test_heartbeat_with_a_null_ref(self, client):
        client.push(None, None, "phoenix", "heartbeat", {})
        assert client.received() == [ok(None, None, "phoenix", {})]

    async def test_heartbeat_on_v1(self, app):
        client = Client(app, V1)
        client.push(None, "3", "phoenix", "heartbeat", {})
        assert client.received() == [
            {"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "3"}
        ]


class TestJoin:
    """docs/protocol.md §3.4: reply ok with the requested postgres_changes, each with its id."""

    async def test_join_reply_echoes_join_ref_and_ref(self, client):
        client.join(join_ref="4", ref="5")
        await settle()
        assert client.received() == [ok("4", "5", TOPIC, {"postgres_changes": []})]

    async def test_join_reply_lists_postgres_changes_with_ids_in_request_order(self, client):
        changes = [
            {"event": "INSERT", "schema": "public", "table": "todos"},
            {"event": "*", "schema": "public", "table": "notes", "filter": "id=eq.1"},
        ]
        client.join(config={"postgres_changes": changes})
        await settle()
        expected = [{**params, "id": postgres_change_id(params)} for params in changes]
        assert client.received() == [ok("1", "1", TOPIC, {"postgres_changes": expected})]

    async def test_a_joined_socket_is_counted_once_as_a_user(self, app, client):
        tenant = app.tenants.get(TENANT)
        client.join(TOPIC, "1")
        client.join("realtime:other", "2")
        await settle()
        assert tenant.users == 1
        client.socket.on_close()
        assert tenant.users == 0

    async def test_a_socket_that_never_joined_is_not_counted(self, app, client):
        client.socket.on_close()
        assert app.tenants.get(TENANT).users == 0

    async def test_the_channel_is_registered_under_its_topic(self, client):
        client.join()
        await settle()
        assert list(client.socket.channels) == [TOPIC]


class TestRefs:
    """docs/protocol.md §2.4 and §2.2: which refs each kind of V2 message carries."""

    async def test_a_channel_push_carries_join_ref_and_a_null_ref(self, app):
        client = Client(app)
        client.join(join_ref="3", ref="4", config={"presence": {"enabled": True}})
        await settle()
        reply, push = client.received()
        assert reply[:2] == ["3", "4"]
        assert push[:4] == ["3", None, TOPIC, "presence_state"]

    async def test_a_fan_out_carries_null_refs(self, app):
        sender = await joined(app, join_ref="1")
        receiver = await joined(app, join_ref="9")
        sender.push("1", "2", TOPIC, "broadcast", {"type": "broadcast", "event": "e", "payload": {}})
        assert receiver.received() == [
            [None, None, TOPIC, "broadcast", {"type": "broadcast", "event": "e", "payload": {}}]
        ]

    async def test_phx_close_carries_join_ref_as_its_ref(self, app):
        client = await joined(app, join_ref="6")
        client.push("6", "7", TOPIC, "phx_leave", {})
        assert client.received() == [ok("6", "7", TOPIC, {}), phx_close("6")]


class TestUnmatchedTopic:
    """docs/protocol.md §2.4: "unmatched topic", with the message's ref and a null join_ref."""

    async def test_a_message_on_a_topic_not_joined(self, client):
        client.push("1", "2", TOPIC, "broadcast", {"event": "e"})
        assert client.received() == [error(None, "2", TOPIC, {"reason": "unmatched topic"})]

    @pytest.mark.parametrize("topic", ["realtime", "room", "phoenix", "Realtime:room"])
    async def test_a_join_on_a_topic_without_the_realtime_prefix(self, client, topic):
        client.join(topic, "1", ref="2")
        await settle()
        assert client.received() == [error(None, "2", topic, {"reason": "unmatched topic"})]
        assert client.socket.channels == {}

    async def test_a_heartbeat_on_another_topic_is_unmatched(self, client):
        client.push(None, "3", TOPIC, "heartbeat", {})
        assert client.received() == [error(None, "3", TOPIC, {"reason": "unmatched topic"})]


class TestDuplicateJoin:
    """docs/protocol.md §2.4: the old channel gets phx_close for its join_ref, then the new join is processed."""

    async def test_phx_close_for_the_old_join_ref_comes_first(self, app):
        client = await joined(app, join_ref="1")
        client.join(join_ref="3", ref="3")
        await settle()
        assert client.received() == [phx_close("1"), ok("3", "3", TOPIC, {"postgres_changes": []})]

    async def test_the_new_join_replaces_the_old_channel(self, app):
        client = await joined(app, join_ref="1")
        old = client.socket.channels[TOPIC]
        client.join(join_ref="3")
        await settle()
        new = client.socket.channels[TOPIC]
        assert new is not old
        assert new.join_ref == "3"
        assert app.hub.subscribers(new.key) == [new]

    async def test_the_old_channel_no_longer_receives(self, app):
        client = await joined(app, join_ref="1")
        client.join(join_ref="3")
        await settle()
        client.received()
        other = await joined(app, join_ref="1")
        other.push("1", None, TOPIC, "broadcast", {"event": "e"})
        assert client.received() == [[None, None, TOPIC, "broadcast", {"event": "e"}]], "delivered once"


class TestStaleJoinRef:
    """docs/protocol.md §2.4: messages whose join_ref differs from the current join are dropped; null is accepted."""

    async def test_a_message_with_an_older_join_ref_is_dropped(self, app):
        client = await joined(app, join_ref="1", config={"broadcast": {"ack": True}})
        client.join(join_ref="3", config={"broadcast": {"ack": True}})
        await settle()
        client.received()
        client.push("1", "4", TOPIC, "broadcast", {"event": "e"})
        assert client.received() == []

    async def test_a_phx_leave_with_an_older_join_ref_is_dropped(self, app):
        client = await joined(app, join_ref="5")
        client.push("2", "6", TOPIC, "phx_leave", {})
        assert client.received() == []
        assert TOPIC in client.socket.channels

    async def test_a_null_join_ref_is_accepted(self, app):
        client = await joined(app, join_ref="1", config={"broadcast": {"ack": True}})
        client.push(None, "4", TOPIC, "broadcast", {"event": "e"})
        assert client.received() == [ok("1", "4", TOPIC, {})]

    async def test_the_current_join_ref_is_accepted(self, app):
        client = await joined(app, join_ref="1", config={"broadcast": {"ack": True}})
        client.push("1", "4", TOPIC, "broadcast", {"event": "e"})
        assert client.received() == [ok("1", "4", TOPIC, {})]


class TestLeave:
    """docs/protocol.md §3.7 and §2.4."""

    async def test_leave_replies_ok_then_closes(self, app):
        client = await joined(app, join_ref="1")
        client.push("1", "2", TOPIC, "phx_leave", {})
        assert client.received() == [ok("1", "2", TOPIC, {}), phx_close("1")]
        assert client.socket.channels == {}

    async def test_leave_unsubscribes_the_channel(self, app):
        client = await joined(app, join_ref="1")
        key = client.socket.channels[TOPIC].key
        client.push("1", "2", TOPIC, "phx_leave", {})
        assert app.hub.subscribers(key) == []

    async def test_leave_on_a_topic_not_joined_is_acknowledged(self, client):
        client.push("1", "2", TOPIC, "phx_leave", {})
        assert client.received() == [ok("1", "2", TOPIC, {})]

    async def test_a_message_after_leave_is_unmatched(self, app):
        client = await joined(app, join_ref="1")
        client.push("1", "2", TOPIC, "phx_leave", {})
        client.received()
        client.push("1", "3", TOPIC, "broadcast", {})
        assert client.received() == [error(None, "3", TOPIC, {"reason": "unmatched topic"})]

    async def test_the_socket_can_join_the_topic_again(self, app):
        client = await joined(app, join_ref="1")
        client.push("1", "2", TOPIC, "phx_leave", {})
        client.join(join_ref="3")
        await settle()
        assert client.received() == [
            ok("1", "2", TOPIC, {}),
            phx_close("1"),
            ok("3", "3", TOPIC, {"postgres_changes": []}),
        ]


class TestInbox:
    """Messages are handled in arrival order, even while a join is running."""

    async def test_a_broadcast_sent_right_after_a_join_is_handled_after_it(self, client):
        client.join(join_ref="1", config={"broadcast": {"ack": True}})
        client.push("1", "2", TOPIC, "broadcast", {"event": "e"})  # same tick: the join has not run yet
        await settle()
        assert client.received() == [ok("1", "1", TOPIC, {"postgres_changes": []}), ok("1", "2", TOPIC, {})]

    async def test_a_heartbeat_behind_a_join_waits_for_it(self, client):
        client.join(join_ref="1")
        client.push(None, "2", "phoenix", "heartbeat", {})
        assert client.received() == [], "queued behind the join"
        await settle()
        assert client.received() == [ok("1", "1", TOPIC, {"postgres_changes": []}), ok(None, "2", "phoenix", {})]

    async def test_two_joins_in_one_tick_are_answered_in_order(self, client):
        client.join("realtime:a", "1")
        client.join("realtime:b", "2")
        client.push("2", "3", "realtime:b", "phx_leave", {})
        await settle()
        assert client.received() == [
            ok("1", "1", "realtime:a", {"postgres_changes": []}),
            ok("2", "2", "realtime:b", {"postgres_changes": []}),
            ok("2", "3", "realtime:b", {}),
            phx_close("2", "realtime:b"),
        ]

    async def test_messages_queued_behind_a_refused_join_are_still_handled(self, client):
        client.join("realtime:", "1")
        client.push(None, "2", "phoenix", "heartbeat", {})
        await settle()
        assert client.received() == [
            error("1", "1", "realtime:", {"reason": "TopicNameRequired: You must provide a topic name"}),
            ok(None, "2", "phoenix", {}),
        ]

    async def test_a_closed_socket_drops_its_inbox(self, client):
        client.join(join_ref="1")
        client.push(None, "2", "phoenix", "heartbeat", {})
        client.socket.on_close()
        await settle()
        assert client.received() == []
        assert client.socket.channels == {}


class TestJoinErrors:
    """docs/protocol.md §3.3: error replies wait CHANNEL_ERROR_BACKOFF_MS; some also close the socket with 1001."""

    async def test_an_error_reply_waits_for_the_backoff(self, app, client):
        app.settings = app.settings.replace(channel_error_backoff_ms=int(50 * MS * 1000))
        client.join("realtime:", "1")
        await settle()
        assert client.received() == [], "nothing before the backoff"
        assert await client.next_received(3000 * MS) == [
            error("1", "1", "realtime:", {"reason": "TopicNameRequired: You must provide a topic name"})
        ]
        assert client.conn.closed_with is None

    async def test_without_a_backoff_the_error_is_immediate(self, client):
        client.join("realtime:", "1")
        await settle()
        [reply] = client.received()
        assert reply[4]["status"] == "error"

    async def test_the_backoff_does_not_hold_following_messages(self, app, client):
        app.settings = app.settings.replace(channel_error_backoff_ms=int(50 * MS * 1000))
        client.join("realtime:", "1")
        client.push(None, "2", "phoenix", "heartbeat", {})
        await settle()
        assert client.received() == [ok(None, "2", "phoenix", {})]
        [reply] = await client.next_received(3000 * MS)
        assert reply[4]["status"] == "error"

    async def test_a_socket_closed_during_the_backoff_gets_no_reply(self, app, client):
        app.settings = app.settings.replace(channel_error_backoff_ms=int(20 * MS * 1000))
        client.join("realtime:", "1")
        await settle()
        client.socket.on_close()
        # Nothing can mark a closed socket's output. The reply is due when the backoff ends, a
        # timer of this same event loop due before this sleep's, so it would have been sent.
        await asyncio.sleep(50 * MS)
        assert client.received() == []

    async def test_tenant_not_found_replies_then_closes_with_1001(self, app, client):
        app.tenants.remove(TENANT)
        client.join(join_ref="1")
        await settle()
        reason = "TenantNotFound: Tenant with the given ID does not exist"
        assert client.received() == [error("1", "1", TOPIC, {"reason": reason})]
        assert client.conn.closed_with == (CloseCode.GOING_AWAY, reason)

    async def test_join_rate_limit_replies_then_closes_with_1001(self, app, client):
        tenant = app.tenants.get(TENANT)
        tenant.limits.max_joins_per_second = 1
        tenant.joins = RateCounter(990.0)
        tenant.joins.add(5, 990.0)  # 1/s over the bucket [990, 995)
        app.now = lambda: 995.0
        client.join(join_ref="1")
        await settle()
        reason = "ClientJoinRateLimitReached: Too many joins per second"
        assert client.received() == [error("1", "1", TOPIC, {"reason": reason})]
        assert client.conn.closed_with == (CloseCode.GOING_AWAY, reason)

    async def test_an_error_that_does_not_close_keeps_the_socket_open(self, client):
        client.join("realtime:", "1")
        await settle()
        assert client.conn.closed_with is None

    async def test_refused_joins_are_counted(self, app, client):
        before = app.metrics.join_errors
        client.join("realtime:", "1")
        await settle()
        assert app.metrics.join_errors == before + 1

    async def test_an_unexpected_exception_becomes_unknown_error_on_channel(self, app, client, monkeypatch, caplog):
        import realtime_core.socket as socket_module

        async def broken_join(socket, msg):
            raise RuntimeError("boom")

        monkeypatch.setattr(socket_module, "join", broken_join)
        client.join(join_ref="1")
        await settle()
        assert client.received() == [error("1", "1", TOPIC, {"reason": "Unknown Error on Channel"})]
        assert client.conn.closed_with is None
        assert "boom" in caplog.text
        assert app.metrics.join_errors_by_code == {"UnknownErrorOnChannel": 1}


class TestMalformed:
    """docs/protocol.md §1.5: a malformed frame is logged and dropped; the connection stays open."""

    @pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b'{"topic": "x"}', b'[null, null, 1, "e", {}]'])
    async def test_a_malformed_text_frame_is_dropped_and_counted(self, app, client, data):
        before = app.metrics.malformed_messages
        client.socket.on_text(data)
        assert client.received() == []
        assert app.metrics.malformed_messages == before + 1
        assert client.conn.closed_with is None

    async def test_a_malformed_binary_frame_is_dropped_and_counted(self, app, client):
        before = app.metrics.malformed_messages
        client.socket.on_binary(b"\x09")
        assert client.received() == []
        assert app.metrics.malformed_messages == before + 1

    async def test_the_socket_still_answers_after_a_malformed_frame(self, client):
        client.socket.on_text(b"garbage")
        client.push(None, "1", "phoenix", "heartbeat", {})
        assert client.received() == [ok(None, "1", "phoenix", {})]


class TestClose:
    async def test_on_close_closes_every_channel_silently(self, app):
        client = await joined(app, TOPIC, "1")
        client.join("realtime:other", "2")
        await settle()
        client.received()
        channels = list(client.socket.channels.values())
        client.socket.on_close()
        assert client.received() == [], "the connection is gone: nothing is sent"
        assert client.socket.channels == {}
        assert all(app.hub.subscribers(channel.key) == [] for channel in channels)
        assert client.socket not in app.sockets

    async def test_on_close_twice_is_harmless(self, app):
        client = await joined(app)
        client.socket.on_close()
        client.socket.on_close()
        assert app.tenants.get(TENANT).users == 0

    async def test_attach_registers_the_socket(self, app, client):
        assert client.socket in app.sockets

    async def test_disconnect_closes_the_connection(self, client):
        client.socket.disconnect(CloseCode.SERVICE_RESTART, "drain")
        assert client.conn.closed_with == (CloseCode.SERVICE_RESTART, "drain")
