"""The live tail: `GET /admin/v1/tenants/{id}/tail`, the messages the server delivers on one
stream as server-sent events, seen without joining as a client.

A viewer is not a subscriber: it is offered each message after Hub.deliver() has fanned it
out (hub.DeliveryObserver.delivered), so it is never counted as a receiver, as usage or
against the tenant's limits, and it sees only what was delivered to at least one receiver
(nothing on a stream without subscribers; not a broadcast whose only subscriber is its sender
with `self: false`). The Tail observer is in Hub.observers
only while some viewer is open; it then costs one dict lookup per publication. Each viewer
holds at most `buffer` messages: a viewer that reads slower than messages come loses the
oldest, and is told how many with a `dropped` event before the rest."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
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

__all__ = ["KINDS", "Tail", "TailQuery", "Viewer", "routes"]

# What a viewer may ask for: the audiences of hub.Publication.
KINDS = tuple(a.value for a in Audience)


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


class Viewer:
    """One open tail: a bounded buffer of (time, publication) and the count of those dropped."""

    __slots__ = ("_wake", "audiences", "buffer", "closed", "dropped", "private", "topic")

    def __init__(self, topic: str, private: bool, audiences: frozenset[Audience], size: int) -> None:
        self.topic = topic  # the wire topic, "realtime:<topic>"
        self.private = private
        self.audiences = audiences
        self.buffer: deque[tuple[float, Publication]] = deque(maxlen=size)
        self.dropped = 0
        self.closed = False
        self._wake = asyncio.Event()

    def offer(self, at: float, publication: Publication, private: bool) -> None:
        """Keep `publication` if it is of this viewer's stream and kinds (the oldest makes room)."""
        if private != self.private or publication.audience not in self.audiences:
            return
        if len(self.buffer) == self.buffer.maxlen:
            self.dropped += 1
        self.buffer.append((at, publication))
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def events(self) -> AsyncIterator[bytes]:
        """The server-sent events of what is offered, until close(): `dropped` first when some were."""
        yield b": tailing " + self.topic.encode() + b"\n\n"
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            while self.buffer or self.dropped:
                if self.dropped:
                    count, self.dropped = self.dropped, 0
                    yield _event("dropped", {"count": count})
                    continue
                at, publication = self.buffer.popleft()
                yield _event(publication.audience.value, _data(at, publication))


class Tail:
    """The open viewers of every tenant, and the hub observer that feeds them (hub.DeliveryObserver)."""

    def __init__(self, hub: Hub, *, max_viewers: int, buffer: int) -> None:
        self.hub = hub
        self.max_viewers = max_viewers
        self.buffer = buffer
        self._streams: dict[tuple[str, str], list[Viewer]] = {}  # (tenant external_id, wire topic)
        self._per_tenant: dict[str, int] = {}

    def open(self, tenant: str, topic: str, private: bool, audiences: frozenset[Audience]) -> Viewer:
        """Add a viewer of `tenant`'s stream; raises ApiError (429) past max_viewers."""
        if self._per_tenant.get(tenant, 0) >= self.max_viewers:
            raise ApiError(
                429, {"message": f"Too many live tails: at most {self.max_viewers} per tenant may be open at once"}
            )
        viewer = Viewer(f"realtime:{topic}", private, audiences, self.buffer)
        self._streams.setdefault((tenant, viewer.topic), []).append(viewer)
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        if self not in self.hub.observers:
            self.hub.observers.append(self)
        return viewer

    def close(self, tenant: str, viewer: Viewer) -> None:
        """Remove `viewer`; the observer leaves the hub with the last viewer."""
        viewer.close()
        key = (tenant, viewer.topic)
        viewers = self._streams.get(key, [])
        if viewer in viewers:
            viewers.remove(viewer)
            self._per_tenant[tenant] -= 1
        if not viewers:
            self._streams.pop(key, None)
        if not self._per_tenant.get(tenant):
            self._per_tenant.pop(tenant, None)
        if not self._streams and self in self.hub.observers:
            self.hub.observers.remove(self)

    def viewers(self, tenant: str) -> int:
        return self._per_tenant.get(tenant, 0)

    # hub.DeliveryObserver

    def accepted(self, tenant: Tenant, kind: str, key: StreamKey, count: int) -> None:
        return None

    def sent(self, tenant: Tenant, kind: str, key: StreamKey, subscriber: Subscriber, count: int, nbytes: int) -> None:
        """Nothing: a join's presence_state and a replay go to one client, not on the stream."""

    def delivered(
        self, tenant: Tenant, publication: Publication, subs: Iterable[Subscriber], count: int, nbytes: int
    ) -> None:
        viewers = self._streams.get((tenant.external_id, publication.topic))
        if viewers is None or not count:  # count 0: offered, but nobody received it
            return
        # Public and private streams share wire topics; the receivers say which this was.
        first = next(iter(subs), None)
        if first is None:
            return
        at = time.time()
        for viewer in viewers:
            viewer.offer(at, publication, first.private)


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


def _data(at: float, publication: Publication) -> dict[str, Any]:
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
        `data: {at, topic, event, payload}`; `dropped` with a count when a slow viewer lost some)."""
        external_id = call.params["id"]
        if app.tenants.get(external_id) is None:
            raise not_found()
        query: TailQuery = call.query
        if query.topic.startswith("realtime:"):
            raise invalid("topic", "is the channel's topic without the `realtime:` prefix")
        audiences = frozenset(Audience(k) for k in query.kinds.split(","))
        viewer = tail.open(external_id, query.topic, query.private, audiences)
        return StreamingResponse(
            _ViewerStream(tail, external_id, viewer),
            headers=[("cache-control", "no-cache")],
            content_type="text/event-stream; charset=utf-8",
        )

    return tail
