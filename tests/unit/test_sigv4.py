"""esm's lean SigV4 signer against botocore's, for the requests esm signs itself."""

from __future__ import annotations

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from esm.sigv4 import Credentials, JsonRequestSigner


@pytest.mark.parametrize(
    "url",
    [
        "https://kinesis.us-east-1.amazonaws.com",
        "http://127.0.0.1:4566",
        "https://sqs.eu-west-1.amazonaws.com:443",
        "http://127.0.0.1:4566/prefix/path",
        "http://[::1]:4566",
        "https://[2001:db8::1]",
    ],
)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEB4aDH+session/token=="])
@pytest.mark.parametrize(
    "service,region,target",
    [
        ("kinesis", "us-east-1", "Kinesis_20131202.GetRecords"),
        ("sqs", "eu-west-1", "AmazonSQS.ReceiveMessage"),
        ("dynamodb", "ap-south-1", "DynamoDBStreams_20120810.GetRecords"),
    ],
)
def test_authorization_is_the_same_as_botocores(
    url: str, token: str | None, service: str, region: str, target: str
) -> None:
    body = b'{"ShardIterator":"AAAAA/+==","Limit":10000}'
    content_type = "application/x-amz-json-1.1"
    request = AWSRequest(
        method="POST",
        url=url if url.count("/") > 2 else url + "/",
        data=body,
        headers={"Content-Type": content_type, "X-Amz-Target": target},
    )
    SigV4Auth(
        BotoCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
        service,
        region,
    ).add_auth(request)
    expected = dict(request.headers.items())

    signer = JsonRequestSigner(url, service, region)
    ours = signer.headers(
        target,
        content_type,
        body,
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
        amz_date=expected["X-Amz-Date"],
    )

    assert ours["Authorization"] == expected["Authorization"]
    assert ours.get("X-Amz-Security-Token") == expected.get("X-Amz-Security-Token")


def test_the_signing_key_follows_the_day_and_the_credentials() -> None:
    signer = JsonRequestSigner("https://kinesis.us-east-1.amazonaws.com", "kinesis", "us-east-1")
    first = signer.headers(
        "T.Op",
        "application/x-amz-json-1.1",
        b"{}",
        Credentials("A", "s1"),
        amz_date="20261124T235959Z",
    )
    next_day = signer.headers(
        "T.Op",
        "application/x-amz-json-1.1",
        b"{}",
        Credentials("A", "s1"),
        amz_date="20261125T000000Z",
    )
    rotated = signer.headers(
        "T.Op",
        "application/x-amz-json-1.1",
        b"{}",
        Credentials("A", "s2"),
        amz_date="20261125T000000Z",
    )
    signatures = {h["Authorization"].rsplit("=", 1)[1] for h in (first, next_day, rotated)}
    assert len(signatures) == 3


def test_the_date_is_now_and_signed_as_given() -> None:
    """X-Amz-Date is formatted once a second and reused: it must still be now, in UTC, and
    a signature made with it equals one made with the same date given explicitly."""
    import time

    signer = JsonRequestSigner("http://127.0.0.1:4566", "sqs", "us-east-1")
    credentials = Credentials("A", "s1")
    before = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    headers = signer.headers(
        "AmazonSQS.ReceiveMessage", "application/x-amz-json-1.0", b"{}", credentials
    )
    after = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    assert before <= headers["X-Amz-Date"] <= after
    again = signer.headers(
        "AmazonSQS.ReceiveMessage",
        "application/x-amz-json-1.0",
        b"{}",
        credentials,
        amz_date=headers["X-Amz-Date"],
    )
    assert again == headers
