"""Tests for realtime_core.postgres_changes.values: text values as upstream's `to_jsonb(value::type)`
(docs/protocol.md §6.5)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from conftest import scratch_database
from psycopg import sql

from realtime_core.postgres_changes.values import SQL_LOOKUP, PgType, TypeCatalog


def as_json(value: Any) -> Any:
    """What a client parses from the JSON we send."""
    return orjson.loads(orjson.dumps(value))


def convert(oid: int, text: str) -> Any:
    return as_json(TypeCatalog().converter(oid)(text))


class TestScalars:
    @pytest.mark.parametrize(
        ("oid", "text", "expected"),
        [
            (21, "-32768", -32768),
            (23, "2147483647", 2147483647),
            (20, "-9223372036854775808", -9223372036854775808),
            (16, "t", True),
            (16, "f", False),
            (700, "0.1", 0.1),
            (701, "1e-300", 1e-300),
            (701, "NaN", "NaN"),
            (701, "Infinity", "Infinity"),
            (700, "-Infinity", "-Infinity"),
            (1700, "NaN", "NaN"),
            (1700, "-Infinity", "-Infinity"),
            (25, 'a "b" \\ é', 'a "b" \\ é'),
            (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            (26, "12345", "12345"),  # oid is not a number to to_jsonb
            (790, "$1.50", "$1.50"),
            (17, "\\x00ff", "\\x00ff"),
            (1082, "0044-03-15 BC", "0044-03-15 BC"),
            (1083, "12:00:00.5", "12:00:00.5"),
            (1266, "12:00:00+00", "12:00:00+00"),  # timetz is not special to to_jsonb
            (1186, "1 day 02:00:00", "1 day 02:00:00"),
        ],
    )
    def test_value(self, oid, text, expected):
        assert convert(oid, text) == expected

    def test_float_minus_zero_becomes_zero(self):
        assert orjson.dumps(TypeCatalog().converter(701)("-0")) == b"0.0"

    @pytest.mark.parametrize("text", ["3.14159265358979323846264338327950288", "1.50000", "-0.001", "0", "1"])
    def test_numeric_keeps_its_digits(self, text):
        assert orjson.dumps(TypeCatalog().converter(1700)(text)) == text.encode()

    @pytest.mark.parametrize("oid", [114, 3802])
    def test_json_is_embedded(self, oid):
        text = '{"a": [1, 2.50, {"b": null}], "c": "\\u00e9"}'
        assert orjson.dumps(TypeCatalog().converter(oid)(text)) == text.encode()
        assert convert(oid, text) == {"a": [1, 2.5, {"b": None}], "c": "é"}

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-01-01 12:00:00", "2026-01-01T12:00:00"),
            ("2026-01-01 12:00:00.123", "2026-01-01T12:00:00.123"),
            ("0044-03-15 12:00:00 BC", "0044-03-15T12:00:00 BC"),
            ("10000-01-01 00:00:00", "10000-01-01T00:00:00"),
            ("infinity", "infinity"),
            ("-infinity", "-infinity"),
        ],
    )
    def test_timestamp(self, text, expected):
        assert convert(1114, text) == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-01-01 12:00:00+00", "2026-01-01T12:00:00+00:00"),
            ("2026-01-01 12:00:00.123456+00", "2026-01-01T12:00:00.123456+00:00"),
            ("2026-01-01 17:30:00+05:30", "2026-01-01T17:30:00+05:30"),
            ("1900-01-01 05:21:10+05:21:10", "1900-01-01T05:21:10+05:21:10"),
            ("2026-01-01 07:00:00-05", "2026-01-01T07:00:00-05:00"),
            ("0044-03-15 12:00:00+00 BC", "0044-03-15T12:00:00+00:00 BC"),
            ("1801-12-31 19:03:58-04:56:02 BC", "1801-12-31T19:03:58-04:56:02 BC"),
            ("infinity", "infinity"),
            ("-infinity", "-infinity"),
        ],
    )
    def test_timestamptz(self, text, expected):
        assert convert(1184, text) == expected


class TestArrays:
    @pytest.mark.parametrize(
        ("oid", "text", "expected"),
        [
            (1007, "{}", []),
            (1007, "{1,2,NULL}", [1, 2, None]),
            (1007, "[0:1]={1,2}", [1, 2]),
            (1007, "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
            (1007, "[1:1][2:3]={{1,2}}", [[1, 2]]),
            (1007, "{{{1}},{{2}}}", [[[1]], [[2]]]),
            (1000, "{t,f,NULL}", [True, False, None]),
            (
                1009,
                r'{"a,b","c\"d","e\\f","{x}","",NULL,"NULL",null,"with space",é}',
                ["a,b", 'c"d', "e\\f", "{x}", "", None, "NULL", None, "with space", "é"],
            ),
            (1009, r'{{"a b",NULL},{"}",""}}', [["a b", None], ["}", ""]]),
            (1185, '{"2026-01-01 12:00:00+00",NULL,infinity}', ["2026-01-01T12:00:00+00:00", None, "infinity"]),
            (3807, r'{"{\"a\": [1, 2]}","\"s\"",NULL}', [{"a": [1, 2]}, "s", None]),
            (1231, "{1.50,NaN,-0.001}", [1.5, "NaN", -0.001]),
            (1022, "{NaN,1e-300,-Infinity}", ["NaN", 1e-300, "-Infinity"]),
            (1020, "{(1,1),(0,0);(2,2),(1,1)}", ["(1,1),(0,0)", "(2,2),(1,1)"]),
        ],
    )
    def test_array(self, oid, text, expected):
        assert convert(oid, text) == expected

    def test_numeric_array_keeps_digits(self):
        assert orjson.dumps(TypeCatalog().converter(1231)("{1.50,NULL,0.000}")) == b"[1.50,null,0.000]"

    def test_vector_types(self):
        catalog = TypeCatalog()
        catalog.add_rows([(22, "int2vector", "A", 21, 0, ","), (30, "oidvector", "A", 26, 0, ",")])
        assert as_json(catalog.converter(22)("1 2")) == [1, 2]
        assert as_json(catalog.converter(30)("")) == []
        assert as_json(catalog.converter(30)("1 2")) == ["1", "2"]


class TestCatalog:
    def test_builtin_names(self):
        catalog = TypeCatalog()
        assert catalog.get(23) == PgType(23, "int4", "N", 0, 0, ",")
        assert catalog.get(1007) == PgType(1007, "_int4", "A", 23, 0, ",")
        assert catalog.get(1185).name == "_timestamptz"
        assert 3807 in catalog
        assert catalog.get(99999) is None

    def test_text_types_convert_with_str(self):
        catalog = TypeCatalog()
        assert catalog.converter(25) is str
        assert catalog.converter(2950) is str

    def test_converters_are_cached(self):
        catalog = TypeCatalog()
        assert catalog.converter(1007) is catalog.converter(1007)

    def test_sql_lookup(self):
        assert TypeCatalog.SQL_LOOKUP == SQL_LOOKUP
        assert "where oid = any(%s)" in SQL_LOOKUP

    def test_missing_walks_elements_and_bases(self):
        catalog = TypeCatalog()
        assert catalog.missing([23, 1009, 0]) == set()
        assert catalog.missing([16500, 23]) == {16500}
        catalog.add_rows([(16500, "_mood", "A", 16499, 0, ",")])
        assert catalog.missing([16500]) == {16499}
        catalog.add_rows([(16499, "mood", "E", 0, 0, ",")])
        assert catalog.missing([16500]) == set()

    def test_unknown_types_convert_as_text_until_added(self):
        catalog = TypeCatalog()
        catalog.add(PgType(16600, "_posint", "A", 16601))
        assert catalog.converter(16600)("{1,2}") == ["1", "2"]  # element not known yet: not cached
        assert catalog.converter(16602) is str
        catalog.add(PgType(16601, "posint", "N", 0, 23))  # a domain over int4
        assert catalog.converter(16600)("{1,2}") == [1, 2]
        assert catalog.converter(16601)("5") == 5

    def test_domain_over_array(self):
        catalog = TypeCatalog()
        catalog.add(PgType(16700, "ints", "A", 0, 1007))
        assert catalog.converter(16700)("{1,NULL}") == [1, None]

    def test_replacing_a_type_drops_cached_converters(self):
        catalog = TypeCatalog()
        catalog.add(PgType(16800, "thing", "E"))
        catalog.add(PgType(16801, "_thing", "A", 16800))
        assert catalog.converter(16801)("{1}") == ["1"]
        catalog.add(PgType(16800, "thing", "N", 0, 23))
        assert catalog.converter(16801)("{1}") == [1]


# -- against a real server --


@pytest.fixture(scope="module")
def db_dsn(pg_dsn: str) -> Iterator[str]:
    """A database of this module's own, dropped at the end."""
    with scratch_database(pg_dsn, "rt_values") as dsn:
        yield dsn


# (type, literal): what to_jsonb must agree with.
CASES = [
    ("int2", "-32768"),
    ("int2", "32767"),
    ("int4", "-2147483648"),
    ("int4", "2147483647"),
    ("int8", "-9223372036854775808"),
    ("int8", "9223372036854775807"),
    ("float4", "NaN"),
    ("float4", "Infinity"),
    ("float4", "0.1"),
    ("float4", "3.4028235e38"),
    ("float4", "1e-45"),
    ("float4", "-0"),
    ("float8", "NaN"),
    ("float8", "Infinity"),
    ("float8", "-Infinity"),
    ("float8", "1e-300"),
    ("float8", "5e-324"),
    ("float8", "0.1"),
    ("float8", "1e300"),
    ("float8", "-0"),
    ("float8", "123456789.123456789"),
    ("numeric", "3.14159265358979323846264338327950288419716939937510"),
    ("numeric", "1.50000"),
    ("numeric", "0.000"),
    ("numeric", "-0.001"),
    ("numeric", "1e20"),
    ("numeric", "123456789012345678901234567890.000000000000000000001"),
    ("numeric", "NaN"),
    ("numeric", "Infinity"),
    ("numeric", "-Infinity"),
    ("numeric(10,2)", "9.9"),
    ("bool", "t"),
    ("bool", "f"),
    ("text", 'it\'s "quoted" \\back\\slash'),
    ("text", "héllo 🎉 — 日本\n\ttab"),
    ("text", ""),
    ("varchar(10)", "v"),
    ("bpchar(5)", "ab"),
    ('"char"', "c"),
    ("name", "a name"),
    ("json", '{"b": [1, 2.50, {"c": null}], "a": "\\u00e9\\n", "a2": "é"}'),
    ("json", '  [1, "x", true, null, 1.0e2]  '),
    ("json", '{"dup": 1, "dup": 2}'),
    ("json", '"str"'),
    ("json", "42"),
    ("jsonb", '{"nested": {"deep": [1, {"x": "\\u2603"}]}, "n": 1.50, "e": "\\ud83c\\udf89"}'),
    ("jsonb", "null"),
    ("jsonb", "[]"),
    ("timestamp", "2026-01-01 12:00:00"),
    ("timestamp", "2026-01-01 12:00:00.123"),
    ("timestamp", "2026-01-01 12:00:00.123456"),
    ("timestamp", "0044-03-15 12:00:00.25 BC"),
    ("timestamp", "10000-01-01 00:00:00"),
    ("timestamp", "infinity"),
    ("timestamp", "-infinity"),
    ("timestamptz", "2026-01-01 12:00:00+00"),
    ("timestamptz", "2026-01-01 12:00:00.5+05:30"),
    ("timestamptz", "0044-03-15 12:00:00+00 BC"),
    ("timestamptz", "infinity"),
    ("timestamptz", "-infinity"),
    ("date", "2026-01-01"),
    ("date", "0044-03-15 BC"),
    ("date", "infinity"),
    ("time", "12:34:56.789"),
    ("timetz", "12:00:00+00"),
    ("timetz", "12:00:00.5-05:30"),
    ("timetz", "12:00:00+05:30:15"),
    ("timetz", "23:59:59-14"),
    ("interval", "1 year 2 mons 3 days 04:05:06.7"),
    ("interval", "-1 day"),
    ("interval", "00:00:00.000001"),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("bytea", "\\x00ff"),
    ("inet", "192.168.0.1/24"),
    ("inet", "::1"),
    ("cidr", "10.0.0.0/8"),
    ("macaddr", "08:00:2b:01:02:03"),
    ("bit(4)", "1010"),
    ("varbit", "101"),
    ("money", "1.50"),
    ("oid", "12345"),
    ("xml", "<a>x</a>"),
    ("point", "(1,2)"),
    ("box", "(1,1),(0,0)"),
    ("int2vector", "1 2"),
    ("mood", "happy"),
    ("posint", "5"),
    ("label", "a label"),
    ("ints", "{1,NULL}"),
    ("int4[]", "{1,2,NULL}"),
    ("int4[]", "{}"),
    ("int4[]", "[0:1]={1,2}"),
    ("int4[]", "{{1,2},{3,4}}"),
    ("int4[]", "{{{1}},{{2}}}"),
    ("text[]", r'{"a,b","c\"d","e\\f","{x}","",NULL,"NULL","null",plain,"with space","é🎉"}'),
    ("text[]", "{}"),
    ("text[]", r'{{"a b",NULL},{"}",""}}'),
    ("timestamptz[]", '{"2026-01-01 12:00:00+00","2026-01-01 12:00:00.5+00",NULL,infinity}'),
    ("timestamp[]", '{"2026-01-01 12:00:00","0044-03-15 12:00:00 BC"}'),
    ("date[]", '{2026-01-01,"0044-03-15 BC"}'),
    ("jsonb[]", r'{"{\"a\": [1, 2]}","\"s\"",NULL,"1.50"}'),
    ("json[]", r'{"{\"a\":1}","[1, 2]"}'),
    ("numeric[]", "{1.50,NaN,-0.001,3.14159265358979323846}"),
    ("bool[]", "{t,f,NULL}"),
    ("float8[]", "{NaN,1e-300,0.1,-Infinity}"),
    ("float4[]", "{0.1,Infinity}"),
    ("int8[]", "{-9223372036854775808,9223372036854775807}"),
    ("box[]", "{(1,1),(0,0);(2,2),(1,1)}"),
    ("uuid[]", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
    ("bytea[]", r'{"\\x00ff",NULL}'),
    ("interval[]", '{"1 day","-01:00:00"}'),
    ("mood[]", "{sad,happy}"),
    ("posint[]", "{1,2}"),
    ("varchar[]", '{"a b",c}'),
    ("bpchar[]", "{x}"),
]

NUMERIC_TYPES = {"numeric", "numeric(10,2)", "numeric[]"}
FLOAT_TYPES = {"float4", "float8", "float4[]", "float8[]"}


def _tokens(text: str) -> Any:
    """Parse JSON keeping every number's text."""
    return json.loads(text, parse_int=lambda s: ("number", s), parse_float=lambda s: ("number", s))


@pytest.mark.pg
def test_converters_match_to_jsonb(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'; set datestyle = 'ISO'; set extra_float_digits = 3")
        conn.execute("create type mood as enum ('sad', 'happy')")
        conn.execute("create domain posint as int4 check (value > 0)")
        conn.execute("create domain label as text")
        conn.execute("create domain ints as int4[]")
        catalog = TypeCatalog()
        failures = []
        for type_name, literal in CASES:
            # format('%s') calls the type's output function, as pgoutput does;
            # a ::text cast may not (bool gives 'true', inet adds the netmask).
            query = sql.SQL(
                "select format('%s', v), to_jsonb(v)::text, pg_typeof(v)::oid from (select {}::{} as v) s"
            ).format(sql.Literal(literal), sql.SQL(type_name))
            try:
                text, expected_json, oid = conn.execute(query).fetchone()
            except psycopg.errors.FeatureNotSupported:
                continue  # xml on a server built without libxml (the embedded one)
            for _ in range(4):
                missing = catalog.missing([oid])
                if not missing:
                    break
                catalog.add_rows(conn.execute(SQL_LOOKUP, (list(missing),)).fetchall())
            assert not catalog.missing([oid])
            ours = orjson.dumps(catalog.converter(oid)(text))
            if type_name in NUMERIC_TYPES:
                ok = _tokens(ours) == _tokens(expected_json)  # the same digits
            elif type_name in FLOAT_TYPES:  # the same doubles: jsonb spells 1e300 with 301 digits
                ok = json.loads(ours, parse_int=float) == json.loads(expected_json, parse_int=float)
            else:
                ok = orjson.loads(ours) == json.loads(expected_json)
            if not ok:
                failures.append((type_name, literal, text, expected_json, ours.decode()))
        assert failures == []


@pytest.mark.pg
def test_builtins_match_pg_type(db_dsn: str) -> None:
    catalog = TypeCatalog()
    builtins = [oid for oid in range(10000) if oid in catalog]
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(SQL_LOOKUP, (builtins,)).fetchall()
    assert len(rows) == len(builtins)
    for oid, name, category, element_oid, base_oid, delimiter in rows:
        assert catalog.get(oid) == PgType(oid, name, category, element_oid, base_oid, delimiter)
