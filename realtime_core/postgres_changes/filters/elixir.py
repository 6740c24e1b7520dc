"""Elixir's inspect/1, for upstream texts that embed the client's params."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["elixir_inspect"]


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
