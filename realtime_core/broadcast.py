"""Broadcast: from a client over the socket (docs/protocol.md §4.1) and from the REST API
(docs/protocol.md §4.2–4.3).

Channel.handle_in() calls from_client() for a `broadcast` event; rest_api.py
calls publish_json() / publish_user() for each accepted message. All of them
end in Router.publish(), which frames the message once per codec."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from .authorization import BROADCAST
from .protocol import Codec, Message, UserBroadcast
from .router import StreamKey

if TYPE_CHECKING:
    from .app import App
    from .channel import Channel
    from .tenants import Tenant

__all__ = ["from_client", "publish_json", "publish_user"]

PAYLOAD_SIZE_EXCEEDED = "payload_size_exceeded"


def _user_frame(codec: Codec, topic: str, message: UserBroadcast) -> bytes | None:
    try:
        return codec.user_broadcast(topic, message)
    except ValueError:
        # A topic, event or metadata over 255 bytes cannot be a kind-4 frame.
        return None


def from_client(channel: Channel, msg: Message) -> None:
    """Fan out one client broadcast on the channel's stream; ack it when asked to."""
    if channel.private:
        allowed = channel.allowed_to_write(BROADCAST, msg)
        if not allowed:
            # None: held until the write policy is known. False: denied
            # broadcasts are dropped silently, without an ack (docs/protocol.md §4.1).
            return
    socket = channel.socket
    app = socket.app
    tenant = socket.tenant
    now = app.now()
    tenant.events.add(1, now)
    payload = msg.payload
    topic = channel.topic
    if isinstance(payload, UserBroadcast):
        # Re-broadcast as a user broadcast: V2 receivers get the sender's bytes
        # in a kind-4 frame, V1 receivers JSON, binary dropped for V1 (docs/protocol.md §2.3).
        size = len(payload.data)

        def encode(codec: Codec) -> bytes | None:
            return _user_frame(codec, topic, payload)

    elif isinstance(payload, bytes):
        return  # a kind-0 push named "broadcast" carries no user event: nothing to deliver
    else:
        # JSON payloads are re-broadcast verbatim (docs/protocol.md §4.1).
        payload_json = orjson.dumps(payload)
        size = len(payload_json)

        def encode(codec: Codec) -> bytes | None:
            return codec.broadcast_json(topic, "broadcast", payload_json)

    if tenant.payload_too_large(size):
        if channel.ack:
            # The response is a bare string (docs/protocol.md §4.1).
            channel.reply(msg.ref, "error", PAYLOAD_SIZE_EXCEEDED)
        return
    exclude = None if channel.self_broadcast else channel
    app.router.publish(tenant, channel.key, encode, now, exclude)
    if channel.ack:
        channel.reply(msg.ref, "ok", {})


def publish_json(
    app: App, tenant: Tenant, sub_topic: str, private: bool, event: str, payload: Any, message_id: str | None
) -> int:
    """Deliver a REST batch message as event `broadcast` {payload, event, type, meta?} (docs/protocol.md §4.2)."""
    body: dict[str, Any] = {"payload": payload, "event": event, "type": "broadcast"}
    if message_id is not None:
        body["meta"] = {"id": message_id}
    payload_json = orjson.dumps(body)
    topic = f"realtime:{sub_topic}"
    key = StreamKey(tenant.external_id, private, sub_topic)
    return app.router.publish(
        tenant, key, lambda codec: codec.broadcast_json(topic, "broadcast", payload_json), app.now()
    )


def publish_user(app: App, tenant: Tenant, sub_topic: str, private: bool, message: UserBroadcast) -> int:
    """Deliver a user broadcast (the REST single-event endpoint, docs/protocol.md §4.3)."""
    topic = f"realtime:{sub_topic}"
    key = StreamKey(tenant.external_id, private, sub_topic)
    return app.router.publish(tenant, key, lambda codec: _user_frame(codec, topic, message), app.now())
