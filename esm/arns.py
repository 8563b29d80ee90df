"""Event source ARNs: which service a mapping reads and the names its API calls need.

Which ARN forms exist is each source family's knowledge (esm/sources/registry.py parses
them); this module holds the shape they all parse into."""

from __future__ import annotations

from dataclasses import dataclass


class ArnError(ValueError):
    """The text is not an ARN of a source esm can read."""


@dataclass(frozen=True)
class SourceArn:
    arn: str
    kind: str
    """The source family's registry name (`sqs`, `kinesis`, `dynamodb`)."""
    region: str
    account: str
    name: str
    """Queue name, stream name, or table name (DynamoDB)."""


@dataclass(frozen=True)
class ArnParts:
    """arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE, split."""

    arn: str
    service: str
    region: str
    account: str
    resource: str


def split_arn(arn: str) -> ArnParts:
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or not parts[5]:
        raise ArnError(f"{arn!r} is not an ARN (arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE)")
    _, _, service, region, account, resource = parts
    return ArnParts(arn, service, region, account, resource)
