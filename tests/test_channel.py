"""Tests for realtime_core.channel: the join pipeline (docs/protocol.md §3.2, §3.3, §3.5), presence on a
channel (docs/protocol.md §5), shutdowns (docs/protocol.md §3.6, §9.2) and token expiry
(docs/protocol.md §8.4).

Channels are driven through a RealtimeSocket of a real App (built without
start(): no database, no listener) and a connection stand-in that records
frames (tests/fakes.py). Joins run as tasks, so tests let the loop turn with
settle()."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import fakes
import pytest
from conftest import MS
from fakes import SECRET, TENANT, TOPIC, decode, make_token, phx_close, settle

from realtime_core.app import App
from realtime_core.channel import ChannelState
from realtime_core.jwt import sign
from realtime_core.limits import BUCKET_SECONDS, RateCounter
from realtime_core.protocol import V1
from realtime_core.protocol.v1 import V1Codec
from realtime_core.protocol.v2 import V2Codec
from realtime_core.tenants import Tenant

T0 = 10_000.0  # the fake clock's start, for tests that control app.now


# -- harness --


class Client(fakes.Client):
    """A socket of the app, as in tests/fakes.py, that also tracks presence and reaches its channels."""

    def presence(self, ref: str, payload: Any, topic: str = TOPIC) -> None:
        self.push(None, ref, topic, "presence", payload)

    def track(self, ref: str, meta: Any, topic: str = TOPIC) -> None:
        self.presence(ref, {"type": "presence", "event": "track", "payload": meta}, topic)

    def channel(self, topic: str = TOPIC):
        return self.socket.channels[topic]


def ok(join_ref: str | None, ref: str | None, response: Any, topic: str = TOPIC) -> list[Any]:
    return [join_ref, ref, topic, "phx_reply", {"status": "ok", "response": response}]


def system_error(join_ref: str, text: str, topic: str = TOPIC) -> list[Any]:
    """docs/protocol.md §3.6: the system push that precedes a shutdown's phx_close."""
    sub_topic = topic.removeprefix("realtime:")
    payload = {"extension": "system", "status": "error", "message": text, "channel": sub_topic}
    return [join_ref, None, topic, "system", payload]


def assert_shut_down(client: Client, join_ref: str, text: str) -> None:
    """The channel pushed a system error with `text`, then phx_close, and is gone."""
    assert client.received() == [system_error(join_ref, text), phx_close(join_ref)]
    assert TOPIC not in client.socket.channels


@pytest.fixture
def tenant(app) -> Tenant:
    return app.tenants.get(TENANT)


@pytest.fixture
def clock(app, tenant) -> list[float]:
    """A fake clock for the app, with the tenant's counters started on it: clock[0] = now."""
    now = [T0]
    app.now = lambda: now[0]
    for name in ("events", "joins", "presence_events", "http_requests"):
        setattr(tenant, name, RateCounter(T0))
    return now


async def joined(app: App, join_ref: str = "1", topic: str = TOPIC, **payload: Any) -> Client:
    """A client that joined `topic`; its join reply is already read."""
    client = Client(app)
    client.join(topic, join_ref, **payload)
    await settle()
    reply = client.received()[0]
    assert reply[4]["status"] == "ok", reply
    return client


async def join_error(app: App, client: Client | None = None, topic: str = TOPIC, **payload: Any) -> str:
    """Join and return the error reason of the reply."""
    client = client or Client(app)
    client.join(topic, "1", **payload)
    await settle()
    [reply] = client.received()
    assert reply[4]["status"] == "error", reply
    return reply[4]["response"]["reason"]


WITH_PRESENCE = {"presence": {"enabled": True, "key": "alice"}}


# -- tests --


class TestJoinPipeline:
    """docs/protocol.md §3.3 in order, with the reason texts of docs/protocol.md §3.5."""

    async def test_an_empty_sub_topic_is_refused(self, app):
        assert await join_error(app, topic="realtime:") == "TopicNameRequired: You must provide a topic name"

    async def test_a_shutting_down_server_refuses(self, app):
        app.shutting_down = True
        assert await join_error(app) == "RealtimeRestarting: Realtime is restarting, please standby"

    async def test_a_missing_tenant_is_refused(self, app):
        client = Client(app)
        app.tenants.remove(TENANT)
        assert await join_error(app, client) == "TenantNotFound: Tenant with the given ID does not exist"

    async def test_a_suspended_tenant_is_refused(self, app, tenant):
        tenant.suspend = True
        assert await join_error(app) == "RealtimeDisabledForTenant: Realtime disabled for this tenant"

    async def test_a_private_only_tenant_refuses_public_channels(self, app, tenant):
        tenant.private_only = True
        assert await join_error(app) == "PrivateOnly: This project only allows private channels"

    async def test_too_many_users(self, app, tenant):
        tenant.limits.max_concurrent_users = 1
        await joined(app)
        assert await join_error(app) == "ConnectionRateLimitReached: Too many connected users"

    async def test_a_socket_already_counted_may_join_more_at_the_user_limit(self, app, tenant):
        tenant.limits.max_concurrent_users = 1
        client = await joined(app)
        client.join("realtime:second", "2")
        await settle()
        assert client.received()[0][4]["status"] == "ok"

    async def test_too_many_joins_per_second(self, app, tenant, clock):
        tenant.limits.max_joins_per_second = 2
        tenant.joins.add(10, T0)
        clock[0] = T0 + BUCKET_SECONDS  # average 2/s
        assert await join_error(app) == "ClientJoinRateLimitReached: Too many joins per second"

    async def test_joins_are_counted(self, app, tenant, clock):
        await joined(app)
        await joined(app)
        assert tenant.joins.average(T0 + BUCKET_SECONDS) == 2 / 1 / BUCKET_SECONDS

    async def test_too_many_channels_on_one_socket(self, app, tenant):
        tenant.limits.max_channels_per_client = 2
        client = Client(app)
        for n, topic in enumerate(["realtime:a", "realtime:b"]):
            client.join(topic, str(n))
        await settle()
        assert [m[4]["status"] for m in client.received()] == ["ok", "ok"]
        assert await join_error(app, client, topic="realtime:c") == "ChannelRateLimitReached: Too many channels"

    async def test_an_expired_token_is_refused(self, app):
        reason = await join_error(app, access_token=make_token(exp_in=-10))
        assert re.fullmatch(r"InvalidJWTToken: Token has expired \d+ seconds ago", reason), reason

    async def test_a_token_signed_with_another_secret_is_refused(self, app):
        reason = await join_error(app, access_token=make_token(secret="another-secret-" + "y" * 32))
        assert reason == "JwtSignatureError: Failed to validate JWT signature"

    async def test_a_private_channel_is_unauthorized_without_policies(self, app):
        reason = await join_error(app, config={"private": True})
        assert reason == "Unauthorized: You do not have permissions to read from this Channel topic: room"

    async def test_replay_on_a_public_channel_is_refused(self, app):
        reason = await join_error(app, config={"broadcast": {"replay": {"since": 0}}})
        assert reason == "UnableToReplayMessages: Replay is not allowed for public channels"

    async def test_invalid_replay_params_are_refused(self, app):
        reason = await join_error(app, config={"broadcast": {"replay": {"since": "yesterday"}}})
        assert reason == "UnableToReplayMessages: Replay params are not valid"

    async def test_an_invalid_payload_does_not_refuse_the_join(self, app):
        """docs/protocol.md §3.1: validation errors are logged (InvalidJoinPayload), the rest applies."""
        client = Client(app)
        client.join(config={"broadcast": {"ack": "maybe", "self": True}, "postgres_changes": 5})
        await settle()
        assert client.received() == [ok("1", "1", {"postgres_changes": []})]
        assert client.channel().self_broadcast is True

    async def test_a_legacy_join_without_config(self, app):
        client = Client(app)
        client.push("1", "1", TOPIC, "phx_join", {})
        await settle()
        assert client.received() == [ok("1", "1", {"postgres_changes": []})]


class TestJoinToken:
    """docs/protocol.md §3.2: user_token, then access_token, then the connect token; `sb_` keys defer to it."""

    async def join_with(self, app, **payload: Any) -> str:
        client = Client(app)
        client.join(**payload)
        await settle()
        assert client.received()[0][4]["status"] == "ok"
        return client.channel().token

    async def test_the_connect_token_by_default(self, app):
        client = Client(app)
        client.join()
        await settle()
        assert client.channel().token == client.socket.token

    async def test_access_token(self, app):
        token = make_token(sub="a")
        assert await self.join_with(app, access_token=token) == token

    async def test_user_token_wins_over_access_token(self, app):
        user, access = make_token(sub="u"), make_token(sub="a")
        assert await self.join_with(app, access_token=access, user_token=user) == user

    async def test_an_sb_key_defers_to_the_connect_token(self, app):
        client = Client(app)
        client.join(access_token="sb_publishable_abc")
        await settle()
        assert client.received()[0][4]["status"] == "ok"
        assert client.channel().token == client.socket.token


class TestPresenceState:
    """docs/protocol.md §5.2: presence_state once, right after the join reply, only if presence is enabled."""

    async def test_no_presence_state_when_presence_is_disabled(self, app):
        client = Client(app)
        client.join()
        await settle()
        assert client.received() == [ok("1", "1", {"postgres_changes": []})]

    async def test_presence_state_follows_the_reply_when_the_client_enables_it(self, app):
        client = Client(app)
        client.join(config={"presence": {"enabled": True}})
        await settle()
        assert client.received() == [
            ok("1", "1", {"postgres_changes": []}),
            ["1", None, TOPIC, "presence_state", {}],
        ]

    async def test_presence_state_when_the_tenant_enables_presence(self, app, tenant):
        tenant.presence_enabled = True
        client = Client(app)
        client.join()
        await settle()
        assert [m[3] for m in client.received()] == ["phx_reply", "presence_state"]

    async def test_presence_state_holds_the_presences_already_tracked(self, app):
        alice = await joined(app, config=WITH_PRESENCE)
        alice.track("2", {"name": "Alice"})
        bob = Client(app)
        bob.join(config={"presence": {"enabled": True}})
        await settle()
        _, state = bob.received()
        [meta] = state[4]["alice"]["metas"]
        assert meta["name"] == "Alice"
        assert isinstance(meta["phx_ref"], str)


class TestPresenceKey:
    """docs/protocol.md §5.1: the client's key, or a UUID v1 of the channel's own, made when first needed."""

    async def test_a_channel_without_a_key_tracks_under_a_uuid_v1(self, app):
        alice = await joined(app, config={"presence": {"enabled": True}})
        alice.received()
        alice.track("2", {"n": 1})
        [_, diff] = alice.received()
        [key] = diff[4]["joins"]
        assert uuid.UUID(key).version == 1 and str(uuid.UUID(key)) == key
        assert alice.channel().presence_key == key  # the same key from then on

    async def test_two_channels_without_keys_get_different_keys(self, app):
        first = await joined(app, "1")
        second = await joined(app, "7")
        assert first.channel().presence_key != second.channel().presence_key

    async def test_the_clients_key_is_used_as_given(self, app):
        alice = await joined(app, config=WITH_PRESENCE)
        assert alice.channel().presence_key == "alice"


class TestPresenceTrack:
    """docs/protocol.md §5.1 and §5.2: track/untrack replies, and presence_diff to every subscriber."""

    async def test_track_replies_ok_and_sends_a_diff_to_every_subscriber(self, app):
        alice = await joined(app, "1", config=WITH_PRESENCE)
        watcher = await joined(app, "7", config={"presence": {"enabled": True}})
        plain = await joined(app, "9")  # presence not enabled: still gets the diff
        watcher.received()
        alice.received()
        alice.track("2", {"name": "Alice"})
        [reply, diff] = alice.received()
        assert reply == ok("1", "2", {})
        assert diff[:4] == [None, None, TOPIC, "presence_diff"]
        [meta] = diff[4]["joins"]["alice"]["metas"]
        assert meta["name"] == "Alice"
        assert diff[4]["leaves"] == {}
        assert watcher.received() == [diff]
        assert plain.received() == [diff]

    async def test_tracking_the_same_payload_again_sends_no_diff(self, app):
        alice = await joined(app, config=WITH_PRESENCE)
        other = await joined(app, "7")
        alice.track("2", {"n": 1})
        alice.received()
        other.received()
        alice.track("3", {"n": 1})
        assert alice.received() == [ok("1", "3", {})]
        assert other.received() == []

    async def test_an_update_leaves_the_old_meta_and_joins_the_new(self, app):
        alice = await joined(app, config=WITH_PRESENCE)
        alice.track("2", {"n": 1})
        [_, first] = alice.received()
        [old] = first[4]["joins"]["alice"]["metas"]
        alice.track("3", {"n": 2})
        [_, second] = alice.received()
        assert second[4]["leaves"] == {"alice": {"metas": [old]}}
        [new] = second[4]["joins"]["alice"]["metas"]
        assert new["phx_ref_prev"] == old["phx_ref"]

    async def test_untrack_sends_a_leave_diff(self, app):
        alice = await joined(app, config=WITH_PRESENCE)
        other = await joined(app, "7")
        alice.track("2", {"n": 1})
        [meta] = alice.received()[1][4]["joins"]["alice"]["metas"]
        other.received()
        alice.presence("3", {"type": "presence", "event": "untrack"})
        assert alice.received()[0] == ok("1", "3", {})
        assert other.received() == [
            [None, None, TOPIC, "presence_diff", {"joins": {}, "leaves": {"alice": {"metas": [meta]}}}]
        ]

    async def test_untrack_without_a_presence_replies_ok_only(self, app):
        alice = await joined(app)
        alice.presence("3", {"event": "untrack"})
        assert alice.received() == [ok("1", "3", {})]

    @pytest.mark.parametrize("event", ["TRACK", "Track"])
    async def test_the_event_name_is_case_insensitive(self, app, event):
        alice = await joined(app, config=WITH_PRESENCE)
        alice.presence("2", {"event": event, "payload": {}})
        assert [m[3] for m in alice.received()] == ["phx_reply", "presence_diff"]

    async def test_a_track_payload_that_is_not_a_map_is_refused(self, app):
        alice = await joined(app)
        alice.presence("2", {"event": "track", "payload": [1]})
        assert alice.received() == [
            [
                "1",
                "2",
                TOPIC,
                "phx_reply",
                {"status": "error", "response": {"reason": "Presence track payload must be a map"}},
            ]
        ]

    async def test_track_without_a_payload_tracks_an_empty_map(self, app):
        alice = await joined(app, config=WITH_PRESENCE)
        alice.presence("2", {"event": "track"})
        [_, diff] = alice.received()
        [meta] = diff[4]["joins"]["alice"]["metas"]
        assert set(meta) == {"phx_ref"}

    async def test_an_unknown_presence_event_is_an_error_reply(self, app):
        alice = await joined(app)
        alice.presence("2", {"event": "wave"})
        assert alice.received() == [["1", "2", TOPIC, "phx_reply", {"status": "error", "response": {}}]]

    async def test_a_presence_message_without_event_is_acknowledged_and_ignored(self, app):
        alice = await joined(app)
        alice.presence("2", {"type": "presence"})
        assert alice.received() == [ok("1", "2", {})]
        assert app.hub.presences == {}

    async def test_track_enables_presence_for_the_channel(self, app):
        alice = await joined(app)
        assert not alice.channel().presence_enabled
        alice.track("2", {})
        assert alice.channel().presence_enabled

    async def test_a_key_less_join_tracks_under_a_generated_key(self, app):
        alice = await joined(app, config={"presence": {"enabled": True}})
        alice.track("2", {})
        [_, diff] = alice.received()
        [key] = diff[4]["joins"]
        assert key == alice.channel().presence_key
        assert len(key) == 36  # a UUID


class TestPresenceLeaveOnClose:
    """docs/protocol.md §3.7 and §5.2: when a channel ends its presence leaves, and the others are told."""

    async def tracked_pair(self, app) -> tuple[Client, Client, dict[str, Any]]:
        alice = await joined(app, "1", config=WITH_PRESENCE)
        bob = await joined(app, "5", config={"presence": {"enabled": True, "key": "bob"}})
        alice.track("2", {"name": "Alice"})
        [meta] = alice.received()[1][4]["joins"]["alice"]["metas"]
        bob.received()
        return alice, bob, meta

    async def test_leave_sends_a_leave_diff_to_the_others(self, app):
        alice, bob, meta = await self.tracked_pair(app)
        alice.push("1", "3", TOPIC, "phx_leave", {})
        assert alice.received() == [ok("1", "3", {}), phx_close("1")], "the leaver does not get its own diff"
        assert bob.received() == [
            [None, None, TOPIC, "presence_diff", {"joins": {}, "leaves": {"alice": {"metas": [meta]}}}]
        ]

    async def test_a_closed_socket_leaves_its_presences(self, app):
        alice, bob, meta = await self.tracked_pair(app)
        alice.socket.on_close()
        assert bob.received() == [
            [None, None, TOPIC, "presence_diff", {"joins": {}, "leaves": {"alice": {"metas": [meta]}}}]
        ]

    async def test_a_duplicate_join_leaves_the_old_presence(self, app):
        alice, bob, meta = await self.tracked_pair(app)
        alice.join(join_ref="8", config=WITH_PRESENCE)
        await settle()
        assert bob.received() == [
            [None, None, TOPIC, "presence_diff", {"joins": {}, "leaves": {"alice": {"metas": [meta]}}}]
        ]

    async def test_the_last_presence_leaving_drops_the_topic(self, app):
        alice = await joined(app, config=WITH_PRESENCE)
        alice.track("2", {})
        assert len(app.hub.presences) == 1
        alice.socket.on_close()
        assert app.hub.presences == {}

    async def test_presence_state_after_a_leave_no_longer_lists_it(self, app):
        alice, _, _ = await self.tracked_pair(app)
        alice.socket.on_close()
        carol = Client(app)
        carol.join(config={"presence": {"enabled": True}})
        await settle()
        assert carol.received()[1][4] == {}


class TestPresenceLimits:
    """docs/protocol.md §5.3."""

    async def test_the_call_after_the_window_limit_shuts_the_channel_down(self, app, tenant, clock):
        tenant.limits.max_client_presence_events_per_window = 2
        alice = await joined(app, config=WITH_PRESENCE)
        alice.track("2", {"n": 1})
        alice.track("3", {"n": 2})
        alice.received()
        alice.track("4", {"n": 3})
        assert_shut_down(alice, "1", "Client presence rate limit exceeded")

    async def test_a_new_window_allows_calls_again(self, app, tenant, clock):
        tenant.limits.max_client_presence_events_per_window = 1
        tenant.limits.client_presence_window_ms = 1_000
        alice = await joined(app, config=WITH_PRESENCE)
        alice.track("2", {"n": 1})
        clock[0] += 1.0
        alice.received()
        alice.track("3", {"n": 2})
        assert alice.received()[0] == ok("1", "3", {})

    async def test_a_track_payload_over_the_size_limit_shuts_the_channel_down(self, app, tenant):
        tenant.limits.max_payload_size_in_kb = 0  # 500 bytes
        alice = await joined(app, config=WITH_PRESENCE)
        alice.track("2", {"blob": "x" * 600})
        assert_shut_down(alice, "1", "Track message size exceeded")

    async def test_tenant_presence_rate_shuts_the_channel_down(self, app, tenant, clock):
        tenant.limits.max_presence_events_per_second = 1
        tenant.presence_events.add(5, T0)
        clock[0] = T0 + BUCKET_SECONDS
        alice = await joined(app, config={"presence": {"key": "alice"}})  # no presence_state at join
        alice.track("2", {})
        assert_shut_down(alice, "1", "Too many presence messages per second")

    async def test_tenant_presence_rate_applies_to_the_initial_presence_state(self, app, tenant, clock):
        tenant.limits.max_presence_events_per_second = 1
        tenant.presence_events.add(5, T0)
        clock[0] = T0 + BUCKET_SECONDS
        alice = Client(app)
        alice.join(TOPIC, "1", config=WITH_PRESENCE)
        await settle()
        [reply, system, close] = alice.received()
        assert reply[4]["status"] == "ok"  # the reply comes first (docs/protocol.md §10.8), then the shutdown
        assert [system, close] == [system_error("1", "Too many presence messages per second"), phx_close("1")]

    async def test_track_and_its_deliveries_count_as_presence_events(self, app, tenant, clock):
        alice = await joined(app, config=WITH_PRESENCE)
        await joined(app, "7")
        alice.track("2", {})
        # one track call plus two deliveries of the diff
        assert tenant.presence_events.average(T0 + BUCKET_SECONDS) == 3 / 1 / BUCKET_SECONDS


class TestEventsLimit:
    """docs/protocol.md §9.2: a delivery while the events/s limit is triggered shuts the receiver down."""

    async def test_receivers_are_shut_down_with_too_many_messages(self, app, tenant, clock):
        sender = await joined(app, "1")
        receiver = await joined(app, "5")
        tenant.limits.max_events_per_second = 1
        tenant.events.add(5, T0)
        clock[0] = T0 + BUCKET_SECONDS
        sender.push("1", "2", TOPIC, "broadcast", {"event": "e"})
        assert_shut_down(receiver, "5", "Too many messages per second")
        assert sender.received() == [], "the sender is not a receiver (self: false)"
        assert app.hub.subscribers(sender.channel().key) == [sender.channel()]

    async def test_unknown_client_events_count_against_the_events_rate(self, app, tenant, clock):
        client = await joined(app)
        client.push("1", "2", TOPIC, "whatever", {})
        client.push("1", "3", TOPIC, "whatever", {})
        assert client.received() == [], "no reply to an unknown event"
        assert tenant.events.average(T0 + BUCKET_SECONDS) == 2 / 1 / BUCKET_SECONDS


class TestFanOut:
    """A broadcast reaches every other channel of the stream, framed once per codec (docs/design.md §2)."""

    async def test_one_frame_per_codec_whatever_the_number_of_receivers(self, app, monkeypatch):
        calls: list[str] = []

        def counting(cls):
            original = cls.broadcast_json

            def broadcast_json(self, topic, event, payload_json):
                calls.append(cls.__name__)
                return original(self, topic, event, payload_json)

            monkeypatch.setattr(cls, "broadcast_json", broadcast_json)

        counting(V1Codec)
        counting(V2Codec)
        sender = await joined(app)
        receivers = [await joined(app, str(n)) for n in range(20)]
        v1_receivers = []
        for n in range(5):
            client = Client(app, V1)
            client.join(join_ref=str(n))
            await settle()
            client.received()
            v1_receivers.append(client)
        sender.push("1", "2", TOPIC, "broadcast", {"type": "broadcast", "event": "e", "payload": {"n": 1}})
        assert sorted(calls) == ["V1Codec", "V2Codec"]
        frames = {bytes(client.conn.frames[0]) for client in receivers}
        assert len(frames) == 1, "every V2 receiver got the same bytes"
        assert decode(frames.pop()) == [
            None,
            None,
            TOPIC,
            "broadcast",
            {"type": "broadcast", "event": "e", "payload": {"n": 1}},
        ]
        for client in v1_receivers:
            assert client.received() == [
                {
                    "topic": TOPIC,
                    "event": "broadcast",
                    "payload": {"type": "broadcast", "event": "e", "payload": {"n": 1}},
                    "ref": None,
                }
            ]
        assert sender.received() == []


class TestShutdown:
    """docs/protocol.md §3.6: system error push, then phx_close; a closed channel stays silent."""

    async def test_shutdown_pushes_system_then_phx_close(self, app):
        client = await joined(app, "4")
        channel = client.channel()
        channel.shutdown("Something went wrong")
        assert_shut_down(client, "4", "Something went wrong")
        assert channel.state is ChannelState.CLOSED
        assert app.hub.subscribers(channel.key) == []

    async def test_a_closed_channel_ignores_a_second_shutdown(self, app):
        client = await joined(app, "4")
        channel = client.channel()
        channel.shutdown("first")
        client.received()
        channel.shutdown("second")
        channel.replaced()
        channel.close()
        assert client.received() == []


class TestTokenExpiry:
    """docs/protocol.md §8.4: the channel re-checks its token at exp and shuts down once it has expired."""

    async def test_an_expiring_token_shuts_the_channel_down(self, app):
        # Whole-second exp as in real tokens: valid now, expired within a second.
        exp = int(time.time()) + 1
        token = sign({"role": "anon", "exp": exp}, SECRET)
        client = Client(app, token=token)
        client.join(join_ref="3")
        await settle()
        client.received()
        deadline = time.monotonic() + 3.0 * max(1.0, MS * 1000)
        while TOPIC in client.socket.channels and time.monotonic() < deadline:
            await asyncio.sleep(10 * MS)
        system, close = client.received()
        assert system[:4] == ["3", None, TOPIC, "system"]
        assert system[4]["status"] == "error"
        assert re.fullmatch(r"Token has expired \d+ seconds ago", system[4]["message"]), system
        assert close == phx_close("3")

    async def test_a_long_lived_token_is_rechecked_within_five_minutes(self, app):
        client = await joined(app)
        timer = client.channel()._expiry
        assert timer is not None
        assert timer.when() - app.loop.time() <= 300.0

    async def test_closing_the_channel_cancels_the_check(self, app):
        client = await joined(app)
        timer = client.channel()._expiry
        client.push("1", "2", TOPIC, "phx_leave", {})
        assert timer.cancelled()


class TestAccessTokenRefresh:
    """docs/protocol.md §8.3: `access_token` swaps the channel's token, or shuts it down when invalid."""

    async def test_a_valid_token_replaces_the_old_one_silently(self, app):
        client = await joined(app)
        token = make_token(sub="new")
        client.push("1", "2", TOPIC, "access_token", {"access_token": token})
        assert client.received() == []
        assert client.channel().token == token
        assert client.channel().claims["sub"] == "new"

    async def test_an_expired_token_shuts_the_channel_down(self, app):
        client = await joined(app)
        client.push("1", "2", TOPIC, "access_token", {"access_token": make_token(exp_in=-30)})
        [system, close] = client.received()
        assert re.fullmatch(r"Token has expired \d+ seconds ago", system[4]["message"])
        assert close == phx_close("1")

    async def test_a_malformed_token_shuts_the_channel_down(self, app):
        client = await joined(app)
        client.push("1", "2", TOPIC, "access_token", {"access_token": "not-a-jwt"})
        assert_shut_down(client, "1", "The token provided is not a valid JWT")

    @pytest.mark.parametrize("payload", [{}, {"access_token": None}, {"access_token": "sb_publishable_x"}, "x"])
    async def test_no_usable_token_is_ignored(self, app, payload):
        client = await joined(app)
        before = client.channel().token
        client.push("1", "2", TOPIC, "access_token", payload)
        assert client.received() == []
        assert client.channel().token == before
