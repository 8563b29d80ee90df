"""DynamoDB Streams specifics: DescribeStream shard listing (paged) and raw GetRecords."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from botocore.exceptions import ClientError

from esm.arns import SourceArn
from esm.aws import AwsClients, error_code
from esm.aws_json import JsonApi
from esm.events.dynamodb import parse_get_records, record_arrival, record_key
from esm.sources.streams.records import (
    ExpiredIterator,
    Position,
    ReadResult,
    RecordFields,
    RecordRun,
    ShardInfo,
)

DYNAMODB_FIELDS = RecordFields(key=record_key, arrival=record_arrival)

MAX_DYNAMODB_RECORDS_PER_READ = 1000


class DynamoDBStreamSource:
    family: Literal["dynamodb"] = "dynamodb"

    def __init__(self, source: SourceArn, aws: AwsClients) -> None:
        self.source = source
        self.aws = aws
        self.api = JsonApi(
            aws,
            client_service="dynamodbstreams",
            signing_name="dynamodb",
            target_prefix="DynamoDBStreams_20120810",
            json_version="1.0",
        )

    async def _call(self, operation: str, payload: dict[str, Any]) -> Any:
        raw = await self.aws.retry.call(operation, lambda: self.api.call(operation, payload))
        return orjson.loads(raw)

    async def list_shards(self) -> list[ShardInfo]:
        shards: list[ShardInfo] = []
        payload: dict[str, Any] = {"StreamArn": self.source.arn}
        while True:
            description = (await self._call("DescribeStream", payload))["StreamDescription"]
            for shard in description.get("Shards", []):
                parent = shard.get("ParentShardId")
                closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
                parents = (parent,) if parent else ()
                # The stream ARN carries the stream label, new for each stream of the table.
                shards.append(ShardInfo(shard["ShardId"], parents, closed, self.source.arn))
            last = description.get("LastEvaluatedShardId")
            if not last:
                return shards
            payload = {"StreamArn": self.source.arn, "ExclusiveStartShardId": last}

    async def iterator_at(self, shard_id: str, position: Position) -> str:
        payload: dict[str, Any] = {
            "StreamArn": self.source.arn,
            "ShardId": shard_id,
            "ShardIteratorType": position.kind,
        }
        if position.kind == "AFTER_SEQUENCE_NUMBER":
            payload["SequenceNumber"] = position.sequence_number
        response = await self._call("GetShardIterator", payload)
        return str(response["ShardIterator"])

    async def read(self, shard_id: str, iterator: str) -> ReadResult:
        payload = {"ShardIterator": iterator, "Limit": MAX_DYNAMODB_RECORDS_PER_READ}
        try:
            raw = await self.aws.retry.call(
                "GetRecords", lambda: self.api.call("GetRecords", payload)
            )
        except ClientError as exc:
            if error_code(exc) == "ExpiredIteratorException":
                raise ExpiredIterator(str(exc)) from exc
            raise
        page = parse_get_records(raw, stream_arn=self.source.arn, region=self.source.region)
        records = RecordRun(
            page.records, page.sequence_numbers, page.sizes, sum(page.sizes), DYNAMODB_FIELDS
        )
        return ReadResult(records, page.next_shard_iterator, None)

    async def aclose(self) -> None:
        await self.api.aclose()
