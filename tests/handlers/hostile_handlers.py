"""Handlers for the fault suite's hostile-response and security tests.

`sqs_hostile` and `stream_hostile` answer each record (batch_size 1) with the hostile
response its payload names (`{"id": ..., "case": ..., "permanent": bool}`): on the first
attempt only, or on every attempt when `permanent`. Every attempt is noted in ATTEMPTS
(per id: request id, attempt number, outcome) so a test can tell which invocation was
which and read the daemon's log line for it by request id.

`secret_aware` is for the planted-secrets run: it fails in ways that make the daemon log
its error paths, with error messages that never contain the record payloads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import threading
import time
from collections import defaultdict
from typing import Any

_lock = threading.Lock()
ATTEMPTS: dict[str, list[dict[str, Any]]] = defaultdict(list)
_stream_attempts: dict[str, int] = defaultdict(int)

# name -> how AWS treats it, as esm must report it: ("reason", error_type or None).
# "partial" means a valid partial batch response naming the record itself.
CASES: dict[str, tuple[str, str | None]] = {
    "raises": ("function error", "RuntimeError"),
    "sleeps_past_timeout": ("function error", "Sandbox.Timedout"),
    "not_serialisable": ("function error", "Runtime.MarshalError"),
    "set_response": ("function error", "Runtime.MarshalError"),
    "string_5mb": ("response is not a JSON object", None),
    "bif_is_string": ("batchItemFailures is not a list", None),
    "bif_is_nan": ("batchItemFailures is not a list", None),
    "bif_is_object": ("batchItemFailures is not a list", None),
    "top_level_list_of_int_ids": ("response is not a JSON object", None),
    "top_level_number": ("response is not a JSON object", None),
    "top_level_true": ("response is not a JSON object", None),
    "int_identifier": ("an itemIdentifier is missing, null or empty", None),
    "null_identifier": ("an itemIdentifier is missing, null or empty", None),
    "empty_identifier": ("an itemIdentifier is missing, null or empty", None),
    "wrong_key": ("an itemIdentifier is missing, null or empty", None),
    "nested_garbage": ("an itemIdentifier is missing, null or empty", None),
    "unknown_identifier": ("an itemIdentifier is not in the batch", None),
    "thousands_of_unknown_identifiers": ("an itemIdentifier is not in the batch", None),
    "thousands_of_own_identifier": ("batchItemFailures", None),
}


def hostile_response(case: str, own_id: str, remaining_s: float) -> Any:
    """The response (or behaviour) `case` names, for a batch whose only item is `own_id`."""
    if case == "raises":
        raise RuntimeError("hostile handler raised on purpose")
    if case == "sleeps_past_timeout":
        time.sleep(remaining_s + 0.5)
        return None
    if case == "not_serialisable":
        return {"batchItemFailures": [{"itemIdentifier": object()}]}
    if case == "set_response":
        return {own_id}
    if case == "string_5mb":
        return "x" * (5 * 1024 * 1024)
    if case == "bif_is_string":
        return {"batchItemFailures": "x"}
    if case == "bif_is_nan":
        return {"batchItemFailures": float("nan")}
    if case == "bif_is_object":
        return {"batchItemFailures": {"itemIdentifier": own_id}}
    if case == "top_level_list_of_int_ids":
        return [{"itemIdentifier": 5}]
    if case == "top_level_number":
        return 42
    if case == "top_level_true":
        return True
    if case == "int_identifier":
        return {"batchItemFailures": [{"itemIdentifier": 5}]}
    if case == "null_identifier":
        return {"batchItemFailures": [{"itemIdentifier": None}]}
    if case == "empty_identifier":
        return {"batchItemFailures": [{"itemIdentifier": ""}]}
    if case == "wrong_key":
        return {"batchItemFailures": [{"foo": own_id}]}
    if case == "nested_garbage":
        return {"batchItemFailures": [{"itemIdentifier": {"a": [1, {"b": None}]}}, [[]], None]}
    if case == "unknown_identifier":
        return {"batchItemFailures": [{"itemIdentifier": f"not-{own_id}"}]}
    if case == "thousands_of_unknown_identifiers":
        return {"batchItemFailures": [{"itemIdentifier": f"unknown-{i}"} for i in range(5000)]}
    if case == "thousands_of_own_identifier":
        return {"batchItemFailures": [{"itemIdentifier": own_id}] * 5000}
    raise AssertionError(f"unknown case {case!r}")


def _note(item_id: str, entry: dict[str, Any]) -> None:
    with _lock:
        ATTEMPTS[item_id].append(entry)


def attempts_for(item_id: str) -> list[dict[str, Any]]:
    with _lock:
        return list(ATTEMPTS[item_id])


def _answer(item: dict[str, Any], own_id: str, attempt: int, context: Any) -> Any:
    hostile = attempt == 1 or item.get("permanent", False)
    entry = {"request_id": context.aws_request_id, "attempt": attempt, "hostile": hostile}
    _note(item["id"], entry)
    if not hostile:
        return None
    return hostile_response(item["case"], own_id, context.get_remaining_time_in_millis() / 1000)


def sqs_hostile(event: dict[str, Any], context: Any) -> Any:
    """SQS, batch_size 1: hostile on the first receive, success once the message reappears."""
    (record,) = event["Records"]
    item = json.loads(record["body"])
    attempt = int(record["attributes"]["ApproximateReceiveCount"])
    return _answer(item, record["messageId"], attempt, context)


def stream_hostile(event: dict[str, Any], context: Any) -> Any:
    """Kinesis, batch_size 1: hostile on the first attempt (or always when `permanent`)."""
    (record,) = event["Records"]
    item = json.loads(base64.b64decode(record["kinesis"]["data"]))
    sequence_number = record["kinesis"]["sequenceNumber"]
    key = f"{record['eventSourceARN']} {sequence_number}"
    with _lock:
        _stream_attempts[key] += 1
        attempt = _stream_attempts[key]
    return _answer(item, sequence_number, attempt, context)


def exit_or_record(event: dict[str, Any], context: Any) -> None:
    """For `esm run` subprocesses: a body `exit` calls sys.exit (after leaving a mark in
    RECORD_PATH); any other body is appended to RECORD_PATH."""
    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        for r in event["Records"]:
            f.write(r["body"] + "\n")
    if any(r["body"] == "exit" for r in event["Records"]):
        sys.exit(3)


def _payload(record: dict[str, Any]) -> str:
    if "body" in record:
        return str(record["body"])
    return base64.b64decode(record["kinesis"]["data"]).decode()


def secret_aware(event: dict[str, Any], context: Any) -> Any:
    """Planted-secrets run: payloads are `<label>|<secret>`; label `fail-*` raises (the
    message names the label only), `partial-*` is reported as a failed item, the rest
    succeed. Every label is appended to RECORD_PATH with a digest of ESM_PLANTED_TOKEN (the
    function's `environment`), so the test knows the environment was applied without the
    token being written anywhere."""
    labels = [_payload(r).split("|", 1)[0] for r in event["Records"]]
    token = os.environ.get("ESM_PLANTED_TOKEN", "")
    digest = hashlib.sha256(token.encode()).hexdigest()[:16]
    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        for label in labels:
            f.write(f"{label} {digest}\n")
    if any(label.startswith("fail-") for label in labels):
        raise ValueError(f"batch failed on purpose ({len(labels)} records)")
    failures = []
    for record, label in zip(event["Records"], labels, strict=True):
        if label.startswith("partial-"):
            own = record.get("messageId") or record["kinesis"]["sequenceNumber"]
            failures.append({"itemIdentifier": own})
    return {"batchItemFailures": failures}


def deeply_nested_response(event: dict[str, Any], context: Any) -> Any:
    """A response nested deeper than json.dumps can recurse."""
    nested: list[Any] = []
    for _ in range(5000):
        nested = [nested]
    return {"batchItemFailures": nested}


def oversized_response(event: dict[str, Any], context: Any) -> Any:
    """A valid full-success response that is larger than Lambda's 6 MB response limit."""
    return {"batchItemFailures": [], "padding": "x" * 7_000_000}


class Bail(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


def calls_sys_exit(event: dict[str, Any], context: Any) -> None:
    sys.exit(3)


def raises_keyboard_interrupt(event: dict[str, Any], context: Any) -> None:
    raise KeyboardInterrupt


def raises_base_exception(event: dict[str, Any], context: Any) -> None:
    raise Bail("bail out")


async def async_calls_sys_exit(event: dict[str, Any], context: Any) -> None:
    sys.exit(3)
