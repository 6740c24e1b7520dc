"""Failures a client is told about, each carrying its upstream code.

The texts are those of upstream Realtime (docs/protocol.md §1.4, §3.5, §3.6, §8.1). One
place in channel.py turns a RealtimeError into a join error reply (`reason`);
one place in socket.py turns a ConnectError into an HTTP answer; a channel
shutdown pushes `shutdown_text` as a system message, then phx_close.

Exception tree::

    RealtimeError                       "<Code>: <message>" reasons
     ├── TopicNameRequired, TenantNotFound, PrivateOnly, Unauthorized, ...
     └── JwtError                       token failures (also used at connect)
          ├── InvalidJWTToken, MalformedJWT, JwtSignatureError, JwtSignerError
    ConnectError                        HTTP status + {"error": text} at connect
    MalformedMessage                    a frame we cannot decode: dropped, counted
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CONNECT_ERROR_TEXT",
    "ChannelRateLimitReached",
    "ClientJoinRateLimitReached",
    "ConnectError",
    "ConnectionRateLimitReached",
    "InvalidJWTToken",
    "JwtError",
    "JwtSignatureError",
    "JwtSignerError",
    "MalformedJWT",
    "MalformedMessage",
    "PrivateOnly",
    "RealtimeDisabledForTenant",
    "RealtimeError",
    "RealtimeRestarting",
    "TenantNotFound",
    "TopicNameRequired",
    "UnableToConnectToProject",
    "Unauthorized",
    "UnknownErrorOnChannel",
]


# docs/protocol.md §1.4: the catch-all connect failure (e.g. a failed claim validator), HTTP 500.
CONNECT_ERROR_TEXT = "Error connecting to Realtime"


class RealtimeError(Exception):
    """A failure the client is told about, as "<code>: <message>"."""

    code: ClassVar[str] = "UnknownErrorOnChannel"
    # Also close the socket (docs/protocol.md §3.3 steps 2 and 6 close with 1001).
    closes_socket: ClassVar[bool] = False

    def __init_subclass__(cls, *, code: str, closes_socket: bool = False, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.code, cls.closes_socket = code, closes_socket

    @property
    def message(self) -> str:
        return str(self)

    @property
    def reason(self) -> str:
        return f"{self.code}: {self}"


class UnknownErrorOnChannel(RealtimeError, code="UnknownErrorOnChannel"):
    """Anything unexpected; upstream sends this text without a code prefix."""

    @property
    def reason(self) -> str:
        return "Unknown Error on Channel"


class TopicNameRequired(RealtimeError, code="TopicNameRequired"):
    """`realtime:` with nothing after it."""


class RealtimeRestarting(RealtimeError, code="RealtimeRestarting"):
    """The server is shutting down."""


class TenantNotFound(RealtimeError, code="TenantNotFound", closes_socket=True):
    """The tenant vanished while the socket was open."""


class RealtimeDisabledForTenant(RealtimeError, code="RealtimeDisabledForTenant"):
    """The tenant is suspended."""


class PrivateOnly(RealtimeError, code="PrivateOnly"):
    """The tenant only allows private channels."""


class ConnectionRateLimitReached(RealtimeError, code="ConnectionRateLimitReached"):
    """max_concurrent_users reached."""


class ClientJoinRateLimitReached(RealtimeError, code="ClientJoinRateLimitReached", closes_socket=True):
    """max_joins_per_second triggered: the join fails and the socket closes with 1001."""


class ChannelRateLimitReached(RealtimeError, code="ChannelRateLimitReached"):
    """max_channels_per_client reached on this socket."""


class Unauthorized(RealtimeError, code="Unauthorized"):
    """A private channel the token may not read. `policy_error`: the database's message when a
    policy raised (for operators: the client is told only the upstream text)."""

    policy_error: str | None = None


class UnableToConnectToProject(RealtimeError, code="UnableToConnectToProject"):
    """The tenant database cannot be reached."""


class JwtError(RealtimeError, code="InvalidJWTToken"):
    """A token failure. `connect_text` is what a socket connect answers (docs/protocol.md §1.4)."""

    connect_text: ClassVar[str] = "The token provided is not a valid JWT"

    def __init__(self, message: str, connect_text: str | None = None) -> None:
        super().__init__(message)
        if connect_text is not None:
            self.connect_text = connect_text  # type: ignore[misc]

    @property
    def connect_status(self) -> int:
        """HTTP status at connect: 401, or 500 for "Error connecting to Realtime" (docs/protocol.md §1.4)."""
        return 500 if self.connect_text == CONNECT_ERROR_TEXT else 401


class InvalidJWTToken(JwtError, code="InvalidJWTToken"):
    """Expired, or lacking `role`/`exp`, or an invalid expiry."""


class MalformedJWT(JwtError, code="MalformedJWT"):
    """Not a JWT at all."""


class JwtSignatureError(JwtError, code="JwtSignatureError"):
    """The signature does not verify."""

    connect_text = "Failed to validate JWT signature"


class JwtSignerError(JwtError, code="JwtSignerError"):
    """No key matches the token's alg/kid."""


class ConnectError(Exception):
    """A refused WebSocket upgrade: HTTP `status` with body {"error": text} (docs/protocol.md §1.4)."""

    def __init__(self, status: int, text: str, code: str = "ErrorConnectingToWebsocket") -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code  # the operational code (docs/protocol.md §9.3), for the recent-errors log


class MalformedMessage(ValueError):
    """An incoming frame that is not a valid Phoenix message: dropped, the socket stays open."""
