"""Real HTTP servers for the http and lambda function kinds, on loopback in their own thread.

`Sidecar` is an application's endpoint (kind = "http"); `InvokeApi` speaks Lambda's Invoke
API the way AWS Lambda and the Runtime Interface Emulator answer it (kind = "lambda").
Both decide by the event, as a real function would, and record every request they got.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from anyio.from_thread import start_blocking_portal


@contextmanager
def serve(app: web.Application, ssl_context: Any = None) -> Iterator[str]:
    """Run `app` on 127.0.0.1:<free port> in a thread of its own; yield its base URL."""
    with start_blocking_portal() as portal:
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        portal.call(runner.setup)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        portal.call(site.start)
        scheme = "https" if ssl_context is not None else "http"
        try:
            yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            portal.call(runner.cleanup)


def _batch_item_failures(event: dict[str, Any]) -> dict[str, Any]:
    """SQS: report every message whose body contains 'fail'."""
    return {
        "batchItemFailures": [
            {"itemIdentifier": r["messageId"]} for r in event["Records"] if "fail" in r["body"]
        ]
    }


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _note(self, entry: dict[str, Any], key: str) -> int:
        with self._lock:
            self.requests.append(entry)
            self._seen[key] += 1
            return self._seen[key]

    def events(self) -> list[Any]:
        with self._lock:
            return [r["event"] for r in self.requests]

    def bodies(self) -> list[str]:
        return [r["body"] for e in self.events() if "Records" in e for r in e["Records"]]


class Sidecar(_Recorder):
    """An application endpoint. The event says what to answer:

    `throttle_times` (answer `throttle_status`, 429 by default, that many times first),
    `status` + `body`, `sleep`, `answer`; an SQS event gets batchItemFailures for bodies
    containing 'fail'; anything else is echoed back.
    """

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/invoke", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        event = json.loads(raw)
        key = str(event.get("key", "")) if isinstance(event, dict) else ""
        count = self._note({"headers": dict(request.headers), "event": event}, key)
        if "Records" in event:
            return web.json_response(_batch_item_failures(event))
        if count <= event.get("throttle_times", 0):
            return web.Response(status=event.get("throttle_status", 429), text="slow down")
        if "sleep" in event:
            await asyncio.sleep(event["sleep"])
        if "status" in event:
            return web.Response(status=event["status"], text=event.get("body", ""))
        if "raw" in event:
            return web.Response(text=event["raw"])
        return web.json_response(event.get("answer", {"echo": event}))


class InvokeApi(_Recorder):
    """Lambda's Invoke API (POST /2015-03-31/functions/{name}/invocations).

    The event says what to answer: `throttle_times` (429 TooManyRequestsException first),
    `raise` (a function error: 200 with X-Amz-Function-Error, or without it when `rie` is
    true, as the Runtime Interface Emulator answers), `empty` (the emulator's answer when
    its runtime died); an SQS event gets batchItemFailures; anything else is echoed with the
    function name the request named. A function named `missing` does not exist (404).
    """

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        event = json.loads(await request.read())
        key = str(event.get("key", "")) if isinstance(event, dict) else ""
        count = self._note(
            {
                "name": name,
                "headers": dict(request.headers),
                "invocation_type": request.headers.get("X-Amz-Invocation-Type"),
                "event": event,
            },
            key,
        )
        request_id = str(uuid.uuid4())
        headers = {"x-amzn-RequestId": request_id, "X-Amz-Executed-Version": "$LATEST"}
        if name.split(":")[-1] == "missing" or name == "missing":
            return _aws_error(
                404, "ResourceNotFoundException", f"Function not found: {name}", headers
            )
        if count <= event.get("throttle_times", 0):
            return _aws_error(429, "TooManyRequestsException", "Rate Exceeded.", headers)
        if "Records" in event:
            return web.json_response(_batch_item_failures(event), headers=headers)
        if "raise" in event:
            document = {
                "errorMessage": event["raise"],
                "errorType": "ValueError",
                "stackTrace": ['  File "/var/task/app.py", line 3, in handler\n'],
            }
            if not event.get("rie"):
                headers["X-Amz-Function-Error"] = "Unhandled"
            return web.json_response(document, headers=headers)
        if event.get("empty"):
            return web.Response(body=b"", headers=headers)
        return web.json_response({"function": name, "event": event}, headers=headers)


def _aws_error(status: int, code: str, message: str, headers: dict[str, str]) -> web.Response:
    return web.json_response(
        {"Type": "User", "message": message},
        status=status,
        headers={**headers, "x-amzn-ErrorType": code},
    )


def self_signed_tls(directory: Path) -> ssl.SSLContext:
    """A server-side TLS context with a fresh self-signed certificate for 127.0.0.1."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context
