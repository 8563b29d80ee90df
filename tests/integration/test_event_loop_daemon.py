"""The daemon on uvloop (esm.event_loop's choice when it is installed): an SQS mapping
through a real Runtime-API process (awslambdaric) and the lean HTTP path, end to end."""

from __future__ import annotations

import pytest
from conftest import assert_deleted_after_success, build_config, wait_until
from test_process_invoker import AWSLAMBDARIC, receive_counts, records
from test_sqs_mapping import make_queue, mapping


def test_daemon_on_uvloop_runs_a_process_function_on_sqs(endpoint, sqs, unique, tmp_path):  # type: ignore[no-untyped-def]
    pytest.importorskip("uvloop", reason="uvloop is an optional extra (esm[fast])")
    from anyio.from_thread import start_blocking_portal

    from esm.daemon import Daemon

    url, arn = make_queue(sqs, f"uvloop-{unique}", VisibilityTimeout="1")
    sqs.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "1", "MessageBody": "ok-1"}, {"Id": "2", "MessageBody": "fail-2"}],
    )
    record_path = tmp_path / "records.jsonl"
    config = build_config(
        endpoint,
        {
            "f": {
                "kind": "process",
                "command": [*AWSLAMBDARIC, "process_app.sqs_report_failures"],
                "timeout": 1,
                "environment": {"RECORD_PATH": str(record_path)},
            }
        },
        [mapping(arn, batch_size=10, function_response_types=["ReportBatchItemFailures"])],
    )
    daemon = Daemon(config)
    with start_blocking_portal("asyncio", {"use_uvloop": True}) as portal:
        loop_module = portal.call(_loop_module)
        future, _port = portal.start_task(daemon.run)
        try:
            wait_until(
                # fail-2 again, not any record received twice: ok-1 may be a moto copy
                lambda: len(receive_counts(records(record_path), "fail-2")) >= 2,
                timeout=30,
            )
        finally:
            portal.call(daemon.request_stop)
            future.result(timeout=60)
    assert loop_module.startswith("uvloop")
    bodies = [b for r in records(record_path) for b in r["bodies"]]
    # ok-1 succeeded and was deleted (each delivery a receive of its own: five receivers).
    assert_deleted_after_success(sqs, url, receive_counts(records(record_path), "ok-1"), left=1)
    assert bodies.count("fail-2") >= 2, "fail-2 was reported and delivered again"


async def _loop_module() -> str:
    import asyncio

    return type(asyncio.get_running_loop()).__module__
