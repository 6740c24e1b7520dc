"""A filter condition and the vocabulary of filters: events, operators and their SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["IS_VALUES", "MAX_IN_VALUES", "OPERATORS", "PG_SPACE", "SQL_OPS", "Condition", "Event", "InValue", "Op"]

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

PG_SPACE = " \t\n\r\x0b\x0c"  # array_isspace() / boolin's isspace()

SQL_OPS = {
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


def _array_element(v: str | None) -> str:
    if v is None:
        return "NULL"
    if v == "" or v.lower() == "null" or any(c in v for c in '{},"\\ \t\n\r\x0b\x0c'):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return v
