"""AWS Signature Version 4 for esm's fixed-shape JSON requests (POST / with a JSON body).

The stream reads and the SQS receive/delete path sign one small request per call; building a
botocore AWSRequest and running SigV4Auth costs more CPU than the rest of the call (bench/).
This signer produces the same Authorization header as botocore's SigV4Auth for these
requests (tests/unit/test_sigv4.py compares the two) and caches the day's signing key.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


class JsonRequestSigner:
    """Signs `POST` requests with Content-Type and X-Amz-Target to one endpoint.

    The canonical URI is the endpoint's own path ("/" when it has none), as botocore posts to it:
    an `endpoint_url` behind a path prefix must be signed for that path or AWS refuses it."""

    def __init__(self, url: str, service: str, region: str) -> None:
        parts = urlsplit(url)
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        host = parts.hostname or ""
        self.host = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        self.canonical_uri = quote(parts.path or "/", safe="/~")
        self.service = service
        self.region = region
        self._key_for: tuple[str, str] | None = None
        self._key = b""

    def headers(
        self,
        target: str,
        content_type: str,
        body: bytes,
        credentials: Credentials,
        amz_date: str | None = None,
    ) -> dict[str, str]:
        """The request's headers, Authorization included; `amz_date` is for tests."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = amz_date[:8]
        headers = {"Content-Type": content_type, "X-Amz-Target": target, "X-Amz-Date": amz_date}
        signed = [
            ("content-type", content_type),
            ("host", self.host),
            ("x-amz-date", amz_date),
        ]
        if credentials.token:
            headers["X-Amz-Security-Token"] = credentials.token
            signed.append(("x-amz-security-token", credentials.token))
        signed.append(("x-amz-target", target))
        names = ";".join(name for name, _ in signed)
        canonical = "\n".join(
            (
                "POST",
                self.canonical_uri,
                "",
                "".join(f"{name}:{value}\n" for name, value in signed),
                names,
                hashlib.sha256(body).hexdigest(),
            )
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.new(
            self._signing_key(credentials.secret_key, day), to_sign.encode(), "sha256"
        )
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={names}, Signature={signature.hexdigest()}"
        )
        return headers

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        """Four HMACs that change once a day (or with the credentials): computed once."""
        if self._key_for != (secret_key, day):
            key = f"AWS4{secret_key}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), "sha256").digest()
            self._key, self._key_for = key, (secret_key, day)
        return self._key
