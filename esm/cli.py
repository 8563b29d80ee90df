"""Command line: `esm run`, `esm validate`, `esm reload`, `esm demo`, `esm import`, `esm build`,
`esm status`.

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

from esm.build import MANIFEST as BUILD_MANIFEST
from esm.config import Config, load_config
from esm.errors import ConfigError, EsmError
from esm.observability import configure_logging

EXIT_CONFIG = 2
EXIT_START = 1
IMPORT_EPILOG = """\
what --param each reference in the template expects (Queue, Stream, Table, Cluster, Broker,
Secret, Function stand for the resource's logical id in the template):
  !GetAtt Queue.Arn          QueueArn=arn:aws:sqs:REGION:ACCOUNT:NAME    (the queue's ARN)
  !Ref Queue  (SQS queue)    Queue=https://sqs.REGION.amazonaws.com/ACCOUNT/NAME
                             (a queue's Ref is its URL, not its ARN)
  !Ref Stream (Kinesis)      Stream=NAME                    (the stream's name)
  !GetAtt Stream.Arn         StreamArn=arn:aws:kinesis:REGION:ACCOUNT:stream/NAME
  !Ref Table  (DynamoDB)     Table=NAME                     (the table's name)
  !GetAtt Table.StreamArn    TableStreamArn=arn:aws:dynamodb:...:table/NAME/stream/LABEL
  !Ref Cluster (MSK)         Cluster=arn:aws:kafka:REGION:ACCOUNT:cluster/NAME/UUID
                             (an MSK cluster's Ref is its ARN)
  !GetAtt Broker.Arn (MQ)    BrokerArn=arn:aws:mq:REGION:ACCOUNT:broker:NAME:ID
                             (needed with --stack-name too: the stack holds the broker's id)
  !Ref Secret                Secret=arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME
                             (kept as the uri; esm reads the secret when the mapping starts)
  !Ref Function              Function=NAME                  (the function's name)
  !Ref Parameter             Parameter=VALUE                (overrides its Default)
  !ImportValue Export        Export=VALUE
An event source (Queue:, Stream:, Broker:, EventSourceArn:) must end up an ARN; an environment
variable gets whatever the reference gives on AWS (often a queue URL or a table name).
--stack-name reads all of them from a deployed stack instead.

Several Python functions are written as kind = "process" (one process each, with its own
code and environment, as on Lambda); a single one as kind = "python" (in esm's process).
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="esm", description=__doc__.splitlines()[0] if __doc__ else None
    )
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
        "demo",
        help="run SQS, Kinesis and DynamoDB Streams mappings (and Kafka, with a local broker) on "
        "an embedded local AWS endpoint, with sample handlers and a live view",
    )
    demo.add_argument(
        "--messages",
        type=int,
        default=1000,
        help="events to produce per source first (DynamoDB: a fifth of it; default 1000)",
    )
    demo.add_argument(
        "--rate", type=int, default=10, help="events per second per source after that (default 10)"
    )
    demo.add_argument("--port", type=int, default=0, help="port of the embedded endpoint")
    demo.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        help="port of esm's /metrics on 127.0.0.1 (default 9464; 0: any free port)",
    )
    demo.add_argument(
        "--exit-when-drained",
        action="store_true",
        help="produce one round, stop once every event was handled or given up",
    )
    imp = commands.add_parser(
        "import",
        help="write an esm config from a SAM or CloudFormation template",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=IMPORT_EPILOG,
    )
    imp.add_argument("template", help="template file (YAML or JSON)")
    imp.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a template parameter (KEY is its name) or the value of a reference to a resource "
        "(see below for what each one expects); repeatable",
    )
    imp.add_argument("--stack-name", help="resolve ARNs from this deployed stack")
    imp.add_argument(
        "--endpoint-url", help="AWS endpoint for --stack-name; also written to [daemon]"
    )
    imp.add_argument("--region", help="AWS region; also written to [daemon]")
    imp.add_argument(
        "--lambda",
        dest="lambda_kind",
        action="store_true",
        help='call the deployed functions (kind = "lambda") instead of running their code',
    )
    imp.add_argument(
        "-o",
        "--output",
        help="config file to write (default: standard output); inline code (inline/) and "
        f"{BUILD_MANIFEST} are written beside it",
    )
    build = commands.add_parser(
        "build",
        help="install each imported function's requirements.txt and layers into "
        ".esm-build/<function>/ (its code_path), like sam build",
        description=f"Reads {BUILD_MANIFEST} (written by esm import beside the config) and "
        "makes .esm-build/<function>/ afresh for each function in it: its layers' Python "
        "content, then its code, then pip install -r requirements.txt --target, with esm's "
        "interpreter and the machine's pip configuration. An in-process function "
        '(kind = "python") gets only what esm\'s environment lacks; a requirement that '
        "conflicts with esm's own is refused. Exit 1 if a function failed (the others are "
        "still built).",
    )
    build.add_argument("-c", "--config", required=True, help="the config esm import wrote")
    status = commands.add_parser(
        "status", help="print each stream shard's owner, checkpoint and iterator age"
    )
    status.add_argument("-c", "--config", required=True, help="path of the TOML config file")
    args = parser.parse_args(argv)
    if args.command == "status":
        return _status(args.config)
    if args.command == "import":
        return _import(args)
    if args.command == "build":
        return _build(Path(args.config))
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "run":
        return _run(args.config)
    if args.command == "reload":
        return _reload(args.config)
    from esm.demo import run_demo

    return run_demo(
        messages=args.messages,
        port=args.port,
        exit_when_drained=args.exit_when_drained,
        rate=args.rate,
        metrics_port=args.metrics_port,
    )


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _import(args: argparse.Namespace) -> int:
    from esm.importer import import_template

    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"esm: --param {item!r} is not KEY=VALUE", file=sys.stderr)
            return EXIT_CONFIG
        params[key] = value
    output = Path(args.output) if args.output else None
    try:
        result = import_template(
            Path(args.template),
            params,
            output_dir=output.parent if output else Path.cwd(),
            stack_name=args.stack_name,
            endpoint_url=args.endpoint_url,
            region=args.region,
            lambda_kind=args.lambda_kind,
        )
    except EsmError as exc:
        print(f"esm: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    directory = output.parent if output else Path.cwd()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = _write_beside(directory, result.files, result.build_manifest)
    except OSError as exc:
        print(f"esm: cannot write beside the config in {directory}: {exc}", file=sys.stderr)
        return EXIT_START
    if output is None:
        sys.stdout.write(result.text)
    else:
        output.write_text(result.text, encoding="utf-8")
    for line in result.report:
        print(f"esm import: {line}", file=sys.stderr)
    for path in written:
        print(f"{path}: written", file=sys.stderr)
    shown = output if output is not None else "<config>"
    if result.build_manifest is not None:
        print(f"next: esm build -c {shown}, then esm run -c {shown}", file=sys.stderr)
    if output is not None:
        print(f"{output}: written; check it with esm validate -c {output}", file=sys.stderr)
    return 0


def _write_beside(directory: Path, files: dict[str, str], manifest: str | None) -> list[Path]:
    """Inline code and esm-build.toml; an esm-build.toml of an earlier import is removed when
    nothing needs building any more (so esm build never installs what the template dropped)."""
    written = []
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    manifest_path = directory / BUILD_MANIFEST
    if manifest is not None:
        manifest_path.write_text(manifest, encoding="utf-8")
        written.append(manifest_path)
    elif manifest_path.is_file():
        manifest_path.unlink()
    return written


def _build(config: Path) -> int:
    from esm.build import BuildError, build, manifest_path

    if not config.is_file():
        print(f"esm: {config}: no such config file", file=sys.stderr)
        return EXIT_CONFIG
    try:
        done, failed = build(config)
    except BuildError as exc:
        print(f"esm: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not done and not failed:
        print(
            f"{config}: nothing to build (no {manifest_path(config).name} beside it: esm import "
            "writes one when a function has a requirements.txt or layers in the template)"
        )
        return 0
    for line in done:
        print(f"esm build: {line}")
    for line in failed:
        print(f"esm build: {line}", file=sys.stderr)
    return EXIT_START if failed else 0


def _status(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    from esm.status import print_status

    return print_status(config)


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
    _protect_secrets(config)
    from esm.daemon import Daemon
    from esm.sd_notify import Notifier

    notifier = Notifier.from_environment()
    try:
        daemon = Daemon(config, config_path=Path(path))
    except EsmError as exc:
        print(f"esm: {exc}", file=sys.stderr)
        return EXIT_START
    if notifier.enabled:
        # systemd Type=notify: READY=1 once every mapping polls, STOPPING=1 when the drain
        # begins (with the drain's bound, so TimeoutStopSec cannot cut it short).
        def ready() -> None:
            notifier.ready(status=f"polling {len(daemon.running)} mappings")

        def stopping() -> None:
            notifier.stopping(extend_timeout=daemon.drain_timeout + 5, status="draining")

        daemon.on_ready = ready
        daemon.on_stopping = stopping

    async def serve() -> None:
        async with anyio.create_task_group() as watchdog:
            watchdog.start_soon(notifier.keep_alive)
            await daemon.run(handle_signals=True)
            watchdog.cancel_scope.cancel()

    from esm import event_loop

    try:
        event_loop.run(serve)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # noqa: BLE001 - only start-up failures are ours to explain
        cause = _startup_failure(exc)
        if cause is None:
            raise
        print(f"esm: {cause}", file=sys.stderr)
        return EXIT_START
    return 0


def _protect_secrets(config: Config) -> None:
    """Before any function runs: esm's memory and /proc/<pid>/environ closed to same-uid
    processes (a hostile `kind = "process"` function), http tokens out of os.environ."""
    from esm.invokers.http import retain_secrets
    from esm.invokers.process import protect_daemon
    from esm.observability import get_logger

    get_logger("esm.cli").info(
        "daemon.secrets_protected",
        non_dumpable=protect_daemon(),
        retained=retain_secrets(config.functions),
    )


def _startup_failure(exc: BaseException) -> BaseException | None:
    """The OSError (address in use, ...), EsmError (a missing lease table, ...) or AWS
    error (an unreachable endpoint while opening the lease table, ...) that stopped the
    daemon, unwrapped from task groups; None for anything else (a bug)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_failure(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, OSError | EsmError | BotoCoreError | ClientError) else None
