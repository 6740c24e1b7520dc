"""Settings declared once, as dataclass fields that name their environment variable.

A field made with int_var(), bool_var(), ... carries its variable's name, its
parser and a one-line doc in its metadata; read() builds the dataclass from an
environment and markdown_table() writes the README's rows, so adding a setting
is one line. A blank variable counts as unset. A value that does not parse
raises ValueError naming the variable: bad configuration stops the server at
start instead of silently falling back to a default."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

__all__ = [
    "EnvVar",
    "bool_var",
    "declared",
    "int_var",
    "json_object_var",
    "list_var",
    "markdown_table",
    "named",
    "optional_str_var",
    "parse_bool",
    "parse_choice",
    "parse_int",
    "parse_json_object",
    "path_var",
    "read",
    "readme_blocks",
    "replace_blocks",
    "str_var",
]

T = TypeVar("T")

_KEY = "env"
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One field's environment variable: `parse(name, text)` turns its non-blank text into the value."""

    name: str
    doc: str
    parse: Callable[[str, str], object]
    # The README's default, where the field's default alone does not say it.
    shown_default: str | None = None


def parse_int(name: str, text: str, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if value < minimum:
        if minimum == 0:
            raise ValueError(f"{name} must not be negative, got {value}")
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def parse_bool(name: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{name} must be one of true/false, 1/0, yes/no, on/off, got {text!r}")


def parse_choice(name: str, text: str, choices: tuple[str, ...]) -> str:
    word = text.strip().lower()
    if word not in choices:
        allowed = " or ".join(repr(c) for c in choices) if len(choices) == 2 else ", ".join(map(repr, choices))
        raise ValueError(f"{name} must be {allowed}, got {word!r}")
    return word


def parse_json_object(name: str, text: str) -> dict[str, object]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{name} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got a JSON {type(value).__name__}")
    return value


def _text(name: str, text: str) -> str:
    return text


def _path(name: str, text: str) -> Path:
    return Path(text)


def _declare(
    name: str, default: object, doc: str, parse: Callable[[str, str], object], shown: str | None, *, repr: bool = True
) -> Any:
    return field(default=default, repr=repr, metadata={_KEY: EnvVar(name, doc, parse, shown)})


def int_var(
    name: str, default: int, doc: str, *, minimum: int = 0, maximum: int | None = None, shown: str | None = None
) -> int:
    return _declare(name, default, doc, partial(parse_int, minimum=minimum, maximum=maximum), shown)  # type: ignore[no-any-return]


def bool_var(name: str, default: bool, doc: str) -> bool:
    return _declare(name, default, doc, parse_bool, None)  # type: ignore[no-any-return]


def str_var(name: str, default: str, doc: str, *, choices: tuple[str, ...] = (), shown: str | None = None) -> str:
    """A string; with choices, one of them (matched case-insensitively, kept lower case)."""
    parse = partial(parse_choice, choices=choices) if choices else _text
    return _declare(name, default, doc, parse, shown)  # type: ignore[no-any-return]


def optional_str_var(name: str, doc: str, *, shown: str = "unset", secret: bool = False) -> str | None:
    """Text, None when unset; a `secret` (a password, or a URL that may hold one) is left out of the repr."""
    return _declare(name, None, doc, _text, shown, repr=not secret)  # type: ignore[no-any-return]


def json_object_var(name: str, doc: str) -> dict[str, object] | None:
    return _declare(name, None, doc, parse_json_object, None)  # type: ignore[no-any-return]


def _list(name: str, text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def list_var(name: str, doc: str) -> tuple[str, ...]:
    """Comma-separated values (blanks around each dropped); unset → empty."""
    return _declare(name, (), doc, _list, "empty")  # type: ignore[no-any-return]


def path_var(name: str, default: Path, doc: str, *, shown: str | None = None) -> Path:
    return _declare(name, default, doc, _path, shown)  # type: ignore[no-any-return]


def _nested(f: dataclasses.Field[Any]) -> type | None:
    """The settings dataclass a field holds (declared with default_factory=ThatClass), if any."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], EnvVar]]:
    """Every field of cls, and of the settings dataclasses it holds, that has a variable, in order."""
    for f in dataclasses.fields(cls):
        var = f.metadata.get(_KEY)
        if var is not None:
            yield f, var
        elif (inner := _nested(f)) is not None:
            yield from declared(inner)


def _given(env: Mapping[str, str], var: EnvVar) -> str | None:
    text = env.get(var.name)
    return None if text is None or not text.strip() else text


def read(cls: type[T], env: Mapping[str, str], **fixed: object) -> T:
    """An instance of cls from env: declared fields from their variables (defaults when unset),
    held settings dataclasses read the same way, other fields from `fixed` or their defaults."""
    values: dict[str, object] = dict(fixed)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = f.metadata.get(_KEY)
        if var is not None:
            text = _given(env, var)
            if text is not None:
                values[f.name] = var.parse(var.name, text)
        elif (inner := _nested(f)) is not None and f.name not in values:
            values[f.name] = read(inner, env)
    return cls(**values)


def named(cls: type, env: Mapping[str, str]) -> frozenset[str]:
    """The fields of cls whose variables env sets (not blank)."""
    return frozenset(f.name for f in dataclasses.fields(cls) if (var := f.metadata.get(_KEY)) and _given(env, var))


def _shown(f: dataclasses.Field[Any], var: EnvVar) -> str:
    if var.shown_default is not None:
        return var.shown_default
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    return f"`{default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the table cell


def markdown_table(fields: Iterable[tuple[dataclasses.Field[Any], EnvVar]], last_column: str) -> str:
    """A README table of declared fields: variable, default, and the doc under `last_column`."""
    rows = [f"| Variable | Default | {last_column} |", "|---|---|---|"]
    rows += [f"| `{var.name}` | {_cell(_shown(f, var))} | {_cell(var.doc)} |" for f, var in fields]
    return "\n".join(rows) + "\n"


_BLOCK = re.compile(r"<!-- config:(\w+) -->\n(.*?)<!-- /config:\1 -->", re.DOTALL)


def readme_blocks(text: str) -> dict[str, str]:
    """What stands between each `<!-- config:NAME -->` line and its `<!-- /config:NAME -->`, by NAME."""
    return {m[1]: m[2] for m in _BLOCK.finditer(text)}


def replace_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """text with each named block's content replaced; ValueError if one of them is missing."""
    missing = set(blocks) - set(readme_blocks(text))
    if missing:
        raise ValueError(f"no <!-- config:NAME --> block for {sorted(missing)}")
    return _BLOCK.sub(lambda m: f"<!-- config:{m[1]} -->\n{blocks.get(m[1], m[2])}<!-- /config:{m[1]} -->", text)
