"""Instructions per call / per record under callgrind: figures that do not move with load.

CPU time on this shared machine moves by ±25% between runs; an instruction count does not,
so an A/B of two trees is read off one run of each. `python -m bench.callgrind percall`
re-runs itself under `valgrind --tool=callgrind` with collection off, switches it on
(`callgrind_control -i on`) only around each per-call figure's timed calls on esm.http1 +
uvloop, and dumps each figure's count (`-d`); `hotpath` does the same around the SQS
limit and the SQS hot-path cells at one batch size. What callgrind cannot count: kernel
time (the socket calls), and a real CPU's SHA-256 instructions (under valgrind OpenSSL
runs its generic code, so signing weighs several times what it does natively).

    .venv/bin/python -m bench.callgrind percall --calls 500
    .venv/bin/python -m bench.callgrind hotpath --records 10000 --batch-size 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ENV_OUT = "ESM_BENCH_CALLGRIND_OUT"


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], capture_output=True, check=False)


class Counted:
    """Collection on from `start` to `stop`, then one dump: the span's instructions."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def start(self) -> None:
        _control("-i", "on")

    def stop(self, label: str = "") -> None:
        _control("-d")
        _control("-i", "off")
        self.labels.append(label)


def _percall(calls: int, counted: Counted) -> dict[str, float]:
    from bench import percall
    from bench.endpoints import (
        boto3_client,
        start_fake_kinesis,
        start_fake_sqs,
        use_local_credentials,
    )
    from bench.harness import quiet_esm_logging

    async def counted_calls(
        n: int, call: Callable[[], Awaitable[Any]], figure: str = "", profiles: Any = None
    ) -> float:
        for _ in range(min(20, n)):
            await call()
        counted.start()
        for _ in range(n):
            await call()
        counted.stop(figure)
        return 0.0

    percall._cpu_per_call = counted_calls  # type: ignore[assignment]
    use_local_credentials()
    os.environ["ESM_HTTP_CLIENT"] = "httptools"
    loop = percall.loops()[-1]
    with quiet_esm_logging(), start_fake_kinesis() as kinesis, start_fake_sqs() as sqs:
        stream = f"bench-callgrind-{int(time.time())}"
        boto3_client("kinesis", kinesis).create_stream(StreamName=stream, ShardCount=1)
        url = boto3_client("sqs", sqs).create_queue(QueueName=stream)["QueueUrl"]
        percall._run(loop, percall._kinesis, kinesis, stream, calls)
        percall._run(loop, percall._sqs, sqs, stream, url, calls)
    return {label: float(calls) for label in counted.labels}


def _hotpath(records: int, batch_size: int, counted: Counted) -> dict[str, float]:
    import orjson

    from bench import hotpath
    from bench.harness import quiet_esm_logging

    class Span:
        def __init__(self, label: str) -> None:
            self.label = label

        def start(self) -> None:
            counted.start()

        def stop(self) -> None:
            counted.stop(self.label)

    with quiet_esm_logging():
        bodies = hotpath.receive_bodies([orjson.dumps(m) for m in hotpath.sqs_messages(records)])
        counted.start()
        hotpath.sqs_limit(bodies)
        counted.stop("sqs limit")
        for filtered in (True, False):
            label = f"sqs batch {batch_size} {'filter' if filtered else 'no filter'}"
            hotpath.run_cell("sqs", records, batch_size, filtered=filtered, profiler=Span(label))
    return {label: float(records) for label in counted.labels}


def _totals(out: str) -> list[int]:
    """Each dump's instructions ("totals:", the sum of self costs; "summary:" is wrong
    when collection is toggled inside a function)."""
    dumps = [p for p in Path(out).parent.glob(Path(out).name + ".*") if p.suffix[1:].isdigit()]
    totals = []
    for path in sorted(dumps, key=lambda p: int(p.suffix[1:])):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                totals.append(int(line.split()[1]))
                break
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__)
    parser.add_argument("what", choices=("percall", "hotpath"))
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    out = os.environ.get(ENV_OUT)
    if out is None:  # the parent: run this module again under callgrind, then read the dumps
        if shutil.which("valgrind") is None:
            print("bench.callgrind needs valgrind (callgrind_control)", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="esm-callgrind-") as tmp:
            out = f"{tmp}/callgrind.out"
            child = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    f"--callgrind-out-file={out}",
                    sys.executable,
                    "-m",
                    "bench.callgrind",
                    *(argv if argv is not None else sys.argv[1:]),
                ],
                env={**os.environ, ENV_OUT: out},
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                check=False,
            )
            units = [line.split("\t") for line in child.stdout.splitlines() if "\t" in line]
            totals = _totals(out)
        if child.returncode or len(units) != len(totals):
            print(child.stdout, file=sys.stderr)
            return child.returncode or 1
        per = "call" if args.what == "percall" else "record"
        for (label, count), total in zip(units, totals, strict=True):
            print(f"{label}: {total / float(count):,.0f} instructions per {per}")
        return 0
    counted = Counted()
    if args.what == "percall":
        units = _percall(args.calls, counted)
    else:
        units = _hotpath(args.records, args.batch_size, counted)
    time.sleep(0.2)  # the last dump is written by valgrind's own thread
    for label, count in units.items():
        print(f"{label}\t{count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
