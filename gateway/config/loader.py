"""Load layered TOML files into validated settings, with errors that name file, key and line.

`gateway serve -c base.toml -c overlay.toml`: later files override earlier ones key by
key (tables merge recursively; arrays and scalar values are replaced whole).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.config.schema import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)
Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """A settings or policy file is unreadable or invalid; ``problems`` holds one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class SourceFile:
    path: Path
    text: str
    data: dict[str, Any]


def read_toml(path: Path) -> SourceFile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    return parse_toml(path, text)


def parse_toml(path: Path, text: str) -> SourceFile:
    """TOML text already read; ``path`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    return SourceFile(path, text, data)


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(paths: Sequence[Path]) -> Settings:
    """Read, merge and validate config files; raise ConfigError listing every problem."""
    return validate_layers(Settings, [read_toml(p) for p in paths])


def validate_layers(model: type[ModelT], sources: Sequence[SourceFile]) -> ModelT:
    merged: dict[str, Any] = {}
    for source in sources:
        merged = merge(merged, source.data)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        problems = [_describe(err, sources) for err in exc.errors()]
        raise ConfigError(list(dict.fromkeys(problems))) from None


def _describe(error: Any, sources: Sequence[SourceFile]) -> str:
    loc: Loc = tuple(part for part in error["loc"] if not _is_type_tag(part))
    key = _dotted(loc) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    where = _locate(loc, sources)
    return f"{where}: {key}: {message}"


def _is_type_tag(part: str | int) -> bool:
    # pydantic adds union member names ("IPv4Network", "function-before[...]") to locations.
    return isinstance(part, str) and (part[:1].isupper() or "[" in part)


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _locate(loc: Loc, sources: Sequence[SourceFile]) -> str:
    for source in reversed(sources):
        lines = _key_lines(source.text)
        for length in range(len(loc), 0, -1):
            line = lines.get(loc[:length])
            if line is not None:
                return f"{source.path}:{line}"
    return str(sources[-1].path) if sources else "config"


_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")


def _key_lines(text: str) -> dict[Loc, int]:
    """Map each table/key path to the line it is written on (first match wins)."""
    found: dict[Loc, int] = {}
    counts: dict[tuple[str, ...], int] = {}
    table: Loc = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER_RE.match(line)
        if header:
            names = _split_key(header.group(2))
            if header.group(1) == "[[":
                index = counts.get(names, 0)
                counts[names] = index + 1
                table = (*names, index)
            else:
                table = names
            found.setdefault(table, number)
            continue
        key = _KEY_RE.match(line)
        if key:
            names = _split_key(key.group(1))
            found.setdefault((*table, *names), number)
    return found


_KEY_PART_RE = re.compile(r'\s*("[^"]*"|\'[^\']*\'|[^.]+)\s*(?:\.|$)')


def _split_key(dotted: str) -> tuple[str, ...]:
    """Split a TOML dotted key, keeping quoted parts such as "example.net" whole."""
    return tuple(m.group(1).strip("\"'") for m in _KEY_PART_RE.finditer(dotted.strip()))
