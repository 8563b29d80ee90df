"""On-failure destinations: where a stream mapping sends the record of a batch it gave up.

Owns the AWS calls that deliver one record to an SQS queue, an SNS topic or an S3 bucket
(`DestinationConfig.OnFailure.Destination`). It must not build the record (that is
`esm.events.on_failure`) nor decide when to retry: every failure surfaces as
`DeliveryFailed`, and the caller keeps retrying because Lambda never skips a given-up batch
whose record could not be delivered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import orjson

from esm.aws import AwsClients
from esm.errors import ConfigError, DeliveryFailed, SourceUnavailable

SNS_MAX_MESSAGE_BYTES = 256 * 1024
_ARN_PROBLEM = "destination_config.on_failure.destination: {arn!r} is not {what}"

T = TypeVar("T")


class OnFailureDestination(Protocol):
    """Delivers on-failure records; `arn` is the configured destination ARN."""

    arn: str

    async def deliver(self, record: dict[str, Any], s3_object: tuple[str, bytes] | None) -> None:
        """Deliver one record, or raise `DeliveryFailed` saying why.

        `record` is the on-failure JSON document (SQS, SNS); `s3_object` is the (key, body)
        an S3 destination stores instead, since S3 records also carry the batch's payload.
        """
        ...


def create_destination(arn: str, aws: AwsClients) -> OnFailureDestination:
    """The destination for an SQS queue, SNS topic or S3 bucket ARN; ConfigError for others."""
    parts = arn.split(":", 5)
    service = parts[2] if len(parts) == 6 and parts[0] == "arn" else ""
    if service == "sqs":
        region, account, name = parts[3:6]
        if not (region and account and name):
            raise ConfigError([_ARN_PROBLEM.format(arn=arn, what="an SQS queue ARN")])
        return SqsDestination(arn, aws, queue_name=name, account=account)
    if service == "sns":
        if not (parts[3] and parts[4] and parts[5]):
            raise ConfigError([_ARN_PROBLEM.format(arn=arn, what="an SNS topic ARN")])
        return SnsDestination(arn, aws)
    if service == "s3":
        bucket = parts[5]
        # A bucket ARN has no region or account (`arn:aws:s3:::BUCKET`) and no key part.
        if parts[3] or parts[4] or not bucket or "/" in bucket:
            raise ConfigError(
                [_ARN_PROBLEM.format(arn=arn, what="an S3 bucket ARN (arn:aws:s3:::BUCKET)")]
            )
        return S3Destination(arn, aws, bucket=bucket)
    raise ConfigError(
        [_ARN_PROBLEM.format(arn=arn, what="an SQS queue, SNS topic or S3 bucket ARN")]
    )


class SqsDestination:
    """SendMessage with the record as the JSON body."""

    def __init__(self, arn: str, aws: AwsClients, queue_name: str, account: str) -> None:
        self.arn = arn
        self._aws = aws
        self._queue_name = queue_name
        self._account = account
        self._queue_url: str | None = None

    async def deliver(self, record: dict[str, Any], s3_object: tuple[str, bytes] | None) -> None:
        body = _json(self.arn, record)
        url = await self._resolve_queue_url()

        async def send() -> Any:
            sqs = await self._aws.client("sqs")
            return await sqs.send_message(QueueUrl=url, MessageBody=body)

        await _call(self._aws, self.arn, "SendMessage", send)

    async def _resolve_queue_url(self) -> str:
        """GetQueueUrl once: the ARN names the owner account, the URL is what the API needs."""
        if self._queue_url is None:

            async def get_url() -> Any:
                sqs = await self._aws.client("sqs")
                return await sqs.get_queue_url(
                    QueueName=self._queue_name, QueueOwnerAWSAccountId=self._account
                )

            response = await _call(self._aws, self.arn, "GetQueueUrl", get_url)
            self._queue_url = str(response["QueueUrl"])
        return self._queue_url


class SnsDestination:
    """Publish with the record as the JSON message."""

    def __init__(self, arn: str, aws: AwsClients) -> None:
        self.arn = arn
        self._aws = aws

    async def deliver(self, record: dict[str, Any], s3_object: tuple[str, bytes] | None) -> None:
        message = _json(self.arn, record)
        size = len(message.encode())
        if size > SNS_MAX_MESSAGE_BYTES:
            raise DeliveryFailed(
                f"on-failure destination {self.arn}: the record is {size} bytes and SNS accepts"
                f" at most {SNS_MAX_MESSAGE_BYTES} (256 KB); use an SQS or S3 destination"
            )

        async def publish() -> Any:
            sns = await self._aws.client("sns")
            return await sns.publish(TopicArn=self.arn, Message=message)

        await _call(self._aws, self.arn, "Publish", publish)


class S3Destination:
    """PutObject of the prepared (key, body): S3 records carry the batch's payload too."""

    def __init__(self, arn: str, aws: AwsClients, bucket: str) -> None:
        self.arn = arn
        self._aws = aws
        self._bucket = bucket

    async def deliver(self, record: dict[str, Any], s3_object: tuple[str, bytes] | None) -> None:
        if s3_object is None:
            raise DeliveryFailed(
                f"on-failure destination {self.arn}: an S3 destination needs the object"
                " (key, body) to store; the caller passed none"
            )
        key, body = s3_object

        async def put() -> Any:
            s3 = await self._aws.client("s3")
            return await s3.put_object(
                Bucket=self._bucket, Key=key, Body=body, ContentType="application/json"
            )

        await _call(self._aws, self.arn, "PutObject", put)


def _json(arn: str, record: dict[str, Any]) -> str:
    try:
        return orjson.dumps(record).decode()
    except orjson.JSONEncodeError as exc:
        raise DeliveryFailed(
            f"on-failure destination {arn}: the record is not JSON: {exc}"
        ) from exc


async def _call(aws: AwsClients, arn: str, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
    """One AWS call under the shared retry policy; whatever failure remains is DeliveryFailed.

    Anything short of cancellation is converted, because the caller's contract is to retry
    `DeliveryFailed` forever; an unexpected exception must not end the shard's poller.
    """
    try:
        return await aws.retry.call(operation, fn)
    except SourceUnavailable as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise DeliveryFailed(
            f"on-failure destination {arn}: {operation} failed: {cause}; it does not exist or"
            " these credentials may not use it: create it or fix the ARN"
        ) from exc
    except Exception as exc:
        raise DeliveryFailed(
            f"on-failure destination {arn}: {operation} failed: {type(exc).__name__}: {exc}"
        ) from exc
