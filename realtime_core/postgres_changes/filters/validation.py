"""Checks of filters against a table, as upstream's trigger `realtime.subscription_check_filters()` does."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from .columns import ColumnInfo
from .conditions import IS_VALUES, MAX_IN_VALUES, SQL_OPS, Condition
from .errors import FilterError
from .execute import run_isolated

__all__ = ["validate", "validate_subscription", "validate_values"]

_IS_VALUE = "invalid value for is filter: must be null, true, false, or unknown"
_TOO_MANY_IN = "too many values for `in` filter. Maximum 100"


def validate(
    conditions: Sequence[Condition],
    select: Sequence[str] | None,
    columns: Mapping[str, ColumnInfo],
    selectable: Iterable[str],
) -> None:
    """Check filters and `select` against the table without the database.

    `selectable` holds the columns the subscriber's role may SELECT. Values are
    checked by validate_values(); validate_subscription() runs both in
    upstream's exact order.

    Raises:
        FilterError: the first failure in upstream's order, with its text.
    """
    allowed = set(selectable)
    for cond in conditions:
        message = _condition_error(cond, columns, allowed)
        if message is not None:
            raise FilterError(message)
    _check_select(select, columns, allowed)


def _check_select(select: Sequence[str] | None, columns: Mapping[str, ColumnInfo], allowed: set[str]) -> None:
    for name in select or ():
        if name not in columns or name not in allowed:
            raise FilterError(f"invalid column for select {name}")


def _condition_error(cond: Condition, columns: Mapping[str, ColumnInfo], allowed: set[str]) -> str | None:
    # RT functions/subscription_check_filters.sql, in its order.
    col = columns.get(cond.column)
    if col is None or cond.column not in allowed:
        return f"invalid column for filter {cond.column}"
    if cond.op == "in":
        if len(cond.value) > MAX_IN_VALUES:
            return _TOO_MANY_IN
    elif cond.op == "is":
        if cond.value not in IS_VALUES:
            return _IS_VALUE
        if cond.value != "null" and not col.is_bool:
            return f"is {cond.value} filter requires a boolean column, got {col.type_name}"
    elif cond.op in ("like", "ilike", "match", "imatch") and not col.is_text_like:
        return f"operator {cond.op} requires a text-compatible column type, got {col.type_name}"
    return None


def _value_check(cond: Condition, col: ColumnInfo) -> tuple[sql.Composable, list[Any]] | None:
    """SQL that fails as PostgreSQL would when the condition runs on this column, or None."""
    t = col.type_sql
    op = cond.op
    if op == "in":
        # Casts every element, and resolves `=` for the type.
        return sql.SQL("(({}::text[]::{}) is null or (null::{} = any(null::{})))").format(
            sql.Placeholder(), col.array_type_sql, t, col.array_type_sql
        ), [list(cond.value)]
    if op in ("match", "imatch"):
        return sql.SQL("('' {} {}::text)").format(sql.SQL(SQL_OPS[op]), sql.Placeholder()), [cond.value]
    if op in _CAST_OPS:
        # The value must cast to the column type (upstream), and the operator
        # must exist for it (json has no `=`): fail at subscribe, not at WAL time.
        sym = "=" if op == "isdistinct" else SQL_OPS[op]
        return sql.SQL("(({}::{}) is null or (null::{} {} null::{}))").format(
            sql.Placeholder(), t, t, sql.SQL(sym), t
        ), [cond.value]
    return None


_CAST_OPS = frozenset(("eq", "neq", "lt", "lte", "gt", "gte", "isdistinct"))


async def validate_values(
    conn: psycopg.AsyncConnection[Any], conditions: Sequence[Condition], columns: Mapping[str, ColumnInfo]
) -> None:
    """Check, in one query, that every value casts to its column's type and every regex compiles.

    Run after validate() (conditions on unknown columns are skipped). Safe inside
    the caller's transaction: a failure only rolls back a savepoint.

    Raises:
        FilterError: PostgreSQL's text for a bad value, e.g.
            'invalid input syntax for type integer: "abc"', or
            "invalid regular expression for match filter: <message>".
    """
    checks: list[tuple[Condition, sql.Composable, list[Any]]] = []
    for cond in conditions:
        col = columns.get(cond.column)
        if col is None:
            continue
        check = _value_check(cond, col)
        if check is not None:
            checks.append((cond, *check))
    if not checks:
        return
    query = sql.SQL("select {}").format(sql.SQL(", ").join(c[1] for c in checks))
    params = [p for c in checks for p in c[2]]
    try:
        await run_isolated(conn, query, params)
    except psycopg.errors.DatabaseError as exc:
        if isinstance(exc, psycopg.OperationalError):
            raise
        first = exc
    else:
        return
    # Find the first failing condition, as upstream's loop would.
    for cond, expr, cparams in checks:
        try:
            await run_isolated(conn, sql.SQL("select {}").format(expr), cparams)
        except psycopg.errors.DatabaseError as exc:
            if isinstance(exc, psycopg.OperationalError):
                raise
            raise _value_error(cond, exc) from None
    raise _value_error(checks[0][0], first) from None


def _value_error(cond: Condition, exc: psycopg.Error) -> FilterError:
    message = exc.diag.message_primary or str(exc)
    if cond.op in ("match", "imatch"):
        return FilterError(f"invalid regular expression for {cond.op} filter: {message}")
    return FilterError(message, exc.diag.sqlstate or "P0001", exc.diag.message_detail)


async def validate_subscription(
    conn: psycopg.AsyncConnection[Any],
    conditions: Sequence[Condition],
    select: Sequence[str] | None,
    columns: Mapping[str, ColumnInfo],
    selectable: Iterable[str],
) -> None:
    """Run validate() and validate_values() so that the first failure is the one upstream reports.

    Raises:
        FilterError: as validate() and validate_values().
    """
    allowed = set(selectable)
    for i, cond in enumerate(conditions):
        message = _condition_error(cond, columns, allowed)
        if message is not None:
            # The trigger casts an `in` list before counting it.
            upto = i + 1 if message == _TOO_MANY_IN else i
            await validate_values(conn, conditions[:upto], columns)
            raise FilterError(message)
    await validate_values(conn, conditions, columns)
    _check_select(select, columns, allowed)
