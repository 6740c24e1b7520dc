"""What a client session (socket.py, channel.py) needs of the server, as Protocols.

app.App provides all of it; a unit test can provide a small fake instead. The
session never imports the App (as net/server.py's Application does for the
network layer): the dependencies read net → protocol → core → tenant services
→ session → app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, MutableSet
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .authorization import Authorizer
    from .broker import Broker
    from .config import Settings
    from .hub import Hub
    from .incidents import Incidents
    from .messages import ReplayRow
    from .postgres_changes.cdc import PostgresChanges
    from .protocol import Codec, Message
    from .tenants import Tenant, TenantRegistry

__all__ = ["ChannelSocket", "Connection", "SessionContext", "SessionMetrics", "SessionUsage", "Spawn"]


class Spawn(Protocol):
    """Runs a coroutine as a task the server keeps and cancels at stop (tasks.spawn)."""

    def __call__(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None: ...


class SessionMetrics(Protocol):
    """The counters a session increments."""

    malformed_messages: int

    def join_started(self, tenant: str) -> None: ...

    def join_refused(self, code: str, tenant: str) -> None: ...


class SessionUsage(Protocol):
    """Usage metering (usage.UsageMeter) as a socket reports to it: each WebSocket connection,
    the bytes of its own frames, and the socket itself for attribution by client and role."""

    def connected(self, tenant: Tenant) -> None: ...

    def disconnected(self, tenant: Tenant) -> None: ...

    def egress(self, tenant_id: str, kind: str, nbytes: int, topic: str, private: bool = False) -> None: ...

    def socket_opened(self, socket: Any) -> None: ...

    def socket_closed(self, socket: Any) -> None: ...


class SessionContext(Protocol):
    """The server as a client session sees it."""

    settings: Settings
    tenants: TenantRegistry
    broker: Broker
    hub: Hub  # accepted() and sent(): what sessions report for usage metering (deliveries go through the broker)
    metrics: SessionMetrics
    usage: SessionUsage
    incidents: Incidents  # recent errors per tenant, for operators
    sockets: MutableSet[Any]  # the open sockets: added at attach, removed at close
    shutting_down: bool
    loop: asyncio.AbstractEventLoop  # timers: token expiry, replication_ready, error backoff
    now: Callable[[], float]  # the loop's clock
    spawn: Spawn

    def verify_token(self, tenant: Tenant, token: str) -> dict[str, Any]: ...

    def authorizer_for(self, tenant: Tenant) -> Authorizer | None: ...

    def services_failed(self, tenant: Tenant) -> bool:
        """True while the tenant's database services could not start (its database unreachable)."""
        ...

    def cdc_for(self, tenant: Tenant) -> PostgresChanges | None: ...

    def replication_connected(self, tenant: Tenant) -> bool: ...

    async def replay(self, tenant: Tenant, topic: str, since_ms: int, limit: int) -> list[ReplayRow]: ...


class Connection(Protocol):
    """The WebSocket a session writes to (net/websocket.WebSocketConnection)."""

    def send(self, frame: bytes) -> None: ...


class ChannelSocket(Protocol):
    """What a channel needs of the socket that joined it (socket.RealtimeSocket)."""

    ctx: SessionContext
    tenant: Tenant
    codec: Codec
    conn: Connection
    token: str  # the connect token: a join without a token of its own uses it
    x_headers: dict[str, str]
    counted: bool  # counted in tenant.users
    id: str  # the connection's id (admin API)
    channels: dict[str, Any]  # the socket's channels by topic
    accepted: int  # messages accepted from the socket (attribution by client and role)

    def send_protocol(self, frame: bytes, topic: str, private: bool = False) -> None: ...

    def hold(self, msg: Message) -> None: ...

    def release(self, messages: int, size: int) -> None: ...

    def channel_closed(self, channel: Any) -> None: ...
