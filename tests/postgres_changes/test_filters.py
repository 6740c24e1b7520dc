"""Tests of the postgres_changes/filters package: params and filter parsing (pure), then
validation and evaluation against a real PostgreSQL (marker `pg`).

Expected texts are upstream's (RT lib/extensions/postgres_cdc_rls/subscriptions.ex,
functions/subscription_check_filters.sql); Elixir `inspect` outputs were taken
from Elixir itself."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from conftest import scratch_database

from realtime_core.postgres_changes.filters import (
    ColumnInfo,
    Condition,
    FilterError,
    FilterEvaluator,
    FilterParseError,
    SubscriptionParams,
    SubscriptionParamsError,
    conditions_match,
    elixir_inspect,
    load_columns,
    parse_filter,
    parse_params,
    validate,
    validate_subscription,
    validate_values,
)

NO_PARAMS = "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: "


def parse_error(text: str) -> str:
    with pytest.raises(FilterParseError) as info:
        parse_filter(text)
    return str(info.value)


def params_error(params: object) -> str:
    with pytest.raises(SubscriptionParamsError) as info:
        parse_params(params)
    return str(info.value)


# ---------------------------------------------------------------------------
# parse_filter


class TestOperators:
    """Each of the 13 operators of realtime.equality_op parses, with and without `not.`."""

    @pytest.mark.parametrize(
        "op", ["eq", "neq", "lt", "lte", "gt", "gte", "like", "ilike", "match", "imatch", "isdistinct"]
    )
    def test_scalar_operator_keeps_column_op_and_value(self, op):
        assert parse_filter(f"col={op}.v1") == (Condition("col", op, "v1", False),)

    @pytest.mark.parametrize(
        "op", ["eq", "neq", "lt", "lte", "gt", "gte", "like", "ilike", "match", "imatch", "isdistinct"]
    )
    def test_not_prefix_negates(self, op):
        assert parse_filter(f"col=not.{op}.v1") == (Condition("col", op, "v1", True),)

    def test_in_becomes_a_tuple_of_elements(self):
        assert parse_filter("id=in.(1,2,3)") == (Condition("id", "in", ("1", "2", "3")),)

    def test_not_in(self):
        assert parse_filter("id=not.in.(1,2)") == (Condition("id", "in", ("1", "2"), True),)

    @pytest.mark.parametrize("value", ["null", "true", "false", "unknown"])
    def test_is_keywords(self, value):
        assert parse_filter(f"c=is.{value}") == (Condition("c", "is", value),)

    @pytest.mark.parametrize("value,expected", [("NULL", "null"), ("True", "true"), ("UNKNOWN", "unknown")])
    def test_is_keywords_are_case_insensitive(self, value, expected):
        assert parse_filter(f"c=is.{value}") == (Condition("c", "is", expected),)

    def test_not_is_null(self):
        assert parse_filter("c=not.is.null") == (Condition("c", "is", "null", True),)

    def test_is_with_other_value_is_left_for_validation(self):
        # Upstream's trigger rejects it at insert time, not the parser.
        assert parse_filter("c=is.maybe") == (Condition("c", "is", "maybe"),)

    def test_value_keeps_further_dots_and_equal_signs(self):
        assert parse_filter("url=eq.a.b=c") == (Condition("url", "eq", "a.b=c"),)

    def test_empty_value_is_allowed(self):
        assert parse_filter("name=eq.") == (Condition("name", "eq", ""),)

    def test_braces_do_not_protect_commas(self):
        # An array literal with commas must be quoted, as with upstream.
        assert parse_error("tags=eq.{1,2}") == 'Error parsing `filter` params: ["2}"]'
        assert parse_filter('tags=eq."{1,2}"') == (Condition("tags", "eq", "{1,2}"),)

    def test_column_is_kept_verbatim(self):
        assert parse_filter("some col=eq.1") == (Condition("some col", "eq", "1"),)


class TestSplitting:
    """Conditions are split on commas outside double quotes and parentheses, and ANDed."""

    def test_conditions_in_order(self):
        assert parse_filter("id=gt.0,id=lt.100") == (
            Condition("id", "gt", "0"),
            Condition("id", "lt", "100"),
        )

    def test_spaces_around_conditions_are_trimmed(self):
        assert parse_filter("  a=eq.1 ,  b=eq.2  ") == (Condition("a", "eq", "1"), Condition("b", "eq", "2"))

    def test_comma_inside_parentheses_does_not_split(self):
        assert parse_filter("id=in.(1,2),name=eq.x") == (
            Condition("id", "in", ("1", "2")),
            Condition("name", "eq", "x"),
        )

    def test_comma_inside_quotes_does_not_split(self):
        assert parse_filter('name=eq."a,b",x=eq.1') == (Condition("name", "eq", "a,b"), Condition("x", "eq", "1"))

    def test_parenthesis_inside_quotes_does_not_count(self):
        assert parse_filter('name=eq.")(",x=eq.1') == (Condition("name", "eq", ")("), Condition("x", "eq", "1"))

    def test_quote_in_the_middle_of_a_value_does_not_open_quoting(self):
        # Upstream opens a quoted run only right after `.`, `(` or `,`.
        assert parse_filter('name=eq.a"b,x=eq.1') == (Condition("name", "eq", 'a"b'), Condition("x", "eq", "1"))

    def test_unclosed_quote_swallows_the_rest(self):
        assert parse_filter('a=eq."x,b=eq.1') == (Condition("a", "eq", '"x,b=eq.1'),)

    @pytest.mark.parametrize("text", ["", "   ", "\t\n"])
    def test_empty_or_whitespace_filter_is_no_filter(self, text):
        assert parse_filter(text) == ()

    @pytest.mark.parametrize("text", ["a=eq.1,", ",a=eq.1", "a=eq.1,,b=eq.2", "a=eq.1, ,b=eq.2"])
    def test_empty_segment_is_refused(self, text):
        assert parse_error(text) == (
            "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)"
        )


class TestQuoting:
    """Values may be PostgREST double-quoted; quotes and escapes are removed server-side."""

    def test_quoted_value_is_unquoted(self):
        assert parse_filter('name=eq."hello world"') == (Condition("name", "eq", "hello world"),)

    def test_escaped_quote_and_backslash(self):
        assert parse_filter(r'name=eq."a\"b\\c"') == (Condition("name", "eq", 'a"b\\c'),)

    def test_quoted_value_with_text_after_the_closing_quote_is_kept_verbatim(self):
        assert parse_filter('name=eq."a"b') == (Condition("name", "eq", '"a"b'),)

    def test_quoted_is_keyword(self):
        assert parse_filter('c=is."null"') == (Condition("c", "is", "null"),)

    def test_backslash_outside_quotes_is_kept(self):
        assert parse_filter(r"name=like.a\%") == (Condition("name", "like", r"a\%"),)

    def test_realtime_js_builder_output(self):
        # postgresChangesFilter().eq('name', 'a,b').in('id', ['x y', 'a"b', ' s']).not('t', 'like', 'q\\')
        text = r'name=eq."a,b",id=in.(x y,"a\"b"," s"),t=not.like."q\\"'
        assert parse_filter(text) == (
            Condition("name", "eq", "a,b"),
            Condition("id", "in", ("x y", 'a"b', " s")),
            Condition("t", "like", "q\\", True),
        )


class TestInLists:
    """`in.(...)` elements are read as PostgreSQL reads the array literal upstream builds."""

    def test_must_be_wrapped_in_parentheses(self):
        assert (
            parse_error("id=in.1,2")
            == "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
        )

    def test_missing_closing_parenthesis(self):
        assert (
            parse_error("id=in.(1,2")
            == "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"
        )

    def test_empty_list(self):
        assert parse_filter("id=in.()") == (Condition("id", "in", ()),)

    def test_quoted_elements_keep_commas_and_spaces(self):
        assert parse_filter('c=in.("a,b", " c ")') == (Condition("c", "in", ("a,b", " c ")),)

    def test_unquoted_elements_are_trimmed_but_keep_inner_spaces(self):
        assert parse_filter("c=in.( New York , Oslo)") == (Condition("c", "in", ("New York", "Oslo")),)

    def test_unquoted_null_is_a_null_element(self):
        assert parse_filter('c=in.(a,NULL,null,"null")') == (Condition("c", "in", ("a", None, None, "null")),)

    def test_backslash_escapes_outside_quotes(self):
        assert parse_filter(r"c=in.(a\,b,c)") == (Condition("c", "in", ("a,b", "c")),)

    def test_empty_quoted_element(self):
        assert parse_filter('c=in.("",a)') == (Condition("c", "in", ("", "a")),)

    @pytest.mark.parametrize("inner", ["a,", ",a", "a,,b", 'a"b', '"a"b', '"a', "{a}", "a\\"])
    def test_malformed_list_is_refused_as_postgresql_would(self, inner):
        assert parse_error(f"c=in.({inner})") == (
            'Error parsing `filter` params: malformed array literal: "{' + inner + '}"'
        )

    def test_stored_value_is_the_array_literal(self):
        [cond] = parse_filter('c=in.(a,"b,c",NULL,"null","",x\\"y)')
        assert cond.stored_value == '{a,"b,c",NULL,"null","","x\\"y"}'
        assert parse_filter("c=in.(" + cond.stored_value[1:-1] + ")") == (cond,)

    def test_more_than_100_values_parse_and_fail_validation(self):
        [cond] = parse_filter("id=in.(" + ",".join(str(i) for i in range(101)) + ")")
        with pytest.raises(FilterError, match=r"^too many values for `in` filter. Maximum 100$"):
            validate([cond], None, {"id": INT4}, {"id"})

    def test_100_values_are_allowed(self):
        [cond] = parse_filter("id=in.(" + ",".join(str(i) for i in range(100)) + ")")
        validate([cond], None, {"id": INT4}, {"id"})


class TestParseErrors:
    """Malformed conditions report upstream's texts, with Elixir's inspect of the parts."""

    def test_unknown_operator(self):
        assert parse_error("subject=foo.hey") == 'Error parsing `filter` params: ["foo", "hey"]'

    def test_no_equal_sign(self):
        assert parse_error("undefined") == 'Error parsing `filter` params: ["undefined"]'

    def test_no_dot_after_operator(self):
        assert parse_error("id=eq") == 'Error parsing `filter` params: ["eq"]'

    def test_not_without_operator(self):
        assert parse_error("id=not.eq") == 'Error parsing `filter` params: ["eq"]'

    def test_operator_is_case_sensitive(self):
        assert parse_error("id=EQ.1") == 'Error parsing `filter` params: ["EQ", "1"]'

    def test_parts_are_escaped_as_elixir_strings(self):
        assert parse_error('id=x"y.a\\b') == 'Error parsing `filter` params: ["x\\"y", "a\\\\b"]'

    def test_first_error_wins(self):
        assert parse_error("a=foo.1,undefined") == 'Error parsing `filter` params: ["foo", "1"]'

    def test_reason_is_the_text_after_the_prefix(self):
        with pytest.raises(FilterParseError) as info:
            parse_filter("undefined")
        assert info.value.reason == '["undefined"]'


# ---------------------------------------------------------------------------
# parse_params


class TestParseParams:
    """parse_params follows parse_subscription_params/1 (docs/protocol.md §6.2)."""

    def test_schema_table_and_filter(self):
        assert parse_params({"schema": "public", "table": "messages", "filter": "subject=eq.hey"}) == (
            SubscriptionParams("*", "public", "messages", (Condition("subject", "eq", "hey"),), None)
        )

    def test_schema_and_table(self):
        assert parse_params({"schema": "public", "table": "messages"}) == SubscriptionParams("*", "public", "messages")

    def test_schema_only_means_every_table(self):
        assert parse_params({"schema": "public"}) == SubscriptionParams("*", "public", "*")

    def test_table_only_means_schema_public(self):
        assert parse_params({"table": "messages"}) == SubscriptionParams("*", "public", "messages")

    def test_empty_filter_means_no_filter(self):
        assert parse_params({"schema": "public", "table": "t", "filter": "  "}).filters == ()

    @pytest.mark.parametrize(
        "event,expected",
        [("*", "*"), ("INSERT", "INSERT"), ("update", "UPDATE"), ("Delete", "DELETE"), ("truncate", "*"), (1, "*")],
    )
    def test_event_is_normalized(self, event, expected):
        assert parse_params({"event": event, "schema": "public"}).event == expected

    def test_missing_event_is_any(self):
        assert parse_params({"schema": "public"}).event == "*"

    def test_select_keeps_strings_only(self):
        params = parse_params({"schema": "public", "table": "t", "select": ["id", 1, None, "name"]})
        assert params.select == ("id", "name")

    def test_empty_select_means_all_columns(self):
        assert parse_params({"schema": "public", "table": "t", "select": []}).select is None
        assert parse_params({"schema": "public", "table": "t", "select": [1]}).select is None

    def test_select_that_is_not_a_list_or_string_is_ignored(self):
        assert parse_params({"schema": "public", "table": "t", "select": {"a": 1}}).select is None

    def test_select_as_string_is_refused(self):
        assert params_error({"schema": "public", "table": "t", "select": "id,name"}) == (
            'Error parsing `select` params: expected a list of column name strings, e.g. select: ["col1", "col2"]'
        )

    def test_select_string_error_comes_before_the_shape_error(self):
        assert params_error({"select": "id"}).startswith("Error parsing `select` params")

    @pytest.mark.parametrize(
        "params", [{"schema": "public", "select": ["id"]}, {"schema": "*", "table": "t", "select": ["id"]}]
    )
    def test_select_on_wildcard_is_refused(self, params):
        assert params_error(params) == (
            "Column selection is not supported for wildcard subscriptions. Provide an explicit schema and table name."
        )

    def test_filter_error_comes_before_the_wildcard_select_error(self):
        params = {"schema": "public", "table": "*", "filter": "x", "select": ["id"]}
        assert params_error(params) == 'Error parsing `filter` params: ["x"]'

    def test_filter_error_text(self):
        params = {"schema": "public", "table": "messages", "filter": "subject=foo.hey"}
        assert params_error(params) == 'Error parsing `filter` params: ["foo", "hey"]'

    def test_no_params(self):
        assert params_error({}) == NO_PARAMS + "%{}"

    def test_unknown_keys_are_inspected_sorted(self):
        assert params_error({"foo": "bar", "event": "*"}) == NO_PARAMS + '%{"event" => "*", "foo" => "bar"}'

    def test_filter_without_table_is_refused(self):
        assert params_error({"schema": "public", "filter": "id=eq.1"}) == (
            NO_PARAMS + '%{"filter" => "id=eq.1", "schema" => "public"}'
        )

    def test_null_filter_is_refused(self):
        assert params_error({"schema": "public", "table": "t", "filter": None}) == (
            NO_PARAMS + '%{"filter" => nil, "schema" => "public", "table" => "t"}'
        )

    def test_non_string_schema_is_refused(self):
        assert params_error({"schema": 1, "table": "t"}) == NO_PARAMS + '%{"schema" => 1, "table" => "t"}'

    def test_tokens_are_redacted(self):
        assert params_error({"event": "*", "user_token": "secret"}) == NO_PARAMS + "<redacted>"
        assert params_error({"auth_token": "secret"}) == NO_PARAMS + "<redacted>"

    def test_params_that_are_not_a_map(self):
        assert params_error("public") == NO_PARAMS + '"public"'
        assert params_error([1, 2]) == NO_PARAMS + "[1, 2]"


class TestElixirInspect:
    """elixir_inspect renders decoded JSON as Elixir's inspect/1 (outputs taken from Elixir)."""

    @pytest.mark.parametrize(
        "term,expected",
        [
            ({}, "%{}"),
            ({"z": 1, "a": 2, "B": 3, "é": 4, "aa": 5}, '%{"B" => 3, "a" => 2, "aa" => 5, "z" => 1, "é" => 4}'),
            ({"a": [1, 2.5, None, True, False]}, '%{"a" => [1, 2.5, nil, true, false]}'),
            ('b"#{x}\\ \n\t\x1b\x07\x7f é', '"b\\"\\#{x}\\\\ \\n\\t\\e\\a\\d é"'),
            ("a\x00", "<<97, 0>>"),
            ("\x85", "<<194, 133>>"),
            (["foo", "hey"], '["foo", "hey"]'),
            ([104, 105], '~c"hi"'),
            ([104, 300], "[104, 300]"),
            (1.0e20, "1.0e20"),
            (0.1, "0.1"),
            (1.0e-7, "1.0e-7"),
            (-0.0, "-0.0"),
            (1.5e16, "1.5e16"),
            (1.0e15, "1000000000000000.0"),
            (1.0e-5, "1.0e-5"),
            (0.0001, "0.0001"),
            (1.234e-4, "1.234e-4"),
            (12345678.9, "12345678.9"),
            (123.456e10, "1234560000000.0"),
            (123456789012345678901234567890, "123456789012345678901234567890"),
            (("id", "eq", "1", False), '{"id", "eq", "1", false}'),
        ],
    )
    def test_terms(self, term, expected):
        assert elixir_inspect(term) == expected

    def test_lists_show_50_items(self):
        assert elixir_inspect({"a": list(range(1, 61))}) == (
            '%{"a" => [' + ", ".join(str(i) for i in range(1, 50)) + ", ...]}"
        )

    def test_nested_containers_share_the_limit(self):
        # Elixir: the inner list is printed with what is left of the 50 (48 here).
        assert elixir_inspect({"a": {"b": list(range(1, 61))}}) == (
            '%{"a" => %{"b" => [' + ", ".join(str(i) for i in range(1, 49)) + ", ...]}}"
        )

    def test_long_strings_are_cut_after_4096_characters(self):
        assert elixir_inspect("x" * 5000) == '"' + "x" * 4096 + '" <> ...'
        assert elixir_inspect("é" * 3000) == '"' + "é" * 3000 + '"'


# ---------------------------------------------------------------------------
# validate (no database)


def column(name: str, oid: int, typname: str, type_name: str, category: str) -> ColumnInfo:
    return ColumnInfo(name, oid, "pg_catalog", typname, type_name, category)


INT4 = column("id", 23, "int4", "integer", "N")
TEXT = column("name", 25, "text", "text", "S")
VARCHAR = column("title", 1043, "varchar", "character varying", "S")
BOOL = column("done", 16, "bool", "boolean", "B")
COLUMNS = {"id": INT4, "name": TEXT, "title": VARCHAR, "done": BOOL}
ALL = set(COLUMNS)


def validate_error(filter_text: str, select: list[str] | None = None, selectable: set[str] = ALL) -> str:
    with pytest.raises(FilterError) as info:
        validate(parse_filter(filter_text), select, COLUMNS, selectable)
    assert info.value.sqlstate == "P0001"
    return str(info.value)


class TestValidate:
    """validate() raises the texts of upstream's subscription_check_filters() trigger."""

    def test_valid_filters_pass(self):
        validate(parse_filter("id=eq.1,name=like.a%,done=is.true,title=imatch.^x"), ["id"], COLUMNS, ALL)

    def test_unknown_column(self):
        assert validate_error("nope=eq.1") == "invalid column for filter nope"

    def test_column_the_role_cannot_select(self):
        assert validate_error("name=eq.x", selectable={"id"}) == "invalid column for filter name"

    def test_is_with_other_keyword(self):
        assert validate_error("done=is.maybe") == "invalid value for is filter: must be null, true, false, or unknown"

    def test_is_true_needs_a_boolean_column(self):
        assert validate_error("id=is.true") == "is true filter requires a boolean column, got integer"

    def test_is_null_works_on_any_column(self):
        validate(parse_filter("id=is.null,name=not.is.null"), None, COLUMNS, ALL)

    @pytest.mark.parametrize("op", ["like", "ilike", "match", "imatch"])
    def test_pattern_operators_need_a_text_column(self, op):
        assert validate_error(f"id={op}.1") == f"operator {op} requires a text-compatible column type, got integer"

    def test_pattern_operators_accept_varchar(self):
        validate(parse_filter("title=like.a%"), None, COLUMNS, ALL)

    def test_unknown_select_column(self):
        assert validate_error("", ["id", "nope"]) == "invalid column for select nope"

    def test_select_column_the_role_cannot_select(self):
        assert validate_error("", ["name"], selectable={"id"}) == "invalid column for select name"

    def test_filter_errors_come_before_select_errors(self):
        assert validate_error("nope=eq.1", ["nope"]) == "invalid column for filter nope"

    def test_first_failing_filter_wins(self):
        assert (
            validate_error("id=like.1,nope=eq.1") == "operator like requires a text-compatible column type, got integer"
        )


class TestPythonFastPath:
    """Conditions on int/bool/uuid/text columns are answered without the database."""

    def evaluate(self, filter_text: str, rows: list[dict[str, str | None]]) -> list[tuple[bool, ...]] | None:
        return FilterEvaluator(parse_filter(filter_text), COLUMNS).evaluate_in_python(rows)

    def test_integer_comparisons(self):
        assert self.evaluate("id=eq.5,id=lt.10,id=not.gt.3", [{"id": "5"}, {"id": "2"}, {"id": None}]) == [
            (True, True, False),
            (False, True, True),
            (False, False, False),
        ]

    def test_in_with_a_null_element_is_never_false_only_null(self):
        # 7 = any('{1,NULL}') is NULL, and NOT NULL is NULL: both false.
        assert self.evaluate("id=in.(1,null),id=not.in.(1,null),id=not.in.(1,2)", [{"id": "7"}, {"id": "1"}]) == [
            (False, False, True),
            (True, False, False),
        ]

    def test_missing_column_is_false_even_for_is_null(self):
        assert self.evaluate("id=is.null,id=not.is.null", [{}, {"id": None}]) == [(False, False), (True, False)]

    def test_isdistinct(self):
        assert self.evaluate("id=isdistinct.1,id=not.isdistinct.1", [{"id": None}, {"id": "1"}, {"id": "2"}]) == [
            (True, False),
            (False, True),
            (True, False),
        ]

    def test_many_eq_conditions_on_one_column(self):
        evaluator = FilterEvaluator([Condition("id", "eq", str(i)) for i in range(1000)], COLUMNS)
        [result] = evaluator.evaluate_in_python([{"id": "417"}])
        assert [i for i, r in enumerate(result) if r] == [417]

    def test_text_ordering_needs_the_database(self):
        assert self.evaluate("name=lt.b", [{"name": "a"}]) is None

    def test_non_canonical_values_need_the_database(self):
        assert self.evaluate("id=eq.+5", [{"id": "5"}]) is None
        assert self.evaluate("id=eq.5", [{"id": " 5"}]) is None

    def test_conditions_match_ands_a_subscriptions_conditions(self):
        evaluator = FilterEvaluator(parse_filter("id=gt.1,name=eq.x"), COLUMNS)
        [result] = evaluator.evaluate_in_python([{"id": "2", "name": "y"}])
        assert conditions_match(result, evaluator.indexes(parse_filter("id=gt.1")))
        assert not conditions_match(result, evaluator.indexes(parse_filter("id=gt.1,name=eq.x")))
        assert conditions_match(result, ())


# ---------------------------------------------------------------------------
# With PostgreSQL

SCHEMA = """
create type mood as enum ('sad', 'ok', 'happy');
create domain positive as int check (value > 0);
create table items (
    id int primary key,
    small int2,
    big int8,
    name text,
    title varchar(5),
    code char(4),
    done bool,
    at timestamptz,
    ref uuid,
    price numeric(10, 2),
    doc jsonb,
    raw json,
    tags int[],
    feeling mood,
    pos positive,
    label "name"
);
"""


@pytest.fixture(scope="module")
def db_dsn(pg_dsn: str) -> Iterator[str]:
    with scratch_database(pg_dsn, "rt_filters") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        yield dsn


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
async def columns(conn: psycopg.AsyncConnection[Any]) -> dict[str, ColumnInfo]:
    cur = await conn.execute("select 'items'::regclass::oid::int8")
    row = await cur.fetchone()
    assert row is not None
    return await load_columns(conn, row[0])


async def values_error(conn, columns, filter_text: str) -> FilterError:
    with pytest.raises(FilterError) as info:
        await validate_values(conn, parse_filter(filter_text), columns)
    return info.value


@pytest.mark.pg
class TestLoadColumns:
    async def test_columns_in_attnum_order_with_type_names(self, columns):
        assert list(columns)[:4] == ["id", "small", "big", "name"]
        assert (columns["at"].typname, columns["at"].type_name) == ("timestamptz", "timestamp with time zone")
        assert (columns["title"].typname, columns["title"].type_name) == ("varchar", "character varying")
        assert (columns["tags"].typname, columns["tags"].type_name) == ("_int4", "integer[]")
        assert (columns["feeling"].type_schema, columns["feeling"].category) == ("public", "E")

    async def test_text_likeness(self, columns):
        assert [n for n, c in columns.items() if c.is_text_like] == ["name", "title", "code", "label"]
        assert [n for n, c in columns.items() if c.is_bool] == ["done"]


@pytest.mark.pg
class TestValidateValues:
    """Values must cast to the column type, in one query, with PostgreSQL's own error texts."""

    async def test_good_values_pass(self, conn, columns):
        await validate_values(
            conn,
            parse_filter(
                "id=eq.1,at=gt.2026-01-01T00:00:00Z,ref=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11,"
                "feeling=lt.happy,doc=eq.{},tags=eq.{1},id=in.(1,2),name=match.^a,price=isdistinct.1.5"
            ),
            columns,
        )

    async def test_bad_integer(self, conn, columns):
        err = await values_error(conn, columns, "id=eq.abc")
        assert str(err) == 'invalid input syntax for type integer: "abc"'
        assert err.sqlstate == "22P02"

    async def test_bad_in_element(self, conn, columns):
        err = await values_error(conn, columns, "id=in.(1,x)")
        assert str(err) == 'invalid input syntax for type integer: "x"'

    async def test_bad_enum_label(self, conn, columns):
        err = await values_error(conn, columns, "feeling=eq.angry")
        assert str(err) == 'invalid input value for enum mood: "angry"'

    async def test_domain_check(self, conn, columns):
        err = await values_error(conn, columns, "pos=eq.0")
        assert str(err) == 'value for domain positive violates check constraint "positive_check"'

    async def test_out_of_range(self, conn, columns):
        err = await values_error(conn, columns, "small=gt.40000")
        assert str(err) == 'value "40000" is out of range for type smallint'

    async def test_bad_regex(self, conn, columns):
        err = await values_error(conn, columns, "name=imatch.(")
        assert (
            str(err)
            == "invalid regular expression for imatch filter: invalid regular expression: parentheses () not balanced"
        )
        assert err.sqlstate == "P0001"

    async def test_type_without_the_operator(self, conn, columns):
        err = await values_error(conn, columns, "raw=eq.{}")
        assert str(err) == "operator does not exist: json = json"

    async def test_first_failure_in_filter_order_wins(self, conn, columns):
        err = await values_error(conn, columns, "id=eq.1,name=match.(,big=eq.x")
        assert str(err).startswith("invalid regular expression for match filter")

    async def test_failure_inside_a_transaction_keeps_it_usable(self, conn, columns):
        async with conn.transaction():
            with pytest.raises(FilterError):
                await validate_values(conn, parse_filter("id=eq.abc"), columns)
            cur = await conn.execute("select 1")
            assert await cur.fetchone() == (1,)

    async def test_validate_subscription_reports_what_upstream_reports_first(self, conn, columns):
        selectable = set(columns)
        with pytest.raises(FilterError, match=r'^invalid input syntax for type integer: "x"$'):
            await validate_subscription(conn, parse_filter("id=eq.x,nope=eq.1"), None, columns, selectable)
        with pytest.raises(FilterError, match=r"^invalid column for filter nope$"):
            await validate_subscription(conn, parse_filter("nope=eq.1,id=eq.x"), None, columns, selectable)
        many = "id=in.(" + ",".join(["1"] * 100 + ["x"]) + ")"
        with pytest.raises(FilterError, match=r'^invalid input syntax for type integer: "x"$'):
            await validate_subscription(conn, parse_filter(many), None, columns, selectable)
        with pytest.raises(FilterError, match=r"^invalid column for select nope$"):
            await validate_subscription(conn, parse_filter("id=eq.1"), ["nope"], columns, selectable)


# (filter, WAL values of one change, expected result of the condition)
CASES: list[tuple[str, dict[str, str | None], bool]] = [
    # int
    ("id=eq.5", {"id": "5"}, True),
    ("id=eq.5", {"id": "6"}, False),
    ("id=neq.5", {"id": "6"}, True),
    ("id=lt.10", {"id": "9"}, True),
    ("id=lte.10", {"id": "10"}, True),
    ("id=gt.10", {"id": "10"}, False),
    ("id=gte.10", {"id": "10"}, True),
    ("id=eq.007", {"id": "7"}, True),
    ("id=in.(1,2,3)", {"id": "2"}, True),
    ("id=in.(1,2,3)", {"id": "4"}, False),
    ("id=not.in.(1,2,3)", {"id": "4"}, True),
    ("big=eq.9007199254740993", {"big": "9007199254740993"}, True),
    ("big=eq.9007199254740993", {"big": "9007199254740992"}, False),
    # text: PostgreSQL's collation for ordering, patterns and regexes
    ("name=eq.Ab", {"name": "Ab"}, True),
    ("name=eq.Ab", {"name": "ab"}, False),
    ("name=lt.b", {"name": "a"}, True),
    ("name=like.A%", {"name": "Abc"}, True),
    ("name=like.A%", {"name": "abc"}, False),
    ("name=ilike.A%", {"name": "abc"}, True),
    ("name=not.like.A%", {"name": "abc"}, True),
    ("name=match.^a.c$", {"name": "abc"}, True),
    ("name=match.^A", {"name": "abc"}, False),
    ("name=imatch.^A", {"name": "abc"}, True),
    ("name=not.imatch.^A", {"name": "abc"}, False),
    ('name=eq."a,b"', {"name": "a,b"}, True),
    ("name=in.(x,y)", {"name": "y"}, True),
    ("title=like.ab%", {"title": "abcde"}, True),
    ("title=eq.abcdef", {"title": "abcde"}, False),  # no varchar(5) truncation of the filter value
    ("code=eq.ab", {"code": "ab  "}, True),  # char(n) ignores trailing spaces
    ("label=like.x%", {"label": "xyz"}, True),
    # bool
    ("done=eq.true", {"done": "t"}, True),
    ("done=eq.yes", {"done": "t"}, True),
    ("done=eq.f", {"done": "t"}, False),
    ("done=is.true", {"done": "t"}, True),
    ("done=is.false", {"done": "t"}, False),
    ("done=not.is.true", {"done": "f"}, True),
    ("done=is.unknown", {"done": None}, True),
    ("done=not.is.unknown", {"done": None}, False),
    ("done=lt.true", {"done": "f"}, True),
    # timestamptz: the same instant in two zones
    ("at=eq.2026-01-01T08:00:00Z", {"at": "2026-01-01 10:00:00+02"}, True),
    ("at=lt.2026-01-01T08:00:01Z", {"at": "2026-01-01 10:00:00+02"}, True),
    ("at=gt.2026-01-01T08:00:00Z", {"at": "2026-01-01 10:00:00+02"}, False),
    # uuid: case does not matter
    (
        "ref=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        {"ref": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
        True,
    ),
    ("ref=eq.{a0eebc999c0b4ef8bb6d6bb9bd380a11}", {"ref": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, True),
    (
        "ref=in.(00000000-0000-0000-0000-000000000000,A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11)",
        {"ref": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
        True,
    ),
    # numeric
    ("price=eq.1.5", {"price": "1.50"}, True),
    ("price=gt.1.49", {"price": "1.50"}, True),
    ("price=in.(1.5,2)", {"price": "1.50"}, True),
    ("price=eq.1.504", {"price": "1.50"}, False),  # no numeric(10,2) rounding of the filter value
    # jsonb equality, not text equality
    ('doc=eq.{"a":1}', {"doc": '{"a": 1}'}, True),
    ('doc=eq.{"a":2}', {"doc": '{"a": 1}'}, False),
    ('doc=neq.{"a":1}', {"doc": '{"b": 1}'}, True),
    # arrays
    ('tags=eq."{1,2}"', {"tags": "{1,2}"}, True),
    ('tags=eq."{2,1}"', {"tags": "{1,2}"}, False),
    ('tags=gt."{1,1}"', {"tags": "{1,2}"}, True),
    ("tags=eq.{3}", {"tags": "{3}"}, True),
    # enums follow declaration order, not the alphabet
    ("feeling=lt.happy", {"feeling": "ok"}, True),
    ("feeling=gt.happy", {"feeling": "ok"}, False),
    ("feeling=gt.ok", {"feeling": "happy"}, True),
    ("feeling=lt.ok", {"feeling": "happy"}, False),
    ("feeling=in.(sad,ok)", {"feeling": "ok"}, True),
    # domains
    ("pos=gt.5", {"pos": "7"}, True),
    # NULLs: a NULL result counts as false
    ("id=eq.5", {"id": None}, False),
    ("id=neq.5", {"id": None}, False),
    ("id=not.eq.5", {"id": None}, False),
    ("id=in.(1,2)", {"id": None}, False),
    ("id=not.in.(1,2)", {"id": None}, False),
    ("id=in.(1,null)", {"id": "3"}, False),
    ("id=not.in.(1,null)", {"id": "3"}, False),
    ("id=in.()", {"id": None}, False),
    ("id=not.in.()", {"id": None}, True),  # NULL = any('{}') is false, not NULL
    ("id=in.(1,null)", {"id": "1"}, True),
    ("name=like.a%", {"name": None}, False),
    ("name=is.null", {"name": None}, True),
    ("name=is.null", {"name": "x"}, False),
    ("name=not.is.null", {"name": "x"}, True),
    ("name=not.is.null", {"name": None}, False),
    ("name=isdistinct.x", {"name": None}, True),
    ("name=isdistinct.x", {"name": "x"}, False),
    ("name=isdistinct.x", {"name": "y"}, True),
    ("name=not.isdistinct.x", {"name": None}, False),
    ("name=not.isdistinct.x", {"name": "x"}, True),
    ("doc=isdistinct.{}", {"doc": None}, True),
    # a column the change does not carry: false, even for is.null
    ("name=is.null", {}, False),
    ("name=not.eq.x", {}, False),
]


@pytest.mark.pg
class TestEvaluate:
    """Every operator on typed columns, with PostgreSQL's semantics (check_equality_op)."""

    @pytest.mark.parametrize(("filter_text", "row", "expected"), CASES, ids=[f"{c[0]}|{c[1]}" for c in CASES])
    async def test_condition(self, conn, columns, filter_text, row, expected):
        conditions = parse_filter(filter_text)
        evaluator = FilterEvaluator(conditions, columns)
        assert await evaluator.evaluate_in_sql(conn, [row]) == [(expected,)]
        assert await evaluator.evaluate(conn, [row]) == [(expected,)]
        fast = evaluator.evaluate_in_python([row])
        assert fast is None or fast == [(expected,)]

    async def test_single_change_sql_and_params(self, conn, columns):
        for filter_text, row, expected in CASES:
            evaluator = FilterEvaluator(parse_filter(filter_text), columns)
            cur = await conn.execute(evaluator.sql, evaluator.params(row))
            assert await cur.fetchone() == (expected,), filter_text

    async def test_batch_is_one_query_with_one_result_per_change_in_order(self, conn, columns, monkeypatch):
        conditions = parse_filter("doc=eq.{},at=gt.2026-01-01T00:00:00Z,feeling=gte.ok,name=ilike.%X%")
        evaluator = FilterEvaluator(conditions, columns)
        rows: list[dict[str, str | None]] = [
            {"doc": "{}", "at": "2026-06-01 00:00:00+00", "feeling": "happy", "name": "axe"},
            {"doc": '{"a": 1}', "at": "2025-06-01 00:00:00+00", "feeling": "sad", "name": "b"},
            {"doc": None, "at": None, "feeling": None, "name": None},
            {"at": "2026-06-01 00:00:00+00"},
            {"doc": "{ }", "at": "2026-01-01 00:00:01+00", "feeling": "ok", "name": "X"},
        ]
        calls = []
        execute = conn.execute

        async def counting_execute(*args, **kwargs):
            calls.append(args[0])
            return await execute(*args, **kwargs)

        monkeypatch.setattr(conn, "execute", counting_execute)
        results = await evaluator.evaluate(conn, rows)
        assert len(calls) == 1
        assert results == [
            (True, True, True, True),
            (False, False, False, False),
            (False, False, False, False),
            (False, True, False, False),
            (True, True, True, True),
        ]

    async def test_subscriptions_share_distinct_conditions(self, conn, columns):
        subs = {"a": parse_filter("price=gt.1"), "b": parse_filter("price=gt.1,doc=eq.{}"), "c": ()}
        distinct = list(dict.fromkeys(c for conds in subs.values() for c in conds))
        evaluator = FilterEvaluator(distinct, columns)
        [result] = await evaluator.evaluate(conn, [{"price": "2.00", "doc": '{"x": 1}'}])
        matched = [s for s, conds in subs.items() if conditions_match(result, evaluator.indexes(conds))]
        assert matched == ["a", "c"]

    async def test_a_failing_condition_is_false_and_the_others_still_hold(self, conn, columns):
        # A LIKE pattern ending in an escape fails only when matching reaches it.
        evaluator = FilterEvaluator(parse_filter("name=like.a\\,id=eq.1"), columns)
        rows: list[dict[str, str | None]] = [{"name": "ab", "id": "1"}, {"name": "b", "id": "1"}]
        assert await evaluator.evaluate(conn, rows) == [(False, True), (False, True)]

    async def test_failure_inside_a_transaction_keeps_it_usable(self, conn, columns):
        evaluator = FilterEvaluator(parse_filter("name=like.a\\"), columns)
        async with conn.transaction():
            assert await evaluator.evaluate(conn, [{"name": "ab"}]) == [(False,)]
            cur = await conn.execute("select 1")
            assert await cur.fetchone() == (1,)

    async def test_condition_on_a_column_the_table_lacks_is_false(self, conn, columns):
        evaluator = FilterEvaluator(parse_filter("gone=eq.1,id=eq.1"), columns)
        assert await evaluator.evaluate(conn, [{"gone": "1", "id": "1"}]) == [(False, True)]

    async def test_values_are_parameters_not_sql(self, conn, columns):
        evaluator = FilterEvaluator(parse_filter("name=eq.'; drop table items; --"), columns)
        assert await evaluator.evaluate_in_sql(conn, [{"name": "'; drop table items; --"}]) == [(True,)]
        cur = await conn.execute("select count(*) from items")
        assert await cur.fetchone() == (0,)


FAST_VALUES: dict[str, list[str | None]] = {
    "id": ["-2147483648", "-1", "0", "1", "5", "2147483647", None],
    "small": ["-32768", "0", "7", "32767", None],
    "big": ["-9223372036854775808", "0", "9007199254740993", "9223372036854775807", None],
    "done": ["t", "f", "true", "false", None],
    "ref": [
        "00000000-0000-0000-0000-000000000000",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "ffffffff-0000-0000-0000-000000000000",
        None,
    ],
    "name": ["", "a", "A", "é", "a ", None],
    "title": ["", "ab", "AB", None],
}
FAST_FILTERS: dict[str, list[str]] = {
    "id": ["0", "5", "-1", "2147483647", "(0,5)", "(1,null)", "()"],
    "small": ["7", "-32768", "(0,7)"],
    "big": ["9007199254740993", "0", "(0,1)"],
    "done": ["t", "TRUE", "yes", "on", "1", "f", "No", "off", "0", "(t)", "(f,null)"],
    "ref": [
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "00000000-0000-0000-0000-000000000000",
        "(a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11)",
    ],
    "name": ["a", "A", "", "é", "a ", "(a,A)", '("",x)'],
    "title": ["ab", "(ab,AB)"],
}


@pytest.mark.pg
class TestFastPathEqualsPostgres:
    """For every fast-path type and operator, Python answers exactly what PostgreSQL answers."""

    @pytest.mark.parametrize("name", list(FAST_VALUES))
    async def test_same_results_as_postgres(self, conn, columns, name):
        conditions = []
        for value in FAST_FILTERS[name]:
            ops = ["in"] if value.startswith("(") else ["eq", "neq", "lt", "lte", "gt", "gte", "isdistinct"]
            for op, negate in itertools.product(ops, (False, True)):
                if op in ("lt", "lte", "gt", "gte") and name in ("name", "title"):
                    continue
                conditions.append(Condition(name, op, parse_filter(f"x={op}.{value}")[0].value, negate))
        keywords = ["null", "true", "false", "unknown"] if name == "done" else ["null"]
        conditions += [Condition(name, "is", k, n) for k in keywords for n in (False, True)]
        evaluator = FilterEvaluator(conditions, columns)
        rows: list[dict[str, str | None]] = [{name: v} for v in FAST_VALUES[name]] + [{}]
        fast = evaluator.evaluate_in_python(rows)
        assert fast is not None
        assert fast == await evaluator.evaluate_in_sql(conn, rows)
