"""Changing mappings while the daemon runs: reload adds, removes, restarts and pauses."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import recorder
from conftest import HANDLERS, build_config, free_port, wait_for_http, wait_until
from test_sqs_mapping import make_queue, mapping

# Short visibility timeouts: a long poll cancelled when a mapping stops may still take a
# message on the server side (its response goes nowhere); the message then reappears soon.
# Waits are on the set of bodies seen: a mapping polls with five receivers, and a standard
# queue may hand a message out twice (SQS is at-least-once; moto does it when two receives
# interleave), so an exact delivery list could never match again after a copy.
QUEUE = {"VisibilityTimeout": "2"}
FUNCTIONS = {"f": {"handler": "recorder.record", "timeout": 1}}


def send(sqs, url: str, *bodies: str) -> None:  # type: ignore[no-untyped-def]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)


def test_reload_starts_added_stops_removed_and_restarts_changed(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url_a, arn_a = make_queue(sqs, f"ra-{unique}", **QUEUE)
    url_b, arn_b = make_queue(sqs, f"rb-{unique}", **QUEUE)
    functions = FUNCTIONS
    daemon = run_daemon(build_config(endpoint, functions, [mapping(arn_a)]))
    send(sqs, url_a, "a1")
    wait_until(lambda: set(recorder.bodies_for(arn_a)) == {"a1"})

    result = daemon.portal.call(
        daemon.daemon.reload, build_config(endpoint, functions, [mapping(arn_a), mapping(arn_b)])
    )
    assert (result.started, result.stopped, result.restarted) == ([f"m-rb-{unique}"], [], [])
    send(sqs, url_b, "b1")
    wait_until(lambda: set(recorder.bodies_for(arn_b)) == {"b1"})

    changed_b = mapping(arn_b, batch_size=5)
    result = daemon.portal.call(
        daemon.daemon.reload, build_config(endpoint, functions, [changed_b])
    )
    assert (result.started, result.stopped, result.restarted) == (
        [],
        [f"m-ra-{unique}"],
        [f"m-rb-{unique}"],
    )
    assert [r.name for r in daemon.daemon.runtimes] == [f"m-rb-{unique}"]
    assert daemon.daemon.running[f"m-rb-{unique}"].config.batch_size == 5
    send(sqs, url_a, "a2")
    send(sqs, url_b, "b2")
    wait_until(lambda: set(recorder.bodies_for(arn_b)) == {"b1", "b2"})
    # The removed mapping no longer polls: a2 stays in its queue.
    assert set(recorder.bodies_for(arn_a)) == {"a1"}
    left = wait_until(
        lambda: sqs.receive_message(QueueUrl=url_a, WaitTimeSeconds=1).get("Messages")
    )
    assert [m["Body"] for m in left] == ["a2"]


def test_disabling_a_mapping_pauses_it_and_enabling_resumes(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"pause-{unique}", **QUEUE)
    functions = FUNCTIONS
    daemon = run_daemon(build_config(endpoint, functions, [mapping(arn)]))
    wait_until(lambda: daemon.get("/readyz")[0] == 200)
    result = daemon.portal.call(
        daemon.daemon.reload, build_config(endpoint, functions, [mapping(arn, enabled=False)])
    )
    assert result.stopped == [f"m-pause-{unique}"]
    send(sqs, url, "while-paused")
    assert daemon.get("/readyz")[0] == 200  # nothing enabled is waiting
    visible = wait_until(
        lambda: (
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"
            ]["ApproximateNumberOfMessages"]
            == "1"
        )
    )
    assert visible and recorder.bodies_for(arn) == []  # nothing delivered while paused
    daemon.portal.call(daemon.daemon.reload, build_config(endpoint, functions, [mapping(arn)]))
    wait_until(lambda: set(recorder.bodies_for(arn)) == {"while-paused"})


def write_config(
    path: Path, endpoint: str, port: int, arns: list[str], record_path: Path, extra: str = ""
) -> None:
    mappings = "".join(
        f'\n[[mappings]]\nname = "m{i}"\nfunction = "w"\nevent_source_arn = "{arn}"\n'
        for i, arn in enumerate(arns)
    )
    path.write_text(
        f"""
[daemon]
endpoint_url = "{endpoint}"
http_address = "127.0.0.1:{port}"
{extra}
[functions.w]
handler = "recorder.write_to_file"
code_path = "{HANDLERS}"
timeout = 1
environment = {{ RECORD_PATH = "{record_path}" }}
{mappings}
"""
    )


def test_sighup_and_esm_reload_apply_the_file_and_reject_an_invalid_one(
    endpoint, sqs, unique, tmp_path
):  # type: ignore[no-untyped-def]
    url_a, arn_a = make_queue(sqs, f"ha-{unique}", **QUEUE)
    url_b, arn_b = make_queue(sqs, f"hb-{unique}", **QUEUE)
    url_c, arn_c = make_queue(sqs, f"hc-{unique}", **QUEUE)
    log_path = tmp_path / "esm.log"
    record_path = tmp_path / "handled.jsonl"
    config = tmp_path / "esm.toml"
    port = free_port()
    write_config(config, endpoint, port, [arn_a], record_path)

    def handled() -> str:
        return record_path.read_text() if record_path.exists() else ""

    def logged() -> str:
        return log_path.read_text()

    proc = subprocess.Popen(
        [sys.executable, "-m", "esm", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("w"),
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        write_config(config, endpoint, port, [arn_a, arn_b], record_path)
        proc.send_signal(signal.SIGHUP)
        send(sqs, url_b, "via-sighup")
        wait_until(lambda: "via-sighup" in handled())

        # An invalid file is refused by `esm reload` and, if sent anyway, by the daemon.
        write_config(
            config, endpoint, port, [arn_a, arn_b, arn_c], record_path, extra="batch_sizes = 3"
        )
        refused = subprocess.run(
            [sys.executable, "-m", "esm", "reload", "-c", str(config)],
            capture_output=True,
            text=True,
        )
        assert refused.returncode == 2
        assert "daemon.batch_sizes: unknown key" in refused.stderr
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "daemon.reload_rejected" in logged())

        write_config(config, endpoint, port, [arn_a, arn_b, arn_c], record_path)
        accepted = subprocess.run(
            [sys.executable, "-m", "esm", "reload", "-c", str(config)],
            capture_output=True,
            text=True,
        )
        assert accepted.returncode == 0, accepted.stderr
        send(sqs, url_c, "via-esm-reload")
        send(sqs, url_a, "a-still-polled")
        wait_until(lambda: "via-esm-reload" in handled() and "a-still-polled" in handled())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "daemon.batch_sizes: unknown key" in logged()
    assert logged().count("daemon.reloaded") == 2
