"""Postgres Changes subscription params, row filters, and their evaluation.

cdc.py calls parse_params() on each `postgres_changes` entry of a join (pure;
a SubscriptionParamsError is pushed to the client as-is). Before writing a
subscription row it checks the filters against the table the way upstream's
trigger `realtime.subscription_check_filters()` does: validate() without I/O,
then validate_values() in the database (or both, in upstream's exact order,
with validate_subscription()). A FilterError is reported inside upstream's
"Unable to subscribe ... Exception: <message>" text.

dispatch.py builds one FilterEvaluator per (table, distinct conditions) from
load_columns(), and calls evaluate() once per batch of changes: one query
computes every condition for every change with PostgreSQL's own operators on
the column's type (docs/protocol.md §6.3, upstream `check_equality_op`), so `1.50 = 1.5`
on numeric, jsonb equality, enum order and time zones all hold. Conditions
whose semantics a Python comparison reproduces exactly (integers, booleans,
uuids, text equality) skip the database. Every value reaches SQL as a query
parameter and every type name as a `psycopg.sql.Identifier`: no SQL text is
ever built from a client string.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import psycopg
from psycopg import sql

__all__ = [
    "MAX_IN_VALUES",
    "OPERATORS",
    "ColumnInfo",
    "Condition",
    "Event",
    "FilterError",
    "FilterEvaluator",
    "FilterParseError",
    "Op",
    "SubscriptionParams",
    "SubscriptionParamsError",
    "conditions_match",
    "elixir_inspect",
    "load_columns",
    "parse_filter",
    "parse_params",
    "validate",
    "validate_subscription",
    "validate_values",
]

log = logging.getLogger(__name__)

Event: TypeAlias = Literal["INSERT", "UPDATE", "DELETE", "*"]
Op: TypeAlias = Literal[
    "eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "is", "match", "imatch", "isdistinct"
]
InValue: TypeAlias = tuple[str | None, ...]  # None is an unquoted NULL element

# Upstream `@filter_types` in subscriptions.ex, and the realtime.equality_op enum.
OPERATORS: frozenset[str] = frozenset(
    ("eq", "neq", "lt", "lte", "gt", "gte", "in", "like", "ilike", "is", "match", "imatch", "isdistinct")
)
MAX_IN_VALUES = 100  # subscription_check_filters: "too many values for `in` filter. Maximum 100"
IS_VALUES = ("null", "true", "false", "unknown")

_NO_PARAMS = "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: "
_SELECT_NOT_LIST = (
    'Error parsing `select` params: expected a list of column name strings, e.g. select: ["col1", "col2"]'
)
_SELECT_WILDCARD = (
    "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name."
)
_EMPTY_SEGMENT = "filter must not contain empty segments (check for extra commas)"
_IN_PARENS = "`in` filter value must be wrapped by parentheses"
_IS_VALUE = "invalid value for is filter: must be null, true, false, or unknown"
_TOO_MANY_IN = "too many values for `in` filter. Maximum 100"

# Elixir's String.trim/1 whitespace (Unicode White_Space), not Python's str.isspace().
_ELIXIR_WS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_PG_SPACE = " \t\n\r\x0b\x0c"  # array_isspace() / boolin's isspace()


# ---------------------------------------------------------------------------
# Errors


class SubscriptionParamsError(ValueError):
    """Params upstream's parse_subscription_params/1 refuses; str() is the exact client text.

    Pushed as a `postgres_changes` system error and not retried (docs/protocol.md §3.6)."""


class FilterParseError(SubscriptionParamsError):
    """A `filter` that does not parse: "Error parsing `filter` params: <reason>"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Error parsing `filter` params: {reason}")
        self.reason = reason


class FilterError(ValueError):
    """A parsed filter that upstream's trigger `subscription_check_filters()` rejects.

    str() is the PostgreSQL error message upstream reports after "Exception: ".
    `sqlstate` is "P0001" for the trigger's own `raise exception` texts, or the
    code of PostgreSQL's error for a value that does not cast (e.g. "22P02")."""

    def __init__(self, message: str, sqlstate: str = "P0001", detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail


# ---------------------------------------------------------------------------
# Params


@dataclass(frozen=True, slots=True)
class Condition:
    """One `column=[not.]op.value` filter condition; a subscription ANDs its conditions.

    `value` is unquoted already. For `in` it is the tuple of list elements, where
    None stands for an unquoted NULL element (a PostgreSQL array literal reads
    `{a,NULL}` so, and upstream casts `{...}` to an array). For `is` it is one of
    null/true/false/unknown once validate() has passed, in lower case."""

    column: str
    op: Op
    value: str | InValue
    negate: bool = False

    @property
    def stored_value(self) -> str:
        """The value as upstream stores it in realtime.user_defined_filter (an array literal for `in`)."""
        if isinstance(self.value, tuple):
            return "{" + ",".join(_array_element(v) for v in self.value) + "}"
        return self.value


@dataclass(frozen=True, slots=True)
class SubscriptionParams:
    """One parsed `postgres_changes` entry (upstream's subscription_params tuple)."""

    event: Event
    schema: str
    table: str  # "*" matches every table of the publication in `schema`
    filters: tuple[Condition, ...] = ()
    select: tuple[str, ...] | None = None  # None: all columns


def parse_params(params: object) -> SubscriptionParams:
    """Parse one `postgres_changes` entry as upstream's parse_subscription_params/1 does.

    Raises:
        SubscriptionParamsError: with upstream's text, to push to the client as-is.
    """
    # RT subscriptions.ex: `select` is checked first, then the shape, then the
    # filter, then `select` against wildcards.
    p: Mapping[str, Any] = params if isinstance(params, Mapping) else {}
    event = _event(p.get("event"))
    select = _select(p)
    if isinstance(params, Mapping):
        schema, table, filt = p.get("schema"), p.get("table"), p.get("filter")
        if "schema" in p and "table" in p and "filter" in p:
            if isinstance(schema, str) and isinstance(table, str) and isinstance(filt, str):
                return _ok(event, schema, table, parse_filter(filt), select)
        elif "schema" in p and "table" in p:
            if isinstance(schema, str) and isinstance(table, str):
                return _ok(event, schema, table, (), select)
        elif "schema" in p and "filter" not in p:
            if isinstance(schema, str):
                return _ok(event, schema, "*", (), select)
        elif "table" in p and "filter" not in p and isinstance(table, str):
            return _ok(event, "public", table, (), select)
        if "user_token" in p or "auth_token" in p:
            raise SubscriptionParamsError(_NO_PARAMS + "<redacted>")
    raise SubscriptionParamsError(_NO_PARAMS + elixir_inspect(params))


def _event(value: object) -> Event:
    if isinstance(value, str):
        up = value.upper()
        if up == "INSERT" or up == "UPDATE" or up == "DELETE":
            return up
    return "*"


def _select(p: Mapping[str, Any]) -> tuple[str, ...] | None:
    cols = p.get("select")
    if isinstance(cols, list):
        return tuple(c for c in cols if isinstance(c, str)) or None
    if isinstance(cols, str):
        raise SubscriptionParamsError(_SELECT_NOT_LIST)
    return None


def _ok(
    event: Event, schema: str, table: str, filters: tuple[Condition, ...], select: tuple[str, ...] | None
) -> SubscriptionParams:
    if select is not None and (schema == "*" or table == "*"):
        raise SubscriptionParamsError(_SELECT_WILDCARD)
    return SubscriptionParams(event, schema, table, filters, select)


def parse_filter(text: str) -> tuple[Condition, ...]:
    """Parse a `filter` string into its AND-ed conditions, in order.

    Commas inside double quotes or parentheses do not split. Empty or
    whitespace-only text means no filter.

    Raises:
        FilterParseError: str() is the full client text,
            e.g. 'Error parsing `filter` params: ["foo", "hey"]'.
    """
    trimmed = text.strip(_ELIXIR_WS)
    if not trimmed:
        return ()
    return tuple(_parse_segment(segment) for segment in _split_top_level(trimmed))


def _split_top_level(text: str) -> list[str]:
    # RT subscriptions.ex split_top_level/6: a `"` opens a quoted run only right
    # after `.`, `(` or `,`; inside it `\` escapes the next character.
    segments: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    prev = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\" and i + 1 < n:
                current.append(text[i : i + 2])
                prev = text[i + 1]
                i += 2
                continue
            if c == '"':
                quoted = False
            current.append(c)
        elif c == '"' and prev in (".", "(", ","):
            quoted = True
            current.append(c)
        elif c == "(":
            depth += 1
            current.append(c)
        elif c == ")":
            depth = max(0, depth - 1)
            current.append(c)
        elif c == "," and depth == 0:
            segments.append("".join(current))
            current = []
            c = ""
        else:
            current.append(c)
        prev = c
        i += 1
    segments.append("".join(current))
    return segments


def _parse_segment(segment: str) -> Condition:
    trimmed = segment.strip(_ELIXIR_WS)
    if not trimmed:
        raise FilterParseError(_EMPTY_SEGMENT)
    col, eq, rest = trimmed.partition("=")
    if not eq:
        raise FilterParseError(elixir_inspect([trimmed]))
    negate = rest.startswith("not.")
    if negate:
        rest = rest[4:]
    op, dot, value = rest.partition(".")
    if not dot:
        raise FilterParseError(elixir_inspect([rest]))
    if op not in OPERATORS:
        raise FilterParseError(elixir_inspect([op, value]))
    if op == "in":
        if len(value) < 2 or value[0] != "(" or value[-1] != ")":
            raise FilterParseError(_IN_PARENS)
        return Condition(col, "in", _parse_in_list(value[1:-1]), negate)
    value = _unquote(value)
    if op == "is":
        # Upstream compares case-sensitively ('null' only); we accept any case,
        # as PostgREST does, and store the lower-case keyword.
        lowered = value.lower()
        if lowered in IS_VALUES:
            value = lowered
    return Condition(col, op, value, negate)  # type: ignore[arg-type]


def _unquote(value: str) -> str:
    # RT subscriptions.ex unquote_value/1: a value that is exactly one
    # PostgREST-quoted string loses its quotes and escapes; anything else is kept.
    if not value.startswith('"'):
        return value
    out: list[str] = []
    i, n = 1, len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            out.append(value[i + 1])
            i += 2
        elif c == '"':
            return "".join(out) if i == n - 1 else value
        else:
            out.append(c)
            i += 1
    return value


def _parse_in_list(inner: str) -> InValue:
    """Read the elements of `in.(...)` as PostgreSQL reads the array literal `{...}`.

    Upstream turns `(a,b)` into `{a,b}` and casts it to the column's array type,
    so we follow array_in() for one dimension: `"..."` quoting with backslash
    escapes, backslash escapes outside quotes, whitespace around elements
    dropped, an unquoted NULL (any case) is a NULL element, `()` is empty."""
    items: list[str | None] = []
    n = len(inner)
    if not inner.strip(_PG_SPACE):
        return ()
    i = 0
    while True:
        while i < n and inner[i] in _PG_SPACE:
            i += 1
        buf: list[str] = []
        literal = False  # quoted or escaped: never NULL
        if i < n and inner[i] == '"':
            literal = True
            i += 1
            while True:
                if i >= n:
                    raise _malformed(inner)
                c = inner[i]
                if c == "\\" and i + 1 < n:
                    buf.append(inner[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    buf.append(c)
                    i += 1
            while i < n and inner[i] in _PG_SPACE:
                i += 1
            if i < n and inner[i] != ",":
                raise _malformed(inner)
        else:
            keep = 0  # length of buf up to the last significant character
            while i < n and inner[i] != ",":
                c = inner[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise _malformed(inner)
                    buf.append(inner[i + 1])
                    literal = True
                    keep = len(buf)
                    i += 2
                    continue
                if c in '"{}':
                    raise _malformed(inner)
                buf.append(c)
                if c not in _PG_SPACE:
                    keep = len(buf)
                i += 1
            del buf[keep:]
            if not buf:
                raise _malformed(inner)
        value = "".join(buf)
        items.append(None if not literal and value.lower() == "null" else value)
        if i >= n:
            return tuple(items)
        i += 1  # the comma


def _malformed(inner: str) -> FilterParseError:
    # Upstream reports PostgreSQL's array_in() error when the trigger casts the list.
    return FilterParseError('malformed array literal: "{' + inner + '}"')


def _array_element(v: str | None) -> str:
    if v is None:
        return "NULL"
    if v == "" or v.lower() == "null" or any(c in v for c in '{},"\\ \t\n\r\x0b\x0c'):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v


# ---------------------------------------------------------------------------
# Elixir inspect/1, for upstream texts that embed the client's params


def elixir_inspect(term: object, limit: int = 50) -> str:
    """Render a decoded JSON value as Elixir's `inspect/1` (Elixir >= 1.15) renders it.

    Covers what Jason decodes: maps with string keys (printed sorted, as small
    Erlang maps are), lists, strings, numbers, booleans and nil; tuples print
    as Elixir tuples. Containers show at most `limit` items, nested ones what
    is left of it; strings are cut after 4096 characters."""
    if term is None:
        return "nil"
    if term is True:
        return "true"
    if term is False:
        return "false"
    if isinstance(term, int):
        return str(term)
    if isinstance(term, float):
        return _inspect_float(term)
    if isinstance(term, str):
        return _inspect_string(term, limit)
    if isinstance(term, Mapping):
        items = sorted(term.items(), key=lambda kv: str(kv[0]).encode("utf-8", "surrogatepass"))
        body = _container(items, limit, lambda kv, lim: f"{elixir_inspect(kv[0], lim)} => {elixir_inspect(kv[1], lim)}")
        return "%{" + body + "}"
    if isinstance(term, tuple):
        return "{" + _container(list(term), limit, elixir_inspect) + "}"
    if isinstance(term, list):
        if term and all(isinstance(c, int) and not isinstance(c, bool) for c in term[:_PRINTABLE_LIMIT]):
            chars = term[:_PRINTABLE_LIMIT]
            if all(32 <= c <= 126 or 7 <= c <= 13 or c == 27 for c in chars):
                text = "".join(_escape_char(chr(c)) for c in chars).replace("#{", "\\#{")
                return '~c"' + text + '"' + (" ++ ..." if len(term) > _PRINTABLE_LIMIT else "")
        return "[" + _container(term, limit, elixir_inspect) + "]"
    return repr(term)


_PRINTABLE_LIMIT = 4096
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    "\x1b": "\\e",
    "\x7f": "\\d",
}


def _escape_char(c: str) -> str:
    return _ESCAPES.get(c, c)


def _container(items: Sequence[Any], limit: int, fmt: Callable[[Any, int], str]) -> str:
    # Inspect.Algebra.container_each/6: each item takes one from the limit and
    # is itself printed with what is left.
    out: list[str] = []
    for item in items:
        if limit == 0:
            out.append("...")
            break
        limit -= 1
        out.append(fmt(item, limit))
    return ", ".join(out)


def _printable(c: str) -> bool:
    o = ord(c)
    return (
        0x20 <= o <= 0x7E
        or 0xA0 <= o <= 0xD7FF
        or 0xE000 <= o <= 0xFFFD
        or 0x10000 <= o <= 0x10FFFF
        or c in "\n\r\t\v\b\f\x1b\x7f\a"
    )


def _inspect_string(s: str, limit: int) -> str:
    head = s[:_PRINTABLE_LIMIT]
    if all(_printable(c) for c in head):
        escaped = "".join(_escape_char(c) for c in head).replace("#{", "\\#{")
        return '"' + escaped + '"' + (" <> ..." if len(s) > _PRINTABLE_LIMIT else "")
    data = s.encode("utf-8", "surrogatepass")
    return "<<" + _container(data, limit, lambda b, _lim: str(b)) + ">>"


def _inspect_float(f: float) -> str:
    # Inspect.Float: integral values in [1, 1e16) print as "<int>.0"; the rest
    # as :io_lib_format.fwrite_g/1, i.e. the shortest round-trip digits, in
    # plain or exponent form, whichever is shorter (plain on a tie), and always
    # in exponent form from 1e16 on.
    if math.isinf(f) or math.isnan(f):
        return repr(f)
    if 1.0 <= abs(f) < 1e16 and f == int(f):
        return f"{int(f)}.0"
    sign = "-" if math.copysign(1.0, f) < 0 else ""
    mantissa, _, exp = repr(abs(f)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    if not digits:
        return sign + "0.0"
    # value = 0.<digits> * 10**place
    if int_part != "0":
        place = len(int_part) + int(exp or 0)
    else:
        place = int(exp or 0) - (len(frac_part) - len(frac_part.lstrip("0")))
    digits = digits.rstrip("0")
    n = len(digits)
    if place <= 0:
        plain = "0." + "0" * -place + digits
    elif place >= n:
        plain = digits + "0" * (place - n) + ".0"
    else:
        plain = digits[:place] + "." + digits[place:]
    expo = digits[0] + "." + (digits[1:] or "0") + "e" + str(place - 1)
    return sign + (plain if place <= 16 and len(plain) <= len(expo) else expo)


# ---------------------------------------------------------------------------
# Columns and validation


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column of a table, with its type as the filters need it."""

    name: str
    type_oid: int
    type_schema: str  # pg_namespace.nspname of the type
    typname: str  # pg_type.typname: int4, _int4, timestamptz, ... (the `type` of docs/protocol.md §6.5)
    type_name: str  # format_type(oid, NULL): integer, integer[], timestamp with time zone, ...
    category: str  # pg_type.typcategory
    attnum: int = 0

    @property
    def type_sql(self) -> sql.Composable:
        """The type for a cast, e.g. "pg_catalog"."int4"; no typmod, so nothing is truncated or rounded."""
        return sql.Identifier(self.type_schema, self.typname)

    @property
    def array_type_sql(self) -> sql.Composable:
        """The array of the type, e.g. "pg_catalog"."int4"[] (an array of an array is the array itself)."""
        return sql.SQL("{}[]").format(self.type_sql)

    @property
    def is_text_like(self) -> bool:
        """Whether like/ilike/match/imatch apply: string types and domains over them."""
        return self.typname in _TEXT_TYPES or self.category == "S"

    @property
    def is_bool(self) -> bool:
        return self.type_oid == _BOOL


_TEXT_TYPES = frozenset(("text", "varchar", "bpchar", "name", "citext"))
_BOOL, _INT2, _INT4, _INT8, _TEXT, _VARCHAR, _UUID = 16, 21, 23, 20, 25, 1043, 2950

_COLUMNS = sql.SQL(
    """select a.attname, a.atttypid::int8, n.nspname, t.typname,
       format_type(a.atttypid, null), t.typcategory::text, a.attnum
from pg_catalog.pg_attribute a
join pg_catalog.pg_type t on t.oid = a.atttypid
join pg_catalog.pg_namespace n on n.oid = t.typnamespace
where a.attrelid = %s::oid and a.attnum > 0 and not a.attisdropped
order by a.attnum"""
)


async def load_columns(conn: psycopg.AsyncConnection[Any], relid: int) -> dict[str, ColumnInfo]:
    """Read the live columns of table `relid`, by name, in attnum order."""
    cur = await conn.execute(_COLUMNS, (relid,))
    return {
        name: ColumnInfo(name, oid, nsp, typname, type_name, category, attnum)
        for name, oid, nsp, typname, type_name, category, attnum in await cur.fetchall()
    }


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
        return sql.SQL("('' {} {}::text)").format(sql.SQL(_SQL_OPS[op]), sql.Placeholder()), [cond.value]
    if op in _CAST_OPS:
        # The value must cast to the column type (upstream), and the operator
        # must exist for it (json has no `=`): fail at subscribe, not at WAL time.
        sym = "=" if op == "isdistinct" else _SQL_OPS[op]
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
        await _run(conn, query, params)
    except psycopg.errors.DatabaseError as exc:
        if isinstance(exc, psycopg.OperationalError):
            raise
        first = exc
    else:
        return
    # Find the first failing condition, as upstream's loop would.
    for cond, expr, cparams in checks:
        try:
            await _run(conn, sql.SQL("select {}").format(expr), cparams)
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


async def _run(conn: psycopg.AsyncConnection[Any], query: sql.Composable, params: Sequence[Any]) -> list[Any]:
    """Execute without poisoning the caller's transaction when the query fails."""
    if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        cur = await conn.execute(query, params)
        return await cur.fetchall()
    async with conn.transaction():
        cur = await conn.execute(query, params)
        return await cur.fetchall()


# ---------------------------------------------------------------------------
# Evaluation

_SQL_OPS = {
    "eq": "=",
    "neq": "<>",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "like": "~~",
    "ilike": "~~*",
    "match": "~",
    "imatch": "~*",
}
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
        expr = sql.SQL("({}::{} {} {}::text)").format(wal, t, sql.SQL(_SQL_OPS[op]), sql.Placeholder())
        value = cond.value
    else:
        expr = sql.SQL("({}::{} {} {}::{})").format(wal, t, sql.SQL(_SQL_OPS[op]), sql.Placeholder(), t)
        value = cond.value
    if cond.negate:
        expr = sql.SQL("(NOT {})").format(expr)
    return expr, [value]


Row: TypeAlias = Mapping[str, "str | None"]


class FilterEvaluator:
    """The distinct conditions of one table's subscriptions, evaluated together.

    Build it once per (table, distinct conditions) and keep it while the table
    and the set stand. evaluate() answers one tuple of booleans per change, in
    the order of `conditions`; conditions_match() ANDs a subscription's part of
    it. A condition is true only if its column is present in the change
    (docs/protocol.md §6.3) and PostgreSQL says TRUE: NULL counts as false."""

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
        self._fast = _FastPath.build(self.conditions, self.columns)

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
        except _Undecidable:
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
            fetched = await _run(conn, query, [*params, *arrays])  # filter values come first in the SQL
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
        # docs/protocol.md §6.3: every filter column must be present in the change.
        return tuple(bool(r) and c.column in row for r, c in zip(result, self.conditions, strict=True))

    def indexes(self, conditions: Iterable[Condition]) -> tuple[int, ...]:
        """Positions of `conditions` in the results (each must be one of `self.conditions`)."""
        pos = {c: i for i, c in enumerate(self.conditions)}
        return tuple(pos[c] for c in conditions)


def conditions_match(results: Sequence[bool], indexes: Iterable[int]) -> bool:
    """Whether all the conditions at `indexes` hold for one change (true for none: no filter)."""
    return all(results[i] for i in indexes)


# ---------------------------------------------------------------------------
# Python fast path: only where the result provably equals PostgreSQL's


class _Undecidable(Exception):
    """A value whose PostgreSQL reading we do not reproduce: ask the database."""


_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_INT_RANGE = {_INT2: 2**15, _INT4: 2**31, _INT8: 2**63}


def _int_key(oid: int) -> Callable[[str], Any]:
    bound = _INT_RANGE[oid]

    def key(text: str) -> int:
        # int2in/int4in/int8in also take spaces, "+", leading zeros, "_" and
        # 0x/0o/0b: the database decides those.
        if not _CANONICAL_INT.match(text):
            raise _Undecidable
        v = int(text)
        if not -bound <= v < bound:
            raise _Undecidable  # out of range: an error in PostgreSQL
        return v

    return key


def _bool_key(text: str) -> bool:
    # boolin() / parse_bool_with_len(): trimmed, ASCII case-insensitive,
    # any prefix of true/false/yes/no, on/off (two letters at least), 1/0.
    v = text.strip(_PG_SPACE)
    if not v.isascii():
        raise _Undecidable
    v = v.lower()
    if v and ("true".startswith(v) or "yes".startswith(v) or v == "on" or v == "1"):
        return True
    if v and ("false".startswith(v) or "no".startswith(v) or v in ("of", "off") or v == "0"):
        return False
    raise _Undecidable


def _uuid_key(text: str) -> str:
    # uuid_out prints lower case; uuid_cmp is memcmp, i.e. the order of the
    # lower-case hex text. Other spellings uuid_in accepts go to the database.
    if not _CANONICAL_UUID.match(text):
        raise _Undecidable
    return text.lower()


def _text_key(text: str) -> str:
    # The database's default collation is deterministic, so `=` on text is
    # equality of the strings. Ordering depends on the collation: not here.
    return text


# type oid → (key, operators with the same meaning in Python)
_ORDERED = frozenset(("eq", "neq", "lt", "lte", "gt", "gte", "in", "isdistinct", "is"))
_EQUALITY = frozenset(("eq", "neq", "in", "isdistinct", "is"))
_FAST_TYPES: dict[int, tuple[Callable[[str], Any], frozenset[str]]] = {
    _INT2: (_int_key(_INT2), _ORDERED),
    _INT4: (_int_key(_INT4), _ORDERED),
    _INT8: (_int_key(_INT8), _ORDERED),
    _BOOL: (_bool_key, _ORDERED),
    _UUID: (_uuid_key, _ORDERED),
    _TEXT: (_text_key, _EQUALITY),
    _VARCHAR: (_text_key, _EQUALITY),
}
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}


class _FastPath:
    """Every condition of an evaluator, as Python on typed keys, when all of them allow it.

    Plain `eq` conditions (the common `user_id=eq.<id>` per subscriber) are
    looked up by value, so a change costs one dict lookup per column however
    many of them there are."""

    __slots__ = ("_eq", "_keys", "_n", "_others")

    def __init__(
        self,
        n: int,
        keys: dict[str, Callable[[str], Any]],
        eq: dict[str, dict[Any, list[int]]],
        others: list[tuple[int, Callable[[dict[str, Any]], bool]]],
    ) -> None:
        self._n = n
        self._keys = keys
        self._eq = eq
        self._others = others

    @classmethod
    def build(cls, conditions: Sequence[Condition], columns: Mapping[str, ColumnInfo]) -> _FastPath | None:
        keys: dict[str, Callable[[str], Any]] = {}
        eq: dict[str, dict[Any, list[int]]] = {}
        others: list[tuple[int, Callable[[dict[str, Any]], bool]]] = []
        try:
            for i, cond in enumerate(conditions):
                col = columns.get(cond.column)
                if col is None:
                    continue  # stays false
                fast = _FAST_TYPES.get(col.type_oid)
                if fast is None or cond.op not in fast[1]:
                    return None
                key = keys[cond.column] = fast[0]
                if cond.op == "eq" and not cond.negate:
                    eq.setdefault(cond.column, {}).setdefault(key(str(cond.value)), []).append(i)
                else:
                    others.append((i, _fast_check(cond, key)))
        except _Undecidable:
            return None
        return cls(len(conditions), keys, eq, others)

    def evaluate(self, row: Row) -> list[bool]:
        typed: dict[str, Any] = {}
        for name, key in self._keys.items():
            if name in row:
                text = row[name]
                typed[name] = None if text is None else key(text)
        result = [False] * self._n
        for name, table in self._eq.items():
            v = typed.get(name)
            if v is not None:
                for i in table.get(v, ()):
                    result[i] = True
        for i, check in self._others:
            result[i] = check(typed)
        return result


def _fast_check(cond: Condition, key: Callable[[str], Any]) -> Callable[[dict[str, Any]], bool]:
    name, negate, op = cond.column, cond.negate, cond.op
    if op == "is":
        if cond.value not in IS_VALUES:  # validate() refuses it; never true
            return lambda _k: False
        want = {"null": None, "unknown": None, "true": True, "false": False}[str(cond.value)]
        if want is None:
            return lambda k: (k.get(name) is None) != negate
        return lambda k: (k.get(name) is want) != negate
    if op == "isdistinct":
        f = key(str(cond.value))
        if negate:
            return lambda k: k.get(name) is not None and k[name] == f
        return lambda k: k.get(name) is None or k[name] != f
    if op == "in":
        assert isinstance(cond.value, tuple)
        if not cond.value:
            # `x = any('{}')` is false even when x is NULL (ExecEvalScalarArrayOp).
            return lambda _k: negate
        members = frozenset(key(v) for v in cond.value if v is not None)
        has_null = None in cond.value

        def in_check(k: dict[str, Any]) -> bool:
            v = k.get(name)
            if v is None:
                return False
            if v in members:
                return not negate
            return negate and not has_null  # NOT (NULL) is NULL

        return in_check
    f = key(str(cond.value))
    cmp = _CMP[op]
    return lambda k: k.get(name) is not None and cmp(k[name], f) != negate
