"""AWS clients (one aiobotocore session) and the one retry policy every AWS call goes through.

Throttling, 5xx and connection errors are retried with jittered exponential backoff
(tenacity); botocore's own retries are off so there is exactly one policy. A missing
resource or bad credentials is not retried: the caller gets `SourceUnavailable` and turns
its mapping not-ready instead of looping.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import aiohttp
import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from esm.config import DaemonConfig
from esm.errors import SourceUnavailable
from esm.observability import Metrics, get_logger

log = get_logger("esm.aws")

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "KMSThrottlingException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
    }
)
UNAVAILABLE_CODES = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "ResourceNotFoundException",
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "NotFound",
        "NotFoundException",
    }
)
TRANSIENT_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ReadTimeoutError,
    ConnectTimeoutError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)

T = TypeVar("T")


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_retryable(exc: BaseException) -> bool:
    """Throttles, server errors and broken connections are worth another try."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in THROTTLING_CODES or status >= 500 or status == 429
    return isinstance(exc, TRANSIENT_ERRORS)


def is_unavailable(exc: BaseException) -> bool:
    """A missing resource or rejected credentials: retrying soon will not help."""
    return isinstance(exc, NoCredentialsError) or error_code(exc) in UNAVAILABLE_CODES


class RetryPolicy:
    """Bounded attempts with full-jitter exponential backoff; callers loop above it."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        attempts: int = 6,
        initial: float = 0.1,
        maximum: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.attempts = attempts
        self.initial = initial
        self.maximum = maximum

    async def call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` (one AWS call); retry transient failures; map missing resources.

        The first attempt runs bare: building tenacity's retry state for every call was
        the largest cost of the SQS hot path (bench/), and most calls succeed at once."""
        try:
            return await fn()
        except (ClientError, BotoCoreError, *TRANSIENT_ERRORS) as exc:
            if not is_retryable(exc) or self.attempts <= 1:
                if is_unavailable(exc):
                    raise SourceUnavailable(f"{operation}: {exc}") from exc
                raise
            self._before_retry(operation, 1, exc)
        await anyio.sleep(random.uniform(0, self.initial))
        return await self._call_with_retries(operation, fn)

    def _before_retry(self, operation: str, attempt: int, exc: BaseException | None) -> None:
        if self.metrics is not None:
            self.metrics.aws_retries.labels(operation).inc()
        log.debug("aws.retry", operation=operation, attempt=attempt, error=repr(exc))

    async def _call_with_retries(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """The remaining attempts, with full-jitter exponential backoff between them."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._before_retry(operation, state.attempt_number + 1, exc)

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            stop=stop_after_attempt(self.attempts - 1),
            wait=wait_random_exponential(multiplier=self.initial, max=self.maximum),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await fn()
        except (ClientError, BotoCoreError) as exc:
            if is_unavailable(exc):
                raise SourceUnavailable(f"{operation}: {exc}") from exc
            raise
        raise AssertionError("unreachable: tenacity either returns or re-raises")


class AwsClients:
    """Lazily created aiobotocore clients sharing one session, closed together."""

    def __init__(self, daemon: DaemonConfig, metrics: Metrics | None = None) -> None:
        self._daemon = daemon
        self._session = get_session()
        self._stack = AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self.retry = RetryPolicy(metrics)
        self._config = AioConfig(
            retries={"total_max_attempts": 1},
            max_pool_connections=1000,
            connect_timeout=5,
            read_timeout=40,
        )

    async def __aenter__(self) -> AwsClients:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stack.__aexit__(*exc_info)

    async def client(self, service: str) -> Any:
        async with self._lock:
            if service not in self._clients:
                self._clients[service] = await self._stack.enter_async_context(
                    self._session.create_client(
                        service,
                        region_name=self._daemon.region,
                        endpoint_url=self._daemon.endpoint_url,
                        config=self._config,
                        **_local_credentials(self._daemon),
                    )
                )
            return self._clients[service]


def _local_credentials(daemon: DaemonConfig) -> dict[str, str]:
    """A local endpoint accepts any credentials; use placeholders when none are configured,
    so the embedded quick start needs no AWS account. Real AWS always uses the normal chain.
    IPv6's loopback counts (`http://[::1]:4566`), as for the handlers' environment."""
    endpoint = daemon.endpoint_url or ""
    local = "127.0.0.1" in endpoint or "localhost" in endpoint or "[::1]" in endpoint
    if local and not os.environ.get("AWS_ACCESS_KEY_ID") and not os.environ.get("AWS_PROFILE"):
        return {"aws_access_key_id": "esm-local", "aws_secret_access_key": "esm-local"}
    return {}
