"""Signed AWS JSON-protocol calls that return the raw response body.

The per-batch calls (Kinesis and DynamoDB Streams GetRecords, SQS receive and delete) skip
botocore: its GetRecords parser caps near 52k records/s, while orjson on the raw body plus
Lambda-shaped records with `Data` kept as base64 runs ~10x faster (see
shared/design/local-endpoints.md), and its request pipeline costs ~1 ms of CPU per call.
Requests are signed by esm.sigv4 (botocore's signature, with the day's key cached) with the
session's credentials, and sent with aiohttp. Errors become botocore `ClientError`s so the
one retry policy in esm.aws treats them like any other call.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp
import orjson
from botocore.exceptions import ClientError, NoCredentialsError

from esm.aws import AwsClients
from esm.sigv4 import Credentials, JsonRequestSigner


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
        self._http: aiohttp.ClientSession | None = None
        self._url = ""

    async def _setup(self) -> aiohttp.ClientSession:
        if self._http is None:
            client = await self._aws.client(self._client_service)
            self._url = client.meta.endpoint_url
            self._credentials = client._request_signer._credentials
            self._signer = JsonRequestSigner(self._url, self._signing_name, client.meta.region_name)
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=40, connect=5),
                connector=aiohttp.TCPConnector(limit=0),
            )
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
        async with http.post(self._url + "/", data=body, headers=headers) as r:
            raw = await r.read()
            if r.status >= 300:
                raise _client_error(operation, r.status, raw)
            return raw

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()


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
