"""The application side of the sidecar pattern: a Lambda handler behind one HTTP endpoint.

esm (a `kind = "http"` function) POSTs each batch's event to `POST /invoke` as JSON and
takes the JSON it gets back as the function's response, so `batchItemFailures` work as on
Lambda. Standard library only, so it runs in any Python image; your application would
expose the same endpoint from its own web framework.

    python examples/sidecar_app.py --port 8080          # HANDLER=handlers.handle by default

Answers: 200 with the handler's return value as JSON; 500 with a Lambda error document
(`errorMessage`, `errorType`) when the handler raises, which esm counts as a function error;
`GET /healthz` 200 for the container's probes. Listens on 127.0.0.1: only esm, in the same
pod or network namespace, can reach it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

Handler = Callable[[dict[str, Any], Any], Any]


def load_handler(spec: str) -> Handler:
    """`module.function`, as Lambda writes a handler."""
    module, _, function = spec.rpartition(".")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


class _Context:
    """The parts of Lambda's context object the example handlers may read."""

    def __init__(self, headers: Any) -> None:
        self.aws_request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn", "")
        self.function_name = self.invoked_function_arn.rpartition(":")[2]


def make_server(host: str, port: int, handler: Handler) -> ThreadingHTTPServer:
    class Endpoint(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                self._answer(200, {"ok": True})
            else:
                self._answer(404, {"errorMessage": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/invoke":
                self._answer(404, {"errorMessage": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                event = json.loads(self.rfile.read(length) or b"null")
                result = handler(event, _Context(self.headers))
            except Exception as exc:
                self._answer(500, {
                    "errorMessage": str(exc),
                    "errorType": type(exc).__name__,
                    "stackTrace": traceback.format_exception(exc),
                })
                return
            self._answer(200, result)

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # one line per batch is noise; esm logs and counts every invocation

    return ThreadingHTTPServer((host, port), Endpoint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--handler", default=os.environ.get("HANDLER", "handlers.handle"))
    args = parser.parse_args()
    server = make_server(args.host, args.port, load_handler(args.handler))
    url = f"http://{args.host}:{server.server_port}/invoke"
    print(f"sidecar_app: {args.handler} at {url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
