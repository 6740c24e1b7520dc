"""Property tests of the Postgres Changes params and filter parser (realtime_core.postgres_changes.filters).

parse_params() and parse_filter() answer every input with parsed values or a
SubscriptionParamsError / FilterParseError carrying upstream's text; validate()
answers None or a FilterError; the Python fast path of FilterEvaluator answers
booleans or None ("ask the database"), never an exception."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from realtime_core.postgres_changes.filters import (
    OPERATORS,
    ColumnInfo,
    Condition,
    FilterError,
    FilterEvaluator,
    FilterParseError,
    SubscriptionParams,
    SubscriptionParamsError,
    parse_filter,
    parse_params,
    validate,
)

from .strategies import awkward_text, deep_depths, json_values, mutated, nested, scalars

# -- filter strings --

digits = st.integers(1, 6000).map(lambda n: "9" * n)  # past int()'s 4300-digit limit too
values = st.one_of(
    awkward_text,
    digits,
    st.sampled_from(["null", "NULL", "true", "FALSE", "unknown", "", "1", "-0", "0x1F", "1e5", "a%b_c", "[a-z]+"]),
    st.uuids().map(str),
    awkward_text.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),  # PostgREST quoting
)
in_lists = st.lists(st.one_of(values, st.just("NULL"), st.just('"x,y"')), max_size=6).map(
    lambda items: "(" + ",".join(items) + ")"
)
ops = st.one_of(st.sampled_from(sorted(OPERATORS)), awkward_text)
columns_names = st.one_of(st.sampled_from(["id", "name", "flag", "uid", "n", "big", "small"]), awkward_text)


@st.composite
def segments(draw: st.DrawFn) -> str:
    col = draw(columns_names)
    op = draw(ops)
    value = draw(in_lists) if op == "in" and draw(st.booleans()) else draw(values)
    negate = "not." if draw(st.booleans()) else ""
    return f"{col}={negate}{op}.{value}"


filters = st.one_of(
    st.lists(segments(), min_size=1, max_size=4).map(",".join),
    st.lists(segments(), min_size=1, max_size=4)
    .map(",".join)
    .flatmap(lambda s: mutated(s.encode("utf-8", "surrogatepass")).map(lambda b: b.decode("utf-8", "replace"))),
    awkward_text,
)


def check_conditions(conditions: tuple[Condition, ...]) -> None:
    for cond in conditions:
        assert type(cond.column) is str
        assert cond.op in OPERATORS
        if cond.op == "in":
            assert isinstance(cond.value, tuple)
            assert all(v is None or type(v) is str for v in cond.value)
        else:
            assert type(cond.value) is str
        assert type(cond.stored_value) is str


@given(filters)
@example("id=in.(" + ",".join(["1"] * 1000) + ")")
@example('name=eq."unterminated')
@example("id=in.(\\")
def test_parse_filter(text: str) -> None:
    try:
        conditions = parse_filter(text)
    except FilterParseError as exc:
        assert str(exc).startswith("Error parsing `filter` params: ")
        return
    check_conditions(conditions)


# -- postgres_changes params --

params_values = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "event": st.one_of(st.sampled_from(["INSERT", "update", "*", "delete", "TRUNCATE"]), scalars),
            "schema": st.one_of(st.just("public"), st.just("*"), scalars),
            "table": st.one_of(st.just("todos"), st.just("*"), scalars),
            "filter": st.one_of(filters, scalars),
            "select": st.one_of(st.lists(st.one_of(columns_names, scalars), max_size=4), scalars),
            "user_token": awkward_text,
        },
    ),
    json_values,
    st.builds(nested, scalars, deep_depths, st.sampled_from(["list", "dict"])),
)


@given(params_values)
def test_parse_params(params: Any) -> None:
    try:
        parsed = parse_params(params)
    except SubscriptionParamsError as exc:
        assert str(exc)
        return
    assert isinstance(parsed, SubscriptionParams)
    assert parsed.event in ("INSERT", "UPDATE", "DELETE", "*")
    assert type(parsed.schema) is str and type(parsed.table) is str
    check_conditions(parsed.filters)
    assert parsed.select is None or all(type(c) is str for c in parsed.select)


# -- validation and the Python fast path --

COLUMNS = {
    "id": ColumnInfo("id", 20, "pg_catalog", "int8", "bigint", "N", 1),
    "small": ColumnInfo("small", 21, "pg_catalog", "int2", "smallint", "N", 2),
    "n": ColumnInfo("n", 23, "pg_catalog", "int4", "integer", "N", 3),
    "flag": ColumnInfo("flag", 16, "pg_catalog", "bool", "boolean", "B", 4),
    "uid": ColumnInfo("uid", 2950, "pg_catalog", "uuid", "uuid", "U", 5),
    "name": ColumnInfo("name", 25, "pg_catalog", "text", "text", "S", 6),
    "big": ColumnInfo("big", 1700, "pg_catalog", "numeric", "numeric", "N", 7),
}
wal_text = st.one_of(st.none(), values, st.integers(-(2**70), 2**70).map(str))
rows = st.lists(st.dictionaries(st.sampled_from(sorted(COLUMNS)), wal_text, max_size=len(COLUMNS)), max_size=4)


def parsed_conditions(text: str) -> tuple[Condition, ...]:
    try:
        return parse_filter(text)
    except FilterParseError:
        return ()


@given(filters.map(parsed_conditions), st.lists(columns_names, max_size=3), rows)
@example((Condition("id", "eq", "9" * 5000),), [], [{"id": "1"}])  # int() refuses more than 4300 digits
@example((Condition("n", "in", ("1", "9" * 5000)),), [], [{"n": "1"}])
@example((Condition("id", "gt", "1"),), [], [{"id": "9" * 5000}])
def test_validate_and_fast_path(conditions: tuple[Condition, ...], select: list[str], changes: list[Any]) -> None:
    try:
        validate(conditions, select or None, COLUMNS, COLUMNS)
    except FilterError as exc:
        assert str(exc) and exc.sqlstate == "P0001"
    evaluator = FilterEvaluator(conditions, COLUMNS)
    results = evaluator.evaluate_in_python(changes)
    if results is not None:
        assert len(results) == len(changes)
        assert all(len(r) == len(conditions) and all(type(b) is bool for b in r) for r in results)
    for change in changes:
        evaluator.params(change)  # the parameters of the one-change query, for any change
