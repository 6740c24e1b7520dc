"""The live tail: `GET /admin/v1/tenants/{id}/tail`, the messages the server delivers on one
stream as server-sent events, seen without joining as a client.

A viewer is not a subscriber: it is offered each message after Hub.deliver() has fanned it
out (hub.DeliveryObserver.delivered), so it is never counted as a receiver, as usage or
against the tenant's limits, and it sees only what was delivered to at least one receiver
(nothing on a stream without subscribers; not a broadcast whose only subscriber is its sender
with `self: false`). The Tail observer is in Hub.observers
only while some viewer is open (in a cluster: or another node's viewer watches a stream,
tail_relay.py); it then costs two dict lookups per publication. Each viewer
holds at most `buffer` messages: a viewer that reads slower than messages come loses the
oldest, and is told how many with a `dropped` event before the rest.

In a cluster (REDIS_URL) a viewer sees what every node delivers on its stream (tail_relay.py):
the other nodes forward it while some node has a viewer there. A message delivered on several
nodes is shown once, with `nodes`, the nodes it was delivered on: each message is held GATHER
seconds, and copies with the same content (kind, event, payload) from other nodes within that
time are taken for it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, Field, field_validator

from ..hub import Audience, Hub, Publication, StreamKey, Subscriber
from ..net.http import StreamingResponse
from ..protocol.message import JSON
from .endpoints import AdminApi, ApiError, Call, invalid, not_found

if TYPE_CHECKING:
    from ..app import App
    from ..tenants import Tenant

__all__ = ["GATHER", "KINDS", "Outbox", "Tail", "TailQuery", "Viewer", "identity", "routes", "to_data"]

# What a viewer may ask for: the audiences of hub.Publication.
KINDS = tuple(a.value for a in Audience)
# Seconds a cluster's viewer holds a message for its copies from other nodes (forwarded every
# tail_relay.FLUSH_S, then one Redis pub/sub hop): the tail shows messages that much later.
GATHER = 1.0


class TailQuery(BaseModel):
    """The stream to tail and the kinds of message to show."""

    topic: str = Field(min_length=1, description="the channel's topic, without `realtime:`")
    private: bool = False
    kinds: str = Field(",".join(KINDS), description="comma-separated: broadcast, presence, postgres_changes")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: str) -> str:
        kinds = [k.strip() for k in value.split(",") if k.strip()]
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown or not kinds:
            raise ValueError(f"must be a comma-separated list of {', '.join(KINDS)}")
        return ",".join(kinds)


# What a viewer shows of one message: its kind, when it was delivered, the publication (or, from
# another node, its event's data) and the nodes it was delivered on (None outside a cluster).
_Shown = tuple[str, float, Publication | dict[str, Any], list[str] | None]


class _Held:
    """A message a cluster's viewer holds until `due` for its copies from other nodes."""

    __slots__ = ("due", "key", "nodes", "shown")

    def __init__(self, due: float, key: str, shown: _Shown, nodes: list[str]) -> None:
        self.due = due
        self.key = key
        self.shown = shown
        self.nodes = nodes


class Viewer:
    """One open tail: a bounded buffer of messages to show and the count of those dropped.

    In a cluster (`node` set: this node's id) messages are first held GATHER seconds, and a
    copy from another node of a held message (identity()) only adds that node to it."""

    __slots__ = (
        "_held",
        "_order",
        "_wake",
        "audiences",
        "buffer",
        "closed",
        "dropped",
        "forwarders",
        "kinds",
        "node",
        "private",
        "topic",
    )

    def __init__(
        self, topic: str, private: bool, audiences: frozenset[Audience], size: int, node: str | None = None
    ) -> None:
        self.topic = topic  # the wire topic, "realtime:<topic>"
        self.private = private
        self.audiences = audiences
        self.kinds = frozenset(a.value for a in audiences)
        self.node = node
        self.buffer: deque[_Shown] = deque(maxlen=size)
        self.dropped = 0
        self.closed = False
        self._wake = asyncio.Event()
        self._held: dict[str, list[_Held]] = {}  # identity → held messages, oldest first
        self._order: deque[_Held] = deque()  # every held message, oldest first
        self.forwarders: list[str] | None = None  # in a cluster: the nodes that took its announcement

    def offer(self, at: float, publication: Publication, private: bool) -> None:
        """Keep `publication` if it is of this viewer's stream and kinds (the oldest makes room)."""
        if private != self.private or publication.audience not in self.audiences:
            return
        kind = publication.audience.value
        if self.node is None:
            self._keep((kind, at, publication, None))
        else:
            self._hold(identity(publication), (kind, at, publication, None), self.node)

    def offer_remote(self, node: str, item: dict[str, Any]) -> None:
        """Keep a message another node delivered (tail_relay.py) if it is of this viewer's stream and kinds."""
        if item["private"] != self.private or item["kind"] not in self.kinds:
            return
        self._hold(item["id"], (item["kind"], 0.0, item["data"], None), node)  # its data holds its time

    def _keep(self, shown: _Shown) -> None:
        if len(self.buffer) == self.buffer.maxlen:
            self.dropped += 1
        self.buffer.append(shown)
        self._wake.set()

    def _hold(self, key: str, shown: _Shown, node: str) -> None:
        for held in self._held.get(key, ()):
            if node not in held.nodes:
                held.nodes.append(node)
                return
        held = _Held(time.monotonic() + GATHER, key, shown, [node])
        self._held.setdefault(key, []).append(held)
        self._order.append(held)
        if len(self._order) > (self.buffer.maxlen or 0):
            self._release()  # held messages count against the buffer too
        self._wake.set()

    def _release(self) -> None:
        """Move the oldest held message to the buffer, with the nodes it was delivered on."""
        held = self._order.popleft()
        same = self._held[held.key]
        same.remove(held)
        if not same:
            del self._held[held.key]
        kind, at, source, _ = held.shown
        self._keep((kind, at, source, sorted(held.nodes)))

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def events(self) -> AsyncIterator[bytes]:
        """The server-sent events of what is offered, until close(): `dropped` first when some were."""
        nodes = "" if self.forwarders is None else " from nodes " + ",".join(self.forwarders)
        yield b": tailing " + self.topic.encode() + nodes.encode() + b"\n\n"
        while not self.closed:
            if self._order:
                # Cleared before waiting: wait_for() may end by the timeout with the event set.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._order[0].due - time.monotonic())
            else:
                await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            while self._order and self._order[0].due <= now:
                self._release()
            while self.buffer or self.dropped:
                if self.dropped:
                    count, self.dropped = self.dropped, 0
                    yield _event("dropped", {"count": count})
                    continue
                kind, at, source, nodes = self.buffer.popleft()
                data = to_data(at, source) if isinstance(source, Publication) else source
                if nodes is not None:
                    data["nodes"] = nodes
                yield _event(kind, data)


class Outbox:
    """What this node delivered on one stream for other nodes' viewers (tail_relay.py): at
    most `size` messages until the next forward, and the count of those dropped by privacy."""

    __slots__ = ("dropped", "items")

    def __init__(self, size: int) -> None:
        self.items: deque[tuple[float, Publication, bool]] = deque(maxlen=size)
        self.dropped = {False: 0, True: 0}  # private → messages lost to a full outbox

    def add(self, at: float, publication: Publication, private: bool) -> None:
        if len(self.items) == self.items.maxlen:
            self.dropped[self.items[0][2]] += 1
        self.items.append((at, publication, private))


class Tail:
    """The open viewers of every tenant, and the hub observer that feeds them (hub.DeliveryObserver)."""

    def __init__(self, hub: Hub, *, max_viewers: int, buffer: int) -> None:
        self.hub = hub
        self.max_viewers = max_viewers
        self.buffer = buffer
        self._streams: dict[tuple[str, str], list[Viewer]] = {}  # (tenant external_id, wire topic)
        self._per_tenant: dict[str, int] = {}
        # The streams other nodes' viewers watch (tail_relay.py): what is delivered there waits
        # in an outbox to be forwarded.
        self.outboxes: dict[tuple[str, str], Outbox] = {}
        self.on_streams_changed: Callable[[], None] | None = None  # the last viewer of a stream left
        # Tells the cluster's nodes the streams watched here; returns the nodes that took it.
        self.announce: Callable[[], Awaitable[list[str]]] | None = None

    def open(
        self, tenant: str, topic: str, private: bool, audiences: frozenset[Audience], node: str | None = None
    ) -> Viewer:
        """Add a viewer of `tenant`'s stream (`node`: this node's id in a cluster); raises
        ApiError (429) past max_viewers."""
        if self._per_tenant.get(tenant, 0) >= self.max_viewers:
            raise ApiError(
                429, {"message": f"Too many live tails: at most {self.max_viewers} per tenant may be open at once"}
            )
        viewer = Viewer(f"realtime:{topic}", private, audiences, self.buffer, node)
        self._streams.setdefault((tenant, viewer.topic), []).append(viewer)
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        self.observe()
        return viewer

    def close(self, tenant: str, viewer: Viewer) -> None:
        """Remove `viewer`; the observer leaves the hub with the last viewer (and outbox)."""
        viewer.close()
        key = (tenant, viewer.topic)
        viewers = self._streams.get(key, [])
        if viewer in viewers:
            viewers.remove(viewer)
            self._per_tenant[tenant] -= 1
        if not viewers and self._streams.pop(key, None) is not None and self.on_streams_changed is not None:
            self.on_streams_changed()
        if not self._per_tenant.get(tenant):
            self._per_tenant.pop(tenant, None)
        self.observe()

    def observe(self) -> None:
        """Be in the hub's observers exactly while a viewer is open here or an outbox is kept."""
        wanted = bool(self._streams or self.outboxes)
        if wanted and self not in self.hub.observers:
            self.hub.observers.append(self)
        elif not wanted and self in self.hub.observers:
            self.hub.observers.remove(self)

    def viewers(self, tenant: str) -> int:
        return self._per_tenant.get(tenant, 0)

    def streams(self) -> list[tuple[str, str]]:
        """The (tenant, wire topic) streams with a viewer open here."""
        return list(self._streams)

    def of_stream(self, tenant: str, topic: str) -> list[Viewer]:
        return self._streams.get((tenant, topic), [])

    # hub.DeliveryObserver

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int) -> None:
        return None

    def sent(self, tenant: Tenant, kind: str, key: StreamKey, subscriber: Subscriber, count: int, nbytes: int) -> None:
        """Nothing: a join's presence_state and a replay go to one client, not on the stream."""

    def delivered(
        self, tenant: Tenant, publication: Publication, subs: Iterable[Subscriber], count: int, nbytes: int
    ) -> None:
        if not count:  # offered, but nobody received it
            return
        key = (tenant.external_id, publication.topic)
        viewers = self._streams.get(key)
        outbox = self.outboxes.get(key)
        if viewers is None and outbox is None:
            return
        # Public and private streams share wire topics; the receivers say which this was.
        first = next(iter(subs), None)
        if first is None:
            return
        at = time.time()
        for viewer in viewers or ():
            viewer.offer(at, publication, first.private)
        if outbox is not None:
            outbox.add(at, publication, first.private)


class _ViewerStream:
    """A viewer's events as a StreamingResponse body: aclose() (the client went away, the
    server stops, or a HEAD request) closes the viewer even if no event was ever asked for."""

    def __init__(self, tail: Tail, tenant: str, viewer: Viewer) -> None:
        self._tail = tail
        self._tenant = tenant
        self._viewer = viewer
        self._events = viewer.events()

    def __aiter__(self) -> _ViewerStream:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._events)

    async def aclose(self) -> None:
        self._tail.close(self._tenant, self._viewer)
        await self._events.aclose()


def _event(kind: str, data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def identity(publication: Publication) -> str:
    """What tells copies of one message delivered on several nodes: its origin (the node that
    published it through Redis, and when), or, for a message each node makes for itself (a
    presence diff derived from the replica, a Postgres change the leader hands out), a digest
    of its kind, event and payload, the same on every node."""
    if publication.origin is not None:
        node, sent_at = publication.origin
        return f"{node}:{sent_at!r}"
    digest = hashlib.blake2b(digest_size=12)
    user = publication.user
    parts = (publication.audience.value, publication.event) if user is None else ("user", user.event, user.encoding)
    digest.update("\0".join(parts).encode())
    digest.update(b"\0")
    digest.update(publication.payload if user is None else user.data)
    return digest.hexdigest()


def to_data(at: float, publication: Publication) -> dict[str, Any]:
    """The `data` of one event: when it was delivered, its topic, event and payload (JSON;
    a binary user broadcast's payload as base64, marked `"binary": true`)."""
    data: dict[str, Any] = {
        "at": _timestamp(at),
        "topic": publication.topic.removeprefix("realtime:"),
        "event": publication.event,
    }
    user = publication.user
    if user is None:
        data["payload"] = orjson.loads(publication.payload)
    elif user.encoding == JSON:
        # What a V1 receiver gets: the broadcast envelope with the user's event and payload.
        data["payload"] = {"type": "broadcast", "event": user.event, "payload": orjson.loads(user.data)}
    else:
        data["payload"] = {"type": "broadcast", "event": user.event, "payload": base64.b64encode(user.data).decode()}
        data["binary"] = True
    return data


def _timestamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def routes(api: AdminApi, app: App) -> Tail:
    """Add the live tail route; return the Tail (its observer joins app.hub with the first viewer)."""
    tail = Tail(app.hub, max_viewers=app.settings.tail_max_viewers, buffer=app.settings.tail_buffer)

    @api.route("GET", "/admin/v1/tenants/:id/tail", query=TailQuery)
    async def tail_stream(call: Call) -> StreamingResponse:
        """Server-sent events of what the server delivers on one stream (`event: <kind>`,
        `data: {at, topic, event, payload}`, in a cluster also `nodes`; `dropped` with a count
        when a slow viewer lost some). In a cluster the first comment names the nodes that
        forward to this viewer."""
        external_id = call.params["id"]
        if app.tenants.get(external_id) is None:
            raise not_found()
        query: TailQuery = call.query
        if query.topic.startswith("realtime:"):
            raise invalid("topic", "is the channel's topic without the `realtime:` prefix")
        audiences = frozenset(Audience(k) for k in query.kinds.split(","))
        clustered = app.nodes is not None
        viewer = tail.open(external_id, query.topic, query.private, audiences, app.node_id if clustered else None)
        stream = _ViewerStream(tail, external_id, viewer)
        if clustered and tail.announce is not None:
            try:
                viewer.forwarders = await tail.announce()
            except BaseException:
                await stream.aclose()  # the request was cancelled meanwhile
                raise
        return StreamingResponse(
            stream,
            headers=[("cache-control", "no-cache")],
            content_type="text/event-stream; charset=utf-8",
        )

    return tail
