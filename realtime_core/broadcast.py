"""Broadcast: from a client over the socket (docs/protocol.md §4.1) and from the REST API
(docs/protocol.md §4.2–4.3).

Channel.handle_in() calls from_client() for a `broadcast` event; rest_api.py
calls publish_json() / publish_user() for each accepted message. All of them
publish through the Broker, which ends in Hub.deliver() (frames built once per codec)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from .authorization import BROADCAST
from .hub import Publication, StreamKey
from .protocol import Message, UserBroadcast

if TYPE_CHECKING:
    from .broker import Broker
    from .channel import Channel
    from .tenants import Tenant

__all__ = ["from_client", "publish_json", "publish_user"]

PAYLOAD_SIZE_EXCEEDED = "payload_size_exceeded"


def from_client(channel: Channel, msg: Message) -> None:
    """Fan out one client broadcast on the channel's stream; ack it when asked to."""
    if channel.private:
        allowed = channel.allowed_to_write(BROADCAST, msg)
        if not allowed:
            # None: held until the write policy is known. False: denied
            # broadcasts are dropped silently, without an ack (docs/protocol.md §4.1).
            return
    socket = channel.socket
    ctx = socket.ctx
    tenant = socket.tenant
    now = ctx.now()
    tenant.events.add(1, now)
    payload = msg.payload
    if isinstance(payload, UserBroadcast):
        # Re-broadcast as a user broadcast: V2 receivers get the sender's bytes
        # in a kind-4 frame, V1 receivers JSON, binary dropped for V1 (docs/protocol.md §2.3).
        size = len(payload.data)
        publication = Publication(channel.topic, "broadcast", user=payload)
    elif isinstance(payload, bytes):
        return  # a kind-0 push named "broadcast" carries no user event: nothing to deliver
    else:
        # JSON payloads are re-broadcast verbatim (docs/protocol.md §4.1).
        payload_json = orjson.dumps(payload)
        size = len(payload_json)
        publication = Publication(channel.topic, "broadcast", payload_json)
    if tenant.payload_too_large(size):
        if channel.ack:
            # The response is a bare string (docs/protocol.md §4.1).
            channel.reply(msg.ref, "error", PAYLOAD_SIZE_EXCEEDED)
        return
    exclude = None if channel.self_broadcast else channel
    ctx.broker.publish(tenant, channel.key, publication, now, exclude)
    if channel.ack:
        channel.reply(msg.ref, "ok", {})


def publish_json(
    broker: Broker,
    tenant: Tenant,
    sub_topic: str,
    private: bool,
    event: str,
    payload: Any,
    message_id: str | None,
    now: float,
) -> int:
    """Deliver a REST batch message as event `broadcast` {payload, event, type, meta?} (docs/protocol.md §4.2)."""
    body: dict[str, Any] = {"payload": payload, "event": event, "type": "broadcast"}
    if message_id is not None:
        body["meta"] = {"id": message_id}
    publication = Publication(f"realtime:{sub_topic}", "broadcast", orjson.dumps(body))
    return broker.publish(tenant, StreamKey(tenant.external_id, private, sub_topic), publication, now)


def publish_user(
    broker: Broker, tenant: Tenant, sub_topic: str, private: bool, message: UserBroadcast, now: float
) -> int:
    """Deliver a user broadcast (the REST single-event endpoint, docs/protocol.md §4.3)."""
    publication = Publication(f"realtime:{sub_topic}", "broadcast", user=message)
    return broker.publish(tenant, StreamKey(tenant.external_id, private, sub_topic), publication, now)
