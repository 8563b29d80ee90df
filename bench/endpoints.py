"""Local endpoints the benchmarks run against, each its own process on 127.0.0.1.

- moto in server mode (SQS latency, 100 idle queues, the small moto SQS drain);
- kinesalite (npm) for Kinesis: faster than moto and closer to AWS
  (see shared/design/local-endpoints.md); installed into bench/node_modules on first use;
- `bench.fake_sqs`, a purpose-built in-memory SQS endpoint, for draining 50,000 messages
  (moto's SQS slows down with queue depth: 2,000 messages took a minute to send);
- `bench.fake_kinesis`, a purpose-built in-memory Kinesis endpoint, so a stream drain is
  bound by the consumer rather than by kinesalite's ~0.5 s of CPU per 10,000-record page.

Every endpoint is stopped by the process that started it; only loopback addresses are used.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
REGION = "us-east-1"
ACCOUNT = "000000000000"
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


def use_local_credentials() -> None:
    """Any credentials work on these endpoints; make sure no real profile is picked up."""
    os.environ["AWS_ACCESS_KEY_ID"] = CREDENTIALS["aws_access_key_id"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = CREDENTIALS["aws_secret_access_key"]
    os.environ["AWS_DEFAULT_REGION"] = REGION
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Endpoint:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_until_listening(
    port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"{what} did not listen on {HOST}:{port} within {timeout} s"
                ) from None
            time.sleep(0.05)


def start_moto() -> Endpoint:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                break
        except (OSError, urllib.error.URLError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.05)
    return Endpoint("moto", url, proc)


def reset_moto(endpoint: Endpoint) -> None:
    request = urllib.request.Request(f"{endpoint.url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def start_fake_sqs() -> Endpoint:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_sqs", "--host", HOST, "--port", str(port)],
        cwd=str(BENCH_DIR.parent),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_until_listening(port, proc, "bench.fake_sqs")
    return Endpoint("fake_sqs", f"http://{HOST}:{port}", proc)


def start_fake_kinesis() -> Endpoint:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_kinesis", "--host", HOST, "--port", str(port)],
        cwd=str(BENCH_DIR.parent),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_until_listening(port, proc, "bench.fake_kinesis")
    return Endpoint("fake_kinesis", f"http://{HOST}:{port}", proc)


def endpoint_calls(endpoint: Endpoint) -> dict[str, int] | None:
    """Calls served per operation, from bench.fake_kinesis (None for other endpoints)."""
    if endpoint.name != "fake_kinesis":
        return None
    request = urllib.request.Request(
        endpoint.url + "/",
        data=b"{}",
        method="POST",
        headers={
            "X-Amz-Target": "Kinesis_20131202.BenchStats",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        import json

        return dict(json.loads(response.read())["Calls"])


def kinesalite_available(install: bool = True) -> bool:
    """True if kinesalite can be started; installs it into bench/node_modules when node is here."""
    if (BENCH_DIR / "node_modules" / "kinesalite").is_dir():
        return shutil.which("node") is not None
    if not install or shutil.which("node") is None or shutil.which("npm") is None:
        return False
    try:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=BENCH_DIR,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=180,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return (BENCH_DIR / "node_modules" / "kinesalite").is_dir()


def start_kinesalite(shard_limit: int = 1100) -> Endpoint:
    """kinesalite bound to loopback through its JS API (its CLI listens on all interfaces)."""
    port = free_port()
    script = (
        "require('kinesalite')({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0,"
        f" shardLimit: {int(shard_limit)}}}).listen({port}, '{HOST}')"
    )
    proc = subprocess.Popen(
        ["node", "-e", script],
        cwd=BENCH_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_until_listening(port, proc, "kinesalite")
    return Endpoint("kinesalite", f"http://{HOST}:{port}", proc)


def start_kinesis_endpoint(prefer: str = "auto", shard_limit: int = 1100) -> Endpoint:
    """kinesalite if it can run here (it is the faster Kinesis endpoint), else moto."""
    if prefer in ("auto", "kinesalite") and kinesalite_available(install=True):
        return start_kinesalite(shard_limit)
    if prefer == "kinesalite":
        raise RuntimeError("kinesalite is not available (needs node and npm)")
    return start_moto()


def boto3_client(service: str, endpoint: Endpoint, **config: object):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint.url,
        region_name=REGION,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, **config),  # type: ignore[arg-type]
        **CREDENTIALS,
    )
