"""Postgres Changes for one tenant database: stream, subscriptions, dispatch, slot health.

tenant_services.TenantServices starts one PostgresChanges per tenant database. Channels
call subscribe() after their join reply (docs/protocol.md §6.2), unsubscribe() when they
close and refresh() after an access_token update. The `system` message
`Subscribed to PostgreSQL` is pushed only once the subscription is live: its
rows are written, it is in the registry, and the durable slot exists, so every
change committed after that message reaches the channel.

In a cluster (peers.py) only the leader streams (start_streaming() / stop_streaming(),
driven by tenant_services): every process registers its subscriptions with the leader
before it says `Subscribed to PostgreSQL`, and delivers what the leader publishes to it
(receive())."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..hub import ChannelState, Clock, Hub, Subscriber
from ..tasks import spawn
from .dispatch import Dispatcher
from .filters.columns import load_columns
from .filters.errors import FilterError, SubscriptionParamsError
from .filters.parsing import SubscriptionParams, parse_params
from .filters.validation import validate_subscription
from .peers import Peers, PublishedChange, subscription_record
from .pgoutput import parse_lsn
from .replication import SESSION_OPTIONS, ReplicationStream
from .settings import CdcSettings
from .subscriptions import Registry, Subscription, describe_params

if TYPE_CHECKING:
    from ..tenants import Tenant

__all__ = ["CdcSettings", "PostgresChanges"]

log = logging.getLogger(__name__)

SUBSCRIBED = "Subscribed to PostgreSQL"
# PostgreSQL's answer to a text parameter holding NUL, which upstream reports
# for such params (psycopg refuses to send them at all).
_NUL_TEXT = 'invalid byte sequence for encoding "UTF8": 0x00'
_DELETE_CHUNK = 1000  # docs/protocol.md §3.7: subscriptions are deleted in batches of up to 1000 rows


_TABLES = """
select c.oid, pt.schemaname::text, pt.tablename::text
from pg_publication_tables pt
join pg_namespace n on n.nspname = pt.schemaname
join pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
where pt.pubname = %s and (%s = '*' or pt.schemaname = %s) and (%s = '*' or pt.tablename = %s)
order by 2, 3
"""

_INSERT = """
insert into realtime.subscription (subscription_id, entity, filters, claims, action_filter, selected_columns)
select %s, %s::oid::regclass,
       (select coalesce(array_agg(row(f->>'column_name', (f->>'op')::realtime.equality_op, f->>'value',
                                      (f->>'negate')::boolean)::realtime.user_defined_filter), '{}')
        from jsonb_array_elements(%s::jsonb) f),
       %s::jsonb, %s, %s
on conflict (subscription_id, entity, filters, action_filter, coalesce(selected_columns, '{}'))
do update set claims = excluded.claims, created_at = timezone('utc', now())
"""

_SLOT_HEALTH = """
select active, wal_status, safe_wal_size,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
       confirmed_flush_lsn::text, restart_lsn::text
from pg_replication_slots where slot_name = %s
"""


class _SubscribeError(Exception):
    """A subscription that cannot be created as asked: reported, not retried."""


class PostgresChanges:
    """Streams one database and delivers its changes to subscribed channels."""

    def __init__(
        self, tenant: Tenant, dsn: str, settings: CdcSettings, now: Clock, hub: Hub, peers: Peers | None = None
    ) -> None:
        self.tenant = tenant
        self.peers = peers
        self.dsn = dsn
        self.settings = settings
        self.registry = Registry()
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=settings.pool_size,
            open=False,
            kwargs={"autocommit": True, "options": SESSION_OPTIONS, "application_name": "realtime_rls"},
            name="realtime_rls",
        )
        self.dispatcher = Dispatcher(
            tenant,
            self.pool,
            self.registry,
            hub,
            max_record_bytes=settings.max_record_bytes,
            now=now,
            # The batch itself holds one connection while the RLS workers run.
            rls_concurrency=max(1, settings.pool_size - 1),
        )
        self.stream = ReplicationStream(
            dsn,
            slot=settings.slot,
            publication=settings.publication,
            on_batch=self.dispatcher.on_batch,
            mode=settings.mode,
            poll_interval=settings.poll_interval_ms / 1000,
        )
        self.dispatcher.peers = peers
        self.slot_health: dict[str, Any] = {}
        self.lag_alert = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_deletes: list[uuid.UUID] = []
        self._delete_scheduled = False
        self._health_task: asyncio.Task[None] | None = None

    async def start(self, *, stream: bool = True) -> None:
        """Open the pool and start streaming; without `stream` (a cluster's follower), only make
        sure the slot exists, so that subscriptions made now see every later change."""
        await self.pool.open(wait=True, timeout=30)
        if self.peers is None:
            async with self.pool.connection() as conn:
                # Rows of a previous run belong to sockets that are gone; rejoining
                # clients recreate theirs (docs/protocol.md §6.2). In a cluster the
                # other processes' rows are live.
                await conn.execute("delete from realtime.subscription")
        if stream:
            self.stream.start()
        else:
            await self.stream.ensure_slot()
            self.stream.ready.set()
        self._health_task = spawn(self._watch_slot(), name=f"slot health {self.settings.slot}")

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.stream.stop()
        await self._flush_deletes()
        await self.pool.close()

    def start_streaming(self) -> None:
        """This process became the cluster's leader for the tenant: stream the slot from its
        confirmed LSN."""
        self.stream.start()

    async def stop_streaming(self) -> None:
        await self.stream.stop()

    def receive(self, changes: list[PublishedChange]) -> None:
        """Deliver changes the cluster's leader published for this process's subscriptions."""
        self.dispatcher.deliver_published(changes)

    def _spawn(self, coro: Any, on_error: Any = None) -> None:
        spawn(coro, on_error=on_error, group=self._tasks)

    # Channel API

    def subscribe(self, channel: Subscriber, entries: list[tuple[int, dict[str, Any]]], legacy: bool) -> None:
        """Start creating `channel`'s subscriptions; the outcome arrives as a system message,
        an unexpected failure too (as upstream's rescue in realtime_channel.ex does)."""

        def failed(exc: BaseException) -> None:
            _system(channel, "error", f"UnableToSubscribeToPostgres: {type(exc).__name__}: {exc}")

        self._spawn(self._subscribe(channel, entries, legacy), failed)

    def unsubscribe(self, channel: Subscriber) -> None:
        gone = self.registry.remove_channel(channel)
        if gone:
            if self.peers is not None:
                self._spawn(self.peers.unregister([str(sub.subscription_id) for sub in gone]))
            self.delete_rows([sub.subscription_id for sub in gone])

    def delete_rows(self, subscription_ids: list[uuid.UUID]) -> None:
        """Delete these subscriptions' rows from realtime.subscription, soon and in batches (a
        cluster's leader also deletes those of processes that are gone)."""
        self._pending_deletes.extend(subscription_ids)
        if not self._delete_scheduled:
            self._delete_scheduled = True
            self._spawn(self._flush_deletes())

    def refresh(self, channel: Subscriber) -> None:
        """Re-write the rows of `channel` with its new claims (dispatch reads claims live)."""
        subs = self.registry.for_channel(channel)
        if subs:
            self._spawn(self._rewrite_claims(subs))
            if self.peers is not None and subs[0].raw_params is not None:
                self._spawn(self.peers.register(self._records(subs)))

    # Subscribing (docs/protocol.md §6.2)

    async def _subscribe(self, channel: Subscriber, entries: list[tuple[int, dict[str, Any]]], legacy: bool) -> None:
        try:
            parsed = [(cid, parse_params(params)) for cid, params in entries]
        except SubscriptionParamsError as exc:
            _system(channel, "error", str(exc))
            return
        attempt = 0
        while channel.state is ChannelState.JOINED:
            try:
                subs = await self._create(channel, parsed, legacy)
            except _SubscribeError as exc:
                _system(channel, "error", str(exc))
                return
            except (psycopg.OperationalError, PoolTimeout) as exc:
                # Not the client's fault: retry after a random 5–10 s (docs/protocol.md §3.6).
                attempt += 1
                delay = random.uniform(5, 10) if attempt > 1 else random.uniform(0.5, 1.0)
                log.warning("UnableToSubscribeToPostgres %s (%s); retrying in %.1fs", channel.topic, exc, delay)
                await asyncio.sleep(delay)
                continue
            if channel.state is not ChannelState.JOINED:
                self._pending_deletes.extend(s.subscription_id for s in subs)
                await self._flush_deletes()
                return
            self.registry.add(subs)
            if self.peers is not None:
                for sub, (_, params) in zip(subs, entries, strict=True):
                    sub.raw_params = params
                # The leader must know them before the client hears they are live.
                await self.peers.register(self._records(subs))
            _system(channel, "ok", SUBSCRIBED)
            return

    async def _create(
        self, channel: Subscriber, parsed: list[tuple[int, SubscriptionParams]], legacy: bool
    ) -> list[Subscription]:
        await self.stream.ready.wait()
        role = channel.claims.get("role")
        claims_json = orjson.dumps(channel.claims).decode()
        subs: list[Subscription] = []
        async with self.pool.connection() as conn:
            for cid, params in parsed:
                described = describe_params(params)
                if _has_nul(params):
                    raise _SubscribeError(_exception_text(described, _NUL_TEXT))
                try:
                    cur = await conn.execute(
                        _TABLES,
                        (self.settings.publication, params.schema, params.schema, params.table, params.table),
                    )
                    tables = await cur.fetchall()
                except psycopg.errors.DatabaseError as exc:
                    if isinstance(exc, psycopg.OperationalError):
                        raise
                    raise _SubscribeError(_exception_text(described, _error_text(exc))) from None
                if not tables:
                    raise _SubscribeError(
                        "Unable to subscribe to changes with given parameters. Please check Realtime is enabled "
                        f"for the given connect parameters: {described}"
                    )
                subscription_id = uuid.uuid1()
                try:
                    async with conn.transaction():
                        for oid, _, _ in tables:
                            if params.filters or params.select:
                                columns = await load_columns(conn, oid)
                                selectable = await self.dispatcher.catalog.selectable(conn, str(role or ""), oid)
                                await validate_subscription(
                                    conn, params.filters, params.select, columns, set(selectable or ())
                                )
                            filters = [
                                {
                                    "column_name": c.column,
                                    "op": c.op,
                                    "value": c.stored_value,
                                    "negate": c.negate,
                                }
                                for c in params.filters
                            ]
                            await conn.execute(
                                _INSERT,
                                (
                                    subscription_id,
                                    oid,
                                    orjson.dumps(filters).decode(),
                                    claims_json,
                                    params.event,
                                    list(params.select) if params.select else None,
                                ),
                            )
                except (FilterError, psycopg.errors.DatabaseError) as exc:
                    if isinstance(exc, psycopg.OperationalError):
                        raise
                    raise _SubscribeError(_exception_text(described, _error_text(exc))) from None
                subs.append(Subscription(channel, cid, subscription_id, params, legacy))
            cur = await conn.execute("select pg_current_wal_lsn()::text")
            row = await cur.fetchone()
        start_lsn = parse_lsn(row[0]) if row is not None else 0
        for sub in subs:
            sub.start_lsn = start_lsn
        return subs

    def shared_records(self) -> dict[str, bytes]:
        """This process's subscriptions as the cluster's leader rebuilds them (to share them again
        after the cluster may have dropped them)."""
        records: dict[str, bytes] = {}
        for subs in self.registry.by_channel():
            if subs[0].raw_params is not None:  # not a leader's stand-in for another process's
                records.update(self._records(subs))
        return records

    def _records(self, subs: list[Subscription]) -> dict[str, bytes]:
        """The subscriptions of one channel as the cluster's leader rebuilds them."""
        assert self.peers is not None
        channel = subs[0].channel
        key = str(subs[0].subscription_id)  # names the channel among the leader's remote ones
        # The connection's id, for the leader's delivery traces (a hub.Subscriber need not have one).
        connection = getattr(getattr(channel, "socket", None), "id", None)
        return {
            str(sub.subscription_id): subscription_record(
                self.peers.node,
                key,
                channel.topic,
                sub.id,
                sub.raw_params or {},
                sub.legacy,
                channel.claims,
                sub.start_lsn,
                connection,
            )
            for sub in subs
        }

    async def _rewrite_claims(self, subs: list[Subscription]) -> None:
        claims = orjson.dumps(subs[0].channel.claims).decode()
        with contextlib.suppress(psycopg.Error):
            async with self.pool.connection() as conn:
                await conn.execute(
                    "update realtime.subscription set claims = %s::jsonb where subscription_id = any(%s)",
                    (claims, [s.subscription_id for s in subs]),
                )

    async def _flush_deletes(self) -> None:
        await asyncio.sleep(0.05)  # gather the closes of one burst into few statements
        self._delete_scheduled = False
        ids, self._pending_deletes = self._pending_deletes, []
        if not ids:
            return
        try:
            async with self.pool.connection() as conn:
                for i in range(0, len(ids), _DELETE_CHUNK):
                    await conn.execute(
                        "delete from realtime.subscription where subscription_id = any(%s)",
                        (ids[i : i + _DELETE_CHUNK],),
                    )
        except psycopg.Error as exc:
            log.warning("could not delete %d subscription rows: %s", len(ids), exc)

    # Slot safety

    async def read_slot_health(self) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_SLOT_HEALTH, (self.settings.slot,))
            row = await cur.fetchone()
        if row is None:
            return {"slot": self.settings.slot, "exists": False}
        active, wal_status, safe_wal_size, lag, retained, confirmed, restart = row
        return {
            "slot": self.settings.slot,
            "exists": True,
            "active": active,
            "wal_status": wal_status,
            "safe_wal_size": safe_wal_size,
            "lag_bytes": lag,
            "retained_wal_bytes": retained,
            "confirmed_flush_lsn": confirmed,
            "restart_lsn": restart,
            "streaming": self.stream.connected,
            "mode": self.settings.mode,
            "last_error": self.stream.last_error,
        }

    async def _watch_slot(self) -> None:
        # Read once the slot exists: a first read racing its creation would
        # report no slot until health_interval later (and a slot of the same
        # name in another database is not ours to report).
        await self.stream.ready.wait()
        while True:
            try:
                health = self.slot_health = await self.read_slot_health()
                retained = health.get("retained_wal_bytes") or 0
                if retained > self.settings.slot_lag_alert_bytes:
                    if not self.lag_alert:
                        log.error(
                            "ReplicationSlotLagTooHigh: slot %s retains %d bytes of WAL (threshold %d, policy %s)",
                            self.settings.slot,
                            retained,
                            self.settings.slot_lag_alert_bytes,
                            self.settings.slot_lag_policy,
                        )
                    self.lag_alert = True
                    if self.settings.slot_lag_policy == "drop":
                        await self._recreate_slot()
                else:
                    self.lag_alert = False
            except psycopg.Error as exc:
                self.slot_health = {**self.slot_health, "error": str(exc)}
            except asyncio.CancelledError:
                raise
            await asyncio.sleep(self.settings.health_interval)

    async def _recreate_slot(self) -> None:
        await self.stream.stop()
        async with self.pool.connection() as conn:
            await conn.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = %s",
                (self.settings.slot,),
            )
        log.error("dropped replication slot %s (policy drop); changes it retained are lost", self.settings.slot)
        self.stream.confirmed_lsn = 0
        self.stream.start()

    def stats(self) -> dict[str, Any]:
        d = self.dispatcher
        return {
            "subscriptions": len(self.registry),
            "subscribed_channels": self.registry.channels(),
            "changes_seen": d.changes_seen,
            "changes_dispatched": d.changes_dispatched,
            "messages_sent": d.messages_sent,
            "rls_errors": d.rls_errors,
            "streaming": self.stream.connected,
            "confirmed_lsn": self.stream.confirmed_lsn,
            "received_lsn": self.stream.received_lsn,
            "reconnects": self.stream.reconnects,
            "duplicates_dropped": d.duplicates_dropped,
        }


def _has_nul(params: SubscriptionParams) -> bool:
    """Whether any text of `params` sent to PostgreSQL holds a NUL character."""
    texts = [params.schema, params.table, *(params.select or ())]
    for c in params.filters:
        texts += (c.column, c.stored_value)
    return any("\x00" in text for text in texts)


def _error_text(exc: Exception) -> str:
    """The primary message of a PostgreSQL error; the text of anything else."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    return str(exc)


def _exception_text(described: str, error: str) -> str:
    """Upstream's text for params whose insert failed (subscriptions.ex create/5)."""
    return (
        "Unable to subscribe to changes with given parameters. An exception happened so please "
        f"check your connect parameters: {described}. Exception: {error}"
    )


def _system(channel: Subscriber, status: str, message: str) -> None:
    if channel.state is ChannelState.JOINED:
        channel.push(
            "system",
            {
                "extension": "postgres_changes",
                "status": status,
                "message": message,
                "channel": channel.sub_topic,
            },
        )
