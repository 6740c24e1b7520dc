"""Parsing of `postgres_changes` params and their `filter` string, as upstream's subscriptions.ex does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .conditions import IS_VALUES, OPERATORS, PG_SPACE, Condition, Event, InValue
from .elixir import elixir_inspect
from .errors import FilterParseError, SubscriptionParamsError

__all__ = ["SubscriptionParams", "parse_filter", "parse_params"]

_NO_PARAMS = "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: "
_SELECT_NOT_LIST = (
    'Error parsing `select` params: expected a list of column name strings, e.g. select: ["col1", "col2"]'
)
_SELECT_WILDCARD = (
    "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name."
)
_EMPTY_SEGMENT = "filter must not contain empty segments (check for extra commas)"
_IN_PARENS = "`in` filter value must be wrapped by parentheses"

# Elixir's String.trim/1 whitespace (Unicode White_Space), not Python's str.isspace().
_ELIXIR_WS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


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
    if not inner.strip(PG_SPACE):
        return ()
    i = 0
    while True:
        while i < n and inner[i] in PG_SPACE:
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
            while i < n and inner[i] in PG_SPACE:
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
                if c not in PG_SPACE:
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
