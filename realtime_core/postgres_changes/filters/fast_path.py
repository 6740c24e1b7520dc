"""Filter conditions evaluated in Python, only where the result provably equals PostgreSQL's."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .columns import BOOL, INT2, INT4, INT8, TEXT, UUID, VARCHAR, ColumnInfo, Row
from .conditions import IS_VALUES, PG_SPACE, Condition

__all__ = ["FastPath", "Undecidable"]


class Undecidable(Exception):
    """A value whose PostgreSQL reading we do not reproduce: ask the database."""


_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_INT_RANGE = {INT2: 2**15, INT4: 2**31, INT8: 2**63}


def _int_key(oid: int) -> Callable[[str], Any]:
    bound = _INT_RANGE[oid]

    def key(text: str) -> int:
        # int2in/int4in/int8in also take spaces, "+", leading zeros, "_" and
        # 0x/0o/0b: the database decides those. Past 20 characters it is out of
        # range anyway, and int() refuses more than 4300 digits.
        if len(text) > 20 or not _CANONICAL_INT.match(text):
            raise Undecidable
        v = int(text)
        if not -bound <= v < bound:
            raise Undecidable  # out of range: an error in PostgreSQL
        return v

    return key


def _bool_key(text: str) -> bool:
    # boolin() / parse_bool_with_len(): trimmed, ASCII case-insensitive,
    # any prefix of true/false/yes/no, on/off (two letters at least), 1/0.
    v = text.strip(PG_SPACE)
    if not v.isascii():
        raise Undecidable
    v = v.lower()
    if v and ("true".startswith(v) or "yes".startswith(v) or v == "on" or v == "1"):
        return True
    if v and ("false".startswith(v) or "no".startswith(v) or v in ("of", "off") or v == "0"):
        return False
    raise Undecidable


def _uuid_key(text: str) -> str:
    # uuid_out prints lower case; uuid_cmp is memcmp, i.e. the order of the
    # lower-case hex text. Other spellings uuid_in accepts go to the database.
    if not _CANONICAL_UUID.match(text):
        raise Undecidable
    return text.lower()


def _text_key(text: str) -> str:
    # The database's default collation is deterministic, so `=` on text is
    # equality of the strings. Ordering depends on the collation: not here.
    return text


# type oid → (key, operators with the same meaning in Python)
_ORDERED = frozenset(("eq", "neq", "lt", "lte", "gt", "gte", "in", "isdistinct", "is"))
_EQUALITY = frozenset(("eq", "neq", "in", "isdistinct", "is"))
_FAST_TYPES: dict[int, tuple[Callable[[str], Any], frozenset[str]]] = {
    INT2: (_int_key(INT2), _ORDERED),
    INT4: (_int_key(INT4), _ORDERED),
    INT8: (_int_key(INT8), _ORDERED),
    BOOL: (_bool_key, _ORDERED),
    UUID: (_uuid_key, _ORDERED),
    TEXT: (_text_key, _EQUALITY),
    VARCHAR: (_text_key, _EQUALITY),
}
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}


class FastPath:
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
    def build(cls, conditions: Sequence[Condition], columns: Mapping[str, ColumnInfo]) -> FastPath | None:
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
        except Undecidable:
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
