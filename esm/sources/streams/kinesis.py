"""Kinesis specifics: shard listing (paged) and reading with the lean GetRecords path."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from botocore.exceptions import ClientError

from esm.arns import SourceArn
from esm.aws import AwsClients, error_code
from esm.aws_json import JsonApi
from esm.events.kinesis import parse_get_records, record_arrival, record_key
from esm.sources.streams.records import (
    MAX_RECORDS_PER_READ,
    ExpiredIterator,
    Position,
    ReadResult,
    RecordFields,
    RecordRun,
    ShardInfo,
)

KINESIS_FIELDS = RecordFields(key=record_key, arrival=record_arrival)


class KinesisSource:
    family: Literal["kinesis"] = "kinesis"

    def __init__(self, source: SourceArn, aws: AwsClients) -> None:
        self.source = source
        self.aws = aws
        self.api = JsonApi(
            aws,
            client_service="kinesis",
            signing_name="kinesis",
            target_prefix="Kinesis_20131202",
            json_version="1.1",
        )

    async def _call(self, operation: str, payload: dict[str, Any]) -> Any:
        raw = await self.aws.retry.call(operation, lambda: self.api.call(operation, payload))
        return orjson.loads(raw)

    async def list_shards(self) -> list[ShardInfo]:
        """ListShards with paging. AWS wants NextToken alone; moto also wants StreamName,
        so a rejected NextToken-only page is asked again with both."""
        incarnation = await self._incarnation()
        shards: list[ShardInfo] = []
        payload: dict[str, Any] = {"StreamName": self.source.name}
        while True:
            page = await self._list_page(payload)
            for shard in page.get("Shards", []):
                parents = tuple(
                    p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
                )
                closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
                shards.append(ShardInfo(shard["ShardId"], parents, closed, incarnation))
            token = page.get("NextToken")
            if not token:
                return shards
            payload = {"NextToken": token}

    async def _incarnation(self) -> str:
        """The stream's creation time (DescribeStreamSummary): a stream created again under
        the same name reuses shard ids and restarts sequence numbers, but not this."""
        summary = await self._call("DescribeStreamSummary", {"StreamName": self.source.name})
        return f"created:{summary['StreamDescriptionSummary']['StreamCreationTimestamp']}"

    async def _list_page(self, payload: dict[str, Any]) -> Any:
        try:
            return await self._call("ListShards", payload)
        except ClientError:
            if "StreamName" in payload:
                raise
            return await self._call("ListShards", {**payload, "StreamName": self.source.name})

    async def iterator_at(self, shard_id: str, position: Position) -> str:
        payload: dict[str, Any] = {
            "StreamName": self.source.name,
            "ShardId": shard_id,
            "ShardIteratorType": position.kind,
        }
        if position.kind == "AFTER_SEQUENCE_NUMBER":
            payload["StartingSequenceNumber"] = position.sequence_number
        if position.kind == "AT_TIMESTAMP" and position.timestamp is not None:
            payload["Timestamp"] = position.timestamp.timestamp()
        response = await self._call("GetShardIterator", payload)
        return str(response["ShardIterator"])

    async def read(self, shard_id: str, iterator: str) -> ReadResult:
        payload = {"ShardIterator": iterator, "Limit": MAX_RECORDS_PER_READ}
        try:
            raw = await self.aws.retry.call(
                "GetRecords", lambda: self.api.call("GetRecords", payload)
            )
        except ClientError as exc:
            if error_code(exc) == "ExpiredIteratorException":
                raise ExpiredIterator(str(exc)) from exc
            raise
        source = self.source
        return read_result(raw, shard_id=shard_id, stream_arn=source.arn, region=source.region)

    async def aclose(self) -> None:
        await self.api.aclose()


def read_result(raw: bytes, *, shard_id: str, stream_arn: str, region: str) -> ReadResult:
    """A raw GetRecords body as the shard poller's ReadResult (also the benchmark's input)."""
    page = parse_get_records(raw, shard_id=shard_id, stream_arn=stream_arn, region=region)
    records = RecordRun(
        page.events,
        page.sequence_numbers,
        page.sizes,
        page.size_bound,
        KINESIS_FIELDS,
        page.measure,
    )
    return ReadResult(records, page.next_shard_iterator, page.millis_behind_latest)
