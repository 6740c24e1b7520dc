"""A Channel on its narrow seams: a fake socket, a fake server context, a fake or real hub, no App.

Channel talks to the rest of the server only through session_context.py's
Protocols (ChannelSocket, SessionContext) and the Broker; these tests give it
small stand-ins for all of them. A FakeBroker records what the channel asks of
pub/sub; with an InProcessBroker over a real Hub, a FakeSubscriber on the same
stream sees what other clients would receive. No loop runs: the
channels here are public (no policy checks) and never time out."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from fakes import SECRET, FakeConnection, decode, make_tenant, make_token

from realtime_core.broker import InProcessBroker
from realtime_core.channel import PAYLOAD_SIZE_EXCEEDED, Channel
from realtime_core.config import Settings
from realtime_core.hub import TOO_MANY_MESSAGES, Audience, ChannelState, Hub, Publication, StreamKey
from realtime_core.jwt import verify
from realtime_core.limits import BUCKET_SECONDS, RateCounter
from realtime_core.payloads import JoinPayload
from realtime_core.protocol import V1, V2, Codec, Message
from realtime_core.tenants import Tenant, TenantRegistry

TOPIC = "realtime:room"
KEY = StreamKey("realtime-dev", False, "room")
T0 = 1_000.0


class FakeMetrics:
    malformed_messages = 0

    def join_refused(self, code: str) -> None:
        raise AssertionError(f"no join is refused here ({code})")


class FakeBroker:
    """Records what the channel asks of pub/sub; delivers nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def publish(self, tenant: Tenant, key: StreamKey, publication: Publication, now: float, exclude: Any = None) -> int:
        self.calls.append(("publish", key, publication, exclude))
        return 0

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int = 1) -> None:
        self.calls.append(("accepted", key, kind, count))

    def subscribe(self, key: StreamKey, subscriber: Any) -> None:
        self.calls.append(("subscribe", key, subscriber))

    def unsubscribe(self, key: StreamKey, subscriber: Any) -> None:
        self.calls.append(("unsubscribe", key, subscriber))

    def presence_join(self, key: StreamKey, owner: Any, presence_key: str, meta: dict[str, Any]) -> Any:
        self.calls.append(("presence_join", key, owner, presence_key, meta))
        return None

    def presence_leave(self, key: StreamKey, owner: Any) -> Any:
        self.calls.append(("presence_leave", key, owner))
        return None

    def presence_state(self, key: StreamKey) -> dict[str, Any]:
        return {}


class FakeContext:
    """A SessionContext: the server as a channel sees it."""

    def __init__(self, broker: Any, tenant: Tenant) -> None:
        self.settings = Settings(channel_error_backoff_ms=0)
        self.tenants = TenantRegistry([tenant])
        self.broker = broker
        # What the channel reports for usage metering (no observer: nothing is counted here).
        self.hub = getattr(broker, "hub", None) or Hub()
        self.metrics = FakeMetrics()
        self.sockets: set[Any] = set()
        self.shutting_down = False
        self.clock = T0
        self.loop = asyncio.new_event_loop()  # only for call_later; the timers are cancelled at close

    def now(self) -> float:
        return self.clock

    def spawn(self, coro: Any, *, name: Any = None, on_error: Any = None) -> None:
        coro.close()
        raise AssertionError("a public channel starts no task here")

    def verify_token(self, tenant: Tenant, token: str) -> dict[str, Any]:
        return verify(token, tenant.keys)

    def authorizer_for(self, tenant: Tenant) -> None:
        return None

    def services_failed(self, tenant: Tenant) -> bool:
        return False

    def cdc_for(self, tenant: Tenant) -> None:
        return None

    def replication_connected(self, tenant: Tenant) -> bool:
        return False

    async def replay(self, tenant: Tenant, topic: str, since_ms: int, limit: int) -> list[Any]:
        return []


class FakeSocket:
    """A ChannelSocket: the connection a channel writes to, and its owner's bookkeeping."""

    def __init__(self, ctx: FakeContext, codec: Codec = V2) -> None:
        self.ctx = ctx
        self.tenant = next(iter(ctx.tenants))
        self.codec = codec
        self.conn = FakeConnection()
        self.token = make_token()
        self.x_headers: dict[str, str] = {}
        self.counted = True
        self.channels: dict[str, Any] = {}
        self.closed_channels: list[Any] = []
        self.accepted = 0

    def send_protocol(self, frame: bytes, topic: str, private: bool = False) -> None:
        self.conn.send(frame)

    def hold(self, msg: Message) -> None:
        raise AssertionError("a public channel holds nothing")

    def release(self, messages: int, size: int) -> None:
        raise AssertionError("a public channel holds nothing")

    def channel_closed(self, channel: Any) -> None:
        self.closed_channels.append(channel)

    def received(self) -> list[Any]:
        frames, self.conn.frames = self.conn.frames, []
        return [decode(frame) for frame in frames]


class FakeSubscriber:
    """Another client's channel on the same stream, as the hub sees it (hub.Subscriber)."""

    def __init__(self, codec: Codec = V2) -> None:
        self.codec = codec
        self.topic = TOPIC
        self.sub_topic = "room"
        self.private = False
        self.reads_broadcast = self.reads_presence = True
        self.replayed = None
        self.claims: dict[str, Any] = {"role": "anon"}
        self.state = ChannelState.JOINED
        self.conn = FakeConnection()
        self.shutdowns: list[str] = []

    def push(self, event: str, payload: Any) -> None:
        raise AssertionError("the hub never pushes to a subscriber")

    def shutdown(self, text: str) -> None:
        self.shutdowns.append(text)

    def received(self) -> list[Any]:
        frames, self.conn.frames = self.conn.frames, []
        return [decode(frame) for frame in frames]


def make_channel(socket: FakeSocket, **config: Any) -> Channel:
    payload = JoinPayload.parse({"config": config})
    channel = Channel(socket, TOPIC, "room", "1", payload, socket.token, {"role": "anon"})  # type: ignore[arg-type]
    socket.channels[TOPIC] = channel
    return channel


def push(channel: Channel, event: str, payload: Any, ref: str = "2") -> None:
    channel.handle_in(Message(TOPIC, event, payload, ref=ref, join_ref="1"))


@pytest.fixture
def tenant() -> Tenant:
    tenant = make_tenant()
    tenant.events = RateCounter(T0)  # counted on the fake clock
    tenant.presence_events = RateCounter(T0)
    assert tenant.keys.secret == SECRET
    return tenant


@pytest.fixture
def hub_ctx(tenant):
    ctx = FakeContext(InProcessBroker(Hub()), tenant)
    yield ctx
    ctx.loop.close()


@pytest.fixture
def fake_ctx(tenant):
    ctx = FakeContext(FakeBroker(), tenant)
    yield ctx
    ctx.loop.close()


class TestWithAFakeBroker:
    def test_start_subscribes_and_close_unsubscribes_and_leaves_presence(self, fake_ctx):
        socket = FakeSocket(fake_ctx)
        channel = make_channel(socket)
        channel.start()
        assert fake_ctx.broker.calls == [("subscribe", KEY, channel)]
        channel.close()
        assert fake_ctx.broker.calls[1:] == [("unsubscribe", KEY, channel), ("presence_leave", KEY, channel)]
        assert channel.state is ChannelState.CLOSED
        assert socket.closed_channels == [channel]

    def test_a_broadcast_is_published_once_excluding_the_sender(self, fake_ctx):
        channel = make_channel(FakeSocket(fake_ctx))
        channel.start()
        accepted: list[tuple[Any, ...]] = []

        class Observer:
            def accepted(self, tenant, kind, key, count):  # type: ignore[no-untyped-def]
                accepted.append((key, kind, count))

        fake_ctx.hub.observers.append(Observer())
        push(channel, "broadcast", {"event": "e", "payload": {"n": 1}})
        [(kind, key, publication, exclude)] = fake_ctx.broker.calls[1:]
        assert accepted == [(KEY, "broadcast", 1)]  # counted once, as sent
        assert (kind, key, exclude) == ("publish", KEY, channel)
        assert publication.topic == TOPIC and publication.event == "broadcast"
        assert orjson.loads(publication.payload) == {"event": "e", "payload": {"n": 1}}
        assert publication.audience is Audience.BROADCAST

    def test_with_self_broadcast_the_sender_is_not_excluded(self, fake_ctx):
        channel = make_channel(FakeSocket(fake_ctx), broadcast={"self": True})
        channel.start()
        push(channel, "broadcast", {"event": "e", "payload": {}})
        assert fake_ctx.broker.calls[-1][3] is None

    def test_an_oversized_broadcast_is_not_published_and_acked_with_an_error(self, fake_ctx, tenant):
        socket = FakeSocket(fake_ctx)
        channel = make_channel(socket, broadcast={"ack": True})
        channel.start()
        socket.received()
        push(channel, "broadcast", {"event": "e", "payload": {"x": "y" * tenant.limits.max_payload_size_in_kb * 1024}})
        assert [call[0] for call in fake_ctx.broker.calls] == ["subscribe"]
        assert socket.received() == [
            ["1", "2", TOPIC, "phx_reply", {"status": "error", "response": PAYLOAD_SIZE_EXCEEDED}]
        ]

    def test_a_track_goes_to_the_broker_with_the_channel_as_owner(self, fake_ctx):
        channel = make_channel(FakeSocket(fake_ctx), presence={"key": "alice"})
        channel.start()
        push(channel, "presence", {"type": "presence", "event": "track", "payload": {"online": True}})
        assert ("presence_join", KEY, channel, "alice", {"online": True}) in fake_ctx.broker.calls


class TestWithAHub:
    """An InProcessBroker over a real Hub: what a channel sends reaches other subscribers."""

    def test_a_broadcast_reaches_the_other_subscribers_but_not_the_sender(self, hub_ctx):
        socket = FakeSocket(hub_ctx)
        channel = make_channel(socket)
        channel.start()
        other, v1 = FakeSubscriber(V2), FakeSubscriber(V1)
        hub_ctx.broker.subscribe(KEY, other)
        hub_ctx.broker.subscribe(KEY, v1)
        socket.received()
        push(channel, "broadcast", {"event": "e", "payload": {"n": 1}})
        assert other.received() == [[None, None, TOPIC, "broadcast", {"event": "e", "payload": {"n": 1}}]]
        assert v1.received() == [
            {"ref": None, "topic": TOPIC, "event": "broadcast", "payload": {"event": "e", "payload": {"n": 1}}}
        ]
        assert socket.received() == []

    def test_a_track_sends_the_diff_to_every_subscriber_and_close_sends_the_leave(self, hub_ctx):
        socket = FakeSocket(hub_ctx)
        channel = make_channel(socket, presence={"key": "alice"})
        channel.start()
        other = FakeSubscriber()
        hub_ctx.broker.subscribe(KEY, other)
        push(channel, "presence", {"type": "presence", "event": "track", "payload": {"online": True}})
        [[_, _, _, event, diff]] = other.received()
        assert event == "presence_diff"
        assert list(diff["joins"]) == ["alice"] and diff["leaves"] == {}
        assert hub_ctx.broker.presence_state(KEY)["alice"]["metas"][0]["online"] is True
        channel.close()
        [[_, _, _, event, diff]] = other.received()
        assert (event, list(diff["leaves"]), diff["joins"]) == ("presence_diff", ["alice"], {})
        assert hub_ctx.broker.hub.presences == {}, "an empty presence topic is forgotten"
        assert hub_ctx.broker.hub.subscribers(KEY) == [other]

    def test_over_the_events_limit_the_receivers_shut_down(self, hub_ctx, tenant):
        socket = FakeSocket(hub_ctx)
        channel = make_channel(socket)
        channel.start()
        other = FakeSubscriber()
        hub_ctx.broker.subscribe(KEY, other)
        tenant.events.add(tenant.limits.max_events_per_second * BUCKET_SECONDS, T0)
        hub_ctx.clock = T0 + BUCKET_SECONDS
        push(channel, "broadcast", {"event": "e", "payload": {}})
        assert other.shutdowns == [TOO_MANY_MESSAGES]
        assert other.conn.frames == []
