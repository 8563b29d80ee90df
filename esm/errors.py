"""The exception types esm raises; each says what failed and, where it can, what to do."""

from __future__ import annotations


class EsmError(Exception):
    """Base of every error esm raises on purpose."""


class ConfigError(EsmError):
    """The configuration is invalid; `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class HandlerLoadError(EsmError):
    """A function's handler could not be imported (Lambda's Runtime.ImportModuleError)."""


class SourceUnavailable(EsmError):
    """An event source does not exist or cannot be reached with these credentials.

    Retrying will not help; the mapping turns not-ready and is checked again later.
    """


class DeliveryFailed(EsmError):
    """An on-failure destination did not accept a record; the batch must not be skipped."""
