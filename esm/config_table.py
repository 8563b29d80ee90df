"""Reading one TOML table of the config: typed getters that record every problem under its
key path (`mappings[0].batch_size: 20000 is above the maximum 10000`), so one pass lists all.

Public so that each source family's config module parses its own `[[mappings]]` keys with the
same rules and wording as esm/config.py, without importing config.py (which imports the
families through esm/sources/registry.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from esm.filtering import validate_pattern

UNRESOLVED_PREFIX = "<unresolved:"
_BARE_KEY = re.compile(r"[A-Za-z0-9_.\[\]-]+")
"""Bare keys, plus the dots and brackets of paths esm composes (`filters[1].pattern`)."""
MAX_FILTERS = 5
MAX_FILTER_PATTERN_CHARS = 4096


def is_destination_arn(arn: str) -> bool:
    parts = arn.split(":")
    return len(parts) >= 6 and parts[0] == "arn" and parts[2] in ("sqs", "sns", "s3")


def parse_filter_criteria(t: Table) -> tuple[str, ...]:
    criteria = t.table("filter_criteria")
    filters = criteria.array_of_tables("filters")
    if len(filters) > MAX_FILTERS:
        criteria.problem(
            "filters", f"has {len(filters)} filters; at most {MAX_FILTERS} are allowed"
        )
    patterns = []
    for f in filters:
        pattern = f.string("pattern", "", required=True)
        if len(pattern) > MAX_FILTER_PATTERN_CHARS:
            f.problem(
                "pattern", f"is {len(pattern)} characters; at most {MAX_FILTER_PATTERN_CHARS}"
            )
        elif pattern and (problem := validate_pattern(pattern)) is not None:
            f.problem("pattern", problem)
        f.finish()
        patterns.append(pattern)
    criteria.finish()
    return tuple(patterns)


def quoted_key(key: str) -> str:
    """A key as written in TOML: bare when it can be, quoted and escaped otherwise, so that
    a key holding spaces, quotes or newlines keeps its problem on one unambiguous line."""
    if _BARE_KEY.fullmatch(key):
        return key
    return '"' + key.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


T = TypeVar("T")
N = TypeVar("N", int, float)


class Table:
    """One TOML table being validated: typed getters that record problems under a key path."""

    def __init__(self, raw: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.problems_for: set[str] = set()
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.append(f"{path or 'config'}: must be a table, not {type_name(raw)}")
            raw = {}
        self.raw: Mapping[str, Any] = raw
        self._seen: set[str] = set()
        self._placeholders: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{quoted_key(key)}" if self.path else quoted_key(key)

    def problem(self, key: str, message: str) -> None:
        self.problems_for.add(key)
        self.problems.append(f"{self.key_path(key)}: {message}")

    def consume(self, key: str) -> Any:
        """The key's value; a placeholder left by esm import reads as absent, so that its one
        problem line is the only one (not also "is not an ARN", "is required", ...)."""
        self._seen.add(key)
        value = self.raw.get(key)
        self._reject_placeholders(key, value)
        if isinstance(value, str) and value.startswith(UNRESOLVED_PREFIX):
            self._placeholders.add(key)
            return None
        return value

    def _reject_placeholders(self, key: str, value: Any) -> None:
        """`esm import` writes `<unresolved: ...>` where it could not resolve a value; such a
        config must not run, whichever key (an ARN, an environment variable, a command)."""
        if isinstance(value, str) and value.startswith(UNRESOLVED_PREFIX):
            self.problem(key, f"{value} is a placeholder left by esm import: set the real value")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._reject_placeholders(f"{key}[{index}]", item)
        elif isinstance(value, Mapping) and not isinstance(value, Table):
            for name, item in value.items():
                if isinstance(item, str | list):
                    self._reject_placeholders(f"{key}.{name}", item)

    def finish(self, ignore_unknown: bool = False) -> None:
        """Unknown keys are errors: a typo must never be silently ignored."""
        if ignore_unknown:
            return
        for key in self.raw:
            if key not in self._seen:
                self.problem(key, "unknown key")

    def _get(
        self,
        key: str,
        default: T,
        check: Callable[[Any], bool],
        expected: str,
        required: bool = False,
    ) -> Any:
        value = self.consume(key)
        if value is None:
            if required and key not in self._placeholders:
                self.problem(key, "is required")
            return default
        if not check(value):
            self.problem(key, f"must be {expected}, not {type_name(value)} {value!r}")
            return default
        return value

    def string(self, key: str, default: str, required: bool = False) -> str:
        value: str = self._get(key, default, lambda v: isinstance(v, str), "a string", required)
        return value

    def optional_string(self, key: str) -> str | None:
        value: str | None = self._get(key, None, lambda v: isinstance(v, str), "a string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, default, lambda v: isinstance(v, bool), "true or false")
        return value

    def choice(
        self, key: str, allowed: tuple[str, ...], default: str, required: bool = False
    ) -> str:
        value = self.string(key, default, required)
        if value and value not in allowed:
            self.problem(key, f"{value!r} is not one of {', '.join(allowed)}")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int, what: str = "") -> int:
        value = self.optional_integer(key, low, high, what)
        return default if value is None else value

    def optional_integer(self, key: str, low: int, high: int, what: str = "") -> int | None:
        value: int | None = self._get(
            key, None, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"
        )
        return self._in_range(key, value, low, high, what)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        checked = self.optional_number(key, low, high)
        return default if checked is None else checked

    def optional_number(self, key: str, low: float, high: float) -> float | None:
        value = self._get(
            key,
            None,
            lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "a number",
        )
        checked = self._in_range(key, value, low, high)
        return None if checked is None else float(checked)

    def _in_range(
        self, key: str, value: N | None, low: float, high: float, what: str = ""
    ) -> N | None:
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(key, f"{value} is not a number from {low} to {high}")
            return None
        suffix = f" for {what}" if what else ""
        if value < low:
            self.problem(key, f"{value} is below the minimum {low}{suffix}")
            return None
        if value > high:
            self.problem(key, f"{value} is above the maximum {high}{suffix}")
            return None
        return value

    def optional_timestamp(self, key: str) -> datetime | None:
        value = self.consume(key)
        if value is None:
            return None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return datetime.fromtimestamp(value, UTC)
            except (OverflowError, ValueError, OSError):
                self.problem(key, f"{value} is not a time in epoch seconds")
                return None
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        self.problem(key, f"must be an ISO 8601 date-time or epoch seconds, not {value!r}")
        return None

    def string_list(self, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        value = self.consume(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, f"must be a list of strings, not {type_name(value)}")
            return ()
        for item in value:
            if item not in allowed:
                self.problem(key, f"{item!r} is not one of {', '.join(allowed)}")
        return tuple(v for v in value if v in allowed)

    def string_map(self, key: str) -> dict[str, str]:
        value = self.consume(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(key, f"must be a table of strings, not {type_name(value)}")
            return {}
        result = {}
        for name, item in value.items():
            if isinstance(item, str):
                result[name] = item
            else:
                self.problems.append(
                    f"{self.key_path(key)}.{name}: must be a string, not {type_name(item)}"
                )
        return result

    def table(self, key: str) -> Table:
        return Table(self.consume(key), self.key_path(key), self.problems)

    def named_tables(self, key: str) -> list[tuple[str, Table]]:
        section = self.table(key)
        tables = [(name, section.table(name)) for name in section.raw]
        return tables

    def array_of_tables(self, key: str) -> list[Table]:
        value = self.consume(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(key, f"must be an array of tables ([[{key}]]), not {type_name(value)}")
            return []
        return [
            Table(item, f"{self.key_path(key)}[{i}]", self.problems) for i, item in enumerate(value)
        ]


def type_name(value: Any) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, datetime):
        return "date-time"
    return names.get(type(value), type(value).__name__)
