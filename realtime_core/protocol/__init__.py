"""Phoenix channel message codecs: vsn 1.0.0 JSON and vsn 2.0.0 arrays + binary."""

from __future__ import annotations

from .base import Codec
from .message import BINARY, JSON, Message, UserBroadcast
from .v1 import V1
from .v2 import V2

__all__ = ["BINARY", "JSON", "V1", "V2", "Codec", "Message", "UserBroadcast", "codec_for"]

_CODECS: dict[str, Codec] = {"1.0.0": V1, "2.0.0": V2}


def codec_for(vsn: str | None) -> Codec | None:
    """The codec for a `vsn` query value (missing means 1.0.0), or None when unsupported."""
    return _CODECS.get(vsn or "1.0.0")
