"""Evaluation of many filter conditions on a batch of changes, with PostgreSQL's own operators."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from .columns import ColumnInfo, Row
from .conditions import SQL_OPS, Condition
from .execute import run_isolated
from .fast_path import FastPath, Undecidable

__all__ = ["FilterEvaluator", "conditions_match"]

log = logging.getLogger(__name__)

_IS_SQL = {"null": "NULL", "true": "TRUE", "false": "FALSE", "unknown": "UNKNOWN"}
# PostgreSQL has a 1664-column select list and 65535 parameters; the results
# come back as one bool[] per change, and evaluators this large are split.
_CHUNK = 4000


def _condition_sql(cond: Condition, col: ColumnInfo, wal: sql.Composable) -> tuple[sql.Composable, list[Any]] | None:
    """`check_equality_op` for one condition: SQL on the WAL text `wal` and its parameters; None: never true."""
    t = col.type_sql
    op = cond.op
    if op == "is":
        keyword = _IS_SQL.get(str(cond.value))
        if keyword is None:  # validate() refuses it; never true
            return None
        return sql.SQL("({}::{} IS {}{})").format(wal, t, sql.SQL("NOT " if cond.negate else ""), sql.SQL(keyword)), []
    if op == "isdistinct":
        return sql.SQL("({}::{} IS {}DISTINCT FROM {}::{})").format(
            wal, t, sql.SQL("NOT " if cond.negate else ""), sql.Placeholder(), t
        ), [cond.value]
    if op == "in":
        expr = sql.SQL("({}::{} = any({}::text[]::{}))").format(wal, t, sql.Placeholder(), col.array_type_sql)
        value: Any = list(cond.value)
    elif op in ("like", "ilike", "match", "imatch"):
        expr = sql.SQL("({}::{} {} {}::text)").format(wal, t, sql.SQL(SQL_OPS[op]), sql.Placeholder())
        value = cond.value
    else:
        expr = sql.SQL("({}::{} {} {}::{})").format(wal, t, sql.SQL(SQL_OPS[op]), sql.Placeholder(), t)
        value = cond.value
    if cond.negate:
        expr = sql.SQL("(NOT {})").format(expr)
    return expr, [value]


class FilterEvaluator:
    """The distinct conditions of one table's subscriptions, evaluated together.

    Build it once per (table, distinct conditions) and keep it while the table
    and the set stand. evaluate() answers one tuple of booleans per change, in
    the order of `conditions`; conditions_match() ANDs a subscription's part of
    it. A condition is true only if its column is present in the change (upstream
    `functions/is_visible_through_filters.sql`) and PostgreSQL says TRUE: NULL counts as false."""

    __slots__ = ("_batch", "_fast", "_refs", "_single", "columns", "conditions", "sql")

    def __init__(self, conditions: Sequence[Condition], columns: Mapping[str, ColumnInfo]) -> None:
        self.conditions: tuple[Condition, ...] = tuple(conditions)
        self.columns: dict[str, ColumnInfo] = dict(columns)
        # The WAL columns the conditions read, each bound to one unnest() array.
        self._refs: list[str] = []
        for cond in self.conditions:
            if cond.column in self.columns and cond.column not in self._refs:
                self._refs.append(cond.column)
        self._batch = [
            self._batch_query(range(i, min(i + _CHUNK, len(self.conditions))))
            for i in range(0, len(self.conditions), _CHUNK)
        ]
        self.sql, self._single = self._single_query()
        self._fast = FastPath.build(self.conditions, self.columns)

    # One change

    def _single_query(self) -> tuple[sql.Composed, list[tuple[str, list[Any]]]]:
        exprs: list[sql.Composable] = []
        shape: list[tuple[str, list[Any]]] = []
        for cond in self.conditions:
            col = self.columns.get(cond.column)
            built = None if col is None else _condition_sql(cond, col, sql.Placeholder())
            if built is None:
                exprs.append(sql.SQL("false"))
                continue
            expr, params = built
            exprs.append(sql.SQL("coalesce({}::bool and {}, false)").format(sql.Placeholder(), expr))
            shape.append((cond.column, params))
        return sql.SQL("select {}").format(sql.SQL(", ").join(exprs or [sql.SQL("true")])), shape

    def params(self, values: Row) -> list[Any]:
        """Parameters of `sql` for one change: per condition, present?, WAL text, filter value."""
        out: list[Any] = []
        for column, params in self._single:
            out.append(column in values)
            out.append(values.get(column))
            out.extend(params)
        return out

    # A batch of changes

    def _batch_query(self, indexes: Iterable[int]) -> tuple[list[int], sql.Composed | None, list[Any]]:
        idx = list(indexes)
        exprs: list[sql.Composable] = []
        params: list[Any] = []
        for i in idx:
            cond = self.conditions[i]
            col = self.columns.get(cond.column)
            alias = sql.SQL("w.{}").format(sql.Identifier(f"c{self._refs.index(cond.column)}")) if col else None
            built = None if col is None or alias is None else _condition_sql(cond, col, alias)
            if built is None:
                exprs.append(sql.SQL("false"))
                continue
            expr, p = built
            exprs.append(sql.SQL("coalesce({}, false)").format(expr))
            params.extend(p)
        if not self._refs:
            return idx, None, []
        arrays = sql.SQL(", ").join(sql.SQL("{}::text[]").format(sql.Placeholder()) for _ in self._refs)
        aliases = sql.SQL(", ").join(sql.Identifier(f"c{k}") for k in range(len(self._refs)))
        query = sql.SQL("select array[{}]::bool[] from unnest({}) with ordinality as w({}, n) order by w.n").format(
            sql.SQL(", ").join(exprs), arrays, aliases
        )
        return idx, query, params

    def evaluate_in_python(self, rows: Sequence[Row]) -> list[tuple[bool, ...]] | None:
        """The results without the database, or None when some condition or value needs it."""
        if self._fast is None:
            return None
        try:
            return [self._mask(row, self._fast.evaluate(row)) for row in rows]
        except Undecidable:
            return None

    async def evaluate(self, conn: psycopg.AsyncConnection[Any], rows: Sequence[Row]) -> list[tuple[bool, ...]]:
        """Evaluate every condition on every change, in one query per 4000 conditions.

        `rows` maps column names to WAL text values (None for SQL NULL); leave
        a column out when the change does not carry it (e.g. a DELETE without
        REPLICA IDENTITY FULL): its conditions are then false."""
        if not rows:
            return []
        fast = self.evaluate_in_python(rows)
        if fast is not None:
            return fast
        return await self.evaluate_in_sql(conn, rows)

    async def evaluate_in_sql(self, conn: psycopg.AsyncConnection[Any], rows: Sequence[Row]) -> list[tuple[bool, ...]]:
        """evaluate() without the Python fast path."""
        results: list[list[bool]] = [[False] * len(self.conditions) for _ in rows]
        for idx, query, params in self._batch:
            if query is None:
                continue
            chunk = await self._run_batch(conn, query, params, rows, idx)
            for result, values in zip(results, chunk, strict=True):
                for i, v in zip(idx, values, strict=True):
                    result[i] = v
        return [self._mask(row, result) for row, result in zip(rows, results, strict=True)]

    async def _run_batch(
        self,
        conn: psycopg.AsyncConnection[Any],
        query: sql.Composed,
        params: list[Any],
        rows: Sequence[Row],
        idx: list[int],
    ) -> list[list[bool]]:
        arrays = [[row.get(c) for row in rows] for c in self._refs]
        try:
            fetched = await run_isolated(conn, query, [*params, *arrays])  # filter values come first in the SQL
            return [list(r[0]) for r in fetched]
        except psycopg.errors.DatabaseError as exc:
            if isinstance(exc, psycopg.OperationalError):
                raise
            if len(rows) == 1 and len(idx) == 1:
                # e.g. a LIKE pattern ending in an escape: upstream would abort
                # the whole poll; we let only this condition fail.
                log.warning("filter %r failed on a change: %s", self.conditions[idx[0]], exc)
                return [[False]]
        if len(rows) > 1:
            out: list[list[bool]] = []
            for row in rows:
                out.extend(await self._run_batch(conn, query, params, [row], idx))
            return out
        values: list[bool] = []
        for i in idx:
            sub_idx, sub_query, sub_params = self._batch_query([i])
            assert sub_query is not None
            values.extend((await self._run_batch(conn, sub_query, sub_params, rows, sub_idx))[0])
        return [values]

    def _mask(self, row: Row, result: Sequence[bool]) -> tuple[bool, ...]:
        # Upstream is_visible_through_filters.sql: every filter column must be present in the change.
        return tuple(bool(r) and c.column in row for r, c in zip(result, self.conditions, strict=True))

    def indexes(self, conditions: Iterable[Condition]) -> tuple[int, ...]:
        """Positions of `conditions` in the results (each must be one of `self.conditions`)."""
        pos = {c: i for i, c in enumerate(self.conditions)}
        return tuple(pos[c] for c in conditions)


def conditions_match(results: Sequence[bool], indexes: Iterable[int]) -> bool:
    """Whether all the conditions at `indexes` hold for one change (true for none: no filter)."""
    return all(results[i] for i in indexes)
