"""Tests for realtime_core.hub: streams and the one encode-once delivery path (docs/protocol.md §3.3 step 12, §9.2).

The subscribers here are stand-ins for hub.Subscriber: a codec, a connection that
records frames, a state, and shutdown(). The publications count how often each
codec was asked for a frame. No loop is needed."""

from __future__ import annotations

from collections import Counter
from typing import Any

from realtime_core.config import Limits
from realtime_core.hub import TOO_MANY_MESSAGES, Audience, ChannelState, Hub, Publication, StreamKey
from realtime_core.jwt import KeySet
from realtime_core.limits import BUCKET_SECONDS, RateCounter
from realtime_core.protocol import JSON, V1, V2, Codec, UserBroadcast
from realtime_core.tenants import Tenant

ROOM = StreamKey("t", False, "room")
NOW = 100.0


class Conn:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


class Subscriber:
    """What Hub.deliver() needs of a Channel."""

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
        self.sub_topic = "room"
        self.state = ChannelState.JOINED
        self.shutdowns: list[str] = []
        self.private = private
        self.reads_broadcast = reads_broadcast
        self.reads_presence = reads_presence
        self.replayed = replayed

    def shutdown(self, text: str) -> None:
        self.shutdowns.append(text)


class CountingEncode:
    """A Publication that records how often each codec was asked for a frame."""

    topic = "realtime:room"
    kind = "broadcast"
    payload = b"{}"
    user = None

    def __init__(
        self, skip: Codec | None = None, audience: Audience = Audience.BROADCAST, message_id: str | None = None
    ) -> None:
        self.calls: Counter[Any] = Counter()
        self.skip = skip
        self.audience = audience
        self.message_id = message_id

    def frame(self, codec: Codec) -> bytes | None:
        self.calls[codec] += 1
        if codec is self.skip:
            return None
        return f"frame-for-{codec.vsn}".encode()


def make_tenant(**limits: int) -> Tenant:
    """A tenant whose counters start at NOW (as Tenant.from_row starts them at load time)."""
    return Tenant(
        id="1", external_id="t", name="t", limits=Limits(**limits), keys=KeySet(secret="s"), events=RateCounter(NOW)
    )


def subscribed(hub: Hub, key: StreamKey, *codecs: Codec) -> list[Subscriber]:
    subs = [Subscriber(codec) for codec in codecs]
    for sub in subs:
        hub.subscribe(key, sub)  # type: ignore[arg-type]
    return subs


def assert_received(sub: Subscriber, *frames: bytes) -> None:
    assert sub.conn.frames == list(frames)


def assert_received_nothing(sub: Subscriber) -> None:
    assert sub.conn.frames == []
    assert sub.shutdowns == []


class TestStreams:
    def test_subscribe_and_unsubscribe(self):
        hub = Hub()
        [a, b] = subscribed(hub, ROOM, V1, V2)
        assert hub.subscribers(ROOM) == [a, b]
        hub.unsubscribe(ROOM, a)  # type: ignore[arg-type]
        assert hub.subscribers(ROOM) == [b]

    def test_the_last_unsubscribe_drops_the_stream(self):
        hub = Hub()
        [a] = subscribed(hub, ROOM, V1)
        assert hub.stream_count() == 1
        hub.unsubscribe(ROOM, a)  # type: ignore[arg-type]
        assert hub.stream_count() == 0
        assert hub.subscribers(ROOM) == []

    def test_unsubscribing_twice_or_from_an_unknown_stream_is_harmless(self):
        hub = Hub()
        [a] = subscribed(hub, ROOM, V1)
        hub.unsubscribe(ROOM, a)  # type: ignore[arg-type]
        hub.unsubscribe(ROOM, a)  # type: ignore[arg-type]
        hub.unsubscribe(StreamKey("t", False, "other"), a)  # type: ignore[arg-type]
        assert hub.stream_count() == 0

    def test_subscribing_twice_delivers_once(self):
        hub = Hub()
        [a] = subscribed(hub, ROOM, V2)
        hub.subscribe(ROOM, a)  # type: ignore[arg-type]
        assert hub.publish(make_tenant(), ROOM, CountingEncode(), NOW) == 1
        assert len(a.conn.frames) == 1

    def test_public_and_private_streams_of_one_name_are_separate(self):
        """docs/protocol.md §3.3 step 12."""
        hub = Hub()
        [public] = subscribed(hub, StreamKey("t", False, "room"), V2)
        [private] = subscribed(hub, StreamKey("t", True, "room"), V2)
        hub.publish(make_tenant(), StreamKey("t", True, "room"), CountingEncode(), NOW)
        assert_received_nothing(public)
        assert len(private.conn.frames) == 1

    def test_streams_of_two_tenants_are_separate(self):
        hub = Hub()
        [other] = subscribed(hub, StreamKey("other", False, "room"), V2)
        hub.publish(make_tenant(), ROOM, CountingEncode(), NOW)
        assert_received_nothing(other)


class TestPublish:
    """Each frame is built once per codec in use and the same bytes go to every subscriber."""

    def test_a_stream_without_subscribers_encodes_nothing(self):
        encode = CountingEncode()
        assert Hub().publish(make_tenant(), ROOM, encode, NOW) == 0
        assert encode.calls == Counter()

    def test_many_subscribers_on_one_codec_encode_once(self):
        hub = Hub()
        subs = subscribed(hub, ROOM, *[V2] * 50)
        encode = CountingEncode()
        assert hub.publish(make_tenant(), ROOM, encode, NOW) == 50
        assert encode.calls == Counter({V2: 1})
        for sub in subs:
            assert_received(sub, b"frame-for-2.0.0")

    def test_every_subscriber_gets_the_same_bytes_object(self):
        hub = Hub()
        a, b = subscribed(hub, ROOM, V2, V2)
        hub.publish(make_tenant(), ROOM, CountingEncode(), NOW)
        assert a.conn.frames[0] is b.conn.frames[0]

    def test_two_codecs_encode_once_each(self):
        hub = Hub()
        subs = subscribed(hub, ROOM, *[V1, V2] * 20)
        encode = CountingEncode()
        assert hub.publish(make_tenant(), ROOM, encode, NOW) == 40
        assert encode.calls == Counter({V1: 1, V2: 1})
        for sub in subs:
            assert_received(sub, f"frame-for-{sub.codec.vsn}".encode())

    def test_the_sender_is_excluded(self):
        hub = Hub()
        sender, other = subscribed(hub, ROOM, V2, V2)
        assert hub.publish(make_tenant(), ROOM, CountingEncode(), NOW, exclude=sender) == 1  # type: ignore[arg-type]
        assert_received_nothing(sender)
        assert_received(other, b"frame-for-2.0.0")

    def test_an_excluded_sender_alone_on_a_codec_costs_no_encoding(self):
        hub = Hub()
        sender, _ = subscribed(hub, ROOM, V1, V2)
        encode = CountingEncode()
        hub.publish(make_tenant(), ROOM, encode, NOW, exclude=sender)  # type: ignore[arg-type]
        assert encode.calls == Counter({V2: 1})

    def test_a_codec_returning_none_is_skipped(self):
        hub = Hub()
        v1s = subscribed(hub, ROOM, V1, V1, V1)
        v2s = subscribed(hub, ROOM, V2, V2)
        encode = CountingEncode(skip=V1)
        assert hub.publish(make_tenant(), ROOM, encode, NOW) == 2, "only deliveries are counted"
        assert encode.calls == Counter({V1: 1, V2: 1}), "None is remembered, not re-asked per subscriber"
        for sub in v1s:
            assert_received_nothing(sub)
        for sub in v2s:
            assert_received(sub, b"frame-for-2.0.0")

    def test_deliveries_count_against_the_tenant_events_rate(self):
        hub = Hub()
        subscribed(hub, ROOM, *[V2] * 10)
        tenant = make_tenant()
        hub.publish(tenant, ROOM, CountingEncode(), NOW)
        assert tenant.events.average(NOW + BUCKET_SECONDS) == 10 / 1 / BUCKET_SECONDS

    def test_skipped_codecs_are_not_counted_as_events(self):
        hub = Hub()
        subscribed(hub, ROOM, V1, V1, V2)
        tenant = make_tenant()
        hub.publish(tenant, ROOM, CountingEncode(skip=V1), NOW)
        assert tenant.events.average(NOW + BUCKET_SECONDS) == 1 / 1 / BUCKET_SECONDS


class TestEventsLimit:
    """docs/protocol.md §9.2: while the events/s limit is triggered, receivers shut down instead."""

    @staticmethod
    def limited_tenant() -> Tenant:
        tenant = make_tenant(max_events_per_second=10)
        tenant.events.add(50, NOW)  # 10/s once the bucket ends
        return tenant

    def test_receivers_shut_down_with_too_many_messages(self):
        hub = Hub()
        subs = subscribed(hub, ROOM, V1, V2, V2)
        encode = CountingEncode()
        delivered = hub.publish(self.limited_tenant(), ROOM, encode, NOW + BUCKET_SECONDS)
        assert delivered == 0
        assert encode.calls == Counter(), "nothing is encoded for a refused message"
        for sub in subs:
            assert sub.shutdowns == [TOO_MANY_MESSAGES]
            assert sub.conn.frames == []

    def test_the_text_is_upstreams(self):
        assert TOO_MANY_MESSAGES == "Too many messages per second"

    def test_the_excluded_sender_is_not_shut_down(self):
        hub = Hub()
        sender, receiver = subscribed(hub, ROOM, V2, V2)
        hub.publish(self.limited_tenant(), ROOM, CountingEncode(), NOW + BUCKET_SECONDS, exclude=sender)  # type: ignore[arg-type]
        assert sender.shutdowns == []
        assert receiver.shutdowns == [TOO_MANY_MESSAGES]

    def test_below_the_limit_messages_are_delivered(self):
        hub = Hub()
        [sub] = subscribed(hub, ROOM, V2)
        tenant = make_tenant(max_events_per_second=10)
        tenant.events.add(49, NOW)  # 9.8/s
        assert hub.publish(tenant, ROOM, CountingEncode(), NOW + BUCKET_SECONDS) == 1
        assert sub.shutdowns == []

    def test_a_shutdown_that_unsubscribes_does_not_break_the_loop(self):
        """Real channels unsubscribe inside shutdown(): delivery must iterate over a copy."""
        hub = Hub()

        class Unsubscribing(Subscriber):
            def shutdown(self, text: str) -> None:
                super().shutdown(text)
                hub.unsubscribe(ROOM, self)  # type: ignore[arg-type]

        subs = [Unsubscribing(V2) for _ in range(3)]
        for sub in subs:
            hub.subscribe(ROOM, sub)  # type: ignore[arg-type]
        hub.publish(self.limited_tenant(), ROOM, CountingEncode(), NOW + BUCKET_SECONDS)
        assert [sub.shutdowns for sub in subs] == [[TOO_MANY_MESSAGES]] * 3
        assert hub.stream_count() == 0


class TestPrivateReceivers:
    """docs/protocol.md §7: what a private channel receives follows its read policies."""

    PRIVATE = StreamKey("t", True, "room")

    def test_broadcasts_skip_private_channels_without_broadcast_read(self):
        hub = Hub()
        reader = Subscriber(V2, private=True)
        presence_only = Subscriber(V2, private=True, reads_broadcast=False)
        for sub in (reader, presence_only):
            hub.subscribe(self.PRIVATE, sub)  # type: ignore[arg-type]
        assert hub.publish(make_tenant(), self.PRIVATE, CountingEncode(), NOW) == 1
        assert reader.conn.frames and not presence_only.conn.frames

    def test_presence_diffs_skip_private_channels_without_presence_read(self):
        hub = Hub()
        reader = Subscriber(V2, private=True, reads_presence=False)
        presence = Subscriber(V2, private=True, reads_broadcast=False)
        for sub in (reader, presence):
            hub.subscribe(self.PRIVATE, sub)  # type: ignore[arg-type]
        assert hub.publish(make_tenant(), self.PRIVATE, CountingEncode(audience=Audience.PRESENCE), NOW) == 1
        assert presence.conn.frames and not reader.conn.frames

    def test_a_message_already_replayed_to_a_channel_is_not_delivered_again(self):
        hub = Hub()
        replayed = Subscriber(V2, private=True, replayed={"m1"})
        fresh = Subscriber(V2, private=True)
        for sub in (replayed, fresh):
            hub.subscribe(self.PRIVATE, sub)  # type: ignore[arg-type]
        assert hub.publish(make_tenant(), self.PRIVATE, CountingEncode(message_id="m1"), NOW) == 1
        assert fresh.conn.frames and not replayed.conn.frames
        assert hub.publish(make_tenant(), self.PRIVATE, CountingEncode(message_id="m2"), NOW) == 2


class TestDeliver:
    """Hub.deliver: a batch of (subscribers, publication), one limit check and one count for all."""

    def test_a_batch_delivers_each_publication_to_its_own_subscribers(self):
        a, b = Subscriber(V2), Subscriber(V1)
        first, second = CountingEncode(), CountingEncode()
        tenant = make_tenant()
        assert Hub().deliver(tenant, [([a], first), ([a, b], second)], NOW) == 3  # type: ignore[list-item]
        assert a.conn.frames == [b"frame-for-2.0.0", b"frame-for-2.0.0"]
        assert b.conn.frames == [b"frame-for-1.0.0"]
        assert (first.calls, second.calls) == (Counter({V2: 1}), Counter({V2: 1, V1: 1}))
        assert tenant.events.average(NOW + BUCKET_SECONDS) == 3 / 1 / BUCKET_SECONDS

    def test_over_the_limit_every_joined_receiver_of_the_batch_shuts_down(self):
        a, b, closed = Subscriber(V2), Subscriber(V2), Subscriber(V2)
        closed.state = ChannelState.CLOSED
        tenant = TestEventsLimit.limited_tenant()
        batch = [([a], CountingEncode()), ([b, closed], CountingEncode())]
        assert Hub().deliver(tenant, batch, NOW + BUCKET_SECONDS) == 0  # type: ignore[arg-type]
        assert (a.shutdowns, b.shutdowns, closed.shutdowns) == ([TOO_MANY_MESSAGES], [TOO_MANY_MESSAGES], [])

    def test_postgres_changes_ignore_the_channel_read_policies(self):
        """Rows are authorized by RLS; a private channel denied broadcast still gets its changes."""
        denied = Subscriber(V2, private=True, reads_broadcast=False, reads_presence=False)
        publication = CountingEncode(audience=Audience.POSTGRES_CHANGES)
        assert Hub().deliver(make_tenant(), [([denied], publication)], NOW) == 1  # type: ignore[list-item]


class Observer:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.nbytes: list[int] = []  # egress reported with each delivery

    def accepted(self, tenant, kind, key, count):  # type: ignore[no-untyped-def]
        self.events.append(("accepted", tenant.external_id, kind, key, count))

    def delivered(self, tenant, publication, subs, count, nbytes):  # type: ignore[no-untyped-def]
        self.events.append(("delivered", publication.event, publication.kind, len(list(subs)), count))
        self.nbytes.append(nbytes)


class TestObservers:
    """Observers (metering, channel statistics) hear of each message once, with its receivers' count."""

    def test_each_publication_is_reported_once_with_what_it_reached(self):
        hub, observer = Hub(), Observer()
        hub.observers.append(observer)  # type: ignore[arg-type]
        sender, *_ = subscribed(hub, ROOM, V2, V2, V1)
        tenant = make_tenant()
        hub.accepted(tenant, "broadcast", ROOM)
        hub.publish(tenant, ROOM, Publication("realtime:room", "shout", b"{}"), NOW, exclude=sender)  # type: ignore[arg-type]
        hub.publish(tenant, ROOM, Publication("realtime:room", "p", b"{}", kind="presence"), NOW)
        assert observer.events == [
            ("accepted", "t", "broadcast", ROOM, 1),
            ("delivered", "shout", "broadcast", 3, 2),
            ("delivered", "p", "presence", 3, 3),
        ]

    def test_egress_is_the_bytes_queued_on_every_receiver_with_one_codec_or_several(self):
        """Egress: count × frame with one codec; with V1 and V2 receivers, each codec's frame
        times its receivers (skipped ones, the sender and private ones denied, excluded)."""
        for codecs in ((V2, V2, V2), (V2, V1, V2, V1, V1)):
            hub, observer = Hub(), Observer()
            hub.observers.append(observer)  # type: ignore[arg-type]
            sender, *receivers = subscribed(hub, ROOM, *codecs)
            denied = Subscriber(V1, private=True, reads_broadcast=False)
            hub.subscribe(ROOM, denied)  # type: ignore[arg-type]
            tenant = make_tenant()
            hub.publish(tenant, ROOM, Publication("realtime:room", "shout", b'{"n":1}'), NOW, exclude=sender)  # type: ignore[arg-type]
            hub.publish(tenant, ROOM, Publication("realtime:room", "p", b"{}", kind="presence"), NOW)
            everyone = [sender, *receivers, denied]
            assert sum(observer.nbytes) == sum(len(f) for sub in everyone for f in sub.conn.frames)
            assert observer.nbytes[0] == sum(len(f) for sub in receivers for f in sub.conn.frames[:1])

    def test_nothing_is_reported_while_the_limit_shuts_receivers_down(self):
        hub, observer = Hub(), Observer()
        hub.observers.append(observer)  # type: ignore[arg-type]
        subscribed(hub, ROOM, V2)
        hub.publish(
            TestEventsLimit.limited_tenant(), ROOM, Publication("realtime:room", "x", b"{}"), NOW + BUCKET_SECONDS
        )
        assert observer.events == []


class Reader:
    """A TallyReader that keeps what it was handed, by second."""

    def __init__(self) -> None:
        self.seconds: list[tuple[int, dict[tuple[StreamKey, str], tuple[int, ...]]]] = []

    def absorb(self, tallies, second, now):  # type: ignore[no-untyped-def]
        self.seconds.append(
            (
                second,
                {
                    key: (t.accepted, t.publications, t.deliveries, t.nbytes, t.sends, t.sent, t.sent_bytes)
                    for key, t in tallies.items()
                },
            )
        )

    def total(self, index: int) -> int:
        return sum(row[index] for _, tallies in self.seconds for row in tallies.values())


class TestTallies:
    """The hub counts per stream, kind and second; readers get each second's counts once."""

    def test_a_second_is_handed_over_when_the_next_starts_and_settle_hands_over_the_current(self):
        clock = [NOW]
        hub, reader = Hub(lambda: clock[0]), Reader()
        hub.attach(reader)  # type: ignore[arg-type]
        sender, *receivers = subscribed(hub, ROOM, V2, V2, V1)
        tenant = make_tenant()
        hub.accepted(tenant, "broadcast", ROOM)
        hub.publish(tenant, ROOM, Publication("realtime:room", "shout", b"{}"), NOW, exclude=sender)  # type: ignore[arg-type]
        hub.publish(tenant, ROOM, Publication("realtime:room", "p", b"{}", kind="presence"), NOW + 0.5)
        assert reader.seconds == []  # nothing handed over within the second
        clock[0] = NOW + 1.2
        hub.sent(tenant, ROOM, sender, "presence", 1, 40)  # type: ignore[arg-type]
        queued = sum(len(f) for sub in (sender, *receivers) for f in sub.conn.frames)
        assert reader.seconds == [
            (
                int(NOW),
                {
                    (ROOM, "broadcast"): (1, 1, 2, sum(len(sub.conn.frames[0]) for sub in receivers), 0, 0, 0),
                    (ROOM, "presence"): (0, 1, 3, queued - sum(len(sub.conn.frames[0]) for sub in receivers), 0, 0, 0),
                },
            )
        ]
        hub.settle()
        assert reader.seconds[1] == (int(NOW) + 1, {(ROOM, "presence"): (0, 0, 0, 0, 1, 1, 40)})
        hub.settle()  # nothing new: nothing handed over again
        assert len(reader.seconds) == 2

    def test_a_settle_during_a_fan_out_counts_the_publication_once(self):
        """A receiver closed by its own send may make a reader settle mid-fan-out."""
        hub, reader = Hub(lambda: NOW), Reader()
        hub.attach(reader)  # type: ignore[arg-type]
        receivers = subscribed(hub, ROOM, V2, V2)
        receivers[0].conn.send = lambda frame: hub.settle()  # type: ignore[method-assign]
        tenant = make_tenant()
        for _ in range(3):
            hub.publish(tenant, ROOM, Publication("realtime:room", "e", b"{}"), NOW)
        hub.settle()
        assert (reader.total(1), reader.total(2)) == (3, 6)

    def test_a_batch_is_tallied_under_each_publications_receivers(self):
        hub, reader = Hub(lambda: NOW), Reader()
        hub.attach(reader)  # type: ignore[arg-type]
        public = Subscriber(V2)
        private = Subscriber(V2, private=True)
        tenant = make_tenant()
        batch = [
            ([public], Publication("realtime:room", "c", b"{}", kind="postgres_changes")),
            ([private], Publication("realtime:room", "c", b"{}", kind="postgres_changes")),
            ([private], Publication("realtime:room", "c", b"{}", kind="postgres_changes")),
        ]
        assert hub.deliver(tenant, batch, NOW) == 3  # type: ignore[arg-type]
        hub.settle()
        [(_, tallies)] = reader.seconds
        assert {key: row[2] for key, row in tallies.items()} == {
            (ROOM, "postgres_changes"): 1,
            (ROOM._replace(private=True), "postgres_changes"): 2,
        }


class TestPublication:
    def test_json_is_framed_verbatim_per_codec(self):
        publication = Publication("realtime:room", "broadcast", b'{"a":1}')
        assert publication.frame(V2) == V2.broadcast_json("realtime:room", "broadcast", b'{"a":1}')
        assert publication.frame(V1) == V1.broadcast_json("realtime:room", "broadcast", b'{"a":1}')

    def test_a_user_broadcast_without_a_kind_4_frame_is_not_delivered_to_v2(self):
        message = UserBroadcast("e" * 256, b"{}", JSON, {})  # an event over 255 bytes
        assert Publication("realtime:room", "broadcast", user=message).frame(V2) is None
