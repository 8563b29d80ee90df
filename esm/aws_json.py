"""Signed AWS JSON-protocol calls that return the raw response body.

The per-batch calls (Kinesis and DynamoDB Streams GetRecords, SQS receive and delete) skip
botocore: its GetRecords parser caps near 52k records/s, while orjson on the raw body plus
Lambda-shaped records with `Data` kept as base64 runs ~10x faster (see
shared/design/local-endpoints.md), and its request pipeline costs ~1 ms of CPU per call.
Requests are signed by esm.sigv4 (botocore's signature, with the day's key cached) with the
session's credentials, and sent on esm.http1's kept-alive connections (httptools parses the
responses): aiohttp's client cost ~90 us more CPU per call, most of an idle shard's read
(bench/percall.py). The network path is the one botocore resolved for the client (its
proxy from HTTP(S)_PROXY / NO_PROXY, its CA bundle from AWS_CA_BUNDLE, the profile's
`ca_bundle` or REQUESTS_CA_BUNDLE): what esm.http1 cannot follow (an https:// or socks proxy,
`proxies_config`, a client certificate) goes through the client's own aiohttp session
instead, logged once, never around the proxy. `ESM_HTTP_CLIENT=aiohttp` always does. Errors
become botocore `ClientError`s so the one retry policy in esm.aws treats them like any other
call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from botocore.awsrequest import AWSPreparedRequest
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.utils import ensure_boolean

from esm.aws import AwsClients
from esm.errors import ConfigError
from esm.http1 import HttpClient, Proxy, tls_context
from esm.observability import get_logger
from esm.sigv4 import Credentials, JsonRequestSigner

log = get_logger("esm.aws_json")

HTTP_CLIENT_ENV = "ESM_HTTP_CLIENT"
HTTP_CLIENTS = ("httptools", "aiohttp")


def http_client_choice() -> str:
    """Which HTTP client the lean path uses: esm.http1 unless ESM_HTTP_CLIENT says aiohttp."""
    choice = os.environ.get(HTTP_CLIENT_ENV, "httptools").strip().lower() or "httptools"
    if choice not in HTTP_CLIENTS:
        raise ConfigError([f"{HTTP_CLIENT_ENV}={choice!r} is not one of {', '.join(HTTP_CLIENTS)}"])
    return choice


class _BotocorePoster:
    """The fallback: the request goes out on the botocore client's own HTTP session
    (aiobotocore's aiohttp), so every proxy and TLS setting botocore honours applies."""

    def __init__(self, client: Any, url: str) -> None:
        self._session = client._endpoint.http_session
        self._url = url.rstrip("/") + "/"

    async def post(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        request = AWSPreparedRequest("POST", self._url, headers, body, stream_output=False)
        response = await self._session.send(request)
        return int(response.status_code), bytes(await response.content)

    async def aclose(self) -> None:
        """The session is the client's: closed with it (esm.aws.AwsClients)."""


@dataclass(frozen=True)
class Route:
    """How esm.http1 reaches an endpoint as botocore would: through `proxy` (parsed once,
    here) or not, TLS verified against `verify` (True: botocore's bundle; a path; False:
    not verified)."""

    proxy: Proxy | None
    verify: bool | str


def botocore_route(client: Any, url: str) -> Route | str:
    """The proxy and CA bundle botocore resolved for `client` (its endpoint creator reads
    HTTP(S)_PROXY / NO_PROXY and AWS_CA_BUNDLE, `ca_bundle`, REQUESTS_CA_BUNDLE), or why
    esm.http1 cannot follow them (the caller then uses the client's own session)."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    proxies = getattr(session, "_proxy_config", None)
    verify = getattr(session, "_verify", None)
    if proxies is None or not isinstance(verify, (bool, str)):
        return f"botocore's HTTP session {type(session).__name__} is not one esm.http1 reads"
    if getattr(session, "_cert_file", None):
        return "a client certificate (client_cert) is configured"
    if proxies.settings:
        return f"proxies_config ({', '.join(sorted(proxies.settings))}) is set"
    proxy = proxies.proxy_url_for(url)
    if proxy is None:
        return Route(None, verify)
    if ensure_boolean(os.environ.get("BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER", "")):
        return "BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER is set"
    try:
        parsed = Proxy.parse(proxy)
    except ValueError:
        # botocore prefixes a proxy URL of another scheme with http:// (`http://socks5://h`)
        scheme = proxy.removeprefix("http://").split("://", 1)[0]
        return f"the proxy for {url.split(':', 1)[0]} is {scheme}://, not http://"
    return Route(parsed, verify)


_reported: set[str] = set()


def _log_once(event: str, **fields: str) -> None:
    key = event + repr(sorted(fields.items()))
    if key not in _reported:
        _reported.add(key)
        log.info(event, **fields)


def lean_poster(client: Any, url: str) -> HttpClient | _BotocorePoster:
    """esm.http1 on botocore's route, else the client's own session (logged once)."""
    route = botocore_route(client, url)
    if isinstance(route, str):
        _log_once("http.client_fallback", endpoint=url, reason=route, client="aiohttp")
        return _BotocorePoster(client, url)
    proxy = route.proxy
    if proxy is not None:
        _log_once("http.proxy", endpoint=url, proxy=str(proxy))
    context = tls_context(route.verify) if url.startswith("https:") else None
    return HttpClient(url, proxy=proxy, ssl_context=context)


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
        self._http: HttpClient | _BotocorePoster | None = None
        self._choice = http_client_choice()
        self._signing: tuple[Any, Credentials] | None = None
        """The last frozen credentials (None: static ones) and the signer's copy of them."""

    async def _setup(self) -> HttpClient | _BotocorePoster:
        if self._http is None:
            client = await self._aws.client(self._client_service)
            url = client.meta.endpoint_url
            self._credentials = client._request_signer._credentials
            if self._credentials is not None and not isinstance(
                self._credentials, RefreshableCredentials
            ):
                # Static keys never change: frozen once, not awaited on every call.
                frozen = await self._credentials.get_frozen_credentials()
                self._signing = (None, _signing_credentials(frozen))
            self._signer = JsonRequestSigner(url, self._signing_name, client.meta.region_name)
            if self._choice == "httptools":
                self._http = lean_poster(client, url)
            else:
                self._http = _BotocorePoster(client, url)
        return self._http

    async def call(self, operation: str, payload: dict[str, Any]) -> bytes:
        """POST one operation; return the raw JSON body or raise ClientError."""
        http = self._http or await self._setup()  # set up once; no coroutine per call after
        body = orjson.dumps(payload)
        signing = self._signing
        credentials = (
            signing[1]
            if signing is not None and signing[0] is None
            else await self._signing_credentials()
        )
        headers = self._signer.headers(
            f"{self._target_prefix}.{operation}", self._content_type, body, credentials
        )
        status, raw = await http.post(headers, body)
        if status >= 300:
            raise _client_error(operation, status, raw)
        return raw

    async def _signing_credentials(self) -> Credentials:
        """The credentials to sign with: static ones as frozen at setup; refreshable ones
        (assumed roles, SSO, instance metadata) frozen per call, so a refresh is picked up
        by the next request, as botocore's signer does."""
        signing = self._signing
        if signing is not None and signing[0] is None:
            return signing[1]
        if self._credentials is None:
            raise NoCredentialsError()
        frozen = await self._credentials.get_frozen_credentials()
        if signing is None or signing[0] is not frozen:
            signing = self._signing = (frozen, _signing_credentials(frozen))
        return signing[1]

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _signing_credentials(frozen: Any) -> Credentials:
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


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
