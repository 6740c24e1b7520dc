"""The application: settings, control database, tenants and their services, hub, broker and the
network server, wired.

cli.py creates an App, registers the HTTP API (rest_api.py) on its `http`
router, awaits start(), and awaits stop() on a signal. The network server calls
open_socket() for each WebSocket upgrade (the connect-time checks of
docs/protocol.md §1.4) and the HTTP router for everything else. The App is the
SessionContext of every socket (session_context.py): sessions see only that."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool
from websockets.frames import CloseCode

from . import db, messages, tasks
from .authorization import Authorizer
from .broker import Broker, InProcessBroker
from .channel_stats import ChannelStats
from .config import Settings
from .errors import ConnectError, JwtError, TenantNotFound
from .hub import Hub
from .incidents import Incidents
from .jwt import clean_token, verify
from .metrics import Metrics
from .net.http import Request, Router
from .net.server import Server
from .net.websocket import WebSocketConnection
from .postgres_changes.cdc import PostgresChanges
from .protocol import codec_for
from .runtime import LoopLag
from .secret_box import SecretBox, SecretBoxError
from .socket import RealtimeSocket
from .tenant_services import Cluster, TenantDatabase, TenantServices
from .tenants import MissingHost, Tenant, TenantRegistry, TenantStore
from .timeseries import TimeSeries
from .trace import Tracer
from .usage import UsageMeter

if TYPE_CHECKING:
    from .cluster.broker import RedisBroker
    from .cluster.leader import ReplicationCluster
    from .cluster.nodes import Cluster as Nodes

__all__ = ["SOCKET_PATHS", "App"]

log = logging.getLogger(__name__)

# docs/protocol.md §1.1: Phoenix's path, and supabase-js's path when there is no gateway.
SOCKET_PATHS = frozenset({"/socket/websocket", "/realtime/v1/websocket"})
# log_level query values upstream accepts; anything else means "error" (docs/protocol.md §1.2).
_LOG_LEVELS = frozenset({"info", "warning", "error"})
# The system message upstream sends a tenant's channels before draining its sockets
# (lib/realtime_web/channels/user_socket.ex disconnect/1).
DISCONNECT_TEXT = "Server requested disconnect"
# Pauses between attempts to start the services of a tenant whose database is unreachable (s).
_RETRY_FIRST = 1.0
_RETRY_MAX = 60.0
# How long stop() waits for cancelled background tasks to end.
_STOP_TIMEOUT = 5.0


class App:
    """One server process."""

    socket_paths = SOCKET_PATHS

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.now: Callable[[], float] = self.loop.time
        self.tenants = TenantRegistry(default=settings.tenant_name)
        self.hub = Hub(self.now)  # its tallies count seconds of the loop's time, as `now` everywhere
        # This process among the others of a cluster (Redis messages, /admin/v1/nodes).
        self.node_id = secrets.token_hex(4)
        # With REDIS_URL, the processes of the cluster share topics through Redis (imported only
        # then: a single process needs no Redis client); start() connects it.
        self.cluster_broker: RedisBroker | None = None
        if settings.redis_url:
            from . import cluster
            from .cluster.broker import RedisBroker

            self.cluster_broker = RedisBroker(
                self.hub,
                url=settings.redis_url,
                prefix=cluster.keys(settings),
                node_id=self.node_id,
                tenant_of=self.tenants.get,
                clock=self.now,
            )
        self.broker: Broker = self.cluster_broker or InProcessBroker(self.hub)
        self.channel_stats = ChannelStats(self.now)  # per-stream messages in and out (admin API)
        self.hub.attach(self.channel_stats)
        self.timeseries = TimeSeries()  # sampled once a second by _sample_forever()
        self.sockets: set[RealtimeSocket] = set()
        self.tracer = Tracer(self.hub)  # delivery traces (admin API); hub.tracer while one runs
        self.metrics = Metrics(self)
        self.metrics.cluster = self.cluster_broker
        # Usage metering (usage.py): told of every message by the hub, of every connect by the sockets.
        self.usage = UsageMeter(interval=settings.usage_flush_interval_ms / 1000, enabled=settings.usage_metering)
        if settings.usage_metering:
            self.hub.attach(self.usage)
        self.usage.sockets = lambda: self.sockets  # attribution by client and role reads them
        self.incidents = Incidents()  # recent errors per tenant (admin API)
        self.loop_lag = LoopLag()
        self.http = Router()  # cli.py registers rest_api's routes on it
        self.pool: AsyncConnectionPool | None = None  # the control database (tenants table)
        # Seals and opens tenants' secrets at rest (DB_ENC_KEY); made at start.
        self.secret_box: SecretBox | None = None
        # Why the database services of a tenant last failed to start (cleared when they start).
        self.service_errors: dict[str, str] = {}
        self.services: dict[str, TenantServices] = {}  # by tenant external_id
        self._tenant_changes = asyncio.Lock()  # one run-time tenant change at a time
        self._retrying: set[str] = set()  # tenants whose services _keep_starting() retries
        self.tasks = tasks.Supervisor()  # every background task of the App and its sessions
        self.server: Server | None = None
        self.port: int | None = None
        self.shutting_down = False
        self.started_at = time.time()
        # Replication leadership across the cluster (cluster/leader.py); None: this process leads.
        self.cluster: Cluster | None = None
        self._replication: ReplicationCluster | None = None  # the same, to stop it
        # With REDIS_URL: presence, counts and liveness of the cluster's nodes (cluster/nodes.py).
        self.nodes: Nodes | None = None
        # What the cluster's other nodes may ask this one (Nodes.ask()); admin modules register these.
        self.node_queries: dict[str, Callable[[dict[str, Any]], Any]] = {}

    async def start(self) -> int:
        """Migrate the database, load tenants, start their database services and listen;
        return the bound port."""
        settings = self.settings
        if not settings.database_url:
            raise RuntimeError("App.start() needs settings.database_url (cli.py starts the embedded one)")
        if self.cluster_broker is not None:
            await self.cluster_broker.start()
            log.info("node %s joined cluster %r on Redis", self.node_id, settings.cluster_name)
        self.pool = await db.open_pool(settings.database_url)
        secret = settings.resolve_jwt_secret()
        self.secret_box = SecretBox(settings.resolve_db_enc_key())
        async with self.pool.connection() as conn:
            applied = await db.migrate(conn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            store = TenantStore(conn, self.secret_box)
            try:
                sealed = await store.seal_plaintext()
            except SecretBoxError:
                raise SecretBoxError(
                    "DB_ENC_KEY does not open the tenant secrets stored in the server's database: start with the"
                    " DB_ENC_KEY they were sealed with (or the data dir's db_enc_key file that held it)"
                ) from None
            if sealed:
                log.info("sealed the secrets of %d tenant(s) stored in plain text", len(sealed))
            await store.ensure_default(settings, secret)
            for tenant in await store.load_all(self.now()):
                self.tenants.put(tenant)
        self.usage.start(self.pool, lambda: self.tenants, self.spawn)
        if settings.redis_url:
            from .cluster.leader import ReplicationCluster  # the `cluster` extra: only when asked for

            cluster = ReplicationCluster(settings, self.node_id)
            await cluster.start()
            self.cluster = self._replication = cluster
        # Together, so that one slow or unreachable database delays the others by nothing.
        tenants = list(self.tenants)
        results = await asyncio.gather(*(self._start_services(t) for t in tenants), return_exceptions=True)
        for tenant, result in zip(tenants, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            if tenant.external_id == settings.tenant_name:
                raise result  # the server's own database: nothing works without it
            self._starting_failed(tenant, result)
        if settings.redis_url:
            # Imported here: without REDIS_URL nothing of the cluster (nor redis-py) is loaded.
            from .cluster.nodes import Cluster as Nodes

            nodes = Nodes(self, self.tenants.get, self.broker)
            await nodes.start()  # before listening: a first join sees the cluster's presences
            self.nodes = nodes
            self.broker = nodes.broker
        self.server = Server(
            self,
            max_frame_bytes=settings.max_frame_bytes,
            limits=settings.http_limits,
            idle_timeout=settings.idle_timeout_ms / 1000,
            max_write_buffer=settings.max_write_buffer_bytes,
            flush_chunk=settings.flush_chunk,
        )
        self.server.writer.on_slow_consumer = self.tracer.slow_consumer
        self.port = await self.server.listen(settings.host, settings.port, reuse_port=settings.reuse_port)
        self.spawn(self.loop_lag.run(), name="event-loop lag")
        self.spawn(self._sample_forever(), name="time series")
        return self.port

    async def _sample_forever(self) -> None:
        """Once a second: a time series sample, and idle streams' statistics dropped."""
        while True:
            await asyncio.sleep(1.0)
            self.timeseries.sample(self, time.time())
            self.channel_stats.prune(self.hub.stream_keys())

    def _database_of(self, tenant: Tenant) -> TenantDatabase | None:
        return TenantDatabase.of(
            tenant,
            default_dsn=self.settings.database_url,
            is_default=tenant.external_id == self.settings.tenant_name,
        )

    async def _start_services(self, tenant: Tenant) -> TenantServices | None:
        """Start the database services of `tenant` when its settings name a database."""
        database = self._database_of(tenant)
        if database is None:
            return None
        services = TenantServices(self, tenant, database, is_default=tenant.external_id == self.settings.tenant_name)
        await services.start()
        self.services[tenant.external_id] = services
        self.service_errors.pop(tenant.external_id, None)
        return services

    async def _try_services(self, tenant: Tenant) -> None:
        """Start the services of `tenant`; when its database is unreachable, keep trying in
        the background while the tenant is served without them (public channels work)."""
        try:
            await self._start_services(tenant)
        except Exception as exc:
            self._starting_failed(tenant, exc)

    def _starting_failed(self, tenant: Tenant, exc: BaseException) -> None:
        self.service_errors[tenant.external_id] = str(exc) or type(exc).__name__
        log.error("UnableToConnectToProject: tenant %s's database services did not start: %s", tenant.external_id, exc)
        if tenant.external_id not in self._retrying:
            self._retrying.add(tenant.external_id)
            self.spawn(self._keep_starting(tenant))

    async def _keep_starting(self, tenant: Tenant) -> None:
        """Retry starting the services of `tenant`, whose database was unreachable, with a
        growing pause, until they run or the tenant is no longer served as it was."""
        delay = _RETRY_FIRST
        try:
            while True:
                await asyncio.sleep(delay)
                async with self._tenant_changes:
                    if self.tenants.get(tenant.external_id) is not tenant or tenant.external_id in self.services:
                        return  # removed, or started by an update meanwhile
                    try:
                        await self._start_services(tenant)
                        return
                    except Exception as exc:
                        log.warning("tenant %s's database services still do not start: %s", tenant.external_id, exc)
                delay = min(delay * 2, _RETRY_MAX)
        finally:
            self._retrying.discard(tenant.external_id)

    # Run-time tenant changes: the tenant API writes the control table, then calls one of these.

    async def _read_tenant(self, external_id: str) -> Tenant | None:
        assert self.pool is not None
        async with self.pool.connection() as conn:
            return await TenantStore(conn, self.secret_box).get(external_id, self.now())

    async def add_tenant(self, external_id: str) -> Tenant:
        """Serve the stored tenant `external_id` from now on, with its database services.
        Raises TenantNotFound when it is not stored; an existing one is updated instead."""
        async with self._tenant_changes:
            return await self._add_tenant(external_id)

    async def update_tenant(self, external_id: str, *, disconnect: bool = False) -> Tenant:
        """Apply the stored settings of tenant `external_id` to the running one (adding it when
        it is not served yet).

        As upstream's Api.update_tenant/2: a change of keys, suspend or private_only, or of
        the database, disconnects the tenant's sockets (clients reconnect under the new
        settings); a change of the database restarts its services on the new one.
        `disconnect`: disconnect them whatever changed (as saving Studio's settings does)."""
        async with self._tenant_changes:
            return await self._update_tenant(external_id, disconnect=disconnect)

    async def reload_tenant(self, external_id: str) -> bool:
        """Upstream's tenant reload (tenant_controller.ex reload/2): take the stored settings,
        disconnect the tenant's sockets and restart its database services (slots kept).
        False when the tenant is not served."""
        async with self._tenant_changes:
            tenant = self.tenants.get(external_id)
            if tenant is None:
                return False
            stored = await self._read_tenant(external_id)
            if stored is not None:
                tenant.update_from(stored)
            self._disconnect_tenant(external_id)
            services = self.services.pop(external_id, None)
            if services is not None:
                await services.stop()
            await self._try_services(tenant)
            return True

    async def shutdown_tenant(self, external_id: str) -> bool:
        """Upstream's tenant shutdown (Connect.shutdown/1): stop the tenant's database services,
        keeping its slots and its sockets; reload_tenant() or an update starts them again.
        False when the tenant is not served."""
        async with self._tenant_changes:
            if self.tenants.get(external_id) is None:
                return False
            services = self.services.pop(external_id, None)
            if services is not None:
                await services.stop()
            return True

    def tenant_sockets(self, external_id: str) -> int:
        """How many sockets tenant `external_id` has open."""
        return sum(1 for s in self.sockets if s.tenant.external_id == external_id)

    async def remove_tenant(self, external_id: str) -> bool:
        """Stop serving tenant `external_id`: refuse its connects, disconnect its sockets, stop
        its services and drop its replication slots (upstream tenant_controller.ex delete/2).
        Returns False when it was not served."""
        async with self._tenant_changes:
            tenant = self.tenants.remove(external_id)
            self.service_errors.pop(external_id, None)
            if tenant is None:
                return False
            self._disconnect_tenant(external_id)
            self.incidents.forget(external_id)
            self.channel_stats.forget_tenant(external_id)
            services = self.services.pop(external_id, None)
            if services is not None:
                await services.stop(drop_slots=True)
            return True

    async def _add_tenant(self, external_id: str) -> Tenant:
        if self.tenants.get(external_id) is not None:
            return await self._update_tenant(external_id)
        tenant = await self._read_tenant(external_id)
        if tenant is None:
            raise TenantNotFound("Tenant not found")
        self.tenants.put(tenant)
        await self._try_services(tenant)
        return tenant

    async def _update_tenant(self, external_id: str, *, disconnect: bool = False) -> Tenant:
        current = self.tenants.get(external_id)
        if current is None:
            return await self._add_tenant(external_id)
        stored = await self._read_tenant(external_id)
        if stored is None:
            raise TenantNotFound("Tenant not found")
        database = self._database_of(stored)
        services = self.services.get(external_id)
        moved = database != (services.database if services is not None else None)
        if (
            disconnect
            or moved
            or (stored.keys, stored.suspend, stored.private_only)
            != (
                current.keys,
                current.suspend,
                current.private_only,
            )
        ):
            self._disconnect_tenant(external_id)
        current.update_from(stored)
        if not moved:
            return current
        if services is None:
            await self._try_services(current)
        elif database is None:  # its settings no longer name a database
            del self.services[external_id]
            await services.stop(drop_slots=True)
        else:
            try:
                await services.reload(database)
            except Exception as exc:
                del self.services[external_id]  # stopped by the failed start
                self._starting_failed(current, exc)
        return current

    def _disconnect_tenant(self, external_id: str) -> None:
        """Upstream's UserSocket.disconnect/1: every channel of the tenant gets the system
        message `Server requested disconnect`, then its sockets are drained (close 1012)."""
        for socket in [s for s in self.sockets if s.tenant.external_id == external_id]:
            self.disconnect_socket(socket)

    def disconnect_socket(self, socket: RealtimeSocket) -> str:
        """Disconnect one socket as upstream's UserSocket.disconnect/1 does each of a tenant's:
        `Server requested disconnect` on each of its channels, then close 1012; return that text."""
        payload_of = {"extension": "system", "status": "ok", "message": DISCONNECT_TEXT}
        for channel in list(socket.channels.values()):
            channel.push("system", {**payload_of, "channel": channel.sub_topic})
        socket.disconnect(CloseCode.SERVICE_RESTART)
        return DISCONNECT_TEXT

    async def stop(self) -> None:
        """Refuse new joins, close every socket with 1012 (service restart), stop the tenants'
        services, close the pool."""
        self.shutting_down = True
        if self.server is not None:
            await self.server.close(CloseCode.SERVICE_RESTART)
        # Joins, policy re-checks and tenant retries still running: cancelled, and awaited so
        # that none starts or uses a service being stopped.
        await self.tasks.stop(timeout=_STOP_TIMEOUT)
        if self.nodes is not None:
            await self.nodes.stop()  # after the sockets closed: their leaves and disconnects are sent
        for services in list(self.services.values()):
            await services.stop()
        self.services.clear()
        if self._replication is not None:
            await self._replication.stop()
        if self.cluster_broker is not None:
            await self.cluster_broker.stop()
        if self.pool is not None:
            # Every socket is closed and every service stopped: nothing is counted after this.
            # Bounded: with the database gone, stopping must not wait for the pool's timeout.
            try:
                await asyncio.wait_for(self.usage.flush(), _STOP_TIMEOUT)
            except TimeoutError:
                log.error("usage: the last flush did not finish within %.0f s; its counts are lost", _STOP_TIMEOUT)
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
        try:
            claims, token = self._admit(tenant, request)
        except ConnectError as exc:
            self.incidents.record(tenant.external_id, exc.code, exc.text or f"HTTP {exc.status}")
            raise
        x_headers = {k: v for k, v in request.headers.items() if k.startswith("x-")}
        level = query.get("log_level", "error")
        socket = RealtimeSocket(
            self,
            tenant,
            codec,
            token,
            claims,
            x_headers,
            level if level in _LOG_LEVELS else "error",
            remote=request.client,
            vsn=query.get("vsn") or "1.0.0",
            client_info=request.headers.get("x-client-info") or query.get("X-Client-Info") or None,
            user_agent=request.headers.get("user-agent"),
        )
        return socket, socket.attach

    def _admit(self, tenant: Tenant, request: Request) -> tuple[dict[str, Any], str]:
        """The connect-time checks after the tenant is known: its claims and cleaned token, or
        ConnectError (docs/protocol.md §1.4)."""
        if tenant.suspend:
            raise ConnectError(403, "Realtime was disabled for this tenant", "RealtimeDisabledForTenant")
        token = request.headers.get("x-api-key") or request.query.get("apikey")
        if not token:
            raise ConnectError(401, "API key is missing", "MissingAPIKey")
        try:
            claims = self.verify_token(tenant, token)
        except JwtError as exc:
            raise ConnectError(exc.connect_status, exc.connect_text, exc.code) from None
        limits = tenant.limits
        now = self.now()
        if tenant.users + tenant.remote_users >= limits.max_concurrent_users:
            raise ConnectError(429, "Too many connected users", "ConnectionRateLimitReached")
        if tenant.joins.reached(limits.max_joins_per_second, now):
            raise ConnectError(429, "Too many joins per second", "JoinsRateLimitReached")
        if tenant.enforce_quota and tenant.plan.hard_quota and self.usage.messages_exhausted(tenant):
            # 429 as upstream answers its other connect-time limits (user_socket.ex): the client
            # backs off and retries, which succeeds once the next cycle starts.
            raise ConnectError(
                429,
                f"MessageQuotaExceeded: the {tenant.plan.included_messages} messages plan {tenant.plan.name}"
                " includes in this billing cycle are used up",
                "MessageQuotaExceeded",
            )
        return claims, clean_token(token)  # what the socket's joins fall back to (docs/protocol.md §3.2)

    def spawn(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Run `coro` as a task the app keeps until it ends (and cancels and awaits at stop); an
        exception escaping it is logged and passed to `on_error` (tasks.spawn)."""
        self.tasks.spawn(coro, name=name, on_error=on_error)

    def services_failed(self, tenant: Tenant) -> bool:
        return tenant.external_id in self.service_errors and tenant.external_id not in self.services

    def authorizer_for(self, tenant: Tenant) -> Authorizer | None:
        """The RLS authorizer of a tenant's database, if it has one."""
        services = self.services.get(tenant.external_id)
        return services.authorizer if services is not None else None

    async def replay(self, tenant: Tenant, topic: str, since_ms: int, limit: int) -> list[messages.ReplayRow]:
        """Stored private broadcasts of `topic` since `since_ms` (docs/protocol.md §4.6)."""
        services = self.services.get(tenant.external_id)
        return [] if services is None else await services.replay(topic, since_ms, limit)

    def replication_connected(self, tenant: Tenant) -> bool:
        """Whether the tenant's replication connection (broadcast from the database, as
        upstream's Connect replication_conn) is streaming."""
        services = self.services.get(tenant.external_id)
        return services is not None and services.replication_connected

    def cdc_for(self, tenant: Tenant) -> PostgresChanges | None:
        """The Postgres Changes of a tenant's database, if it has one."""
        services = self.services.get(tenant.external_id)
        return services.cdc if services is not None else None

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
