"""The FIFO tests' moto server (tests/fifo_moto_server.py) keeps SQS's group rule over HTTP.

SQS: no message of a group is returned while an earlier one of the group is in flight, until
it is deleted or its visibility timeout ends. These check that rule with boto3 clients only,
plus that long polling still waits and wakes, so the FIFO tests' endpoint is itself tested.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from test_sqs_mapping import make_queue


def fifo_queue(sqs, name: str, bodies: list[str], **attributes: str) -> str:  # type: ignore[no-untyped-def]
    url, _ = make_queue(sqs, name, FifoQueue="true", ContentBasedDeduplication="true", **attributes)
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=body.split("-")[0])
    return url


def bodies(response: dict) -> list[str]:  # type: ignore[type-arg]
    return [m["Body"] for m in response.get("Messages", [])]


def test_concurrent_receives_never_split_a_group(fifo_sqs, unique):  # type: ignore[no-untyped-def]
    url = fifo_queue(fifo_sqs, f"split-{unique}.fifo", [])
    empty = fifo_queue(fifo_sqs, f"idle-{unique}.fifo", [])

    def receive(_: int) -> list[str]:
        return bodies(
            fifo_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=3)
        )

    with ThreadPoolExecutor(8) as pool:
        polls = pool.map(receive, range(8))
        # While an empty queue's long poll waits its second out, the 8 polls wait on `url`
        # (plain moto copies the in-flight groups once when a poll starts: all would see b free).
        assert bodies(fifo_sqs.receive_message(QueueUrl=empty, WaitTimeSeconds=1)) == []
        for i in range(10):
            fifo_sqs.send_message(QueueUrl=url, MessageBody=f"b-{i}", MessageGroupId="b")
        got = [b for batch in polls for b in batch]
    assert got == ["b-0"]  # b-0 is in flight: no receiver may have b-1..b-9


def test_expired_messages_come_back_in_group_order(fifo_sqs, unique):  # type: ignore[no-untyped-def]
    url = fifo_queue(fifo_sqs, f"expire-{unique}.fifo", ["a-1", "a-2", "a-3"])
    first = fifo_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=1)
    assert bodies(first) == ["a-1", "a-2", "a-3"]
    # Long poll past the visibility timeout: the whole group returns, a-1 first.
    again = fifo_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=10)
    assert bodies(again)[0] == "a-1"
    assert bodies(again) == sorted(bodies(again))


def test_long_poll_waits_and_a_delete_frees_the_group(fifo_sqs, unique):  # type: ignore[no-untyped-def]
    url = fifo_queue(fifo_sqs, f"poll-{unique}.fifo", ["c-0", "c-1"])
    empty = fifo_queue(fifo_sqs, f"empty-{unique}.fifo", [])
    head = fifo_sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1)["Messages"][0]
    assert head["Body"] == "c-0"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            fifo_sqs.receive_message, QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=20
        )
        # An empty queue's long poll waits its second out, meanwhile the other poll waits on
        # the locked group c; the delete is not held up by it and frees c-1 for that poll.
        assert bodies(fifo_sqs.receive_message(QueueUrl=empty, WaitTimeSeconds=1)) == []
        fifo_sqs.delete_message(QueueUrl=url, ReceiptHandle=head["ReceiptHandle"])
        assert bodies(waiting.result(timeout=30)) == ["c-1"]
