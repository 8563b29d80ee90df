"""What Lambda's environment is: the variables every function kind that runs a handler gets.

Lambda sets these for every function (AWS "Defined runtime environment variables"):
AWS_REGION, AWS_DEFAULT_REGION, AWS_EXECUTION_ENV, AWS_LAMBDA_FUNCTION_NAME,
AWS_LAMBDA_FUNCTION_MEMORY_SIZE, AWS_LAMBDA_FUNCTION_VERSION, AWS_LAMBDA_LOG_GROUP_NAME,
AWS_LAMBDA_LOG_STREAM_NAME, _HANDLER, LAMBDA_TASK_ROOT, the execution role's credentials,
and _X_AMZN_TRACE_ID per invocation. esm adds what a local stack needs so that a handler's
own SDK calls reach the AWS esm polls: AWS_ENDPOINT_URL (`[daemon] endpoint_url`, when
`[daemon] functions_use_endpoint_url` is true) and placeholder credentials for a loopback
endpoint when none are configured, as esm.aws does for esm itself.

Two groups, because one interpreter has one os.environ (README "Function kinds"):

- `shared_variables`: the same for every function of a daemon (region, runtime, endpoint,
  credentials); in-process functions get them too;
- `function_variables`: one function's (name, memory, version, handler, task root, log
  names); a
  process gets its own, in-process functions share os.environ, so there they hold the
  values of the function invoked last.

The function's own `environment` table overrides the shared group (as a user of a local
stack expects: their AWS_ENDPOINT_URL or credentials win), never the per-function one
(Lambda reserves those names).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from esm.config import DaemonConfig, FunctionConfig

FUNCTION_VERSION = "$LATEST"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PLACEHOLDER_CREDENTIAL = "esm-local"
CREDENTIAL_SOURCES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE")
"""Either one means credentials are configured: no placeholders then."""
PER_FUNCTION_VARIABLES = (
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
)
TRACE_VARIABLE = "_X_AMZN_TRACE_ID"


def python_execution_env() -> str:
    """AWS_EXECUTION_ENV of Lambda's Python runtime for this interpreter's version."""
    return f"AWS_Lambda_python{sys.version_info.major}.{sys.version_info.minor}"


def is_loopback(url: str | None) -> bool:
    return url is not None and (urlsplit(url).hostname or "") in LOOPBACK_HOSTS


def shared_variables(
    daemon: DaemonConfig | None,
    *,
    region: str,
    base: Mapping[str, str],
    execution_env: str | None,
) -> dict[str, str]:
    """Variables equal for every function: region, runtime, version, endpoint, credentials.

    `base` is the environment the function starts from (the inherited variables plus its
    own `environment`); credentials are only made up when it has none."""
    variables = {
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }
    if execution_env is not None:
        variables["AWS_EXECUTION_ENV"] = execution_env
    endpoint = daemon.endpoint_url if daemon is not None else None
    if daemon is not None and daemon.functions_use_endpoint_url and endpoint is not None:
        variables["AWS_ENDPOINT_URL"] = endpoint
        if is_loopback(endpoint) and not any(base.get(k) for k in CREDENTIAL_SOURCES):
            variables["AWS_ACCESS_KEY_ID"] = PLACEHOLDER_CREDENTIAL
            variables["AWS_SECRET_ACCESS_KEY"] = PLACEHOLDER_CREDENTIAL
    return variables


def function_variables(function: FunctionConfig, log_stream: str) -> dict[str, str]:
    """The variables Lambda reserves per function; a function's `environment` cannot set them."""
    return {
        "AWS_LAMBDA_FUNCTION_NAME": function.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_size),
        "AWS_LAMBDA_FUNCTION_VERSION": FUNCTION_VERSION,
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
        "_HANDLER": function.handler,
        "LAMBDA_TASK_ROOT": str(function.code_path.resolve()),
    }


def environment(
    function: FunctionConfig,
    daemon: DaemonConfig | None,
    *,
    region: str,
    inherited: Mapping[str, str],
    log_stream: str,
    execution_env: str | None,
) -> dict[str, str]:
    """A function's whole environment, lowest precedence first: inherited, shared, the
    function's own `environment`, then the per-function names Lambda reserves."""
    base = {**inherited, **function.environment}
    variables = dict(inherited)
    variables.update(
        shared_variables(daemon, region=region, base=base, execution_env=execution_env)
    )
    variables.update(function.environment)
    variables.update(function_variables(function, log_stream))
    return variables


def trace_id() -> str:
    """An X-Ray trace header (`_X_AMZN_TRACE_ID`), as Lambda passes one to every invocation."""
    bits = random.getrandbits  # an identifier, not a secret: no system call per invocation
    return f"Root=1-{int(time.time()):08x}-{bits(96):024x};Parent={bits(64):016x};Sampled=0"
