"""The application: settings, database, tenants, hub, broker and the network server, wired.

cli.py creates an App, registers the HTTP API (rest_api.py) on its `http`
router, awaits start(), and awaits stop() on a signal. The network server calls
open_socket() for each WebSocket upgrade (the connect-time checks of
docs/protocol.md §1.4) and the HTTP router for everything else. The App is the
SessionContext of every socket (session_context.py): sessions see only that."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool
from websockets.frames import CloseCode

from . import db, messages, tasks
from .authorization import Authorizer
from .broker import Broker, InProcessBroker
from .config import Settings
from .db_broadcast import DatabaseBroadcast
from .errors import ConnectError, JwtError, TenantNotFound
from .hub import Hub
from .jwt import clean_token, verify
from .metrics import Metrics
from .net.http import Request, Router
from .net.server import Server
from .net.websocket import WebSocketConnection
from .postgres_changes.cdc import PostgresChanges
from .protocol import codec_for
from .socket import RealtimeSocket
from .tenants import MissingHost, Tenant, TenantRegistry, TenantStore

__all__ = ["SOCKET_PATHS", "App"]

log = logging.getLogger(__name__)

# docs/protocol.md §1.1: Phoenix's path, and supabase-js's path when there is no gateway.
SOCKET_PATHS = frozenset({"/socket/websocket", "/realtime/v1/websocket"})
# log_level query values upstream accepts; anything else means "error" (docs/protocol.md §1.2).
_LOG_LEVELS = frozenset({"info", "warning", "error"})


class App:
    """One server process."""

    socket_paths = SOCKET_PATHS

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.now: Callable[[], float] = self.loop.time
        self.tenants = TenantRegistry(default=settings.tenant_name)
        self.hub = Hub()
        self.broker: Broker = InProcessBroker(self.hub)
        self.sockets: set[RealtimeSocket] = set()
        self.metrics = Metrics(self)
        self.http = Router()  # cli.py registers rest_api's routes on it
        self.pool: AsyncConnectionPool | None = None
        self.cdc: dict[str, PostgresChanges] = {}
        self.authorizers: dict[str, Authorizer] = {}
        self.db_broadcasts: dict[str, DatabaseBroadcast] = {}
        self.janitor: messages.Janitor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.server: Server | None = None
        self.port: int | None = None
        self.shutting_down = False
        self.started_at = time.time()

    async def start(self) -> int:
        """Migrate the database, load tenants and listen; return the bound port."""
        settings = self.settings
        if not settings.database_url:
            raise RuntimeError("App.start() needs settings.database_url (cli.py starts the embedded one)")
        self.pool = await db.open_pool(settings.database_url)
        secret = settings.resolve_jwt_secret()
        async with self.pool.connection() as conn:
            applied = await db.migrate(conn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            store = TenantStore(conn)
            await store.ensure_default(settings, secret)
            for tenant in await store.load_all(self.now()):
                self.tenants.put(tenant)
        default = self.tenants.get(settings.tenant_name)
        if default is not None:
            await self._start_tenant_database(default, settings.database_url)
        self.server = Server(
            self,
            max_frame_bytes=settings.max_frame_bytes,
            max_body_bytes=settings.max_http_body_bytes,
            idle_timeout=settings.idle_timeout_ms / 1000,
            max_write_buffer=settings.max_write_buffer_bytes,
            flush_chunk=settings.flush_chunk,
        )
        self.port = await self.server.listen(settings.host, settings.port)
        return self.port

    async def _start_tenant_database(self, tenant: Tenant, dsn: str) -> None:
        """Private channels, broadcast from the database, the partition janitor and
        Postgres Changes of one tenant database."""
        settings = self.settings
        assert self.pool is not None
        async with self.pool.connection() as conn:
            await messages.ensure_partitions(conn)  # before any authorization probe needs today's
        authorizer = Authorizer(dsn, pool_size=settings.authorization_pool_size)
        await authorizer.open()
        self.authorizers[tenant.external_id] = authorizer
        if settings.janitor:
            self.janitor = messages.Janitor(
                self.pool,
                interval=settings.janitor_interval_ms / 1000,
                retention=timedelta(hours=settings.message_retention_hours),
            )
            self.janitor.start()
        if settings.db_broadcast:
            stream = DatabaseBroadcast(
                self.broker, self.now, tenant, dsn, slot=settings.cdc.messages_slot, mode=settings.cdc.mode
            )
            stream.start()
            self.db_broadcasts[tenant.external_id] = stream
            # Listen only once the slot exists: a message sent by a client that
            # joined right after start must be in it.
            await asyncio.wait_for(stream.stream.ready.wait(), timeout=30)
        if settings.postgres_changes:
            cdc = PostgresChanges(tenant, dsn, settings.cdc, self.now, self.hub)
            await cdc.start()
            self.cdc[tenant.external_id] = cdc

    async def stop(self) -> None:
        """Refuse new joins, close every socket with 1012 (service restart), close the pool."""
        self.shutting_down = True
        if self.server is not None:
            await self.server.close(CloseCode.SERVICE_RESTART)
        for task in list(self._tasks):
            task.cancel()
        if self.janitor is not None:
            await self.janitor.stop()
        for stream in self.db_broadcasts.values():
            await stream.stop()
        for authorizer in self.authorizers.values():
            await authorizer.close()
        for cdc in self.cdc.values():
            await cdc.stop()
        if self.pool is not None:
            await self.pool.close()

    def verify_token(self, tenant: Tenant, token: str) -> dict[str, Any]:
        """The claims of a client's JWT for `tenant`, checked now: the one check of a socket
        connect, a join, an `access_token` refresh or expiry re-check, and the REST broadcast API.

        The token is cleaned, verified against the tenant's keys and JWT_CLAIM_VALIDATORS, and
        must carry `role` and `exp` (docs/protocol.md §8.1). Raises JwtError."""
        return verify(token, tenant.keys, now=time.time(), claim_validators=self.settings.jwt_claim_validators)

    # Connect-time checks (docs/protocol.md §1.4), called by net/server.py

    async def open_socket(self, request: Request) -> tuple[RealtimeSocket, Callable[[WebSocketConnection], None]]:
        query = request.query
        codec = codec_for(query.get("vsn"))
        if codec is None:
            raise ConnectError(403, "")  # unsupported vsn: 403, empty body, no backoff
        try:
            tenant = self.tenants.resolve(request.headers.get("host"))
        except MissingHost as exc:
            raise ConnectError(400, str(exc)) from None
        except TenantNotFound:
            raise ConnectError(404, "Tenant not found") from None  # upstream user_socket.ex error_response/1
        if tenant.suspend:
            raise ConnectError(403, "Realtime was disabled for this tenant")
        token = request.headers.get("x-api-key") or query.get("apikey")
        if not token:
            raise ConnectError(401, "API key is missing")
        try:
            claims = self.verify_token(tenant, token)
        except JwtError as exc:
            raise ConnectError(exc.connect_status, exc.connect_text) from None
        token = clean_token(token)  # what the socket's joins fall back to (docs/protocol.md §3.2)
        limits = tenant.limits
        now = self.now()
        if tenant.users >= limits.max_concurrent_users:
            raise ConnectError(429, "Too many connected users")
        if tenant.joins.reached(limits.max_joins_per_second, now):
            raise ConnectError(429, "Too many joins per second")
        x_headers = {k: v for k, v in request.headers.items() if k.startswith("x-")}
        level = query.get("log_level", "error")
        socket = RealtimeSocket(
            self, tenant, codec, token, claims, x_headers, level if level in _LOG_LEVELS else "error"
        )
        return socket, socket.attach

    def spawn(self, coro: Coroutine[Any, Any, Any], *, on_error: Callable[[BaseException], None] | None = None) -> None:
        """Run `coro` as a task the app keeps until it ends (and cancels at stop); an
        exception escaping it is logged and passed to `on_error` (tasks.spawn)."""
        tasks.spawn(coro, on_error=on_error, group=self._tasks)

    def authorizer_for(self, tenant: Tenant) -> Authorizer | None:
        """The RLS authorizer of a tenant's database, if it has one."""
        return self.authorizers.get(tenant.external_id)

    async def replay(self, tenant: Tenant, topic: str, since_ms: int, limit: int) -> list[messages.ReplayRow]:
        """Stored private broadcasts of `topic` since `since_ms` (docs/protocol.md §4.6)."""
        if self.pool is None or tenant.external_id not in self.authorizers:
            return []
        async with self.pool.connection() as conn:
            return await messages.replay(conn, topic, since_ms, limit)

    def replication_connected(self, tenant: Tenant) -> bool:
        """Whether the tenant's replication connection (broadcast from the database, as
        upstream's Connect replication_conn) is streaming."""
        stream = self.db_broadcasts.get(tenant.external_id)
        return stream is not None and stream.stream.connected

    def cdc_for(self, tenant: Tenant) -> PostgresChanges | None:
        """The Postgres Changes of a tenant's database, if it has one."""
        return self.cdc.get(tenant.external_id)

    def connect_error_delay(self, error: ConnectError) -> float:
        if error.status == 403 and not error.text:
            return 0.0
        return self.settings.connect_error_backoff_ms / 1000

    # Introspection (metrics, admin)

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.sockets),
            "channels": sum(len(s.channels) for s in self.sockets),
            "streams": self.hub.stream_count(),
            "presence_topics": len(self.hub.presences),
            "tenants": len(self.tenants),
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }
