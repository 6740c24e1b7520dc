"""Phoenix channel message codecs: vsn 1.0.0 JSON and vsn 2.0.0 arrays + binary."""

from __future__ import annotations

import re

from .base import Codec
from .message import BINARY, JSON, Message, UserBroadcast
from .v1 import V1
from .v2 import V2

__all__ = ["BINARY", "JSON", "V1", "V2", "Codec", "Message", "UserBroadcast", "codec_for"]

# RT endpoint.ex picks a serializer by version requirement: V1 for "~> 1.0.0",
# V2 for "~> 2.0.0" (PHX socket.ex negotiate_serializer), so 2.0.3 speaks V2 too.
_CODECS: dict[str, Codec] = {"1": V1, "2": V2}  # by MAJOR as written (no leading zeros)
# SemVer as Elixir's Version.parse/1 reads it: MAJOR.MINOR.PATCH[-pre][+build].
_SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")


def codec_for(vsn: str | None) -> Codec | None:
    """The codec for a `vsn` query value (missing means 1.0.0), or None when unsupported.

    `~> X.0.0` means >= X.0.0 and < X.1.0: any patch level of X.0, including
    pre-releases above X.0.0 (2.0.1-beta), but not 2.0.0-rc.1 (below 2.0.0).
    An empty value is not missing: it does not parse, so it is refused."""
    m = _SEMVER.fullmatch("1.0.0" if vsn is None else vsn)
    if m is None or m.group(2) != "0" or (m.group(3) == "0" and m.group(4)):
        return None
    return _CODECS.get(m.group(1))  # not int(): a MAJOR of 5000 digits would raise ValueError
