"""A purpose-built in-memory Kinesis endpoint (AWS JSON 1.1) for draining benchmarks.

kinesalite is a faithful Kinesis, but it is one node process that needs about 0.5 s of CPU
to serve a GetRecords of 10,000 records. Draining 4 shards therefore saturates it before
any consumer does, and a consumer comparison on it measures kinesalite. This server keeps
records as lists per shard and serves a page as one orjson dump. It reports
`MillisBehindLatest` as AWS does (0 only at the tip, which kinesalite never reports
otherwise), so a consumer is bound by its own cost.

A page of 10,000 records is dumped in ~0.6 ms and served in ~3 ms (a GetRecords round trip
from urllib, 2.2 MB), so one shard's page does not hold up another shard's calls for long:
a drain of 4 shards measures its consumer, not this server's one loop (measured for issue
#18, BENCHMARKS.md figure 2; encoding each record once when put was no faster).

Implemented: CreateStream, DescribeStream(Summary), ListShards, PutRecord(s),
GetShardIterator (TRIM_HORIZON, LATEST, AT/AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP) and
GetRecords (10,000 records per call at most, as AWS), plus `BenchStats` (not AWS: calls
served per operation) and `BenchTrace` (not AWS: when each call arrived and was answered, on
the machine's monotonic clock, the most GetRecords one shard received within a second and
the shortest time from one to the fifth after it). No resharding, iterators never expire,
and AWS's 5 reads and 2 MB per second per shard are not enforced: the reads are traced, so
a benchmark can show that a consumer kept the read limit (the arrival clock includes this
server's own queueing, so a read delayed on its way in shortens the next span by as much).
It is not a conformance target: kinesalite and moto are.

Run: `python -m bench.fake_kinesis --host 127.0.0.1 --port PORT` (loopback only).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

ACCOUNT = "000000000000"
REGION = "us-east-1"
FIRST_SEQUENCE = 49590338271490256608559692538361571095921575989136588898
HASH_SPACE = 2**128
TRACE_LIMIT = 200_000


class KinesisError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass
class Shard:
    shard_id: str
    start_hash: int
    end_hash: int
    records: list[dict[str, Any]] = field(default_factory=list)
    sequences: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "ShardId": self.shard_id,
            "HashKeyRange": {
                "StartingHashKey": str(self.start_hash),
                "EndingHashKey": str(self.end_hash),
            },
            "SequenceNumberRange": {"StartingSequenceNumber": str(FIRST_SEQUENCE)},
        }


@dataclass
class Stream:
    name: str
    shards: list[Shard]
    created: float = field(default_factory=time.time)

    @property
    def arn(self) -> str:
        return f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{self.name}"

    def shard(self, shard_id: str) -> Shard:
        for shard in self.shards:
            if shard.shard_id == shard_id:
                return shard
        raise KinesisError(
            "ResourceNotFoundException", f"shard {shard_id} not found in {self.name}"
        )

    def shard_for(self, partition_key: str, explicit: str | None) -> Shard:
        value = (
            int(explicit) if explicit else int(hashlib.md5(partition_key.encode()).hexdigest(), 16)
        )
        for shard in self.shards:
            if shard.start_hash <= value <= shard.end_hash:
                return shard
        return self.shards[-1]


class FakeKinesis:
    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self.next_sequence = FIRST_SEQUENCE
        self.calls: dict[str, int] = {}
        self.trace: deque[tuple[str, str, float, float, int]] = deque(maxlen=TRACE_LIMIT)
        """(operation, shard id or "", monotonic arrival, monotonic answer, records served)
        of each call, the latest TRACE_LIMIT (a long idle-shard run makes ~1,000 a second)."""
        self._served = 0

    def BenchStats(self, p: dict[str, Any]) -> dict[str, Any]:
        """Not AWS: calls served per operation, so a benchmark can tell a consumer's poll rate."""
        return {"Calls": dict(self.calls)}

    def BenchTrace(self, p: dict[str, Any]) -> dict[str, Any]:
        """Not AWS: the calls traced since the last `BenchTrace` with `Reset` (then cleared),
        and the most GetRecords calls one shard received within any one second, the number
        AWS's limit of 5 reads per second per shard bounds."""
        trace = list(self.trace)
        if p.get("Reset"):
            self.trace.clear()
        return {
            "Calls": trace,
            "MostReadsInOneSecond": most_reads_in_one_second(trace),
            "ShortestSixReadSpan": shortest_six_read_span(trace),
        }

    def stream(self, p: dict[str, Any]) -> Stream:
        name = p.get("StreamName") or str(p.get("StreamARN", "")).rpartition("/")[2]
        stream = self.streams.get(name)
        if stream is None:
            raise KinesisError(
                "ResourceNotFoundException", f"Stream {name} under account {ACCOUNT} not found."
            )
        return stream

    # -- operations -------------------------------------------------------------------------

    def CreateStream(self, p: dict[str, Any]) -> dict[str, Any]:
        name, count = p["StreamName"], int(p.get("ShardCount") or 1)
        if name in self.streams:
            raise KinesisError("ResourceInUseException", f"Stream {name} already exists")
        step = HASH_SPACE // count
        shards = [
            Shard(
                f"shardId-{i:012d}",
                i * step,
                HASH_SPACE - 1 if i == count - 1 else (i + 1) * step - 1,
            )
            for i in range(count)
        ]
        self.streams[name] = Stream(name, shards)
        return {}

    def DescribeStream(self, p: dict[str, Any]) -> dict[str, Any]:
        s = self.stream(p)
        return {
            "StreamDescription": {
                "StreamName": s.name,
                "StreamARN": s.arn,
                "StreamStatus": "ACTIVE",
                "Shards": [shard.describe() for shard in s.shards],
                "HasMoreShards": False,
                "RetentionPeriodHours": 24,
                "StreamCreationTimestamp": s.created,
                "EnhancedMonitoring": [],
                "EncryptionType": "NONE",
            }
        }

    def DescribeStreamSummary(self, p: dict[str, Any]) -> dict[str, Any]:
        s = self.stream(p)
        return {
            "StreamDescriptionSummary": {
                "StreamName": s.name,
                "StreamARN": s.arn,
                "StreamStatus": "ACTIVE",
                "RetentionPeriodHours": 24,
                "StreamCreationTimestamp": s.created,
                "EnhancedMonitoring": [],
                "OpenShardCount": len(s.shards),
            }
        }

    def ListShards(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"Shards": [shard.describe() for shard in self.stream(p).shards]}

    def _put(self, s: Stream, entry: dict[str, Any], now: float) -> dict[str, Any]:
        shard = s.shard_for(entry["PartitionKey"], entry.get("ExplicitHashKey"))
        sequence = self.next_sequence
        self.next_sequence += 1
        shard.records.append(
            {
                "SequenceNumber": str(sequence),
                "ApproximateArrivalTimestamp": now,
                "Data": entry["Data"],
                "PartitionKey": entry["PartitionKey"],
            }
        )
        shard.sequences.append(sequence)
        shard.arrivals.append(now)
        return {"SequenceNumber": str(sequence), "ShardId": shard.shard_id}

    def PutRecord(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._put(self.stream(p), p, time.time())

    def PutRecords(self, p: dict[str, Any]) -> dict[str, Any]:
        s, now = self.stream(p), time.time()
        return {"FailedRecordCount": 0, "Records": [self._put(s, e, now) for e in p["Records"]]}

    def GetShardIterator(self, p: dict[str, Any]) -> dict[str, Any]:
        s = self.stream(p)
        shard = s.shard(p["ShardId"])
        kind = p["ShardIteratorType"]
        if kind == "TRIM_HORIZON":
            position = 0
        elif kind == "LATEST":
            position = len(shard.records)
        elif kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            sequence = int(p["StartingSequenceNumber"])
            side = bisect.bisect_left if kind == "AT_SEQUENCE_NUMBER" else bisect.bisect_right
            position = side(shard.sequences, sequence)
        elif kind == "AT_TIMESTAMP":
            position = bisect.bisect_left(shard.arrivals, float(p["Timestamp"]))
        else:
            raise KinesisError("InvalidArgumentException", f"bad ShardIteratorType {kind}")
        return {"ShardIterator": f"{s.name}|{shard.shard_id}|{position}"}

    def GetRecords(self, p: dict[str, Any]) -> dict[str, Any]:
        try:
            name, shard_id, position_text = p["ShardIterator"].split("|")
            position = int(position_text)
        except (KeyError, ValueError):
            raise KinesisError("InvalidArgumentException", "invalid ShardIterator") from None
        shard = self.stream({"StreamName": name}).shard(shard_id)
        limit = max(1, min(10_000, int(p.get("Limit") or 10_000)))
        records = shard.records[position : position + limit]
        self._served = len(records)
        end = position + len(records)
        behind = 0
        if end < len(shard.records):
            behind = max(
                1, int((shard.arrivals[-1] - shard.arrivals[end - 1 if records else end]) * 1000)
            )
        return {
            "Records": records,
            "NextShardIterator": f"{name}|{shard_id}|{end}",
            "MillisBehindLatest": behind,
        }

    # -- HTTP -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        operation = target.rpartition(".")[2]
        handler = getattr(self, operation, None) if operation[:1].isupper() else None
        try:
            if handler is None:
                raise KinesisError("UnknownOperationException", f"unsupported operation {target!r}")
            self.calls[operation] = self.calls.get(operation, 0) + 1
            arrived, self._served = time.monotonic(), 0
            payload = orjson.loads(await request.read() or b"{}")
            body = orjson.dumps(handler(payload))
            if not operation.startswith("Bench"):
                answered = time.monotonic()
                self.trace.append((operation, _shard_of(payload), arrived, answered, self._served))
            return web.Response(body=body, content_type="application/x-amz-json-1.1")
        except KinesisError as exc:
            body = orjson.dumps({"__type": exc.code, "message": str(exc)})
            return web.Response(
                status=exc.status, body=body, content_type="application/x-amz-json-1.1"
            )


def _shard_of(payload: dict[str, Any]) -> str:
    if "ShardId" in payload:
        return str(payload["ShardId"])
    iterator = payload.get("ShardIterator")
    return str(iterator).split("|")[1] if isinstance(iterator, str) and "|" in iterator else ""


def _read_arrivals(trace: list[tuple[str, str, float, float, int]]) -> list[list[float]]:
    arrivals: dict[str, list[float]] = {}
    for operation, shard_id, arrived, _, _ in trace:
        if operation == "GetRecords":
            arrivals.setdefault(shard_id, []).append(arrived)
    return [sorted(times) for times in arrivals.values()]


def shortest_six_read_span(trace: list[tuple[str, str, float, float, int]]) -> float | None:
    """Seconds from a GetRecords to the fifth after it of the same shard, at the least (the
    limit of 5 reads per second wants >= 1.0); None when no shard was read 6 times."""
    spans = [
        times[i + 5] - times[i] for times in _read_arrivals(trace) for i in range(len(times) - 5)
    ]
    return min(spans) if spans else None


def most_reads_in_one_second(trace: list[tuple[str, str, float, float, int]]) -> int:
    """The most GetRecords calls that arrived for one shard within any one second."""
    most = 0
    for times in _read_arrivals(trace):
        for i, start in enumerate(times):
            most = max(most, bisect.bisect_left(times, start + 1.0) - i)
    return most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        raise SystemExit("bench.fake_kinesis listens on loopback only")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/", FakeKinesis().handle)
    web.run_app(
        app, host=args.host, port=args.port, print=None, access_log=None, handle_signals=True
    )


if __name__ == "__main__":
    main()
