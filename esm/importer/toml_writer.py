"""A small deterministic TOML emitter for the subset esm's config uses.

Owns turning plain values (str, bool, int, float, list, dict) into TOML text that `tomllib`
reads back to the same values. Keys keep their insertion order, so the same input always gives
the same bytes. Top-level dicts of dicts become `[a.b]` tables, lists of dicts `[[a]]` arrays
of tables; anything nested deeper is written inline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else string(name)


def string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def value(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        if math.isinf(item):
            return "inf" if item > 0 else "-inf"
        return repr(item)
    if isinstance(item, str):
        return string(item)
    if isinstance(item, list):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, Mapping):
        if not item:
            return "{}"
        return "{ " + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + " }"
    raise TypeError(f"cannot write {type(item).__name__} as TOML")


def dumps(document: Mapping[str, Any], header: str = "") -> str:
    """`document`: top-level keys whose values are tables (dict), tables of tables (dict of
    dicts, written `[name.sub]`), arrays of tables (list of dicts) or plain values."""
    lines: list[str] = [f"# {line}".rstrip() for line in header.splitlines()]
    plain = {k: v for k, v in document.items() if not _is_table(v) and not _is_table_array(v)}
    for k, v in plain.items():
        lines.append(f"{key(k)} = {value(v)}")
    for k, v in document.items():
        if k in plain:
            continue
        if _is_table_array(v):
            for entry in v:
                _blank(lines)
                lines.append(f"[[{key(k)}]]")
                lines.extend(f"{key(ek)} = {value(ev)}" for ek, ev in entry.items())
        elif v and all(_is_table(sub) for sub in v.values()):
            for sub_name, sub in v.items():
                _blank(lines)
                lines.append(f"[{key(k)}.{key(sub_name)}]")
                lines.extend(f"{key(ek)} = {value(ev)}" for ek, ev in sub.items())
        else:
            _blank(lines)
            lines.append(f"[{key(k)}]")
            lines.extend(f"{key(ek)} = {value(ev)}" for ek, ev in v.items())
    return "\n".join(lines) + "\n"


def _blank(lines: list[str]) -> None:
    if lines:
        lines.append("")


def _is_table(item: Any) -> bool:
    return isinstance(item, Mapping)


def _is_table_array(item: Any) -> bool:
    return isinstance(item, list) and bool(item) and all(isinstance(v, Mapping) for v in item)
