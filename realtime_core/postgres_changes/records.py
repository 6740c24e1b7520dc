"""The `data` object of a postgres_changes message (docs/protocol.md §6.5), without I/O.

dispatch.py builds one RecordShape per (relation, role, select list) and calls
build() once per change and shape; the JSON bytes it returns are shared by
every channel that receives that change with that shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

__all__ = [
    "ERROR_NO_PRIMARY_KEY",
    "ERROR_TOO_LARGE",
    "ERROR_UNAUTHORIZED",
    "MAX_KEPT_FIELD_BYTES",
    "RecordShape",
    "commit_timestamp",
    "error_data",
]

ERROR_NO_PRIMARY_KEY = "Error 400: Bad Request, no primary key"
ERROR_UNAUTHORIZED = "Error 401: Unauthorized"
ERROR_TOO_LARGE = "Error 413: Payload Too Large"
# docs/protocol.md §6.4: an oversize record keeps only the fields whose JSON is this small.
MAX_KEPT_FIELD_BYTES = 64

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def commit_timestamp(commit_time_us: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds) from pgoutput's microseconds since 2000."""
    ts = _PG_EPOCH + timedelta(microseconds=commit_time_us)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def error_data(schema: str, table: str, change_type: str, error: str) -> bytes:
    """The data object of a change a subscriber may not see in full (400/401)."""
    return orjson.dumps(
        {
            "schema": schema,
            "table": table,
            "commit_timestamp": None,
            "type": change_type,
            "columns": [],
            "record": {},
            "errors": [error],
        }
    )


class RecordShape:
    """Which columns one group of subscribers gets from one relation, and how to convert them.

    `columns` are (index in the tuple, name, typname, converter) in attnum order:
    the role's selectable columns, restricted to `select` plus the primary key."""

    __slots__ = ("_columns_json", "columns", "key_indexes", "max_record_bytes", "schema", "table")

    def __init__(
        self,
        schema: str,
        table: str,
        columns: Sequence[tuple[int, str, str, Callable[[str], Any]]],
        key_indexes: frozenset[int],
        max_record_bytes: int,
    ) -> None:
        self.schema = schema
        self.table = table
        self.columns = tuple(columns)
        self.key_indexes = key_indexes
        self.max_record_bytes = max_record_bytes
        self._columns_json = [{"name": name, "type": typname} for _, name, typname, _ in self.columns]

    def _record(self, values: Sequence[Any], only: frozenset[int] | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for index, name, _, convert in self.columns:
            if only is not None and index not in only:
                continue
            value = values[index]
            record[name] = None if value is None else convert(value)
        return record

    def build(
        self,
        change_type: str,
        commit_time_us: int,
        new: Sequence[Any] | None,
        old: Sequence[Any] | None,
        old_indexes: frozenset[int] | None,
    ) -> bytes:
        """The data object's JSON for one change.

        `new` / `old` hold text values (None for NULL) by column index; for
        `old`, `old_indexes` names the columns it carries (key columns only,
        or all of them with REPLICA IDENTITY FULL)."""
        data: dict[str, Any] = {
            "schema": self.schema,
            "table": self.table,
            "commit_timestamp": commit_timestamp(commit_time_us),
            "type": change_type,
            "columns": self._columns_json,
        }
        if new is not None:
            data["record"] = self._record(new)
        if change_type != "INSERT":
            if old is not None:
                data["old_record"] = self._record(old, old_indexes)
            elif new is not None:
                # Default replica identity and an unchanged key: pgoutput sends
                # no old tuple; upstream still reports the key (docs/protocol.md §6.5).
                data["old_record"] = self._record(new, self.key_indexes)
            else:
                data["old_record"] = {}
        data["errors"] = None
        encoded = orjson.dumps(data)
        if len(encoded) > self.max_record_bytes:
            for name in ("record", "old_record"):
                if name in data:
                    data[name] = {k: v for k, v in data[name].items() if len(orjson.dumps(v)) <= MAX_KEPT_FIELD_BYTES}
            data["errors"] = [ERROR_TOO_LARGE]
            encoded = orjson.dumps(data)
        return encoded
