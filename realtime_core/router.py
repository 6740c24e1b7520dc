"""Streams to local subscribers, and the encode-once fan-out.

A stream is (tenant, private, sub_topic): public and private channels with the
same name are separate streams (docs/protocol.md §3.3 step 12). Channels subscribe when
their join succeeds and unsubscribe when they close. publish() checks the
tenant's events/s limit, builds each frame once per codec in use and queues the
same bytes on every subscriber's connection (the Writer coalesces writes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .protocol import Codec

if TYPE_CHECKING:
    from .channel import Channel
    from .tenants import Tenant

__all__ = ["Encode", "Router", "StreamKey"]

Encode = Callable[[Codec], "bytes | None"]  # None: this codec cannot carry the message

TOO_MANY_MESSAGES = "Too many messages per second"


class StreamKey(NamedTuple):
    tenant: str
    private: bool
    sub_topic: str


class Router:
    """Which channels listen on which stream, in this process."""

    __slots__ = ("_streams",)

    def __init__(self) -> None:
        self._streams: dict[StreamKey, dict[Channel, None]] = {}

    def subscribe(self, key: StreamKey, channel: Channel) -> None:
        subs = self._streams.get(key)
        if subs is None:
            subs = self._streams[key] = {}
        subs[channel] = None

    def unsubscribe(self, key: StreamKey, channel: Channel) -> None:
        subs = self._streams.get(key)
        if subs is not None:
            subs.pop(channel, None)
            if not subs:
                del self._streams[key]

    def subscribers(self, key: StreamKey) -> list[Channel]:
        return list(self._streams.get(key, ()))

    def stream_count(self) -> int:
        return len(self._streams)

    def publish(
        self,
        tenant: Tenant,
        key: StreamKey,
        encode: Encode,
        now: float,
        exclude: Channel | None = None,
        *,
        presence: bool = False,
        message_id: str | None = None,
    ) -> int:
        """Deliver one message to every subscriber of `key` but `exclude`; return how many got it.

        Private channels whose read policy denies broadcast (or, with
        `presence`, presence) are skipped (docs/protocol.md §7); so are channels that
        already got `message_id` as a replay (docs/protocol.md §4.4). While the tenant's
        events/s limit is reached, receivers are shut down instead (docs/protocol.md §9.2)."""
        subs = self._streams.get(key)
        if not subs:
            return 0
        if tenant.events.reached(tenant.limits.max_events_per_second, now):
            for channel in list(subs):
                if channel is not exclude:
                    channel.shutdown(TOO_MANY_MESSAGES)
            return 0
        # Nearly every stream has a single codec in use, so this loop builds
        # one frame and then only queues bytes (docs/design.md §2: frame built once).
        frames: dict[Codec, bytes | None] = {}
        delivered = 0
        for channel in subs:
            if channel is exclude:
                continue
            if channel.private and not (channel.reads_presence if presence else channel.reads_broadcast):
                continue
            if message_id is not None and channel.replayed is not None and message_id in channel.replayed:
                continue
            codec = channel.codec
            try:
                frame = frames[codec]
            except KeyError:
                frame = frames[codec] = encode(codec)
            if frame is not None:
                channel.conn.send(frame)
                delivered += 1
        tenant.events.add(delivered, now)
        return delivered
