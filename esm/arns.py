"""Event source ARNs: which service a mapping reads and the names its API calls need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class ArnError(ValueError):
    """The text is not an ARN of a queue, a Kinesis stream or a DynamoDB stream."""


@dataclass(frozen=True)
class SourceArn:
    arn: str
    kind: Literal["sqs", "kinesis", "dynamodb"]
    region: str
    account: str
    name: str
    """Queue name, stream name, or table name (DynamoDB)."""


def parse_source_arn(arn: str) -> SourceArn:
    """Split an event source ARN; the forms are AWS's:

    arn:aws:sqs:REGION:ACCOUNT:QUEUE
    arn:aws:kinesis:REGION:ACCOUNT:stream/NAME
    arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL
    """
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or not parts[5]:
        raise ArnError(f"{arn!r} is not an ARN (arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE)")
    _, _, service, region, account, resource = parts
    if service == "sqs" and "/" not in resource:
        return SourceArn(arn, "sqs", region, account, resource)
    if service == "kinesis" and resource.startswith("stream/") and len(resource) > 7:
        return SourceArn(arn, "kinesis", region, account, resource.split("/", 1)[1])
    pieces = resource.split("/")
    if (
        service == "dynamodb"
        and len(pieces) == 4
        and pieces[0] == "table"
        and pieces[2] == "stream"
    ):
        return SourceArn(arn, "dynamodb", region, account, pieces[1])
    raise ArnError(
        f"{arn!r} is not an SQS queue, Kinesis stream or DynamoDB stream ARN "
        "(arn:aws:sqs:REGION:ACCOUNT:QUEUE, arn:aws:kinesis:REGION:ACCOUNT:stream/NAME, "
        "arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL)"
    )
