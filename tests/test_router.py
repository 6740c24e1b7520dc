"""Tests for realtime_core.router: streams and the encode-once fan-out (docs/protocol.md §3.3 step 12, §9.2).

The subscribers here are stand-ins with the three things publish() touches: a
codec, a connection that records frames, and shutdown(). No loop is needed."""

from __future__ import annotations

from collections import Counter
from typing import Any

from realtime_core.config import Limits
from realtime_core.jwt import KeySet
from realtime_core.limits import BUCKET_SECONDS, RateCounter
from realtime_core.protocol import V1, V2, Codec
from realtime_core.router import TOO_MANY_MESSAGES, Router, StreamKey
from realtime_core.tenants import Tenant

ROOM = StreamKey("t", False, "room")
NOW = 100.0


class Conn:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


class Subscriber:
    """What Router.publish() needs of a Channel."""

    def __init__(
        self,
        codec: Codec,
        *,
        private: bool = False,
        reads_broadcast: bool = True,
        reads_presence: bool = True,
        replayed: set[str] | None = None,
    ) -> None:
        self.codec = codec
        self.conn = Conn()
        self.shutdowns: list[str] = []
        self.private = private
        self.reads_broadcast = reads_broadcast
        self.reads_presence = reads_presence
        self.replayed = replayed

    def shutdown(self, text: str) -> None:
        self.shutdowns.append(text)


class CountingEncode:
    """An Encode that records how often each codec was asked for a frame."""

    def __init__(self, skip: Codec | None = None) -> None:
        self.calls: Counter[Any] = Counter()
        self.skip = skip

    def __call__(self, codec: Codec) -> bytes | None:
        self.calls[codec] += 1
        if codec is self.skip:
            return None
        return f"frame-for-{codec.vsn}".encode()


def make_tenant(**limits: int) -> Tenant:
    """A tenant whose counters start at NOW (as Tenant.from_row starts them at load time)."""
    return Tenant(
        id="1", external_id="t", name="t", limits=Limits(**limits), keys=KeySet(secret="s"), events=RateCounter(NOW)
    )


def subscribed(router: Router, key: StreamKey, *codecs: Codec) -> list[Subscriber]:
    subs = [Subscriber(codec) for codec in codecs]
    for sub in subs:
        router.subscribe(key, sub)  # type: ignore[arg-type]
    return subs


def assert_received(sub: Subscriber, *frames: bytes) -> None:
    assert sub.conn.frames == list(frames)


def assert_received_nothing(sub: Subscriber) -> None:
    assert sub.conn.frames == []
    assert sub.shutdowns == []


class TestStreams:
    def test_subscribe_and_unsubscribe(self):
        router = Router()
        [a, b] = subscribed(router, ROOM, V1, V2)
        assert router.subscribers(ROOM) == [a, b]
        router.unsubscribe(ROOM, a)  # type: ignore[arg-type]
        assert router.subscribers(ROOM) == [b]

    def test_the_last_unsubscribe_drops_the_stream(self):
        router = Router()
        [a] = subscribed(router, ROOM, V1)
        assert router.stream_count() == 1
        router.unsubscribe(ROOM, a)  # type: ignore[arg-type]
        assert router.stream_count() == 0
        assert router.subscribers(ROOM) == []

    def test_unsubscribing_twice_or_from_an_unknown_stream_is_harmless(self):
        router = Router()
        [a] = subscribed(router, ROOM, V1)
        router.unsubscribe(ROOM, a)  # type: ignore[arg-type]
        router.unsubscribe(ROOM, a)  # type: ignore[arg-type]
        router.unsubscribe(StreamKey("t", False, "other"), a)  # type: ignore[arg-type]
        assert router.stream_count() == 0

    def test_subscribing_twice_delivers_once(self):
        router = Router()
        [a] = subscribed(router, ROOM, V2)
        router.subscribe(ROOM, a)  # type: ignore[arg-type]
        assert router.publish(make_tenant(), ROOM, CountingEncode(), NOW) == 1
        assert len(a.conn.frames) == 1

    def test_public_and_private_streams_of_one_name_are_separate(self):
        """docs/protocol.md §3.3 step 12."""
        router = Router()
        [public] = subscribed(router, StreamKey("t", False, "room"), V2)
        [private] = subscribed(router, StreamKey("t", True, "room"), V2)
        router.publish(make_tenant(), StreamKey("t", True, "room"), CountingEncode(), NOW)
        assert_received_nothing(public)
        assert len(private.conn.frames) == 1

    def test_streams_of_two_tenants_are_separate(self):
        router = Router()
        [other] = subscribed(router, StreamKey("other", False, "room"), V2)
        router.publish(make_tenant(), ROOM, CountingEncode(), NOW)
        assert_received_nothing(other)


class TestPublish:
    """Each frame is built once per codec in use and the same bytes go to every subscriber."""

    def test_a_stream_without_subscribers_encodes_nothing(self):
        encode = CountingEncode()
        assert Router().publish(make_tenant(), ROOM, encode, NOW) == 0
        assert encode.calls == Counter()

    def test_many_subscribers_on_one_codec_encode_once(self):
        router = Router()
        subs = subscribed(router, ROOM, *[V2] * 50)
        encode = CountingEncode()
        assert router.publish(make_tenant(), ROOM, encode, NOW) == 50
        assert encode.calls == Counter({V2: 1})
        for sub in subs:
            assert_received(sub, b"frame-for-2.0.0")

    def test_every_subscriber_gets_the_same_bytes_object(self):
        router = Router()
        a, b = subscribed(router, ROOM, V2, V2)
        router.publish(make_tenant(), ROOM, CountingEncode(), NOW)
        assert a.conn.frames[0] is b.conn.frames[0]

    def test_two_codecs_encode_once_each(self):
        router = Router()
        subs = subscribed(router, ROOM, *[V1, V2] * 20)
        encode = CountingEncode()
        assert router.publish(make_tenant(), ROOM, encode, NOW) == 40
        assert encode.calls == Counter({V1: 1, V2: 1})
        for sub in subs:
            assert_received(sub, f"frame-for-{sub.codec.vsn}".encode())

    def test_the_sender_is_excluded(self):
        router = Router()
        sender, other = subscribed(router, ROOM, V2, V2)
        assert router.publish(make_tenant(), ROOM, CountingEncode(), NOW, exclude=sender) == 1  # type: ignore[arg-type]
        assert_received_nothing(sender)
        assert_received(other, b"frame-for-2.0.0")

    def test_an_excluded_sender_alone_on_a_codec_costs_no_encoding(self):
        router = Router()
        sender, _ = subscribed(router, ROOM, V1, V2)
        encode = CountingEncode()
        router.publish(make_tenant(), ROOM, encode, NOW, exclude=sender)  # type: ignore[arg-type]
        assert encode.calls == Counter({V2: 1})

    def test_a_codec_returning_none_is_skipped(self):
        router = Router()
        v1s = subscribed(router, ROOM, V1, V1, V1)
        v2s = subscribed(router, ROOM, V2, V2)
        encode = CountingEncode(skip=V1)
        assert router.publish(make_tenant(), ROOM, encode, NOW) == 2, "only deliveries are counted"
        assert encode.calls == Counter({V1: 1, V2: 1}), "None is remembered, not re-asked per subscriber"
        for sub in v1s:
            assert_received_nothing(sub)
        for sub in v2s:
            assert_received(sub, b"frame-for-2.0.0")

    def test_deliveries_count_against_the_tenant_events_rate(self):
        router = Router()
        subscribed(router, ROOM, *[V2] * 10)
        tenant = make_tenant()
        router.publish(tenant, ROOM, CountingEncode(), NOW)
        assert tenant.events.average(NOW + BUCKET_SECONDS) == 10 / 1 / BUCKET_SECONDS

    def test_skipped_codecs_are_not_counted_as_events(self):
        router = Router()
        subscribed(router, ROOM, V1, V1, V2)
        tenant = make_tenant()
        router.publish(tenant, ROOM, CountingEncode(skip=V1), NOW)
        assert tenant.events.average(NOW + BUCKET_SECONDS) == 1 / 1 / BUCKET_SECONDS


class TestEventsLimit:
    """docs/protocol.md §9.2: while the events/s limit is triggered, receivers shut down instead."""

    @staticmethod
    def limited_tenant() -> Tenant:
        tenant = make_tenant(max_events_per_second=10)
        tenant.events.add(50, NOW)  # 10/s once the bucket ends
        return tenant

    def test_receivers_shut_down_with_too_many_messages(self):
        router = Router()
        subs = subscribed(router, ROOM, V1, V2, V2)
        encode = CountingEncode()
        delivered = router.publish(self.limited_tenant(), ROOM, encode, NOW + BUCKET_SECONDS)
        assert delivered == 0
        assert encode.calls == Counter(), "nothing is encoded for a refused message"
        for sub in subs:
            assert sub.shutdowns == [TOO_MANY_MESSAGES]
            assert sub.conn.frames == []

    def test_the_text_is_upstreams(self):
        assert TOO_MANY_MESSAGES == "Too many messages per second"

    def test_the_excluded_sender_is_not_shut_down(self):
        router = Router()
        sender, receiver = subscribed(router, ROOM, V2, V2)
        router.publish(self.limited_tenant(), ROOM, CountingEncode(), NOW + BUCKET_SECONDS, exclude=sender)  # type: ignore[arg-type]
        assert sender.shutdowns == []
        assert receiver.shutdowns == [TOO_MANY_MESSAGES]

    def test_below_the_limit_messages_are_delivered(self):
        router = Router()
        [sub] = subscribed(router, ROOM, V2)
        tenant = make_tenant(max_events_per_second=10)
        tenant.events.add(49, NOW)  # 9.8/s
        assert router.publish(tenant, ROOM, CountingEncode(), NOW + BUCKET_SECONDS) == 1
        assert sub.shutdowns == []

    def test_a_shutdown_that_unsubscribes_does_not_break_the_loop(self):
        """Real channels unsubscribe inside shutdown(): publish must iterate over a copy."""
        router = Router()

        class Unsubscribing(Subscriber):
            def shutdown(self, text: str) -> None:
                super().shutdown(text)
                router.unsubscribe(ROOM, self)  # type: ignore[arg-type]

        subs = [Unsubscribing(V2) for _ in range(3)]
        for sub in subs:
            router.subscribe(ROOM, sub)  # type: ignore[arg-type]
        router.publish(self.limited_tenant(), ROOM, CountingEncode(), NOW + BUCKET_SECONDS)
        assert [sub.shutdowns for sub in subs] == [[TOO_MANY_MESSAGES]] * 3
        assert router.stream_count() == 0


class TestPrivateReceivers:
    """docs/protocol.md §7: what a private channel receives follows its read policies."""

    PRIVATE = StreamKey("t", True, "room")

    def test_broadcasts_skip_private_channels_without_broadcast_read(self):
        router = Router()
        reader = Subscriber(V2, private=True)
        presence_only = Subscriber(V2, private=True, reads_broadcast=False)
        for sub in (reader, presence_only):
            router.subscribe(self.PRIVATE, sub)  # type: ignore[arg-type]
        assert router.publish(make_tenant(), self.PRIVATE, CountingEncode(), NOW) == 1
        assert reader.conn.frames and not presence_only.conn.frames

    def test_presence_diffs_skip_private_channels_without_presence_read(self):
        router = Router()
        reader = Subscriber(V2, private=True, reads_presence=False)
        presence = Subscriber(V2, private=True, reads_broadcast=False)
        for sub in (reader, presence):
            router.subscribe(self.PRIVATE, sub)  # type: ignore[arg-type]
        assert router.publish(make_tenant(), self.PRIVATE, CountingEncode(), NOW, presence=True) == 1
        assert presence.conn.frames and not reader.conn.frames

    def test_a_message_already_replayed_to_a_channel_is_not_delivered_again(self):
        router = Router()
        replayed = Subscriber(V2, private=True, replayed={"m1"})
        fresh = Subscriber(V2, private=True)
        for sub in (replayed, fresh):
            router.subscribe(self.PRIVATE, sub)  # type: ignore[arg-type]
        assert router.publish(make_tenant(), self.PRIVATE, CountingEncode(), NOW, message_id="m1") == 1
        assert fresh.conn.frames and not replayed.conn.frames
        assert router.publish(make_tenant(), self.PRIVATE, CountingEncode(), NOW, message_id="m2") == 2
