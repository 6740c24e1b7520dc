"""The Codec seam: vsn 1.0.0 (v1.py) and vsn 2.0.0 (v2.py) implement it.

Every encoding method returns a complete, unmasked WebSocket frame (header
included, see net/frames.py), so that the fan-out can build a frame once per
(message, codec) and write the same bytes to every subscriber."""

from __future__ import annotations

from typing import Any, Protocol

from .message import Message, ReplyStatus, UserBroadcast

__all__ = ["Codec"]


class Codec(Protocol):
    """Encode and decode Phoenix messages for one serializer version."""

    vsn: str

    def decode_text(self, data: bytes | str) -> Message:
        """Decode a text frame. Raises MalformedMessage."""
        ...

    def decode_binary(self, data: bytes) -> Message:
        """Decode a binary frame. Raises MalformedMessage (always, for V1)."""
        ...

    def reply(self, join_ref: str | None, ref: str | None, topic: str, status: ReplyStatus, response: Any) -> bytes:
        """A phx_reply frame: payload {"status": status, "response": response}."""
        ...

    def push(self, join_ref: str | None, topic: str, event: str, payload: Any) -> bytes:
        """A channel push (system, presence_state, ...): carries join_ref in V2, ref null."""
        ...

    def control(self, join_ref: str | None, topic: str, event: str) -> bytes:
        """phx_close / phx_error: ref = join_ref, payload {} (docs/protocol.md §2.4)."""
        ...

    def broadcast(self, topic: str, event: str, payload: Any) -> bytes:
        """A fan-out message (broadcast, presence_diff, postgres_changes): null refs."""
        ...

    def broadcast_json(self, topic: str, event: str, payload_json: bytes) -> bytes:
        """Like broadcast(), with the payload already encoded as JSON bytes."""
        ...

    def user_broadcast(self, topic: str, message: UserBroadcast) -> bytes | None:
        """A user broadcast: kind 4 for V2; for V1 a JSON broadcast
        {"event","payload","type":"broadcast","meta"?}, or None for a binary
        payload (dropped for V1 receivers, docs/protocol.md §2.3). V2 raises ValueError when
        the topic, event or metadata is longer than 255 bytes."""
        ...
