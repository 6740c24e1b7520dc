"""The vsn 1.0.0 codec: Phoenix V1 JSON objects, text frames only (docs/protocol.md §2.1).

socket.py picks this codec from the `vsn` query value (through codec_for())
and calls decode_text() on each incoming text frame; channel.py and the
fan-out call the encoding methods, each of which returns a complete server
WebSocket frame (net/frames.py). The fan-out calls them once per message, not
once per subscriber, so they build each frame with a single orjson call or a
single concatenation.

Client → server: {"topic", "event", "payload", "ref", "join_ref"?}.
Server → client: {"topic", "event", "payload", "ref"} and never join_ref, so
V1 clients cannot tell a push from a broadcast by its refs."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import MalformedMessage
from ..net.frames import text_frame
from ._common import check_depth as _check_depth
from ._common import preview as _preview
from ._common import ref as _ref
from .message import BINARY, JSON, Message, ReplyStatus, UserBroadcast

__all__ = ["V1", "V1Codec"]

_dumps = orjson.dumps
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

_REQUIRED = ("topic", "event", "payload", "ref")


class V1Codec:
    """Phoenix V1 JSON serializer: one JSON object per text frame.

    Stateless: use the module-level instance `V1`."""

    __slots__ = ()

    vsn: str = "1.0.0"

    # -- Decoding (client → server) --

    def decode_text(self, data: bytes | str) -> Message:
        """Decode one text frame into a Message.

        Raises:
            MalformedMessage: the frame is not JSON, nests deeper than
                MAX_DEPTH (protocol/_common.py), is not an object, lacks one of
                topic/event/payload/ref, or a field has the wrong type. The
                caller drops the frame and keeps the socket open (docs/protocol.md §1.5).
        """
        try:
            obj = _loads(data)
        except _JSONDecodeError as exc:
            raise MalformedMessage(f"expected a V1 JSON object, got invalid JSON: {exc}") from None
        _check_depth(data, obj)
        if type(obj) is not dict:
            raise MalformedMessage(
                f'expected a V1 JSON object {{"topic", "event", "payload", "ref"}}, got: {_preview(obj)}'
            )
        # docs/protocol.md §2.1: topic, event, payload and ref are required (ref may be null)
        for key in _REQUIRED:
            if key not in obj:
                raise MalformedMessage(f"V1 message lacks the required key {key!r}: {_preview(obj)}")
        topic = obj["topic"]
        event = obj["event"]
        if type(topic) is not str:
            raise MalformedMessage(f"expected 'topic' to be a string, got: {_preview(topic)}")
        if type(event) is not str:
            raise MalformedMessage(f"expected 'event' to be a string, got: {_preview(event)}")
        return Message(
            topic=topic,
            event=event,
            payload=obj["payload"],
            ref=_ref(obj["ref"], "ref"),
            join_ref=_ref(obj.get("join_ref"), "join_ref"),
        )

    def decode_binary(self, data: bytes) -> Message:
        """Reject a binary frame: vsn 1.0.0 has none.

        Raises:
            MalformedMessage: always.
        """
        raise MalformedMessage(
            f"vsn 1.0.0 accepts text frames only, got a binary frame of {len(data)} bytes; "
            "connect with vsn=2.0.0 to send binary broadcasts"
        )

    # -- Encoding (server → client); each returns a complete text frame --

    def reply(self, join_ref: str | None, ref: str | None, topic: str, status: ReplyStatus, response: Any) -> bytes:
        """Return a phx_reply frame carrying the request's ref (join_ref is not sent in V1)."""
        return text_frame(
            _dumps(
                {
                    "topic": topic,
                    "event": "phx_reply",
                    "payload": {"status": status, "response": response},
                    "ref": ref,
                }
            )
        )

    def push(self, join_ref: str | None, topic: str, event: str, payload: Any) -> bytes:
        """Return a channel push frame with ref null (join_ref is not sent in V1)."""
        return text_frame(_dumps({"topic": topic, "event": event, "payload": payload, "ref": None}))

    def control(self, join_ref: str | None, topic: str, event: str) -> bytes:
        """Return a phx_close / phx_error frame: ref = join_ref, payload {} (docs/protocol.md §2.4)."""
        return text_frame(_dumps({"topic": topic, "event": event, "payload": {}, "ref": join_ref}))

    def broadcast(self, topic: str, event: str, payload: Any) -> bytes:
        """Return a fan-out frame (broadcast, presence_diff, postgres_changes) with ref null."""
        return text_frame(_dumps({"topic": topic, "event": event, "payload": payload, "ref": None}))

    def broadcast_json(self, topic: str, event: str, payload_json: bytes) -> bytes:
        """Return a fan-out frame whose payload is `payload_json`, spliced in as is.

        `payload_json` must be valid JSON text; it is not checked here."""
        return text_frame(
            b"".join(
                (
                    b'{"topic":',
                    _dumps(topic),
                    b',"event":',
                    _dumps(event),
                    b',"payload":',
                    payload_json,
                    b',"ref":null}',
                )
            )
        )

    def user_broadcast(self, topic: str, message: UserBroadcast) -> bytes | None:
        """Return a user broadcast as a V1 `broadcast` frame, or None for a binary payload.

        The payload is {"event", "payload", "type": "broadcast", "meta"?} with
        the sender's JSON bytes spliced in, not re-encoded. V1 has no way to
        carry raw bytes, so binary payloads are dropped for V1 receivers
        (docs/protocol.md §2.3, RT user_broadcast.ex).

        Raises:
            ValueError: `message.encoding` is neither BINARY nor JSON.
        """
        encoding = message.encoding
        if encoding == BINARY:
            return None
        if encoding != JSON:
            raise ValueError(f"unknown user broadcast encoding {encoding!r}: expected 0 (binary) or 1 (JSON)")
        metadata = message.metadata
        meta = b"" if metadata is None else b',"meta":' + _dumps(metadata)
        return text_frame(
            b"".join(
                (
                    b'{"topic":',
                    _dumps(topic),
                    b',"event":"broadcast","payload":{"event":',
                    _dumps(message.event),
                    b',"payload":',
                    message.data,
                    b',"type":"broadcast"',
                    meta,
                    b'},"ref":null}',
                )
            )
        )


V1 = V1Codec()
