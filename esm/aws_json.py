"""Signed AWS JSON-protocol calls that return the raw response body.

The stream read path (Kinesis and DynamoDB Streams GetRecords) skips botocore's response
parser: it caps near 52k records/s, while orjson on the raw body plus Lambda-shaped records
with `Data` kept as base64 runs ~10x faster (see shared/design/local-endpoints.md). Requests
are signed with botocore's SigV4 signer and the session's credentials and sent on the
aiohttp session aiobotocore already depends on. Errors become botocore `ClientError`s so the
one retry policy in esm.aws treats them like any other call.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError, NoCredentialsError

from esm.aws import AwsClients


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
        self._region = ""

    async def _setup(self) -> aiohttp.ClientSession:
        if self._http is None:
            client = await self._aws.client(self._client_service)
            self._url = client.meta.endpoint_url
            self._region = client.meta.region_name
            self._credentials = client._request_signer._credentials
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=40, connect=5),
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self._http

    async def call(self, operation: str, payload: dict[str, Any]) -> bytes:
        """POST one operation; return the raw JSON body or raise ClientError."""
        http = await self._setup()
        body = orjson.dumps(payload)
        request = AWSRequest(
            method="POST",
            url=self._url + "/",
            data=body,
            headers={
                "Content-Type": self._content_type,
                "X-Amz-Target": f"{self._target_prefix}.{operation}",
            },
        )
        if self._credentials is None:
            raise NoCredentialsError()
        credentials = await self._credentials.get_frozen_credentials()
        SigV4Auth(credentials, self._signing_name, self._region).add_auth(request)
        async with http.post(self._url + "/", data=body, headers=dict(request.headers.items())) as r:
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
    message = str(document.get("message") or document.get("Message") or raw[:200].decode(errors="replace"))
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )
