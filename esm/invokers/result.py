"""What every function kind returns: Lambda's view of one invocation's outcome.

Sources and the retry policy read only this; they never know which kind of function ran.
A failure carries Lambda's error document (errorType, errorMessage, stackTrace), which is
what on-failure records and logs report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_RESPONSE_BYTES = 6_291_556
"""Lambda's limit on a synchronous invocation's response (6 MB)."""


@dataclass(frozen=True)
class FunctionFailure:
    """Lambda's error document for a failed invocation (X-Amz-Function-Error)."""

    error_type: str
    error_message: str
    stack_trace: tuple[str, ...] = ()
    handled: bool = False
    """Lambda's `Handled` (the runtime reported it) vs `Unhandled`; esm reports Unhandled
    for exceptions, as Lambda's Python runtime does."""

    def as_document(self) -> dict[str, Any]:
        return {
            "errorMessage": self.error_message,
            "errorType": self.error_type,
            "stackTrace": list(self.stack_trace),
        }


def response_too_large() -> FunctionFailure:
    """What Lambda reports for a response over MAX_RESPONSE_BYTES, whatever the kind."""
    return FunctionFailure(
        "Function.ResponseSizeTooLarge",
        "Response payload size exceeded maximum allowed payload size "
        f"({MAX_RESPONSE_BYTES} bytes).",
    )


@dataclass(frozen=True)
class InvocationResult:
    request_id: str
    duration_s: float
    response: Any = None
    """The function's response as JSON-compatible data (None for null or an empty body)."""
    failure: FunctionFailure | None = None
    throttled: bool = False
    """The function could not run (no concurrency, not reachable): an error before invocation,
    which for streams does not use up maximum_retry_attempts."""
    invalid_response: bool = field(default=False)
    """The response body was not valid JSON; partial batch responses then mean full failure."""

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.throttled


class Invoker(Protocol):
    """A function esm can call. One per [functions.*] entry, shared by its mappings."""

    name: str
    arn: str
    timeout: float

    async def invoke(self, event: dict[str, Any]) -> InvocationResult: ...

    async def aclose(self) -> None: ...
