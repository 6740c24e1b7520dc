"""The values the Phoenix codecs produce and consume, without I/O.

A decoded client frame is a Message. A user broadcast (binary kind 3 in,
kind 4 out; docs/protocol.md §2.3) keeps its payload as raw bytes so that it can be
re-broadcast to V2 receivers without a JSON round trip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["BINARY", "JSON", "Message", "ReplyStatus", "UserBroadcast"]

# docs/protocol.md §2.3: user broadcast payload encodings
BINARY = 0
JSON = 1

ReplyStatus = Literal["ok", "error"]


@dataclass(slots=True, frozen=True)
class UserBroadcast:
    """A broadcast whose payload stays as the bytes the sender wrote.

    `data` is UTF-8 JSON text when `encoding` is JSON (already checked to be
    valid JSON by the decoder), otherwise opaque bytes. `metadata` is the
    decoded metadata object, or None when there was none."""

    event: str
    data: bytes
    encoding: int = JSON
    metadata: dict[str, Any] | None = None


@dataclass(slots=True)
class Message:
    """One decoded client frame.

    `payload` is the decoded JSON value, a UserBroadcast (binary kind 3), or
    bytes (binary kind 0 push). `size` is the length of the frame it came
    from, set by its receiver (socket.py bounds what it holds by it)."""

    topic: str
    event: str
    payload: Any
    ref: str | None = None
    join_ref: str | None = None
    size: int = 0
