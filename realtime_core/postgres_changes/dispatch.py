"""From committed transactions to postgres_changes frames on subscribers' sockets.

The ReplicationStream awaits Dispatcher.on_batch() with each batch of
transactions. Work runs in two phases so that every subscriber receives
changes in commit order while the database work is batched:

1. decide (async, batched per table): wait until the batch's transactions
   are visible to new snapshots (the walsender sends a commit before the
   committing backend makes it visible), fill unchanged TOAST values,
   evaluate filters for all changes of a table in one query, read column
   privileges, and check RLS visibility with one query per (role, claims)
   group, the groups spread over the pool's connections;
2. emit (sync, in commit order): build each data object once per shape
   (role columns × select list) and hand the batch's deliveries to
   Hub.deliver(), which builds each frame once per codec and queues it.
When on_batch returns, every frame is queued: the stream may confirm the LSN.

In a cluster (peers.py) phase 2 differs on the leader only: instead of queueing frames it
publishes, per process, each change's data objects with the ids of the subscriptions that
get them (_publish), and returns once that is sent; every process turns what it receives
(the leader: what it keeps for itself) into frames for its own channels with
deliver_published(), as _emit does.

Per-batch work is organised so that it grows with deliveries, not with
changes × subscribers: subscriber lists, their variants and their channel
groupings are computed once per batch and shared by every change they fit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson
import psycopg
from psycopg import sql

from .. import trace
from ..hub import (
    POSTGRES_CHANGES_KIND,
    Audience,
    ChannelState,
    Hub,
    Publication,
    RemoteSubject,
    Subscriber,
    Tracer,
)
from ..rowstats import RowStats
from . import records, rls
from .catalog import Catalog, TableInfo, as_text, select_by_keys
from .filters.columns import load_columns
from .filters.evaluator import FilterEvaluator
from .peers import Peers, PublishedChange, encode_batch
from .pgoutput import UNCHANGED, Delete, Insert, Relation, Update
from .records import RecordShape
from .replication import Transaction
from .subscriptions import Registry, Subscription
from .values import TypeCatalog

if TYPE_CHECKING:
    from ..incidents import Incidents
    from ..tenants import Tenant

__all__ = ["Change", "Connections", "Dispatcher"]

log = logging.getLogger(__name__)

_TYPES = {Insert: "INSERT", Update: "UPDATE", Delete: "DELETE"}
# How a data object over the size limit ends (RecordShape.build): what a trace reports as too large.
_TOO_LARGE_TAIL = b'"errors":' + orjson.dumps([records.ERROR_TOO_LARGE]) + b"}"
# How long a batch waits for its committed transactions to become visible.
VISIBILITY_TIMEOUT = 5.0

Variant = tuple[Any, ...]  # ("shape", role, select) or ("error", text)
Deliveries = list[tuple[Variant, list[Subscription]]]


@dataclass(slots=True)
class Change:
    """One row change and what phase 1 decided about it."""

    relation: Relation
    type: str
    new: list[Any] | None  # text values by column index (None = NULL)
    old: list[Any] | None
    old_indexes: frozenset[int] | None
    commit_time_us: int
    xid: int
    candidates: list[Subscription]
    matched: list[Subscription] | None = None
    deliveries: Deliveries | None = None


class Connections(Protocol):
    """Where the dispatcher takes its connections: a psycopg_pool.AsyncConnectionPool, or the
    visibility check's single connection (visibility.py)."""

    def connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...


class Dispatcher:
    """Decides who sees each change and queues the frames."""

    def __init__(
        self,
        tenant: Tenant,
        pool: Connections,
        registry: Registry,
        hub: Hub,
        *,
        max_record_bytes: int,
        now: Any,
        rls_concurrency: int = 4,
    ) -> None:
        self.tenant = tenant
        self.pool = pool
        self.registry = registry
        self.hub = hub
        self.catalog = Catalog()
        self.types = TypeCatalog()
        self.max_record_bytes = max_record_bytes
        self.now = now
        self.relations: dict[int, Relation] = {}
        self._columns: dict[int, dict[str, Any]] = {}  # relation oid → ColumnInfo by name
        self._evaluators: dict[tuple[int, tuple[Any, ...]], FilterEvaluator] = {}
        self.rls_concurrency = rls_concurrency
        self._group_queries: dict[int, str] = {}  # relation oid → realtime.visible_keys_by_group query
        # Facts read in phase 1 of the current batch, used by phase 2.
        self._tables: dict[int, TableInfo] = {}
        self._selectable: dict[tuple[str, int], frozenset[str]] = {}
        self._rls_failed: set[tuple[int, str]] = set()  # (relation oid, group key) whose policy raised
        # Observability
        self.changes_seen = 0
        self.changes_dispatched = 0
        self.messages_sent = 0
        self.rls_errors = 0
        self.last_error: str | None = None
        self.incidents: Incidents | None = None  # where RLS errors are also recorded for operators
        self.rows = RowStats()  # seen, dispatched, skipped by reason, commit → dispatch latency
        # In a cluster: where the leader publishes (None: this process delivers what it decides).
        self.peers: Peers | None = None
        self.delivered_lsn = 0  # commit LSN of the last published change delivered here
        self.duplicates_dropped = 0  # published changes at or below delivered_lsn (a new leader re-read them)

    # Phase 0: transactions → candidate changes

    async def on_batch(self, transactions: list[Transaction]) -> None:
        changes: list[Change] = []
        # (relation oid, type) → (subscriptions wanting it, the latest start_lsn among them)
        wanted: dict[tuple[int, str], tuple[list[Subscription], int]] = {}
        for txn in transactions:
            assert txn.commit is not None
            commit_time = txn.commit.commit_time_us
            commit_lsn = txn.commit.commit_lsn
            xid = txn.begin.xid
            for msg in txn.messages:
                kind = _TYPES.get(type(msg))
                if kind is None:
                    if isinstance(msg, Relation):
                        self._relation_changed(msg)
                        wanted.clear()
                    continue  # Truncate is never delivered (docs/protocol.md §6.4); Type/Origin/Message carry nothing
                self.changes_seen += 1
                self.rows.seen += 1
                relation = self.relations.get(msg.relation_oid)  # type: ignore[attr-defined]
                if relation is None:
                    self.rows.skip("unknown_relation")
                    continue
                entry = wanted.get((relation.oid, kind))
                if entry is None:
                    subs = [s for s in self.registry.for_relation(relation.namespace, relation.name) if s.wants(kind)]
                    entry = wanted[(relation.oid, kind)] = (subs, max((s.start_lsn for s in subs), default=0))
                candidates, latest_start = entry
                if latest_start > commit_lsn:  # some subscription went live after this commit
                    candidates = [s for s in candidates if s.live_at(commit_lsn)]
                if candidates:
                    changes.append(_change(relation, kind, msg, commit_time, xid, candidates))
                else:
                    self.rows.skip("no_subscribers")
        if not changes:
            return
        try:
            async with self.pool.connection() as conn:
                await self._decide(conn, changes)
        except psycopg.OperationalError as exc:
            # The database is unreachable: raise so the stream reconnects and
            # re-reads from the last confirmed LSN (nothing is lost).
            self.last_error = str(exc)
            raise
        if self.peers is None:
            self._emit(changes)
        else:
            await self._publish(changes, {t.begin.xid: t.commit.commit_lsn for t in transactions if t.commit})

    def _relation_changed(self, relation: Relation) -> None:
        self.relations[relation.oid] = relation
        self._columns.pop(relation.oid, None)
        self._group_queries.pop(relation.oid, None)
        for key in [k for k in self._evaluators if k[0] == relation.oid]:
            del self._evaluators[key]
        self.catalog.forget(relation.oid)

    # Phase 1: decide

    async def _load_types(self, conn: psycopg.AsyncConnection[Any], changes: list[Change]) -> None:
        oids = {c.type_oid for ch in changes for c in ch.relation.columns}
        missing = self.types.missing(oids)
        while missing:  # new rows may name element or base types not known either
            cur = await conn.execute(TypeCatalog.SQL_LOOKUP, (list(missing),))
            rows = await cur.fetchall()
            self.types.add_rows(rows)
            if not rows:
                break
            missing = self.types.missing(oids)

    async def _decide(self, conn: psycopg.AsyncConnection[Any], changes: list[Change]) -> None:
        await self._load_types(conn, changes)
        by_relation: dict[int, list[Change]] = {}
        for ch in changes:
            by_relation.setdefault(ch.relation.oid, []).append(ch)
        tables = self._tables = await self.catalog.tables(conn, list(by_relation))
        self._selectable = {}
        self._rls_failed = set()
        reads_rows = any(
            (tables.get(oid) is not None and tables[oid].rls and any(ch.type != "DELETE" for ch in group))
            or any(ch.new is not None and UNCHANGED in ch.new for ch in group)
            for oid, group in by_relation.items()
        )
        if reads_rows:
            await self._await_visible(conn, {ch.xid for ch in changes})
        for oid, group in by_relation.items():
            table = tables.get(oid)
            if table is None:
                continue  # dropped since: nothing to read or check
            await self._fill_unchanged(conn, table, group)
            await self._filter(conn, group)
            await self._authorize(conn, table, group)

    async def _await_visible(self, conn: psycopg.AsyncConnection[Any], xids: set[int]) -> None:
        """Wait until every transaction in `xids` is visible to a new snapshot.

        A commit record reaches the walsender before the committing backend
        leaves the proc array; a row read in between (RLS, TOAST) is not found
        yet. Without this wait such a change was silently lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VISIBILITY_TIMEOUT
        while True:
            cur = await conn.execute("select pg_current_snapshot()::text")
            row = await cur.fetchone()
            assert row is not None
            if all(_visible_in(row[0], xid) for xid in xids):
                return
            if loop.time() > deadline:
                log.warning(
                    "transactions %s not visible after %.0fs; checking anyway", sorted(xids), VISIBILITY_TIMEOUT
                )
                return
            await asyncio.sleep(0.001)

    async def _fill_unchanged(self, conn: psycopg.AsyncConnection[Any], table: TableInfo, group: list[Change]) -> None:
        """Unchanged TOAST values: from the old tuple when there is one, else from the current row."""
        wanted: list[Change] = []
        for ch in group:
            if ch.new is None or UNCHANGED not in ch.new:
                continue
            for i, value in enumerate(ch.new):
                if value is UNCHANGED and ch.old is not None and ch.old_indexes and i in ch.old_indexes:
                    ch.new[i] = ch.old[i]
            if UNCHANGED in ch.new:
                wanted.append(ch)
        if not wanted or not table.primary_key:
            for ch in wanted:
                ch.new = [None if v is UNCHANGED else v for v in ch.new or ()]
            return
        relation = wanted[0].relation
        names = [c.name for c in relation.columns]
        pk_idx = [names.index(name) for name in table.primary_key]
        out = [as_text(sql.SQL("t.{}").format(sql.Identifier(n))) for n in (*table.primary_key, *names)]
        query = select_by_keys(relation.namespace, relation.name, table, out)
        keys = [tuple(ch.new[i] for i in pk_idx) for ch in wanted if ch.new is not None]
        cur = await conn.execute(query, [[k[j] for k in keys] for j in range(len(pk_idx))])
        current = {tuple(row[: len(pk_idx)]): row[len(pk_idx) :] for row in await cur.fetchall()}
        for ch in wanted:
            assert ch.new is not None
            found = current.get(tuple(ch.new[i] for i in pk_idx))
            ch.new = [(found[i] if found is not None else None) if v is UNCHANGED else v for i, v in enumerate(ch.new)]

    async def _filter(self, conn: psycopg.AsyncConnection[Any], group: list[Change]) -> None:
        """Keep, per change, the candidates whose filters all hold (docs/protocol.md §6.3).

        Changes without filtered candidates keep their candidate list itself
        (matched is candidates), which later phases use to share work."""
        relation = group[0].relation
        conditions: dict[Any, int] = {}
        for candidates in {id(ch.candidates): ch.candidates for ch in group}.values():
            for sub in candidates:
                for cond in sub.params.filters:
                    conditions.setdefault(cond, len(conditions))
        if not conditions:
            for ch in group:
                ch.matched = ch.candidates
            return
        columns = self._columns.get(relation.oid)
        if columns is None:
            columns = self._columns[relation.oid] = await load_columns(conn, relation.oid)
        key = (relation.oid, tuple(conditions))
        evaluator = self._evaluators.get(key)
        if evaluator is None:
            evaluator = self._evaluators[key] = FilterEvaluator(tuple(conditions), columns)
        names = [c.name for c in relation.columns]
        rows = []
        for ch in group:
            # DELETE filters on the old identity columns (docs/protocol.md §6.3).
            values = ch.old if ch.type == "DELETE" else ch.new
            present = ch.old_indexes if ch.type == "DELETE" else None
            rows.append(
                {
                    name: values[i]
                    for i, name in enumerate(names)
                    if values is not None and (present is None or i in present)
                }
            )
        results = await evaluator.evaluate(conn, rows)
        for ch, result in zip(group, results, strict=True):
            ch.matched = [sub for sub in ch.candidates if all(result[conditions[cond]] for cond in sub.params.filters)]

    async def _authorize(self, conn: psycopg.AsyncConnection[Any], table: TableInfo, group: list[Change]) -> None:
        """Give each change its deliveries: (variant, subscriptions), where a variant is
        a record shape or an error (docs/protocol.md §6.4)."""
        relation = group[0].relation
        subs = {id(s): s for lst in {id(ch.matched): ch.matched for ch in group}.values() for s in lst or ()}
        roles = {s.role for s in subs.values()}
        selectable: dict[str, frozenset[str] | None] = {}
        for role in roles:
            selectable[role] = cols = await self.catalog.selectable(conn, role, relation.oid)
            if cols is not None:
                self._selectable[(role, relation.oid)] = cols
        # A subscription's variant is the same for every change of the batch.
        variant_of: dict[int, Variant | None] = {}
        write_variant_of: dict[int, Variant | None] = {}  # INSERT/UPDATE: key and privileges apply
        for key, sub in subs.items():
            cols = selectable.get(sub.role)
            shape: Variant | None = None if cols is None else ("shape", sub.role, sub.params.select)
            variant_of[key] = shape
            if not table.primary_key:
                write_variant_of[key] = ("error", records.ERROR_NO_PRIMARY_KEY)
            elif cols is None or not all(name in cols for name in table.primary_key):
                write_variant_of[key] = ("error", records.ERROR_UNAUTHORIZED)
            else:
                write_variant_of[key] = shape
        names = [c.name for c in relation.columns]
        pk_idx = [names.index(name) for name in table.primary_key if name in names]
        checked = table.rls and bool(table.primary_key)
        visible: dict[str, set[tuple[str, ...]] | None] = {}
        if checked and any(ch.type != "DELETE" for ch in group):
            visible = await self._visible(table, relation, group, write_variant_of, pk_idx)
        shared: dict[tuple[int, bool], Deliveries] = {}
        # RLS: which groups see each key (inverted once), and per candidate list
        # its error subscriptions and its members by group, so that a change
        # costs what it delivers, not one test per subscriber.
        key_groups: dict[tuple[str, ...], list[str]] = {}
        for group_key, found in visible.items():
            for found_key in found or ():
                key_groups.setdefault(found_key, []).append(group_key)
        errors_cache: dict[int, list[Subscription]] = {}
        members_cache: dict[int, dict[str, list[Subscription]]] = {}

        def errors_in(lst: list[Subscription]) -> list[Subscription]:
            found = errors_cache.get(id(lst))
            if found is None:
                found = errors_cache[id(lst)] = [
                    s for s in lst if (v := write_variant_of[id(s)]) is not None and v[0] == "error"
                ]
            return found

        def members_in(lst: list[Subscription]) -> dict[str, list[Subscription]]:
            found = members_cache.get(id(lst))
            if found is None:
                found = members_cache[id(lst)] = {}
                for s in lst:
                    v = write_variant_of[id(s)]
                    if v is not None and v[0] == "shape":
                        found.setdefault(s.group_key, []).append(s)
            return found

        for ch in group:
            matched = ch.matched or []
            writes = ch.type != "DELETE"
            if not (writes and checked):
                cache_key = (id(matched), writes)
                deliveries = shared.get(cache_key)
                if deliveries is None:
                    table_of = write_variant_of if writes else variant_of
                    deliveries = shared[cache_key] = _group_by_variant(matched, table_of)
                ch.deliveries = deliveries
                continue
            assert ch.new is not None
            groups_here = key_groups.get(tuple(ch.new[i] for i in pk_idx), ())
            if matched is ch.candidates:  # no filters: every group member matched
                allowed = errors_in(matched) + [s for gk in groups_here for s in members_in(matched).get(gk, ())]
            else:
                keep = {id(s) for s in matched}
                allowed = [s for s in errors_in(matched) if id(s) in keep] + [
                    s for gk in groups_here for s in members_in(ch.candidates).get(gk, ()) if id(s) in keep
                ]
            ch.deliveries = _group_by_variant(allowed, write_variant_of)

    async def _visible(
        self,
        table: TableInfo,
        relation: Relation,
        group: list[Change],
        write_variant_of: dict[int, Variant | None],
        pk_idx: list[int],
    ) -> dict[str, set[tuple[str, ...]] | None]:
        """Visible keys per (role, claims) group: one query per group for all the batch's keys,
        the groups spread over the pool's connections."""
        keys = {tuple(ch.new[i] for i in pk_idx) for ch in group if ch.type != "DELETE" and ch.new is not None}
        groups: dict[str, Subscription] = {}
        for ch in group:
            for sub in ch.matched or ():
                variant = write_variant_of[id(sub)]
                if variant is not None and variant[0] == "shape":
                    groups.setdefault(sub.group_key, sub)
        visible: dict[str, set[tuple[str, ...]] | None] = {}
        key_list = list(keys)
        items = list(groups.items())
        workers = max(1, min(self.rls_concurrency, len(items)))

        def failed(group_key: str, sub: Subscription, error: object) -> None:
            # A raising policy costs only its own group the change
            # (upstream loses delivery for everyone: supabase/realtime#2093).
            self.rls_errors += 1
            self.last_error = f"RLS policy error on {relation.namespace}.{relation.name} for role {sub.role}: {error}"
            log.warning("RlsPolicyError: %s", self.last_error)
            if self.incidents is not None:
                table_name = f"{relation.namespace}.{relation.name}"
                self.incidents.record(self.tenant.external_id, "RlsPolicyError", self.last_error, table_name)
            visible[group_key] = None
            self._rls_failed.add((relation.oid, group_key))

        if len(table.primary_key) == 1:
            # All groups of a chunk in one statement (sql/0004_rls_batches.sql).
            query = self._group_queries.get(relation.oid)
            if query is None:
                query = self._group_queries[relation.oid] = rls.group_query(
                    relation.namespace, relation.name, table
                ).as_string(None)
            flat = [k[0] for k in key_list]

            async def check_chunk(chunk: list[tuple[str, Subscription]]) -> None:
                async with self.pool.connection() as conn:
                    results = await rls.visible_keys_by_group(
                        conn, query, flat, [(sub.role, sub.claims) for _, sub in chunk]
                    )
                for (group_key, sub), result in zip(chunk, results, strict=True):
                    if isinstance(result, str):
                        failed(group_key, sub, result)
                    else:
                        visible[group_key] = {(k,) for k in result}

            await asyncio.gather(*(check_chunk(items[i::workers]) for i in range(workers)))
            return visible

        async def check(chunk: list[tuple[str, Subscription]]) -> None:
            # Composite keys: one pipelined transaction per group, one
            # connection per worker for all its groups.
            async with self.pool.connection() as conn:
                for group_key, sub in chunk:
                    try:
                        visible[group_key] = await rls.visible_keys(
                            conn,
                            schema=relation.namespace,
                            table=relation.name,
                            info=table,
                            role=sub.role,
                            claims=sub.claims,
                            keys=key_list,
                        )
                    except psycopg.OperationalError:
                        raise
                    except psycopg.Error as exc:
                        failed(group_key, sub, exc)

        await asyncio.gather(*(check(items[i::workers]) for i in range(workers)))
        return visible

    async def explain(self, conn: psycopg.AsyncConnection[Any], change: Change) -> bytes | None:
        """Phase 1 for one change, all on `conn`, then its data object as phase 2 builds it: the
        JSON its (single-variant) subscriptions would receive, or None when none would.

        For the visibility check (postgres_changes/visibility.py): `conn` is in a transaction of
        the caller's (this dispatcher's pool must hand out that same connection), the change's row
        is current, so the wait for its commit to be visible is skipped; nothing is delivered.
        Afterwards `change.matched` holds the subscriptions whose filters hold, and `rls_errors`
        / `last_error` count and describe a policy that raised."""
        await self._load_types(conn, [change])
        self._tables = await self.catalog.tables(conn, [change.relation.oid])
        self._selectable = {}
        table = self._tables.get(change.relation.oid)
        if table is None:
            return None
        await self._filter(conn, [change])
        await self._authorize(conn, table, [change])
        if not change.deliveries:
            return None
        [(variant, _)] = change.deliveries
        return self._data(change, variant, {})

    # Phase 2: emit

    def _emit(self, changes: list[Change]) -> None:
        shapes: dict[tuple[Any, ...], RecordShape] = {}
        # id(subscription list) → its channels grouped by (topic, ids, legacy): each group
        # gets the same frame (shared by the changes that share the list)
        groups_cache: dict[int, list[tuple[str, tuple[int, ...], bool, list[Subscriber]]]] = {}
        batch: list[tuple[list[Subscriber], Publication]] = []
        rls_checked = Audience.POSTGRES_CHANGES
        kind = POSTGRES_CHANGES_KIND
        tracing, going = self._going_out(changes, shapes)
        for ch in going:
            for variant, subs in ch.deliveries or ():
                data = self._data(ch, variant, shapes)
                groups = groups_cache.get(id(subs))
                if groups is None:
                    groups = groups_cache[id(subs)] = _by_frame(subs)
                for topic, ids, legacy, channels in groups:
                    if legacy:
                        publication = Publication(topic, ch.type, data, audience=rls_checked, kind=kind)
                    else:
                        payload = b'{"ids":' + orjson.dumps(ids) + b',"data":' + data + b"}"
                        publication = Publication(topic, "postgres_changes", payload, audience=rls_checked, kind=kind)
                    batch.append((channels, publication))
        if batch:
            self.messages_sent += self.hub.deliver(self.tenant, batch, self.now())
        if tracing is not None:
            tracing.sent()

    def _going_out(
        self, changes: list[Change], shapes: dict[tuple[Any, ...], RecordShape]
    ) -> tuple[Tracer | None, list[Change]]:
        """Phase 2's start, the same for _emit and _publish: the decisions on traced topics
        recorded (the tracer is returned, to be told sent() once the frames are queued; None
        while nothing is traced), the changes with deliveries counted and returned, the others
        counted as skipped with their reason."""
        tracer = self.hub.tracer
        topics = tracer.watching(self.tenant.external_id) if tracer is not None else None
        if tracer is not None and topics:
            self._trace(tracer, topics, changes, shapes)
        else:
            tracer = None
        rows = self.rows
        wall = time.time()
        going = []
        for ch in changes:
            if not ch.deliveries:
                # No filter ran: the table was dropped meanwhile; none matched; or RLS hid it.
                rows.skip("table_gone" if ch.matched is None else "filtered" if not ch.matched else "not_visible")
                continue
            self.changes_dispatched += 1
            rows.dispatched += 1
            rows.dispatched_at(ch.commit_time_us, wall)
            going.append(ch)
        return tracer, going

    def _trace(
        self, tracer: Tracer, topics: set[str], changes: list[Change], shapes: dict[tuple[Any, ...], RecordShape]
    ) -> None:
        """Tell `tracer` what phase 1 decided for the subscriptions of channels on traced `topics`
        (before delivery: a rate-limited delivery closes the receivers). On a cluster's leader,
        another node's channels (cluster/leader.RemoteChannel, which names its node) are
        recorded as that node's; its own events/s limit is applied there, not known here."""
        tenant = self.tenant
        limited = tenant.events.reached(tenant.limits.max_events_per_second, self.now())
        joined = ChannelState.JOINED
        for ch in changes:
            traced = [s for s in ch.candidates if s.channel.sub_topic in topics and s.channel.state is joined]
            if not traced or ch.matched is None:  # matched None: the table was dropped since
                continue
            matched = {id(s) for s in ch.matched}
            for sub in traced:
                node = getattr(sub.channel, "node", None)
                variant = next((v for v, subs in ch.deliveries or () if any(s is sub for s in subs)), None)
                delivered, reason = variant is not None, None
                if variant is None:
                    if id(sub) not in matched:
                        reason = trace.PG_FILTER
                    elif (ch.relation.oid, sub.group_key) in self._rls_failed:
                        reason = trace.RLS_ERROR
                    elif ch.type == "DELETE":  # not checked by RLS: hidden only without SELECT privilege
                        reason = trace.PRIVILEGE
                    else:
                        reason = trace.RLS
                elif limited and node is None:
                    delivered, reason = False, trace.RATE_LIMITED
                elif variant[0] == "error":
                    reason = trace.PRIVILEGE if variant[1] == records.ERROR_UNAUTHORIZED else None
                elif self._data(ch, variant, shapes).endswith(_TOO_LARGE_TAIL):
                    reason = trace.PAYLOAD_TOO_LARGE
                if node is None:
                    tracer.decided(tenant.external_id, sub.channel, POSTGRES_CHANGES_KIND, ch.type, delivered, reason)
                else:
                    remote = cast(RemoteSubject, sub.channel)
                    tracer.decided_remote(tenant.external_id, remote, POSTGRES_CHANGES_KIND, ch.type, delivered, reason)

    async def _publish(self, changes: list[Change], commit_lsns: dict[int, int]) -> None:
        """Phase 2 of a cluster's leader: each process gets, per change it has subscribers of,
        the commit LSN, the type and each data object with the ids of its subscriptions that
        get it (peers.encode_batch)."""
        assert self.peers is not None
        local = self.peers.node
        shapes: dict[tuple[Any, ...], RecordShape] = {}
        # id(subscription list) → its subscription ids by process, shared by the changes that share the list
        split_cache: dict[int, dict[str, list[str]]] = {}
        by_node: dict[str, list[PublishedChange]] = {}
        tracing, going = self._going_out(changes, shapes)
        for ch in going:
            per_node: dict[str, list[tuple[bytes, list[str]]]] = {}
            for variant, subs in ch.deliveries or ():
                data = self._data(ch, variant, shapes)
                split = split_cache.get(id(subs))
                if split is None:
                    split = split_cache[id(subs)] = {}
                    for sub in subs:
                        # Remote channels (cluster/leader.py) name their process; local ones have none.
                        node = getattr(sub.channel, "node", local)
                        split.setdefault(node, []).append(str(sub.subscription_id))
                for node, ids in split.items():
                    per_node.setdefault(node, []).append((data, ids))
            lsn = commit_lsns[ch.xid]
            for node, variants in per_node.items():
                by_node.setdefault(node, []).append((lsn, ch.type, variants))
        own = by_node.pop(local, None)
        if own is not None:
            self.deliver_published(own)  # this process's channels need no round trip through Redis
        if tracing is not None:
            tracing.sent()
        if by_node:
            tenant = self.tenant.external_id
            await self.peers.publish({node: encode_batch(tenant, found) for node, found in by_node.items()})

    def deliver_published(self, changes: list[PublishedChange]) -> None:
        """Deliver what a cluster's leader published for this process's subscriptions, as _emit
        does: one frame per (topic, ids, legacy) group of joined channels.

        Changes at or below the last commit LSN delivered are dropped: a new leader re-reads
        from the slot's confirmed LSN what its predecessor may already have published."""
        last = newest = self.delivered_lsn
        registry = self.registry
        rls_checked = Audience.POSTGRES_CHANGES
        kind = POSTGRES_CHANGES_KIND
        batch: list[tuple[list[Subscriber], Publication]] = []
        for lsn, change_type, variants in changes:
            if lsn <= last:
                self.duplicates_dropped += 1
                continue
            newest = max(newest, lsn)
            for data, ids in variants:
                subs = [sub for sub_id in ids if (sub := registry.get(sub_id)) is not None]
                for topic, key_ids, legacy, channels in _by_frame(subs):
                    if legacy:
                        publication = Publication(topic, change_type, data, audience=rls_checked, kind=kind)
                    else:
                        payload = b'{"ids":' + orjson.dumps(key_ids) + b',"data":' + data + b"}"
                        publication = Publication(topic, "postgres_changes", payload, audience=rls_checked, kind=kind)
                    batch.append((channels, publication))
        self.delivered_lsn = newest
        if batch:
            self.messages_sent += self.hub.deliver(self.tenant, batch, self.now())

    def _data(self, ch: Change, variant: Variant, shapes: dict[tuple[Any, ...], RecordShape]) -> bytes:
        relation = ch.relation
        if variant[0] == "error":
            return records.error_data(relation.namespace, relation.name, ch.type, variant[1])
        _, role, select = variant
        shape_key = (relation.oid, role, select)
        shape = shapes.get(shape_key)
        if shape is None:
            shape = shapes[shape_key] = self._shape(relation, role, select)
        # With RLS enabled a DELETE carries only the primary key (docs/protocol.md §6.5).
        if self._tables[relation.oid].rls and ch.type == "DELETE" and ch.old_indexes is not None:
            old_indexes: frozenset[int] | None = ch.old_indexes & shape.key_indexes
        else:
            old_indexes = ch.old_indexes
        return shape.build(ch.type, ch.commit_time_us, ch.new, ch.old, old_indexes)

    def _shape(self, relation: Relation, role: str, select: Sequence[str] | None) -> RecordShape:
        cached = self._selectable.get((role, relation.oid), frozenset())
        pk = self._tables[relation.oid].primary_key
        columns = []
        key_indexes = set()
        for i, col in enumerate(relation.columns):
            if col.name in pk:
                key_indexes.add(i)
            if col.name not in cached:
                continue
            if select is not None and col.name not in select and col.name not in pk:
                continue
            pg_type = self.types.get(col.type_oid)
            typname = pg_type.name if pg_type is not None else str(col.type_oid)
            columns.append((i, col.name, typname, self.types.converter(col.type_oid)))
        return RecordShape(relation.namespace, relation.name, columns, frozenset(key_indexes), self.max_record_bytes)


def _visible_in(snapshot: str, xid: int) -> bool:
    """Whether the 32-bit `xid` is visible to `snapshot` (pg_current_snapshot()'s text, xid8s).

    xmax is the first xid not yet completed; the newest transaction, still
    finishing, is at or past it without being listed in xip. So an xid at or
    ahead of xmax (modulo 2^32) is not visible yet; one behind it is, unless
    listed as in progress."""
    xmin_text, xmax_text, xip_text = snapshot.split(":")
    xmin, xmax = int(xmin_text), int(xmax_text)
    ahead = (xid - xmax) & 0xFFFFFFFF
    if ahead < 1 << 31:
        return False
    full = xmax - ((1 << 32) - ahead)  # the xid8, behind xmax
    if full < xmin:
        return True
    return str(full) not in xip_text.split(",")


def _group_by_variant(subs: list[Subscription], variant_of: dict[int, Variant | None]) -> Deliveries:
    grouped: dict[Variant, list[Subscription]] = {}
    for sub in subs:
        variant = variant_of[id(sub)]
        if variant is not None:
            grouped.setdefault(variant, []).append(sub)
    return list(grouped.items())


def _by_frame(subs: list[Subscription]) -> list[tuple[str, tuple[int, ...], bool, list[Subscriber]]]:
    """The joined channels of `subs` grouped by what their frame holds: topic, the sorted ids
    of their subscriptions among `subs`, and whether they joined the legacy way.

    A channel may have closed while the batch waited for the database; it is left out here
    (Hub.deliver takes joined subscribers only)."""
    joined = ChannelState.JOINED
    ids: dict[Subscriber, set[int]] = {}
    legacy: dict[Subscriber, bool] = {}
    for sub in subs:
        if sub.channel.state is not joined:
            continue
        ids.setdefault(sub.channel, set()).add(sub.id)
        legacy[sub.channel] = sub.legacy
    groups: dict[tuple[str, tuple[int, ...], bool], list[Subscriber]] = {}
    for channel, found in ids.items():
        groups.setdefault((channel.topic, tuple(sorted(found)), legacy[channel]), []).append(channel)
    return [(topic, key_ids, is_legacy, channels) for (topic, key_ids, is_legacy), channels in groups.items()]


def _change(
    relation: Relation, kind: str, msg: Any, commit_time_us: int, xid: int, candidates: list[Subscription]
) -> Change:
    new = list(msg.new) if kind != "DELETE" else None
    old = list(msg.old) if getattr(msg, "old", None) is not None else None
    old_indexes: frozenset[int] | None = None
    if old is not None:
        if msg.old_kind == "K":
            old_indexes = frozenset(i for i, col in enumerate(relation.columns) if col.is_key)
        else:
            old_indexes = frozenset(range(len(relation.columns)))
    return Change(relation, kind, new, old, old_indexes, commit_time_us, xid, candidates)
