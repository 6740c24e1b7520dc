"""The local registry of subscribers and the one function that delivers to them.

A stream is (tenant, private, sub_topic): public and private channels with the
same name are separate streams (docs/protocol.md §3.3 step 12). Channels
subscribe when their join succeeds and unsubscribe when they close; the hub
also holds each stream's presences.

Every message a subscriber receives from others goes through Hub.deliver():
socket and REST broadcasts, broadcasts from the database, presence diffs and
Postgres Changes. It checks the tenant's events/s limit (shutting the receivers
down while it is reached), skips the sender unless it asked for its own
broadcasts, skips private subscribers whose read policy denies the message,
builds each frame once per codec in use and queues the same bytes on every
receiver (docs/design.md §2: frame built once). The connection behind
Subscriber.conn applies the slow-consumer rule: a receiver whose unsent
backlog passes the high-water mark is disconnected, never waited for.
While a delivery trace runs, Hub.tracer (trace.py) is told of each publication
before it is delivered.

What is delivered is counted here, per stream and kind, in Hub.tallies: one lookup and a few
additions per publication. The readers (channel statistics, metrics, usage metering) are
handed the tallies once a second and whenever they read (Hub.settle()), not called per
publication. Hub.observers are called per message: the live tail attaches one while in use.

Nothing here imports a session, a tenant service or the app: they reach the
hub through the small Protocols below."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .presence import PresenceTopic
from .protocol import Codec, UserBroadcast

if TYPE_CHECKING:
    from .tenants import Tenant

__all__ = [
    "KINDS",
    "TOO_MANY_MESSAGES",
    "Audience",
    "ChannelState",
    "Clock",
    "DeliveryObserver",
    "Hub",
    "Publication",
    "Sink",
    "StreamKey",
    "Subscriber",
    "Tallies",
    "Tally",
    "TallyReader",
    "Tracer",
]

TOO_MANY_MESSAGES = "Too many messages per second"

Clock = Callable[[], float]  # the event loop's monotonic time, in seconds

# A message's kind is its origin, as usage is metered (README, "Usage"): a client broadcast, a
# REST message (or an admin test broadcast), presence, a Postgres change, or a message from the
# database (realtime.send, broadcast_changes, replay).
BROADCAST_KIND = "broadcast"
REST_KIND = "rest"
PRESENCE_KIND = "presence"
POSTGRES_CHANGES_KIND = "postgres_changes"
DB_BROADCAST_KIND = "db_broadcast"
KINDS = (BROADCAST_KIND, PRESENCE_KIND, POSTGRES_CHANGES_KIND, DB_BROADCAST_KIND, REST_KIND)


class StreamKey(NamedTuple):
    tenant: str
    private: bool
    sub_topic: str


class ChannelState(enum.IntEnum):
    """A subscriber is joined until it closes; a closed one ignores everything."""

    JOINED = 1
    CLOSED = 2


class Audience(enum.Enum):
    """Which read policy of a private subscriber a publication needs (docs/protocol.md §7)."""

    BROADCAST = "broadcast"
    PRESENCE = "presence"
    POSTGRES_CHANGES = "postgres_changes"  # authorized by RLS on the rows, not by channel policies


# Enum members bound once: looking one up on its class costs about 150 ns in CPython 3.11.
_BROADCAST = Audience.BROADCAST
_PRESENCE = Audience.PRESENCE
_JOINED = ChannelState.JOINED


class Sink(Protocol):
    """A subscriber's connection (net/websocket.WebSocketConnection)."""

    def send(self, frame: bytes) -> None: ...


class Subscriber(Protocol):
    """What the hub and the tenant services need of a joined channel."""

    codec: Codec
    topic: str  # the wire topic, "realtime:<sub_topic>"
    sub_topic: str
    private: bool
    reads_broadcast: bool
    reads_presence: bool
    replayed: set[str] | None  # ids already sent as replay: their live copies are skipped
    claims: dict[str, Any]
    state: ChannelState
    # Where frames go: conn.send() queues one (the slow-consumer rule applies). Called as
    # sub.conn.send(frame), which CPython runs about twice as fast as a bound method kept
    # in an attribute (measured: 76 against 145 ns per call).
    conn: Sink

    def push(self, event: str, payload: Any) -> None: ...

    def shutdown(self, text: str) -> None: ...


class DeliveryObserver(Protocol):
    """Sees each message the hub delivers (the live tail, while one is open; counting is the
    tallies' job, TallyReader). Called once per message, never per receiver: it must only
    look, in memory. `nbytes` is the egress of the
    frames queued: the complete WebSocket frames, headers included, summed over receivers."""

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int) -> None:
        """`count` messages of `kind` were accepted for the stream `key` (before delivery)."""

    def delivered(
        self, tenant: Tenant, publication: Publication, subs: Iterable[Subscriber], count: int, nbytes: int
    ) -> None:
        """`publication` was queued on `count` of `subs` (the receivers it was offered to)."""

    def sent(self, tenant: Tenant, kind: str, key: StreamKey, subscriber: Subscriber, count: int, nbytes: int) -> None:
        """`count` frames of `kind` (`nbytes` in all) went to one `subscriber` of `key` outside deliver()."""


class RemoteSubject(Protocol):
    """A channel joined on another node of a cluster, as its replication leader knows it
    (cluster/leader.RemoteChannel): enough to tell whose it is in a delivery trace."""

    node: str
    connection: str | None  # its connection's id (None: that node did not say)
    sub_topic: str
    claims: dict[str, Any]


class Tally:
    """What one stream got of one kind during one second of the hub's clock.

    `sizes` counts publications by payload size (bytes of the JSON text, or of a user
    broadcast's data): exact, and small, as a stream's payloads take few sizes in a second.
    `sent` and `sent_bytes` are frames sent to one subscriber outside a fan-out, `sends` the
    calls that reported them (Hub.sent())."""

    __slots__ = ("accepted", "deliveries", "nbytes", "publications", "sends", "sent", "sent_bytes", "sizes")

    def __init__(self) -> None:
        self.accepted = 0  # messages accepted from senders
        self.publications = 0  # publications offered to the stream's receivers
        self.deliveries = 0  # frames of those queued on receivers
        self.nbytes = 0  # their egress: complete WebSocket frames, summed over receivers
        self.sizes: dict[int, int] = {}  # payload size → publications
        self.sends = 0
        self.sent = 0
        self.sent_bytes = 0


# The tallies of one second: (stream, kind) → Tally.
Tallies = Mapping[tuple["StreamKey", str], Tally]


class TallyReader(Protocol):
    """Reads the hub's tallies (channel statistics, metrics, usage): Hub.attach() sets
    `settle`, which the reader calls before it reads its own counts, so that they hold
    every publication delivered so far."""

    settle: Callable[[], None]

    def absorb(self, tallies: Tallies, second: int, now: float) -> None:
        """Add `tallies`, counted during `second` of the hub's clock and handed over at its
        time `now`. Only counts, in memory."""


class Tracer(Protocol):
    """Records the decisions taken for traced subjects (trace.Tracer). Hub.tracer is None while
    no trace runs, so that delivery costs one attribute test per publication for tracing."""

    def watching(self, tenant: str) -> set[str] | None:
        """The topics traced on the tenant `tenant`, or None."""

    def published(
        self,
        tenant: Tenant,
        key: StreamKey,
        publication: Publication,
        subs: Collection[Subscriber],
        exclude: Subscriber | None,
        now: float,
    ) -> None:
        """`publication` is about to be delivered to `subs`, the subscribers of `key`, but `exclude`."""

    def decided(
        self, tenant: str, sub: Subscriber, kind: str, event: str | None, delivered: bool, reason: str | None
    ) -> None:
        """A decision about a message of `kind` for `sub` taken outside Hub.publish()."""

    def decided_remote(
        self, tenant: str, channel: RemoteSubject, kind: str, event: str | None, delivered: bool, reason: str | None
    ) -> None:
        """A decision about a message of `kind` taken here for a channel joined on another node."""

    def sent(self) -> None:
        """The frames of the decisions just recorded are queued."""

    def subscribed(self, key: StreamKey, sub: Subscriber) -> None:
        """`sub` joined the stream `key`."""

    def unsubscribed(self, key: StreamKey, sub: Subscriber) -> None:
        """`sub` left the stream `key`."""


class Publication:
    """One message for the subscribers of a topic, as plain values (a broker may carry it between nodes).

    `kind` is its origin (KINDS). `payload` is JSON text, sent verbatim; with `user` set the
    message is a user broadcast instead (V2 receivers get a kind-4 frame, V1 receivers JSON, and
    binary payloads reach V2 receivers only, docs/protocol.md §2.3). `message_id`:
    skipped by subscribers that got it as a replay (docs/protocol.md §4.4). `origin`: in a
    cluster, what names the message on every node (its node id and publish time), set by the
    cluster's broker as it publishes; None otherwise.

    Not changed once published. A plain class rather than a frozen dataclass: one is made
    per message, and a frozen dataclass took 1.5 µs to make, this about 0.3 µs."""

    __slots__ = ("audience", "event", "kind", "message_id", "origin", "payload", "topic", "user")

    def __init__(
        self,
        topic: str,
        event: str,
        payload: bytes = b"",
        user: UserBroadcast | None = None,
        audience: Audience = Audience.BROADCAST,
        message_id: str | None = None,
        kind: str = BROADCAST_KIND,
        origin: tuple[str, float] | None = None,
    ) -> None:
        self.kind = kind
        self.topic = topic
        self.event = event
        self.payload = payload
        self.user = user
        self.audience = audience
        self.message_id = message_id
        self.origin = origin

    def __repr__(self) -> str:
        return f"<Publication {self.topic} {self.event} {self.audience.value}>"

    def frame(self, codec: Codec) -> bytes | None:
        """The frame for `codec`; None when the codec cannot carry the message."""
        if self.user is None:
            return codec.broadcast_json(self.topic, self.event, self.payload)
        try:
            return codec.user_broadcast(self.topic, self.user)
        except ValueError:
            # A topic, event or metadata over 255 bytes cannot be a kind-4 frame.
            return None


class Hub:
    """Which subscribers listen on which stream in this process, their presences, and delivery."""

    __slots__ = (
        "_second",
        "_streams",
        "_until",
        "clock",
        "joins",
        "observers",
        "presence_joins",
        "presence_leaves",
        "presences",
        "readers",
        "tallies",
        "tracer",
    )

    def __init__(self, clock: Clock = time.monotonic) -> None:
        """`clock`: the time deliver() is given (`now`), the event loop's: its seconds are the
        tallies' (time.monotonic, as asyncio's loop.time())."""
        self._streams: dict[StreamKey, dict[Subscriber, None]] = {}
        self.presences: dict[StreamKey, PresenceTopic] = {}
        self.observers: list[DeliveryObserver] = []  # told of every message accepted and delivered
        self.readers: list[TallyReader] = []  # handed the tallies (attach())
        self.clock = clock
        # (stream, kind) → what it got during second `_second`; handed over from `_until` on.
        self.tallies: dict[tuple[StreamKey, str], Tally] = {}
        self._second = 0
        self._until = 0.0
        self.joins: dict[str, int] = {}  # tenant → subscriptions made since start (the time series' joins)
        # tenant → presences joined and left since start (counted by the broker from its diffs)
        self.presence_joins: dict[str, int] = {}
        self.presence_leaves: dict[str, int] = {}
        self.tracer: Tracer | None = None  # set while a delivery trace runs (trace.py)

    # Registry

    def subscribe(self, key: StreamKey, subscriber: Subscriber) -> None:
        subs = self._streams.get(key)
        if subs is None:
            subs = self._streams[key] = {}
        subs[subscriber] = None
        self.joins[key.tenant] = self.joins.get(key.tenant, 0) + 1
        if self.tracer is not None:
            self.tracer.subscribed(key, subscriber)

    def unsubscribe(self, key: StreamKey, subscriber: Subscriber) -> bool:
        """Remove `subscriber`; True when the stream has no local subscriber left."""
        if self.tracer is not None:
            self.tracer.unsubscribed(key, subscriber)
        subs = self._streams.get(key)
        if subs is None:
            return True
        subs.pop(subscriber, None)
        if subs:
            return False
        del self._streams[key]
        return True

    def has_subscribers(self, key: StreamKey) -> bool:
        return key in self._streams

    def subscribers(self, key: StreamKey) -> list[Subscriber]:
        return list(self._streams.get(key, ()))

    def stream_keys(self) -> list[StreamKey]:
        """Every stream with a local subscriber."""
        return list(self._streams)

    def stream_count(self) -> int:
        return len(self._streams)

    def presence_topic(self, key: StreamKey) -> PresenceTopic:
        """The presences of `key`, created empty when it has none."""
        topic = self.presences.get(key)
        if topic is None:
            topic = self.presences[key] = PresenceTopic()
        return topic

    def forget_presence_topic(self, key: StreamKey) -> None:
        """Drop the presences of `key` once nobody is tracked there."""
        topic = self.presences.get(key)
        if topic is not None and not topic:
            del self.presences[key]

    # Tallies

    def attach(self, reader: TallyReader) -> None:
        """Hand `reader` the tallies from now on."""
        reader.settle = self.settle
        self.readers.append(reader)

    def settle(self) -> None:
        """Hand the tallies counted so far to every reader, and count afresh."""
        self._roll(self.clock())

    def _roll(self, now: float) -> None:
        """Hand the tallies of `_second` over; later counts are `now`'s second's."""
        tallies = self.tallies
        if tallies:
            self.tallies = {}
            second = self._second
            for reader in self.readers:
                reader.absorb(tallies, second, now)
        if now >= self._until:
            self._second = int(now)
            self._until = self._second + 1.0

    def _tally(self, key: StreamKey, kind: str) -> Tally:
        """The tally of `key` and `kind` in this second, made at its first count."""
        now = self.clock()
        if now >= self._until:
            self._roll(now)
        tally = self.tallies.get((key, kind))
        if tally is None:
            tally = self.tallies[(key, kind)] = Tally()
        return tally

    # Delivery

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int = 1) -> None:
        """Record that `count` messages of `kind` were accepted for `key` (what senders send,
        once authorized and checked; deliveries are recorded by deliver())."""
        self._tally(key, kind).accepted += count
        for observer in self.observers:
            observer.accepted(tenant, kind, key, count)

    def sent(self, tenant: Tenant, key: StreamKey, subscriber: Subscriber, kind: str, count: int, nbytes: int) -> None:
        """Record that `count` frames of `kind`, `nbytes` in all, were sent to `subscriber` outside
        deliver(): the `presence_state` a channel gets at its join, the messages it gets as a replay."""
        if count:
            tally = self._tally(key, kind)
            tally.sends += 1
            tally.sent += count
            tally.sent_bytes += nbytes
            for observer in self.observers:
                observer.sent(tenant, kind, key, subscriber, count, nbytes)

    def publish(
        self,
        tenant: Tenant,
        key: StreamKey,
        publication: Publication,
        now: float,
        exclude: Subscriber | None = None,
    ) -> int:
        """Deliver `publication` to the local subscribers of `key`; return how many got it."""
        subs = self._streams.get(key)
        tracer = self.tracer
        if tracer is not None:
            # Decided before delivery: a rate-limited delivery closes the receivers.
            tracer.published(tenant, key, publication, subs or (), exclude, now)
            delivered = self.deliver(tenant, ((subs, publication),), now, exclude) if subs else 0
            tracer.sent()
            return delivered
        if not subs:
            return 0
        return self._deliver(tenant, ((subs, publication),), now, exclude, key)

    def deliver(
        self,
        tenant: Tenant,
        batch: Iterable[tuple[Iterable[Subscriber], Publication]],
        now: float,
        exclude: Subscriber | None = None,
    ) -> int:
        """Deliver each publication of `batch` to its subscribers but `exclude`; return how many
        frames were queued, counted against the tenant's events/s.

        The subscribers must be joined (the registry drops a subscriber when it closes;
        a caller with its own sets leaves closed ones out), which keeps a test out of the
        per-subscriber loop. Private ones whose read policy denies the publication's
        audience are skipped (docs/protocol.md §7), and so are those that already got
        its message_id as a replay (docs/protocol.md §4.4). While the tenant's events/s
        limit is reached, receivers are shut down instead (docs/protocol.md §9.2).

        Each publication is tallied under its stream: the receivers' topic and the first
        receiver's private flag (public and private receivers of a topic are offered separate
        publications, except by Postgres Changes, which are tallied under the first)."""
        return self._deliver(tenant, batch, now, exclude, None)

    def _deliver(
        self,
        tenant: Tenant,
        batch: Iterable[tuple[Iterable[Subscriber], Publication]],
        now: float,
        exclude: Subscriber | None,
        key: StreamKey | None,
    ) -> int:
        """deliver(), the publications all of stream `key` (None: each its receivers')."""
        if tenant.events.reached(tenant.limits.max_events_per_second, now):
            for subs, _ in batch:
                for sub in list(subs):
                    if sub is not exclude and sub.state is _JOINED:
                        sub.shutdown(TOO_MANY_MESSAGES)
            return 0
        if now >= self._until:
            self._roll(now)
        delivered = 0
        observers = self.observers
        for subs, publication in batch:
            count, nbytes = _fan_out(subs, publication, exclude)
            delivered += count
            stream = _stream_of(tenant, subs, publication) if key is None else key
            # self.tallies read after the fan-out: a receiver closed by it may have settled them.
            tallies = self.tallies
            tally_key = (stream, publication.kind)
            tally = tallies.get(tally_key)
            if tally is None:
                tally = tallies[tally_key] = Tally()
            tally.publications += 1
            tally.deliveries += count
            tally.nbytes += nbytes
            user = publication.user
            size = len(publication.payload) if user is None else len(user.data)
            sizes = tally.sizes
            sizes[size] = sizes.get(size, 0) + 1
            for observer in observers:
                observer.delivered(tenant, publication, subs, count, nbytes)
        tenant.events.add(delivered, now)
        return delivered


def _stream_of(tenant: Tenant, subs: Iterable[Subscriber], publication: Publication) -> StreamKey:
    """The stream a publication offered to `subs` is tallied under (see Hub.deliver)."""
    for sub in subs:
        return StreamKey(tenant.external_id, sub.private, sub.sub_topic)
    return StreamKey(tenant.external_id, False, publication.topic.removeprefix("realtime:"))


def _fan_out(subs: Iterable[Subscriber], publication: Publication, exclude: Subscriber | None) -> tuple[int, int]:
    """Hub.deliver's loop for one publication: frames built once per codec, the same bytes queued.
    Returns the frames queued and their bytes (egress: the frames are complete WebSocket frames).

    Nearly every stream has a single codec in use: this loop builds one frame, then only queues
    it, and its bytes are count × len(frame). The first receiver on another codec hands the rest
    to _fan_out_mixed, which keeps a frame per codec and adds up bytes as it queues.
    A function of its own: CPython ran this loop about 3 % slower nested in the batch loop."""
    audience = publication.audience
    message_id = publication.message_id
    broadcast = audience is _BROADCAST
    presence = audience is _PRESENCE
    first: Codec | None = None
    frame: bytes | None = None
    delivered = 0
    rest = iter(subs)
    for sub in rest:
        if sub is exclude:
            continue
        if sub.private and not (sub.reads_broadcast if broadcast else not presence or sub.reads_presence):
            continue
        if message_id is not None and sub.replayed is not None and message_id in sub.replayed:
            continue
        codec = sub.codec
        if codec is not first:
            if first is not None:
                nbytes = delivered * len(frame) if frame is not None else 0
                count, more = _fan_out_mixed(chain((sub,), rest), publication, exclude, {first: frame})
                return delivered + count, nbytes + more
            first = codec
            frame = publication.frame(codec)
        if frame is not None:
            sub.conn.send(frame)
            delivered += 1
    return delivered, (delivered * len(frame) if frame is not None else 0)


def _fan_out_mixed(
    subs: Iterable[Subscriber], publication: Publication, exclude: Subscriber | None, frames: dict[Codec, bytes | None]
) -> tuple[int, int]:
    """_fan_out's loop once receivers of several codecs were seen: a frame per codec (`frames`
    holds those built), bytes added per receiver."""
    audience = publication.audience
    message_id = publication.message_id
    broadcast = audience is _BROADCAST
    presence = audience is _PRESENCE
    delivered = nbytes = 0
    for sub in subs:
        if sub is exclude:
            continue
        if sub.private and not (sub.reads_broadcast if broadcast else not presence or sub.reads_presence):
            continue
        if message_id is not None and sub.replayed is not None and message_id in sub.replayed:
            continue
        codec = sub.codec
        try:
            frame = frames[codec]
        except KeyError:
            frame = frames[codec] = publication.frame(codec)
        if frame is not None:
            sub.conn.send(frame)
            delivered += 1
            nbytes += len(frame)
    return delivered, nbytes
