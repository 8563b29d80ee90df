"""`kind = "lambda"`: AWS Lambda's Invoke API (RequestResponse), through aiobotocore.

`function_name` is a name, `name:qualifier` or an ARN (with its qualifier); `endpoint_url`
points the client elsewhere (without it `[daemon] endpoint_url` does, as for every AWS
call esm makes: moto's or LocalStack's Lambda): the Lambda Runtime Interface Emulator
(`http://127.0.0.1:9000`, which serves any function name), `sam local start-lambda`
(`http://127.0.0.1:3001`), or a Lambda-compatible service. Outcomes, as Lambda's own event
source mappings read them:

- 200 without `X-Amz-Function-Error`: the payload is the function's response;
- `X-Amz-Function-Error: Unhandled|Handled` (boto3's `FunctionError`): a function error
  carrying the payload's error document;
- `TooManyRequestsException` (429), 5xx service errors and an unreachable endpoint: the
  function could not run, a throttle retried with backoff by `esm.invokers.Function`;
- `ResourceNotFoundException` / access denied: also not run; logged as a warning and
  retried the same way, so a missing function or permission never deletes a message;
- other request errors (4xx): a function error typed by the error code;
- no answer within `timeout` + INVOKE_MARGIN seconds: `Task timed out after N.NN seconds`.
  Set `timeout` to at least the remote function's timeout.

With `endpoint_url` set, two gaps of the emulator are covered (RIE issues #20 and #86): it
never sends `X-Amz-Function-Error`, so a payload that is exactly a Lambda error document
is a function error, and it answers an empty body when the runtime process died, which is
taken as `Runtime.ExitError` rather than a null success.

Region: the ARN's, else the daemon's, else AWS_REGION / AWS_DEFAULT_REGION, else
us-east-1. Credentials: the default chain (placeholders for a loopback endpoint when none
are configured, which the emulators ignore). botocore's own retries are off; throttles
are retried in one place (`Function`).
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from esm.config import FunctionConfig
from esm.invokers.result import FunctionFailure, InvocationResult
from esm.invokers.runtime_api import failure_from_error_body
from esm.observability import get_logger

log = get_logger("esm.lambda")

INVOKE_MARGIN = 5.0
"""Seconds past `timeout` to wait for Lambda's own answer (its timeout error included)."""
CONNECT_TIMEOUT = 5.0
DEFAULT_CONNECTIONS = 100
THROTTLE_CODES = frozenset(
    {
        "TooManyRequestsException",
        "EC2ThrottledException",
        "ResourceNotReadyException",
        "ResourceConflictException",
        "ServiceException",
        "ServiceUnavailableException",
        "ThrottlingException",
    }
)
NOT_RUNNABLE_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
    }
)
ERROR_DOCUMENT_KEYS = frozenset(
    {"errorMessage", "errorType", "stackTrace", "trace", "cause", "requestId"}
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def resolve_region(function_name: str, default: str | None = None) -> str:
    """The region of an ARN, else the daemon's, else the environment's, else us-east-1."""
    parts = function_name.split(":")
    if function_name.startswith("arn:") and len(parts) > 3 and parts[3]:
        return parts[3]
    return (
        default
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )


class LambdaInvoker:
    def __init__(
        self,
        function: FunctionConfig,
        region: str | None = None,
        daemon_endpoint_url: str | None = None,
    ) -> None:
        assert function.function_name is not None
        self.function = function
        self.name = function.name
        self.function_name = function.function_name
        self.region = resolve_region(self.function_name, region)
        self.arn = (
            self.function_name
            if self.function_name.startswith("arn:")
            else f"arn:aws:lambda:{self.region}:000000000000:function:{self.function_name}"
        )
        self.timeout = function.timeout
        self.emulator = function.endpoint_url is not None
        self.endpoint_url = function.endpoint_url or daemon_endpoint_url
        """The function's own endpoint, else `[daemon] endpoint_url` ("for all calls")."""
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._lock = anyio.Lock()
        self._log = log.bind(function=self.name)

    async def _lambda(self) -> Any:
        async with self._lock:
            if self._client is None:
                config = AioConfig(
                    retries={"total_max_attempts": 1},
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=self.timeout + INVOKE_MARGIN,
                    max_pool_connections=self.function.reserved_concurrent_executions
                    or DEFAULT_CONNECTIONS,
                )
                self._client = await self._stack.enter_async_context(
                    get_session().create_client(
                        "lambda",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        verify=self.function.verify_tls,
                        config=config,
                        **_local_credentials(self.endpoint_url),
                    )
                )
            return self._client

    async def invoke(self, event: dict[str, Any]) -> InvocationResult:
        client = await self._lambda()
        payload = orjson.dumps(event)
        started = time.monotonic()
        fallback_id = str(uuid.uuid4())
        read_timed_out = False
        with anyio.move_on_after(self.timeout + INVOKE_MARGIN) as scope:
            try:
                response = await client.invoke(
                    FunctionName=self.function_name,
                    InvocationType="RequestResponse",
                    Payload=payload,
                )
                async with response["Payload"] as stream:
                    body: bytes = await stream.read()
            except ClientError as exc:
                return self._client_error(exc, fallback_id, time.monotonic() - started)
            except (EndpointConnectionError, ConnectTimeoutError) as exc:
                self._log.warning("lambda.unreachable", error=type(exc).__name__)
                return InvocationResult(fallback_id, time.monotonic() - started, throttled=True)
            except ReadTimeoutError:
                read_timed_out = True
            except (BotoCoreError, aiohttp.ClientError) as exc:
                return InvocationResult(
                    fallback_id,
                    time.monotonic() - started,
                    failure=FunctionFailure("Lambda.InvokeFailed", f"{type(exc).__name__}: {exc}"),
                )
        duration = time.monotonic() - started
        if scope.cancelled_caught or read_timed_out:
            return InvocationResult(
                fallback_id,
                duration,
                failure=FunctionFailure(
                    "Sandbox.Timedout", f"Task timed out after {self.timeout:.2f} seconds"
                ),
            )
        request_id = response.get("ResponseMetadata", {}).get("RequestId") or fallback_id
        function_error = response.get("FunctionError")
        if function_error:
            failure = failure_from_error_body(body, handled=function_error == "Handled")
            return InvocationResult(request_id, duration, failure=failure)
        return self._payload_result(request_id, duration, body)

    def _payload_result(self, request_id: str, duration: float, body: bytes) -> InvocationResult:
        if not body.strip():
            if self.emulator:
                return InvocationResult(
                    request_id,
                    duration,
                    failure=FunctionFailure(
                        "Runtime.ExitError",
                        f"RequestId: {request_id} Error: the emulator answered an empty body "
                        "(its runtime process exited)",
                    ),
                )
            return InvocationResult(request_id, duration)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return InvocationResult(request_id, duration, invalid_response=True)
        if self.emulator and _is_error_document(document):
            return InvocationResult(request_id, duration, failure=failure_from_error_body(body))
        return InvocationResult(request_id, duration, response=document)

    def _client_error(self, exc: ClientError, request_id: str, duration: float) -> InvocationResult:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "Unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in THROTTLE_CODES or status == 429 or status >= 500:
            self._log.debug("lambda.throttled", code=code, status=status)
            return InvocationResult(request_id, duration, throttled=True)
        if code in NOT_RUNNABLE_CODES:
            self._log.warning("lambda.not_runnable", code=code, function_name=self.function_name)
            return InvocationResult(request_id, duration, throttled=True)
        return InvocationResult(
            request_id,
            duration,
            failure=FunctionFailure(code, str(error.get("Message", "")) or str(exc)),
        )

    async def aclose(self) -> None:
        self._client = None
        await self._stack.aclose()


def _is_error_document(document: Any) -> bool:
    return (
        isinstance(document, dict)
        and "errorMessage" in document
        and "errorType" in document
        and set(document) <= ERROR_DOCUMENT_KEYS
    )


def _local_credentials(endpoint_url: str | None) -> dict[str, str]:
    """Emulators ignore credentials, but botocore must sign: placeholders when none exist."""
    if endpoint_url is None or (urlsplit(endpoint_url).hostname or "") not in LOOPBACK_HOSTS:
        return {}
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return {}
    return {"aws_access_key_id": "esm-local", "aws_secret_access_key": "esm-local"}
