"""Helpers both codecs (v1.py, v2.py) use to read client frames."""

from __future__ import annotations

import orjson

from ..errors import MalformedMessage

__all__ = ["MAX_DEPTH", "check_depth", "preview", "ref"]

_PREVIEW = 200  # characters of a bad frame quoted in a MalformedMessage

# orjson decodes 1024 nested arrays/objects but encodes only 254, and the
# server sends client values back a few levels deep (join replies echo
# postgres_changes params, presence_state wraps metas): a frame nesting more
# than this could be decoded but not answered. repr() also fails near 1000.
MAX_DEPTH = 128
_ENCODER_DEPTH = 254  # orjson's limit: one more level raises JSONEncodeError


def preview(value: object) -> str:
    """A bounded repr of a bad value, for error messages."""
    text = repr(value)
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."


def check_depth(data: bytes | str, value: object) -> None:
    """Raise MalformedMessage when `value`, decoded from `data`, nests more than MAX_DEPTH arrays/objects."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    containers = raw.count(b"[") + raw.count(b"{")
    if containers <= MAX_DEPTH:
        return  # cannot be deeper: the common case costs two byte counts
    wrapped = value
    for _ in range(_ENCODER_DEPTH - MAX_DEPTH):
        wrapped = [wrapped]
    try:
        # In C, and only for frames with many brackets: fails iff value nests deeper than MAX_DEPTH.
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        raise MalformedMessage(f"frame nests arrays/objects deeper than {MAX_DEPTH} levels") from None


def ref(value: object, key: str) -> str | None:
    """Return a ref as a string: clients send strings, but a few send numbers."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):  # True is not a ref
        return str(value)
    raise MalformedMessage(f"expected {key!r} to be a string or null, got: {preview(value)}")
