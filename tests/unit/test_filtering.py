"""Lambda event filtering: AWS's documented rule forms per source, validation, invariants."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esm.errors import EsmError
from esm.filtering import (
    FilterPatternError,
    FilterSet,
    dynamodb_filter_view,
    kinesis_filter_view,
    sqs_filter_view,
    validate_pattern,
)

# --- real-shaped records (key sets as in AWS's recorded Lambda events) -------------------


def sqs_record(body: str, **attributes: str) -> dict[str, Any]:
    return {
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
            **attributes,
        },
        "messageAttributes": {},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-west-2:123456789012:my-queue",
        "awsRegion": "us-west-2",
    }


def kinesis_record(data: bytes, partition_key: str = "1") -> dict[str, Any]:
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
            "data": base64.b64encode(data).decode(),
            "approximateArrivalTimestamp": 1545084650.987,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": "us-east-2",
        "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream",
    }


def ddb_record(new_image: dict[str, Any], event_name: str = "INSERT") -> dict[str, Any]:
    return {
        "eventID": "1",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1678831218.0,
            "Keys": {"CustomerName": {"S": "AnyCompany Industries"}},
            "NewImage": new_image,
            "SequenceNumber": "111",
            "SizeBytes": 26,
            "StreamViewType": "NEW_IMAGE",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2023",
    }


def sqs_json(value: Any) -> dict[str, Any]:
    return sqs_filter_view(sqs_record(json.dumps(value)))


def kinesis_json(value: Any, partition_key: str = "1") -> dict[str, Any]:
    return kinesis_filter_view(kinesis_record(json.dumps(value).encode(), partition_key))


def ddb(new_image: dict[str, Any], event_name: str = "INSERT") -> dict[str, Any]:
    return dynamodb_filter_view(ddb_record(new_image, event_name))


def matches(pattern: dict[str, Any], view: dict[str, Any]) -> bool:
    return FilterSet.compile([json.dumps(pattern)]).matches(view)


# --- the documented rule forms, per source ------------------------------------------------

ORDER = {"RecordNumber": 1234, "TimeStamp": "2023-03-14T12:00:00", "RequestCode": "AAAA"}

CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    # SQS, JSON body (the AWS SQS filtering page's record)
    ("sqs equals", {"body": {"RequestCode": ["AAAA"]}}, sqs_json(ORDER), True),
    ("sqs equals miss", {"body": {"RequestCode": ["BBBB"]}}, sqs_json(ORDER), False),
    ("sqs or-values", {"body": {"RequestCode": ["BBBB", "AAAA"]}}, sqs_json(ORDER), True),
    ("sqs number", {"body": {"RecordNumber": [1234]}}, sqs_json(ORDER), True),
    ("sqs number is not its string", {"body": {"RecordNumber": ["1234"]}}, sqs_json(ORDER), False),
    ("sqs number keeps its JSON form", {"body": {"n": [300]}}, sqs_json({"n": 300.0}), False),
    ("sqs null", {"body": {"UserID": [None]}}, sqs_json({"UserID": None}), True),
    ("sqs null is not absent", {"body": {"UserID": [None]}}, sqs_json({}), False),
    ("sqs empty", {"body": {"LastName": [""]}}, sqs_json({"LastName": ""}), True),
    ("sqs empty miss", {"body": {"LastName": [""]}}, sqs_json({"LastName": "x"}), False),
    ("sqs boolean", {"body": {"ok": [True]}}, sqs_json({"ok": True}), True),
    ("sqs boolean is not 1", {"body": {"ok": [True]}}, sqs_json({"ok": 1}), False),
    ("sqs 1 is not true", {"body": {"ok": [1]}}, sqs_json({"ok": True}), False),
    (
        "sqs and",
        {"body": {"Location": ["New York"], "Day": ["Monday"]}},
        sqs_json({"Location": "New York", "Day": "Monday"}),
        True,
    ),
    (
        "sqs and miss",
        {"body": {"Location": ["New York"], "Day": ["Monday"]}},
        sqs_json({"Location": "New York", "Day": "Sunday"}),
        False,
    ),
    (
        "sqs prefix",
        {"body": {"Region": [{"prefix": "us-"}]}},
        sqs_json({"Region": "us-east-1"}),
        True,
    ),
    (
        "sqs prefix miss",
        {"body": {"Region": [{"prefix": "us-"}]}},
        sqs_json({"Region": "eu-west-1"}),
        False,
    ),
    (
        "sqs prefix ignore case",
        {"body": {"s": [{"prefix": {"equals-ignore-case": "EVENTB"}}]}},
        sqs_json({"s": "eventbridge"}),
        True,
    ),
    (
        "sqs suffix",
        {"body": {"FileName": [{"suffix": ".png"}]}},
        sqs_json({"FileName": "a.png"}),
        True,
    ),
    (
        "sqs suffix miss",
        {"body": {"FileName": [{"suffix": ".png"}]}},
        sqs_json({"FileName": "a.PNG"}),
        False,
    ),
    (
        "sqs suffix ignore case",
        {"body": {"FileName": [{"suffix": {"equals-ignore-case": ".png"}}]}},
        sqs_json({"FileName": "a.PNG"}),
        True,
    ),
    (
        "sqs equals-ignore-case",
        {"body": {"Name": [{"equals-ignore-case": "alice"}]}},
        sqs_json({"Name": "ALICE"}),
        True,
    ),
    (
        "sqs equals-ignore-case miss",
        {"body": {"Name": [{"equals-ignore-case": "alice"}]}},
        sqs_json({"Name": "alicia"}),
        False,
    ),
    (
        "sqs anything-but list",
        {"body": {"Weather": [{"anything-but": ["Raining"]}]}},
        sqs_json({"Weather": "Sunny"}),
        True,
    ),
    (
        "sqs anything-but list miss",
        {"body": {"Weather": [{"anything-but": ["Raining"]}]}},
        sqs_json({"Weather": "Raining"}),
        False,
    ),
    (
        "sqs anything-but single",
        {"body": {"state": [{"anything-but": "initializing"}]}},
        sqs_json({"state": "running"}),
        True,
    ),
    (
        "sqs anything-but numbers",
        {"body": {"x": [{"anything-but": [100, 200]}]}},
        sqs_json({"x": 200}),
        False,
    ),
    (
        "sqs anything-but needs the field",
        {"body": {"Weather": [{"anything-but": ["Raining"]}]}},
        sqs_json({}),
        False,
    ),
    (
        "sqs numeric equals",
        {"body": {"Price": [{"numeric": ["=", 100]}]}},
        sqs_json({"Price": 100}),
        True,
    ),
    (
        "sqs numeric equals by value",
        {"body": {"Price": [{"numeric": ["=", 100]}]}},
        sqs_json({"Price": 100.0}),
        True,
    ),
    (
        "sqs numeric range",
        {"body": {"Price": [{"numeric": [">", 10, "<=", 20]}]}},
        sqs_json({"Price": 20}),
        True,
    ),
    (
        "sqs numeric range low edge",
        {"body": {"Price": [{"numeric": [">", 10, "<=", 20]}]}},
        sqs_json({"Price": 10}),
        False,
    ),
    (
        "sqs numeric range high",
        {"body": {"Price": [{"numeric": [">", 10, "<=", 20]}]}},
        sqs_json({"Price": 20.5}),
        False,
    ),
    (
        "sqs numeric one bound",
        {"body": {"c": [{"numeric": ["<", 10]}]}},
        sqs_json({"c": -3.5}),
        True,
    ),
    (
        "sqs numeric ignores strings",
        {"body": {"c": [{"numeric": ["<", 10]}]}},
        sqs_json({"c": "5"}),
        False,
    ),
    (
        "sqs numeric ignores booleans",
        {"body": {"c": [{"numeric": ["<", 10]}]}},
        sqs_json({"c": True}),
        False,
    ),
    (
        "sqs exists",
        {"body": {"ProductName": [{"exists": True}]}},
        sqs_json({"ProductName": "x"}),
        True,
    ),
    (
        "sqs exists miss",
        {"body": {"ProductName": [{"exists": True}]}},
        sqs_json({"Other": "x"}),
        False,
    ),
    (
        "sqs exists null",
        {"body": {"ProductName": [{"exists": True}]}},
        sqs_json({"ProductName": None}),
        True,
    ),
    (
        "sqs exists is for leaves",
        {"body": {"p": [{"exists": True}]}},
        sqs_json({"p": {"q": 1}}),
        False,
    ),
    (
        "sqs not exists",
        {"body": {"ProductName": [{"exists": False}]}},
        sqs_json({"Other": "x"}),
        True,
    ),
    (
        "sqs not exists miss",
        {"body": {"ProductName": [{"exists": False}]}},
        sqs_json({"ProductName": "x"}),
        False,
    ),
    (
        "sqs not exists on object (EventBridge doc)",
        {"body": {"c-count": [{"exists": False}]}},
        sqs_json({"c-count": {"c1": 100}}),
        True,
    ),
    (
        "sqs not exists, parent absent",
        {"body": {"detail": {"c": [{"exists": False}]}}},
        sqs_json({"other": 1}),
        True,
    ),
    ("sqs exists or value", {"body": {"a": [{"exists": False}, "x"]}}, sqs_json({"a": "x"}), True),
    (
        "sqs wildcard",
        {"body": {"path": [{"wildcard": "dir/*.png"}]}},
        sqs_json({"path": "dir/a/b.png"}),
        True,
    ),
    (
        "sqs wildcard miss",
        {"body": {"path": [{"wildcard": "dir/*.png"}]}},
        sqs_json({"path": "dir/a.jpg"}),
        False,
    ),
    (
        "sqs wildcard escaped star",
        {"body": {"p": [{"wildcard": "a\\*b"}]}},
        sqs_json({"p": "a*b"}),
        True,
    ),
    (
        "sqs wildcard escaped star miss",
        {"body": {"p": [{"wildcard": "a\\*b"}]}},
        sqs_json({"p": "axb"}),
        False,
    ),
    (
        "sqs nested",
        {"body": {"order": {"type": ["buy"]}}},
        sqs_json({"order": {"type": "buy"}}),
        True,
    ),
    (
        "sqs nested needs an object",
        {"body": {"order": {"type": ["buy"]}}},
        sqs_json({"order": "buy"}),
        False,
    ),
    (
        "sqs $or",
        {"body": {"$or": [{"c": [{"numeric": [">", 5]}]}, {"d": ["x"]}]}},
        sqs_json({"c": 1, "d": "x"}),
        True,
    ),
    (
        "sqs $or miss",
        {"body": {"$or": [{"c": [{"numeric": [">", 5]}]}, {"d": ["x"]}]}},
        sqs_json({"c": 1, "d": "y"}),
        False,
    ),
    (
        "sqs $or with and",
        {"body": {"k": ["v"], "$or": [{"a": ["1"]}, {"b": ["2"]}]}},
        sqs_json({"k": "w", "b": "2"}),
        False,
    ),
    (
        "sqs top-level $or",
        {"$or": [{"body": {"a": ["1"]}}, {"attributes": {"SenderId": ["X"]}}]},
        sqs_json({"a": "1"}),
        True,
    ),
    (
        "sqs array any element",
        {"body": {"tags": ["red"]}},
        sqs_json({"tags": ["blue", "red"]}),
        True,
    ),
    ("sqs array no element", {"body": {"tags": ["red"]}}, sqs_json({"tags": ["blue"]}), False),
    (
        "sqs array of objects",
        {"body": {"items": {"sku": [{"prefix": "A-"}]}}},
        sqs_json({"items": [{"sku": "B-1"}, {"sku": "A-2"}]}),
        True,
    ),
    (
        "sqs array element consistency",
        {"body": {"items": {"sku": ["A"], "qty": [2]}}},
        sqs_json({"items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}]}),
        False,
    ),
    ("sqs metadata", {"attributes": {"ApproximateReceiveCount": ["1"]}}, sqs_json(ORDER), True),
    ("sqs JSON body vs plain-string rule", {"body": ["AAAA"]}, sqs_json(ORDER), False),
    ("sqs JSON body vs exists rule", {"body": [{"exists": True}]}, sqs_json(ORDER), False),
    ("sqs JSON body vs not-exists rule", {"body": [{"exists": False}]}, sqs_json(ORDER), False),
    ("sqs JSON array body vs plain rule", {"body": [1]}, sqs_json([1, 2]), False),
    (
        "sqs JSON array body, object rule",
        {"body": {"a": ["x"]}},
        sqs_json([{"a": "y"}, {"a": "x"}]),
        True,
    ),
    # SQS, plain-string body: leaf rules on body match the text; object rules never do
    ("sqs text equals", {"body": ["plain text"]}, sqs_filter_view(sqs_record("plain text")), True),
    (
        "sqs text prefix",
        {"body": [{"prefix": "ERROR"}]},
        sqs_filter_view(sqs_record("ERROR: x")),
        True,
    ),
    ("sqs text miss", {"body": ["plain text"]}, sqs_filter_view(sqs_record("other")), False),
    ("sqs text vs JSON pattern", {"body": {"a": ["x"]}}, sqs_filter_view(sqs_record("a=x")), False),
    (
        "sqs text vs JSON exists:false",
        {"body": {"a": [{"exists": False}]}},
        sqs_filter_view(sqs_record("a=x")),
        False,
    ),
    (
        "sqs broken JSON is text",
        {"body": [{"prefix": "{"}]},
        sqs_filter_view(sqs_record("{nope")),
        True,
    ),
    ("sqs JSON scalar stays text", {"body": ["42"]}, sqs_filter_view(sqs_record("42")), True),
    (
        "sqs text metadata still filters",
        {"attributes": {"SenderId": ["AIDAIENQZJOLO23YVJ4VO"]}},
        sqs_filter_view(sqs_record("plain")),
        True,
    ),
    # Kinesis, base64 JSON data (the AWS Kinesis filtering page's examples)
    (
        "kinesis data",
        {"data": {"order": {"type": ["buy"]}}},
        kinesis_json(
            {"record": 12345, "order": {"type": "buy", "stock": "ANYCO", "quantity": 1000}}
        ),
        True,
    ),
    (
        "kinesis data miss",
        {"data": {"order": {"type": ["buy"]}}},
        kinesis_json({"order": {"type": "sell"}}),
        False,
    ),
    (
        "kinesis metadata and data",
        {"partitionKey": ["1"], "data": {"Location": ["Los Angeles"]}},
        kinesis_json({"Location": "Los Angeles"}),
        True,
    ),
    (
        "kinesis metadata miss",
        {"partitionKey": ["1"], "data": {"Location": ["Los Angeles"]}},
        kinesis_json({"Location": "Los Angeles"}, partition_key="2"),
        False,
    ),
    (
        "kinesis numeric",
        {"data": {"Temperature": [{"numeric": [">", 50, "<=", 60]}]}},
        kinesis_json({"Temperature": 55}),
        True,
    ),
    (
        "kinesis numeric miss",
        {"data": {"Temperature": [{"numeric": [">", 50, "<=", 60]}]}},
        kinesis_json({"Temperature": 61}),
        False,
    ),
    (
        "kinesis non-JSON data drops data rules",
        {"data": {"a": [{"exists": False}]}},
        kinesis_filter_view(kinesis_record(b"not json")),
        False,
    ),
    (
        "kinesis non-JSON data: metadata still filters",
        {"partitionKey": ["1"]},
        kinesis_filter_view(kinesis_record(b"\xff\xfe binary")),
        True,
    ),
    (
        "kinesis data is decoded, not base64",
        {"data": [{"prefix": "ey"}]},
        kinesis_filter_view(kinesis_record(b"not json")),
        False,
    ),
    # DynamoDB (the AWS DynamoDB filtering page's record)
    (
        "ddb key",
        {"dynamodb": {"Keys": {"CustomerName": {"S": ["AnyCompany Industries"]}}}},
        ddb({"AccountManager": {"S": "Pat Candella"}}),
        True,
    ),
    (
        "ddb new image",
        {"dynamodb": {"NewImage": {"AccountManager": {"S": ["Pat Candella"]}}}},
        ddb({"AccountManager": {"S": "Pat Candella"}}),
        True,
    ),
    (
        "ddb type key is required",
        {"dynamodb": {"NewImage": {"AccountManager": ["Pat Candella"]}}},
        ddb({"AccountManager": {"S": "Pat Candella"}}),
        False,
    ),
    ("ddb event name", {"eventName": ["INSERT", "MODIFY"]}, ddb({}, "MODIFY"), True),
    ("ddb event name miss", {"eventName": ["INSERT"]}, ddb({}, "REMOVE"), False),
    (
        "ddb boolean",
        {"dynamodb": {"NewImage": {"id": {"BOOL": [True]}}}},
        ddb({"id": {"BOOL": True}}),
        True,
    ),
    (
        "ddb N as string",
        {"dynamodb": {"NewImage": {"n": {"N": ["5"]}}}},
        ddb({"n": {"N": "5"}}),
        True,
    ),
    (
        "ddb numeric never matches N strings",
        {"dynamodb": {"NewImage": {"n": {"N": [{"numeric": [">", 100]}]}}}},
        ddb({"n": {"N": "101"}}),
        False,
    ),
    (
        "ddb numeric or anything-but (AWS-validated)",
        {
            "dynamodb": {
                "NewImage": {"n": {"N": [{"numeric": [">", 100]}, {"anything-but": "101"}]}}
            }
        },
        ddb({"n": {"N": "42"}}),
        True,
    ),
    (
        "ddb prefix on N",
        {"dynamodb": {"NewImage": {"n": {"N": [{"prefix": "10"}]}}}},
        ddb({"n": {"N": "101"}}),
        True,
    ),
    (
        "ddb exists with type",
        {"dynamodb": {"NewImage": {"k": {"S": [{"exists": True}]}}}},
        ddb({"k": {"S": "v"}}),
        True,
    ),
    (
        "ddb exists without type",
        {"dynamodb": {"NewImage": {"k": [{"exists": True}]}}},
        ddb({"k": {"S": "v"}}),
        False,
    ),
    (
        "ddb not exists on attribute object",
        {"dynamodb": {"NewImage": {"k": [{"exists": False}]}}},
        ddb({"k": {"S": "v"}}),
        True,
    ),
    (
        "ddb creation time is a number",
        {"dynamodb": {"ApproximateCreationDateTime": [{"numeric": [">", 0]}]}},
        ddb({}),
        True,
    ),
]


@pytest.mark.parametrize(
    ("pattern", "view", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_documented_rule_forms(
    pattern: dict[str, Any], view: dict[str, Any], expected: bool
) -> None:
    assert matches(pattern, view) is expected


def test_record_passes_when_any_filter_matches() -> None:
    filters = FilterSet.compile(['{"body": {"a": ["1"]}}', '{"body": {"b": ["2"]}}'])
    assert filters.matches(sqs_json({"b": "2"}))
    assert not filters.matches(sqs_json({"a": "2", "b": "1"}))


def test_no_filters_lets_every_record_through() -> None:
    assert FilterSet.compile([]).matches(sqs_json({"a": 1}))


# --- validation ---------------------------------------------------------------------------

INVALID: list[tuple[str, str]] = [
    ("", "is not valid JSON"),
    ("{", "is not valid JSON"),
    ('["a"]', "must be a JSON object, got a list"),
    ('"body"', 'must be a JSON object, got "body"'),
    ("{}", "is empty; name at least one field"),
    ('{"body": {}}', "body: is an empty object"),
    ('{"body": "x"}', 'body: must be a list of values or an object, got "x"'),
    ('{"body": {"a": []}}', "body.a: the list of values is empty"),
    ('{"a": [["x"]]}', "a: a list is not a value"),
    ('{"a": [{"contains": "x"}]}', 'a: unknown operator "contains"; Lambda supports prefix'),
    (
        '{"a": [{"prefix": "x", "suffix": "y"}]}',
        'a: an operator object has exactly one key, got "prefix", "suffix"',
    ),
    ('{"a": [{}]}', "a: an operator object has exactly one key, got none"),
    ('{"a": [{"prefix": 5}]}', 'a: "prefix" needs a string, got 5'),
    (
        '{"a": [{"suffix": {"x": "y"}}]}',
        'a: "suffix" takes a string or {"equals-ignore-case": string}',
    ),
    (
        '{"a": [{"equals-ignore-case": ["x"]}]}',
        'a: "equals-ignore-case" needs a string, got a list',
    ),
    (
        '{"b": {"price": [{"numeric": 5}]}}',
        'b.price: "numeric" needs a list of operator/number pairs',
    ),
    (
        '{"b": {"price": [{"numeric": [">"]}]}}',
        'b.price: "numeric" needs a list of operator/number pairs',
    ),
    ('{"p": [{"numeric": ["!=", 5]}]}', 'p: "numeric" operator "!=" is not one of =, <, <=, >, >='),
    ('{"p": [{"numeric": [">", "5"]}]}', 'p: "numeric" needs a number after ">", got "5"'),
    ('{"p": [{"numeric": [">", true]}]}', 'p: "numeric" needs a number after ">", got true'),
    (
        '{"p": [{"numeric": [">", 1, ">=", 2]}]}',
        'p: "numeric" takes "=" alone, or at most one lower',
    ),
    ('{"p": [{"numeric": ["=", 1, "<", 2]}]}', 'p: "numeric" takes "=" alone'),
    ('{"p": [{"numeric": [">", 5, "<", 5]}]}', 'p: "numeric" range is empty: 5 is not below 5'),
    ('{"p": [{"exists": "yes"}]}', 'p: "exists" must be true or false, got "yes"'),
    ('{"p": [{"anything-but": []}]}', 'p: "anything-but" list is empty'),
    (
        '{"p": [{"anything-but": ["a", 1]}]}',
        'p: "anything-but" list must hold only strings or only numbers',
    ),
    ('{"p": [{"anything-but": null}]}', 'p: "anything-but" takes strings or numbers, got null'),
    (
        '{"p": [{"anything-but": {"prefix": "us-"}}]}',
        'p: "anything-but" with "prefix" is not supported by Lambda event filtering',
    ),
    (
        '{"p": [{"anything-but": {"suffix": ".png"}}]}',
        'p: "anything-but" with "suffix" is not supported',
    ),
    (
        '{"p": [{"anything-but": {"equals-ignore-case": "x"}}]}',
        'p: "anything-but" with "equals-ignore-case" is not supported',
    ),
    (
        '{"p": [{"cidr": "10.0.0.0/24"}]}',
        'p: "cidr" (IP address matching) is an EventBridge operator that Lambda does not document',
    ),
    ('{"p": [{"wildcard": "a**b"}]}', 'p: "wildcard" "a**b" has consecutive "*"'),
    ('{"p": [{"wildcard": "a\\\\b"}]}', 'p: "wildcard" "a\\\\b": "\\" may only escape "*" or "\\"'),
    ('{"$or": [{"a": ["1"]}]}', "$or: must be a list of at least two object patterns"),
    (
        '{"b": {"$or": [{"a": ["1"]}, ["x"]]}}',
        "b.$or[1]: must be a non-empty object pattern, got a list",
    ),
    ('{"b": {"$or": [{"a": ["1"]}, {"c": [{"numeric": 1}]}]}}', 'b.$or[1].c: "numeric" needs'),
]


@pytest.mark.parametrize(("pattern", "problem"), INVALID, ids=[p for p, _ in INVALID])
def test_invalid_patterns_name_the_problem(pattern: str, problem: str) -> None:
    found = validate_pattern(pattern)
    assert found is not None and found.startswith(problem), found


def test_error_names_the_filter_and_keeps_the_problem_apart() -> None:
    patterns = ['{"a": ["1"]}', '{"b": ["2"]}', '{"body": {"price": [{"numeric": 5}]}}']
    with pytest.raises(FilterPatternError) as caught:
        FilterSet.compile(patterns)
    error = caught.value
    assert isinstance(error, EsmError)
    assert error.index == 2
    assert error.problem.startswith('body.price: "numeric" needs a list of operator/number pairs')
    assert str(error) == f"filters[2].pattern: {error.problem}"


def test_pattern_longer_than_4096_characters_is_rejected() -> None:
    pattern = json.dumps({"a": ["x" * 4100]})
    assert validate_pattern(pattern) == f"is {len(pattern)} characters; at most 4096"


def _nested(depth: int) -> tuple[str, dict[str, Any]]:
    """A pattern `depth` levels deep (objects, then the leaf list) and a record it matches."""
    pattern: Any = ["x"]
    record: Any = "x"
    for _ in range(depth - 1):
        pattern, record = {"a": pattern}, {"a": record}
    return json.dumps(pattern, separators=(",", ":")), record


def test_pattern_nested_within_4096_characters_is_a_problem_not_a_recursion_error() -> None:
    """680 levels fit in 4,096 characters; compiling them raised RecursionError, which took
    `esm validate` down with a traceback."""
    from esm.filtering import MAX_PATTERN_DEPTH

    deep, _ = _nested(680)
    assert len(deep) <= 4096
    assert validate_pattern(deep) == f"is nested more than {MAX_PATTERN_DEPTH} levels deep"
    deepest, record = _nested(MAX_PATTERN_DEPTH)
    assert validate_pattern(deepest) is None
    assert FilterSet.compile([deepest]).matches(record)
    assert validate_pattern(_nested(MAX_PATTERN_DEPTH + 1)[0]) is not None


def test_more_than_five_filters_are_rejected() -> None:
    with pytest.raises(FilterPatternError) as caught:
        FilterSet.compile(['{"a": ["1"]}'] * 6)
    assert caught.value.index is None
    assert str(caught.value) == "filters: has 6 filters; at most 5 are allowed"


def test_valid_pattern_has_no_problem() -> None:
    assert validate_pattern('{"body": {"a": [{"numeric": ["<=", 5, ">", 0]}]}}') is None


# --- views --------------------------------------------------------------------------------


def test_sqs_view_parses_json_body_and_keeps_metadata() -> None:
    record = sqs_record(json.dumps(ORDER))
    view = sqs_filter_view(record)
    assert view["body"] == ORDER
    assert view["attributes"] is record["attributes"]
    assert isinstance(record["body"], str)


def test_sqs_view_of_plain_body_is_the_record() -> None:
    record = sqs_record("hello")
    assert sqs_filter_view(record) is record


def test_kinesis_view_lifts_kinesis_fields_and_decodes_data() -> None:
    view = kinesis_json({"a": 1}, partition_key="pk")
    assert view["data"] == {"a": 1}
    assert view["partitionKey"] == "pk"
    assert "eventSource" not in view


def test_dynamodb_view_is_the_record() -> None:
    record = ddb_record({"n": {"N": "5"}})
    assert dynamodb_filter_view(record) is record


def test_predicate_matches_like_the_whole_view() -> None:
    """The per-record predicate narrows the view to the fields patterns name; every
    verdict must stay the one the whole view gives."""
    sqs_records = [
        sqs_record(json.dumps(ORDER)),
        sqs_record("  " + json.dumps(ORDER)),
        sqs_record("plain text"),
        sqs_record("42"),
        sqs_record("{nope"),
        sqs_record(json.dumps([ORDER, {"RequestCode": "BBBB"}])),
        sqs_record(json.dumps(ORDER), MessageGroupId="g1"),
        {k: v for k, v in sqs_record("x").items() if k != "body"},
    ]
    kinesis_records = [
        kinesis_record(json.dumps(ORDER).encode()),
        kinesis_record(b"  " + json.dumps([ORDER]).encode(), partition_key="2"),
        kinesis_record(b"not json"),
        kinesis_record(b"\xff\xfe binary"),
        kinesis_record(b"42"),
        {**kinesis_record(b"{}"), "kinesis": {**kinesis_record(b"{}")["kinesis"], "data": "%%%"}},
        {**kinesis_record(b"{}"), "kinesis": {"partitionKey": "1"}},
        {"eventSource": "aws:kinesis"},
    ]
    sqs_patterns = [
        {"body": {"RequestCode": ["AAAA"]}},
        {"body": ["plain text"]},
        {"body": [{"prefix": "pl"}]},
        {"body": [{"exists": False}]},
        {"body": ["42"]},
        {"attributes": {"MessageGroupId": ["g1"]}},
        {"body": {"RequestCode": ["AAAA"]}, "attributes": {"SenderId": [{"exists": True}]}},
        {"$or": [{"body": {"RequestCode": ["BBBB"]}}, {"messageId": [{"prefix": "059"}]}]},
        {"missing": [{"exists": False}]},
    ]
    kinesis_patterns = [
        {"data": {"RequestCode": ["AAAA"]}},
        {"data": [{"exists": False}]},
        {"data": [{"exists": True}]},
        {"partitionKey": ["2"]},
        {"partitionKey": ["1"], "data": {"RecordNumber": [{"numeric": [">", 1000]}]}},
        {"$or": [{"data": {"RequestCode": ["BBBB"]}}, {"partitionKey": ["1"]}]},
        {"eventSource": ["aws:kinesis"]},
    ]
    for view, records, patterns in (
        (sqs_filter_view, sqs_records, sqs_patterns),
        (kinesis_filter_view, kinesis_records, kinesis_patterns),
        (dynamodb_filter_view, [ddb_record({"n": {"N": "5"}})], [{"eventName": ["INSERT"]}]),
    ):
        for count in (1, 2):
            for first in range(len(patterns)):
                chosen = [json.dumps(p) for p in (patterns + patterns)[first : first + count]]
                filters = FilterSet.compile(chosen)
                passes = filters.predicate(view)
                for record in records:
                    assert passes(record) is filters.matches(view(record)), (chosen, record)


def test_predicate_without_filters_passes_everything() -> None:
    assert FilterSet.compile([]).predicate(sqs_filter_view)(sqs_record("x"))


# --- properties ---------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
RECORDS = st.dictionaries(KEYS, JSON_VALUES, max_size=4)
LEAF_RULES = st.one_of(
    SCALARS,
    st.builds(lambda s: {"prefix": s}, st.text(max_size=3)),
    st.builds(lambda s: {"suffix": s}, st.text(max_size=3)),
    st.builds(lambda s: {"equals-ignore-case": s}, st.text(max_size=3)),
    st.builds(lambda v: {"anything-but": v}, st.text(max_size=3)),
    st.builds(lambda n: {"numeric": [">", n]}, st.integers(-100, 100)),
    st.builds(lambda b: {"exists": b}, st.booleans()),
)
SIMPLE_PATTERNS = st.dictionaries(
    KEYS, st.lists(LEAF_RULES, min_size=1, max_size=3), min_size=1, max_size=2
)


@given(record=RECORDS, values=st.lists(SCALARS, min_size=1, max_size=4), nested=st.booleans())
def test_exact_values_never_match_a_missing_field(
    record: dict[str, Any], values: list[Any], nested: bool
) -> None:
    pattern: dict[str, Any] = {"missing": values}
    if nested:
        pattern = {"a": pattern}
    assert not matches(pattern, record)


@given(record=RECORDS, first=SIMPLE_PATTERNS, second=SIMPLE_PATTERNS)
def test_or_is_the_union_of_its_branches(
    record: dict[str, Any], first: dict[str, Any], second: dict[str, Any]
) -> None:
    either = matches(first, record) or matches(second, record)
    assert matches({"$or": [first, second]}, record) is either
    view = {"body": record}
    either = matches({"body": first}, view) or matches({"body": second}, view)
    assert matches({"body": {"$or": [first, second]}}, view) is either


@given(value=st.text(max_size=6), present=st.text(max_size=6))
def test_anything_but_is_the_complement_for_present_strings(value: str, present: str) -> None:
    record = {"f": present}
    assert matches({"f": [{"anything-but": [value]}]}, record) is not matches(
        {"f": [value]}, record
    )


@given(body=st.one_of(JSON_VALUES.map(json.dumps), st.text(max_size=20)))
def test_sqs_view_never_mutates_the_record(body: str) -> None:
    record = sqs_record(body)
    before = copy.deepcopy(record)
    sqs_filter_view(record)
    assert record == before


@given(data=st.one_of(JSON_VALUES.map(lambda v: json.dumps(v).encode()), st.binary(max_size=20)))
def test_kinesis_view_never_mutates_the_record(data: bytes) -> None:
    record = kinesis_record(data)
    before = copy.deepcopy(record)
    kinesis_filter_view(record)
    assert record == before


@given(record=RECORDS, first=SIMPLE_PATTERNS, second=SIMPLE_PATTERNS, use_or=st.booleans())
def test_predicate_agrees_with_the_whole_view(
    record: dict[str, Any], first: dict[str, Any], second: dict[str, Any], use_or: bool
) -> None:
    body = sqs_record(json.dumps(record))
    data = kinesis_record(json.dumps(record).encode())
    for pattern in (
        {"$or": [first, second]} if use_or else first,
        {"body": first},
        {"data": first},
    ):
        filters = FilterSet.compile([json.dumps(pattern)])
        assert filters.predicate(sqs_filter_view)(body) is filters.matches(sqs_filter_view(body))
        assert filters.predicate(kinesis_filter_view)(data) is filters.matches(
            kinesis_filter_view(data)
        )


@given(
    image=st.dictionaries(st.text(max_size=4), st.fixed_dictionaries({"S": st.text(max_size=4)}))
)
def test_matching_never_mutates_the_view(image: dict[str, Any]) -> None:
    record = ddb_record(image)
    before = copy.deepcopy(record)
    matches(
        {"dynamodb": {"NewImage": {"x": {"S": [{"exists": False}]}}}}, dynamodb_filter_view(record)
    )
    assert record == before


@settings(max_examples=300)
@given(text=st.one_of(st.text(max_size=40), JSON_VALUES.map(json.dumps)))
def test_validation_reports_instead_of_crashing(text: str) -> None:
    problem = validate_pattern(text)
    if problem is None:
        FilterSet.compile([text]).matches({"a": 1})
    else:
        with pytest.raises(FilterPatternError):
            FilterSet.compile([text])
