"""`kind = "http"`: POST the event to a URL (the sidecar pattern).

The application exposes one endpoint; esm polls the sources and POSTs each batch's event
there as JSON, like an invocation:

- 2xx: the body, parsed as JSON, is the function's response (so `batchItemFailures`
  work); an empty body is null; a body that is not JSON is an invalid response (full
  failure with ReportBatchItemFailures, success without);
- 429 and 503: the function could not run (a throttle): retried with backoff by
  `esm.invokers.Function`, never counted as a function error;
- a connection that cannot be made: also a throttle (the application is not up yet);
- any other status, a redirect included (never followed, so the token cannot leak to
  another host): a function error carrying the body (a Lambda error document in the body
  is used as is);
- no answer within the function's `timeout`: `Task timed out after N.NN seconds`.

Requests carry the static `headers`, `Authorization: Bearer <token>` when
`bearer_token_env` names an environment variable (the token is never in the config file
and never logged), and Lambda's `Lambda-Runtime-Aws-Request-Id`,
`Lambda-Runtime-Deadline-Ms` and `Lambda-Runtime-Invoked-Function-Arn`. `esm run` moves
every such variable out of its environment into memory at start-up (`retain_secrets`):
no child process inherits it, and a reload still finds it. TLS certificates
are verified unless `verify_tls = false`. The client session is created on the first
invocation and closed by `aclose()`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import orjson

from esm.config import FunctionConfig
from esm.errors import HandlerLoadError
from esm.invokers.result import (
    MAX_RESPONSE_BYTES,
    FunctionFailure,
    InvocationResult,
    response_too_large,
)
from esm.invokers.runtime_api import failure_from_error_body
from esm.observability import get_logger

log = get_logger("esm.http")

THROTTLE_STATUSES = frozenset({429, 503})
CONNECT_TIMEOUT = 5.0
MAX_ERROR_BODY_CHARS = 4096
DEFAULT_CONNECTIONS = 100
_secrets: dict[str, str] = {}
"""Tokens taken out of os.environ by `retain_secrets`, by variable name."""


def retain_secrets(functions: Mapping[str, FunctionConfig]) -> list[str]:
    """Move each http function's `bearer_token_env` variable from os.environ to memory.

    Called once at start-up: a child process inherits no token, and a reload (which builds
    new invokers) still finds it. Returns the names moved.
    """
    moved = []
    for function in functions.values():
        name = function.bearer_token_env
        if function.kind == "http" and name and name in os.environ:
            _secrets[name] = os.environ.pop(name)
            moved.append(name)
    return moved


def secret(name: str, environ: dict[str, str] | None = None) -> str:
    """A token by variable name: from `environ` if given, else os.environ, else retained.

    A variable first named by a reload is read from os.environ and stays there (only the
    names known at start-up are moved, before any function runs).
    """
    if environ is not None:
        return environ.get(name, "")
    return os.environ.get(name) or _secrets.get(name, "")


class HttpInvoker:
    def __init__(self, function: FunctionConfig, environ: dict[str, str] | None = None) -> None:
        assert function.url is not None
        self.function = function
        self.name = function.name
        self.arn = function.arn
        self.timeout = function.timeout
        self.url = function.url
        headers = {"Content-Type": "application/json", **function.headers}
        if function.bearer_token_env is not None:
            token = secret(function.bearer_token_env, environ)
            if not token:
                raise HandlerLoadError(
                    f"function {function.name}: bearer_token_env names "
                    f"{function.bearer_token_env}, which is not set or empty in esm's environment"
                )
            headers["Authorization"] = f"Bearer {token}"
            host = urlsplit(self.url).hostname or ""
            if urlsplit(self.url).scheme == "http" and host not in (
                "127.0.0.1",
                "localhost",
                "::1",
            ):
                log.warning("http.token_over_plain_http", function=self.name, host=host)
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None
        self._lock = anyio.Lock()
        self._log = log.bind(function=self.name)

    async def _client(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None:
                connector = aiohttp.TCPConnector(
                    limit=self.function.reserved_concurrent_executions or DEFAULT_CONNECTIONS,
                    ssl=self.function.verify_tls,
                )
                self._session = aiohttp.ClientSession(
                    connector=connector,
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=min(CONNECT_TIMEOUT, self.timeout)
                    ),
                    json_serialize=lambda value: orjson.dumps(value).decode(),
                )
            return self._session

    async def invoke(self, event: dict[str, Any]) -> InvocationResult:
        request_id = str(uuid.uuid4())
        session = await self._client()
        payload = orjson.dumps(event)
        headers = {
            **self._headers,
            "Lambda-Runtime-Aws-Request-Id": request_id,
            "Lambda-Runtime-Deadline-Ms": str(int((time.time() + self.timeout) * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": self.arn,
        }
        started = time.monotonic()
        status = 0
        body = b""
        too_large = False
        with anyio.move_on_after(self.timeout) as scope:
            try:
                async with session.post(
                    self.url, data=payload, headers=headers, allow_redirects=False
                ) as response:
                    status = response.status
                    body, too_large = await _read_capped(response.content)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self._log.warning("http.unreachable", error=type(exc).__name__, url=self.url)
                return InvocationResult(request_id, time.monotonic() - started, throttled=True)
            except aiohttp.ClientError as exc:
                return InvocationResult(
                    request_id,
                    time.monotonic() - started,
                    failure=FunctionFailure("Runtime.ConnectionError", f"POST {self.url}: {exc!r}"),
                )
        duration = time.monotonic() - started
        if scope.cancelled_caught:
            return InvocationResult(
                request_id,
                duration,
                failure=FunctionFailure(
                    "Sandbox.Timedout", f"Task timed out after {self.timeout:.2f} seconds"
                ),
            )
        self._log.debug("http.answered", status=status, size=len(body), request_id=request_id)
        if status in THROTTLE_STATUSES:
            return InvocationResult(request_id, duration, throttled=True)
        if too_large:
            return InvocationResult(request_id, duration, failure=response_too_large())
        if not 200 <= status < 300:
            return InvocationResult(request_id, duration, failure=_status_failure(status, body))
        if not body.strip():
            return InvocationResult(request_id, duration)
        try:
            return InvocationResult(request_id, duration, response=orjson.loads(body))
        except orjson.JSONDecodeError:
            return InvocationResult(request_id, duration, invalid_response=True)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _status_failure(status: int, body: bytes) -> FunctionFailure:
    """A non-2xx answer: the body's Lambda error document if it is one, else the body."""
    try:
        document = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and "errorMessage" in document:
        return failure_from_error_body(body, default_type=f"HTTP{status}")
    text = body.decode("utf-8", errors="replace")[:MAX_ERROR_BODY_CHARS]
    return FunctionFailure(f"HTTP{status}", f"HTTP {status}: {text}")


async def _read_capped(stream: aiohttp.StreamReader) -> tuple[bytes, bool]:
    """The body, up to Lambda's 6 MB response limit; True when it was longer."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            return b"", True
        chunks.append(chunk)
    return b"".join(chunks), False
