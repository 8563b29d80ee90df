"""esm benchmarks: one entry point, one table, one JSON file per run.

    python -m bench            # the full run (about 8 minutes on 2 cores)
    python -m bench --quick    # every figure on tiny inputs (< 60 s); what the smoke test runs
    python -m bench --phases hot_path,latency --profile

Writes bench/results/<date>-<commit>.json (quick runs: ...-quick.json) and prints a table of
every figure against its target. Each comparison runs both sides in this run, on the same
endpoint and the same data, and reports their ratio. Nothing here is a test: the test
suite never asserts on these numbers. BENCHMARKS.md explains each figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import endpoints  # noqa: E402
from bench.harness import BENCH_DIR  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
PHASES = ("per_call", "hot_path", "streams_e2e", "sqs_e2e", "sqs_ramp", "latency", "scale")

TARGETS = {
    "per_call_us": 100,
    "hot_path_records_per_cpu_s": 200_000,
    "hot_path_fraction_kinesis_1000": 0.70,
    "hot_path_fraction_sqs_100": 0.50,
    "e2e_ratio": 3.0,
    "streams_fraction_of_limit": 0.95,
    "latency_p50_ms_sqs": 50,
    "latency_p50_ms_kinesis": 300,
    "latency_p99_ms_quiet_shards": 1_500,
    "idle_shards_rss_mb": 150,
    "idle_shards_lambda_pace_cpu_percent": 10,
}


@dataclass(frozen=True)
class Sizes:
    """How big each phase is; --quick shrinks every one so the whole run stays under 60 s."""

    per_calls: int
    ramp_seconds: float
    ramp_messages: int
    hot_records: int
    hot_repeats: int
    stream_records: int
    sqs_messages: int
    sqs_moto_messages: int
    latency_events: int
    idle_shards: int
    idle_queues: int
    scale_warmup: float
    scale_window: float
    phase_timeout: float


FULL = Sizes(3_000, 30, 200_000, 200_000, 3, 200_000, 50_000, 200, 1_000, 1_000, 100, 10, 60, 240)
IDLE_READ_BUDGET = 30.0
"""The opt-in `idle_shard_reads_per_second` measured beside the default (figures 4 and 5)."""
QUIET_SHARD_EVENTS = 200
"""Records written to random quiet shards of the idle stream (figure 4), 50 ms apart."""
QUICK = Sizes(100, 2, 5_000, 10_000, 1, 10_000, 1_000, 30, 40, 20, 5, 1, 3, 30)


def git_commit() -> tuple[str, bool]:
    root = BENCH_DIR.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return "nogit", False
    return commit or "nogit", dirty


def _log(line: str) -> None:
    print(line, flush=True)


# --- phases --------------------------------------------------------------------------------


def phase_per_call(sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    from bench import percall

    _log(f"[per_call] esm CPU per AWS call, {sizes.per_calls:,} calls per figure")
    return percall.run(sizes.per_calls, log=_log, profile_dir=args.out if args.profile else None)


def phase_sqs_ramp(sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    from bench import ramp

    _log(
        f"[sqs_ramp] concurrency over {sizes.ramp_seconds:g} s on a "
        f"{sizes.ramp_messages:,}-message queue (bench.fake_sqs), standard and provisioned mode"
    )
    return ramp.run(sizes.ramp_seconds, sizes.ramp_messages, log=_log, out=args.out)


def phase_hot_path(sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    from bench import hotpath

    _log(f"[hot_path] {sizes.hot_records:,} records per cell, median of {sizes.hot_repeats}")
    result = hotpath.run(sizes.hot_records, repeats=sizes.hot_repeats, log=_log)
    if args.profile:
        result["profiles"] = profile_hot_path(sizes, args.out)
    return result


HOT_PROFILES = (("kinesis", 1_000), ("sqs", 100))
"""The hot-path cells issue #18 sets targets for: Kinesis at batch 1,000, SQS at batch 100."""


def profile_hot_path(
    sizes: Sizes, out: Path, cells: tuple[tuple[str, int], ...] = HOT_PROFILES
) -> dict[str, str]:
    """pyinstrument CPU-time profiles of the hot-path `cells`, with the filter every record
    passes, written to `profile-<shape>-<batch size>.txt`."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        _log("  --profile needs pyinstrument: .venv/bin/pip install pyinstrument")
        return {}
    from pyinstrument.stack_sampler import get_stack_sampler

    from bench import hotpath
    from bench.harness import quiet_esm_logging

    paths = {}
    with quiet_esm_logging():
        for shape, batch_size in cells:
            # Sampled on process CPU time, as bench.percall's profiles: waits cost nothing.
            get_stack_sampler().timer_func = time.process_time
            profiler = Profiler(interval=0.0005)
            try:
                hotpath.run_cell(shape, sizes.hot_records, batch_size, profiler=profiler)
            finally:
                get_stack_sampler().timer_func = None
            path = out / f"profile-{shape}-{batch_size}.txt"
            header = (
                f"# hot path {shape}, batch {batch_size}, filter, {sizes.hot_records:,} records;"
                " sampled on process CPU time (time.process_time), so the sampler's own\n"
                "# cost (per Python or C call) inflates the total: read the shares\n"
            )
            text = profiler.output_text(unicode=False, color=False, show_all=False)
            path.write_text(header + text)
            paths[shape] = str(path)
            _log(f"  profile of the {shape} hot path: {path}")
    return paths


def phase_streams_e2e(sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    from bench import e2e

    _log(
        f"[streams_e2e] {sizes.stream_records:,} records, 4 shards, "
        "on kinesalite (or moto) and bench.fake_kinesis"
    )
    runs = {}
    with endpoints.start_kinesis_endpoint(args.kinesis_endpoint) as endpoint:
        runs[endpoint.name] = e2e.run_streams(
            endpoint, sizes.stream_records, timeout=sizes.phase_timeout, log=_log
        )
    with endpoints.start_fake_kinesis() as endpoint:
        runs[endpoint.name] = e2e.run_streams(
            endpoint, sizes.stream_records, timeout=sizes.phase_timeout, log=_log
        )
    return runs


def phase_sqs_e2e(sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    from bench import e2e

    _log(
        f"[sqs_e2e] {sizes.sqs_messages:,} messages on bench.fake_sqs, "
        f"{sizes.sqs_moto_messages:,} on moto"
    )
    with endpoints.start_fake_sqs() as endpoint:
        fast = e2e.run_sqs(endpoint, sizes.sqs_messages, timeout=sizes.phase_timeout, log=_log)
    with endpoints.start_moto() as endpoint:
        moto = e2e.run_sqs(endpoint, sizes.sqs_moto_messages, timeout=sizes.phase_timeout, log=_log)
    return {"fake_sqs": fast, "moto": moto}


def phase_latency(sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    from bench import latency

    _log(f"[latency] {sizes.latency_events:,} events each, batching window 0")
    with endpoints.start_moto() as endpoint:
        sqs = latency.run_sqs(endpoint, sizes.latency_events, timeout=sizes.phase_timeout, log=_log)
    with endpoints.start_kinesis_endpoint(args.kinesis_endpoint) as endpoint:
        kinesis = latency.run_kinesis(
            endpoint, sizes.latency_events, timeout=sizes.phase_timeout, log=_log
        )
    quiet = {}
    with endpoints.start_fake_kinesis() as endpoint:
        for name, budget in (("lambda_pace", None), ("budget_30", IDLE_READ_BUDGET)):
            quiet[name] = latency.run_quiet_shards(
                endpoint,
                sizes.idle_shards,
                QUIET_SHARD_EVENTS if sizes is FULL else 10,
                budget=budget,
                warmup=5 if sizes is FULL else 1,
                timeout=sizes.phase_timeout,
                log=_log,
            )
    return {"sqs": sqs, "kinesis": kinesis, "kinesis_quiet_shards": quiet}


def phase_scale(sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    from bench import scale

    _log(
        f"[scale] {sizes.idle_shards:,} idle shards, {sizes.idle_queues} idle queues; "
        f"{sizes.scale_window:g} s window after {sizes.scale_warmup:g} s warm-up"
    )
    with endpoints.start_fake_kinesis() as endpoint:
        # esm's default: every idle shard read at least once a second, as Lambda does.
        kinesis = scale.run_kinesis(
            endpoint, sizes.idle_shards, sizes.scale_warmup, sizes.scale_window, log=_log
        )
        budget = scale.run_kinesis(
            endpoint,
            sizes.idle_shards,
            sizes.scale_warmup,
            sizes.scale_window / 2,
            log=_log,
            budget=IDLE_READ_BUDGET,
        )
        sweep = [kinesis]
        for shards in (sizes.idle_shards // 10, sizes.idle_shards * 3 // 10):
            sweep.append(
                scale.run_kinesis(
                    endpoint, max(1, shards), sizes.scale_warmup, sizes.scale_window / 4, log=_log
                )
            )
    plot = scale.plot_lambda_pace(sweep, args.out)
    with endpoints.start_kinesis_endpoint(
        args.kinesis_endpoint, shard_limit=sizes.idle_shards + 100
    ) as endpoint:
        second = scale.run_kinesis(
            endpoint, sizes.idle_shards, sizes.scale_warmup, sizes.scale_window / 2, log=_log
        )
    with endpoints.start_moto() as endpoint:
        sqs = scale.run_sqs(
            endpoint, sizes.idle_queues, sizes.scale_warmup, sizes.scale_window, log=_log
        )
    return {
        "kinesis": kinesis,
        "kinesis_budget": budget,
        "lambda_pace_sweep": [
            {k: r[k] for k in ("shards", "cpu_percent", "rss_mb_max", "cpu_us_per_get_records")}
            for r in sweep
        ],
        "lambda_pace_plot": plot,
        f"kinesis_{second['endpoint']}": second,
        "sqs": sqs,
    }


RUNNERS: dict[str, Callable[[Sizes, argparse.Namespace], dict[str, Any]]] = {
    "per_call": phase_per_call,
    "hot_path": phase_hot_path,
    "streams_e2e": phase_streams_e2e,
    "sqs_e2e": phase_sqs_e2e,
    "sqs_ramp": phase_sqs_ramp,
    "latency": phase_latency,
    "scale": phase_scale,
}


# --- the table -----------------------------------------------------------------------------


def _num(value: Any, fmt: str = ",.0f", suffix: str = "") -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "n/a"
    return f"{value:{fmt}}{suffix}"


def _verdict(value: Any, target: float, higher_is_better: bool) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "meets" if ok else "MISSES"


def _cpu_note(naive: dict[str, Any], esm: dict[str, Any]) -> str:
    """CPU in % of one core, consumer/endpoint, for each side: who was the bottleneck."""

    def pair(side: dict[str, Any]) -> str:
        consumer = _num(side.get("cpu_percent"), ".0f")
        return f"{consumer}/{_num(side.get('endpoint_cpu_percent'), '.0f')}%"

    return f"CPU consumer/endpoint: naive {pair(naive)}, esm {pair(esm)}"


def _timeline_note(timeline: Any) -> str:
    """Where a fake_kinesis drain's time went (bench.e2e.drain_timeline): the daemon's start
    up to its first read, the read-limited part, and the end after the last read."""
    if not isinstance(timeline, dict) or not timeline.get("shards"):
        return ""
    shards = timeline["shards"].values()
    first = min(s["first_read_ms"] for s in shards)
    last = max(s["last_read_ms"] for s in shards)
    return (
        f"first read {first:.0f} ms after the daemon's start, last read +{last - first:.0f} ms, "
        f"end +{timeline['end_ms'] - last:.0f} ms; 6 reads of a shard arrived >= "
        f"{timeline.get('shortest_six_read_span_ms') or 0:.0f} ms apart"
    )


def table_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per figure: what, esm, baseline, ratio, target, verdict."""
    rows: list[dict[str, str]] = []

    def row(
        figure: str,
        esm: str,
        baseline: str = "",
        ratio: str = "",
        target: str = "",
        verdict: str = "",
        note: str = "",
    ) -> None:
        rows.append(
            {
                "figure": figure,
                "esm": esm,
                "baseline": baseline,
                "ratio": ratio,
                "target": target,
                "verdict": verdict,
                "note": note,
            }
        )

    per_call = results.get("per_call")
    if isinstance(per_call, dict) and "cells" in per_call:
        goal = TARGETS["per_call_us"]
        cells = per_call["cells"]
        baseline = cells.get("aiohttp+asyncio", {})
        for name in next(iter(cells.values()), {}):
            best_cell = min(cells, key=lambda c: cells[c][name])
            best = cells[best_cell][name]
            old = baseline.get(name)
            row(
                f"0 per call {name} (us of esm CPU)",
                _num(best, ".0f"),
                f"{_num(old, '.0f')} (aiohttp+asyncio)" if old else "",
                f"{old / best:.1f}x less" if old and best else "",
                f"<= {goal}",
                _verdict(best, goal, False),
                f"best: {best_cell}; "
                + ", ".join(f"{c} {_num(v[name], '.0f')}" for c, v in cells.items()),
            )
    hot = results.get("hot_path")
    if isinstance(hot, dict) and "cells" in hot:
        goal = TARGETS["hot_path_records_per_cpu_s"]
        for cell in hot["cells"]:
            fraction = cell.get("fraction_of_limit")
            key = f"hot_path_fraction_{cell['shape']}_{cell['batch_size']}"
            share = TARGETS.get(key)
            row(
                f"1 hot path {cell['shape']}, batch {cell['batch_size']:,}, "
                f"{'filter' if cell.get('filtered', True) else 'no filter'} (records/CPU-s)",
                _num(cell["records_per_cpu_s"]),
                f"limit {_num(cell.get('limit_records_per_cpu_s'))}",
                _num(100 * fraction, ".0f", "% of limit") if fraction else "",
                f">= {100 * share:.0f}% of limit" if share else f">= {goal:,}",
                _verdict(fraction, share, True)
                if share
                else _verdict(cell["records_per_cpu_s"], goal, True),
                f"wall {_num(cell['records_per_s'])} rec/s; "
                f"GC {_num(100 * cell.get('gc_share', float('nan')), '.0f', '%')} of CPU",
            )
    for streams in (results.get("streams_e2e") or {}).values():
        if not isinstance(streams, dict) or "esm" not in streams:
            continue
        naive = streams["naive"]
        for batch_size, run in streams["esm"].items():
            row(
                f"2 streams drain {streams['records']:,} rec/{streams['shards']} shards, "
                f"esm batch {int(batch_size):,} ({streams['endpoint']})",
                _num(run.get("seconds"), ".2f", " s"),
                f"naive {_num(naive.get('seconds'), '.2f', ' s')}",
                _num(streams["ratio"][batch_size], ".2f", "x"),
                f">= {TARGETS['e2e_ratio']:g}x",
                _verdict(streams["ratio"][batch_size], TARGETS["e2e_ratio"], True),
                _cpu_note(naive, run),
            )
        limit = streams.get("limit")
        if not isinstance(limit, dict):
            continue
        row(
            f"2 streams drain: the limit, 5 reads/s/shard x 10,000 records ({streams['endpoint']})",
            _num(limit["limit_s"], ".2f", " s"),
            f"naive {_num(naive.get('seconds'), '.2f', ' s')}",
            "",
            "",
            "",
            f"largest shard {limit['largest_shard']:,} records: {limit['reads_needed']} reads, "
            f"the last >= {limit['last_read_at_s']:.1f} s after the first",
        )
        if streams["endpoint"] != "fake_kinesis":
            continue  # kinesalite and moto are far slower than the limit: no comparison
        for batch_size, fraction in streams.get("of_limit", {}).items():
            goal = TARGETS["streams_fraction_of_limit"]
            row(
                f"2 streams drain, esm batch {int(batch_size):,} against the limit "
                f"({streams['endpoint']})",
                _num(streams["esm"][batch_size].get("seconds"), ".2f", " s"),
                f"limit {_num(limit['limit_s'], '.2f', ' s')}",
                _num(100 * fraction, ".1f", "% of limit"),
                f">= {100 * goal:.0f}% of limit",
                _verdict(fraction, goal, True),
                _timeline_note(streams["esm"][batch_size].get("timeline")),
            )
    sqs = results.get("sqs_e2e")
    if isinstance(sqs, dict):
        for name in ("fake_sqs", "moto"):
            run = sqs.get(name)
            if not isinstance(run, dict) or "esm" not in run:
                continue
            row(
                f"3 SQS drain {run['messages']:,} msgs, "
                f"esm max_concurrency {run['maximum_concurrency']} ({name})",
                _num(run["esm"].get("seconds"), ".2f", " s"),
                f"naive {_num(run['naive'].get('seconds'), '.2f', ' s')}",
                _num(run["ratio"], ".2f", "x"),
                f">= {TARGETS['e2e_ratio']:g}x",
                _verdict(run["ratio"], TARGETS["e2e_ratio"], True),
                _cpu_note(run["naive"], run["esm"]),
            )
    ramp = results.get("sqs_ramp")
    if isinstance(ramp, dict) and "modes" in ramp:
        goals = {"standard": 300, "provisioned": 900}
        for mode, r in ramp["modes"].items():
            if not isinstance(r, dict) or "samples" not in r:
                continue
            row(
                f"6 SQS ramp {mode}: receivers after {ramp['seconds']:g} s "
                f"({ramp['messages']:,}-message queue)",
                f"{r['final_receivers']} ({r['final_in_flight']} in flight)",
                "",
                f"{_num(r['added_per_minute'])}/min",
                f"{goals[mode]}/min (AWS)",
                "",
                f"plot: {ramp.get('plot') or 'matplotlib not installed'}",
            )
    latency = results.get("latency")
    if isinstance(latency, dict):
        for name, key in (("sqs", "latency_p50_ms_sqs"), ("kinesis", "latency_p50_ms_kinesis")):
            s = latency.get(name)
            if not isinstance(s, dict) or "p50_ms" not in s:
                continue
            row(
                f"4 latency {name} p50/p95/p99, {s['received']:,} events ({s['endpoint']})",
                "/".join(_num(s[k], ".0f") for k in ("p50_ms", "p95_ms", "p99_ms")) + " ms",
                "",
                "",
                f"p50 <= {TARGETS[key]} ms",
                _verdict(s["p50_ms"], TARGETS[key], False),
            )
        quiet = latency.get("kinesis_quiet_shards")
        if isinstance(quiet, dict):
            for s in quiet.values():
                if not isinstance(s, dict) or "p99_ms" not in s:
                    continue
                budget = s.get("budget")
                pace = "Lambda's pace" if budget is None else f"opt-in budget {budget:g} reads/s"
                row(
                    f"4 latency kinesis, records to random quiet shards of {s['shards']:,} "
                    f"idle shards, {pace}, p50/p95/p99 ({s['endpoint']})",
                    "/".join(_num(s[k], ".0f") for k in ("p50_ms", "p95_ms", "p99_ms")) + " ms",
                    "",
                    "",
                    f"p99 <= {TARGETS['latency_p99_ms_quiet_shards']} ms" if budget is None else "",
                    _verdict(s["p99_ms"], TARGETS["latency_p99_ms_quiet_shards"], False)
                    if budget is None
                    else "",
                    f"{s['received']:,}/{s['events']:,} events",
                )
    scale = results.get("scale")
    if isinstance(scale, dict):
        default = scale.get("kinesis")
        default_ok = isinstance(default, dict) and "cpu_percent" in default
        for key in sorted(name for name in scale if name.startswith("kinesis")):
            k = scale[key]
            if not isinstance(k, dict) or "rss_mb_max" not in k:
                continue
            where = k["endpoint"]
            budget = k.get("budget")
            pace = "Lambda's pace (default)" if budget is None else f"opt-in budget {budget:g}/s"
            row(
                f"5 {k['shards']:,} idle shards, {pace}: RSS ({where})",
                _num(k["rss_mb_max"], ".0f", " MB"),
                "",
                "",
                f"< {TARGETS['idle_shards_rss_mb']} MB",
                _verdict(k["rss_mb_max"], TARGETS["idle_shards_rss_mb"], False),
            )
            per_read = k.get("cpu_us_per_get_records")
            # The opt-in budget's baseline: the same shards at Lambda's pace, in this run.
            baseline = default if budget is not None and default_ok else None
            target = "" if budget is not None else TARGETS["idle_shards_lambda_pace_cpu_percent"]
            row(
                f"5 {k['shards']:,} idle shards, {pace}: CPU over {k['window_s']:.0f} s ({where})",
                _num(k["cpu_percent"], ".1f", "%"),
                f"{_num(baseline['cpu_percent'], '.1f', '%')} at Lambda's pace" if baseline else "",
                f"{baseline['cpu_percent'] / k['cpu_percent']:.1f}x less"
                if baseline and k["cpu_percent"]
                else "",
                f"<= {target}% of a core" if target else "",
                _verdict(k["cpu_percent"], target, False) if target else "",
                f"endpoint {_num(k['endpoint_cpu_percent'], '.0f', '%')} of a core"
                + (
                    f"; {_num(k['get_records_per_s'])} GetRecords/s, {_num(per_read)} us CPU each"
                    if per_read
                    else ""
                ),
            )
        sweep = scale.get("lambda_pace_sweep")
        if isinstance(sweep, list) and sweep:
            row(
                "5 idle shards at Lambda's pace, sweep: CPU",
                ", ".join(
                    f"{r['shards']:,}: {_num(r['cpu_percent'], '.1f', '%')}"
                    f" ({_num(r['cpu_us_per_get_records'])} us/read)"
                    for r in sorted(sweep, key=lambda r: r["shards"])
                ),
                "",
                "",
                "",
                "",
                f"plot: {scale.get('lambda_pace_plot') or 'matplotlib not installed'}",
            )
        q = scale.get("sqs")
        if isinstance(q, dict) and "rss_mb_max" in q:
            row(
                f"5 {q['queues']} idle SQS queues: RSS / CPU ({q['endpoint']})",
                f"{_num(q['rss_mb_max'], '.0f', ' MB')} / {_num(q['cpu_percent'], '.1f', '%')}",
                "",
                "",
                "",
                "",
            )
    for phase, value in results.items():
        if isinstance(value, dict) and "error" in value:
            row(f"{phase}: FAILED", value["error"].splitlines()[-1][:60])
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    columns = ("figure", "esm", "baseline", "ratio", "target", "verdict", "note")
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    lines = [
        " | ".join(c.ljust(widths[c]) for c in columns),
        "-|-".join("-" * widths[c] for c in columns),
    ]
    lines += [" | ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny inputs; every figure in under 60 s"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="directory for the JSON (default bench/results)",
    )
    parser.add_argument(
        "--kinesis-endpoint",
        choices=("auto", "kinesalite", "moto"),
        default="auto",
        help="auto: kinesalite when node is here (installed into bench/node_modules), else moto",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also write pyinstrument CPU-time profiles of every per-call figure and the hot path",
    )
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in RUNNERS]
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")
    sizes = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    endpoints.use_local_credentials()

    commit, dirty = git_commit()
    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "commit": commit,
            "dirty": dirty,
            "quick": args.quick,
            "phases": phases,
            "sizes": sizes.__dict__,
            "machine": {
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "load_average_at_start": os.getloadavg(),
            },
        },
        "targets": TARGETS,
    }
    failed = False
    for phase in phases:
        phase_started = time.monotonic()
        try:
            results[phase] = RUNNERS[phase](sizes, args)
        except Exception:
            failed = True
            results[phase] = {"error": traceback.format_exc()}
            _log(f"[{phase}] FAILED:\n{results[phase]['error']}")
        if isinstance(results[phase], dict):
            results[phase]["phase_seconds"] = time.monotonic() - phase_started
            results[phase]["load_average_after"] = os.getloadavg()
    results["meta"]["seconds"] = time.time() - started
    results["table"] = table_rows(results)

    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    suffix = "-quick" if args.quick else ""
    path = args.out / f"{day}-{commit}{suffix}.json"
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    print()
    print(format_table(results["table"]))
    print(f"\nwrote {path} ({results['meta']['seconds']:.0f} s)")
    return 1 if failed else 0


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return repr(value)


if __name__ == "__main__":
    sys.exit(main())
