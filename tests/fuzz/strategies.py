"""Hypothesis strategies shared by the property tests of tests/fuzz/.

Random bytes alone rarely get past the first check of a parser, so most of
these build inputs that are well formed except for one or two fields: JSON
values with awkward members (NUL, lone surrogates, huge numbers, deep nesting),
and byte mutations (truncation, invalid UTF-8, flipped bytes) applied to a
valid encoding."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "awkward_text",
    "huge_numbers",
    "json_bytes",
    "json_values",
    "mutated",
    "nested",
    "scalars",
]

# Characters parsers trip over: NUL and other controls, quotes, backslashes,
# separators of the filter grammar, a lone surrogate, non-BMP text.
_AWKWARD = "\x00\x01\x1b\x7f\"\\'.,=(){}[]:;%*\t\n\r \u0085\u00a0\u2028\ufeff\ud800\udfff\U0001f600é"

awkward_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(_AWKWARD), max_size=40),
    st.text(alphabet=st.characters(codec=None), max_size=20),  # lone surrogates included
)

huge_numbers = st.one_of(
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**400, -(10**400)]),
    st.integers(min_value=-(2**130), max_value=2**130),
    st.floats(allow_nan=True, allow_infinity=True),
)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), huge_numbers, awkward_text)

json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(awkward_text, children, max_size=3),
    ),
    max_leaves=10,
)


def nested(value: Any, depth: int, kind: str) -> Any:
    """`value` inside `depth` lists or single-key objects."""
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


# Depths around the limits of the JSON libraries: orjson encodes 254 levels
# and decodes 1024; Python's repr recursion limit is 1000.
deep_depths = st.one_of(st.integers(1, 1500), st.sampled_from([127, 128, 129, 254, 255, 999, 1000, 1024, 1025]))


def json_bytes(value: Any, ascii_only: bool = False) -> bytes:
    """`value` as JSON text the way a lenient encoder writes it: NaN, huge ints and
    lone surrogates included (each is something a decoder must refuse or take)."""
    text = json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with up to three edits: truncation, an inserted invalid UTF-8 or NUL
    sequence, a replaced byte, a deleted range."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["truncate", "insert", "replace", "delete"]))
        pos = draw(st.integers(0, len(out)))
        if op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = draw(
                st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b'"', b"\\"])
                | st.binary(max_size=4)
            )
        elif op == "replace" and pos < len(out):
            out[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del out[pos : pos + draw(st.integers(1, 8))]
    return bytes(out)
