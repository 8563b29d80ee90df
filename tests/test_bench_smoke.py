"""The benchmark runs (`python -m bench --quick`) and produces its table and JSON.

Keeps bench/ from rotting as esm's internals change. It asserts only on the shape of the
output, never on a speed: benchmark figures are read by people, not by the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("per_call", "hot_path", "streams_e2e", "sqs_e2e", "sqs_ramp", "latency", "scale")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_bench_writes_table_and_json(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "figure" in run.stdout and "verdict" in run.stdout

    [path] = tmp_path.glob("*-quick.json")
    results = json.loads(path.read_text())
    assert results["meta"]["quick"] is True
    assert set(results["targets"]) >= {"hot_path_records_per_cpu_s", "e2e_ratio"}
    for phase in PHASES:
        assert "error" not in results[phase], results[phase].get("error")

    cells = results["hot_path"]["cells"]
    assert {(c["shape"], c["batch_size"]) for c in cells} == {
        (shape, size) for shape in ("kinesis", "sqs") for size in (100, 1_000, 10_000)
    }
    assert all(c["delivered"] == c["records"] for c in cells)
    for key in ("records_per_s", "records_per_cpu_s", "gc_share"):
        assert all(key in c for c in cells)

    assert "fake_kinesis" in results["streams_e2e"]
    for streams in results["streams_e2e"].values():
        if not isinstance(streams, dict) or "naive" not in streams:
            continue
        assert streams["naive"]["delivered"] >= streams["records"]
        assert all(run["delivered"] >= streams["records"] for run in streams["esm"].values())
        assert set(streams["ratio"]) == set(streams["esm"])

    for name in ("fake_sqs", "moto"):
        sqs = results["sqs_e2e"][name]
        assert sqs["naive"]["delivered"] >= sqs["messages"]
        assert sqs["esm"]["delivered"] >= sqs["messages"]
        assert "ratio" in sqs

    for name in ("sqs", "kinesis"):
        latency = results["latency"][name]
        assert latency["received"] == latency["events"]
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(latency)

    assert {"rss_mb_max", "cpu_percent", "cpu_us_per_get_records"} <= set(
        results["scale"]["kinesis"]
    )
    assert {"rss_mb_max", "cpu_percent"} <= set(results["scale"]["sqs"])

    figures = [row["figure"] for row in results["table"]]
    assert len(figures) >= 15
    assert not any("FAILED" in figure for figure in figures)
