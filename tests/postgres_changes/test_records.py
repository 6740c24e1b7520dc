"""Tests for realtime_core.postgres_changes.records: the `data` object of a postgres_changes message
(docs/protocol.md §6.5).

RecordShape is built here the way dispatch.py builds it: one column tuple per
selectable column with the converter values.TypeCatalog gives for its type."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from realtime_core.postgres_changes.records import (
    ERROR_NO_PRIMARY_KEY,
    ERROR_TOO_LARGE,
    ERROR_UNAUTHORIZED,
    MAX_KEPT_FIELD_BYTES,
    RecordShape,
    commit_timestamp,
    error_data,
)
from realtime_core.postgres_changes.values import TypeCatalog

TYPES = TypeCatalog()

# (oid, typname) of the test table's columns, in attnum order:
#   id int4 primary key, title text, done bool, score numeric, meta jsonb, at timestamptz, tags int4[]
COLUMNS = [
    (23, "id"),
    (25, "title"),
    (16, "done"),
    (1700, "score"),
    (3802, "meta"),
    (1184, "at"),
    (1007, "tags"),
]
TYPNAMES = {23: "int4", 25: "text", 16: "bool", 1700: "numeric", 3802: "jsonb", 1184: "timestamptz", 1007: "_int4"}
KEY = frozenset({0})
BIG = 1_048_576

# 2026-01-01 12:00:00.123456 UTC, as pgoutput sends it (µs since 2000-01-01).
COMMIT_US = 820_584_000_123_456
COMMIT_TEXT = "2026-01-01T12:00:00.123Z"

ROW = ["1", "a", "t", "1.50", '{"k": [1, 2]}', "2026-01-01 10:00:00.5+00", "{1,NULL,3}"]
ROW_JSON = {
    "id": 1,
    "title": "a",
    "done": True,
    "score": 1.5,
    "meta": {"k": [1, 2]},
    "at": "2026-01-01T10:00:00.5+00:00",
    "tags": [1, None, 3],
}


def shape(
    indexes: list[int] | None = None,
    max_record_bytes: int = BIG,
    key_indexes: frozenset[int] = KEY,
    schema: str = "public",
    table: str = "todos",
) -> RecordShape:
    """The shape of COLUMNS restricted to `indexes` (all by default)."""
    chosen = range(len(COLUMNS)) if indexes is None else indexes
    columns = [(i, COLUMNS[i][1], TYPNAMES[COLUMNS[i][0]], TYPES.converter(COLUMNS[i][0])) for i in chosen]
    return RecordShape(schema, table, columns, key_indexes, max_record_bytes)


def build(s: RecordShape, change_type: str, new=None, old=None, old_indexes=None, at: int = COMMIT_US) -> Any:
    return orjson.loads(s.build(change_type, at, new, old, old_indexes))


class TestCommitTimestamp:
    """commit_timestamp: UTC, milliseconds, `Z` (docs/protocol.md §6.5 `YYYY-MM-DDTHH24:MI:SS.MSZ`)."""

    @pytest.mark.parametrize(
        ("micros", "text"),
        [
            (0, "2000-01-01T00:00:00.000Z"),
            (1, "2000-01-01T00:00:00.000Z"),
            (999, "2000-01-01T00:00:00.000Z"),
            (1_000, "2000-01-01T00:00:00.001Z"),
            (999_999, "2000-01-01T00:00:00.999Z"),  # rounds down, never up to the next second
            (1_000_000, "2000-01-01T00:00:01.000Z"),
            (-1, "1999-12-31T23:59:59.999Z"),  # before the epoch: still floored
            (-1_000_000, "1999-12-31T23:59:59.000Z"),
            (86_400_000_000 * 366 - 1, "2000-12-31T23:59:59.999Z"),  # 2000 is a leap year
            (COMMIT_US, COMMIT_TEXT),
        ],
    )
    def test_format(self, micros, text):
        assert commit_timestamp(micros) == text

    def test_matches_a_real_clock_time(self):
        at = datetime(2031, 7, 4, 23, 5, 9, 987_654, tzinfo=UTC)
        micros = (at - datetime(2000, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        assert commit_timestamp(micros) == "2031-07-04T23:05:09.987Z"


class TestInsert:
    def test_record_holds_converted_values_and_columns_their_typnames(self):
        data = build(shape(), "INSERT", new=ROW)
        assert data == {
            "schema": "public",
            "table": "todos",
            "commit_timestamp": COMMIT_TEXT,
            "type": "INSERT",
            "columns": [
                {"name": "id", "type": "int4"},
                {"name": "title", "type": "text"},
                {"name": "done", "type": "bool"},
                {"name": "score", "type": "numeric"},
                {"name": "meta", "type": "jsonb"},
                {"name": "at", "type": "timestamptz"},
                {"name": "tags", "type": "_int4"},
            ],
            "record": ROW_JSON,
            "errors": None,
        }

    def test_has_no_old_record(self):
        assert "old_record" not in build(shape(), "INSERT", new=ROW)

    def test_numeric_keeps_postgres_digits(self):
        encoded = shape().build("INSERT", COMMIT_US, ROW, None, None)
        assert b'"score":1.50' in encoded

    def test_nulls_are_json_null_and_never_converted(self):
        row = ["1", None, None, None, None, None, None]
        assert build(shape(), "INSERT", new=row)["record"] == {
            "id": 1,
            "title": None,
            "done": None,
            "score": None,
            "meta": None,
            "at": None,
            "tags": None,
        }

    def test_columns_and_record_only_hold_the_shape_columns(self):
        # A role that may select id and done only (or `select: ["done"]` plus the key).
        data = build(shape([0, 2]), "INSERT", new=ROW)
        assert data["columns"] == [{"name": "id", "type": "int4"}, {"name": "done", "type": "bool"}]
        assert data["record"] == {"id": 1, "done": True}

    def test_schema_and_table_are_the_shapes(self):
        data = build(shape(schema="my schema", table='we"ird'), "INSERT", new=ROW)
        assert (data["schema"], data["table"]) == ("my schema", 'we"ird')


class TestUpdate:
    def test_without_old_tuple_old_record_is_the_key_from_the_new_row(self):
        # Default replica identity, key unchanged: pgoutput sends no old tuple.
        new = ["1", "b", *ROW[2:]]
        data = build(shape(), "UPDATE", new=new)
        assert data["record"] == {**ROW_JSON, "title": "b"}
        assert data["old_record"] == {"id": 1}
        assert data["errors"] is None

    def test_composite_key_from_the_new_row(self):
        data = build(shape(key_indexes=frozenset({0, 1})), "UPDATE", new=ROW)
        assert data["old_record"] == {"id": 1, "title": "a"}

    def test_changed_key_comes_from_the_old_key_tuple(self):
        old = ["7", None, None, None, None, None, None]  # 'K': key columns set, the others None
        data = build(shape(), "UPDATE", new=ROW, old=old, old_indexes=KEY)
        assert data["old_record"] == {"id": 7}
        assert data["record"]["id"] == 1

    def test_replica_identity_full_gives_the_whole_old_row(self):
        old = ["1", "before", "f", "0", "{}", None, "{}"]
        data = build(shape(), "UPDATE", new=ROW, old=old, old_indexes=frozenset(range(len(COLUMNS))))
        assert data["old_record"] == {
            "id": 1,
            "title": "before",
            "done": False,
            "score": 0,
            "meta": {},
            "at": None,
            "tags": [],
        }

    def test_old_record_is_restricted_to_the_shape(self):
        old = ["1", "before", "f", "0", "{}", None, "{}"]
        data = build(shape([0, 1]), "UPDATE", new=ROW, old=old, old_indexes=frozenset(range(len(COLUMNS))))
        assert data["old_record"] == {"id": 1, "title": "before"}
        assert data["record"] == {"id": 1, "title": "a"}


class TestDelete:
    def test_key_only_old_tuple(self):
        old = ["1", None, None, None, None, None, None]
        data = build(shape(), "DELETE", old=old, old_indexes=KEY)
        assert data["old_record"] == {"id": 1}
        assert "record" not in data
        assert data["type"] == "DELETE" and data["errors"] is None

    def test_full_old_row(self):
        data = build(shape(), "DELETE", old=ROW, old_indexes=frozenset(range(len(COLUMNS))))
        assert data["old_record"] == ROW_JSON

    def test_rls_trimmed_indexes_keep_only_the_key(self):
        # dispatch passes old_indexes & key_indexes for a DELETE on an RLS table (docs/protocol.md §6.5).
        data = build(shape(), "DELETE", old=ROW, old_indexes=frozenset(range(len(COLUMNS))) & KEY)
        assert data["old_record"] == {"id": 1}
        assert len(data["columns"]) == len(COLUMNS)

    def test_null_in_the_old_row_stays_null(self):
        old = ["1", None, "f", None, None, None, None]
        data = build(shape(), "DELETE", old=old, old_indexes=frozenset(range(len(COLUMNS))))
        assert data["old_record"]["title"] is None and data["old_record"]["done"] is False

    def test_without_any_tuple_old_record_is_empty(self):
        assert build(shape(), "DELETE")["old_record"] == {}


def text_of(n: int) -> str:
    """A text value whose JSON (quotes included) is n bytes."""
    return "x" * (n - 2)


class TestPayloadTooLarge:
    """max_record_bytes: oversize records keep only fields whose JSON is ≤ 64 bytes (docs/protocol.md §6.4)."""

    def row(self, title: str) -> list[str | None]:
        return ["1", title, "t", "1.50", None, None, None]

    def test_only_small_fields_are_kept_and_errors_is_413(self):
        s = shape(max_record_bytes=500)
        data = build(s, "INSERT", new=self.row("y" * 1000))
        assert data["errors"] == [ERROR_TOO_LARGE]
        assert data["record"] == {"id": 1, "done": True, "score": 1.5, "meta": None, "at": None, "tags": None}
        assert len(data["columns"]) == len(COLUMNS)  # columns are kept
        assert data["commit_timestamp"] == COMMIT_TEXT

    def test_a_field_of_exactly_64_bytes_is_kept_and_65_dropped(self):
        assert MAX_KEPT_FIELD_BYTES == 64
        s = shape([0, 1, 2], max_record_bytes=100)
        kept = build(s, "INSERT", new=["1", text_of(64), None, None, None, None, None])
        assert kept["errors"] == [ERROR_TOO_LARGE] and kept["record"]["title"] == text_of(64)
        dropped = build(s, "INSERT", new=["1", text_of(65), None, None, None, None, None])
        assert dropped["errors"] == [ERROR_TOO_LARGE] and "title" not in dropped["record"]

    def test_field_size_is_measured_on_the_json_with_escapes(self):
        s = shape([0, 1], max_record_bytes=50)
        quotes = '"' * 31  # 62 characters of JSON once escaped, plus the quotes: 64 bytes
        assert len(orjson.dumps(quotes)) == 64
        assert build(s, "INSERT", new=["1", quotes, None, None, None, None, None])["record"]["title"] == quotes
        more = '"' * 32  # 66 bytes
        assert "title" not in build(s, "INSERT", new=["1", more, None, None, None, None, None])["record"]

    def test_the_limit_is_inclusive(self):
        row = self.row("y" * 200)
        size = len(shape().build("INSERT", COMMIT_US, row, None, None))
        at_limit = shape(max_record_bytes=size).build("INSERT", COMMIT_US, row, None, None)
        assert len(at_limit) == size
        assert orjson.loads(at_limit)["errors"] is None
        over = build(shape(max_record_bytes=size - 1), "INSERT", new=row)
        assert over["errors"] == [ERROR_TOO_LARGE]
        assert "title" not in over["record"]

    def test_old_record_is_trimmed_too(self):
        old = ["1", "z" * 1000, "f", None, None, None, None]
        data = build(
            shape(max_record_bytes=500), "UPDATE", new=self.row("y" * 1000), old=old, old_indexes=frozenset(range(7))
        )
        assert data["errors"] == [ERROR_TOO_LARGE]
        assert "title" not in data["record"] and "title" not in data["old_record"]
        assert data["old_record"]["done"] is False

    def test_large_json_values_are_dropped_whole(self):
        big = orjson.dumps({"k": "v" * 100}).decode()
        data = build(shape([0, 4], max_record_bytes=60), "INSERT", new=["1", None, None, None, big, None, None])
        assert data["record"] == {"id": 1}
        assert data["errors"] == [ERROR_TOO_LARGE]


class TestErrorData:
    @pytest.mark.parametrize("error", [ERROR_NO_PRIMARY_KEY, ERROR_UNAUTHORIZED])
    def test_errors_carry_no_columns_record_or_timestamp(self, error):
        assert orjson.loads(error_data("public", "todos", "INSERT", error)) == {
            "schema": "public",
            "table": "todos",
            "commit_timestamp": None,
            "type": "INSERT",
            "columns": [],
            "record": {},
            "errors": [error],
        }

    def test_error_texts(self):
        assert ERROR_NO_PRIMARY_KEY == "Error 400: Bad Request, no primary key"
        assert ERROR_UNAUTHORIZED == "Error 401: Unauthorized"
        assert ERROR_TOO_LARGE == "Error 413: Payload Too Large"

    def test_change_type_is_kept(self):
        assert orjson.loads(error_data("s", "t", "UPDATE", ERROR_UNAUTHORIZED))["type"] == "UPDATE"
