"""Would a subscriber get this change? The Postgres Changes visibility check, without delivering.

admin/pg_check.py calls check() with a subscriber (role and claims), a subscription (schema,
table, event, filter) and a row: a current one by primary key, or given values. The decision is
taken by Dispatcher.explain(), the phase 1 of live delivery (dispatch.py: the same filter
evaluation, column privileges, RLS query and data object) on one connection, in a transaction
that is always rolled back, under a statement timeout. With given values for an INSERT or
UPDATE the row is inserted inside that transaction first, so that RLS is checked on it as a
live INSERT's row would be (its triggers run too; only a sequence it draws from keeps the
values drawn, as for any rolled-back insert). A DELETE is never checked against RLS (live
delivery does not), and is filtered on its old identity columns only."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import sql

from ..hub import Hub
from .catalog import as_text, select_by_keys
from .dispatch import Change, Dispatcher
from .filters import (
    Condition,
    FilterError,
    FilterEvaluator,
    SubscriptionParamsError,
    load_columns,
    parse_filter,
    validate_subscription,
)
from .filters.parsing import SubscriptionParams
from .pgoutput import Relation, RelationColumn
from .subscriptions import Registry, Subscription

if TYPE_CHECKING:
    from ..tenants import Tenant

__all__ = ["CheckInputError", "Visibility", "check"]

STATEMENT_TIMEOUT = "5s"
_PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in Unix microseconds

_TABLE = """
select c.oid, c.relreplident::text,
       exists(select from pg_publication_tables p where p.pubname = %s and p.schemaname = n.nspname
              and p.tablename = c.relname)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p')
"""

# The columns pgoutput sends, in its order (dropped and generated ones left out), and the key ones.
_COLUMNS = """
select a.attname::text, a.atttypid::int8, a.atttypmod,
       coalesce(a.attnum = any(i.indkey), false)
from pg_attribute a left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
where a.attrelid = %s and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
order by a.attnum
"""


class CheckInputError(ValueError):
    """Input the check cannot run with: `field` and the message (a 422 for the admin API)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(slots=True)
class Visibility:
    """The answer: delivered, or why not (`reason`, `detail`); a delivery's `errors` (401, 413)."""

    delivered: bool
    reason: str | None = None  # publication | filter | rls | rls_error
    detail: str | None = None
    errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Subject:
    """What a Subscription reads of its channel: the subscriber's claims."""

    claims: dict[str, Any]


class _OneConnection:
    """A dispatch.Connections that hands out the check's own connection (and its transaction)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        yield self._conn


async def check(
    conn: psycopg.AsyncConnection[Any],
    *,
    tenant: Tenant,
    hub: Hub,
    now: Callable[[], float],
    publication: str,
    max_record_bytes: int,
    schema: str,
    table: str,
    event: str,
    filter_text: str,
    role: str,
    claims: dict[str, Any],
    primary_key: dict[str, Any] | None,
    row: dict[str, Any] | None,
) -> Visibility:
    """Whether a subscriber with `role` and `claims` to (schema, table, event, filter) gets the
    change of `primary_key`'s current row, or of `row`. Raises CheckInputError for unknown
    tables, roles or columns, a filter a subscription would be refused for, or a bad row.
    `conn` must be in autocommit mode; it is left as it was (everything is rolled back)."""
    async with conn.transaction(force_rollback=True):
        await conn.execute("select set_config('statement_timeout', %s, true)", (STATEMENT_TIMEOUT,))
        cur = await conn.execute(_TABLE, (publication, schema, table))
        found = await cur.fetchone()
        if found is None:
            raise CheckInputError("table", f"no table {schema}.{table} in the database")
        oid, replica_identity, published = found
        cur = await conn.execute("select to_regrole(%s) is not null", (role,))
        if not (await cur.fetchone() or (False,))[0]:
            raise CheckInputError("role", f"no role {role} in the database")
        dispatcher = Dispatcher(
            tenant, _OneConnection(conn), Registry(), hub, max_record_bytes=max_record_bytes, now=now
        )
        columns = await load_columns(conn, oid)
        conditions = await _conditions(conn, dispatcher, filter_text, columns, role, oid)
        cur = await conn.execute(_COLUMNS, (oid,))
        relation = Relation(
            oid,
            schema,
            table,
            replica_identity,
            tuple(
                RelationColumn(int(key), name, type_oid, typmod, key)
                for name, type_oid, typmod, key in await cur.fetchall()
            ),
        )
        values = await _values(conn, dispatcher, relation, event, primary_key, row)
        if not published:
            return Visibility(False, "publication", f"{schema}.{table} is not in the publication {publication}")
        change = _change(relation, event, values, uuid.uuid4(), role, claims, conditions)
        data = await dispatcher.explain(conn, change)
        await conn.execute("reset role")  # the RLS query leaves the subscriber's role set
        if not change.matched:
            return Visibility(False, "filter", await _failing(conn, conditions, columns, change))
        if data is None:
            if dispatcher.rls_errors:
                return Visibility(False, "rls_error", dispatcher.last_error)
            return Visibility(False, "rls", f"no SELECT policy on {schema}.{table} shows this row to role {role}")
        return Visibility(True, errors=list(orjson.loads(data).get("errors") or ()))


async def _conditions(
    conn: psycopg.AsyncConnection[Any],
    dispatcher: Dispatcher,
    filter_text: str,
    columns: dict[str, Any],
    role: str,
    oid: int,
) -> tuple[Condition, ...]:
    """The filter's conditions, refused as a subscription with it would be (cdc.py)."""
    try:
        conditions = parse_filter(filter_text)
        selectable = await dispatcher.catalog.selectable(conn, role, oid) or frozenset()
        await validate_subscription(conn, conditions, None, columns, selectable)
    except (SubscriptionParamsError, FilterError) as exc:
        raise CheckInputError("filter", str(exc)) from None
    return conditions


async def _values(
    conn: psycopg.AsyncConnection[Any],
    dispatcher: Dispatcher,
    relation: Relation,
    event: str,
    primary_key: dict[str, Any] | None,
    row: dict[str, Any] | None,
) -> list[str | None]:
    """The row's values as the WAL's text, by column: read by primary key, or made from `row`
    (inserted for an INSERT or UPDATE, see the module docstring)."""
    names = [c.name for c in relation.columns]
    target = sql.Identifier(relation.namespace, relation.name)
    out = sql.SQL(", ").join(as_text(sql.SQL("t.{}").format(sql.Identifier(n))) for n in names)
    if primary_key is not None:
        info = (await dispatcher.catalog.tables(conn, [relation.oid]))[relation.oid]
        if not info.primary_key:
            raise CheckInputError("primary_key", "the table has no primary key: give the row instead")
        if set(primary_key) != set(info.primary_key):
            raise CheckInputError("primary_key", f"must give exactly the key columns: {', '.join(info.primary_key)}")
        keys = [[_text(primary_key[name])] for name in info.primary_key]
        query = select_by_keys(relation.namespace, relation.name, info, [out])
        found = await _fetch(conn, query, keys, "primary_key")
        if found is None:
            raise CheckInputError("primary_key", "no row has this primary key")
        return list(found)
    assert row is not None
    unknown = sorted(set(row) - set(names))
    if unknown:
        raise CheckInputError("row", f"no such column: {', '.join(unknown)}")
    record = sql.SQL("jsonb_populate_record(null::{}, %s::jsonb)").format(target)
    if event == "DELETE":  # nothing to insert: a DELETE carries values, not a row
        query = sql.SQL("select {} from {} t").format(out, record)
    else:
        listed = sql.SQL(", ").join(sql.Identifier(n) for n in row)
        query = sql.SQL("insert into {} as t ({}) select {} from {} returning {}").format(
            target, listed, listed, record, out
        )
    found = await _fetch(conn, query, [orjson.dumps(row).decode()], "row")
    assert found is not None
    return list(found)


async def _fetch(conn: psycopg.AsyncConnection[Any], query: sql.Composable, params: list[Any], name: str) -> Any:
    try:
        async with conn.transaction():  # a savepoint: a bad value fails only this statement
            cur = await conn.execute(query, params)
            return await cur.fetchone()
    except psycopg.errors.UniqueViolation:
        raise CheckInputError(name, "a row with this primary key exists: check it by primary_key") from None
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
        raise CheckInputError(name, str(exc.diag.message_primary or exc)) from None


def _text(value: Any) -> str:
    """A JSON key value as the text the WAL carries (`true`, `1`, a string as is)."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _change(
    relation: Relation,
    event: str,
    values: list[str | None],
    subscription_id: uuid.UUID,
    role: str,
    claims: dict[str, Any],
    conditions: tuple[Condition, ...],
) -> Change:
    """The change a live stream would decode, with the one subscription under test as candidate."""
    params = SubscriptionParams(event=event, schema=relation.namespace, table=relation.name, filters=conditions)  # type: ignore[arg-type]
    subscription = Subscription(_Subject({**claims, "role": role}), 0, subscription_id, params)  # type: ignore[arg-type]
    commit_time_us = int(time.time() * 1_000_000) - _PG_EPOCH_US
    if event != "DELETE":
        return Change(relation, event, values, None, None, commit_time_us, 0, [subscription])
    # The old tuple carries the replica identity: every column with FULL, else the key.
    if relation.replica_identity == "f":
        old_indexes = frozenset(range(len(values)))
    else:
        old_indexes = frozenset(i for i, c in enumerate(relation.columns) if c.is_key)
    old = [v if i in old_indexes else None for i, v in enumerate(values)]
    return Change(relation, event, None, old, old_indexes, commit_time_us, 0, [subscription])


async def _failing(
    conn: psycopg.AsyncConnection[Any], conditions: tuple[Condition, ...], columns: dict[str, Any], change: Change
) -> str:
    """Which conditions the change fails, by the evaluator live delivery uses."""
    names = [c.name for c in change.relation.columns]
    values = change.old if change.type == "DELETE" else change.new
    present = change.old_indexes if change.type == "DELETE" else None
    row = {n: values[i] for i, n in enumerate(names) if values is not None and (present is None or i in present)}
    [results] = await FilterEvaluator(conditions, columns).evaluate(conn, [row])
    failed = [_describe(c) for c, ok in zip(conditions, results, strict=True) if not ok]
    return "filter not met: " + ", ".join(failed)


def _describe(cond: Condition) -> str:
    return f"{cond.column}={'not.' if cond.negate else ''}{cond.op}.{cond.stored_value}"
