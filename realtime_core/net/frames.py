"""Server-to-client WebSocket frame bytes, built without a protocol object.

Server frames are never masked (RFC 6455 §5.1), so one frame's bytes are the
same for every connection: the fan-out builds a frame once and writes it to
every subscriber's transport. Frames are never fragmented; compression is off."""

from __future__ import annotations

import struct

__all__ = ["OP_BINARY", "OP_TEXT", "binary_frame", "text_frame"]

OP_TEXT = 0x1
OP_BINARY = 0x2

_H16 = struct.Struct("!BBH").pack
_H64 = struct.Struct("!BBQ").pack


def _frame(first: int, data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        return bytes((first, n)) + data
    if n < 65536:
        return _H16(first, 126, n) + data
    return _H64(first, 127, n) + data


def text_frame(data: bytes) -> bytes:
    """Return a FIN text frame carrying `data` (UTF-8)."""
    return _frame(0x80 | OP_TEXT, data)


def binary_frame(data: bytes) -> bytes:
    """Return a FIN binary frame carrying `data`."""
    return _frame(0x80 | OP_BINARY, data)
