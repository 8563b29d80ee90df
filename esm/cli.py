"""Command line: `esm run`, `esm validate`, `esm reload`, `esm demo`.

Exit codes: 0 success, 2 invalid configuration (one line per problem, no traceback),
1 the daemon could not start (e.g. a handler that cannot be imported).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import anyio

from esm.config import Config, load_config
from esm.errors import ConfigError, EsmError
from esm.observability import configure_logging

EXIT_CONFIG = 2
EXIT_START = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esm", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, help="path of the TOML config file")
    validate = commands.add_parser("validate", help="check a config file and list every problem")
    validate.add_argument("-c", "--config", required=True, help="path of the TOML config file")
    reload = commands.add_parser(
        "reload", help="validate a config file, then ask the daemon serving it to re-read it"
    )
    reload.add_argument("-c", "--config", required=True, help="path of the TOML config file")
    demo = commands.add_parser(
        "demo", help="run esm on an embedded local SQS endpoint with a sample queue and handler"
    )
    demo.add_argument("--messages", type=int, default=1000, help="messages to send (default 1000)")
    demo.add_argument("--port", type=int, default=0, help="port of the embedded endpoint")
    demo.add_argument(
        "--exit-when-drained", action="store_true", help="stop once every message was handled"
    )
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "run":
        return _run(args.config)
    if args.command == "reload":
        return _reload(args.config)
    from esm.demo import run_demo

    return run_demo(messages=args.messages, port=args.port, exit_when_drained=args.exit_when_drained)


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _validate(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    print(f"{path}: valid ({len(config.mappings)} mappings, {len(config.functions)} functions)")
    return 0


def _reload(path: str) -> int:
    """The same checks as `validate`, then POST /-/reload to the daemon's http_address; the
    daemon re-reads the file itself, so what it applies is what was validated here."""
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    daemon = config.daemon
    host = "127.0.0.1" if daemon.http_host in ("0.0.0.0", "::", "") else daemon.http_host
    url = f"http://{host}:{daemon.http_port}/-/reload"
    request = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            print(f"{path}: valid; {response.read().decode().strip()} at {url}")
    except (urllib.error.URLError, OSError) as exc:
        print(f"esm: no daemon answered at {url}: {exc}", file=sys.stderr)
        return EXIT_START
    return 0


def _run(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    configure_logging(config.daemon.log_format, config.daemon.log_level)
    from esm.daemon import Daemon

    try:
        daemon = Daemon(config, config_path=Path(path))
    except EsmError as exc:
        print(f"esm: {exc}", file=sys.stderr)
        return EXIT_START

    async def serve() -> None:
        await daemon.run(handle_signals=True)

    try:
        anyio.run(serve)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"esm: {exc}", file=sys.stderr)
        return EXIT_START
    return 0
