"""Physical resources of a deployed stack (`--stack-name`), through CloudFormation's
DescribeStackResources.

Owns the AWS calls of the importer and turning physical ids into the ARNs mappings need:
an SQS queue's physical id is its URL, a Kinesis stream's and a DynamoDB table's their name
(the table's stream ARN needs DescribeTable, since it carries the stream's label).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from esm.errors import EsmError
from esm.importer.intrinsics import StackResource


class StackLookupError(EsmError):
    """The stack could not be described (wrong name, endpoint or credentials)."""


def describe_stack(
    stack_name: str, endpoint_url: str | None, region: str | None
) -> tuple[dict[str, StackResource], dict[str, str]]:
    """Resources by logical id, and the pseudo parameters the stack fixes
    (AWS::StackName, AWS::StackId, AWS::Region, AWS::AccountId)."""
    import boto3
    import botocore.exceptions

    session = boto3.session.Session(region_name=region)
    cloudformation = session.client("cloudformation", endpoint_url=endpoint_url)
    try:
        listed = cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise StackLookupError(f"cannot describe stack {stack_name!r}: {exc}") from None
    if not listed:
        raise StackLookupError(f"stack {stack_name!r} has no resources")
    stack_id = listed[0]["StackId"]
    arn_parts = stack_id.split(":")
    partition, stack_region, account = arn_parts[1], arn_parts[3], arn_parts[4]
    pseudo = {
        "AWS::StackName": stack_name,
        "AWS::StackId": stack_id,
        "AWS::Region": stack_region,
        "AWS::AccountId": account,
        "AWS::Partition": partition,
    }
    dynamodb: Any = None
    resources: dict[str, StackResource] = {}
    for item in listed:
        physical = item.get("PhysicalResourceId") or ""
        kind = item["ResourceType"]
        prefix = f"arn:{partition}"
        attributes: dict[str, str] = {}
        if kind == "AWS::SQS::Queue" and physical:
            path = urlsplit(physical).path.strip("/").split("/")
            queue_account, name = (path[-2], path[-1]) if len(path) >= 2 else (account, path[-1])
            attributes = {
                "Arn": f"{prefix}:sqs:{stack_region}:{queue_account}:{name}",
                "QueueName": name,
                "QueueUrl": physical,
            }
        elif kind == "AWS::Kinesis::Stream" and physical:
            attributes = {"Arn": f"{prefix}:kinesis:{stack_region}:{account}:stream/{physical}"}
        elif kind == "AWS::DynamoDB::Table" and physical:
            attributes = {"Arn": f"{prefix}:dynamodb:{stack_region}:{account}:table/{physical}"}
            if dynamodb is None:
                dynamodb = session.client("dynamodb", endpoint_url=endpoint_url)
            try:
                table = dynamodb.describe_table(TableName=physical)["Table"]
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                table = {}
            if table.get("LatestStreamArn"):
                attributes["StreamArn"] = table["LatestStreamArn"]
        elif kind in ("AWS::Lambda::Function", "AWS::Serverless::Function") and physical:
            attributes = {"Arn": f"{prefix}:lambda:{stack_region}:{account}:function:{physical}"}
        elif kind == "AWS::SNS::Topic" and physical:
            attributes = {"TopicArn": physical, "TopicName": physical.rsplit(":", 1)[-1]}
        elif kind == "AWS::S3::Bucket" and physical:
            attributes = {"Arn": f"{prefix}:s3:::{physical}"}
        resources[item["LogicalResourceId"]] = StackResource(
            item["LogicalResourceId"], kind, physical, attributes
        )
    return resources, pseudo
