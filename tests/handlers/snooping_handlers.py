"""Hostile `kind = "process"` functions for tests/faults/test_security.py: what a function
written to spy on the daemon or on another function would try.

Each writes what it could and could not do to RECORD_PATH (one JSON line per call).
"""

from __future__ import annotations

import http.client
import json
import os
import re
from pathlib import Path
from typing import Any

SECRET_PATTERN = re.compile(rb"plantedbearer[0-9a-f]{16}")
MEM_READ_CAP = 512 * 1024 * 1024


def _record(entry: dict[str, Any]) -> None:
    with open(os.environ["RECORD_PATH"], "a") as out:
        out.write(json.dumps(entry) + "\n")


def _attempt(path: str) -> tuple[str, bytes]:
    try:
        return "read", Path(path).read_bytes()
    except OSError as exc:
        return type(exc).__name__, b""


def read_daemon_secrets(event: Any, context: Any) -> None:
    """Read the parent's (the daemon's) environment and memory and grep them for tokens."""
    daemon = os.getppid()
    environ_outcome, environ = _attempt(f"/proc/{daemon}/environ")
    maps_outcome, maps = _attempt(f"/proc/{daemon}/maps")
    hits = set(SECRET_PATTERN.findall(environ))
    mem_outcome = "no maps"
    scanned = 0
    if maps:
        try:
            with open(f"/proc/{daemon}/mem", "rb", buffering=0) as mem:
                mem_outcome = "read"
                for line in maps.decode().splitlines():
                    span, perms = line.split()[:2]
                    start, end = (int(x, 16) for x in span.split("-"))
                    if not perms.startswith("r") or scanned > MEM_READ_CAP:
                        continue
                    try:
                        mem.seek(start)
                        chunk = mem.read(min(end - start, 64 * 1024 * 1024))
                    except OSError:
                        continue
                    scanned += len(chunk)
                    hits.update(SECRET_PATTERN.findall(chunk))
        except OSError as exc:
            mem_outcome = type(exc).__name__
    own = "\n".join(f"{k}={v}" for k, v in os.environ.items()).encode()
    hits.update(SECRET_PATTERN.findall(own))
    _record(
        {
            "daemon_pid": daemon,
            "environ": environ_outcome,
            "maps": maps_outcome,
            "mem": mem_outcome,
            "mem_scanned": scanned,
            "hits": sorted(h.decode() for h in hits),
        }
    )


def report_runtime_api(event: Any, context: Any) -> None:
    """The victim: records its own Runtime API address and the bodies it handled."""
    _record(
        {
            "api": os.environ["AWS_LAMBDA_RUNTIME_API"],
            "bodies": [r["body"] for r in event["Records"]],
        }
    )


def _listening_loopback_ports() -> set[int]:
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, _, port = fields[1].partition(":")
        if address == "0100007F" and fields[3] == "0A":  # 127.0.0.1, LISTEN
            ports.add(int(port, 16))
    return ports


def steal_events(event: Any, context: Any) -> None:
    """The thief: finds the victim's Runtime API in /proc/net/tcp and polls it.

    It polls only the port the victim recorded (RIVAL_RECORD_PATH), never the other
    listening ports it sees: this host is shared and they are not ours to probe.
    """
    victim = json.loads(Path(os.environ["RIVAL_RECORD_PATH"]).read_text().splitlines()[0])
    port = int(victim["api"].rsplit(":", 1)[1])
    own_port = int(os.environ["AWS_LAMBDA_RUNTIME_API"].rsplit(":", 1)[1])
    listening = _listening_loopback_ports()
    statuses: list[Any] = []
    stolen: list[str] = []
    for _ in range(int(event["Records"][0]["body"].split(":")[1])):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            connection.request("GET", "/2018-06-01/runtime/invocation/next")
            response = connection.getresponse()
            body = response.read()
            statuses.append(response.status)
            if response.status == 200:
                request_id = response.getheader("Lambda-Runtime-Aws-Request-Id")
                stolen.extend(r["body"] for r in json.loads(body)["Records"])
                connection.request(
                    "POST", f"/2018-06-01/runtime/invocation/{request_id}/response", body=b"{}"
                )
                connection.getresponse().read()
        except OSError as exc:
            statuses.append(type(exc).__name__)
        finally:
            connection.close()
    poison = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        poison.request("POST", "/2018-06-01/runtime/init/error", body=b'{"errorType":"X"}')
        init_error_status: Any = poison.getresponse().status
    except OSError as exc:
        init_error_status = type(exc).__name__
    finally:
        poison.close()
    _record(
        {
            "victim_port_listed": port in listening,
            "own_port_listed": own_port in listening,
            "statuses": statuses,
            "init_error_status": init_error_status,
            "stolen": stolen,
        }
    )
