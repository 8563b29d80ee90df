"""esm's built-in Lambda runtime client for Python: `python -m esm.runtime_client module.function`.

What a `kind = "process"` function runs when it sets no `command`. It speaks the Lambda
Runtime API (2018-06-01) like Lambda's own Python runtime: imports the handler once (an
import failure goes to `/runtime/init/error` and the process exits 1), then loops on
`GET /runtime/invocation/next`, calls `handler(event, context)` and posts the result to
`/response` or the error document (errorType, errorMessage, stackTrace) to `/error`.

It uses the standard library only and imports nothing else from esm, so an environment
starts fast and a function needs no extra dependency. As esm's in-process kind does, it
also accepts `async def` handlers (run on one event loop kept for the environment's
life); Lambda's Python runtime does not.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

API_VERSION = "2018-06-01"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
CO_COROUTINE = 0x80
"""`async def` (inspect.CO_COROUTINE, without importing inspect)."""


class LambdaContext:
    """The `context` argument, with the attribute names of Lambda's Python runtime."""

    def __init__(self, request_id: str, deadline_ms: int, invoked_function_arn: str) -> None:
        env = os.environ
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
        self.aws_request_id = request_id
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


class InitError(Exception):
    """The handler could not be loaded; `document` is what goes to /runtime/init/error."""

    def __init__(self, error_type: str, message: str, stack: list[str] | None = None) -> None:
        super().__init__(message)
        self.document = {
            "errorMessage": message,
            "errorType": error_type,
            "stackTrace": stack or [],
        }


class RuntimeApiClient:
    """One keep-alive HTTP/1.1 connection to the Runtime API (AWS_LAMBDA_RUNTIME_API=host:port).

    A few lines of sockets instead of http.client, whose imports (ssl, email) would
    double this process's start-up time.
    """

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._host = host or "127.0.0.1"
        self._port = int(port)
        self._sock: socket.socket | None = None
        self._buffer = b""

    def _request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [
            f"{method} /{API_VERSION}{path} HTTP/1.1",
            f"Host: {self._host}:{self._port}",
            "User-Agent: esm-runtime-client",
        ]
        if method != "GET":
            lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        message = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (1, 2):
            try:
                if self._sock is None:
                    self._sock = socket.create_connection((self._host, self._port))
                    self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._buffer = b""
                self._sock.sendall(message)
                return self._read_response()
            except OSError:
                # A kept-alive connection the server closed: reconnect once, then give up.
                self._close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buffer = b""

    def _fill(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionResetError("the Runtime API closed the connection")
        self._buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        found, _, self._buffer = self._buffer.partition(marker)
        return found

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        found, self._buffer = self._buffer[:size], self._buffer[size:]
        return found

    def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                chunks.append(self._read_exact(size))
                self._read_until(b"\r\n")
            while self._read_until(b"\r\n"):
                pass  # trailers
            body = b"".join(chunks)
        else:
            body = self._buffer
            try:
                while True:
                    self._fill()
            except ConnectionResetError:
                body = self._buffer
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self._close()
        return status, headers, body

    def next(self) -> tuple[bytes, dict[str, str]]:
        status, headers, body = self._request("GET", "/runtime/invocation/next")
        if status != 200:
            raise RuntimeError(
                f"GET /runtime/invocation/next answered HTTP {status}: {body[:200]!r}"
            )
        return body, headers

    def post_response(self, request_id: str, body: bytes) -> None:
        self._post(
            f"/runtime/invocation/{request_id}/response", body, {"Content-Type": "application/json"}
        )

    def post_error(self, request_id: str, document: dict[str, Any]) -> None:
        self._post(
            f"/runtime/invocation/{request_id}/error",
            json.dumps(document).encode(),
            {"Content-Type": "application/json", ERROR_TYPE_HEADER: str(document["errorType"])},
        )

    def post_init_error(self, document: dict[str, Any]) -> None:
        self._post(
            "/runtime/init/error",
            json.dumps(document).encode(),
            {"Content-Type": "application/json", ERROR_TYPE_HEADER: str(document["errorType"])},
        )

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        status, _, answer = self._request("POST", path, body, headers)
        if status != 202:
            print(
                f"esm.runtime_client: POST {path} answered HTTP {status}: {answer[:200]!r}",
                file=sys.stderr,
            )


def load_handler(name: str) -> Callable[..., Any]:
    """Import `module.function` the way Lambda's Python runtime does, with its error types."""
    module_name, dot, attribute = name.rpartition(".")
    if not dot or not module_name or not attribute:
        raise InitError(
            "Runtime.MalformedHandlerName", f"Bad handler '{name}': not enough values to unpack"
        )
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as exc:
        raise InitError(
            "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}"
        ) from exc
    except SyntaxError as exc:
        raise InitError(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}"
        ) from exc
    except Exception as exc:
        raise InitError(type(exc).__name__, str(exc), _stack(exc)) from exc
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise InitError(
            "Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'"
        )
    return handler  # type: ignore[no-any-return]


def _stack(exc: BaseException) -> list[str]:
    """The traceback without this module's own frames, as Lambda's runtime shows it."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return traceback.format_list(frames)


def _error_document(exc: BaseException) -> dict[str, Any]:
    return {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": _stack(exc)}


class _Caller:
    """Calls the handler; an `async def` handler runs on one loop kept for the environment."""

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler
        self._loop: Any = None
        if getattr(getattr(handler, "__code__", None), "co_flags", 0) & CO_COROUTINE:
            import asyncio

            self._loop = asyncio.new_event_loop()

    def __call__(self, event: Any, context: LambdaContext) -> Any:
        if self._loop is not None:
            return self._loop.run_until_complete(self.handler(event, context))
        return self.handler(event, context)


def serve(client: RuntimeApiClient, handler: Callable[..., Any]) -> None:
    call = _Caller(handler)
    while True:
        body, headers = client.next()
        request_id = headers.get("lambda-runtime-aws-request-id", "")
        trace_id = headers.get("lambda-runtime-trace-id")
        if trace_id:
            os.environ["_X_AMZN_TRACE_ID"] = trace_id
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        context = LambdaContext(
            request_id,
            int(headers.get("lambda-runtime-deadline-ms", "0") or 0),
            headers.get("lambda-runtime-invoked-function-arn", ""),
        )
        try:
            event = json.loads(body) if body else None
        except ValueError as exc:
            client.post_error(
                request_id,
                {
                    "errorMessage": f"Unable to unmarshal input: {exc}",
                    "errorType": "Runtime.UnmarshalError",
                    "stackTrace": [],
                },
            )
            continue
        try:
            result = call(event, context)
        except Exception as exc:  # the handler's own error, reported as Lambda does
            document = _error_document(exc)
            print(
                f"[ERROR] {document['errorType']}: {document['errorMessage']}\n"
                "Traceback (most recent call last):\n" + "".join(document["stackTrace"]),
                file=sys.stderr,
                end="",
            )
            client.post_error(request_id, document)
            continue
        try:
            payload = json.dumps(result).encode()
        except (TypeError, ValueError) as exc:
            client.post_error(
                request_id,
                {
                    "errorMessage": f"Unable to marshal response: {exc}",
                    "errorType": "Runtime.MarshalError",
                    "stackTrace": [],
                },
            )
            continue
        client.post_response(request_id, payload)


def main(argv: list[str]) -> int:
    address = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not address:
        print("esm.runtime_client: AWS_LAMBDA_RUNTIME_API is not set", file=sys.stderr)
        return 2
    name = argv[1] if len(argv) > 1 else os.environ.get("_HANDLER", "")
    # Run as a script (esm's default command), Python put esm/ itself first on sys.path:
    # drop it, so esm's module names never shadow the function's.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    if task_root not in sys.path:
        sys.path.insert(0, task_root)
    client = RuntimeApiClient(address)
    try:
        handler = load_handler(name)
    except InitError as exc:
        print(
            f"[ERROR] {exc.document['errorType']}: {exc.document['errorMessage']}", file=sys.stderr
        )
        client.post_init_error(exc.document)
        return 1
    serve(client, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
