"""PostgreSQL text values turned into the JSON values upstream sends, without I/O.

Upstream puts `to_jsonb(value::type)` into `record` and `old_record`
(docs/protocol.md §6.5). The replication session produces text with TimeZone=UTC, DateStyle=ISO,
IntervalStyle=postgres and extra_float_digits=3 (docs/design.md §3); a converter maps
that text to what `to_jsonb` would have produced, as a value orjson encodes.

The caller keeps one TypeCatalog per database. On each pgoutput Relation it
asks missing() for the column types it does not know yet, runs SQL_LOOKUP for
them (again until missing() is empty: arrays and domains may name further
types), passes the rows to add_rows(), and then takes one converter() per
column. Converters take the text of a non-NULL value; NULL and UNCHANGED
never reach them. The rules follow PostgreSQL 14-18 `datum_to_jsonb` and
`json_categorize_type` (src/backend/utils/adt/jsonb.c, jsonfuncs.c)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

__all__ = ["SQL_LOOKUP", "Converter", "PgType", "TypeCatalog"]

Converter = Callable[[str], Any]

SQL_LOOKUP = "select oid, typname, typcategory, typelem, typbasetype, typdelim from pg_type where oid = any(%s)"

# orjson >= 3.9: a Fragment is written into the output as it is, so numeric
# keeps PostgreSQL's exact digits and json/jsonb need no parse-and-encode.
_Fragment = orjson.Fragment


@dataclass(frozen=True, slots=True)
class PgType:
    """One row of pg_type, as far as conversion needs it."""

    oid: int
    name: str  # typname: what `columns[].type` shows (int4, _text, ...)
    category: str  # typcategory: 'A' array, 'N' numeric, 'U' user-defined, ...
    element_oid: int = 0  # typelem, for arrays
    base_oid: int = 0  # typbasetype, for domains
    delimiter: str = ","  # typdelim; box uses ';'


# -- scalar rules (json_categorize_type: bool, numeric, date/timestamp, json) --


def _bool(text: str) -> bool:
    return text == "t"


def _float(text: str) -> float | str:
    # NaN, Infinity and -Infinity are not JSON numbers, so to_jsonb makes them
    # strings. Adding 0.0 turns -0 into 0, as the jsonb numeric does.
    if text[-1] in "yN":
        return text
    return float(text) + 0.0


def _numeric(text: str) -> object:
    if text[-1] in "yN":  # NaN, Infinity, -Infinity (PostgreSQL 14+)
        return text
    return _Fragment(text)


def _timestamp(text: str) -> str:
    # EncodeDateTime with USE_XSD_DATES: 'T' instead of the space; fractional
    # digits, " BC" and 'infinity' are the same as in ISO output.
    return text.replace(" ", "T", 1)


def _timestamptz(text: str) -> str:
    # XSD offsets always carry minutes: +00 -> +00:00; +05:30 and +05:53:28
    # (local mean time) are unchanged. The time part holds no '+' or '-', so
    # the offset starts at the last sign.
    if text.endswith("+00"):  # TimeZone=UTC
        return text.replace(" ", "T", 1) + ":00"
    if " " not in text:  # infinity, -infinity
        return text
    suffix = ""
    if text.endswith(" BC"):
        text, suffix = text[:-3], " BC"
    sign = max(text.rfind("+"), text.rfind("-"))
    offset = text[sign:]
    if len(offset) == 3:
        offset += ":00"
    return text[:sign].replace(" ", "T", 1) + offset + suffix


_SCALARS: dict[int, Converter] = {
    16: _bool,
    20: int,
    21: int,
    23: int,
    700: _float,
    701: _float,
    1700: _numeric,
    114: _Fragment,  # json: valid JSON text already; jsonb parses it the same
    3802: _Fragment,  # jsonb: its text output is JSON
    1114: _timestamp,
    1184: _timestamptz,
    # date, time and timetz are not special in json_categorize_type: their
    # ISO text output is what to_jsonb gives, as is everything else's.
}


# -- arrays --

_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ARRAY_TOKENS: dict[str, re.Pattern[str]] = {}


def _array_tokens(delimiter: str) -> re.Pattern[str]:
    """Tokens of array_out text: 1 quoted element, 2 brace, 3 delimiter, 4 unquoted element."""
    pattern = _ARRAY_TOKENS.get(delimiter)
    if pattern is None:
        d = re.escape(delimiter)
        pattern = re.compile(rf'"((?:[^"\\]|\\.)*)"|([{{}}])|({d})|([^{{}}"{d}]+)', re.DOTALL)
        _ARRAY_TOKENS[delimiter] = pattern
    return pattern


def _array_converter(element: Converter, delimiter: str) -> Converter:
    """Build the converter of an array type from its element type's."""
    tokens = _array_tokens(delimiter)

    def convert(text: str) -> list[Any]:
        first = text[:1]
        if first == "[":  # "[0:1]={1,2}": to_jsonb ignores lower bounds
            text = text[text.index("=") + 1 :]
        elif first != "{":  # int2vector and oidvector print "1 2"
            return [element(item) for item in text.split()]
        if text.count("{") == 1 and '"' not in text:
            # One dimension, nothing quoted: most arrays, ~4x faster than the scanner.
            body = text[1:-1]
            if not body:
                return []
            return [None if item == "NULL" else element(item) for item in body.split(delimiter)]
        return _parse_array(text, tokens, element)

    return convert


def _parse_array(text: str, tokens: re.Pattern[str], element: Converter) -> list[Any]:
    """Parse array_out text with nested dimensions and quoted elements."""
    root: list[Any] = []
    stack: list[list[Any]] = []
    for m in tokens.finditer(text):
        kind = m.lastindex
        if kind == 1:  # quoted: never NULL; \" and \\ escaped
            value = m[1]
            stack[-1].append(element(_ESCAPE.sub(r"\1", value) if "\\" in value else value))
        elif kind == 2:
            if m[2] == "{":
                inner: list[Any] = []
                if stack:
                    stack[-1].append(inner)
                else:
                    root = inner
                stack.append(inner)
            else:
                stack.pop()
        elif kind == 4:
            value = m[4].strip()  # array_out adds no blanks, array_in allows them
            if value:
                stack[-1].append(None if value.upper() == "NULL" else element(value))
    return root


# -- the catalog --


def _builtins() -> dict[int, PgType]:
    # (oid, typname, typcategory, array oid); typelem 0, typdelim ',' unless noted.
    scalars = [
        (16, "bool", "B", 1000),
        (17, "bytea", "U", 1001),
        (18, "char", "Z", 1002),
        (19, "name", "S", 1003),
        (20, "int8", "N", 1016),
        (21, "int2", "N", 1005),
        (23, "int4", "N", 1007),
        (25, "text", "S", 1009),
        (26, "oid", "N", 1028),
        (114, "json", "U", 199),
        (142, "xml", "U", 143),
        (600, "point", "G", 1017),
        (603, "box", "G", 1020),
        (650, "cidr", "I", 651),
        (700, "float4", "N", 1021),
        (701, "float8", "N", 1022),
        (790, "money", "N", 791),
        (829, "macaddr", "U", 1040),
        (869, "inet", "I", 1041),
        (1042, "bpchar", "S", 1014),
        (1043, "varchar", "S", 1015),
        (1082, "date", "D", 1182),
        (1083, "time", "D", 1183),
        (1114, "timestamp", "D", 1115),
        (1184, "timestamptz", "D", 1185),
        (1186, "interval", "T", 1187),
        (1266, "timetz", "D", 1270),
        (1560, "bit", "V", 1561),
        (1562, "varbit", "V", 1563),
        (1700, "numeric", "N", 1231),
        (2950, "uuid", "U", 2951),
        (3802, "jsonb", "U", 3807),
    ]
    elem = {19: 18, 600: 701, 603: 600}  # not arrays to to_jsonb (fixed length), but pg_type says so
    delim = {603: ";"}
    types: dict[int, PgType] = {}
    for oid, name, category, array_oid in scalars:
        d = delim.get(oid, ",")
        types[oid] = PgType(oid, name, category, elem.get(oid, 0), 0, d)
        types[array_oid] = PgType(array_oid, "_" + name, "A", oid, 0, d)
    return types


_BUILTINS = _builtins()


class TypeCatalog:
    """The types of one database that values were seen in, and a converter per type.

    Built-in types are known from the start; look the others up with
    SQL_LOOKUP (see the module docstring). One catalog serves every relation
    of its database; it is not thread-safe."""

    __slots__ = ("_converters", "_types")

    SQL_LOOKUP: ClassVar[str] = SQL_LOOKUP

    def __init__(self) -> None:
        self._types: dict[int, PgType] = dict(_BUILTINS)
        self._converters: dict[int, Converter] = {}

    def get(self, oid: int) -> PgType | None:
        """Return the type `oid`, or None when it was never added."""
        return self._types.get(oid)

    def __contains__(self, oid: object) -> bool:
        return oid in self._types

    def missing(self, oids: Iterable[int]) -> set[int]:
        """Return the oids among `oids`, their array elements and domain bases that are not known yet.

        Look them up with SQL_LOOKUP and add_rows(), then ask again: the new
        rows may name element or base types that are not known either."""
        out: set[int] = set()
        seen: set[int] = set()
        todo = list(oids)
        while todo:
            oid = todo.pop()
            if oid in seen or not oid:
                continue
            seen.add(oid)
            t = self._types.get(oid)
            if t is None:
                out.add(oid)
                continue
            if t.base_oid:
                todo.append(t.base_oid)
            if t.category == "A" and t.element_oid:
                todo.append(t.element_oid)
        return out

    def add(self, pg_type: PgType) -> None:
        """Add or replace one type."""
        if self._types.get(pg_type.oid) != pg_type:
            self._types[pg_type.oid] = pg_type
            self._converters.clear()  # arrays and domains may have been built on the old one

    def add_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Add the rows SQL_LOOKUP returned: (oid, typname, typcategory, typelem, typbasetype, typdelim)."""
        for oid, name, category, element_oid, base_oid, delimiter in rows:
            self.add(PgType(int(oid), name, category, int(element_oid), int(base_oid), delimiter or ","))

    def converter(self, oid: int) -> Converter:
        """Return the function from the text of a non-NULL value of type `oid` to its JSON value.

        Types kept as text get `str` itself (callers may skip calling it). An
        unknown type, or an array or domain over one, converts as text until
        missing() has been resolved; such converters are not cached."""
        convert = self._converters.get(oid)
        if convert is None:
            convert, complete = self._build(oid, 0)
            if complete:
                self._converters[oid] = convert
        return convert

    def _build(self, oid: int, depth: int) -> tuple[Converter, bool]:
        """(converter, whether every type it depends on is known)."""
        t = self._types.get(oid)
        if t is None or depth > 32:  # unknown, or a cycle that pg_type cannot hold
            return str, False
        if t.base_oid:  # json_categorize_type looks through domains
            return self._build(t.base_oid, depth + 1)
        scalar = _SCALARS.get(oid)
        if scalar is not None:
            return scalar, True
        if t.category == "A" and t.element_oid:
            element, complete = self._build(t.element_oid, depth + 1)
            elem_type = self._types.get(t.element_oid)
            # array_out separates elements with the element type's typdelim
            delimiter = elem_type.delimiter if elem_type is not None else t.delimiter
            return _array_converter(element, delimiter), complete
        return str, True
