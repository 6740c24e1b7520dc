"""Helpers both codecs (v1.py, v2.py) use to read client frames."""

from __future__ import annotations

from ..errors import MalformedMessage

__all__ = ["preview", "ref"]

_PREVIEW = 200  # characters of a bad frame quoted in a MalformedMessage


def preview(value: object) -> str:
    """A bounded repr of a bad value, for error messages."""
    text = repr(value)
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."


def ref(value: object, key: str) -> str | None:
    """Return a ref as a string: clients send strings, but a few send numbers."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):  # True is not a ref
        return str(value)
    raise MalformedMessage(f"expected {key!r} to be a string or null, got: {preview(value)}")
