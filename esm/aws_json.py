"""Signed AWS JSON-protocol calls that return the raw response body.

The per-batch calls (Kinesis and DynamoDB Streams GetRecords, SQS receive and delete) skip
botocore: its GetRecords parser caps near 52k records/s, while orjson on the raw body plus
Lambda-shaped records with `Data` kept as base64 runs ~10x faster (see
shared/design/local-endpoints.md), and its request pipeline costs ~1 ms of CPU per call.
Requests are signed by esm.sigv4 (botocore's signature, with the day's key cached) with the
session's credentials, and sent on esm.http1's kept-alive connections (httptools parses the
responses): aiohttp's client cost ~90 us more CPU per call, most of an idle shard's read
(bench/percall.py). `ESM_HTTP_CLIENT=aiohttp` switches back to aiohttp (a fallback for a
network path esm.http1 does not handle, e.g. a proxy). Errors become botocore `ClientError`s
so the one retry policy in esm.aws treats them like any other call.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import aiohttp
import orjson
from botocore.exceptions import ClientError, NoCredentialsError

from esm.aws import AwsClients
from esm.errors import ConfigError
from esm.http1 import HttpClient
from esm.sigv4 import Credentials, JsonRequestSigner

HTTP_CLIENT_ENV = "ESM_HTTP_CLIENT"
HTTP_CLIENTS = ("httptools", "aiohttp")


def http_client_choice() -> str:
    """Which HTTP client the lean path uses: esm.http1 unless ESM_HTTP_CLIENT says aiohttp."""
    choice = os.environ.get(HTTP_CLIENT_ENV, "httptools").strip().lower() or "httptools"
    if choice not in HTTP_CLIENTS:
        raise ConfigError([f"{HTTP_CLIENT_ENV}={choice!r} is not one of {', '.join(HTTP_CLIENTS)}"])
    return choice


class _AiohttpPoster:
    """The aiohttp fallback, with the same `post` as esm.http1.HttpClient."""

    def __init__(self, url: str) -> None:
        self._url = url + "/"
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=40, connect=5),
            connector=aiohttp.TCPConnector(limit=0),
        )

    async def post(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        async with self._session.post(self._url, data=body, headers=headers) as r:
            return r.status, await r.read()

    async def aclose(self) -> None:
        await self._session.close()


class RawJsonApi(Protocol):
    """What a caller of one AWS JSON service needs: JsonApi, or a stand-in (bench/)."""

    async def call(self, operation: str, payload: dict[str, Any]) -> bytes: ...

    async def aclose(self) -> None: ...


class JsonApi:
    """One AWS JSON service (e.g. Kinesis_20131202) reached with raw bodies."""

    def __init__(
        self,
        aws: AwsClients,
        *,
        client_service: str,
        signing_name: str,
        target_prefix: str,
        json_version: str,
    ) -> None:
        self._aws = aws
        self._client_service = client_service
        self._signing_name = signing_name
        self._target_prefix = target_prefix
        self._content_type = f"application/x-amz-json-{json_version}"
        self._http: HttpClient | _AiohttpPoster | None = None
        self._choice = http_client_choice()

    async def _setup(self) -> HttpClient | _AiohttpPoster:
        if self._http is None:
            client = await self._aws.client(self._client_service)
            url = client.meta.endpoint_url
            self._credentials = client._request_signer._credentials
            self._signer = JsonRequestSigner(url, self._signing_name, client.meta.region_name)
            self._http = HttpClient(url) if self._choice == "httptools" else _AiohttpPoster(url)
        return self._http

    async def call(self, operation: str, payload: dict[str, Any]) -> bytes:
        """POST one operation; return the raw JSON body or raise ClientError."""
        http = await self._setup()
        body = orjson.dumps(payload)
        if self._credentials is None:
            raise NoCredentialsError()
        frozen = await self._credentials.get_frozen_credentials()
        headers = self._signer.headers(
            f"{self._target_prefix}.{operation}",
            self._content_type,
            body,
            Credentials(frozen.access_key, frozen.secret_key, frozen.token),
        )
        status, raw = await http.post(headers, body)
        if status >= 300:
            raise _client_error(operation, status, raw)
        return raw

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _client_error(operation: str, status: int, raw: bytes) -> ClientError:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    code = str(document.get("__type", "") or f"HTTP{status}").rsplit("#", 1)[-1]
    message = str(
        document.get("message") or document.get("Message") or raw[:200].decode(errors="replace")
    )
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )
