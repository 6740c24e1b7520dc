"""From committed transactions to postgres_changes frames on subscribers' sockets.

The ReplicationStream awaits Dispatcher.on_batch() with each batch of
transactions. Work runs in two phases so that every subscriber receives
changes in commit order while the database work is batched:

1. decide (async, batched per table): fill unchanged TOAST values, evaluate
   filters for all changes of a table in one query, read column privileges,
   and check RLS visibility with one query per (role, claims) group;
2. emit (sync, in commit order): build each data object once per shape
   (role columns × select list) and queue one frame per channel.
When on_batch returns, every frame is queued: the stream may confirm the LSN."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ..router import TOO_MANY_MESSAGES
from . import records, rls
from .catalog import Catalog, TableInfo
from .filters import FilterEvaluator, load_columns
from .pgoutput import UNCHANGED, Delete, Insert, Relation, Update
from .records import RecordShape
from .replication import Transaction
from .subscriptions import Registry, Subscription
from .values import TypeCatalog

if TYPE_CHECKING:
    from ..tenants import Tenant

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

_TYPES = {Insert: "INSERT", Update: "UPDATE", Delete: "DELETE"}


@dataclass(slots=True)
class _Change:
    """One row change and what phase 1 decided about it."""

    relation: Relation
    type: str
    new: list[Any] | None  # text values by column index (None = NULL)
    old: list[Any] | None
    old_indexes: frozenset[int] | None
    commit_time_us: int
    candidates: list[Subscription]
    matched: list[Subscription] = field(default_factory=list)
    # variant key → subscriptions that get the change in that variant
    variants: dict[tuple[Any, ...], list[Subscription]] = field(default_factory=dict)


class Dispatcher:
    """Decides who sees each change and queues the frames."""

    def __init__(
        self,
        tenant: Tenant,
        pool: AsyncConnectionPool,
        registry: Registry,
        *,
        max_record_bytes: int,
        now: Any,
        rls_concurrency: int = 4,
    ) -> None:
        self.tenant = tenant
        self.pool = pool
        self.registry = registry
        self.catalog = Catalog()
        self.types = TypeCatalog()
        self.max_record_bytes = max_record_bytes
        self.now = now
        self.relations: dict[int, Relation] = {}
        self._columns: dict[int, dict[str, Any]] = {}  # relation oid → filters.ColumnInfo by name
        self._evaluators: dict[tuple[int, tuple[Any, ...]], FilterEvaluator] = {}
        self._rls_slots = asyncio.Semaphore(rls_concurrency)
        # Facts read in phase 1 of the current batch, used by phase 2.
        self._tables: dict[int, TableInfo] = {}
        self._selectable: dict[tuple[str, int], frozenset[str]] = {}
        # Observability
        self.changes_seen = 0
        self.changes_dispatched = 0
        self.messages_sent = 0
        self.rls_errors = 0
        self.last_error: str | None = None

    # Phase 0: transactions → candidate changes

    async def on_batch(self, transactions: list[Transaction]) -> None:
        changes: list[_Change] = []
        for txn in transactions:
            assert txn.commit is not None
            commit_time = txn.commit.commit_time_us
            commit_lsn = txn.commit.commit_lsn
            for msg in txn.messages:
                kind = _TYPES.get(type(msg))
                if kind is None:
                    if isinstance(msg, Relation):
                        self._relation_changed(msg)
                    continue  # Truncate is never delivered (spec §6.4); Type/Origin/Message carry nothing
                self.changes_seen += 1
                relation = self.relations.get(msg.relation_oid)  # type: ignore[attr-defined]
                if relation is None:
                    continue
                candidates = self.registry.for_relation(relation.namespace, relation.name)
                if not candidates:
                    continue  # nobody listens: consumed and dropped (documented)
                candidates = [s for s in candidates if s.wants(kind, commit_lsn)]
                if candidates:
                    changes.append(_change(relation, kind, msg, commit_time, candidates))
        if not changes:
            return
        try:
            async with self.pool.connection() as conn:
                await self._decide(conn, changes)
        except psycopg.Error as exc:
            # The database is unreachable: raise so the stream reconnects and
            # re-reads from the last confirmed LSN (nothing is lost).
            self.last_error = str(exc)
            raise
        self._emit(changes)

    def _relation_changed(self, relation: Relation) -> None:
        self.relations[relation.oid] = relation
        self._columns.pop(relation.oid, None)
        for key in [k for k in self._evaluators if k[0] == relation.oid]:
            del self._evaluators[key]
        self.catalog.forget(relation.oid)

    # Phase 1: decide

    async def _decide(self, conn: psycopg.AsyncConnection[Any], changes: list[_Change]) -> None:
        oids = {c.type_oid for ch in changes for c in ch.relation.columns}
        missing = self.types.missing(oids)
        while missing:  # new rows may name element or base types not known either
            cur = await conn.execute(TypeCatalog.SQL_LOOKUP, (list(missing),))
            rows = await cur.fetchall()
            self.types.add_rows(rows)
            if not rows:
                break
            missing = self.types.missing(oids)
        by_relation: dict[int, list[_Change]] = {}
        for ch in changes:
            by_relation.setdefault(ch.relation.oid, []).append(ch)
        tables = self._tables = await self.catalog.tables(conn, list(by_relation))
        self._selectable = {}
        for oid, group in by_relation.items():
            table = tables.get(oid)
            if table is None:
                continue  # dropped since: nothing to read or check
            await self._fill_unchanged(conn, table, group)
            await self._filter(conn, group)
            await self._authorize(conn, table, group)

    async def _fill_unchanged(self, conn: psycopg.AsyncConnection[Any], table: TableInfo, group: list[_Change]) -> None:
        """Unchanged TOAST values: from the old tuple when there is one, else from the current row."""
        wanted: list[_Change] = []
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
        index = {name: i for i, name in enumerate(names)}
        pk_idx = [index[name] for name in table.primary_key]
        keys = [tuple(ch.new[i] for i in pk_idx) for ch in wanted if ch.new is not None]
        arrays = [[k[j] for k in keys] for j in range(len(pk_idx))]
        aliases = [sql.Identifier(f"k{j}") for j in range(len(pk_idx))]
        pk_cols = [sql.Identifier(name) for name in table.primary_key]
        query = sql.SQL("select {keys}, {cols} from {table} t join unnest({arrays}) as k({aliases}) on {join}").format(
            keys=sql.SQL(", ").join(sql.SQL("format('%%s', t.{})").format(c) for c in pk_cols),
            # format('%s', v) is the type's output function, as in the WAL
            # (v::text differs for bool and inet); it turns NULL into ''.
            cols=sql.SQL(", ").join(
                sql.SQL("case when t.{c} is null then null else format('%%s', t.{c}) end").format(c=sql.Identifier(n))
                for n in names
            ),
            table=sql.Identifier(relation.namespace, relation.name),
            arrays=sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in pk_cols),
            aliases=sql.SQL(", ").join(aliases),
            join=sql.SQL(" and ").join(
                sql.SQL("t.{c} = k.{a}::{t}").format(c=c, a=a, t=sql.Identifier(*tn))
                for c, a, tn in zip(pk_cols, aliases, table.key_types, strict=True)
            ),
        )
        cur = await conn.execute(query, arrays)
        current = {tuple(row[: len(pk_idx)]): row[len(pk_idx) :] for row in await cur.fetchall()}
        for ch in wanted:
            assert ch.new is not None
            row = current.get(tuple(ch.new[i] for i in pk_idx))
            ch.new = [(row[i] if row is not None else None) if v is UNCHANGED else v for i, v in enumerate(ch.new)]

    async def _filter(self, conn: psycopg.AsyncConnection[Any], group: list[_Change]) -> None:
        """Keep, per change, the candidates whose filters all hold (spec §6.3)."""
        relation = group[0].relation
        conditions: dict[Any, int] = {}
        for ch in group:
            for sub in ch.candidates:
                for cond in sub.params.filters:
                    conditions.setdefault(cond, len(conditions))
        if not conditions:
            for ch in group:
                ch.matched = list(ch.candidates)
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
            # DELETE filters on the old identity columns (spec §6.3).
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

    async def _authorize(self, conn: psycopg.AsyncConnection[Any], table: TableInfo, group: list[_Change]) -> None:
        """Sort each change's matched subscribers into variants: a shape, or an error (spec §6.4)."""
        relation = group[0].relation
        names = [c.name for c in relation.columns]
        roles = {sub.role for ch in group for sub in ch.matched}
        selectable = {role: await self.catalog.selectable(conn, role, relation.oid) for role in roles}
        for role, cols in selectable.items():
            if cols is not None:
                self._selectable[(role, relation.oid)] = cols
        needs_rls = table.rls and any(ch.type != "DELETE" and ch.matched for ch in group)
        pk_idx = [names.index(name) for name in table.primary_key if name in names]
        visible: dict[str, set[tuple[str, ...]] | None] = {}
        if needs_rls and table.primary_key:
            visible = await self._visible(table, relation, group, selectable, pk_idx)
        for ch in group:
            for sub in ch.matched:
                role = sub.role
                cols = selectable.get(role)
                if ch.type != "DELETE":
                    if not table.primary_key:
                        ch.variants.setdefault(("error", records.ERROR_NO_PRIMARY_KEY), []).append(sub)
                        continue
                    if cols is None or not all(name in cols for name in table.primary_key):
                        ch.variants.setdefault(("error", records.ERROR_UNAUTHORIZED), []).append(sub)
                        continue
                    if table.rls:
                        keys = visible.get(_group_key(sub))
                        assert ch.new is not None
                        if keys is None or tuple(ch.new[i] for i in pk_idx) not in keys:
                            continue  # not visible, or the group's policy failed
                elif cols is None:
                    continue
                ch.variants.setdefault(("shape", role, sub.params.select), []).append(sub)

    async def _visible(
        self,
        table: TableInfo,
        relation: Relation,
        group: list[_Change],
        selectable: dict[str, frozenset[str] | None],
        pk_idx: list[int],
    ) -> dict[str, set[tuple[str, ...]] | None]:
        """Visible keys per (role, claims) group, one query per group, groups run concurrently."""
        groups: dict[str, tuple[Subscription, set[tuple[Any, ...]]]] = {}
        for ch in group:
            if ch.type == "DELETE" or ch.new is None:
                continue
            key = tuple(ch.new[i] for i in pk_idx)
            for sub in ch.matched:
                cols = selectable.get(sub.role)
                if cols is None or not all(n in cols for n in table.primary_key):
                    continue
                entry = groups.setdefault(_group_key(sub), (sub, set()))
                entry[1].add(key)

        async def check(group_key: str, sub: Subscription, keys: set[tuple[Any, ...]]) -> None:
            async with self._rls_slots, self.pool.connection() as conn:
                try:
                    result = await rls.visible_keys(
                        conn,
                        schema=relation.namespace,
                        table=relation.name,
                        primary_key=table.primary_key,
                        key_types=table.key_types,
                        role=sub.role,
                        claims=sub.claims,
                        keys=list(keys),
                    )
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    # A raising policy costs only its own group the change
                    # (upstream loses delivery for everyone: supabase/realtime#2093).
                    self.rls_errors += 1
                    self.last_error = (
                        f"RLS policy error on {relation.namespace}.{relation.name} for role {sub.role}: {exc}"
                    )
                    log.warning("RlsPolicyError: %s", self.last_error)
                    visible[group_key] = None
                    return
                visible[group_key] = result

        visible: dict[str, set[tuple[str, ...]] | None] = {}
        await asyncio.gather(*(check(k, sub, keys) for k, (sub, keys) in groups.items()))
        return visible

    # Phase 2: emit

    def _emit(self, changes: list[_Change]) -> None:
        tenant = self.tenant
        now = self.now()
        over_limit = tenant.events.reached(tenant.limits.max_events_per_second, now)
        shapes: dict[tuple[Any, ...], RecordShape] = {}
        sent = 0
        for ch in changes:
            if not ch.variants:
                continue
            self.changes_dispatched += 1
            frames: dict[tuple[Any, ...], bytes] = {}
            for variant, subs in ch.variants.items():
                data = self._data(ch, variant, shapes)
                per_channel: dict[Any, list[Subscription]] = {}
                for sub in subs:
                    per_channel.setdefault(sub.channel, []).append(sub)
                for channel, channel_subs in per_channel.items():
                    if channel.state != 1:  # ChannelState.JOINED
                        continue
                    if over_limit:
                        channel.shutdown(TOO_MANY_MESSAGES)
                        continue
                    legacy = channel_subs[0].legacy
                    ids = tuple(sorted({s.id for s in channel_subs}))
                    key = (channel.codec, channel.topic, ids, legacy, variant)
                    frame = frames.get(key)
                    if frame is None:
                        if legacy:
                            frame = channel.codec.broadcast_json(channel.topic, ch.type, data)
                        else:
                            payload = b'{"ids":' + orjson.dumps(list(ids)) + b',"data":' + data + b"}"
                            frame = channel.codec.broadcast_json(channel.topic, "postgres_changes", payload)
                        frames[key] = frame
                    channel.conn.send(frame)
                    sent += 1
        self.messages_sent += sent
        tenant.events.add(sent, now)

    def _data(self, ch: _Change, variant: tuple[Any, ...], shapes: dict[tuple[Any, ...], RecordShape]) -> bytes:
        relation = ch.relation
        if variant[0] == "error":
            return records.error_data(relation.namespace, relation.name, ch.type, variant[1])
        _, role, select = variant
        shape_key = (relation.oid, role, select)
        shape = shapes.get(shape_key)
        if shape is None:
            shape = shapes[shape_key] = self._shape(relation, role, select)
        # With RLS enabled a DELETE carries only the primary key (spec §6.5).
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


def _group_key(sub: Subscription) -> str:
    return sub.role + "\0" + orjson.dumps(sub.claims, option=orjson.OPT_SORT_KEYS).decode()


def _change(relation: Relation, kind: str, msg: Any, commit_time_us: int, candidates: list[Subscription]) -> _Change:
    new = list(msg.new) if kind != "DELETE" else None
    old = list(msg.old) if getattr(msg, "old", None) is not None else None
    old_indexes: frozenset[int] | None = None
    if old is not None:
        if msg.old_kind == "K":
            old_indexes = frozenset(i for i, col in enumerate(relation.columns) if col.is_key)
        else:
            old_indexes = frozenset(range(len(relation.columns)))
    return _Change(relation, kind, new, old, old_indexes, commit_time_us, candidates)
