"""One tenant's database services: its pool, authorizer, Postgres Changes, database broadcast, janitor.

Upstream runs each tenant's extensions under a supervisor of their own behind the
PostgresCdc behaviour (lib/extensions/postgres_cdc_rls/cdc_rls.ex handle_connect,
handle_stop). Here a TenantServices object plays that part: app.App makes one for
every tenant whose settings name a database, start()s it, reload()s it when the
tenant's database settings change and stop()s it when the tenant goes (dropping
its replication slots then, as upstream's Database.replication_slot_teardown/1).

Where a tenant's database is (TenantDatabase.of):
- The default (self-host) tenant's database is the server's own, DATABASE_URL.
- Any other tenant's is named by its `postgres_cdc_rls` extension, with upstream's
  keys (lib/extensions/postgres_cdc_rls/db_settings.ex): `db_host`, `db_port` (a
  string), `db_name`, `db_user`, `db_password`, `region`, `ssl_enforced`, and
  optionally `slot_name`, `publication`, `poll_interval_ms`, `poll_max_record_bytes`.
  tenants.TenantStore explains how they are stored.

Replication slot names are cluster-wide while several tenants' databases may share
one cluster, so each slot this server creates is unique per tenant (slot_names()).

When several processes serve the tenant (a `Cluster`, REDIS_URL), only one of them, its
leader, streams the slots and runs the janitor; the others run the pool, the authorizer
and Postgres Changes' subscriptions, and wait for the leadership (_lead_forever()). Alone,
a process always leads: no lock is taken and nothing waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Protocol

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from . import db, messages
from .authorization import Authorizer
from .broker import Broker
from .config import Settings
from .db_broadcast import DatabaseBroadcast
from .hub import Clock, Hub
from .incidents import Incidents
from .postgres_changes.cdc import PostgresChanges
from .postgres_changes.peers import Peers
from .postgres_changes.settings import MESSAGES_SLOT, CdcSettings
from .tasks import spawn
from .tenants import Tenant

__all__ = ["CDC_RLS", "Cluster", "Leadership", "ServiceHost", "TenantDatabase", "TenantServices", "slot_names"]

log = logging.getLogger(__name__)

CDC_RLS = "postgres_cdc_rls"
# Settings upstream requires of a postgres_cdc_rls extension (db_settings.ex required/0).
_REQUIRED = ("db_host", "db_port", "db_name", "db_user", "db_password")
# PostgreSQL's NAMEDATALEN - 1; slot names are lower-case letters, digits and underscores.
_MAX_SLOT = 63
_SLOT_UNSAFE = re.compile(r"[^a-z0-9_]")
# Replication connections may still hold a slot for a moment after their stream stopped.
_DROP_ATTEMPTS = 50
_LEAD_RETRY = 1.0  # seconds before leading again after leading failed


class Leadership(Protocol):
    """Whether this process streams one tenant's replication slots, among the processes of a
    cluster (cluster/leader.py). acquire() and lost() alternate; close() once at the end."""

    peers: Peers  # Postgres Changes' view of the cluster, for this tenant
    leader: str | None  # the process leading the tenant, as last seen (None: unknown)

    def attach(self, cdc: PostgresChanges | None) -> None:
        """Deliver to `cdc` what the leader publishes for this process (None: nowhere)."""

    async def acquire(self) -> None:
        """Return once this process leads the tenant; until then retry, every second or two."""

    async def lead(self) -> None:
        """Load the cluster's subscriptions into the attached Postgres Changes, before it streams."""

    async def lost(self) -> None:
        """Return when the leadership held is gone (its lock session ended)."""

    async def follow(self) -> None:
        """Forget the other processes' subscriptions, once streaming stopped."""

    async def close(self) -> None:
        """Give the leadership up (when held) and stop listening."""


class Cluster(Protocol):
    """The processes that serve the same tenants (cluster/leader.py)."""

    def leadership(self, tenant_id: str, dsn: str, slots: tuple[str, str]) -> Leadership: ...


class ServiceHost(Protocol):
    """What the services of a tenant need from the process that runs them (app.App)."""

    settings: Settings
    now: Clock
    hub: Hub  # Postgres Changes delivers through it
    incidents: Incidents  # RLS errors of Postgres Changes are recorded there
    broker: Broker  # database broadcast publishes through it
    cluster: Cluster | None  # None: this process alone streams its tenants' slots


@dataclass(frozen=True, slots=True)
class TenantDatabase:
    """Where one tenant's database is and how this server streams it; equal values mean
    that running services need no reload."""

    dsn: str = field(repr=False)  # holds the password
    description: str  # host:port/dbname, for logs and stats
    slot_name: str | None = None  # the extension's own slot name, used as given (plus SLOT_NAME_SUFFIX)
    publication: str | None = None
    poll_interval_ms: int | None = None
    max_record_bytes: int | None = None
    region: str | None = None

    @classmethod
    def of(cls, tenant: Tenant, *, default_dsn: str | None, is_default: bool) -> TenantDatabase | None:
        """The database of `tenant`, or None when its settings name none.

        The default tenant's is `default_dsn` (the server's own) whatever its extension
        says about the connection; its other extension settings still apply."""
        ext = tenant.extension(CDC_RLS) or {}
        tuning: dict[str, Any] = {
            "slot_name": _text(ext.get("slot_name")),
            "publication": _text(ext.get("publication")),
            "poll_interval_ms": _positive(ext.get("poll_interval_ms")),
            "max_record_bytes": _positive(ext.get("poll_max_record_bytes")),
            "region": _text(ext.get("region")),
        }
        if is_default:
            if not default_dsn:
                return None
            params = conninfo_to_dict(default_dsn)
            return cls(default_dsn, _describe(params), **tuning)
        if any(not _text(ext.get(name)) for name in _REQUIRED):
            return None
        params = {
            "host": ext["db_host"],
            "port": str(ext["db_port"]),
            "dbname": ext["db_name"],
            "user": ext["db_user"],
            "password": ext["db_password"],
            # Upstream's ssl_enforced: true refuses a connection without TLS.
            "sslmode": "require" if ext.get("ssl_enforced") in (True, "true") else "prefer",
        }
        return cls(make_conninfo(**params), _describe(params), **tuning)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _describe(params: dict[str, Any]) -> str:
    return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _tenant_slot(base: str, tenant_id: str, suffix: str) -> str:
    """`<base>_<tenant id>[_<suffix>]`, made a valid slot name that no other tenant id gets.

    An id with characters a slot name cannot hold is lower-cased with them replaced and
    gets a digest of the original id, so `a-b` and `a_b` differ; a name past 63
    characters is cut and ends with a digest of the whole name."""
    part = _SLOT_UNSAFE.sub("_", tenant_id.lower())
    if part != tenant_id:
        part = f"{part}_{_digest(tenant_id)}"
    name = f"{base}_{part}" + (f"_{suffix}" if suffix else "")
    if len(name) > _MAX_SLOT:
        name = f"{name[: _MAX_SLOT - 9]}_{_digest(name)}"
    return name


def slot_names(cdc: CdcSettings, tenant_id: str, *, is_default: bool, slot_name: str | None = None) -> tuple[str, str]:
    """The replication slots of a tenant: (Postgres Changes, database broadcast).

    - The default tenant keeps the names this server has always used, so that an existing
      install resumes from its existing slots: REALTIME_SLOT_NAME (or the extension's
      `slot_name`) and `supabase_realtime_messages_replication_slot`, each plus
      `_<SLOT_NAME_SUFFIX>` when set.
    - Any other tenant's names end with its id (_tenant_slot), then the suffix, so tenants
      whose databases share a cluster never share a slot. An explicit `slot_name` in its
      extension is honoured as upstream does (replication_poller.ex: slot_name plus suffix):
      choosing it, the operator chooses its uniqueness.
    """
    suffix = cdc.slot_name_suffix
    tail = f"_{suffix}" if suffix else ""
    if slot_name:
        changes = slot_name + tail
    elif is_default:
        changes = cdc.slot
    else:
        changes = _tenant_slot(cdc.slot_name, tenant_id, suffix)
    broadcast = cdc.messages_slot if is_default else _tenant_slot(MESSAGES_SLOT, tenant_id, suffix)
    return changes, broadcast


class TenantServices:
    """The database services of one tenant. start() once, stop() once; reload() in between.

    The parts are None until start() and after stop(): `pool` (migrations, partitions,
    the janitor, replay), `authorizer` (private channels), `cdc` (Postgres Changes),
    `db_broadcast` (broadcast from the database) and `janitor`; the last three only when
    the server's settings enable them."""

    open_timeout = 30.0  # seconds start() waits for a first connection to the tenant's database

    def __init__(self, host: ServiceHost, tenant: Tenant, database: TenantDatabase, *, is_default: bool) -> None:
        self.host = host
        self.tenant = tenant
        self.database = database
        self.is_default = is_default
        self.pool: AsyncConnectionPool | None = None
        self.authorizer: Authorizer | None = None
        self.cdc: PostgresChanges | None = None
        self.db_broadcast: DatabaseBroadcast | None = None
        self.janitor: messages.Janitor | None = None
        self.migrations: list[str] = []  # applied by the last start()
        self.starts = 0
        self.leadership: Leadership | None = None  # in a cluster only
        self._leading: asyncio.Task[None] | None = None

    @property
    def slots(self) -> tuple[str, str]:
        """(Postgres Changes slot, database broadcast slot) of this tenant."""
        return slot_names(
            self.host.settings.cdc,
            self.tenant.external_id,
            is_default=self.is_default,
            slot_name=self.database.slot_name,
        )

    def _cdc_settings(self) -> CdcSettings:
        """The server's Postgres Changes settings with this tenant's slot and extension settings.

        The slot goes in whole as slot_name (suffix included) so that CdcSettings.slot is it."""
        base = self.host.settings.cdc
        database = self.database
        changes: dict[str, Any] = {"slot_name": self.slots[0], "slot_name_suffix": ""}
        if database.publication:
            changes["publication"] = database.publication
        if database.poll_interval_ms:
            changes["poll_interval_ms"] = database.poll_interval_ms
        if database.max_record_bytes:
            changes["max_record_bytes"] = database.max_record_bytes
        return replace(base, **changes)

    async def start(self) -> None:
        """Migrate the tenant's database and start its services; on failure, stop what
        started and raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.starts += 1
        log.info("tenant %s: database services started on %s", self.tenant.external_id, self.database.description)

    async def _start(self) -> None:
        settings = self.host.settings
        dsn = self.database.dsn
        self.pool = await db.open_pool(dsn, timeout=self.open_timeout)
        async with self.pool.connection() as conn:
            self.migrations = await db.migrate(conn, control=False)
            if self.migrations:
                log.info("tenant %s: applied migrations %s", self.tenant.external_id, ", ".join(self.migrations))
            await messages.ensure_partitions(conn)  # before any authorization probe needs today's
        self.authorizer = Authorizer(dsn, pool_size=settings.authorization_pool_size)
        await self.authorizer.open()
        cluster = self.host.cluster
        leadership = self.leadership = (
            None if cluster is None else cluster.leadership(self.tenant.external_id, dsn, self.slots)
        )
        if settings.janitor:
            self.janitor = messages.Janitor(
                self.pool,
                interval=settings.janitor_interval_ms / 1000,
                retention=timedelta(hours=settings.message_retention_hours),
            )
            if leadership is None:
                self.janitor.start()
        cdc_settings = self._cdc_settings()
        if settings.db_broadcast:
            stream = DatabaseBroadcast(
                self.host.broker,
                self.host.now,
                self.tenant,
                dsn,
                slot=self.slots[1],
                mode=cdc_settings.mode,
                # A new leader resumes where its predecessor confirmed, for channels that stayed.
                resume_unconfirmed=leadership is not None,
            )
            self.db_broadcast = stream
            if leadership is None:
                stream.start()
                # Listen only once the slot exists: a message sent by a client that
                # joined right after start must be in it.
                await asyncio.wait_for(stream.stream.ready.wait(), timeout=30)
            else:
                await stream.stream.ensure_slot()
        if settings.postgres_changes:
            peers = None if leadership is None else leadership.peers
            self.cdc = PostgresChanges(self.tenant, dsn, cdc_settings, self.host.now, self.host.hub, peers)
            self.cdc.dispatcher.incidents = self.host.incidents
            await self.cdc.start(stream=leadership is None)
        if leadership is not None:
            leadership.attach(self.cdc)
            self._leading = spawn(self._lead_forever(leadership), name=f"lead {self.tenant.external_id}")

    @property
    def leading(self) -> bool:
        """Whether this process streams the tenant's slots (always, outside a cluster)."""
        return self.leadership is None or self.leadership.leader == self.leadership.peers.node

    async def _lead_forever(self, leadership: Leadership) -> None:
        """Follow until this process takes the leadership, stream while it holds it; again."""
        name = self.tenant.external_id
        while True:
            await leadership.acquire()
            log.info("tenant %s: this process leads replication", name)
            try:
                await leadership.lead()
                if self.db_broadcast is not None:
                    self.db_broadcast.start()
                if self.cdc is not None:
                    self.cdc.start_streaming()
                if self.janitor is not None:
                    self.janitor.start()
                await leadership.lost()
                log.error("tenant %s: replication leadership lost; streaming stops", name)
            except Exception:
                log.exception("tenant %s: leading replication failed", name)
                await self._stop_leading(leadership)
                # The lock may still be held: acquire() would win at once, so pause first.
                await asyncio.sleep(_LEAD_RETRY)
                continue
            await self._stop_leading(leadership)

    async def _stop_leading(self, leadership: Leadership) -> None:
        if self.janitor is not None:
            await self.janitor.stop()
        if self.cdc is not None:
            await self.cdc.stop_streaming()
        if self.db_broadcast is not None:
            await self.db_broadcast.stop()
        await leadership.follow()

    async def stop(self, *, drop_slots: bool = False) -> None:
        """Stop every service and close the pool; with `drop_slots`, drop the tenant's
        replication slots first (the tenant is gone: its slots would retain WAL forever)."""
        leading, self._leading = self._leading, None
        if leading is not None:
            leading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leading
        leadership, self.leadership = self.leadership, None
        if leadership is not None:
            leadership.attach(None)
            await leadership.close()
        janitor, self.janitor = self.janitor, None
        if janitor is not None:
            await janitor.stop()
        stream, self.db_broadcast = self.db_broadcast, None
        if stream is not None:
            await stream.stop()
        authorizer, self.authorizer = self.authorizer, None
        if authorizer is not None:
            await authorizer.close()
        cdc, self.cdc = self.cdc, None
        if cdc is not None:
            await cdc.stop()
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            if drop_slots:
                await self._drop_slots(pool)
        finally:
            await pool.close()

    async def _drop_slots(self, pool: AsyncConnectionPool) -> None:
        names = list(self.slots)
        async with pool.connection() as conn:
            for _ in range(_DROP_ATTEMPTS):
                cur = await conn.execute(
                    "select slot_name, active from pg_replication_slots where slot_name = any(%s)"
                    " and database = current_database()",
                    (names,),
                )
                rows = await cur.fetchall()
                for name, active in rows:
                    if not active:
                        await conn.execute(
                            "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                            " where slot_name = %s and not active",
                            (name,),
                        )
                if not any(active for _, active in rows):
                    return
                await asyncio.sleep(0.1)
        log.warning("tenant %s: replication slots %s still in use, not dropped", self.tenant.external_id, names)

    async def reload(self, database: TenantDatabase | None = None) -> bool:
        """Restart on `database` (default: the same one) when it differs from the running one,
        or when nothing runs; return whether the services restarted.

        When the database moves elsewhere (another host, port or database name) or the slots
        get other names, the old slots are dropped: nothing would read them again, they would
        retain WAL forever, and on a shared cluster they would hold the names the new ones
        need. New credentials for the same database keep the slots, so nothing is lost."""
        database = database or self.database
        if database == self.database and self.pool is not None:
            return False
        await self.stop(drop_slots=self.moves_to(database))
        self.database = database
        await self.start()
        return True

    def moves_to(self, database: TenantDatabase) -> bool:
        """Whether `database` is another database than the current one (host, port or name),
        or asks for other slot names: then the current slots are of no further use."""
        return (database.description, database.slot_name) != (self.database.description, self.database.slot_name)

    async def replay(self, topic: str, since_ms: int, limit: int) -> list[messages.ReplayRow]:
        """Stored private broadcasts of `topic` (docs/protocol.md §4.6) in this tenant's database."""
        if self.pool is None:
            return []
        async with self.pool.connection() as conn:
            return await messages.replay(conn, topic, since_ms, limit)

    @property
    def replication_connected(self) -> bool:
        """Whether the database broadcast's replication connection is streaming (upstream's
        Connect replication_conn); in a cluster, on a process that does not lead, whether some
        process leads (it streams for all)."""
        if self.leadership is not None and not self.leading:
            return self.db_broadcast is not None and self.leadership.leader is not None
        return self.db_broadcast is not None and self.db_broadcast.stream.connected

    def stats(self) -> dict[str, Any]:
        """What runs and how it fares, for metrics and the admin API; no secrets."""
        changes_slot, broadcast_slot = self.slots
        out: dict[str, Any] = {
            "tenant": self.tenant.external_id,
            "database": self.database.description,
            "region": self.database.region,
            "running": self.pool is not None,
            "starts": self.starts,
            "slots": {"postgres_changes": changes_slot, "db_broadcast": broadcast_slot},
            "leading": self.leading,
        }
        if self.leadership is not None:
            out["leader"] = self.leadership.leader
        if self.cdc is not None:
            out["postgres_changes"] = self.cdc.stats()
        if self.db_broadcast is not None:
            stream = self.db_broadcast
            out["db_broadcast"] = {
                "delivered": stream.delivered,
                "dropped": stream.dropped,
                "connected": stream.stream.connected,
            }
        if self.authorizer is not None:
            out["authorization"] = {"errors": self.authorizer.errors}
        if self.janitor is not None:
            out["janitor"] = {"runs": self.janitor.runs}
        return out
