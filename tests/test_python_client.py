"""The official Python client (PyPI `realtime` 2.34.1) against `realtime-core serve`.

realtime-py connects with only `?apikey=` and so always speaks vsn 1.0.0
(docs/protocol.md §1.2), and it validates every server message with pydantic (docs/protocol.md §10.7): a
frame of the wrong shape is dropped silently, so each test checks what a user
of the client would see (subscribe states, callbacks, presence state). Its
BroadcastPayload TypedDict keeps only `event`, `payload` and `meta`, so the
`type` key the server sends is not visible here (test_protocol_e2e.py checks it)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from conftest import MS, make_token
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.types import RealtimeAcknowledgementStatus
from wire import V2, RawClient, eventually

pytestmark = pytest.mark.pg

SUBSCRIBED = RealtimeSubscribeStates.SUBSCRIBED
CHANNEL_ERROR = RealtimeSubscribeStates.CHANNEL_ERROR
CLOSED = RealtimeSubscribeStates.CLOSED


def options(*, ack: bool = False, self: bool = False, key: str = "", presence: bool = False, private: bool = False):
    return {
        "config": {
            "broadcast": {"ack": ack, "self": self},
            "presence": {"key": key, "enabled": presence},
            "private": private,
        }
    }


class States:
    """A subscribe callback that records (state, error) pairs."""

    def __init__(self) -> None:
        self.seen: list[tuple[RealtimeSubscribeStates, Exception | None]] = []

    def __call__(self, state: RealtimeSubscribeStates, error: Exception | None) -> None:
        self.seen.append((state, error))

    @property
    def states(self) -> list[RealtimeSubscribeStates]:
        return [state for state, _ in self.seen]

    def reason(self) -> str:
        """The `reason` of the first CHANNEL_ERROR (realtime-py wraps the response as JSON)."""
        error = next(err for state, err in self.seen if state == CHANNEL_ERROR)
        return json.loads(str(error))["reason"]


@pytest.fixture
async def clients(server) -> AsyncIterator[Callable[..., AsyncRealtimeClient]]:
    """Make AsyncRealtimeClients for `server`; all are closed at the end."""
    made: list[AsyncRealtimeClient] = []

    def make(token: str | None = None) -> AsyncRealtimeClient:
        client = AsyncRealtimeClient(server.ws_url, token or make_token(), auto_reconnect=False)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def subscribed(client: AsyncRealtimeClient, topic: str, params: dict | None = None, setup=None):
    """Subscribe to `topic` and wait for SUBSCRIBED; return the channel and its States."""
    channel = client.channel(topic, params or options())
    if setup is not None:
        setup(channel)
    states = States()
    await channel.subscribe(states)
    assert states.states == [SUBSCRIBED], states.seen
    return channel, states


# -- subscribe ----------------------------------------------------------------------


async def test_subscribe_reports_subscribed(clients, topic):
    client = clients()
    channel, states = await subscribed(client, topic)
    assert channel.is_joined
    assert states.seen == [(SUBSCRIBED, None)]


async def test_one_client_subscribes_to_several_topics(clients, topic):
    client = clients()
    for suffix in ("a", "b", "c"):
        await subscribed(client, f"{topic}-{suffix}")
    assert sorted(client.channels) == [f"realtime:{topic}-{s}" for s in ("a", "b", "c")]


# -- broadcast ----------------------------------------------------------------------


async def test_broadcast_reaches_another_client_but_not_the_sender_by_default(clients, topic):
    got_a: list[Any] = []
    got_b: list[Any] = []
    sender, _ = await subscribed(clients(), topic, setup=lambda ch: ch.on_broadcast("*", got_a.append))
    receiver, _ = await subscribed(clients(), topic, setup=lambda ch: ch.on_broadcast("msg", got_b.append))

    await sender.send_broadcast("msg", {"text": "hello"})
    await eventually(lambda: got_b, what="delivery")
    assert got_b == [{"event": "msg", "payload": {"text": "hello"}}]
    # One publish queues every subscriber's copy: the sender's would come before this marker.
    await receiver.send_broadcast("marker", {})
    await eventually(lambda: got_a, what="the marker")
    assert got_a == [{"event": "marker", "payload": {}}]


async def test_broadcast_with_self_true_reaches_the_sender_too(clients, topic):
    got_a: list[Any] = []
    got_b: list[Any] = []
    sender, _ = await subscribed(clients(), topic, options(self=True), lambda ch: ch.on_broadcast("msg", got_a.append))
    await subscribed(clients(), topic, setup=lambda ch: ch.on_broadcast("*", got_b.append))

    await sender.send_broadcast("msg", {"n": 1})
    await eventually(lambda: got_a and got_b, what="delivery to both")
    assert got_a == got_b == [{"event": "msg", "payload": {"n": 1}}]


async def test_broadcast_callbacks_filter_by_event(clients, topic):
    got: list[Any] = []
    sender, _ = await subscribed(clients(), topic)
    await subscribed(clients(), topic, setup=lambda ch: ch.on_broadcast("wanted", got.append))
    await sender.send_broadcast("other", {"n": 1})
    await sender.send_broadcast("wanted", {"n": 2})
    await eventually(lambda: got, what="delivery")
    # "wanted" was sent after "other": a wrongly passed "other" would be first.
    assert [m["payload"] for m in got] == [{"n": 2}]


async def test_broadcast_with_ack_is_acknowledged_ok(clients, topic):
    sender, _ = await subscribed(clients(), topic, options(ack=True))
    acked = asyncio.get_running_loop().create_future()
    push = await sender.push("broadcast", {"type": "broadcast", "event": "e", "payload": {"n": 1}})
    push.receive(RealtimeAcknowledgementStatus.Ok, lambda resp: acked.set_result(("ok", resp)))
    push.receive(RealtimeAcknowledgementStatus.Error, lambda resp: acked.set_result(("error", resp)))
    status, _ = await asyncio.wait_for(acked, 3000 * MS)
    assert status == "ok"


async def test_http_send_reaches_socket_subscribers(clients, topic):
    got: list[Any] = []
    sender, _ = await subscribed(clients(), topic)
    await subscribed(clients(), topic, setup=lambda ch: ch.on_broadcast("rest", got.append))
    await sender.http_send("rest", {"via": "http"})
    await eventually(lambda: got, what="delivery")
    assert got == [{"event": "rest", "payload": {"via": "http"}}]


# -- presence -----------------------------------------------------------------------


class PresenceLog:
    """Presence callbacks of one channel, recorded."""

    def __init__(self, channel) -> None:
        self.syncs = 0
        self.joins: list[tuple[str, list, list]] = []
        self.leaves: list[tuple[str, list, list]] = []
        channel.on_presence_sync(self._sync)
        channel.on_presence_join(lambda key, cur, new: self.joins.append((key, list(cur), list(new))))
        channel.on_presence_leave(lambda key, cur, left: self.leaves.append((key, list(cur), list(left))))

    def _sync(self) -> None:
        self.syncs += 1


def fields(state: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """A presence state without the opaque presence_ref values."""
    return {key: [{k: v for k, v in p.items() if k != "presence_ref"} for p in metas] for key, metas in state.items()}


async def test_presence_track_is_seen_by_others_with_sync_and_join(clients, topic):
    logs: dict[str, PresenceLog] = {}

    def watch(name):
        def setup(channel):
            logs[name] = PresenceLog(channel)

        return setup

    alice, _ = await subscribed(clients(), topic, options(key="alice"), watch("alice"))
    bob, _ = await subscribed(clients(), topic, options(key="bob"), watch("bob"))
    await eventually(lambda: logs["bob"].syncs >= 1, what="bob's initial sync")

    await alice.track({"status": "online"})
    await eventually(lambda: "alice" in bob.presence_state(), what="alice in bob's state")
    assert fields(bob.presence_state()) == {"alice": [{"status": "online"}]}
    [(key, current, new)] = logs["bob"].joins
    assert (key, current) == ("alice", [])
    assert fields({key: new}) == {"alice": [{"status": "online"}]}
    # The tracker receives its own join too (docs/protocol.md §5.2).
    await eventually(lambda: "alice" in alice.presence_state(), what="alice in her own state")


async def test_presence_late_joiner_sees_the_current_state(clients, topic):
    alice, _ = await subscribed(clients(), topic, options(key="alice", presence=True))
    bob, _ = await subscribed(clients(), topic, options(key="bob", presence=True))
    await alice.track({"name": "Alice"})
    await bob.track({"name": "Bob"})
    await eventually(lambda: len(alice.presence_state()) == 2, what="both tracked")

    synced = asyncio.Event()
    carol, _ = await subscribed(clients(), topic, options(key="carol"), lambda ch: ch.on_presence_sync(synced.set))
    await asyncio.wait_for(synced.wait(), 3000 * MS)
    assert fields(carol.presence_state()) == {"alice": [{"name": "Alice"}], "bob": [{"name": "Bob"}]}


async def test_presence_leave_is_seen_when_a_client_disconnects(clients, topic):
    log: list[PresenceLog] = []
    watcher, _ = await subscribed(clients(), topic, options(key="watcher"), lambda ch: log.append(PresenceLog(ch)))
    leaver_client = clients()
    leaver, _ = await subscribed(leaver_client, topic, options(key="leaver", presence=True))
    await leaver.track({"here": True})
    await eventually(lambda: "leaver" in watcher.presence_state(), what="leaver tracked")

    await leaver_client.close()
    await eventually(lambda: "leaver" not in watcher.presence_state(), what="leaver gone")
    [(key, current, left)] = log[0].leaves
    assert (key, current) == ("leaver", [])
    assert fields({key: left}) == {"leaver": [{"here": True}]}


async def test_presence_leave_is_seen_when_a_client_untracks(clients, topic):
    watcher, _ = await subscribed(clients(), topic, options(key="watcher", presence=True))
    other, _ = await subscribed(clients(), topic, options(key="other", presence=True))
    await other.track({"a": 1})
    await eventually(lambda: "other" in watcher.presence_state(), what="tracked")
    await other.untrack()
    await eventually(lambda: "other" not in watcher.presence_state(), what="untracked")


async def test_presence_update_replaces_the_tracked_payload(clients, topic):
    log: list[PresenceLog] = []
    watcher, _ = await subscribed(clients(), topic, options(key="watcher"), lambda ch: log.append(PresenceLog(ch)))
    alice, _ = await subscribed(clients(), topic, options(key="alice", presence=True))
    await alice.track({"status": "online"})
    await eventually(lambda: "alice" in watcher.presence_state(), what="tracked")
    first_ref = watcher.presence_state()["alice"][0]["presence_ref"]

    await alice.track({"status": "away"})
    await eventually(lambda: fields(watcher.presence_state()) == {"alice": [{"status": "away"}]}, what="updated state")
    assert watcher.presence_state()["alice"][0]["presence_ref"] != first_ref
    assert [key for key, _, _ in log[0].leaves] == ["alice"]


# -- auth ---------------------------------------------------------------------------


async def test_set_auth_with_a_new_token_keeps_channels_joined(clients, topic):
    got: list[Any] = []
    client = clients()
    channel, states = await subscribed(client, topic, options(self=True), lambda ch: ch.on_broadcast("e", got.append))

    await client.set_auth(make_token(exp_in=7200, sub="user-2"))
    # The broadcast follows the access_token push on the socket: a refusal would come before it.
    await channel.send_broadcast("e", {"after": "refresh"})
    await eventually(lambda: got, what="delivery after refresh")
    assert got[0]["payload"] == {"after": "refresh"}
    assert channel.is_joined
    assert states.states == [SUBSCRIBED]


async def test_set_auth_with_an_invalid_token_closes_the_channel(clients, topic):
    client = clients()
    _, states = await subscribed(client, topic)
    await client.set_auth("not-a-jwt")
    await eventually(lambda: CLOSED in states.states, what="CLOSED")
    # The server's system error arrives first (realtime-py reports it as CHANNEL_ERROR).
    assert states.states == [SUBSCRIBED, CHANNEL_ERROR, CLOSED]
    error = next(err for state, err in states.seen if state == CHANNEL_ERROR)
    assert json.loads(str(error)) == {
        "channel": topic,
        "extension": "system",
        "message": "The token provided is not a valid JWT",
        "status": "error",
    }


async def test_join_to_a_private_channel_without_permission_is_a_channel_error(clients, topic):
    channel = clients().channel(topic, options(private=True))
    states = States()
    await channel.subscribe(states)
    assert states.states == [CHANNEL_ERROR]
    assert states.reason() == f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"


async def test_join_with_an_expired_access_token_is_a_channel_error(clients, topic):
    client = clients()
    await client.connect()
    made = time.time()
    await client.set_auth(make_token(exp_in=-5))  # the join payload carries it
    channel = client.channel(topic)
    states = States()
    await channel.subscribe(states)
    assert states.states == [CHANNEL_ERROR]
    reason = states.reason()
    assert reason.startswith("InvalidJWTToken: Token has expired ") and reason.endswith(" seconds ago"), reason
    # exp is whole seconds: the age is 5 s plus what the join took, give or take one.
    assert 4 <= int(reason.split()[-3]) <= 6 + int(time.time() - made)


# -- unsubscribe --------------------------------------------------------------------


async def test_unsubscribe_closes_the_channel_and_stops_delivery(clients, topic):
    got: list[Any] = []
    client = clients()
    channel, states = await subscribed(client, topic, setup=lambda ch: ch.on_broadcast("*", got.append))
    sent: list[Any] = []
    sender, _ = await subscribed(clients(), topic, options(self=True), lambda ch: ch.on_broadcast("*", sent.append))

    await channel.unsubscribe()
    await eventually(lambda: CLOSED in states.states, what="CLOSED")
    assert f"realtime:{topic}" not in client.channels

    await sender.send_broadcast("e", {})
    # The sender's own copy shows the publish is done, and with it the copy a still-joined
    # channel would get. The rejoin below is the marker on the client's socket: its reply
    # comes after that copy and after a phx_close of the old join; both would reach `got`
    # or `states` before SUBSCRIBED.
    await eventually(lambda: sent, what="the sender's own copy")
    again, _ = await subscribed(client, topic, setup=lambda ch: ch.on_broadcast("*", got.append))
    assert states.states == [SUBSCRIBED, CLOSED]
    assert got == []

    # The topic can be joined again on the same socket.
    await sender.send_broadcast("e", {"n": 2})
    await eventually(lambda: got, what="delivery after rejoin")
    assert again.is_joined


async def test_unsubscribed_topic_is_closed_on_the_server(clients, server, topic):
    """After unsubscribe the server sends phx_close and no longer counts the channel: a raw
    V2 receiver sees the leaving client's presence go away."""
    async with await RawClient.open(server.socket_url(make_token(), V2)) as raw:
        await raw.join(f"realtime:{topic}", {"presence": {"enabled": True}})
        await raw.expect_event(f"realtime:{topic}", "presence_state")
        channel, _ = await subscribed(clients(), topic, options(key="py", presence=True))
        await channel.track({"x": 1})
        joined = await raw.expect_event(f"realtime:{topic}", "presence_diff")
        assert list(joined.payload["joins"]) == ["py"]
        await channel.unsubscribe()
        left = await raw.expect_event(f"realtime:{topic}", "presence_diff")
        assert list(left.payload["leaves"]) == ["py"]
