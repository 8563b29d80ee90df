"""The deploy/ files agree with each other and with esm: Dockerfile and deploy/install.sh,
the systemd unit, the Kubernetes manifests, the compose file and the example configs.

No Docker engine or cluster is needed: files are parsed and cross-checked, and real tools
run when they are installed (systemd-analyze, kubectl kustomize, shellcheck)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DRAIN_MARGIN = 5  # esm.daemon.DRAIN_MARGIN_SECONDS: the drain lasts the longest timeout + 5 s


# --- helpers -----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), arguments
    return [str(v) for v in value]


def dockerignore_allows(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]

    def matches(glob: str, candidate: str) -> bool:
        if glob.startswith("**/"):
            return fnmatch(candidate, glob[3:]) or fnmatch(candidate, "*/" + glob[3:])
        return fnmatch(candidate, glob)

    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(matches(glob, c) for c in candidates):
            allowed = negate
    return allowed


def install_sources() -> list[str]:
    match = re.search(r'^SOURCES="([^"]+)"', (DEPLOY / "install.sh").read_text(), re.M)
    assert match, "deploy/install.sh defines SOURCES"
    return match.group(1).split()


def systemd_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd allows repeated keys)."""
    unit: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        unit[section].setdefault(key.strip(), []).append(value.strip())
    return unit


def seconds(value: str | int) -> float:
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(\d+)\s*(s|min|m)?", str(value))
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) in ("min", "m") else 1)


def longest_timeout(config: dict[str, Any]) -> float:
    return max(float(f.get("timeout", 3)) for f in config["functions"].values())


def validate(config_text: str, tmp_path: Path) -> None:
    """esm's own validation (the same as `esm validate -c`)."""
    from esm.config import load_config

    path = tmp_path / "config.toml"
    path.write_text(config_text)
    load_config(path)


def esm_accepts_state_backend(backend: str) -> bool:
    from esm import config

    return backend in config.STATE_BACKENDS


def manifests(directory: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == name)


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in c["ports"]], f"{c['name']}: no port {port}"
        return port
    numbers = [p["containerPort"] for p in c["ports"] if p.get("name") == port]
    assert numbers, f"container {c['name']} has no port named {port!r}"
    return int(numbers[0])


def esm_config_of(
    docs: list[dict[str, Any]], pod: dict[str, Any], c: dict[str, Any]
) -> tuple[str, str]:
    """Follow `-c PATH` to the mounted ConfigMap key: (config text, config path)."""
    args = c["args"]
    assert args[:2] == ["run", "-c"], args
    config_path = PurePosixPath(args[2])
    mounts = {PurePosixPath(m["mountPath"]): m for m in c["volumeMounts"]}
    mount = mounts.get(config_path.parent)
    assert mount is not None, f"nothing is mounted at {config_path.parent}"
    assert mount.get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    assert config_path.name in config_map["data"], (
        f"ConfigMap {config_map['metadata']['name']} has no {config_path.name}"
    )
    return config_map["data"][config_path.name], str(config_path)


def check_esm_container(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, Any]:
    """Probes, ports, mounts and the stop grace period of the esm container agree with its
    config; returns the parsed config."""
    template = deployment["spec"]["template"]
    pod = template["spec"]
    c = container(pod, "esm")
    text, _ = esm_config_of(docs, pod, c)
    config = tomllib.loads(text)
    host, _, port = config["daemon"]["http_address"].rpartition(":")
    assert host == "0.0.0.0", "the kubelet and Prometheus reach esm from outside the pod"
    assert port_number(c, c["livenessProbe"]["httpGet"]["port"]) == int(port)
    assert port_number(c, c["readinessProbe"]["httpGet"]["port"]) == int(port)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    if "startupProbe" in c:
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert port_number(c, c["startupProbe"]["httpGet"]["port"]) == int(port)
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == int(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert pod["terminationGracePeriodSeconds"] > longest_timeout(config) + DRAIN_MARGIN
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    state_path = config["state"].get("path")
    if state_path:
        assert str(PurePosixPath(state_path).parent) in mounts, "the state directory is a volume"
    assert "/tmp" in mounts, "readOnlyRootFilesystem needs a writable /tmp"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    return config


# --- Dockerfile and deploy/install.sh ------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return stages(dockerfile_instructions(ROOT / "Dockerfile"))


def test_dockerfile_builds_in_one_stage_and_runs_from_the_same_slim_base(
    dockerfile: list[list[tuple[str, str]]],
) -> None:
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    args = dict(a.partition("=")[::2] for k, a in instructions if k == "ARG")
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", args["PYTHON_IMAGE"])
    build, runtime = dockerfile
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert runtime[0][1] == "${PYTHON_IMAGE}", (
        "the venv's interpreter path must exist in the runtime stage"
    )


def test_build_stage_copies_what_install_sh_builds_from_and_runs_it(
    dockerfile: list[list[tuple[str, str]]],
) -> None:
    build = dockerfile[0]
    copied = []
    for keyword, arguments in build:
        if keyword == "COPY":
            *sources, _ = arguments.split()
            copied += sources
    assert sorted(copied) == sorted(install_sources())
    runs = [a for k, a in build if k == "RUN"]
    assert runs == ["sh deploy/install.sh /opt/esm"], (
        "every install step lives in deploy/install.sh"
    )


def test_dockerignore_sends_every_copied_file_and_nothing_local() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in install_sources():
        assert dockerignore_allows(patterns, source), source
        assert (ROOT / source).exists(), source
    assert dockerignore_allows(patterns, "esm/daemon.py")
    for local in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "esm-state.sqlite3",
        "esm/__pycache__/x.pyc",
    ):
        assert not dockerignore_allows(patterns, local), local


def test_runtime_stage_runs_esm_as_a_non_root_user_with_state_volume_and_healthcheck(
    dockerfile: list[list[tuple[str, str]]],
) -> None:
    runtime = dict(dockerfile[1])
    assert "COPY" in runtime and runtime["COPY"] == "--from=build /opt/esm /opt/esm"
    user = runtime["USER"].split(":")[0]
    assert user not in ("0", "root")
    assert "/var/lib/esm" in exec_form(runtime["VOLUME"])
    assert runtime["WORKDIR"] == "/var/lib/esm"
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    healthcheck = runtime["HEALTHCHECK"]
    command = exec_form(healthcheck.split("CMD", 1)[1].strip())
    assert command == ["/opt/esm/bin/esm-healthcheck"]
    assert "esm-healthcheck" in (DEPLOY / "install.sh").read_text(), (
        "install.sh creates the healthcheck"
    )
    assert "/healthz" in (DEPLOY / "install.sh").read_text()
    assert exec_form(runtime["ENTRYPOINT"]) == ["esm"]
    assert exec_form(runtime["CMD"]) == ["run", "-c", "/etc/esm/config.toml"]
    docker_config = tomllib.loads((DEPLOY / "docker" / "config.toml").read_text())
    host, _, port = docker_config["daemon"]["http_address"].rpartition(":")
    assert host == "0.0.0.0" and runtime["EXPOSE"] == port == "9464", "HEALTHCHECK's default URL"
    assert docker_config["state"]["path"].startswith("/var/lib/esm/")
    text = (ROOT / "Dockerfile").read_text()
    assert "--stop-timeout" in text and "stop_grace_period" in text, (
        "the stop grace period is documented"
    )


def test_install_sh_is_valid_posix_shell() -> None:
    checked = subprocess.run(
        ["sh", "-n", str(DEPLOY / "install.sh")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    if shutil.which("shellcheck"):
        linted = subprocess.run(
            ["shellcheck", "-s", "sh", str(DEPLOY / "install.sh")], capture_output=True, text=True
        )
        assert linted.returncode == 0, linted.stdout


def test_compose_example_mounts_config_and_state_and_outlasts_the_drain() -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    esm = compose["services"]["esm"]
    app = compose["services"]["app"]
    assert "./config.toml:/etc/esm/config.toml:ro" in esm["volumes"]
    assert any(v.endswith(":/var/lib/esm") for v in esm["volumes"])
    assert esm["network_mode"] == "service:app", "the sidecar shares the app's localhost"
    config = tomllib.loads((DEPLOY / "docker" / "config.toml").read_text())
    assert seconds(esm["stop_grace_period"]) > longest_timeout(config) + DRAIN_MARGIN
    url = urlsplit(config["functions"]["orders"]["url"])
    assert url.hostname == "127.0.0.1"
    assert app["command"][app["command"].index("--port") + 1] == str(url.port)
    assert any(p.startswith("9464:") for p in app["ports"])


@pytest.mark.parametrize("config", ["docker/config.toml", "systemd/config.toml"])
def test_example_configs_are_valid(config: str, tmp_path: Path) -> None:
    from esm.config import load_config

    load_config(DEPLOY / config)


# --- systemd ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return systemd_unit(DEPLOY / "systemd" / "esm.service")


def test_unit_is_type_notify_with_watchdog_and_drain_long_enough(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    service = {k: v[-1] for k, v in unit["Service"].items()}
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert seconds(service["WatchdogSec"]) > 0
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert service["ExecStart"] == "/opt/esm/bin/esm run -c /etc/esm/config.toml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    config = tomllib.loads((DEPLOY / "systemd" / "config.toml").read_text())
    from esm.config import DaemonConfig

    drain_bound = min(
        config["daemon"].get("drain_timeout", DaemonConfig().drain_timeout),
        longest_timeout(config) + DRAIN_MARGIN,
    )
    assert seconds(service["TimeoutStopSec"]) > drain_bound
    assert seconds(service["TimeoutStopSec"]) > DaemonConfig().drain_timeout, "also for any config"


def test_unit_is_hardened_and_keeps_state_in_its_state_directory(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    service = {k: v[-1] for k, v in unit["Service"].items()}
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "StateDirectory": "esm",
        "ConfigurationDirectory": "esm",
        "CapabilityBoundingSet": "",
    }.items():
        assert service.get(key) == value, key
    config = tomllib.loads((DEPLOY / "systemd" / "config.toml").read_text())
    assert (
        PurePosixPath(config["state"]["path"]).parent
        == PurePosixPath("/var/lib") / service["StateDirectory"]
    )
    assert "@system-service" in unit["Service"]["SystemCallFilter"]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify also checks that ExecStart's binary exists: point it at this checkout's esm.
    esm = Path(sys.executable).with_name("esm")
    assert esm.exists(), esm
    text = (DEPLOY / "systemd" / "esm.service").read_text().replace("/opt/esm/bin/esm", str(esm))
    path = tmp_path / "esm.service"
    path.write_text(text)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    complaints = [
        line for line in (verified.stdout + verified.stderr).splitlines() if "esm.service" in line
    ]
    assert verified.returncode == 0 and not complaints, verified.stdout + verified.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = re.search(r"Overall exposure level for esm.service: ([\d.]+)", security.stdout)
    if security.returncode == 0 and exposure:  # --offline needs systemd >= 250
        assert float(exposure.group(1)) <= 2.0, security.stdout


# --- Kubernetes ---------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["sidecar", "fleet"])
def test_every_manifest_parses_and_kustomization_lists_them(example: str) -> None:
    directory = KUBERNETES / example
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    for doc in manifests(directory):
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc["__file__"]
    if shutil.which("kubectl"):
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
        )
        assert rendered.returncode == 0, rendered.stderr


def test_sidecar_esm_calls_the_app_container_on_localhost(tmp_path: Path) -> None:
    docs = manifests(KUBERNETES / "sidecar")
    deployment = one(docs, "Deployment")
    config = check_esm_container(docs, deployment)
    pod = deployment["spec"]["template"]["spec"]
    app = container(pod, "app")
    (function,) = config["functions"].values()
    assert function["kind"] == "http"
    url = urlsplit(function["url"])
    assert url.hostname in ("127.0.0.1", "localhost"), "the app is reached inside the pod"
    assert port_number(app, "app") == url.port
    assert app["command"][app["command"].index("--port") + 1] == str(url.port)
    assert port_number(app, app["readinessProbe"]["httpGet"]["port"]) == url.port
    assert "127.0.0.1:9464/healthz" in " ".join(app["lifecycle"]["preStop"]["exec"]["command"]), (
        "the app outlives esm's drain"
    )
    text, _ = esm_config_of(docs, pod, container(pod, "esm"))
    validate(text, tmp_path)
    code = one(docs, "ConfigMap", "orders-app")["data"]
    for name in ("sidecar_app.py", "handlers.py"):
        assert code[name] == (ROOT / "examples" / name).read_text(), (
            f"{name}: copy examples/{name} into configmap.yaml"
        )
    mount = next(m for m in app["volumeMounts"] if m["name"] == "app-code")
    assert app["command"][1] == f"{mount['mountPath']}/sidecar_app.py"


def test_fleet_uses_the_dynamodb_lease_store_and_its_pieces_select_each_other(
    tmp_path: Path,
) -> None:
    docs = manifests(KUBERNETES / "fleet")
    deployment = one(docs, "Deployment")
    config = check_esm_container(docs, deployment)
    assert config["state"] == {"backend": "dynamodb", "table": "esm-leases", "create_table": True}
    text, _ = esm_config_of(
        docs,
        deployment["spec"]["template"]["spec"],
        container(deployment["spec"]["template"]["spec"], "esm"),
    )
    if esm_accepts_state_backend("dynamodb"):
        validate(text, tmp_path)
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    esm = container(template["spec"], "esm")
    env = {e["name"] for e in esm.get("env", [])}
    for function in config["functions"].values():
        if "bearer_token_env" in function:
            assert function["bearer_token_env"] in env
    assert one(docs, "ServiceAccount", template["spec"]["serviceAccountName"])

    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (metrics_port,) = service["spec"]["ports"]
    assert port_number(esm, metrics_port["targetPort"]) == metrics_port["port"]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port["port"])
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"

    monitor = one(docs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == metrics_port["name"] and endpoint["path"] == "/metrics"
    assert re.fullmatch(r"esm.*", service["metadata"]["name"]), (
        "the job label the alert rules match"
    )

    budget = one(docs, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["maxUnavailable"] == 1

    rules = one(docs, "PrometheusRule")
    expected = yaml.safe_load((DEPLOY / "prometheus" / "esm-rules.yml").read_text())
    assert rules["spec"] == expected, (
        "copy deploy/prometheus/esm-rules.yml into prometheusrule.yaml"
    )


# --- the sidecar example application -------------------------------------------------------


@pytest.fixture
def sidecar_app() -> Iterator[str]:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import handlers
        import sidecar_app

        def failing(event: dict[str, Any], context: Any) -> None:
            raise handlers.InvalidReading("no temperature")

        def route(event: dict[str, Any], context: Any) -> Any:
            return failing(event, context) if event.get("fail") else handlers.handle(event, context)

        server = sidecar_app.make_server("127.0.0.1", 0, route)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_port}"
        server.shutdown()
        server.server_close()
    finally:
        sys.path.remove(str(ROOT / "examples"))


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_sidecar_app_answers_like_the_lambda_handler(sidecar_app: str) -> None:
    event = {"Records": [{"messageId": "a", "body": "{}"}, {"messageId": "b", "body": "not json"}]}
    assert post(f"{sidecar_app}/invoke", event) == (
        200,
        {"batchItemFailures": [{"itemIdentifier": "b"}]},
    )
    status, error = post(f"{sidecar_app}/invoke", {"fail": True})
    assert (
        status == 500
        and error["errorType"] == "InvalidReading"
        and error["errorMessage"] == "no temperature"
    )
    with urllib.request.urlopen(f"{sidecar_app}/healthz", timeout=5) as response:
        assert response.status == 200


def test_paths_in_the_unit_header_exist() -> None:
    header = "\n".join(
        line
        for line in (DEPLOY / "systemd" / "esm.service").read_text().splitlines()
        if line.startswith("#")
    )
    paths = re.findall(r"deploy/[\w./-]*\w", header)
    assert paths
    for path in paths:
        assert (ROOT / path).exists(), path
