"""The hot-path figure's limit builds exactly the records esm delivers (issue #18 item 3).

Figure 1 divides esm's records per CPU-second by a limit's: the same bodies parsed into
Lambda's record dicts and nothing else. A limit that built less (or other) than esm's
records would flatter or shame esm unfairly, so its records are compared with esm's,
key order included (orjson keeps it, so equal bytes mean equal keys, order and values).
"""

from __future__ import annotations

import orjson

from bench import hotpath
from esm.events.sqs import sqs_record
from esm.sources.streams.kinesis import read_result


def test_kinesis_limit_builds_the_records_esm_hands_the_handler() -> None:
    pages = hotpath.kinesis_pages(2, 60, page_records=25)
    for shard_id, bodies in pages.items():
        for raw in bodies:
            esm = read_result(
                raw, shard_id=shard_id, stream_arn=hotpath.STREAM_ARN, region=hotpath.REGION
            )
            limit = hotpath.kinesis_limit_records(shard_id, raw)
            assert limit and orjson.dumps(limit) == orjson.dumps(esm.records.events)
    assert hotpath.kinesis_limit(pages) == 60


def test_sqs_limit_builds_the_records_esm_hands_the_handler() -> None:
    messages = hotpath.sqs_messages(30)
    bodies = hotpath.receive_bodies([orjson.dumps(m) for m in messages])
    assert len(bodies) == 3
    for raw in bodies:
        esm = [
            sqs_record(m, queue_arn=hotpath.QUEUE_ARN, region=hotpath.REGION)
            for m in orjson.loads(raw)["Messages"]
        ]
        limit = hotpath.sqs_limit_records(raw)
        assert len(limit) == 10 and orjson.dumps(limit) == orjson.dumps(esm)
        # Lambda forwards the system attributes in its own order, not the body's.
        assert list(limit[0]["attributes"]) == [
            "ApproximateReceiveCount",
            "SentTimestamp",
            "SenderId",
            "ApproximateFirstReceiveTimestamp",
        ]
    assert hotpath.sqs_limit(bodies) == 30
