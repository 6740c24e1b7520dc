"""Delivery traces: every decision the server takes for one subject on one topic, for a while.

An operator starts a trace for a topic and a subject (a JWT `sub`, or one connection id); until
it expires, each message on that topic records, for each of the subject's channels, whether the
server queued it and if not why (REASONS). The hub, the Postgres Changes dispatcher, the channels
(refused writes) and the writer (slow consumers) report here through Hub.tracer, which is None
while no trace is active: the hot path then costs one attribute test per publication.

Memory is bounded: a trace keeps at most MAX_DECISIONS decisions (later ones are counted in
`overflow`), a tenant has at most MAX_ACTIVE traces running, and finished traces are kept for
KEEP_FINISHED seconds (at most MAX_KEPT per tenant) so their decisions can still be read.

In a cluster every node runs the same trace (same id and expiry, admin/trace_api.py) and records
its own decisions. Postgres Changes are decided on the tenant's replication leader for every
node's subscribers: the leader records those of other nodes' channels (decided_remote()), with
the node they are on."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from .hub import Hub, Publication, RemoteSubject, StreamKey, Subscriber

if TYPE_CHECKING:
    from .tenants import Tenant

__all__ = ["MAX_ACTIVE", "MAX_DECISIONS", "REASONS", "Decision", "Trace", "TraceLimit", "Tracer"]

MAX_DECISIONS = 1000  # per trace; later decisions are counted, not kept
MAX_ACTIVE = 10  # running traces per tenant
MAX_KEPT = 20  # finished traces kept per tenant, newest first
KEEP_FINISHED = 600.0  # seconds a finished trace stays readable
MAX_SECONDS = 600  # the longest trace
_MAX_PENDING = 256  # traced connections whose last queued frames are remembered (slow consumers)

SELF = "self"
NOT_JOINED = "not_joined"
STREAM = "stream"
PG_FILTER = "pg_filter"
RLS = "rls"
RLS_ERROR = "rls_error"
PRIVILEGE = "privilege"
PAYLOAD_TOO_LARGE = "payload_too_large"
RATE_LIMITED = "rate_limited"
SLOW_CONSUMER = "slow_consumer"
WRITE_DENIED = "write_denied"
CODEC = "codec"
REASONS = (
    SELF,
    NOT_JOINED,
    STREAM,
    PG_FILTER,
    RLS,
    RLS_ERROR,
    PRIVILEGE,
    PAYLOAD_TOO_LARGE,
    RATE_LIMITED,
    SLOW_CONSUMER,
    WRITE_DENIED,
    CODEC,
)


class TraceLimit(Exception):
    """A tenant already runs MAX_ACTIVE traces."""


class _Socket(Protocol):
    id: str
    claims: dict[str, Any]


class _Channel(Protocol):
    """What a trace reads of a subscriber (channel.Channel)."""

    socket: _Socket
    claims: dict[str, Any]
    conn: _Conn


class _Conn(Protocol):
    """What a trace reads of a subscriber's connection (net/websocket.WebSocketConnection)."""

    session: Any
    dropped_slow: bool  # cut off by the slow-consumer rule

    @property
    def queued(self) -> list[bytes] | None: ...


class Decision:
    """One decision about one message for one of the subject's connections; `node`: the node that
    connection is on when it is not this one (a cluster's replication leader deciding for it)."""

    __slots__ = ("at", "connection", "delivered", "event", "kind", "node", "reason")

    def __init__(
        self,
        kind: str | None,
        event: str | None,
        connection: str | None,
        delivered: bool,
        reason: str | None,
        node: str | None = None,
    ) -> None:
        self.at = time.time()
        self.kind = kind
        self.event = event
        self.connection = connection
        self.delivered = delivered
        self.reason = reason
        self.node = node

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "kind": self.kind,
            "event": self.event,
            "connection": self.connection,
            "delivered": self.delivered,
            "reason": self.reason,
            "node": self.node,
        }


class Trace:
    """One subject on one topic of one tenant, from `created_at` until `expires_at` (wall time)."""

    __slots__ = (
        "channels",
        "connection",
        "created_at",
        "decisions",
        "expires_at",
        "id",
        "overflow",
        "stopped_at",
        "sub",
        "tenant",
        "timer",
        "topic",
    )

    def __init__(
        self,
        tenant: str,
        topic: str,
        sub: str | None,
        connection: str | None,
        seconds: float,
        trace_id: str | None = None,
        created_at: float | None = None,
    ) -> None:
        self.id = trace_id or secrets.token_urlsafe(9)
        self.tenant = tenant
        self.topic = topic
        self.sub = sub
        self.connection = connection
        self.created_at = time.time() if created_at is None else created_at
        self.expires_at = self.created_at + seconds
        self.stopped_at: float | None = None
        self.decisions: list[Decision] = []
        self.overflow = 0
        self.timer: asyncio.TimerHandle | None = None  # ends the trace at expires_at
        # The subject's joined channels on the topic, public and private (Tracer.subscribed()), so
        # that a traced publication costs the subject's channels, not a pass over every receiver.
        self.channels: dict[Subscriber, None] = {}

    @property
    def active(self) -> bool:
        return self.stopped_at is None

    def matches(self, socket: _Socket, claims: dict[str, Any]) -> bool:
        """Whether a channel with `claims` on `socket` belongs to the subject."""
        if self.connection is not None:
            return socket.id == self.connection
        return claims.get("sub") == self.sub

    def matches_remote(self, channel: RemoteSubject) -> bool:
        """Whether a channel joined on another node belongs to the subject."""
        if self.connection is not None:
            return channel.connection == self.connection
        return channel.claims.get("sub") == self.sub

    def add(
        self,
        kind: str | None,
        event: str | None,
        connection: str | None,
        delivered: bool,
        reason: str | None,
        node: str | None = None,
    ) -> Decision | None:
        """Record a decision unless the trace is full (then only count it); return it when kept."""
        if len(self.decisions) >= MAX_DECISIONS:
            self.overflow += 1
            return None
        decision = Decision(kind, event, connection, delivered, reason, node)
        self.decisions.append(decision)
        return decision


class Tracer:
    """The running and recently finished traces of the process, and what records into them.

    Sets `hub.tracer` to itself while a trace is running and back to None when none is."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.traces: dict[str, Trace] = {}  # by id, running and finished
        self._running: dict[tuple[str, str], list[Trace]] = {}  # by (tenant, topic)
        self._tenants: dict[str, set[str]] = {}  # tenant → its traced topics
        # Traced connections → (their queue of unsent frames, the decisions queued in it):
        # a slow consumer's disconnect drops that queue (slow_consumer()).
        self._pending: dict[Any, tuple[list[bytes], list[Decision]]] = {}
        self._sending: list[tuple[_Conn, Decision]] = []  # decided, to be queued by the delivery

    # Managing traces (the admin API)

    def start(
        self,
        tenant: str,
        topic: str,
        *,
        sub: str | None,
        connection: str | None,
        seconds: float,
        trace_id: str | None = None,
        created_at: float | None = None,
    ) -> Trace:
        """Start a trace of `sub` (or of the connection `connection`) on `topic` for `seconds`
        from `created_at` (default now). `trace_id`: the id another node gave the same trace;
        starting a trace this process already holds returns it as it is.

        Raises TraceLimit when the tenant already runs MAX_ACTIVE traces."""
        if trace_id is not None and (held := self.traces.get(trace_id)) is not None:
            return held
        running = sum(1 for t in self.traces.values() if t.tenant == tenant and t.active)
        if running >= MAX_ACTIVE:
            raise TraceLimit(f"at most {MAX_ACTIVE} traces may run at once per tenant")
        self._forget_finished(tenant)
        trace = Trace(tenant, topic, sub, connection, seconds, trace_id, created_at)
        for private in (False, True):
            for member in self.hub.subscribers(StreamKey(tenant, private, topic)):
                channel = cast(_Channel, member)
                if trace.matches(channel.socket, channel.claims):
                    trace.channels[member] = None
        self.traces[trace.id] = trace
        self._running.setdefault((tenant, topic), []).append(trace)
        self._tenants.setdefault(tenant, set()).add(topic)
        left = max(0.0, trace.expires_at - time.time())
        trace.timer = asyncio.get_running_loop().call_later(left, self.stop, trace)
        self.hub.tracer = self
        return trace

    def stop(self, trace: Trace) -> None:
        """Stop recording into `trace` (it stays readable for KEEP_FINISHED seconds)."""
        if not trace.active:
            return
        trace.stopped_at = time.time()
        if trace.timer is not None:
            trace.timer.cancel()
            trace.timer = None
        key = (trace.tenant, trace.topic)
        running = self._running[key]
        running.remove(trace)
        if not running:
            del self._running[key]
            topics = self._tenants[trace.tenant]
            topics.discard(trace.topic)
            if not topics:
                del self._tenants[trace.tenant]
        trace.channels.clear()
        if not self._running:
            self.hub.tracer = None
            self._pending.clear()

    def remove(self, trace: Trace) -> None:
        self.stop(trace)
        self.traces.pop(trace.id, None)

    def of_tenant(self, tenant: str) -> list[Trace]:
        self._forget_finished(tenant)
        return [t for t in self.traces.values() if t.tenant == tenant]

    def _forget_finished(self, tenant: str) -> None:
        """Drop the tenant's finished traces older than KEEP_FINISHED, and all but MAX_KEPT."""
        now = time.time()
        finished = sorted(
            (t for t in self.traces.values() if t.tenant == tenant and t.stopped_at is not None),
            key=lambda t: cast(float, t.stopped_at),
            reverse=True,
        )
        for i, trace in enumerate(finished):
            if i >= MAX_KEPT or now - cast(float, trace.stopped_at) > KEEP_FINISHED:
                del self.traces[trace.id]

    # Recording (Hub.tracer: called only while a trace runs)

    def watching(self, tenant: str) -> set[str] | None:
        """The topics traced on `tenant`, or None."""
        return self._tenants.get(tenant)

    def published(
        self,
        tenant: Tenant,
        key: StreamKey,
        publication: Publication,
        subs: Collection[Subscriber],
        exclude: Subscriber | None,
        now: float,
    ) -> None:
        """Hub.publish is about to deliver `publication` to `subs` on `key`: record what
        Hub.deliver will decide for the traced subjects' channels (the same tests, in the same order)."""
        traces = self._running.get((key.tenant, key.sub_topic))
        if traces is None:
            return
        limited = tenant.events.reached(tenant.limits.max_events_per_second, now)
        # A full trace only counts: the payload is not parsed for its event name then.
        room = any(len(trace.decisions) < MAX_DECISIONS for trace in traces)
        kind, event = publication.kind, _event_name(publication) if room else None
        broadcast = publication.audience.value == "broadcast"
        presence = publication.audience.value == "presence"
        message_id = publication.message_id
        for trace in traces:
            here = [sub for sub in trace.channels if sub.private == key.private and sub in subs]
            if not here:
                self._absent(trace, kind, event)
                continue
            for sub in here:
                channel = cast(_Channel, sub)
                delivered, sent, reason = False, False, None
                if sub is exclude:
                    reason = SELF
                elif limited:
                    reason = RATE_LIMITED
                elif sub.private and not (sub.reads_broadcast if broadcast else not presence or sub.reads_presence):
                    reason = RLS
                elif message_id is not None and sub.replayed is not None and message_id in sub.replayed:
                    delivered = True  # already sent as a replay
                elif publication.frame(sub.codec) is None:
                    reason = CODEC
                elif channel.conn.dropped_slow:
                    reason = SLOW_CONSUMER  # cut off, its channels not closed yet
                else:
                    delivered = sent = True
                decision = trace.add(kind, event, channel.socket.id, delivered, reason)
                if decision is not None and sent:
                    self._sending.append((channel.conn, decision))

    def _absent(self, trace: Trace, kind: str, event: str | None) -> None:
        """The subject has no channel on the publication's stream: on the other stream, or none
        (trace.channels holds its channels on both)."""
        if not trace.channels:
            trace.add(kind, event, trace.connection, False, NOT_JOINED)
        for sub in trace.channels:
            trace.add(kind, event, cast(_Channel, sub).socket.id, False, STREAM)

    def subscribed(self, key: StreamKey, sub: Subscriber) -> None:
        """`sub` joined the stream `key`: a traced subject's channel is watched from now on."""
        channel = cast(_Channel, sub)
        for trace in self._running.get((key.tenant, key.sub_topic), ()):
            if trace.matches(channel.socket, channel.claims):
                trace.channels[sub] = None

    def unsubscribed(self, key: StreamKey, sub: Subscriber) -> None:
        for trace in self._running.get((key.tenant, key.sub_topic), ()):
            trace.channels.pop(sub, None)

    def decided(
        self, tenant: str, sub: Subscriber, kind: str, event: str | None, delivered: bool, reason: str | None
    ) -> None:
        """Record a decision taken elsewhere (Postgres Changes, refused writes) for the channel `sub`."""
        channel = cast(_Channel, sub)
        traces = self._running.get((tenant, sub.sub_topic))
        if traces is None:
            return
        for trace in traces:
            if trace.matches(channel.socket, channel.claims):
                decision = trace.add(kind, event, channel.socket.id, delivered, reason)
                if decision is not None and delivered:
                    self._sending.append((channel.conn, decision))

    def decided_remote(
        self,
        tenant: str,
        channel: RemoteSubject,
        kind: str,
        event: str | None,
        delivered: bool,
        reason: str | None,
    ) -> None:
        """Record a decision taken here (a cluster's replication leader) for a channel joined on
        another node: `delivered` means sent to that node, which queues it unless it is cut off."""
        traces = self._running.get((tenant, channel.sub_topic))
        if traces is None:
            return
        for trace in traces:
            if trace.matches_remote(channel):
                trace.add(kind, event, channel.connection, delivered, reason, channel.node)

    def sent(self) -> None:
        """The delivery of what was just decided is done: remember which queue of unsent frames
        holds each delivered decision's frame, in case the connection turns out a slow consumer."""
        if not self._sending:
            return
        sending, self._sending = self._sending, []
        for conn, decision in sending:
            queue = conn.queued
            if queue is None:
                continue  # the connection is closing: nothing was queued
            entry = self._pending.get(conn)
            if entry is not None and entry[0] is queue:
                entry[1].append(decision)
                continue
            if entry is None and len(self._pending) >= _MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            self._pending[conn] = (queue, [decision])

    def slow_consumer(self, conn: Any, dropped: list[bytes] | None) -> None:
        """The writer disconnected `conn` as a slow consumer, dropping the frames `dropped`:
        the traced decisions queued there were not delivered after all."""
        if not self._running:
            return
        entry = self._pending.pop(conn, None)
        if entry is not None and dropped is not None and entry[0] is dropped:
            for decision in entry[1]:
                decision.delivered, decision.reason = False, SLOW_CONSUMER
            return
        # Nothing traced was in the queue; the subject's traced channels lose the connection.
        socket = conn.session
        channels = getattr(socket, "channels", None)
        if not channels:
            return
        for channel in list(channels.values()):
            traces = self._running.get((socket.tenant.external_id, channel.sub_topic))
            for trace in traces or ():
                if trace.matches(socket, channel.claims):
                    trace.add(None, None, socket.id, False, SLOW_CONSUMER)


def _event_name(publication: Publication) -> str | None:
    """The event a client sees: a broadcast's own event name, else the publication's."""
    if publication.user is not None:
        return publication.user.event
    if publication.event != "broadcast":
        return publication.event
    try:
        body = orjson.loads(publication.payload)
    except orjson.JSONDecodeError:
        return None
    event = body.get("event") if isinstance(body, dict) else None
    return event if isinstance(event, str) else None
