"""DynamoDB Streams mappings against a real moto server."""

from __future__ import annotations

import boto3
import recorder
from conftest import make_table_with_stream, wait_until
from test_kinesis_mapping import config_with_state


def test_insert_modify_remove_arrive_as_lambda_records(endpoint, unique, tmp_path, run_daemon):  # type: ignore[no-untyped-def]
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    table = f"t-{unique}"
    stream_arn = make_table_with_stream(
        ddb, table, key="Id", key_type="N", view="NEW_AND_OLD_IMAGES"
    )
    ddb.put_item(TableName=table, Item={"Id": {"N": "101"}, "Message": {"S": "New item!"}})
    ddb.put_item(TableName=table, Item={"Id": {"N": "101"}, "Message": {"S": "Changed"}})
    ddb.delete_item(TableName=table, Key={"Id": {"N": "101"}})
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.record"}},
        [
            {
                "name": f"d-{unique}",
                "function": "f",
                "event_source_arn": stream_arn,
                "starting_position": "TRIM_HORIZON",
            }
        ],
    )
    run_daemon(config)
    wait_until(
        lambda: sum(len(e["Records"]) for e in recorder.events_for(stream_arn)) >= 3, timeout=30
    )
    records = [r for e in recorder.events_for(stream_arn) for r in e["Records"]]
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    insert, modify, remove = records
    assert list(insert) == [
        "eventID",
        "eventName",
        "eventVersion",
        "eventSource",
        "awsRegion",
        "dynamodb",
        "eventSourceARN",
    ]
    assert (insert["eventSource"], insert["eventVersion"], insert["eventSourceARN"]) == (
        "aws:dynamodb",
        "1.1",
        stream_arn,
    )
    assert insert["dynamodb"]["Keys"] == {"Id": {"N": "101"}}
    assert insert["dynamodb"]["NewImage"] == {"Id": {"N": "101"}, "Message": {"S": "New item!"}}
    assert "OldImage" not in insert["dynamodb"]
    assert modify["dynamodb"]["OldImage"]["Message"] == {"S": "New item!"}
    assert modify["dynamodb"]["NewImage"]["Message"] == {"S": "Changed"}
    assert "NewImage" not in remove["dynamodb"]
    assert remove["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert isinstance(insert["dynamodb"]["ApproximateCreationDateTime"], int | float)
