"""The vsn 2.0.0 codec: JSON array text frames and binary user broadcasts (docs/protocol.md §2.2, §2.3).

socket.py picks this codec from the `vsn` query value (through codec_for())
and calls decode_text() or decode_binary() on each incoming frame; channel.py
and the fan-out call the encoding methods, each of which returns a complete
server WebSocket frame (net/frames.py). The fan-out calls them once per
message, not once per subscriber, so each frame is built with a single orjson
call or a single concatenation.

Text frames are [join_ref, ref, topic, event, payload]. Binary frames start
with a kind byte; clients send kind 0 (push) and kind 3 (user broadcast push),
and this server sends only kind 4 (user broadcast): realtime-js decodes no
other binary kind (docs/protocol.md §2.3), so kinds 0/1/2 are never emitted.

Every length in a binary frame is one unsigned byte, so a topic, event or
metadata longer than 255 bytes cannot be sent: user_broadcast() raises
ValueError, as upstream raises ArgumentError (RT v2_serializer.ex byte_size!),
and callers treat that as "cannot deliver to V2 receivers"."""

from __future__ import annotations

import struct
from typing import Any

import orjson

from ..errors import MalformedMessage
from ..net.frames import binary_frame, text_frame
from ._common import check_depth as _check_depth
from ._common import preview as _preview
from ._common import ref as _ref
from .message import BINARY, JSON, Message, ReplyStatus, UserBroadcast

__all__ = ["MAX_FIELD_BYTES", "V2", "V2Codec"]

MAX_FIELD_BYTES = 255  # docs/protocol.md §2.3: every length prefix is a u8

_dumps = orjson.dumps
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

# docs/protocol.md §2.3 binary kinds
_PUSH = 0
_USER_BROADCAST_PUSH = 3
_USER_BROADCAST = 4

# Length prefixes after the kind byte.
# kind 0: join_ref_len, ref_len, topic_len, event_len
_PUSH_HEAD = struct.Struct("!4B")
# kind 3: join_ref_len, ref_len, topic_len, user_event_len, metadata_len, encoding
_USER_BROADCAST_PUSH_HEAD = struct.Struct("!6B")
# kind 4 (with the kind byte): kind, topic_len, user_event_len, metadata_len, encoding
_pack_user_broadcast_head = struct.Struct("!5B").pack

_KIND3 = "binary user broadcast push (kind 3)"


def _text(data: bytes, start: int, end: int, field: str) -> str:
    try:
        return str(data[start:end], "utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"binary frame: {field} is not valid UTF-8") from None


def _binary_ref(data: bytes, start: int, end: int, field: str) -> str | None:
    # realtime-js writes `join_ref ?? ""` and `ref ?? ""`: an empty ref means none.
    return _text(data, start, end, field) if end > start else None


def _decode_push(data: bytes) -> Message:
    """Decode kind 0: join_ref, ref, topic, event, then the raw payload."""
    if len(data) < 1 + _PUSH_HEAD.size:
        raise MalformedMessage(f"binary push (kind 0) truncated: {len(data)} bytes, header needs 5")
    join_ref_len, ref_len, topic_len, event_len = _PUSH_HEAD.unpack_from(data, 1)
    a = 1 + _PUSH_HEAD.size
    b = a + join_ref_len
    c = b + ref_len
    d = c + topic_len
    e = d + event_len
    if e > len(data):
        raise MalformedMessage(f"binary push (kind 0) truncated: {len(data)} bytes, fields need {e}")
    return Message(
        topic=_text(data, c, d, "topic"),
        event=_text(data, d, e, "event"),
        payload=bytes(data[e:]),  # RT: the payload becomes {:binary, data}
        ref=_binary_ref(data, b, c, "ref"),
        join_ref=_binary_ref(data, a, b, "join_ref"),
    )


def _decode_user_broadcast_push(data: bytes) -> Message:
    """Decode kind 3: join_ref, ref, topic, user_event, metadata, then the user payload."""
    if len(data) < 1 + _USER_BROADCAST_PUSH_HEAD.size:
        raise MalformedMessage(f"{_KIND3} truncated: {len(data)} bytes, header needs 7")
    join_ref_len, ref_len, topic_len, event_len, metadata_len, encoding = _USER_BROADCAST_PUSH_HEAD.unpack_from(data, 1)
    if encoding != BINARY and encoding != JSON:
        raise MalformedMessage(f"{_KIND3}: unknown encoding {encoding}, expected 0 (binary) or 1 (JSON)")
    a = 1 + _USER_BROADCAST_PUSH_HEAD.size
    b = a + join_ref_len
    c = b + ref_len
    d = c + topic_len
    e = d + event_len
    f = e + metadata_len
    if f > len(data):
        raise MalformedMessage(f"{_KIND3} truncated: {len(data)} bytes, fields need {f}")
    metadata: dict[str, Any] | None = None
    if metadata_len:
        # RT decodes metadata as JSON when it is not empty; we also require an object.
        try:
            metadata = _loads(data[e:f])
        except _JSONDecodeError as exc:
            raise MalformedMessage(f"{_KIND3}: metadata is not JSON: {exc}") from None
        if type(metadata) is not dict:
            raise MalformedMessage(f"{_KIND3}: metadata must be a JSON object, got: {_preview(metadata)}")
    payload = bytes(data[f:])
    if encoding == JSON:
        # Checked once here so that every receiver can splice the bytes in unread.
        try:
            _loads(payload)
        except _JSONDecodeError as exc:
            raise MalformedMessage(f"{_KIND3}: encoding is JSON but the payload is not: {exc}") from None
    return Message(
        topic=_text(data, c, d, "topic"),
        event="broadcast",
        payload=UserBroadcast(
            event=_text(data, d, e, "user_event"), data=payload, encoding=encoding, metadata=metadata
        ),
        ref=_binary_ref(data, b, c, "ref"),
        join_ref=_binary_ref(data, a, b, "join_ref"),
    )


class V2Codec:
    """Phoenix V2 serializer with Realtime's binary user broadcasts (RT v2_serializer.ex).

    Stateless: use the module-level instance `V2`."""

    __slots__ = ()

    vsn: str = "2.0.0"

    # -- Decoding (client → server) --

    def decode_text(self, data: bytes | str) -> Message:
        """Decode one text frame [join_ref, ref, topic, event, payload, ...] into a Message.

        Elements after the fifth are ignored (docs/protocol.md §2.2).

        Raises:
            MalformedMessage: the frame is not JSON, nests deeper than
                MAX_DEPTH (protocol/_common.py), is not an array of at least
                five elements, or an element has the wrong type. The caller
                drops the frame and keeps the socket open (docs/protocol.md §1.5).
        """
        try:
            arr = _loads(data)
        except _JSONDecodeError as exc:
            raise MalformedMessage(f"expected a V2 JSON array, got invalid JSON: {exc}") from None
        _check_depth(data, arr)
        if type(arr) is not list or len(arr) < 5:
            raise MalformedMessage(f"expected V2 array [join_ref, ref, topic, event, payload], got: {_preview(arr)}")
        join_ref, ref, topic, event, payload = arr[:5]
        if type(topic) is not str:
            raise MalformedMessage(f"expected topic (element 3) to be a string, got: {_preview(topic)}")
        if type(event) is not str:
            raise MalformedMessage(f"expected event (element 4) to be a string, got: {_preview(event)}")
        return Message(
            topic=topic,
            event=event,
            payload=payload,
            ref=_ref(ref, "ref (element 2)"),
            join_ref=_ref(join_ref, "join_ref (element 1)"),
        )

    def decode_binary(self, data: bytes) -> Message:
        """Decode one binary frame: kind 0 (push) or kind 3 (user broadcast push).

        Kind 0 gives a Message whose payload is the raw `bytes`. Kind 3 gives
        event "broadcast" with a UserBroadcast payload; its JSON payload has
        been checked to be valid, and its metadata is a dict or None. An empty
        join_ref or ref decodes as None.

        Raises:
            MalformedMessage: the frame is empty or truncated, has another kind
                or an unknown encoding, a field is not UTF-8, or JSON is invalid.
        """
        if not data:
            raise MalformedMessage("empty binary frame: expected a kind byte")
        kind = data[0]
        if kind == _USER_BROADCAST_PUSH:  # what realtime-js sends for channel.send()
            return _decode_user_broadcast_push(data)
        if kind == _PUSH:
            return _decode_push(data)
        raise MalformedMessage(f"unsupported binary kind {kind}: clients may send 0 (push) or 3 (user broadcast push)")

    # -- Encoding (server → client); each returns a complete frame --

    def reply(self, join_ref: str | None, ref: str | None, topic: str, status: ReplyStatus, response: Any) -> bytes:
        """Return [join_ref, ref, topic, "phx_reply", {"status", "response"}] echoing the request."""
        return text_frame(_dumps([join_ref, ref, topic, "phx_reply", {"status": status, "response": response}]))

    def push(self, join_ref: str | None, topic: str, event: str, payload: Any) -> bytes:
        """Return a channel push [join_ref, null, topic, event, payload] (docs/protocol.md §2.2)."""
        return text_frame(_dumps([join_ref, None, topic, event, payload]))

    def control(self, join_ref: str | None, topic: str, event: str) -> bytes:
        """Return phx_close / phx_error as [join_ref, join_ref, topic, event, {}] (docs/protocol.md §2.4)."""
        return text_frame(_dumps([join_ref, join_ref, topic, event, {}]))

    def broadcast(self, topic: str, event: str, payload: Any) -> bytes:
        """Return a fan-out frame [null, null, topic, event, payload] (docs/protocol.md §2.2)."""
        return text_frame(_dumps([None, None, topic, event, payload]))

    def broadcast_json(self, topic: str, event: str, payload_json: bytes) -> bytes:
        """Return [null, null, topic, event, payload] with `payload_json` spliced in as is.

        `payload_json` must be valid JSON text; it is not checked here."""
        topic_event = _dumps((topic, event))  # b'["topic","event"]': one call for both strings
        return text_frame(b"".join((b"[null,null,", topic_event[1:-1], b",", payload_json, b"]")))

    def user_broadcast(self, topic: str, message: UserBroadcast) -> bytes:
        """Return a binary kind 4 frame carrying the user broadcast.

        Layout (docs/protocol.md §2.3): 4, topic_len, user_event_len, metadata_len,
        encoding, topic, user_event, metadata (JSON, or empty when None),
        payload bytes as the sender wrote them.

        Raises:
            ValueError: topic, user event or encoded metadata is longer than
                255 bytes, or the encoding is unknown. The message cannot be
                delivered to V2 receivers; callers skip it (RT raises too).
        """
        topic_b = topic.encode()
        event_b = message.event.encode()
        metadata = message.metadata
        metadata_b = b"" if metadata is None else _dumps(metadata)
        encoding = message.encoding
        if len(topic_b) > MAX_FIELD_BYTES or len(event_b) > MAX_FIELD_BYTES or len(metadata_b) > MAX_FIELD_BYTES:
            raise ValueError(
                "user broadcast cannot be framed: topic, user event and metadata must each be at most "
                f"{MAX_FIELD_BYTES} bytes, got {len(topic_b)}, {len(event_b)} and {len(metadata_b)}"
            )
        if encoding != BINARY and encoding != JSON:
            raise ValueError(f"unknown user broadcast encoding {encoding!r}: expected 0 (binary) or 1 (JSON)")
        return binary_frame(
            b"".join(
                (
                    _pack_user_broadcast_head(_USER_BROADCAST, len(topic_b), len(event_b), len(metadata_b), encoding),
                    topic_b,
                    event_b,
                    metadata_b,
                    message.data,
                )
            )
        )


V2 = V2Codec()
