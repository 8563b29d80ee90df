"""On-failure destinations against a real (moto) SQS, SNS and S3 over HTTP."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest

from esm.aws import AwsClients, RetryPolicy
from esm.config import DaemonConfig
from esm.destinations import SNS_MAX_MESSAGE_BYTES, create_destination
from esm.errors import ConfigError, DeliveryFailed

pytestmark = pytest.mark.anyio

ACCOUNT = "123456789012"  # moto's default account
RECORD: dict[str, Any] = {
    "requestContext": {
        "requestId": "c9b8fa9f-5a7f-xmpl-af9c-0c604cde93a5",
        "functionArn": "arn:aws:lambda:local:000000000000:function:myfunction",
        "condition": "RetryAttemptsExhausted",
        "approximateInvokeCount": 3,
    },
    "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": None},
    "version": "1.0",
    "timestamp": "2019-11-14T00:38:06.021Z",
    "KinesisBatchInfo": {
        "shardId": "shardId-000000000001",
        "startSequenceNumber": "49601189658422359378836298521827638475320189012309704722",
        "endSequenceNumber": "49601189658422359378836298522902373528957594348623495186",
        "approximateArrivalOfFirstRecord": "2019-11-14T00:38:04.835Z",
        "approximateArrivalOfLastRecord": "2019-11-14T00:38:05.580Z",
        "batchSize": 2,
        "streamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/mystream",
    },
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def aws(endpoint: str) -> AsyncIterator[AwsClients]:
    async with AwsClients(DaemonConfig(endpoint_url=endpoint)) as clients:
        yield clients


def boto(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def receive(sqs: Any, queue_url: str, count: int) -> list[dict[str, Any]]:
    """Receive until `count` messages arrived (SQS may return fewer per call)."""
    messages: list[dict[str, Any]] = []
    for _ in range(10):
        response = sqs.receive_message(
            QueueUrl=queue_url, WaitTimeSeconds=1, MaxNumberOfMessages=10
        )
        messages += response.get("Messages", [])
        if len(messages) >= count:
            break
    assert len(messages) == count, messages
    return messages


def queue_arn(sqs: Any, queue_url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return attributes["Attributes"]["QueueArn"]  # type: ignore[no-any-return]


async def test_sqs_destination_sends_the_record_as_the_json_body(
    endpoint: str, aws: AwsClients
) -> None:
    sqs = boto("sqs", endpoint)
    url = sqs.create_queue(QueueName=name("on-failure"))["QueueUrl"]
    destination = create_destination(queue_arn(sqs, url), aws)

    await destination.deliver(RECORD, None)
    await destination.deliver(RECORD, None)  # the cached queue URL is reused

    assert [json.loads(m["Body"]) for m in receive(sqs, url, 2)] == [RECORD, RECORD]


async def test_sns_destination_publishes_the_record_as_the_message(
    endpoint: str, aws: AwsClients
) -> None:
    sns, sqs = boto("sns", endpoint), boto("sqs", endpoint)
    topic_arn = sns.create_topic(Name=name("on-failure"))["TopicArn"]
    url = sqs.create_queue(QueueName=name("subscriber"))["QueueUrl"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn(sqs, url))

    await create_destination(topic_arn, aws).deliver(RECORD, None)

    envelope = json.loads(receive(sqs, url, 1)[0]["Body"])
    assert envelope["TopicArn"] == topic_arn
    assert json.loads(envelope["Message"]) == RECORD


async def test_s3_destination_puts_the_prepared_object(endpoint: str, aws: AwsClients) -> None:
    s3 = boto("s3", endpoint)
    bucket = name("on-failure")
    s3.create_bucket(Bucket=bucket)
    key = (
        "aws/lambda/0b1e5f2c-7d0e-5d8e-9a0b-1c2d3e4f5a6b/shardId-000000000001/"
        "2019/11/14/2019-11-14T00.38.06-6f1c9a3e-2b4d-4e8f-9a1b-3c5d7e9f1a2b"
    )
    body = json.dumps({**RECORD, "payload": {"Records": [{"kinesis": {"data": "aGk="}}]}}).encode()

    await create_destination(f"arn:aws:s3:::{bucket}", aws).deliver(RECORD, (key, body))

    stored = s3.get_object(Bucket=bucket, Key=key)
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "application/json"


async def test_missing_queue_is_delivery_failed_naming_the_arn(aws: AwsClients) -> None:
    arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:{name('missing')}"
    with pytest.raises(DeliveryFailed, match="does not exist") as caught:
        await create_destination(arn, aws).deliver(RECORD, None)
    assert arn in str(caught.value)


async def test_missing_topic_is_delivery_failed(aws: AwsClients) -> None:
    arn = f"arn:aws:sns:us-east-1:{ACCOUNT}:{name('missing')}"
    with pytest.raises(DeliveryFailed, match=arn):
        await create_destination(arn, aws).deliver(RECORD, None)


async def test_missing_bucket_is_delivery_failed(aws: AwsClients) -> None:
    arn = f"arn:aws:s3:::{name('missing')}"
    with pytest.raises(DeliveryFailed, match="NoSuchBucket"):
        await create_destination(arn, aws).deliver(RECORD, ("key", b"{}"))


async def test_oversized_sns_message_is_delivery_failed_and_not_published(
    endpoint: str, aws: AwsClients
) -> None:
    sns, sqs = boto("sns", endpoint), boto("sqs", endpoint)
    topic_arn = sns.create_topic(Name=name("on-failure"))["TopicArn"]
    url = sqs.create_queue(QueueName=name("subscriber"))["QueueUrl"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn(sqs, url))
    huge = {**RECORD, "padding": "x" * SNS_MAX_MESSAGE_BYTES}

    with pytest.raises(DeliveryFailed, match="256 KB"):
        await create_destination(topic_arn, aws).deliver(huge, None)

    assert receive(sqs, url, 0) == []


async def test_unreachable_endpoint_is_delivery_failed_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    async with AwsClients(DaemonConfig(endpoint_url=f"http://127.0.0.1:{closed_port}")) as aws:
        aws.retry = RetryPolicy(attempts=2, initial=0.01, maximum=0.01)
        destination = create_destination(f"arn:aws:sns:us-east-1:{ACCOUNT}:topic", aws)
        with pytest.raises(DeliveryFailed, match="Publish failed"):
            await destination.deliver(RECORD, None)


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:lambda:us-east-1:123456789012:function:f",
        "arn:aws:sqs:us-east-1:123456789012:",
        "arn:aws:s3:us-east-1:123456789012:bucket",
        "arn:aws:s3:::bucket/prefix",
        "not-an-arn",
    ],
)
async def test_create_destination_rejects_other_arns(arn: str) -> None:
    aws = AwsClients(DaemonConfig())
    with pytest.raises(ConfigError, match="destination_config.on_failure.destination"):
        create_destination(arn, aws)
