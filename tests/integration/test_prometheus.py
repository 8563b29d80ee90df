"""deploy/prometheus and deploy/grafana against what esm really exports: promtool on the
rules, the scrape config and a live /metrics, and every metric they name must exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import recorder
from conftest import build_config, wait_until

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "esm-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install prometheus); .ci/run installs it",
)
METRIC = re.compile(r"\besm_[a-z0-9_]+\b")
SYNTHETIC = {"up"}
"""Series Prometheus itself makes for every target, which rules may use."""


def promtool(
    *args: str, stdin: str | None = None, cwd: Path = PROMETHEUS
) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def queryable(exposition: str) -> set[str]:
    """Every series name a query can use, from the `# TYPE` lines of an exposition (metric
    families appear there even before their first labelled child exists)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def exported_families(exposition: str) -> set[str]:
    """The metric names esm defines (the `_created` companions aside)."""
    return {
        line.split()[2]
        for line in exposition.splitlines()
        if line.startswith("# TYPE ") and not line.split()[2].endswith("_created")
    }


def rule_expressions() -> list[str]:
    import yaml

    groups = yaml.safe_load((PROMETHEUS / "esm-rules.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    found.append(value)
                elif key == "query" and isinstance(value, str | dict):
                    found.append(value if isinstance(value, str) else value.get("query", ""))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return found


@pytest.fixture(scope="module")
def live_metrics(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a real daemon that handled SQS messages and Kinesis records, one of which
    failed and was dropped, so labelled series of every kind exist."""
    import boto3
    from anyio.from_thread import start_blocking_portal

    from esm.config import parse_config
    from esm.daemon import Daemon

    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    unique = tmp_path_factory.mktemp("prom").name.replace("_", "-")
    url = sqs.create_queue(QueueName=f"prom-{unique}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    stream = f"prom-{unique}"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    stream_arn = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["StreamARN"]
    kinesis.put_record(StreamName=stream, PartitionKey="k", Data=b"poison")
    base = build_config(
        endpoint,
        {"f": {"handler": "recorder.record"}, "g": {"handler": "recorder.stream_fail_on_poison"}},
        [],
    )
    config = parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            "state": {"path": str(tmp_path_factory.mktemp("state") / "state.sqlite3")},
            "functions": {
                n: {"handler": f.handler, "code_path": str(f.code_path)}
                for n, f in base.functions.items()
            },
            "mappings": [
                {"name": "prom-sqs", "function": "f", "event_source_arn": queue_arn},
                {
                    "name": "prom-kinesis",
                    "function": "g",
                    "event_source_arn": stream_arn,
                    "starting_position": "TRIM_HORIZON",
                    "maximum_retry_attempts": 0,
                },
            ],
        }
    )
    daemon = Daemon(config)
    with start_blocking_portal() as portal:
        future, port = portal.start_task(daemon.run)
        try:
            import urllib.request

            def scrape() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return r.read().decode()

            wait_until(lambda: recorder.bodies_for(queue_arn))
            wait_until(lambda: 'esm_dropped_events_total{mapping="prom-kinesis"} 1.0' in scrape())
            yield scrape()
        finally:
            portal.call(daemon.request_stop)
            future.result(timeout=60)


@needs_promtool
def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", "esm-rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "esm-rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_scrape_config_passes_promtool_check_config(tmp_path: Path) -> None:
    import yaml

    checked = promtool("check", "config", "prometheus.yml")
    if (
        checked.returncode != 0
        and "kubernetes_sd_configs not found" in checked.stdout + checked.stderr
    ):
        # Debian builds Prometheus without Kubernetes discovery: check the rest.
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        config["scrape_configs"] = [
            j for j in config["scrape_configs"] if "kubernetes_sd_configs" not in j
        ]
        config["rule_files"] = [str(PROMETHEUS / f) for f in config["rule_files"]]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_live_metrics_pass_promtool_check_metrics(live_metrics: str) -> None:
    checked = promtool("check", "metrics", stdin=live_metrics)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'esm_mapping_ready{mapping="prom-sqs"} 1.0' in live_metrics


def test_every_metric_in_the_rules_and_dashboard_is_exported(live_metrics: str) -> None:
    exported = queryable(live_metrics) | SYNTHETIC
    expressions = rule_expressions() + dashboard_expressions()
    named = {name for expr in expressions for name in METRIC.findall(expr)}
    assert named, "the rules and dashboard name esm's metrics"
    assert named <= exported, f"not exported by esm: {sorted(named - exported)}"
    for expr in rule_expressions():
        bare = re.findall(r"\b([a-z_]+)\{", expr) + re.findall(r"\(([a-z_]+)\)", expr)
        assert {n for n in bare if not n.startswith("esm_")} <= SYNTHETIC | {"by", "on"}, expr


def test_rules_cover_the_alerts_the_issue_asks_for() -> None:
    metrics_by_alert = " ".join(rule_expressions())
    for metric in (
        "esm_iterator_age_seconds",
        "esm_failed_invoke_events_total",
        "esm_on_failure_destination_delivered_events_total",
        "esm_dropped_events_total",
        "esm_mapping_ready",
        "esm_leases_held",
    ):
        assert metric in metrics_by_alert, metric


def test_dashboard_uses_its_datasource_variable_everywhere() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "mapping", "function"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def metrics_section() -> tuple[Path, str]:
    """The README's "Metrics and alerts" section."""
    heading = re.compile(r"^## Metrics and alerts$", re.M)
    path = ROOT / "README.md"
    match = heading.search(text := path.read_text())
    assert match, "no '## Metrics and alerts' section in README.md"
    return path, re.split(r"^## ", text[match.end() :], maxsplit=1, flags=re.M)[0]


def test_docs_list_every_metric_esm_exports() -> None:
    from prometheus_client import generate_latest

    from esm.observability import Metrics

    exposition = generate_latest(Metrics().registry).decode()
    path, section = metrics_section()
    listed = set(METRIC.findall(section))
    missing = exported_families(exposition) - listed
    assert not missing, f"{path.name} 'Metrics and alerts' does not list {sorted(missing)}"
    unknown = listed - queryable(exposition)
    assert not unknown, f"{path.name} lists metrics esm does not export: {sorted(unknown)}"
